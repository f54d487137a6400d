//! The two ways fakejvm installs an env: uv (fast, and every env hardlinks its files from one
//! shared cache, so a matrix of envs costs little more disk than one), else venv + pip.
//!
//! uv comes from PyPI like everything else: `pip install uv==UV_VERSION` into a tool venv under
//! `<cache_root>/tools/`, once (`$FAKEJVM_UV` names a uv binary to use instead). Its cache is
//! `$UV_CACHE_DIR`, else `<cache_root>/uv-cache`; pip keeps its own cache as usual.
//!
//! Both install a lock the same way (`--require-hashes --no-deps`), so an env rebuilt from a lock
//! has exactly its distributions whichever installer built it. Resolving differs: uv compiles
//! the requirements into a lock first (`uv pip compile --generate-hashes`, which hashes every
//! archive of each pinned version, for any platform); pip installs them and the lock is read back
//! from its installation report (the sha256 of each archive it used).

use super::lock::{normalize, Lock};
use super::version::{PysparkVersion, PythonMinor};
use super::{cache_root, child, EnvError, Flavor};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The uv fakejvm installs: exact, so every machine resolves and installs alike.
pub const UV_VERSION: &str = "0.13.9";
const TOOL_LIMIT: Duration = Duration::from_secs(10 * 60);
/// About 400 MB of wheels on a slow link; from a warm cache it takes seconds.
pub(super) const INSTALL_LIMIT: Duration = Duration::from_secs(60 * 60);
const VENV_LIMIT: Duration = Duration::from_secs(5 * 60);

/// Which installer `fakejvm env setup --installer` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum InstallerChoice {
    /// uv when it can be had, else venv + pip.
    #[default]
    Auto,
    Uv,
    Pip,
}

#[derive(Clone, Debug)]
pub(super) enum Installer {
    Uv(PathBuf),
    Pip,
}

impl Installer {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Installer::Uv(_) => "uv",
            Installer::Pip => "pip",
        }
    }

    /// "uv 0.13.9" or "pip": what the marker and the lock's header record.
    pub(super) fn describe(&self) -> String {
        match self {
            Installer::Uv(_) => format!("uv {UV_VERSION}"),
            Installer::Pip => "venv + pip".into(),
        }
    }
}

type Failed<'a> = &'a dyn Fn(&str, String) -> EnvError;

/// The installer for `choice`: uv (installing it first if needed) or pip. With `Auto`, a uv that
/// cannot be had is said once and pip is used.
pub(super) fn pick(choice: InstallerChoice, base: &str) -> Result<Installer, EnvError> {
    match choice {
        InstallerChoice::Pip => Ok(Installer::Pip),
        InstallerChoice::Uv => uv(base).map(Installer::Uv),
        InstallerChoice::Auto => match uv(base) {
            Ok(path) => Ok(Installer::Uv(path)),
            Err(e) => {
                eprintln!("fakejvm: no uv ({e}); provisioning with venv + pip instead");
                Ok(Installer::Pip)
            }
        },
    }
}

/// uv's cache: `$UV_CACHE_DIR`, else `<cache_root>/uv-cache`.
pub fn uv_cache() -> PathBuf {
    match std::env::var_os("UV_CACHE_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => cache_root().join("uv-cache"),
    }
}

/// `$FAKEJVM_UV`, or fakejvm's own uv, installed from PyPI on first use.
fn uv(base: &str) -> Result<PathBuf, EnvError> {
    if let Some(p) = std::env::var_os("FAKEJVM_UV").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let dir = tool(
        &format!("uv-{UV_VERSION}"),
        &format!("uv {UV_VERSION}"),
        "a tool venv",
        &|dir| dir.join("bin").join("uv").is_file(),
        &|building, failed| {
            let mut venv = Command::new(base);
            venv.args(["-m", "venv"]).arg(building);
            run_step(venv, VENV_LIMIT, None, &format!("{base} -m venv"), failed)?;
            let mut pip = Command::new(super::provision::python_in(building));
            pip.args(PIP_QUIET).args([
                "install",
                "--progress-bar",
                "off",
                &format!("uv=={UV_VERSION}"),
            ]);
            run_step(pip, TOOL_LIMIT, Some("  pip | "), "pip install uv", failed)
        },
    )?;
    Ok(dir.join("bin").join("uv"))
}

/// One of fakejvm's own tools, `<cache_root>/tools/<name>`: built once (saying so) in
/// `<name>.tmp` under an exclusive lock, then renamed into place, so whoever finds the directory
/// finds it whole. `done` tells a finished one; `build` fills the directory it is given.
pub(super) fn tool(
    name: &str,
    what: &str,
    kind: &str,
    done: &dyn Fn(&Path) -> bool,
    build: &dyn Fn(&Path, Failed) -> Result<(), EnvError>,
) -> Result<PathBuf, EnvError> {
    let tools = cache_root().join("tools");
    let dir = tools.join(name);
    if done(&dir) {
        return Ok(dir);
    }
    fs::create_dir_all(&tools).map_err(|source| EnvError::Io {
        action: "create the tool directory",
        path: tools.clone(),
        source,
    })?;
    let lock_name = name.split('-').next().unwrap_or(name);
    let _lock = super::provision::lock(&tools.join(format!(".lock-{lock_name}")), what)?;
    if done(&dir) {
        return Ok(dir);
    }
    eprintln!(
        "fakejvm: installing {what} from PyPI into {} ({kind}, once)...",
        dir.display()
    );
    let building = tools.join(format!("{name}.tmp"));
    for stale in [&building, &dir] {
        if stale.exists() {
            fs::remove_dir_all(stale).map_err(|source| EnvError::Io {
                action: "remove the stale tool directory",
                path: stale.clone(),
                source,
            })?;
        }
    }
    let failed = |step: &str, detail: String| EnvError::ProvisionFailed {
        what: what.to_string(),
        dir: dir.clone(),
        step: step.to_string(),
        detail,
    };
    build(&building, &failed)?;
    fs::rename(&building, &dir).map_err(|source| EnvError::Io {
        action: "move the tool into place at",
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// Install exactly the hashed pins of `reqs` (wheels only, no dependencies) into the plain
/// directory `target`, for the interpreter `python` (whose tags pick the wheels): a tool that is
/// put on sys.path by hand, never into an env.
pub(super) fn install_target(
    installer: &Installer,
    python: &Path,
    base: &str,
    reqs: &Path,
    target: &Path,
    failed: Failed,
) -> Result<(), EnvError> {
    let pins = [
        "--require-hashes",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--target",
    ];
    match installer {
        Installer::Uv(uv) => {
            let mut cmd = uv_cmd(uv, &["pip", "install"]);
            cmd.args(pins).arg(target).arg("--python").arg(python);
            cmd.arg("-r").arg(reqs);
            run_step(
                cmd,
                TOOL_LIMIT,
                Some("  uv | "),
                "uv pip install --target",
                failed,
            )
        }
        Installer::Pip => {
            // A pyspark env made by uv has no pip: the base interpreter of the same minor
            // version installs for it.
            let mut cmd = Command::new(base);
            cmd.args(PIP_QUIET)
                .args(["install", "--progress-bar", "off"])
                .args(pins)
                .arg(target)
                .arg("-r")
                .arg(reqs);
            run_step(
                cmd,
                TOOL_LIMIT,
                Some("  pip | "),
                "pip install --target",
                failed,
            )
        }
    }
}

const PIP_QUIET: [&str; 5] = [
    "-m",
    "pip",
    "--disable-pip-version-check",
    "--no-input",
    "--no-color",
];

/// uv's own settings never leak in (a user's uv.toml), and it never fetches a Python of its
/// own: the base interpreter is always the one fakejvm chose.
fn uv_cmd(uv: &Path, sub: &[&str]) -> Command {
    let mut cmd = Command::new(uv);
    cmd.args(["--no-config", "--no-python-downloads", "--cache-dir"])
        .arg(uv_cache())
        .args(sub);
    // pip's certificate bundle (PIP_CERT, e.g. a proxy's CA) is the system's: uv reads it too.
    cmd.env("UV_SYSTEM_CERTS", "1");
    cmd
}

/// A fresh venv at `dir` from the base interpreter `base`.
pub(super) fn create_venv(
    installer: &Installer,
    base: &str,
    dir: &Path,
    failed: Failed,
) -> Result<(), EnvError> {
    match installer {
        Installer::Uv(uv) => {
            let mut cmd = uv_cmd(uv, &["venv", "--quiet", "--no-project", "--python", base]);
            cmd.arg(dir);
            run_step(cmd, VENV_LIMIT, None, "uv venv", failed)
        }
        Installer::Pip => {
            let mut cmd = Command::new(base);
            cmd.args(["-m", "venv"]).arg(dir);
            run_step(cmd, VENV_LIMIT, None, &format!("{base} -m venv"), failed)
        }
    }
}

/// What an env of `flavor` installs for pyspark `release`: pyspark alone (py4j comes with it),
/// or with pandas and pyarrow, capped at the pinned versions so an older Python gets the newest
/// release that still supports it (the lock then says exactly which).
pub(super) fn requirements(release: PysparkVersion, flavor: Flavor) -> Vec<String> {
    let mut reqs = vec![format!("pyspark=={release}")];
    if flavor == Flavor::Full {
        reqs.push(format!("pandas<={}", super::PANDAS));
        reqs.push(format!("pyarrow<={}", super::PYARROW));
    }
    reqs
}

/// Resolve `reqs` for the venv at `dir` into a lock (uv installs nothing yet; pip installs as it
/// resolves, so with pip the env is also complete afterwards).
pub(super) fn resolve(
    installer: &Installer,
    dir: &Path,
    reqs: &[String],
    tag: (PysparkVersion, PythonMinor, Flavor),
    failed: Failed,
) -> Result<Lock, EnvError> {
    let python = super::provision::python_in(dir);
    let body = match installer {
        Installer::Uv(uv) => {
            // From the cache alone first: pyspark ships only an sdist, and where an HTTP proxy
            // makes every cached response stale, uv would fetch it again (hundreds of MB) and
            // build its metadata anew just to read its one dependency.
            let compile = |offline: bool| {
                let mut cmd = uv_cmd(
                    uv,
                    &[
                        "pip",
                        "compile",
                        "-",
                        "--generate-hashes",
                        "--no-header",
                        "--no-annotate",
                        "--quiet",
                    ],
                );
                if offline {
                    cmd.arg("--offline");
                }
                cmd.arg("--python").arg(&python);
                child::run(cmd, Some(reqs.join("\n").into_bytes()), INSTALL_LIMIT, None)
                    .map_err(|e| failed("uv pip compile", format!("cannot start it: {e}")))
            };
            let cached = compile(true)?;
            let ran = if cached.succeeded() {
                cached
            } else {
                compile(false)?
            };
            check(&ran, INSTALL_LIMIT, "uv pip compile", failed)?;
            String::from_utf8_lossy(&ran.stdout).into_owned()
        }
        Installer::Pip => {
            let report = dir.join("fakejvm-pip-report.json");
            let mut cmd = Command::new(&python);
            cmd.args(PIP_QUIET)
                .args(["install", "--progress-bar", "off", "--report"])
                .arg(&report)
                .args(reqs);
            run_step(cmd, INSTALL_LIMIT, Some("  pip | "), "pip install", failed)?;
            let text = fs::read(&report).map_err(|source| EnvError::Io {
                action: "read pip's report",
                path: report.clone(),
                source,
            })?;
            let _ = fs::remove_file(&report);
            lock_body_from_report(&text)
                .map_err(|e| failed("reading pip's installation report", e))?
        }
    };
    let (pyspark, python, flavor) = tag;
    let head = Lock {
        pyspark,
        python,
        flavor,
        dists: BTreeMap::new(),
    }
    .to_text("");
    Lock::parse(&format!("{head}{body}"))
        .map_err(|e| failed("reading the resolved lock", format!("{e}:\n{body}")))
}

/// `name==version --hash=sha256:...` for every distribution pip's `--report` says it installed.
fn lock_body_from_report(json: &[u8]) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Report {
        install: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        metadata: Meta,
        download_info: Download,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        name: String,
        version: String,
    }
    #[derive(serde::Deserialize)]
    struct Download {
        url: String,
        #[serde(default)]
        archive_info: Option<Archive>,
    }
    #[derive(serde::Deserialize)]
    struct Archive {
        #[serde(default)]
        hashes: BTreeMap<String, String>,
    }
    let report: Report = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let mut out = String::new();
    for item in report.install {
        let sha = item
            .download_info
            .archive_info
            .and_then(|a| a.hashes.get("sha256").cloned())
            .ok_or_else(|| {
                format!(
                    "{} {} came from {} with no sha256",
                    item.metadata.name, item.metadata.version, item.download_info.url
                )
            })?;
        out.push_str(&format!(
            "{}=={} --hash=sha256:{sha}\n",
            normalize(&item.metadata.name),
            item.metadata.version
        ));
    }
    Ok(out)
}

/// Install exactly the lock at `lock` into the venv at `dir`.
pub(super) fn install_locked(
    installer: &Installer,
    dir: &Path,
    lock: &Path,
    failed: Failed,
) -> Result<(), EnvError> {
    let python = super::provision::python_in(dir);
    match installer {
        Installer::Uv(uv) => {
            let mut cmd = uv_cmd(
                uv,
                &[
                    "pip",
                    "install",
                    "--require-hashes",
                    "--no-deps",
                    "--python",
                ],
            );
            cmd.arg(&python).arg("-r").arg(lock);
            run_step(
                cmd,
                INSTALL_LIMIT,
                Some("  uv | "),
                "uv pip install",
                failed,
            )
        }
        Installer::Pip => {
            let mut cmd = Command::new(&python);
            cmd.args(PIP_QUIET)
                .args([
                    "install",
                    "--progress-bar",
                    "off",
                    "--require-hashes",
                    "--no-deps",
                    "-r",
                ])
                .arg(lock);
            run_step(cmd, INSTALL_LIMIT, Some("  pip | "), "pip install", failed)
        }
    }
}

/// The distributions a venv's installer put there itself (pip's venv seeds): never locked,
/// never compared.
pub(super) const SEEDS: [&str; 4] = ["pip", "setuptools", "wheel", "distribute"];

pub(super) fn run_step(
    cmd: Command,
    limit: Duration,
    echo: Option<&'static str>,
    step: &str,
    failed: Failed,
) -> Result<(), EnvError> {
    let ran = child::run(cmd, None, limit, echo)
        .map_err(|e| failed(step, format!("cannot start it: {e}")))?;
    check(&ran, limit, step, failed)
}

fn check(ran: &child::Ran, limit: Duration, step: &str, failed: Failed) -> Result<(), EnvError> {
    match ran.status {
        None => Err(EnvError::Timeout {
            what: step.to_string(),
            after: limit,
            hint: "check your network or package index, then run `fakejvm env setup` again".into(),
        }),
        Some(_) if ran.succeeded() => Ok(()),
        Some(_) => Err(failed(
            step,
            format!("it exited with {}:\n{}", ran.status_text(), ran.tail()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pips_report_becomes_a_hashed_pin_per_distribution() {
        let report = br#"{"version":"1","install":[
          {"metadata":{"name":"PyArrow","version":"22.0.0"},
           "download_info":{"url":"https://x/pyarrow.whl","archive_info":{"hash":"sha256=ab","hashes":{"sha256":"ab"}}}},
          {"metadata":{"name":"py4j","version":"0.10.9.9"},
           "download_info":{"url":"https://x/py4j.whl","archive_info":{"hashes":{"sha256":"cd"}}}}]}"#;
        assert_eq!(
            lock_body_from_report(report).unwrap(),
            "pyarrow==22.0.0 --hash=sha256:ab\npy4j==0.10.9.9 --hash=sha256:cd\n"
        );
        let local = br#"{"install":[{"metadata":{"name":"x","version":"1"},"download_info":{"url":"file:///src/x"}}]}"#;
        let err = lock_body_from_report(local).unwrap_err();
        assert!(
            err.contains("file:///src/x") && err.contains("no sha256"),
            "{err}"
        );
    }

    #[test]
    fn a_lean_env_asks_for_pyspark_alone() {
        let v: PysparkVersion = "3.5.9".parse().unwrap();
        assert_eq!(requirements(v, Flavor::Lean), ["pyspark==3.5.9"]);
        let full = requirements(v, Flavor::Full);
        assert_eq!(full.len(), 3);
        assert!(full[1].starts_with("pandas<=") && full[2].starts_with("pyarrow<="));
    }
}
