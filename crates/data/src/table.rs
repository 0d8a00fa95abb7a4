//! Rows with a declared schema, written as JSON Lines or Parquet.
//!
//! A [`Table`] is a list of typed columns and rows of JSON values in that column order. JSONL
//! writes each row as one object with its keys in column order; Parquet writes the same values
//! with Arrow types: strings, 64-bit integers and floats, booleans, structs, and chat lists
//! (`list<struct<role: string, content: string>>`, what `datasets` reads back as a list of
//! `{"role", "content"}` dicts). Values are checked against their column's type as they are
//! written, so a builder bug is an error naming the column and row, never a silently wrong
//! file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, OffsetBufferBuilder, StringBuilder,
};
use arrow_array::{ArrayRef, ListArray, RecordBatch, StructArray};
use arrow_schema::{DataType, Field, Fields, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde_json::Value;

use crate::DataError;

/// The type of a column (or of a struct's field).
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnType {
    /// A string.
    Str,
    /// A 64-bit integer.
    Int,
    /// A 64-bit float.
    Float,
    /// A boolean.
    Bool,
    /// A list of `{"role", "content"}` messages.
    Chat,
    /// A struct of named fields.
    Struct(Vec<(&'static str, ColumnType, Nullable)>),
}

/// Whether a value may be null.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nullable {
    /// Never null.
    No,
    /// May be null (JSON `null`, or absent from a struct).
    Yes,
}

impl ColumnType {
    fn arrow(&self) -> DataType {
        match self {
            ColumnType::Str => DataType::Utf8,
            ColumnType::Int => DataType::Int64,
            ColumnType::Float => DataType::Float64,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Chat => DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(message_fields()),
                false,
            ))),
            ColumnType::Struct(fields) => DataType::Struct(struct_fields(fields)),
        }
    }
}

fn message_fields() -> Fields {
    Fields::from(vec![
        Field::new("role", DataType::Utf8, false),
        Field::new("content", DataType::Utf8, false),
    ])
}

fn struct_fields(fields: &[(&'static str, ColumnType, Nullable)]) -> Fields {
    fields
        .iter()
        .map(|(name, ty, nullable)| Field::new(*name, ty.arrow(), *nullable == Nullable::Yes))
        .collect()
}

/// A column: its name, type and whether it may be null.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// The name.
    pub name: &'static str,
    /// The type.
    pub ty: ColumnType,
    /// Whether it may be null.
    pub nullable: Nullable,
}

impl Column {
    /// A column that is never null.
    pub fn new(name: &'static str, ty: ColumnType) -> Self {
        Column {
            name,
            ty,
            nullable: Nullable::No,
        }
    }

    /// A column that may be null.
    pub fn nullable(name: &'static str, ty: ColumnType) -> Self {
        Column {
            name,
            ty,
            nullable: Nullable::Yes,
        }
    }
}

/// Typed rows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    /// The columns, in order.
    pub columns: Vec<Column>,
    /// The rows: one value per column, in column order.
    pub rows: Vec<Vec<Value>>,
}

/// The file format of the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// One JSON object per line.
    Jsonl,
    /// Apache Parquet (zstd).
    Parquet,
}

impl FileFormat {
    /// The file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::Jsonl => "jsonl",
            FileFormat::Parquet => "parquet",
        }
    }
}

impl Table {
    /// Writes the rows to `path` in `format` (through a temporary file renamed into place, so
    /// a failed write leaves no partial file under the final name).
    pub fn write(&self, path: &Path, format: FileFormat) -> Result<(), DataError> {
        let io = |action: &'static str, e: std::io::Error| DataError::Io {
            action,
            path: path.to_path_buf(),
            source: e,
        };
        let tmp = path.with_extension(format!("{}.tmp", format.extension()));
        let file = File::create(&tmp).map_err(|e| io("create", e))?;
        let written = match format {
            FileFormat::Jsonl => self.write_jsonl(file, path),
            FileFormat::Parquet => self.write_parquet(file, path),
        };
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, path).map_err(|e| io("rename into place", e))
    }

    fn check(&self, path: &Path) -> Result<(), DataError> {
        for (r, row) in self.rows.iter().enumerate() {
            if row.len() != self.columns.len() {
                return Err(DataError::Schema {
                    path: path.to_path_buf(),
                    detail: format!(
                        "row {r} has {} values for {} columns",
                        row.len(),
                        self.columns.len()
                    ),
                });
            }
            for (column, value) in self.columns.iter().zip(row) {
                check_value(&column.ty, column.nullable, value).map_err(|why| {
                    DataError::Schema {
                        path: path.to_path_buf(),
                        detail: format!("row {r}, column `{}`: {why}", column.name),
                    }
                })?;
            }
        }
        Ok(())
    }

    fn write_jsonl(&self, file: File, path: &Path) -> Result<(), DataError> {
        self.check(path)?;
        let io = |e: std::io::Error| DataError::Io {
            action: "write",
            path: path.to_path_buf(),
            source: e,
        };
        let mut out = BufWriter::new(file);
        for row in &self.rows {
            out.write_all(b"{").map_err(io)?;
            for (k, (column, value)) in self.columns.iter().zip(row).enumerate() {
                if k > 0 {
                    out.write_all(b",").map_err(io)?;
                }
                serde_json::to_writer(&mut out, column.name)
                    .and_then(|()| {
                        out.write_all(b":").map_err(serde_json::Error::io)?;
                        serde_json::to_writer(&mut out, value)
                    })
                    .map_err(|e| io(std::io::Error::other(e)))?;
            }
            out.write_all(b"}\n").map_err(io)?;
        }
        out.flush().map_err(io)?;
        out.into_inner()
            .map_err(|e| io(e.into_error()))?
            .sync_all()
            .map_err(io)
    }

    fn write_parquet(&self, file: File, path: &Path) -> Result<(), DataError> {
        self.check(path)?;
        let fail = |e: &dyn std::fmt::Display| DataError::Io {
            action: "write",
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        };
        let schema = Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(c.name, c.ty.arrow(), c.nullable == Nullable::Yes))
                .collect::<Vec<_>>(),
        ));
        let arrays: Vec<ArrayRef> = self
            .columns
            .iter()
            .enumerate()
            .map(|(k, c)| {
                let values: Vec<&Value> = self.rows.iter().map(|r| &r[k]).collect();
                array(&c.ty, &values)
            })
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(|e| fail(&e))?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .build();
        let mut writer =
            ArrowWriter::try_new(file, schema, Some(properties)).map_err(|e| fail(&e))?;
        writer.write(&batch).map_err(|e| fail(&e))?;
        let file = writer.into_inner().map_err(|e| fail(&e))?;
        file.sync_all().map_err(|e| fail(&e))
    }
}

fn check_value(ty: &ColumnType, nullable: Nullable, value: &Value) -> Result<(), String> {
    if value.is_null() {
        return if nullable == Nullable::Yes {
            Ok(())
        } else {
            Err("null in a column that is never null".into())
        };
    }
    let ok = match ty {
        ColumnType::Str => value.is_string(),
        ColumnType::Int => value.is_i64() || value.is_u64(),
        ColumnType::Float => value.is_number(),
        ColumnType::Bool => value.is_boolean(),
        ColumnType::Chat => value.as_array().is_some_and(|messages| {
            messages.iter().all(|m| {
                m.as_object().is_some_and(|o| {
                    o.len() == 2 && o["role"].is_string() && o["content"].is_string()
                })
            })
        }),
        ColumnType::Struct(fields) => {
            let Some(object) = value.as_object() else {
                return Err(format!("expected an object, got {value}"));
            };
            if let Some(extra) = object
                .keys()
                .find(|k| !fields.iter().any(|(name, _, _)| name == k))
            {
                return Err(format!("unexpected field `{extra}`"));
            }
            for (name, ty, nullable) in fields {
                check_value(ty, *nullable, object.get(*name).unwrap_or(&Value::Null))
                    .map_err(|why| format!("field `{name}`: {why}"))?;
            }
            true
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("expected {ty:?}, got {value}"))
    }
}

/// The Arrow array of `values` (checked beforehand) of type `ty`.
fn array(ty: &ColumnType, values: &[&Value]) -> ArrayRef {
    match ty {
        ColumnType::Str => {
            let mut b = StringBuilder::new();
            for v in values {
                b.append_option(v.as_str());
            }
            Arc::new(b.finish())
        }
        ColumnType::Int => {
            let mut b = Int64Builder::new();
            for v in values {
                b.append_option(v.as_i64());
            }
            Arc::new(b.finish())
        }
        ColumnType::Float => {
            let mut b = Float64Builder::new();
            for v in values {
                b.append_option(v.as_f64());
            }
            Arc::new(b.finish())
        }
        ColumnType::Bool => {
            let mut b = BooleanBuilder::new();
            for v in values {
                b.append_option(v.as_bool());
            }
            Arc::new(b.finish())
        }
        ColumnType::Chat => {
            let mut offsets = OffsetBufferBuilder::<i32>::new(values.len());
            let mut roles = StringBuilder::new();
            let mut contents = StringBuilder::new();
            let mut validity = Vec::with_capacity(values.len());
            for v in values {
                let messages = v.as_array().map(Vec::as_slice).unwrap_or(&[]);
                for m in messages {
                    roles.append_option(m.get("role").and_then(Value::as_str));
                    contents.append_option(m.get("content").and_then(Value::as_str));
                }
                offsets.push_length(messages.len());
                validity.push(!v.is_null());
            }
            let messages = StructArray::new(
                message_fields(),
                vec![Arc::new(roles.finish()), Arc::new(contents.finish())],
                None,
            );
            let field = Arc::new(Field::new(
                "item",
                DataType::Struct(message_fields()),
                false,
            ));
            Arc::new(ListArray::new(
                field,
                offsets.finish(),
                Arc::new(messages),
                validity.iter().any(|v| !v).then(|| validity.into()),
            ))
        }
        ColumnType::Struct(fields) => {
            let children: Vec<ArrayRef> = fields
                .iter()
                .map(|(name, ty, _)| {
                    let column: Vec<&Value> = values
                        .iter()
                        .map(|v| v.get(*name).unwrap_or(&Value::Null))
                        .collect();
                    array(ty, &column)
                })
                .collect();
            let validity: Vec<bool> = values.iter().map(|v| !v.is_null()).collect();
            Arc::new(StructArray::new(
                struct_fields(fields),
                children,
                validity.iter().any(|v| !v).then(|| validity.into()),
            ))
        }
    }
}
