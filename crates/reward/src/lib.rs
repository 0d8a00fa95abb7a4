//! What a model answered and what that answer earns.
//!
//! - [`response`]: parse a model response (`<thinking>...</thinking><solution>...</solution>`,
//!   fenced code blocks) into the code to run and whether its format is the one asked for.
//! - [`reward`]: the GRPO reward of the paper (SPEC section 7), corrected: format, correctness
//!   transition and efficiency against the original solution's measured performance, in
//!   consistent units.
//!
//! Pure functions: nothing here runs code or speaks HTTP. The loop, the server and the trainers
//! feed it measurements from the benchmark harness.

#![warn(missing_docs)]

pub mod response;
pub mod reward;

pub use response::{CodeBlock, ParsedResponse, code_blocks, parse_response};
pub use reward::{Ceilings, Reward, RewardConfig, RewardInput, reward};
