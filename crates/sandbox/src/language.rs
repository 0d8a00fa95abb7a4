//! The languages the sandbox can build and run, and their source conventions.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A programming language the sandbox can compile (where needed) and run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// CPython 3, run as `python3 main.py`.
    Python,
    /// C (gcc, `-O2`, C17 with GNU extensions), linked with `-lm`.
    C,
    /// C++ (g++, `-O2`, C++17 with GNU extensions).
    Cpp,
    /// Java: the source must declare `public class Main` (no package).
    Java,
    /// JavaScript run by Node.js as a CommonJS script.
    JavaScript,
    /// Go: `package main` with `func main()`, standard library only.
    Go,
    /// Rust (rustc `-O`, edition 2021), standard library only.
    Rust,
}

impl Language {
    /// Every supported language, in a stable order.
    pub const ALL: [Language; 7] = [
        Language::Python,
        Language::C,
        Language::Cpp,
        Language::Java,
        Language::JavaScript,
        Language::Go,
        Language::Rust,
    ];

    /// The canonical lowercase name (`python`, `cpp`, `javascript`...).
    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::C => "c",
            Language::Cpp => "cpp",
            Language::Java => "java",
            Language::JavaScript => "javascript",
            Language::Go => "go",
            Language::Rust => "rust",
        }
    }

    /// The file name the source is stored under inside the sandbox.
    pub fn source_file_name(self) -> &'static str {
        match self {
            Language::Python => "main.py",
            Language::C => "main.c",
            Language::Cpp => "main.cpp",
            Language::Java => "Main.java",
            Language::JavaScript => "main.js",
            Language::Go => "main.go",
            Language::Rust => "main.rs",
        }
    }

    /// Whether a separate compile step produces an artefact before any run.
    pub fn is_compiled(self) -> bool {
        matches!(
            self,
            Language::C | Language::Cpp | Language::Java | Language::Go | Language::Rust
        )
    }

    /// The language a file extension (without the dot) conventionally denotes.
    pub fn from_extension(ext: &str) -> Option<Language> {
        Some(match ext.to_ascii_lowercase().as_str() {
            "py" | "py3" => Language::Python,
            "c" => Language::C,
            "cc" | "cpp" | "cxx" | "c++" => Language::Cpp,
            "java" => Language::Java,
            "js" | "mjs" | "cjs" => Language::JavaScript,
            "go" => Language::Go,
            "rs" => Language::Rust,
            _ => return None,
        })
    }

    /// The language a path's extension denotes.
    pub fn from_path(path: &Path) -> Option<Language> {
        path.extension()
            .and_then(|e| e.to_str())
            .and_then(Language::from_extension)
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A language name that is not one the sandbox supports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown language `{0}` (supported: python, c, cpp, java, javascript, go, rust)")]
pub struct UnknownLanguage(pub String);

impl FromStr for Language {
    type Err = UnknownLanguage;

    /// Parses canonical names and the common aliases datasets use
    /// (`python3`, `c++`, `js`, `node`, `golang`, `rs`...).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "python" | "python3" | "py" | "py3" => Language::Python,
            "c" => Language::C,
            "cpp" | "c++" | "cxx" | "cc" => Language::Cpp,
            "java" => Language::Java,
            "javascript" | "js" | "node" | "nodejs" => Language::JavaScript,
            "go" | "golang" => Language::Go,
            "rust" | "rs" => Language::Rust,
            _ => return Err(UnknownLanguage(s.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_parsing() {
        for lang in Language::ALL {
            assert_eq!(lang.name().parse::<Language>(), Ok(lang));
        }
    }

    #[test]
    fn aliases_used_by_datasets_parse() {
        assert_eq!("Python3".parse::<Language>(), Ok(Language::Python));
        assert_eq!("C++".parse::<Language>(), Ok(Language::Cpp));
        assert_eq!("golang".parse::<Language>(), Ok(Language::Go));
        assert!("cobol".parse::<Language>().is_err());
    }

    #[test]
    fn extensions_map_to_languages() {
        assert_eq!(
            Language::from_path(Path::new("a/b.rs")),
            Some(Language::Rust)
        );
        assert_eq!(Language::from_extension("JS"), Some(Language::JavaScript));
        assert_eq!(Language::from_extension("txt"), None);
    }
}
