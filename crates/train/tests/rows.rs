//! Training rows read the same from JSON Lines and from Parquet (written by `afterburner data`'s
//! own table writer), and bad files are refused with the file, the row and why.

use afterburner_data::table::{Column, ColumnType, FileFormat, Table};
use afterburner_train::TrainError;
use afterburner_train::dpo::read_preferences;
use afterburner_train::sft::{PromptCompletion, read_prompt_completion, read_rows};
use serde_json::json;

fn chat(role: &str, content: &str) -> serde_json::Value {
    json!([{"role": role, "content": content}])
}

fn write_both(table: &Table, dir: &std::path::Path, stem: &str) -> [std::path::PathBuf; 2] {
    let jsonl = dir.join(format!("{stem}.jsonl"));
    let parquet = dir.join(format!("{stem}.parquet"));
    table.write(&jsonl, FileFormat::Jsonl).unwrap();
    table.write(&parquet, FileFormat::Parquet).unwrap();
    [jsonl, parquet]
}

#[test]
fn conversational_and_standard_rows_read_the_same_from_jsonl_and_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let conversational = Table {
        columns: vec![
            Column::new("prompt", ColumnType::Chat),
            Column::new("completion", ColumnType::Chat),
            Column::new("problem_id", ColumnType::Str),
        ],
        rows: vec![
            vec![
                chat("user", "Print 1."),
                chat("assistant", "```python\nprint(1)\n```"),
                json!("p1"),
            ],
            vec![
                json!([{"role": "system", "content": "Be fast."}, {"role": "user", "content": "Sum."}]),
                chat("assistant", "print(sum(map(int, input().split())))"),
                json!("p2"),
            ],
        ],
    };
    let [jsonl, parquet] = write_both(&conversational, dir.path(), "sft");
    let from_jsonl = read_prompt_completion(&jsonl).unwrap();
    let from_parquet = read_prompt_completion(&parquet).unwrap();
    assert_eq!(from_jsonl, from_parquet);
    assert_eq!(from_parquet.len(), 2);
    let PromptCompletion::Conversational { prompt, completion } = &from_parquet[1] else {
        panic!("a chat-list row reads as conversational");
    };
    assert_eq!(prompt.len(), 2);
    assert_eq!(prompt[0].role, "system");
    assert_eq!(
        completion[0].content,
        "print(sum(map(int, input().split())))"
    );

    let standard = Table {
        columns: vec![
            Column::new("prompt", ColumnType::Str),
            Column::new("chosen", ColumnType::Str),
            Column::new("rejected", ColumnType::Str),
        ],
        rows: vec![vec![json!("Q"), json!(" fast"), json!(" slow")]],
    };
    let [jsonl, parquet] = write_both(&standard, dir.path(), "dpo");
    let pairs = read_preferences(&parquet).unwrap();
    assert_eq!(pairs, read_preferences(&jsonl).unwrap());
    assert_eq!(
        pairs[0].chosen,
        PromptCompletion::Standard {
            prompt: "Q".into(),
            completion: " fast".into()
        }
    );
}

#[test]
fn nested_labels_read_back_as_objects() {
    let dir = tempfile::tempdir().unwrap();
    let table = Table {
        columns: vec![
            Column::new("prompt", ColumnType::Chat),
            Column::new(
                "ground_truth",
                ColumnType::Struct(vec![
                    (
                        "problem_id",
                        ColumnType::Str,
                        afterburner_data::table::Nullable::No,
                    ),
                    (
                        "time_ms",
                        ColumnType::Float,
                        afterburner_data::table::Nullable::Yes,
                    ),
                ]),
            ),
        ],
        rows: vec![vec![
            chat("user", "Solve it."),
            json!({"problem_id": "cc-1", "time_ms": 12.5}),
        ]],
    };
    let [jsonl, parquet] = write_both(&table, dir.path(), "grpo");
    let read = |path: &std::path::Path| {
        read_rows(path, |row| {
            Ok(row.get("ground_truth").cloned().ok_or("no label")?)
        })
        .unwrap()
    };
    assert_eq!(read(&parquet), read(&jsonl));
    assert_eq!(read(&parquet)[0]["problem_id"], "cc-1");
    assert_eq!(read(&parquet)[0]["time_ms"], 12.5);
}

#[test]
fn bad_files_and_rows_are_refused_with_file_row_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let not_parquet = dir.path().join("broken.parquet");
    std::fs::write(&not_parquet, b"{\"prompt\": \"x\"}\n").unwrap();
    let err = read_prompt_completion(&not_parquet).unwrap_err();
    assert!(matches!(err, TrainError::Data { row: 0, .. }), "{err}");
    assert!(err.to_string().contains("not a Parquet file"), "{err}");

    // A prompt-only table (GRPO rows) is not SFT data: the first row is named.
    let table = Table {
        columns: vec![Column::new("prompt", ColumnType::Chat)],
        rows: vec![vec![chat("user", "a")], vec![chat("user", "b")]],
    };
    let [_, parquet] = write_both(&table, dir.path(), "prompts");
    let err = read_prompt_completion(&parquet).unwrap_err().to_string();
    assert!(
        err.contains("prompts.parquet: row 1: no `completion`"),
        "{err}"
    );

    let empty = Table {
        columns: vec![Column::new("prompt", ColumnType::Str)],
        rows: vec![],
    };
    let [_, parquet] = write_both(&empty, dir.path(), "empty");
    let err = read_prompt_completion(&parquet).unwrap_err().to_string();
    assert!(err.contains("no rows"), "{err}");
}
