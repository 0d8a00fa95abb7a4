//! The rows each trainer reads, checked against the trainer's own source:
//!
//! | trainer | SFT | DPO | GRPO |
//! |---|---|---|---|
//! | TRL | `prompt` + `completion` (conversational) | `prompt` + `chosen` + `rejected` (conversational) | `prompt` + `ground_truth` and columns the reward function receives |
//! | LLaMA-Factory | alpaca: `system`, `instruction`, `input`, `output` | alpaca with `ranking: true`: `chosen`, `rejected` | (no rule-reward RL stage) |
//! | verl | multi-turn SFT: `messages` | (no DPO trainer) | `data_source`, `prompt`, `ability`, `reward_model`, `extra_info` |
//! | OpenRLHF | `input` + `output` (chat lists, `--apply_chat_template`) | `prompt` + `chosen` + `rejected` | `input` + `label` (sent to the remote reward as `labels`) |
//!
//! Sources read: TRL's dataset formats documentation (conversational prompt-completion and
//! preference); LLaMA-Factory `data/README.md` (ff6d4d1); verl `verl/utils/dataset/rl_dataset.py`
//! and `multiturn_sft_dataset.py`, `examples/data_preprocess/gsm8k.py` (b178a3c); OpenRLHF
//! `openrlhf/datasets/{sft,reward,prompts}_dataset.py` (3c3be62).
//!
//! Every row carries its `problem_id` and `split` (verl: in `extra_info`), so any row can be
//! traced back to its problem and scored again.

use std::fmt;
use std::str::FromStr;

use afterburner_optimize::{Message, Role};
use serde::Serialize;
use serde_json::{Value, json};

use crate::DataError;
use crate::select::{Example, Kind, Target};
use crate::table::{Column, ColumnType, Nullable, Table};

/// The trainer whose format the rows follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trainer {
    /// Hugging Face TRL (SFTTrainer, DPOTrainer, GRPOTrainer).
    Trl,
    /// LLaMA-Factory (alpaca files and `dataset_info.json`).
    #[serde(rename = "llamafactory")]
    LlamaFactory,
    /// verl (RL parquet schema; multi-turn SFT).
    Verl,
    /// OpenRLHF (chat lists with `--apply_chat_template`).
    #[serde(rename = "openrlhf")]
    OpenRlhf,
}

impl Trainer {
    /// `trl`, `llamafactory`, `verl` or `openrlhf`.
    pub fn name(self) -> &'static str {
        match self {
            Trainer::Trl => "trl",
            Trainer::LlamaFactory => "llamafactory",
            Trainer::Verl => "verl",
            Trainer::OpenRlhf => "openrlhf",
        }
    }

    /// Whether the trainer has a stage that reads `kind` data; the error says what to use.
    pub fn supports(self, kind: Kind) -> Result<(), DataError> {
        match (self, kind) {
            (Trainer::Verl, Kind::Dpo) => Err(DataError::Options(
                "verl has no DPO trainer; write DPO data for trl, llamafactory or openrlhf".into(),
            )),
            (Trainer::LlamaFactory, Kind::Grpo) => Err(DataError::Options(
                "LLaMA-Factory has no GRPO stage with a rule reward; write GRPO data for verl, \
                 trl or openrlhf"
                    .into(),
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Trainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Trainer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "trl" => Ok(Trainer::Trl),
            "llamafactory" => Ok(Trainer::LlamaFactory),
            "verl" => Ok(Trainer::Verl),
            "openrlhf" => Ok(Trainer::OpenRlhf),
            _ => Err(format!(
                "unknown trainer format `{s}`: expected trl, llamafactory, verl or openrlhf"
            )),
        }
    }
}

fn chat(messages: &[Message]) -> Value {
    Value::Array(
        messages
            .iter()
            .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
            .collect(),
    )
}

fn assistant(text: &str) -> Value {
    json!([{"role": "assistant", "content": text}])
}

fn system_and_user(prompt: &[Message]) -> (String, String) {
    let text = |role: Role| {
        prompt
            .iter()
            .filter(|m| m.role == role)
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n\n")
    };
    (text(Role::System), text(Role::User))
}

/// The `data_source` of verl rows: `afterburner/<dataset format>`.
pub fn data_source(dataset_format: &str) -> String {
    format!("afterburner/{dataset_format}")
}

/// The rows of `examples` (all of one split) for `trainer`; `index` numbers rows within the
/// split and `dataset_format` names the source in verl's `data_source`.
pub fn table(
    examples: &[&Example],
    kind: Kind,
    trainer: Trainer,
    dataset_format: &str,
) -> Result<Table, DataError> {
    trainer.supports(kind)?;
    let common = [
        Column::new("problem_id", ColumnType::Str),
        Column::new("split", ColumnType::Str),
        Column::new("instruction", ColumnType::Str),
        Column::new("language", ColumnType::Str),
        Column::new("mode", ColumnType::Str),
    ];
    let common_values = |e: &Example| {
        vec![
            json!(e.problem_id),
            json!(e.split.name()),
            json!(e.instruction.name()),
            json!(e.language.name()),
            json!(e.mode),
        ]
    };
    let mut columns: Vec<Column> = Vec::new();
    let mut rows: Vec<Vec<Value>> = Vec::with_capacity(examples.len());
    match (kind, trainer) {
        (Kind::Sft, Trainer::Trl | Trainer::OpenRlhf) => {
            let (input, output) = if trainer == Trainer::Trl {
                ("prompt", "completion")
            } else {
                ("input", "output")
            };
            columns.extend([
                Column::new(input, ColumnType::Chat),
                Column::new(output, ColumnType::Chat),
                Column::new("solution_id", ColumnType::Str),
            ]);
            columns.extend(common);
            for e in examples {
                let (text, id) = completion(e)?;
                let mut row = vec![chat(&e.prompt), assistant(text), json!(id)];
                row.extend(common_values(e));
                rows.push(row);
            }
        }
        (Kind::Sft, Trainer::LlamaFactory) => {
            columns.extend([
                Column::new("system", ColumnType::Str),
                Column::new("instruction", ColumnType::Str),
                Column::new("input", ColumnType::Str),
                Column::new("output", ColumnType::Str),
                Column::new("solution_id", ColumnType::Str),
            ]);
            columns.extend(llamafactory_common());
            for e in examples {
                let (text, id) = completion(e)?;
                let (system, user) = system_and_user(&e.prompt);
                let mut row = vec![
                    json!(system),
                    json!(user),
                    json!(""),
                    json!(text),
                    json!(id),
                ];
                row.extend(llamafactory_values(e));
                rows.push(row);
            }
        }
        (Kind::Sft, Trainer::Verl) => {
            columns.extend([
                Column::new("messages", ColumnType::Chat),
                Column::new("data_source", ColumnType::Str),
                Column::new("extra_info", verl_extra_info()),
            ]);
            for (index, e) in examples.iter().enumerate() {
                let (text, id) = completion(e)?;
                let mut messages = e.prompt.clone();
                messages.push(Message {
                    role: Role::Assistant,
                    content: text.to_string(),
                });
                rows.push(vec![
                    chat(&messages),
                    json!(data_source(dataset_format)),
                    verl_extra_values(e, index, Some(id)),
                ]);
            }
        }
        (Kind::Dpo, Trainer::Trl | Trainer::OpenRlhf) => {
            columns.extend([
                Column::new("prompt", ColumnType::Chat),
                Column::new("chosen", ColumnType::Chat),
                Column::new("rejected", ColumnType::Chat),
                Column::new("chosen_id", ColumnType::Str),
                Column::new("rejected_id", ColumnType::Str),
            ]);
            columns.extend(common);
            for e in examples {
                let p = preference(e)?;
                let mut row = vec![
                    chat(&e.prompt),
                    assistant(p.0),
                    assistant(p.1),
                    json!(p.2),
                    json!(p.3),
                ];
                row.extend(common_values(e));
                rows.push(row);
            }
        }
        (Kind::Dpo, Trainer::LlamaFactory) => {
            columns.extend([
                Column::new("system", ColumnType::Str),
                Column::new("instruction", ColumnType::Str),
                Column::new("input", ColumnType::Str),
                Column::new("chosen", ColumnType::Str),
                Column::new("rejected", ColumnType::Str),
                Column::new("chosen_id", ColumnType::Str),
                Column::new("rejected_id", ColumnType::Str),
            ]);
            columns.extend(llamafactory_common());
            for e in examples {
                let p = preference(e)?;
                let (system, user) = system_and_user(&e.prompt);
                let mut row = vec![
                    json!(system),
                    json!(user),
                    json!(""),
                    json!(p.0),
                    json!(p.1),
                    json!(p.2),
                    json!(p.3),
                ];
                row.extend(llamafactory_values(e));
                rows.push(row);
            }
        }
        (Kind::Grpo, Trainer::Verl) => {
            columns.extend([
                Column::new("data_source", ColumnType::Str),
                Column::new("prompt", ColumnType::Chat),
                Column::new("ability", ColumnType::Str),
                Column::new(
                    "reward_model",
                    ColumnType::Struct(vec![
                        ("style", ColumnType::Str, Nullable::No),
                        ("ground_truth", ColumnType::Str, Nullable::No),
                    ]),
                ),
                Column::new("extra_info", verl_extra_info()),
            ]);
            for (index, e) in examples.iter().enumerate() {
                rows.push(vec![
                    json!(data_source(dataset_format)),
                    chat(&e.prompt),
                    json!("code"),
                    json!({"style": "rule", "ground_truth": e.label()}),
                    verl_extra_values(e, index, None),
                ]);
            }
        }
        (Kind::Grpo, Trainer::Trl | Trainer::OpenRlhf) => {
            let (input, label) = if trainer == Trainer::Trl {
                ("prompt", "ground_truth")
            } else {
                ("input", "label")
            };
            columns.extend([
                Column::new(input, ColumnType::Chat),
                Column::new(label, ColumnType::Str),
                Column::nullable("original_id", ColumnType::Str),
            ]);
            columns.extend(common);
            for e in examples {
                let mut row = vec![chat(&e.prompt), json!(e.label()), json!(original_id(e))];
                row.extend(common_values(e));
                rows.push(row);
            }
        }
        (Kind::Dpo, Trainer::Verl) | (Kind::Grpo, Trainer::LlamaFactory) => {
            // `supports` refused these above.
            return Err(DataError::Options(format!(
                "{} has no {} format",
                trainer.name(),
                kind.name()
            )));
        }
    }
    Ok(Table { columns, rows })
}

fn llamafactory_common() -> [Column; 4] {
    [
        Column::new("problem_id", ColumnType::Str),
        Column::new("split", ColumnType::Str),
        Column::new("objective", ColumnType::Str),
        Column::new("language", ColumnType::Str),
    ]
}

fn llamafactory_values(e: &Example) -> Vec<Value> {
    vec![
        json!(e.problem_id),
        json!(e.split.name()),
        json!(e.instruction.name()),
        json!(e.language.name()),
    ]
}

fn verl_extra_info() -> ColumnType {
    ColumnType::Struct(vec![
        ("split", ColumnType::Str, Nullable::No),
        ("index", ColumnType::Int, Nullable::No),
        ("problem_id", ColumnType::Str, Nullable::No),
        ("instruction", ColumnType::Str, Nullable::No),
        ("language", ColumnType::Str, Nullable::No),
        ("mode", ColumnType::Str, Nullable::No),
        ("solution_id", ColumnType::Str, Nullable::Yes),
        ("original_id", ColumnType::Str, Nullable::Yes),
        ("baseline_passed", ColumnType::Bool, Nullable::Yes),
        ("baseline_time_ms", ColumnType::Float, Nullable::Yes),
        ("baseline_memory_kb", ColumnType::Float, Nullable::Yes),
        ("baseline_integral", ColumnType::Float, Nullable::Yes),
    ])
}

fn verl_extra_values(e: &Example, index: usize, solution_id: Option<&str>) -> Value {
    let baseline = match &e.target {
        Target::Reward { baseline, .. } => baseline.as_ref(),
        _ => None,
    };
    json!({
        "split": e.split.name(),
        "index": index,
        "problem_id": e.problem_id,
        "instruction": e.instruction.name(),
        "language": e.language.name(),
        "mode": e.mode,
        "solution_id": solution_id,
        "original_id": original_id(e),
        "baseline_passed": baseline.map(|b| b.passed),
        "baseline_time_ms": baseline.and_then(|b| b.time_ms),
        "baseline_memory_kb": baseline.and_then(|b| b.memory_kb),
        "baseline_integral": baseline.and_then(|b| b.integral),
    })
}

fn original_id(e: &Example) -> Option<&str> {
    match &e.target {
        Target::Reward { original_id, .. } => original_id.as_deref(),
        _ => None,
    }
}

fn mismatch(e: &Example, want: &str) -> DataError {
    DataError::Options(format!(
        "example of problem `{}` is not {want} data (a builder bug)",
        e.problem_id
    ))
}

fn completion(e: &Example) -> Result<(&str, &str), DataError> {
    match &e.target {
        Target::Completion { text, solution_id } => Ok((text, solution_id)),
        _ => Err(mismatch(e, "SFT")),
    }
}

fn preference(e: &Example) -> Result<(&str, &str, &str, &str), DataError> {
    match &e.target {
        Target::Preference {
            chosen,
            rejected,
            chosen_id,
            rejected_id,
        } => Ok((chosen, rejected, chosen_id, rejected_id)),
        _ => Err(mismatch(e, "DPO")),
    }
}

/// LLaMA-Factory's `dataset_info.json` entries for files `name -> file_name` of `kind`.
pub fn llamafactory_dataset_info(kind: Kind, files: &[(String, String)]) -> Value {
    let mut info = serde_json::Map::new();
    for (name, file) in files {
        let entry = match kind {
            Kind::Dpo => json!({
                "file_name": file,
                "formatting": "alpaca",
                "ranking": true,
                "columns": {
                    "prompt": "instruction",
                    "query": "input",
                    "chosen": "chosen",
                    "rejected": "rejected",
                    "system": "system"
                }
            }),
            _ => json!({
                "file_name": file,
                "formatting": "alpaca",
                "columns": {
                    "prompt": "instruction",
                    "query": "input",
                    "response": "output",
                    "system": "system"
                }
            }),
        };
        info.insert(name.clone(), entry);
    }
    Value::Object(info)
}
