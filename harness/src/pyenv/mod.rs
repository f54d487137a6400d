//! The Python side fakejvm drives: which interpreter, which pyspark, and the command bytes it
//! would be sent.
//!
//! Workers are always real pip-installed pyspark, so every run needs an interpreter with the
//! right pyspark. Either the user names one (`--python`, or `FAKEJVM_PYTHON` through the CLI) or
//! fakejvm keeps its own venvs, one per (pyspark release, CPython minor version, flavor), under a
//! cache directory outside the repo (`<cache_root>/envs/pyspark-<version>-py<major.minor>`, and
//! `...-lean` for the lean flavor: pyspark and py4j alone), provisioned on first use from a lock
//! (see `lock`, `installer`, `provision`), on a base interpreter found by `base`.
//!
//! A combination that cannot exist (a Python outside what the pyspark line declares, or one this
//! machine does not have) is [`EnvError::not_applicable`]: asked for directly it is bad input
//! (exit 2, one line with the reason and how to get the interpreter); a matrix shows it as N/A.
//!
//! The only Python fakejvm runs of its own is `harness/python/fakejvm_glue.py`, embedded in the
//! binary: it probes an interpreter, it cloudpickles RDD functions into NON_UDF commands
//! with the target pyspark (see `command`), and it lists the installed pyspark's worker modules
//! (see `modules`).

pub mod base;
mod child;
mod command;
mod installer;
pub mod lock;
mod modules;
mod provision;
pub mod releases;
pub mod shipped;
mod tools;
mod udf_command;
mod version;

pub use command::{build_commands, CommandSpec, SerializerSpec};
pub use installer::{uv_cache, InstallerChoice, UV_VERSION};
pub use modules::{worker_modules, WorkerModules};
pub use provision::{base_python_minor, differences, setup, setup_with, SetupOptions, LOCK_FILE};
pub use tools::{coverage_tracer, run_python, COVERAGE_VERSION};
pub use udf_command::{build_udf_functions, UdfFunctionSpec};
pub use version::{declared_pythons, unsupported_python, PysparkVersion, PythonMinor};

use std::collections::HashMap;
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
pub(crate) const GLUE: &str = include_str!("../../python/fakejvm_glue.py");
/// Starting Python and reading a few files: seconds at worst on a cold disk.
pub(crate) const PROBE_LIMIT: Duration = Duration::from_secs(60);

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
    /// Which of fakejvm's own envs this is; None for an interpreter the user gave.
    pub flavor: Option<Flavor>,
}

/// What a fakejvm env holds besides pyspark.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// pyspark, pandas and pyarrow (and their dependencies): every task kind can run.
    #[default]
    Full,
    /// pyspark and py4j only: enough for RDD tasks, which never import pandas or pyarrow.
    Lean,
}

impl Flavor {
    /// What it holds, for messages.
    pub fn contents(self) -> &'static str {
        match self {
            Flavor::Full => "full: pyspark, pandas, pyarrow",
            Flavor::Lean => "lean: pyspark and py4j only",
        }
    }
}

impl std::fmt::Display for Flavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Flavor::Full => "full",
            Flavor::Lean => "lean",
        })
    }
}

/// The env a command wants from fakejvm's cache: a pyspark request ("4.1", "3.4.2"; default
/// `DEFAULT_PYSPARK`), a CPython minor version (default: the base interpreter's), a flavor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Want {
    pub pyspark: Option<String>,
    pub python_version: Option<PythonMinor>,
    pub flavor: Flavor,
}

impl Want {
    pub fn new(pyspark: Option<&str>, python_version: Option<PythonMinor>) -> Want {
        Want {
            pyspark: pyspark.map(str::to_string),
            python_version,
            flavor: Flavor::Full,
        }
    }
}

/// `--python-version`, shared by every command that takes `--pyspark`.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct PythonVersionArg {
    /// The CPython of fakejvm's env (3.9, 3.12...): its base interpreter is found in pyenv
    /// (~/.pyenv/versions/3.X.*), as python3.X on PATH, or as $FAKEJVM_BASE_PYTHON. Default: the
    /// base interpreter's ($FAKEJVM_BASE_PYTHON, else python3).
    #[arg(long = "python-version", env = "FAKEJVM_PYTHON_VERSION", global = true, value_name = "3.X", value_parser = parse_python_version)]
    pub python_version: Option<PythonMinor>,
}

fn parse_python_version(text: &str) -> Result<PythonMinor, String> {
    text.parse()
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
    #[error("N/A: no Python {python} on this machine ({looked}): install it (`pyenv install {python}`, or your system's python{python} package), or set FAKEJVM_BASE_PYTHON to a Python {python} interpreter")]
    NoInterpreter { python: PythonMinor, looked: String },
    #[error("N/A: {why}: choose a Python it supports (the nearest is --python-version {nearest}), and get that interpreter with `pyenv install {nearest}` if this machine lacks it")]
    Unsupported {
        why: String,
        /// The declared Python closest to the one asked for.
        nearest: PythonMinor,
    },
    #[error("{} is Python {found} but --python-version {wanted} was asked for: drop one of them", python.display())]
    PythonVersionMismatch {
        python: PathBuf,
        found: String,
        wanted: PythonMinor,
    },
    #[error("{}: {problem}", file.display())]
    BadLock { file: PathBuf, problem: String },
    #[error("provisioning {what} in {} failed at `{step}`:\n{detail}\nFix the cause (pip and uv need PyPI or the mirror in your pip.conf; `python -m venv` needs the venv module, e.g. apt install python3-venv), then run `fakejvm env setup` again", dir.display())]
    ProvisionFailed {
        what: String,
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
            | NoInterpreter { .. }
            | Unsupported { .. }
            | PythonVersionMismatch { .. }
            | BadLock { .. }
            | BadFunction { .. } => true,
            NoBasePython { .. }
            | ProvisionFailed { .. }
            | Io { .. }
            | Timeout { .. }
            | Glue { .. } => false,
            Shipped(e) => e.is_bad_input(),
        }
    }

    /// The reason, when the error says the combination asked for cannot exist on this machine
    /// (an unsupported Python, or one that is not installed): a matrix cell shows it as N/A.
    pub fn not_applicable(&self) -> Option<String> {
        match self {
            EnvError::NoInterpreter { .. } | EnvError::Unsupported { .. } => {
                Some(self.to_string().trim_start_matches("N/A: ").to_string())
            }
            _ => None,
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

/// `pyspark-<pyspark>-py<python_mm>`, and `-lean` after it for a lean env: full envs keep the
/// names they had before flavors existed, so those envs are found as they are.
pub fn env_name(pyspark: &str, python_mm: &str, flavor: Flavor) -> String {
    match flavor {
        Flavor::Full => format!("pyspark-{pyspark}-py{python_mm}"),
        Flavor::Lean => format!("pyspark-{pyspark}-py{python_mm}-lean"),
    }
}

/// `<cache_root>/envs/pyspark-<pyspark>-py<python_mm>`, a full env; the Python minor version is
/// part of the key because a venv (and every wheel in it) is built for exactly one.
pub fn env_dir(pyspark: &str, python_mm: &str) -> PathBuf {
    env_dir_for(pyspark, python_mm, Flavor::Full)
}

pub fn env_dir_for(pyspark: &str, python_mm: &str, flavor: Flavor) -> PathBuf {
    cache_root()
        .join("envs")
        .join(env_name(pyspark, python_mm, flavor))
}

/// fakejvm's own full env for `release` ("4.0.5") under the base Python: its directory, and
/// whether it is complete (its marker written last by provisioning).
pub fn cached_env(release: &str) -> Result<(PathBuf, bool), EnvError> {
    let dir = env_dir(release, &base_python_minor()?);
    let complete = provision::is_complete(&dir, release);
    Ok((dir, complete))
}

/// The exact release, base interpreter and flavor for `want`, or why that combination cannot
/// exist here. The Python is checked against the pyspark line before any interpreter is
/// searched for, so the reason names the real obstacle.
fn plan(want: &Want) -> Result<(PysparkVersion, base::BasePython, Flavor), EnvError> {
    let release: PysparkVersion =
        version::release_for(want.pyspark.as_deref().unwrap_or(DEFAULT_PYSPARK))?.parse()?;
    if let Some(py) = want.python_version {
        check_supported(release, py)?;
    }
    let base = base::find(want.python_version)?;
    check_supported(release, base.version)?;
    Ok((release, base, want.flavor))
}

/// `plan` for a lock, which names its own pyspark, Python and flavor; flags that disagree with
/// it are bad input.
fn plan_locked(
    want: &Want,
    lock: &lock::Lock,
) -> Result<(PysparkVersion, base::BasePython, Flavor), EnvError> {
    if let Some(asked) = &want.pyspark {
        if !version::satisfies(lock.pyspark, asked) {
            return Err(EnvError::VersionMismatch {
                python: PathBuf::from("the lock"),
                found: lock.pyspark,
                wanted: asked.clone(),
            });
        }
    }
    if let Some(py) = want.python_version.filter(|py| *py != lock.python) {
        return Err(EnvError::PythonVersionMismatch {
            python: PathBuf::from("the lock"),
            found: lock.python.to_string(),
            wanted: py,
        });
    }
    check_supported(lock.pyspark, lock.python)?;
    let base = base::find(Some(lock.python))?;
    Ok((lock.pyspark, base, lock.flavor))
}

fn check_supported(release: PysparkVersion, python: PythonMinor) -> Result<(), EnvError> {
    if (release.major, release.minor) < version::OLDEST_LINE {
        return Err(EnvError::BadVersion {
            text: release.to_string(),
        });
    }
    match unsupported_python(release, python) {
        None => Ok(()),
        Some(why) => {
            let (low, high) = declared_pythons(release).expect("a line with a reason has a range");
            Err(EnvError::Unsupported {
                why,
                nearest: python.clamp(low, high),
            })
        }
    }
}

/// One env in the cache, as `fakejvm env list` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CachedEnv {
    pub dir: PathBuf,
    pub name: String,
    /// None for an unfinished build (no marker, or a `.tmp` directory).
    pub pyspark: Option<String>,
    pub python: Option<String>,
    pub flavor: Option<Flavor>,
    pub installer: Option<String>,
    /// Whether it records the lock it was installed from (envs built before locks do not).
    pub locked: bool,
    /// Bytes of every file in it, counted once per inode.
    pub bytes: u64,
    /// Bytes of files only it holds (a link count of 1): what deleting it frees. Files uv
    /// hardlinked from its cache are shared with the cache and with every other env.
    pub own_bytes: u64,
}

/// Every env under `<cache_root>/envs`, sorted by name, finished or not.
pub fn list_envs() -> Vec<CachedEnv> {
    let root = cache_root().join("envs");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| {
            let marker = provision::read_marker(&dir);
            let (bytes, own_bytes) = disk_usage(&dir);
            CachedEnv {
                name: dir
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                pyspark: marker.as_ref().map(|m| m.pyspark.clone()),
                python: marker.as_ref().and_then(|m| m.python.clone()),
                flavor: marker.as_ref().map(|m| m.flavor),
                installer: marker.as_ref().and_then(|m| m.installer.clone()),
                locked: dir.join(LOCK_FILE).is_file(),
                bytes,
                own_bytes,
                dir,
            }
        })
        .collect()
}

/// (all bytes, bytes of files with no other link), by allocated blocks, each inode once.
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let (mut all, mut own) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
        {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(e.path());
                continue;
            }
            if !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            let size = meta.blocks() * 512;
            all += size;
            if meta.nlink() == 1 {
                own += size;
            }
        }
    }
    (all, own)
}

/// Run `python` once and report its Python and pyspark versions. Fails when it is missing, not
/// executable, not a Python 3, or has no importable pyspark.
pub fn probe(python: &Path) -> Result<PythonEnv, EnvError> {
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
        flavor: None,
    };
    Ok(env)
}

/// The env a command should use: `resolve_with` for the default Python and a full env.
pub fn resolve(python: Option<&Path>, pyspark: Option<&str>) -> Result<PythonEnv, EnvError> {
    resolve_with(python, &Want::new(pyspark, None))
}

/// The env a command should use. An explicit interpreter (`--python`, or `FAKEJVM_PYTHON`, which
/// the CLI passes in) wins, and must then satisfy what `want` asks of pyspark and Python (its
/// flavor does not apply); it may also be a venv, PEX or packed archive, run as an interpreter.
/// Otherwise the cached env for `want` (pyspark default `DEFAULT_PYSPARK`, "4.1" meaning the
/// pinned 4.1.x), provisioned first if it is missing. Probes are remembered for the life of the
/// process.
pub fn resolve_with(python: Option<&Path>, want: &Want) -> Result<PythonEnv, EnvError> {
    if let Some(given) = python {
        let shipped = shipped::open(given)?;
        let python = shipped.python.as_path();
        let env = probe_once(python)?;
        if let Some(wanted) = want.pyspark.as_deref() {
            if !version::satisfies(env.pyspark, wanted) {
                return Err(EnvError::VersionMismatch {
                    python: python.to_path_buf(),
                    found: env.pyspark,
                    wanted: wanted.to_string(),
                });
            }
        }
        if let Some(wanted) = want.python_version {
            if env.python_version != wanted.to_string() {
                return Err(EnvError::PythonVersionMismatch {
                    python: python.to_path_buf(),
                    found: env.python_version,
                    wanted,
                });
            }
        }
        return Ok(env);
    }
    let (release, base, flavor) = plan(want)?;
    let dir = env_dir_for(&release.to_string(), &base.version.to_string(), flavor);
    if provision::is_complete(&dir, &release.to_string()) {
        if let Ok(env) = probe_once(&provision::python_in(&dir)) {
            if env.pyspark == release {
                return Ok(PythonEnv {
                    flavor: Some(flavor),
                    ..env
                });
            }
        }
    }
    // Missing, incomplete or broken: `setup` rechecks under the lock and rebuilds if needed.
    let env = setup_with(want, &SetupOptions::default())?;
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
        let base = base::default_base();
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
