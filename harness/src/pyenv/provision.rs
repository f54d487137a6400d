//! Building fakejvm's own envs: one venv per (pyspark release, Python minor version), with
//! pyspark, pandas and pyarrow pinned.
//!
//! An env is complete only when its marker `fakejvm-env.json` exists: it is built in a sibling
//! `<name>.tmp` directory, renamed into place, and the marker is written last. Test threads and
//! test binaries provision concurrently, so the check and the build happen under an exclusive
//! `flock` on `<cache_root>/envs/.lock-<name>`; whoever comes second finds the marker.

use super::{child, probe, version, EnvError, PythonEnv, PANDAS, PYARROW};
use crate::atomic::{write_atomic, WriteOptions};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MARKER: &str = "fakejvm-env.json";
const VENV_LIMIT: Duration = Duration::from_secs(5 * 60);
/// About 400 MB of wheels on a slow link; from the pip cache it takes well under a minute.
const PIP_LIMIT: Duration = Duration::from_secs(60 * 60);
/// Another process may be in the middle of its own PIP_LIMIT-long install.
const LOCK_LIMIT: Duration = Duration::from_secs(65 * 60);

/// What the marker records. Markers written before `python` and `packages` existed hold only
/// `pyspark`, and still mark a complete env.
#[derive(serde::Serialize, serde::Deserialize)]
struct Marker {
    pyspark: String,
    #[serde(default)]
    python: Option<String>,
    #[serde(default)]
    packages: BTreeMap<String, String>,
}

pub(super) fn python_in(dir: &Path) -> PathBuf {
    dir.join("bin").join("python")
}

/// Does `dir` hold a finished env of exactly `release`?
pub(super) fn is_complete(dir: &Path, release: &str) -> bool {
    let Ok(text) = fs::read(dir.join(MARKER)) else {
        return false;
    };
    serde_json::from_slice::<Marker>(&text).is_ok_and(|m| m.pyspark == release)
}

/// The interpreter envs are built from: `$FAKEJVM_BASE_PYTHON`, else `python3` on PATH.
pub(super) fn base_python() -> String {
    std::env::var("FAKEJVM_BASE_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into())
}

/// "3.11" for the base Python: the second half of an env's directory key. Remembered per
/// process, since every `resolve` needs it.
pub fn base_python_minor() -> Result<String, EnvError> {
    static KNOWN: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);
    let base = base_python();
    if let Some(mm) = KNOWN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|m| m.get(&base))
    {
        return Ok(mm.clone());
    }
    let fail = |detail: String| EnvError::NoBasePython {
        python: base.clone(),
        detail,
    };
    let mut cmd = Command::new(&base);
    cmd.args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"]);
    let ran =
        child::run(cmd, None, Duration::from_secs(60), None).map_err(|e| fail(e.to_string()))?;
    if !ran.succeeded() {
        return Err(fail(format!(
            "it exited with {}: {}",
            ran.status_text(),
            ran.tail()
        )));
    }
    let mm = String::from_utf8_lossy(&ran.stdout).trim().to_string();
    if !mm.starts_with("3.") || mm.split('.').any(|n| n.parse::<u32>().is_err()) {
        return Err(fail(format!("it reports version {mm:?}, not a Python 3")));
    }
    KNOWN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(base, mm.clone());
    Ok(mm)
}

/// Make sure the cached env for `pyspark` ("4.0.5", or a pinned line like "4.1") exists for the
/// base Python, building it if it is missing, incomplete or broken, and return it.
pub fn setup(pyspark: &str) -> Result<PythonEnv, EnvError> {
    let release = version::release_for(pyspark)?;
    let python_mm = base_python_minor()?;
    let dir = super::env_dir(&release, &python_mm);
    let envs = dir
        .parent()
        .expect("env dirs live under <cache_root>/envs")
        .to_path_buf();
    fs::create_dir_all(&envs).map_err(|source| EnvError::Io {
        action: "create the env directory",
        path: envs.clone(),
        source,
    })?;
    let name = dir
        .file_name()
        .expect("env dir has a name")
        .to_string_lossy()
        .into_owned();
    let _lock = lock(&envs.join(format!(".lock-{name}")), &name)?;

    if is_complete(&dir, &release) {
        match probe(&python_in(&dir)) {
            Ok(env) if env.pyspark.to_string() == release => return Ok(env),
            Ok(env) => eprintln!(
                "fakejvm: {} holds pyspark {} instead of {release}; rebuilding it",
                dir.display(),
                env.pyspark
            ),
            Err(e) => eprintln!(
                "fakejvm: the env in {} is broken ({e}); rebuilding it",
                dir.display()
            ),
        }
    } else if dir.exists() {
        eprintln!(
            "fakejvm: {} is incomplete (no {MARKER}); rebuilding it",
            dir.display()
        );
    }
    provision(&release, &python_mm, &dir)
}

/// Hold the exclusive lock for `name`, waiting (with a deadline) for another provisioner.
fn lock(path: &Path, name: &str) -> Result<File, EnvError> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| EnvError::Io {
            action: "open the lock file",
            path: path.to_path_buf(),
            source,
        })?;
    let started = Instant::now();
    let mut said = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) => {}
            Err(fs::TryLockError::Error(source)) => {
                return Err(EnvError::Io {
                    action: "lock",
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        if !said {
            eprintln!("fakejvm: waiting for another fakejvm to finish provisioning {name}...");
            said = true;
        }
        if started.elapsed() > LOCK_LIMIT {
            return Err(EnvError::Timeout {
                what: format!("waiting for the lock {}", path.display()),
                after: LOCK_LIMIT,
                hint:
                    "find the process holding it (`fuser` on the lock file) or remove a stale lock"
                        .into(),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn provision(release: &str, python_mm: &str, dir: &Path) -> Result<PythonEnv, EnvError> {
    let started = Instant::now();
    let base = base_python();
    eprintln!(
        "fakejvm: provisioning pyspark {release} for python {python_mm} in {} (about 400 MB, a few minutes, once)...",
        dir.display()
    );
    let failed = |step: &str, detail: String| EnvError::ProvisionFailed {
        pyspark: release.to_string(),
        dir: dir.to_path_buf(),
        step: step.to_string(),
        detail,
    };
    // We hold the lock, so a leftover build directory is a crashed attempt's.
    let building = dir.with_file_name(format!(
        "{}.tmp",
        dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    for stale in [&building, &dir.to_path_buf()] {
        if stale.exists() {
            fs::remove_dir_all(stale).map_err(|source| EnvError::Io {
                action: "remove the stale env",
                path: stale.clone(),
                source,
            })?;
        }
    }

    let mut venv = Command::new(&base);
    venv.args(["-m", "venv"]).arg(&building);
    run_step(venv, VENV_LIMIT, None, &format!("{base} -m venv"), &failed)?;

    // Always `python -m pip`: the venv's bin/ scripts carry the .tmp path in their shebangs, and
    // the rename below breaks them (bin/python itself does not care where it lives).
    let packages = [
        format!("pyspark=={release}"),
        format!("pandas=={PANDAS}"),
        format!("pyarrow=={PYARROW}"),
    ];
    eprintln!("fakejvm: pip install {}", packages.join(" "));
    let mut pip = Command::new(python_in(&building));
    pip.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
    ])
    .args(&packages);
    run_step(pip, PIP_LIMIT, Some("  pip | "), "pip install", &failed)?;

    fs::rename(&building, dir).map_err(|source| EnvError::Io {
        action: "move the new env into place at",
        path: dir.to_path_buf(),
        source,
    })?;
    let (env, packages) = super::probe_with_packages(&python_in(dir))
        .map_err(|e| failed("checking the new env", e.to_string()))?;
    if env.pyspark.to_string() != release {
        return Err(failed(
            "checking the new env",
            format!(
                "it imports pyspark {} from {}",
                env.pyspark,
                env.pyspark_dir.display()
            ),
        ));
    }
    write_marker(dir, &env, packages)?;
    eprintln!(
        "fakejvm: pyspark {release} ready in {} (took {}s)",
        dir.display(),
        started.elapsed().as_secs()
    );
    Ok(env)
}

fn run_step(
    cmd: Command,
    limit: Duration,
    echo: Option<&'static str>,
    step: &str,
    failed: &dyn Fn(&str, String) -> EnvError,
) -> Result<(), EnvError> {
    let ran = child::run(cmd, None, limit, echo)
        .map_err(|e| failed(step, format!("cannot start it: {e}")))?;
    match ran.status {
        None => Err(EnvError::Timeout {
            what: step.to_string(),
            after: limit,
            hint: "check your network or pip mirror, then run `fakejvm env setup` again".into(),
        }),
        Some(_) if ran.succeeded() => Ok(()),
        Some(_) => Err(failed(
            step,
            format!("it exited with {}:\n{}", ran.status_text(), ran.tail()),
        )),
    }
}

/// Written last and atomically: its presence is what "complete" means.
fn write_marker(
    dir: &Path,
    env: &PythonEnv,
    packages: BTreeMap<String, String>,
) -> Result<(), EnvError> {
    let io = |action: &'static str| {
        move |source| EnvError::Io {
            action,
            path: dir.join(MARKER),
            source,
        }
    };
    let marker = Marker {
        pyspark: env.pyspark.to_string(),
        python: Some(env.python_version.clone()),
        packages,
    };
    let bytes = serde_json::to_vec_pretty(&marker).expect("a marker serializes");
    write_atomic(&dir.join(MARKER), &bytes, WriteOptions::CACHE).map_err(io("write"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_matching_marker_makes_an_env_complete() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_complete(dir.path(), "4.0.5"), "no marker");
        let write = |text: &str| fs::write(dir.path().join(MARKER), text).unwrap();
        write(r#"{"pyspark":"4.0.5"}"#); // the first markers held only this
        assert!(is_complete(dir.path(), "4.0.5") && !is_complete(dir.path(), "4.1.4"));
        write(r#"{"pyspark":"4.0.5","python":"3.11","packages":{"pandas":"2.3.3"}}"#);
        assert!(is_complete(dir.path(), "4.0.5"));
        write("{\"pyspark\":");
        assert!(!is_complete(dir.path(), "4.0.5"), "a torn marker");
    }

    /// By hand, into a scratch cache (pip's own cache keeps it quick):
    /// `FAKEJVM_CACHE_DIR=$(mktemp -d) cargo test -p fakejvm --lib pyenv -- --ignored --nocapture`
    #[test]
    #[ignore = "provisions a full env (about 400 MB): run by hand with FAKEJVM_CACHE_DIR set to a scratch directory"]
    fn provisions_a_fresh_env_once_for_concurrent_callers() {
        let root = std::env::var_os("FAKEJVM_CACHE_DIR")
            .map(PathBuf::from)
            .expect("set FAKEJVM_CACHE_DIR to a scratch directory");
        let dir =
            super::super::env_dir(super::super::DEFAULT_PYSPARK, &base_python_minor().unwrap());
        assert!(
            dir.starts_with(&root) && !dir.exists(),
            "{} must be a scratch cache without this env",
            root.display()
        );

        let started = Instant::now();
        let callers: Vec<_> = (0..2)
            .map(|_| std::thread::spawn(|| setup(super::super::DEFAULT_PYSPARK)))
            .collect();
        let envs: Vec<PythonEnv> = callers
            .into_iter()
            .map(|c| c.join().unwrap().unwrap())
            .collect();
        eprintln!("provisioned in {:.1}s", started.elapsed().as_secs_f64());
        assert!(envs
            .iter()
            .all(|e| e.pyspark.to_string() == super::super::DEFAULT_PYSPARK
                && e.python == python_in(&dir)));

        let marker: Marker = serde_json::from_slice(&fs::read(dir.join(MARKER)).unwrap()).unwrap();
        assert_eq!(
            marker.python.as_deref(),
            Some(envs[0].python_version.as_str())
        );
        assert_eq!(
            marker.packages.get("pandas").map(String::as_str),
            Some(PANDAS)
        );
        assert_eq!(
            marker.packages.get("pyarrow").map(String::as_str),
            Some(PYARROW)
        );
        assert!(!dir
            .with_file_name(format!(
                "{}.tmp",
                dir.file_name().unwrap().to_string_lossy()
            ))
            .exists());

        let again = Instant::now();
        setup(super::super::DEFAULT_PYSPARK).unwrap();
        assert!(
            again.elapsed() < Duration::from_secs(10),
            "a finished env must not be rebuilt"
        );
    }
}
