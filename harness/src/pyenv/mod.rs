//! The Python side fakejvm drives: which interpreter, which pyspark, and the command bytes it
//! would be sent.
//!
//! Workers are always real pip-installed pyspark, so every run needs an interpreter with the
//! right pyspark. Either the user names one (`--python`, or `FAKEJVM_PYTHON` through the CLI) or
//! fakejvm keeps its own venvs, one per pinned pyspark, under a cache directory outside the repo
//! (`<cache_root>/envs/pyspark-<version>-py<major.minor>`), provisioned on first use.
//!
//! The only Python fakejvm runs of its own is `harness/python/fakejvm_glue.py`, embedded in the
//! binary: it probes an interpreter, it cloudpickles RDD functions into NON_UDF commands
//! with the target pyspark (see `command`), and it lists the installed pyspark's worker modules
//! (see `modules`).

mod child;
mod command;
mod modules;
mod provision;
pub mod releases;
pub mod shipped;
mod udf_command;
mod version;

pub use command::{build_commands, CommandSpec, SerializerSpec};
pub use modules::{worker_modules, WorkerModules};
pub use provision::{base_python_minor, setup};
pub use udf_command::{build_udf_functions, UdfFunctionSpec};
pub use version::PysparkVersion;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// The env used when no version is asked for: the newest 4.0.x (request family A).
pub const DEFAULT_PYSPARK: &str = "4.0.5";
/// One release per request family (A 4.0, B 4.1, C 4.2, D 4.3), and 3.5 for goldens recorded
/// from a Spark 3.5 JVM. A request like "4.1" means the pinned 4.1.x.
pub const PINNED: &[&str] = &["4.0.5", "4.1.4", "4.2.1", "4.3.0", "3.5.9"];
/// Installed next to pyspark so pandas and Arrow UDF kinds can run too.
pub const PANDAS: &str = "2.3.3";
pub const PYARROW: &str = "22.0.0";

/// The glue script, embedded so the binary works from any directory.
const GLUE: &str = include_str!("../../python/fakejvm_glue.py");
/// Starting Python and reading a few files: seconds at worst on a cold disk.
const PROBE_LIMIT: Duration = Duration::from_secs(60);

/// An interpreter with pyspark, as the worker launcher and the request encoder need it.
#[derive(Clone, Debug)]
pub struct PythonEnv {
    /// The interpreter to launch workers with (a venv's bin/python is kept as is, not resolved
    /// through its symlink, or it would leave the venv).
    pub python: PathBuf,
    pub pyspark: PysparkVersion,
    /// "MAJOR.MINOR", exactly what the JVM sends and the worker compares with its own.
    pub python_version: String,
    /// The imported pyspark package directory (site-packages/pyspark, or a Spark checkout's).
    pub pyspark_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("python interpreter {} not found: pass --python PATH to an interpreter with pyspark installed, or drop --python to use fakejvm's own env (`fakejvm env setup`)", python.display())]
    PythonMissing { python: PathBuf },
    #[error("cannot run python interpreter {}: {source}; pass --python PATH to an executable interpreter with pyspark installed", python.display())]
    PythonNotRunnable {
        python: PathBuf,
        source: std::io::Error,
    },
    #[error("{} (python {python_version}) has no pyspark: install one there (`{} -m pip install pyspark=={DEFAULT_PYSPARK}`), pass --python PATH to an interpreter with pyspark installed, or drop --python to use fakejvm's own env", python.display(), python.display())]
    NoPyspark {
        python: PathBuf,
        python_version: String,
    },
    #[error("cannot learn the Python and pyspark versions of {} ({detail}): pass --python PATH to a Python 3 interpreter with pyspark installed", python.display())]
    ProbeFailed { python: PathBuf, detail: String },
    #[error("{text:?} is not a pyspark version fakejvm can use: write a release like 4.0.5, or a pinned line ({})", PINNED.iter().map(|v| format!("{} for {v}", &v[..v.rfind('.').unwrap_or(v.len())])).collect::<Vec<_>>().join(", "))]
    BadVersion { text: String },
    #[error("{} has pyspark {found} but pyspark {wanted} was asked for: drop --pyspark to use that interpreter as it is, or drop --python to use fakejvm's own pyspark {wanted} env", python.display())]
    VersionMismatch {
        python: PathBuf,
        found: PysparkVersion,
        wanted: String,
    },
    #[error("cannot run the base Python {python:?} that fakejvm builds its envs from ({detail}): set FAKEJVM_BASE_PYTHON to a Python 3 interpreter, or put python3 on PATH")]
    NoBasePython { python: String, detail: String },
    #[error("provisioning pyspark {pyspark} in {} failed at `{step}`:\n{detail}\nFix the cause (pip needs PyPI or the mirror in your pip.conf; `python -m venv` needs the venv module, e.g. apt install python3-venv), then run `fakejvm env setup --pyspark {pyspark}` again", dir.display())]
    ProvisionFailed {
        pyspark: String,
        dir: PathBuf,
        step: String,
        detail: String,
    },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} did not finish within {}s and was killed; {hint}", after.as_secs())]
    Timeout {
        what: String,
        after: Duration,
        hint: String,
    },
    #[error("the function of command spec #{index} (source begins {head:?}) cannot be turned into a command:\n{python_error}\nFix the scenario: its source must bind `func` to a callable taking (split_index, iterator)")]
    BadFunction {
        index: usize,
        head: String,
        python_error: String,
    },
    #[error("fakejvm's command builder failed under {} ({detail}); this is a fakejvm bug or a pyspark it does not know: please report it with this message", python.display())]
    Glue { python: PathBuf, detail: String },
    /// A venv, PEX or packed archive given as `--python` that cannot be run as it is.
    #[error(transparent)]
    Shipped(#[from] shipped::ShippedError),
}

impl EnvError {
    /// The user's choice (an interpreter, a version, a scenario's function) is wrong, as opposed
    /// to fakejvm failing to build, probe or drive an env it chose itself.
    pub fn is_bad_input(&self) -> bool {
        use EnvError::*;
        match self {
            PythonMissing { .. }
            | PythonNotRunnable { .. }
            | NoPyspark { .. }
            | ProbeFailed { .. }
            | BadVersion { .. }
            | VersionMismatch { .. }
            | BadFunction { .. } => true,
            NoBasePython { .. }
            | ProvisionFailed { .. }
            | Io { .. }
            | Timeout { .. }
            | Glue { .. } => false,
            Shipped(e) => e.is_bad_input(),
        }
    }
}

/// Where fakejvm keeps envs and built commands: `$FAKEJVM_CACHE_DIR`, else the user's cache
/// directory (`~/.cache/fakejvm` on Linux). Never inside the repo: envs are about 400 MB each.
pub fn cache_root() -> PathBuf {
    match std::env::var_os("FAKEJVM_CACHE_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => dirs::cache_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("fakejvm"),
    }
}

/// `<cache_root>/envs/pyspark-<pyspark>-py<python_mm>`; the Python minor version is part of the
/// key because a venv (and every wheel in it) is built for exactly one.
pub fn env_dir(pyspark: &str, python_mm: &str) -> PathBuf {
    cache_root()
        .join("envs")
        .join(format!("pyspark-{pyspark}-py{python_mm}"))
}

/// fakejvm's own env for `release` ("4.0.5") under the base Python: its directory, and whether
/// it is complete (its marker written last by provisioning). The one place that finds it.
pub fn cached_env(release: &str) -> Result<(PathBuf, bool), EnvError> {
    let dir = env_dir(release, &base_python_minor()?);
    let complete = provision::is_complete(&dir, release);
    Ok((dir, complete))
}

/// Run `python` once and report its Python and pyspark versions. Fails when it is missing, not
/// executable, not a Python 3, or has no importable pyspark.
pub fn probe(python: &Path) -> Result<PythonEnv, EnvError> {
    probe_with_packages(python).map(|(env, _)| env)
}

/// `probe`, plus the installed versions of pyspark, pandas, pyarrow and py4j (for the marker).
fn probe_with_packages(python: &Path) -> Result<(PythonEnv, BTreeMap<String, String>), EnvError> {
    let mut cmd = Command::new(python);
    cmd.arg("-c").arg(GLUE).arg("probe");
    let ran = child::run(cmd, None, PROBE_LIMIT, None).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => EnvError::PythonMissing {
            python: python.to_path_buf(),
        },
        _ => EnvError::PythonNotRunnable {
            python: python.to_path_buf(),
            source,
        },
    })?;
    let failed = |detail: String| EnvError::ProbeFailed {
        python: python.to_path_buf(),
        detail,
    };
    if ran.status.is_none() {
        return Err(EnvError::Timeout {
            what: format!("probing {}", python.display()),
            after: PROBE_LIMIT,
            hint: "check that it is a working Python 3 interpreter".into(),
        });
    }
    if !ran.succeeded() {
        return Err(failed(format!(
            "it exited with {}: {}",
            ran.status_text(),
            ran.tail()
        )));
    }
    #[derive(serde::Deserialize)]
    struct Found {
        python: String,
        pyspark: Option<String>,
        pyspark_dir: Option<PathBuf>,
        #[serde(default)]
        packages: BTreeMap<String, String>,
    }
    let found: Found = serde_json::from_slice(&ran.stdout)
        .map_err(|e| failed(format!("unexpected answer: {e}")))?;
    let (Some(pyspark), Some(pyspark_dir)) = (found.pyspark, found.pyspark_dir) else {
        return Err(EnvError::NoPyspark {
            python: python.to_path_buf(),
            python_version: found.python,
        });
    };
    let env = PythonEnv {
        python: python.to_path_buf(),
        pyspark: pyspark.parse()?,
        python_version: found.python,
        pyspark_dir,
    };
    Ok((env, found.packages))
}

/// The env a command should use. An explicit interpreter (`--python`, or `FAKEJVM_PYTHON`, which
/// the CLI passes in) wins, and must then satisfy `pyspark` if one is asked for. Otherwise the
/// cached env for `pyspark` (default `DEFAULT_PYSPARK`; "4.1" means the pinned 4.1.x),
/// provisioned first if it is missing. Probes are remembered for the life of the process.
pub fn resolve(python: Option<&Path>, pyspark: Option<&str>) -> Result<PythonEnv, EnvError> {
    if let Some(given) = python {
        // An interpreter, or a venv, PEX or packed archive to run as one.
        let shipped = shipped::open(given)?;
        let python = shipped.python.as_path();
        let env = probe_once(python)?;
        return match pyspark {
            Some(wanted) if !version::satisfies(env.pyspark, wanted) => {
                Err(EnvError::VersionMismatch {
                    python: python.to_path_buf(),
                    found: env.pyspark,
                    wanted: wanted.to_string(),
                })
            }
            _ => Ok(env),
        };
    }
    let release = version::release_for(pyspark.unwrap_or(DEFAULT_PYSPARK))?;
    let (dir, complete) = cached_env(&release)?;
    if complete {
        if let Ok(env) = probe_once(&provision::python_in(&dir)) {
            if env.pyspark.to_string() == release {
                return Ok(env);
            }
        }
    }
    // Missing, incomplete or broken: `setup` rechecks under the lock and rebuilds if needed.
    let env = setup(&release)?;
    remember(&env);
    Ok(env)
}

static PROBED: Mutex<Option<HashMap<PathBuf, PythonEnv>>> = Mutex::new(None);

fn probe_once(python: &Path) -> Result<PythonEnv, EnvError> {
    let known = PROBED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|m| m.get(python).cloned());
    match known {
        Some(env) => Ok(env),
        None => {
            let env = probe(python)?;
            remember(&env);
            Ok(env)
        }
    }
}

fn remember(env: &PythonEnv) {
    let mut probed = PROBED.lock().unwrap_or_else(|p| p.into_inner());
    probed
        .get_or_insert_with(HashMap::new)
        .insert(env.python.clone(), env.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cached default env, found where the binary finds it (`$FAKEJVM_CACHE_DIR`, the base
    /// Python of `$FAKEJVM_BASE_PYTHON`). Unit tests never provision (minutes); they fail and
    /// say how.
    pub(super) fn default_env() -> PythonEnv {
        let (dir, complete) = cached_env(DEFAULT_PYSPARK).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            complete,
            "no finished pyspark {DEFAULT_PYSPARK} env at {} (no fakejvm-env.json marker).\n\
             Get it with `cargo run -p fakejvm -- env setup --pyspark {DEFAULT_PYSPARK}` (a few minutes, once), \
             or run any integration test, which provisions it on first use.",
            dir.display()
        );
        probe(&provision::python_in(&dir))
            .unwrap_or_else(|e| panic!("the env at {} is broken: {e}", dir.display()))
    }

    #[test]
    fn probe_reports_the_default_env() {
        let env = default_env();
        assert_eq!(env.pyspark.to_string(), DEFAULT_PYSPARK);
        // The env is built from the base Python, whichever minor version that is.
        assert_eq!(env.python_version, base_python_minor().unwrap());
        assert!(
            env.pyspark_dir.join("worker.py").is_file(),
            "{}",
            env.pyspark_dir.display()
        );
        assert!(
            env.python.starts_with(cache_root()),
            "a venv's python is kept, not resolved: {}",
            env.python.display()
        );
    }

    #[test]
    fn probe_of_a_missing_interpreter_says_what_to_do() {
        let err = probe(Path::new("/nonexistent/bin/python")).unwrap_err();
        assert!(matches!(err, EnvError::PythonMissing { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/bin/python") && msg.contains("--python PATH"),
            "{msg}"
        );
    }

    #[test]
    fn probe_of_a_python_without_pyspark_says_what_to_do() {
        let venv = tempfile::tempdir().unwrap();
        let base = provision::base_python();
        let made = Command::new(&base)
            .args(["-m", "venv", "--without-pip"])
            .arg(venv.path())
            .status()
            .unwrap();
        assert!(made.success(), "`{base} -m venv` failed");
        let err = probe(&venv.path().join("bin/python")).unwrap_err();
        assert!(matches!(err, EnvError::NoPyspark { .. }), "{err:?}");
        assert!(err.to_string().contains("pip install pyspark=="), "{err}");
    }

    #[test]
    fn probe_of_a_non_python_is_a_probe_failure() {
        let err = probe(Path::new("/bin/false")).unwrap_err();
        assert!(matches!(err, EnvError::ProbeFailed { .. }), "{err:?}");
    }

    #[test]
    fn resolve_takes_a_pinned_line_and_checks_an_explicit_python() {
        default_env(); // fail with a how-to rather than provision for minutes
        let env = resolve(None, Some("4.0")).unwrap();
        assert_eq!(env.pyspark.to_string(), "4.0.5");
        let same = resolve(Some(&env.python), Some("4.0.5")).unwrap();
        assert_eq!(same.python, env.python);
        let err = resolve(Some(&env.python), Some("4.3.0")).unwrap_err();
        assert!(matches!(err, EnvError::VersionMismatch { .. }), "{err:?}");
        assert!(err.to_string().contains("drop --pyspark"), "{err}");
    }
}
