//! Isolated, precisely measured execution of untrusted programs.

mod language;

pub use language::{Language, UnknownLanguage};
