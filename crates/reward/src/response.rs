//! Parsing a model response: the code to run and whether the format is the one asked for.
//!
//! The paper's prompts ask for `<thinking>...</thinking><solution>...</solution>` with the code in
//! a fenced block inside `<solution>`. Models do not always comply, so the code is looked for in
//! this order: fenced blocks inside `<solution>`, then fenced blocks anywhere, then the bare text
//! of `<solution>`. Among blocks, the last one tagged with the target language wins, then the
//! last untagged one; a block tagged with another language is never run.

use afterburner_sandbox::Language;
use serde::{Deserialize, Serialize};

/// One fenced code block of a response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeBlock {
    /// The info string's first word (`python`, `cpp`...), empty when untagged.
    pub tag: String,
    /// The code between the fences.
    pub code: String,
    /// Whether the closing fence was present (a missing one usually means a truncated reply).
    pub closed: bool,
}

/// What a response contains, for a given target language.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParsedResponse {
    /// The code to run, when there is usable code.
    pub code: Option<String>,
    /// Why there is no usable code, when there is none.
    pub problem: Option<String>,
    /// Whether the response is exactly `<thinking>...</thinking><solution>...</solution>` with a
    /// fenced code block inside `<solution>` (the reward's format term).
    pub well_formed: bool,
    /// The text of `<thinking>`, when present.
    pub thinking: Option<String>,
}

/// Parses a model response, looking for code in `language`.
pub fn parse_response(text: &str, language: Language) -> ParsedResponse {
    let text = &tags_on_their_own_lines(text);
    let thinking = section(text, "thinking").map(|s| s.trim().to_string());
    let solution = section(text, "solution");
    let well_formed = is_well_formed(text);

    let from_solution = solution.map(code_blocks).unwrap_or_default();
    let mut chosen = pick(&from_solution, language);
    let everywhere = code_blocks(text);
    if chosen.is_none() {
        chosen = pick(&everywhere, language);
    }
    if chosen.is_none() && everywhere.is_empty() {
        chosen = solution
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
    }
    let problem = match &chosen {
        Some(_) => None,
        None if everywhere.is_empty() => Some(if solution.is_some() {
            "the <solution> section is empty and there is no code block".to_string()
        } else {
            "no code block and no <solution> section".to_string()
        }),
        None => {
            let tags: Vec<&str> = everywhere.iter().map(|b| b.tag.as_str()).collect();
            Some(format!(
                "no code block in {language} (blocks tagged {})",
                tags.join(", ")
            ))
        }
    };
    ParsedResponse {
        code: chosen,
        problem,
        well_formed,
        thinking,
    }
}

/// The text with a line break on both sides of each tag, so `<solution>```python` opens a fence.
fn tags_on_their_own_lines(text: &str) -> String {
    let mut out = text.to_string();
    for tag in ["<thinking>", "</thinking>", "<solution>", "</solution>"] {
        out = out.replace(tag, &format!("\n{tag}\n"));
    }
    out
}

/// The last block in `language`, else the last untagged block (code, trimmed of blank edges).
fn pick(blocks: &[CodeBlock], language: Language) -> Option<String> {
    let tagged = blocks
        .iter()
        .rev()
        .find(|b| b.tag.parse::<Language>() == Ok(language));
    let untagged = || blocks.iter().rev().find(|b| b.tag.is_empty());
    tagged
        .or_else(untagged)
        .map(|b| trim_blank_lines(&b.code))
        .filter(|c| !c.trim().is_empty())
}

/// The text between the first `<tag>` and the following `</tag>`.
fn section<'t>(text: &'t str, tag: &str) -> Option<&'t str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&close)? + start;
    Some(&text[start..end])
}

/// Exactly one `<thinking>` then one `<solution>` holding a closed fenced block, nothing around.
fn is_well_formed(text: &str) -> bool {
    let t = text.trim();
    let Some(rest) = t.strip_prefix("<thinking>") else {
        return false;
    };
    let Some((thinking, rest)) = rest.split_once("</thinking>") else {
        return false;
    };
    let Some(rest) = rest.trim_start().strip_prefix("<solution>") else {
        return false;
    };
    let Some(solution) = rest.strip_suffix("</solution>") else {
        return false;
    };
    let tags = ["<thinking>", "</thinking>", "<solution>", "</solution>"];
    if tags
        .iter()
        .any(|tag| thinking.contains(tag) || solution.contains(tag))
    {
        return false;
    }
    code_blocks(solution).iter().any(|b| b.closed)
}

/// Every fenced (three or more backticks) code block, in order.
pub fn code_blocks(text: &str) -> Vec<CodeBlock> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String, Vec<&str>)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let ticks = trimmed.chars().take_while(|&c| c == '`').count();
        match &mut open {
            None => {
                if ticks >= 3 {
                    let info = trimmed[ticks..].trim();
                    if !info.contains('`') {
                        let tag = info.split_whitespace().next().unwrap_or("").to_string();
                        open = Some((ticks, tag, Vec::new()));
                    }
                }
            }
            Some((fence, tag, lines)) => {
                if ticks >= *fence && trimmed[ticks..].trim().is_empty() {
                    blocks.push(CodeBlock {
                        tag: std::mem::take(tag),
                        code: lines.join("\n"),
                        closed: true,
                    });
                    open = None;
                } else {
                    lines.push(line);
                }
            }
        }
    }
    if let Some((_, tag, lines)) = open {
        blocks.push(CodeBlock {
            tag,
            code: lines.join("\n"),
            closed: false,
        });
    }
    blocks
}

fn trim_blank_lines(code: &str) -> String {
    let lines: Vec<&str> = code.lines().collect();
    let first = lines.iter().position(|l| !l.trim().is_empty());
    let last = lines.iter().rposition(|l| !l.trim().is_empty());
    match (first, last) {
        (Some(a), Some(b)) => {
            let mut s = lines[a..=b].join("\n");
            s.push('\n');
            s
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PY: Language = Language::Python;

    #[test]
    fn the_paper_format_is_well_formed_and_yields_its_code() {
        let r = parse_response(
            "<thinking>use a set</thinking>\n<solution>\n```python\nprint(1)\n```\n</solution>\n",
            PY,
        );
        assert!(r.well_formed);
        assert_eq!(r.code.as_deref(), Some("print(1)\n"));
        assert_eq!(r.thinking.as_deref(), Some("use a set"));
        assert_eq!(r.problem, None);
    }

    #[test]
    fn text_around_the_tags_or_a_missing_fence_is_not_well_formed() {
        let around = "Sure!\n<thinking>x</thinking><solution>```python\nprint(1)\n```</solution>";
        assert!(!parse_response(around, PY).well_formed);
        assert_eq!(
            parse_response(around, PY).code.as_deref(),
            Some("print(1)\n")
        );

        let bare = "<thinking>x</thinking><solution>print(1)</solution>";
        let r = parse_response(bare, PY);
        assert!(!r.well_formed);
        assert_eq!(r.code.as_deref(), Some("print(1)"));

        let twice =
            "<thinking>a</thinking><solution>```python\n1\n```</solution><solution>x</solution>";
        assert!(!parse_response(twice, PY).well_formed);

        let reversed = "<solution>```python\nprint(1)\n```</solution><thinking>x</thinking>";
        assert!(!parse_response(reversed, PY).well_formed);
    }

    #[test]
    fn the_last_block_of_the_target_language_wins() {
        let text = "First try:\n```python\nslow()\n```\nBetter:\n```Python3\nfast()\n```\n\
                    And in C:\n```c\nint main(){}\n```\n";
        assert_eq!(parse_response(text, PY).code.as_deref(), Some("fast()\n"));
        assert_eq!(
            parse_response(text, Language::C).code.as_deref(),
            Some("int main(){}\n")
        );
    }

    #[test]
    fn an_untagged_block_is_used_when_no_block_is_tagged_with_the_language() {
        let text = "```\nprint(2)\n```\n```json\n{}\n```";
        assert_eq!(parse_response(text, PY).code.as_deref(), Some("print(2)\n"));
    }

    #[test]
    fn code_in_the_solution_beats_code_in_the_thinking() {
        let text = "<thinking>```python\nbad()\n```</thinking><solution>\n```python\ngood()\n```\n</solution>";
        let r = parse_response(text, PY);
        assert!(r.well_formed);
        assert_eq!(r.code.as_deref(), Some("good()\n"));
    }

    #[test]
    fn a_reply_without_code_says_why() {
        let r = parse_response("I cannot help with that.", PY);
        assert_eq!(r.code, None);
        assert_eq!(
            r.problem.as_deref(),
            Some("no code block and no <solution> section")
        );
        let r = parse_response("```java\nclass Main {}\n```", PY);
        assert_eq!(r.code, None);
        assert_eq!(
            r.problem.as_deref(),
            Some("no code block in python (blocks tagged java)")
        );
        let r = parse_response("<thinking>hm</thinking><solution>  </solution>", PY);
        assert_eq!(r.code, None);
        assert!(r.problem.unwrap().contains("empty"));
        assert_eq!(parse_response("```python\n\n```", PY).code, None);
    }

    #[test]
    fn an_unclosed_block_still_yields_code_but_is_not_well_formed() {
        let text = "<thinking>x</thinking><solution>```python\nprint(3)\n</solution>";
        let blocks = code_blocks(&tags_on_their_own_lines(text));
        assert_eq!(blocks.len(), 1);
        assert!(!blocks[0].closed);
        let r = parse_response("```python\nprint(3)\n", PY);
        assert_eq!(r.code.as_deref(), Some("print(3)\n"));
        assert!(!r.well_formed);
    }

    #[test]
    fn longer_fences_contain_shorter_ones() {
        let text = "````markdown\n```python\nx\n```\n````\n```python\ny\n```";
        let blocks = code_blocks(text);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].tag, "markdown");
        assert_eq!(blocks[0].code, "```python\nx\n```");
        assert_eq!(parse_response(text, PY).code.as_deref(), Some("y\n"));
    }
}
