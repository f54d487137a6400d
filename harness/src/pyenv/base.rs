//! The base interpreters fakejvm builds its envs from: which CPythons this machine has, and the
//! one to use for a Python minor version.
//!
//! Without `--python-version` the base is `$FAKEJVM_BASE_PYTHON`, else `python3` on PATH, as
//! always. With `--python-version 3.X` it is the first of these that runs and reports 3.X:
//! `$FAKEJVM_BASE_PYTHON`; pyenv's newest `3.X.*` (`$PYENV_ROOT/versions`, default
//! `~/.pyenv/versions`, read directly so pyenv's shims, which refuse versions not selected, are
//! never in the way); `python3.X` on PATH; `python3` on PATH. Every candidate is run once to
//! learn its version, so a broken one is skipped, never trusted by its name.

use super::version::PythonMinor;
use super::{child, EnvError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// A base interpreter and where it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BasePython {
    /// As given or found (`python3`, a pyenv path): it is run, never resolved.
    pub python: String,
    pub version: PythonMinor,
    /// "FAKEJVM_BASE_PYTHON", "pyenv", "PATH".
    pub found_by: &'static str,
}

/// `$FAKEJVM_BASE_PYTHON`, if set.
fn configured() -> Option<String> {
    std::env::var("FAKEJVM_BASE_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
}

/// The interpreter envs are built from when no Python version is asked for.
pub(super) fn default_base() -> String {
    configured().unwrap_or_else(|| "python3".into())
}

/// The base for `wanted`, or the default one (which must be a Python 3).
pub fn find(wanted: Option<PythonMinor>) -> Result<BasePython, EnvError> {
    let Some(wanted) = wanted else {
        let python = default_base();
        let version = version_of(&python).map_err(|detail| EnvError::NoBasePython {
            python: python.clone(),
            detail,
        })?;
        if version.major != 3 {
            return Err(EnvError::NoBasePython {
                python,
                detail: format!("it is Python {version}, not a Python 3"),
            });
        }
        let found_by = if configured().is_some() {
            "FAKEJVM_BASE_PYTHON"
        } else {
            "PATH"
        };
        return Ok(BasePython {
            python,
            version,
            found_by,
        });
    };
    let mut looked = vec![];
    for (python, found_by) in candidates(wanted) {
        match version_of(&python) {
            Ok(v) if v == wanted => {
                return Ok(BasePython {
                    python,
                    version: v,
                    found_by,
                })
            }
            Ok(v) => looked.push(format!("{python} is {v}")),
            Err(_) => looked.push(format!("{python} does not run")),
        }
    }
    Err(EnvError::NoInterpreter {
        python: wanted,
        looked: looked.join("; "),
    })
}

/// Where a Python `wanted` may be, in order of preference.
fn candidates(wanted: PythonMinor) -> Vec<(String, &'static str)> {
    let mut out = vec![];
    if let Some(p) = configured() {
        out.push((p, "FAKEJVM_BASE_PYTHON"));
    }
    let exe = format!("python{wanted}");
    if let Some(p) = pyenv_newest(&pyenv_root(), wanted) {
        out.push((p.join("bin").join(&exe).display().to_string(), "pyenv"));
    }
    out.push((exe, "PATH"));
    out.push(("python3".into(), "PATH"));
    out
}

fn pyenv_root() -> PathBuf {
    match std::env::var_os("PYENV_ROOT") {
        Some(r) if !r.is_empty() => PathBuf::from(r),
        _ => dirs::home_dir().unwrap_or_default().join(".pyenv"),
    }
}

/// pyenv's newest plain CPython `wanted.*` (3.12.1 over 3.12.0; not 3.13t or 3.12-dev builds).
fn pyenv_newest(root: &Path, wanted: PythonMinor) -> Option<PathBuf> {
    let prefix = format!("{wanted}.");
    std::fs::read_dir(root.join("versions"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let patch: u32 = name.strip_prefix(&prefix)?.parse().ok()?;
            Some((patch, e.path()))
        })
        .max()
        .map(|(_, p)| p)
}

/// Every CPython 3 this machine offers as a base, by minor version (for messages and lists).
pub fn available() -> Vec<BasePython> {
    let mut minors: Vec<PythonMinor> = std::fs::read_dir(pyenv_root().join("versions"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let mut parts = name.splitn(3, '.');
            let mm = format!("{}.{}", parts.next()?, parts.next()?);
            parts.next()?.parse::<u32>().ok()?;
            mm.parse().ok()
        })
        .collect();
    if let Ok(b) = find(None) {
        minors.push(b.version);
    }
    minors.sort();
    minors.dedup();
    minors
        .into_iter()
        .filter(|m| m.major == 3)
        .filter_map(|m| find(Some(m)).ok())
        .collect()
}

/// Run `python` once and read its "MAJOR.MINOR"; remembered per process.
fn version_of(python: &str) -> Result<PythonMinor, String> {
    static KNOWN: Mutex<Option<HashMap<String, PythonMinor>>> = Mutex::new(None);
    if let Some(v) = KNOWN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|m| m.get(python))
    {
        return Ok(*v);
    }
    let mut cmd = Command::new(python);
    // Python 2 has no f-strings and print is a statement there: keep this valid in both.
    cmd.args([
        "-c",
        "import sys; sys.stdout.write('%d.%d' % sys.version_info[:2])",
    ]);
    let ran = child::run(cmd, None, Duration::from_secs(60), None).map_err(|e| e.to_string())?;
    if !ran.succeeded() {
        return Err(format!(
            "it exited with {}: {}",
            ran.status_text(),
            ran.tail()
        ));
    }
    let text = String::from_utf8_lossy(&ran.stdout).trim().to_string();
    let v: PythonMinor = text
        .parse()
        .map_err(|_| format!("it reports version {text:?}"))?;
    KNOWN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(python.to_string(), v);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pyenv_newest_takes_the_highest_plain_patch() {
        let root = tempfile::tempdir().unwrap();
        for v in [
            "3.12.0", "3.12.10", "3.12.9", "3.12-dev", "3.13t", "3.13.1t", "3.1.2",
        ] {
            std::fs::create_dir_all(root.path().join("versions").join(v)).unwrap();
        }
        let got = pyenv_newest(root.path(), "3.12".parse().unwrap()).unwrap();
        assert!(got.ends_with("versions/3.12.10"), "{}", got.display());
        assert_eq!(pyenv_newest(root.path(), "3.13".parse().unwrap()), None);
    }

    #[test]
    fn the_default_base_is_a_python_3_and_found_again_by_its_version() {
        let b = find(None).unwrap();
        assert_eq!(b.version.major, 3);
        let again = find(Some(b.version)).unwrap();
        assert_eq!(again.version, b.version);
    }

    #[test]
    fn a_version_nobody_has_is_no_interpreter_with_the_way_to_get_it() {
        let err = find(Some("3.99".parse().unwrap())).unwrap_err();
        assert!(matches!(err, EnvError::NoInterpreter { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("pyenv install 3.99"), "{msg}");
        assert!(msg.contains("python3.99"), "{msg}");
    }
}
