//! The pyspark releases the package index has, as pip reports them (`pip index versions`), so
//! a version matrix can name ranges and globs (`3.5.0..3.5.9`, `4.0.*`).

use super::{base::default_base as base_python, child};
use std::process::Command;
use std::time::Duration;

/// pip's stdout for `pip index versions pyspark`, run by the base interpreter. Err is one line
/// saying what failed and what to do.
pub fn pip_index_versions() -> Result<String, String> {
    let base = base_python();
    let mut cmd = Command::new(&base);
    cmd.args([
        "-m",
        "pip",
        "index",
        "versions",
        "pyspark",
        "--disable-pip-version-check",
    ]);
    let ran = child::run(cmd, None, Duration::from_secs(120), None)
        .map_err(|e| format!("cannot run `{base} -m pip index versions pyspark`: {e}"))?;
    if !ran.succeeded() {
        return Err(format!(
            "`{base} -m pip index versions pyspark` exited with {}: {} (it needs the package index; name exact releases instead of ranges and globs to run without it)",
            ran.status_text(),
            ran.tail()
        ));
    }
    Ok(String::from_utf8_lossy(&ran.stdout).into_owned())
}
