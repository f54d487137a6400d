//! Python tools fakejvm runs beside a pyspark env, never inside it: coverage.py's C tracer for
//! `fakejvm fuzz --coverage` on CPython 3.9-3.11 (3.12+ traces with sys.monitoring, nothing to
//! install). Installed once per CPython minor version into `<cache_root>/tools/` from the pinned,
//! hashed `harness/python/coverage-requirements.txt`, by the installer the envs use.

use super::installer::{self, InstallerChoice};
use super::version::PythonMinor;
use super::{base, child, EnvError};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The coverage.py the requirements file pins (a unit test holds them together).
pub const COVERAGE_VERSION: &str = "7.10.7";
const COVERAGE_REQUIREMENTS: &str = include_str!("../../python/coverage-requirements.txt");

/// The directory to put on sys.path for coverage.py's C tracer (`coverage/tracer.*.so`) built
/// for CPython `python` ("3.11"), installing it first if this cache has none.
pub fn coverage_tracer(python: &str) -> Result<PathBuf, EnvError> {
    let minor: PythonMinor = python
        .parse()
        .map_err(|text: String| EnvError::ProbeFailed {
            python: PathBuf::from(python),
            detail: text,
        })?;
    let abi = format!("cpython-{}{}-", minor.major, minor.minor);
    let has_tracer = |dir: &Path| {
        std::fs::read_dir(dir.join("coverage"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("tracer.") && name.contains(&abi) && name.ends_with(".so")
            })
    };
    installer::tool(
        &format!("coverage-{COVERAGE_VERSION}-py{minor}"),
        &format!("coverage.py {COVERAGE_VERSION} for Python {minor}"),
        "its C tracer, for `fakejvm fuzz --coverage`; not into any pyspark env",
        &has_tracer,
        &|building, failed| {
            // The base interpreter of that minor version picks the wheel (and runs pip).
            let base = base::find(Some(minor))?;
            let installer = installer::pick(InstallerChoice::Auto, &base.python)?;
            std::fs::create_dir_all(building).map_err(|source| EnvError::Io {
                action: "create",
                path: building.to_path_buf(),
                source,
            })?;
            let reqs = building.join("fakejvm-coverage-requirements.txt");
            std::fs::write(&reqs, COVERAGE_REQUIREMENTS).map_err(|source| EnvError::Io {
                action: "write",
                path: reqs.clone(),
                source,
            })?;
            installer::install_target(
                &installer,
                Path::new(&base.python),
                &base.python,
                &reqs,
                building,
                failed,
            )?;
            if !has_tracer(building) {
                return Err(failed(
                    "checking the install",
                    format!(
                        "no coverage/tracer.{}*.so in it: coverage.py {COVERAGE_VERSION} has no C tracer wheel pinned for this platform (harness/python/coverage-requirements.txt lists CPython 3.9-3.11 manylinux x86_64)",
                        abi
                    ),
                ));
            }
            Ok(())
        },
    )
}

/// Run `python -c code args...` to completion within `limit`, in its own process group (killed
/// with it); its stdout, or why it failed.
pub fn run_python(
    python: &Path,
    code: &str,
    args: &[String],
    limit: Duration,
) -> Result<Vec<u8>, EnvError> {
    let mut cmd = Command::new(python);
    cmd.arg("-c").arg(code).args(args);
    let failed = |detail: String| EnvError::Glue {
        python: python.to_path_buf(),
        detail,
    };
    let ran = child::run(cmd, None, limit, None).map_err(|e| failed(e.to_string()))?;
    if !ran.succeeded() {
        return Err(failed(format!("{}: {}", ran.status_text(), ran.tail())));
    }
    Ok(ran.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_requirements_pin_the_version_with_hashes_only() {
        let pins: Vec<&str> = COVERAGE_REQUIREMENTS
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .collect();
        assert_eq!(
            pins.first().map(|l| l.trim()),
            Some(format!("coverage=={COVERAGE_VERSION} \\").as_str())
        );
        let hashes = pins
            .iter()
            .filter(|l| l.trim().starts_with("--hash=sha256:"))
            .count();
        assert_eq!(hashes, pins.len() - 1, "{pins:?}");
        assert!(hashes >= 1);
    }
}
