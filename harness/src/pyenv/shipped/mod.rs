//! A worker environment as users ship it to a cluster, and the interpreter that runs it.
//!
//! Spark runs whatever `PYSPARK_PYTHON` names, and users ship four kinds of things there:
//! - an interpreter, or a venv / conda env directory (its `bin/python`);
//! - a PEX file (`PYSPARK_PYTHON=./env.pex`): a zip application that, built without an entry
//!   point, behaves as the interpreter itself: `env.pex -m pyspark.daemon` and `env.pex -c CODE`
//!   work as they do with python (pex's own `-m`/`-c` handling), so fakejvm runs the file as is;
//!   a PEX directory (`--layout packed` or `loose`) runs through its `__main__.py`;
//! - a packed archive (conda-pack or venv-pack `.tar.gz`, unpacked by YARN or Kubernetes before
//!   the executor starts): fakejvm unpacks it once into `<cache_root>/shipped/<content hash>/`
//!   (see `archive`) and runs its `bin/python`.
//!
//! [`open`] sorts a `--python` argument into one of these and names the program to launch
//! workers with; [`Shipped::inspect`] asks that program, through the glue's `doctor` mode, what
//! it holds, with the same environment policy the workers get.

mod archive;
mod pex;

use super::{child, EnvError, GLUE};
use crate::worker::PASS_THROUGH_ENV;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// A first run of a PEX lays its wheels out under ~/.cache/pex (pyspark alone is 400 MB) and
/// the doctor glue imports pandas and pyarrow: minutes on a cold, busy disk, not the probe's 60 s.
const INSPECT_LIMIT: Duration = Duration::from_secs(10 * 60);

/// What a `--python` argument turned out to be, and the program that runs it.
#[derive(Clone, Debug)]
pub struct Shipped {
    /// As the user wrote it.
    pub given: PathBuf,
    pub kind: Kind,
    /// What `PYSPARK_PYTHON` would name: the program workers are launched with.
    pub python: PathBuf,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// An interpreter (or anything else that runs as one: a wrapper script).
    Interpreter,
    /// A venv or conda env directory; `python` is its `bin/python`.
    EnvDir,
    /// A PEX zip application, run as the interpreter.
    Pex,
    /// A PEX directory (`--layout packed` / `loose`), run through its `__main__.py`.
    PexDir,
    /// A packed archive, unpacked into the cache.
    Archive {
        packer: archive::Packer,
        unpacked: PathBuf,
    },
}

pub use archive::Packer;

#[derive(Debug, thiserror::Error)]
pub enum ShippedError {
    #[error("{} not found (no such file or directory): pass --python an interpreter, a venv or conda env directory, a PEX file or a conda-pack / venv-pack archive", path.display())]
    Missing { path: PathBuf },
    #[error("{} is a directory but neither a venv or conda env (no bin/python) nor a PEX directory (no PEX-INFO and __main__.py): pass the env's directory or its bin/python", path.display())]
    NotAnEnvDir { path: PathBuf },
    #[error("{} is a PEX that runs its entry point `{entry_point}` instead of Python, so `PYSPARK_PYTHON={}` cannot start a worker (`-m pyspark.daemon` goes to `{entry_point}`): rebuild it without -m/-e/-c/--script (`pex REQUIREMENTS -o {}`), or set PEX_INTERPRETER=1 in the executors' environment (spark.executorEnv.PEX_INTERPRETER=1)", path.display(), path.display(), path.display())]
    PexEntryPoint { path: PathBuf, entry_point: String },
    #[error("{} is a PEX that does not act as an interpreter (`{} -c ...` printed {said:?}): it needs to run as Python for PYSPARK_PYTHON; rebuild it without an entry point", path.display(), path.display())]
    PexNotInterpreter { path: PathBuf, said: String },
    #[error("{}: {problem}", path.display())]
    BadArchive { path: PathBuf, problem: String },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} did not finish within {}s and was killed", after.as_secs())]
    Timeout { what: String, after: Duration },
}

impl ShippedError {
    /// The user's file is not usable as shipped, as opposed to fakejvm failing to unpack it.
    pub fn is_bad_input(&self) -> bool {
        use ShippedError::*;
        match self {
            Missing { .. }
            | NotAnEnvDir { .. }
            | PexEntryPoint { .. }
            | PexNotInterpreter { .. }
            | BadArchive { .. } => true,
            Io { .. } | Timeout { .. } => false,
        }
    }
}

/// Sort out what `given` is and find the program to run it with. An archive is unpacked (once,
/// keyed by its content); a PEX is run once to check that it acts as an interpreter (which also
/// lays out its wheels, the slow part of a PEX's first start). A bare name like `python3` is
/// left for PATH to find, as before.
/// Remembered for the life of the process, as probes are: a PEX's check run and an archive's
/// hash are paid once.
pub fn open(given: &Path) -> Result<Shipped, ShippedError> {
    static OPENED: Mutex<Option<HashMap<PathBuf, Shipped>>> = Mutex::new(None);
    let known = OPENED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|m| m.get(given).cloned());
    if let Some(shipped) = known {
        return Ok(shipped);
    }
    let shipped = open_uncached(given)?;
    OPENED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(given.to_path_buf(), shipped.clone());
    Ok(shipped)
}

fn open_uncached(given: &Path) -> Result<Shipped, ShippedError> {
    let shipped = |kind, python| Shipped {
        given: given.to_path_buf(),
        kind,
        python,
    };
    let meta = match std::fs::metadata(given) {
        Ok(m) => m,
        Err(_) if given.components().count() == 1 && !given.as_os_str().is_empty() => {
            return Ok(shipped(Kind::Interpreter, given.to_path_buf()))
        }
        Err(_) if std::fs::symlink_metadata(given).is_ok() => {
            // A dangling link: an unpacked venv whose base interpreter is not on this machine.
            return Ok(shipped(Kind::Interpreter, given.to_path_buf()));
        }
        Err(_) => {
            return Err(ShippedError::Missing {
                path: given.to_path_buf(),
            })
        }
    };
    if meta.is_dir() {
        let python = given.join("bin").join("python");
        if std::fs::symlink_metadata(&python).is_ok() {
            return Ok(shipped(Kind::EnvDir, python));
        }
        if given.join("PEX-INFO").is_file() && given.join("__main__.py").is_file() {
            let main = given.join("__main__.py");
            pex::check_runs_as_interpreter(&main)?;
            return Ok(shipped(Kind::PexDir, main));
        }
        return Err(ShippedError::NotAnEnvDir {
            path: given.to_path_buf(),
        });
    }
    let io = |action| {
        move |source| ShippedError::Io {
            action,
            path: given.to_path_buf(),
            source,
        }
    };
    // A PEX first: it is a zip too (behind its `#!` line, or bare), and a zip archive is not.
    if pex::is_pex_file(given).map_err(io("read"))? {
        pex::check_runs_as_interpreter(given)?;
        return Ok(shipped(Kind::Pex, given.to_path_buf()));
    }
    if let Some(format) = archive::format_of(given).map_err(io("read"))? {
        let unpacked = archive::unpack(given, format)?;
        return Ok(shipped(
            Kind::Archive {
                packer: unpacked.packer,
                unpacked: unpacked.root.clone(),
            },
            unpacked.python,
        ));
    }
    Ok(shipped(Kind::Interpreter, given.to_path_buf()))
}

impl Shipped {
    /// What was found, for the first line of a report.
    pub fn describe(&self) -> String {
        let given = self.given.display();
        match &self.kind {
            Kind::Interpreter => format!("{given} (an interpreter)"),
            Kind::EnvDir => format!(
                "{given} (an env directory, run as {})",
                self.python.display()
            ),
            Kind::Pex => format!(
                "{given} (a PEX file, run as the interpreter, as PYSPARK_PYTHON={given} does)"
            ),
            Kind::PexDir => format!(
                "{given} (a PEX directory, run as {})",
                self.python.display()
            ),
            Kind::Archive { packer, unpacked } => format!(
                "{given} (a {} archive, unpacked into {}, run as {})",
                packer.name(),
                unpacked.display(),
                self.python.display()
            ),
        }
    }

    /// How to get `requirements` (pip requirement strings) into what was shipped. A PEX cannot
    /// be changed, only rebuilt: `pex_requirements` are the ones it was built from (PEX-INFO).
    pub fn install_fix(&self, requirements: &[String], pex_requirements: &[String]) -> String {
        let reqs = requirements
            .iter()
            .map(|r| shell_word(r))
            .collect::<Vec<_>>()
            .join(" ");
        let given = self.given.display();
        match &self.kind {
            Kind::Interpreter | Kind::EnvDir => {
                format!("{} -m pip install {reqs}", self.python.display())
            }
            Kind::Pex | Kind::PexDir => {
                // What it was built from, less what the fix replaces (pyspark==4.1.4 by 4.0.5).
                let replaced: Vec<String> = requirements.iter().map(|r| requirement_name(r)).collect();
                let mut all: Vec<String> = pex_requirements
                    .iter()
                    .filter(|r| !replaced.contains(&requirement_name(r)))
                    .map(|r| shell_word(r))
                    .collect();
                all.push(reqs);
                let layout = if self.kind == Kind::PexDir {
                    " --layout packed"
                } else {
                    ""
                };
                format!(
                    "rebuild the PEX with them: pex {}{layout} -o {given}",
                    all.join(" ")
                )
            }
            Kind::Archive {
                packer: Packer::CondaPack,
                ..
            } => format!(
                "install them into the conda env you packed (conda install -n ENV {reqs}, or its pip), then pack it again: conda-pack -n ENV -o {given}"
            ),
            Kind::Archive { .. } => format!(
                "install them into the venv you packed (VENV/bin/python -m pip install {reqs}), then pack it again: venv-pack -p VENV -o {given}"
            ),
        }
    }

    /// Ask the shipped env what `fakejvm doctor` checks (the glue's `doctor` mode), in the
    /// environment a worker gets: PYTHONPATH and the like in our shell must not make a package
    /// look present that a worker would not see.
    pub fn inspect(&self) -> Result<Contents, EnvError> {
        let mut cmd = Command::new(&self.python);
        cmd.arg("-c").arg(GLUE).arg("doctor").env_clear();
        for name in PASS_THROUGH_ENV {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        let python = self.python.to_path_buf();
        let ran =
            child::run(cmd, None, INSPECT_LIMIT, None).map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => EnvError::PythonMissing {
                    python: python.clone(),
                },
                _ => EnvError::PythonNotRunnable {
                    python: python.clone(),
                    source,
                },
            })?;
        let failed = |detail: String| EnvError::ProbeFailed {
            python: python.clone(),
            detail,
        };
        if ran.status.is_none() {
            return Err(EnvError::Timeout {
                what: format!("inspecting {}", self.python.display()),
                after: INSPECT_LIMIT,
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
        serde_json::from_slice(&ran.stdout).map_err(|e| failed(format!("unexpected answer: {e}")))
    }
}

/// What the glue's `doctor` mode reports about an env.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Contents {
    /// "3.11"
    pub python: String,
    /// "3.11.7"
    pub python_full: String,
    pub executable: Option<String>,
    /// The PEX the glue ran from (pex's runtime sets `PEX`), with what PEX-INFO says.
    #[serde(default)]
    pub pex: Option<PexInfo>,
    pub pyspark: Option<String>,
    pub pyspark_dir: Option<PathBuf>,
    /// pyspark's `Requires-Python` (">=3.9").
    pub requires_python: Option<String>,
    /// The 3.X minor versions among pyspark's classifiers, as strings ("3.9", "3.13").
    #[serde(default)]
    pub python_classifiers: Vec<String>,
    /// py4j, pandas, pyarrow, numpy, in that order.
    #[serde(default)]
    pub packages: Vec<Package>,
}

#[derive(Clone, Debug, serde::Deserialize)]
pub struct PexInfo {
    pub path: String,
    /// The requirements it was built from, e.g. ["pyspark==4.0.5"].
    #[serde(default)]
    pub requirements: Vec<String>,
}

#[derive(Clone, Debug, serde::Deserialize)]
pub struct Package {
    pub name: String,
    /// pyspark's metadata requirement (">=2.0.0"), from its hard requirements or `sql` extra.
    pub wanted: Option<String>,
    /// The extra it came from ("sql"), None for a hard requirement.
    pub extra: Option<String>,
    /// The minimum in pyspark's own runtime check (`require_minimum_pandas_version`).
    pub runtime_minimum: Option<String>,
    pub installed: Option<String>,
    /// Why it is not usable: "not installed", an import error, pyspark's own check's message.
    pub problem: Option<String>,
    /// Which pyspark function checked it, or why none could.
    pub checked_by: Option<String>,
    /// Warnings pyspark's check gave (4.2 warns for pandas >= 3.0.0).
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl Package {
    /// The requirement to install: the stricter of the metadata's and the runtime check's
    /// minimum (they differ in 4.2.1 for numpy), e.g. "numpy>=1.22".
    pub fn requirement(&self) -> String {
        match (&self.wanted, &self.runtime_minimum) {
            (Some(w), Some(min)) if !w.contains(min.as_str()) && w.starts_with(">=") => {
                let meta = &w[2..w.find(',').unwrap_or(w.len())];
                if version_parts(min) > version_parts(meta) {
                    format!("{}>={min}", self.name)
                } else {
                    format!("{}{w}", self.name)
                }
            }
            (Some(w), _) => format!("{}{w}", self.name),
            (None, Some(min)) => format!("{}>={min}", self.name),
            (None, None) => self.name.clone(),
        }
    }
}

fn version_parts(v: &str) -> Vec<u32> {
    v.split('.').map_while(|p| p.parse().ok()).collect()
}

/// "pyspark" for "pyspark==4.0.5", lowercased with `_` as `-`, as pip compares names.
fn requirement_name(r: &str) -> String {
    r.trim()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .collect::<String>()
        .to_ascii_lowercase()
        .replace('_', "-")
}

/// A word as a POSIX shell reads it back: requirements hold `<` and `>`.
fn shell_word(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.=/:+@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(wanted: Option<&str>, runtime: Option<&str>) -> Package {
        Package {
            name: "numpy".into(),
            wanted: wanted.map(Into::into),
            extra: Some("sql".into()),
            runtime_minimum: runtime.map(Into::into),
            installed: None,
            problem: Some("not installed".into()),
            checked_by: None,
            warnings: vec![],
        }
    }

    #[test]
    fn the_requirement_is_the_stricter_minimum() {
        // pyspark 4.2.1: metadata numpy>=1.21, require_minimum_numpy_version 1.22.
        assert_eq!(
            package(Some(">=1.21"), Some("1.22")).requirement(),
            "numpy>=1.22"
        );
        assert_eq!(
            package(Some(">=1.21"), Some("1.21")).requirement(),
            "numpy>=1.21"
        );
        assert_eq!(
            package(Some(">=2.0"), Some("1.21")).requirement(),
            "numpy>=2.0"
        );
        assert_eq!(package(None, Some("1.21")).requirement(), "numpy>=1.21");
        assert_eq!(package(None, None).requirement(), "numpy");
    }

    #[test]
    fn fixes_name_the_way_to_change_each_kind() {
        let reqs = ["pandas>=2.0.0".to_string(), "pyarrow>=11.0.0".to_string()];
        let of = |kind, python: &str| Shipped {
            given: PathBuf::from("./env.pex"),
            kind,
            python: PathBuf::from(python),
        };
        assert_eq!(
            of(Kind::Pex, "./env.pex").install_fix(&reqs, &["pyspark==4.0.5".into()]),
            "rebuild the PEX with them: pex pyspark==4.0.5 'pandas>=2.0.0' 'pyarrow>=11.0.0' -o ./env.pex"
        );
        assert_eq!(
            of(Kind::Pex, "./env.pex").install_fix(
                &["pyspark==4.0.5".into()],
                &["pyspark==4.1.4".into(), "py4j==0.10.9.9".into()]
            ),
            "rebuild the PEX with them: pex py4j==0.10.9.9 pyspark==4.0.5 -o ./env.pex"
        );
        assert_eq!(
            of(Kind::EnvDir, "/v/bin/python").install_fix(&reqs, &[]),
            "/v/bin/python -m pip install 'pandas>=2.0.0' 'pyarrow>=11.0.0'"
        );
        let archive = of(
            Kind::Archive {
                packer: Packer::CondaPack,
                unpacked: "/c".into(),
            },
            "/c/bin/python",
        );
        assert!(archive
            .install_fix(&reqs, &[])
            .contains("conda-pack -n ENV -o ./env.pex"));
    }

    #[test]
    fn what_is_not_there_is_one_clear_error() {
        let err = open(Path::new("/nonexistent/env.pex")).unwrap_err();
        assert!(matches!(err, ShippedError::Missing { .. }) && err.is_bad_input());
        assert!(err.to_string().contains("a PEX file"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let err = open(dir.path()).unwrap_err();
        assert!(matches!(err, ShippedError::NotAnEnvDir { .. }), "{err}");
        // A bare name is PATH's to find, as before.
        let bare = open(Path::new("python3")).unwrap();
        assert_eq!(bare.kind, Kind::Interpreter);
    }

    #[test]
    fn a_venv_directory_runs_its_bin_python() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/env", dir.path().join("bin/python")).unwrap();
        let s = open(dir.path()).unwrap();
        assert_eq!(s.kind, Kind::EnvDir);
        assert_eq!(s.python, dir.path().join("bin/python"));
    }
}
