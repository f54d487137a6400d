//! Building fakejvm's own envs: one venv per (pyspark release, Python minor version, flavor),
//! installed from a lock: the committed one for the pinned envs, one given with `--locked`, or
//! one resolved now (pyspark pinned; pandas and pyarrow capped at the pinned versions).
//!
//! An env is complete only when its marker `fakejvm-env.json` exists: it is built in a sibling
//! `<name>.tmp` directory, renamed into place, checked against its lock, and the marker is
//! written last. Test threads and test binaries provision concurrently, so the check and the
//! build happen under an exclusive `flock` on `<cache_root>/envs/.lock-<name>`; whoever comes
//! second finds the marker.

use super::installer::{self, Installer, InstallerChoice, SEEDS};
use super::lock::{self, normalize, Lock};
use super::version::PysparkVersion;
use super::{base, child, probe, EnvError, Flavor, PythonEnv, Want};
use crate::atomic::{write_atomic, WriteOptions};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub(super) const MARKER: &str = "fakejvm-env.json";
/// The lock an env was installed from, beside its marker.
pub const LOCK_FILE: &str = "fakejvm-lock.txt";
/// Another process may be in the middle of its own hour-long install.
const LOCK_LIMIT: Duration = Duration::from_secs(65 * 60);

/// What the marker records. Markers written before `python` and `packages` existed hold only
/// `pyspark`, and those before locks no `flavor` (they are full envs) and no `installer`; all
/// still mark a complete env.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Marker {
    pub pyspark: String,
    #[serde(default)]
    pub python: Option<String>,
    #[serde(default)]
    pub flavor: Flavor,
    /// "uv 0.13.9" or "venv + pip"; None before fakejvm recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installer: Option<String>,
    /// Seconds from start to ready, for the README's comparison.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provision_secs: Option<f64>,
    /// Every installed distribution (before locks: pyspark, pandas, pyarrow and py4j only).
    #[serde(default)]
    pub packages: BTreeMap<String, String>,
}

pub(super) fn read_marker(dir: &Path) -> Option<Marker> {
    serde_json::from_slice(&fs::read(dir.join(MARKER)).ok()?).ok()
}

pub(super) fn python_in(dir: &Path) -> PathBuf {
    dir.join("bin").join("python")
}

/// Does `dir` hold a finished env of exactly `release`?
pub(super) fn is_complete(dir: &Path, release: &str) -> bool {
    read_marker(dir).is_some_and(|m| m.pyspark == release)
}

/// "3.11" for the default base Python (`$FAKEJVM_BASE_PYTHON`, else `python3`): the second half
/// of the default env's directory key.
pub fn base_python_minor() -> Result<String, EnvError> {
    base::find(None).map(|b| b.version.to_string())
}

/// How `env setup` builds an env.
#[derive(Clone, Debug, Default)]
pub struct SetupOptions {
    pub installer: InstallerChoice,
    /// Install exactly this lock (`--locked FILE`): it names the env it builds.
    pub locked: Option<Lock>,
    /// Rebuild even a complete env (`--rebuild`): to measure, or to replace an env built before
    /// locks.
    pub rebuild: bool,
    /// Resolve afresh even where the repo commits a lock (`--resolve`): how `ci/update-locks`
    /// makes the committed locks.
    pub resolve: bool,
}

/// Where the lock of a new env comes from.
enum Source {
    Given(Lock),
    Committed(Lock),
    Resolve,
}

/// Make sure the cached env for `pyspark` ("4.0.5", or a pinned line like "4.1") exists for the
/// default base Python, building it if it is missing, incomplete or broken, and return it.
pub fn setup(pyspark: &str) -> Result<PythonEnv, EnvError> {
    let want = Want {
        pyspark: Some(pyspark.to_string()),
        ..Want::default()
    };
    setup_with(&want, &SetupOptions::default())
}

/// `setup`, for any wanted pyspark, Python and flavor, built as `opts` says.
pub fn setup_with(want: &Want, opts: &SetupOptions) -> Result<PythonEnv, EnvError> {
    let (release, base, flavor) = match &opts.locked {
        Some(lock) => super::plan_locked(want, lock)?,
        None => super::plan(want)?,
    };
    let release_text = release.to_string();
    let dir = super::env_dir_for(&release_text, &base.version.to_string(), flavor);
    let envs = dir
        .parent()
        .expect("env dirs live under <cache_root>/envs")
        .to_path_buf();
    fs::create_dir_all(&envs).map_err(|source| EnvError::Io {
        action: "create the env directory",
        path: envs.clone(),
        source,
    })?;
    let name = super::env_name(&release_text, &base.version.to_string(), flavor);
    let _lock = lock(&envs.join(format!(".lock-{name}")), &name)?;

    if is_complete(&dir, &release_text) && !opts.rebuild {
        let same_lock = match &opts.locked {
            None => true,
            Some(wanted) => recorded_lock(&dir).as_ref() == Some(wanted),
        };
        match probe(&python_in(&dir)) {
            Ok(env) if env.pyspark == release && same_lock => {
                adopt_committed_lock(&dir, &name);
                return Ok(PythonEnv {
                    flavor: Some(flavor),
                    ..env
                });
            }
            Ok(env) if env.pyspark == release => eprintln!(
                "fakejvm: {} was installed from another lock; rebuilding it from the one given",
                dir.display()
            ),
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
    } else if dir.exists() && !opts.rebuild {
        eprintln!(
            "fakejvm: {} is incomplete (no {MARKER}); rebuilding it",
            dir.display()
        );
    }
    let source = match &opts.locked {
        Some(l) => Source::Given(l.clone()),
        None if opts.resolve => Source::Resolve,
        None => lock::committed(&name).map_or(Source::Resolve, Source::Committed),
    };
    provision(release, &base, flavor, &dir, opts.installer, source)
}

/// An env built before locks that holds exactly its committed lock gets that lock recorded, so
/// `env list` and `--locked` see it as what it is; one that differs is left alone (and said).
fn adopt_committed_lock(dir: &Path, name: &str) {
    if dir.join(LOCK_FILE).exists() {
        return;
    }
    let Some(lock) = lock::committed(name) else {
        return;
    };
    match installed(&python_in(dir)).map(|have| differences(&lock, &have)) {
        Ok(None) => {
            let text = lock.to_text("adopted by fakejvm: the env, built before locks, holds exactly this");
            if write_atomic(&dir.join(LOCK_FILE), text.as_bytes(), WriteOptions::CACHE).is_ok() {
                eprintln!("fakejvm: {} holds exactly harness/locks/{name}.txt; recorded it as its lock", dir.display());
            }
        }
        Ok(Some(diff)) => eprintln!(
            "fakejvm: {} was built before locks and differs from harness/locks/{name}.txt ({diff}); `fakejvm env setup --rebuild` rebuilds it from the lock",
            dir.display()
        ),
        Err(e) => eprintln!("fakejvm: cannot list what {} holds ({e})", dir.display()),
    }
}

/// The lock an env recorded, if it has one (envs built before locks have none).
pub(super) fn recorded_lock(dir: &Path) -> Option<Lock> {
    Lock::parse(&fs::read_to_string(dir.join(LOCK_FILE)).ok()?).ok()
}

/// Hold the exclusive lock for `name`, waiting (with a deadline) for another provisioner.
pub(super) fn lock(path: &Path, name: &str) -> Result<File, EnvError> {
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

fn provision(
    release: PysparkVersion,
    base: &base::BasePython,
    flavor: Flavor,
    dir: &Path,
    choice: InstallerChoice,
    source: Source,
) -> Result<PythonEnv, EnvError> {
    let failed = |step: &str, detail: String| EnvError::ProvisionFailed {
        what: format!("pyspark {release}"),
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
    let installer = installer::pick(choice, &base.python)?;
    // Installing uv itself (once per cache) is not this env's time.
    let started = Instant::now();
    let from = match &source {
        Source::Given(_) => "the given lock",
        Source::Committed(_) => "the lock committed in harness/locks",
        Source::Resolve => "a fresh resolution",
    };
    eprintln!(
        "fakejvm: provisioning pyspark {release} ({}) for python {} ({}, found by {}) in {} with {}, from {from}...",
        flavor.contents(),
        base.version,
        base.python,
        base.found_by,
        dir.display(),
        installer.describe(),
    );

    installer::create_venv(&installer, &base.python, &building, &failed)?;
    let venv_secs = started.elapsed().as_secs_f64();
    let lock_path = building.join(LOCK_FILE);
    let made_by = format!(
        "made by fakejvm {} with {}",
        env!("CARGO_PKG_VERSION"),
        installer.describe()
    );
    let write_lock = |lock: &Lock| {
        write_atomic(
            &lock_path,
            lock.to_text(&made_by).as_bytes(),
            WriteOptions::CACHE,
        )
        .map_err(|source| EnvError::Io {
            action: "write the lock",
            path: lock_path.clone(),
            source,
        })
    };
    // Always through the venv's python (or uv's --python): the venv's bin/ scripts carry the
    // .tmp path in their shebangs, and the rename below breaks them.
    let lock = match source {
        Source::Given(lock) | Source::Committed(lock) => {
            write_lock(&lock)?;
            installer::install_locked(&installer, &building, &lock_path, &failed)?;
            lock
        }
        Source::Resolve => {
            let reqs = installer::requirements(release, flavor);
            eprintln!(
                "fakejvm: resolving {} with {}",
                reqs.join(" "),
                installer.name()
            );
            let lock = installer::resolve(
                &installer,
                &building,
                &reqs,
                (release, base.version, flavor),
                &failed,
            )?;
            write_lock(&lock)?;
            if let Installer::Uv(_) = installer {
                installer::install_locked(&installer, &building, &lock_path, &failed)?;
            }
            lock
        }
    };
    let install_secs = started.elapsed().as_secs_f64() - venv_secs;

    fs::rename(&building, dir).map_err(|source| EnvError::Io {
        action: "move the new env into place at",
        path: dir.to_path_buf(),
        source,
    })?;
    let env = probe(&python_in(dir)).map_err(|e| failed("checking the new env", e.to_string()))?;
    if env.pyspark != release {
        return Err(failed(
            "checking the new env",
            format!(
                "it imports pyspark {} from {}",
                env.pyspark,
                env.pyspark_dir.display()
            ),
        ));
    }
    let packages = installed(&python_in(dir))?;
    if let Some(diff) = differences(&lock, &packages) {
        return Err(failed(
            "comparing the new env with its lock",
            format!(
                "{diff}
the lock is {}",
                dir.join(LOCK_FILE).display()
            ),
        ));
    }
    let secs = started.elapsed().as_secs_f64();
    let marker = Marker {
        pyspark: release.to_string(),
        python: Some(env.python_version.clone()),
        flavor,
        installer: Some(installer.describe()),
        provision_secs: Some((secs * 10.0).round() / 10.0),
        packages,
    };
    write_marker(dir, &marker)?;
    eprintln!(
        "fakejvm: pyspark {release} ({flavor}) ready in {} with {}: took {secs:.1}s (venv {venv_secs:.1}s, install {install_secs:.1}s), {} distributions locked in {}",
        dir.display(),
        installer.describe(),
        lock.dists.len(),
        dir.join(LOCK_FILE).display(),
    );
    Ok(PythonEnv {
        flavor: Some(flavor),
        ..env
    })
}

/// Every distribution installed in the env of `python`, by normalised name.
pub(super) fn installed(python: &Path) -> Result<BTreeMap<String, String>, EnvError> {
    let mut cmd = Command::new(python);
    cmd.arg("-c").arg(super::GLUE).arg("distributions");
    let failed = |detail: String| EnvError::Glue {
        python: python.to_path_buf(),
        detail,
    };
    let ran = child::run(cmd, None, super::PROBE_LIMIT, None).map_err(|e| failed(e.to_string()))?;
    if !ran.succeeded() {
        return Err(failed(format!("distributions: {}", ran.tail())));
    }
    #[derive(serde::Deserialize)]
    struct Found {
        distributions: BTreeMap<String, String>,
    }
    let found: Found = serde_json::from_slice(&ran.stdout).map_err(|e| failed(e.to_string()))?;
    Ok(found
        .distributions
        .into_iter()
        .map(|(n, v)| (normalize(&n), v))
        .collect())
}

/// How an env's installed distributions differ from its lock (pip's venv seeds aside), if they do.
pub fn differences(lock: &Lock, installed: &BTreeMap<String, String>) -> Option<String> {
    let mut problems = vec![];
    let wanted = lock.versions();
    for (name, version) in &wanted {
        match installed.get(name) {
            None => problems.push(format!("{name}=={version} is not installed")),
            Some(v) if v != version => {
                problems.push(format!("{name} is {v}, the lock says {version}"))
            }
            Some(_) => {}
        }
    }
    for (name, version) in installed {
        if !wanted.contains_key(name) && !SEEDS.contains(&name.as_str()) {
            problems.push(format!(
                "{name}=={version} is installed but not in the lock"
            ));
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Written last and atomically: its presence is what "complete" means.
fn write_marker(dir: &Path, marker: &Marker) -> Result<(), EnvError> {
    let bytes = serde_json::to_vec_pretty(marker).expect("a marker serializes");
    write_atomic(&dir.join(MARKER), &bytes, WriteOptions::CACHE).map_err(|source| EnvError::Io {
        action: "write",
        path: dir.join(MARKER),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{PANDAS, PYARROW};
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
