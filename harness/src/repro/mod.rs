//! `fakejvm repro FILE`: replay a reproducer that `fakejvm fuzz` wrote (its format is
//! crate::fuzz::reproducer) and say whether the finding still reproduces.
//!
//! Replaying resolves (provisions if needed) an env with the file's pyspark, sends the same
//! bytes the same way to a fresh worker through the fuzzer's executor, and compares signatures:
//! exit 0 when the finding no longer reproduces, 1 when it does, 2 on bad input, 3 when fakejvm
//! itself fails.

pub mod run;

pub use run::{repro_cmd, run, ReproArgs, ReproReport};
