//! Golden streams recorded from a real Spark JVM, and their replay against real workers.
//!
//! - [`tap`]: `fakejvm tap`, the recording stand-in for PYSPARK_PYTHON between the JVM and the
//!   real daemon or worker; it writes a [`spool`] as bytes pass.
//! - [`record`]: `fakejvm record`, runs a Spark job with the tap and turns the spool into a
//!   golden folder ([`format`]).
//! - [`normalise`]: volatile fields (paths, ports, secrets, timings) found and replaced through
//!   the typed protocol values of the dialect.
//! - [`replay`]: `fakejvm replay`, sends the recorded requests to a live worker of the recorded
//!   version and mode and compares the replies frame by frame.
//! - [`bless`]: `replay --bless` stages a changed reply as pending files with a diff;
//!   `--review`, `--accept`, `--reject` act on them (insta's review flow).

pub mod bless;
pub mod format;
pub mod normalise;
pub mod record;
pub mod replay;
pub mod spool;
pub mod tap;

pub use format::{Golden, Index};
pub use record::{record_cmd, RecordArgs};
pub use replay::{replay_cmd, replay_golden, GoldenReport, ReplayArgs, ReplayOptions};
pub use tap::{tap_main, TapArgs};

use std::path::Path;

/// A golden or spool file: [`crate::atomic::write_atomic`] with `WriteOptions::SHARED` (0644:
/// golden files are meant to be committed and read).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::atomic::write_atomic(path, bytes, crate::atomic::WriteOptions::SHARED)
}
