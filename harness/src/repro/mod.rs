//! Reproducer files: one finding, self-contained and versioned, replayed by `fakejvm repro`.
//!
//! A reproducer holds the exact request bytes (base64, with the frame map and, when short, hex),
//! the pyspark and Python versions, the dialect, the worker mode and how the bytes were written,
//! and the outcome and signature it ended in. Replaying resolves (provisions if needed) an env
//! with that pyspark, sends the same bytes the same way to a fresh worker, and compares
//! signatures: exit 0 when the finding no longer reproduces, 1 when it does, 2 on bad input.
//! Files are written atomically (report::write_atomic): a crash never leaves half a reproducer.

pub mod file;
pub mod replay;

pub use file::{Found, FrameRef, Reproducer, RequestBytes, FORMAT, KIND};
pub use replay::{replay, repro_cmd, ReplayReport, ReproArgs};

/// Input the user has to fix (a broken reproducer file, a wrong flag, a missing env): one line
/// naming the file and the problem. The CLI prints it and exits with 2.
/// One line naming the file and the problem (exit 2): the same type the golden loader uses.
pub use crate::golden::BadInput;
