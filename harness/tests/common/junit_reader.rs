//! A real JUnit consumer for the tests: `junitparser` from PyPI, in a tool venv cached outside
//! the repo (`<fakejvm cache>/tools/junitparser-<version>`), built once the way pyenv/provision.rs
//! builds envs: under an exclusive lock, in a `.tmp` sibling renamed into place, complete only
//! when its marker is written last.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const JUNITPARSER: &str = "5.0.3";
const MARKER: &str = "fakejvm-tool.json";

/// What junitparser read from a JUnit file.
#[derive(Debug, serde::Deserialize)]
pub struct Read {
    pub suites: Vec<SuiteRead>,
}

#[derive(Debug, serde::Deserialize)]
pub struct SuiteRead {
    pub name: String,
    /// The suite's own attributes (tests, failures, errors, skipped).
    pub declared: Counts,
    /// Counted from its cases by junitparser.
    pub counted: Counts,
    pub properties: std::collections::BTreeMap<String, String>,
    pub cases: Vec<CaseRead>,
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy, serde::Deserialize)]
pub struct Counts {
    pub tests: usize,
    pub failures: usize,
    pub errors: usize,
    pub skipped: usize,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.tests += o.tests;
        self.failures += o.failures;
        self.errors += o.errors;
        self.skipped += o.skipped;
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct CaseRead {
    pub classname: String,
    pub name: String,
    /// "passed", "failure", "error" or "skipped".
    pub result: String,
    pub message: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub text: Option<String>,
    pub system_err: Option<String>,
}

impl Read {
    pub fn totals(&self) -> Counts {
        let mut c = Counts::default();
        for s in &self.suites {
            assert_eq!(
                s.declared, s.counted,
                "suite {:?}: its attributes disagree with its cases",
                s.name
            );
            c += s.counted;
        }
        c
    }

    pub fn cases(&self) -> impl Iterator<Item = &CaseRead> {
        self.suites.iter().flat_map(|s| &s.cases)
    }
}

const READER: &str = r#"
import json, sys
from junitparser import JUnitXml, TestSuite, Failure, Error, Skipped

xml = JUnitXml.fromfile(sys.argv[1])
suites = [xml] if isinstance(xml, TestSuite) else list(xml)
out = []
for s in suites:
    cases = []
    counted = dict(tests=0, failures=0, errors=0, skipped=0)
    for c in s:
        counted["tests"] += 1
        kind, r = "passed", None
        for r in c.result:
            if isinstance(r, Failure): kind = "failure"
            elif isinstance(r, Error): kind = "error"
            elif isinstance(r, Skipped): kind = "skipped"
            break
        if kind != "passed":
            counted[{"failure": "failures", "error": "errors", "skipped": "skipped"}[kind]] += 1
        cases.append(dict(classname=c.classname, name=c.name, result=kind,
                          message=r.message if r is not None else None,
                          type=r.type if r is not None else None,
                          text=r.text if r is not None else None,
                          system_err=c.system_err))
    declared = dict(tests=s.tests, failures=s.failures, errors=s.errors, skipped=s.skipped)
    out.append(dict(name=s.name, declared=declared, counted=counted,
                    properties={p.name: p.value for p in s.properties()}, cases=cases))
json.dump(dict(suites=out), sys.stdout)
"#;

/// Read `file` with junitparser (installed on first use).
pub fn read(file: &Path) -> Read {
    let python = tool_python();
    let out = Command::new(&python)
        .args(["-c", READER])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "junitparser could not read {}:\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "junitparser's reading of {}: {e}\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The tool venv's interpreter, built if missing (it never skips: a venv that cannot be built
/// fails the test with pip's words).
fn tool_python() -> PathBuf {
    let tools = fakejvm::pyenv::cache_root().join("tools");
    let name = format!("junitparser-{JUNITPARSER}");
    let dir = tools.join(&name);
    let python = dir.join("bin").join("python");
    fs::create_dir_all(&tools).unwrap_or_else(|e| panic!("{}: {e}", tools.display()));
    let _lock = lock(&tools.join(format!(".lock-{name}")));
    if dir.join(MARKER).exists() {
        return python;
    }
    let base = std::env::var("FAKEJVM_BASE_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into());
    let building = tools.join(format!("{name}.tmp"));
    for stale in [&building, &dir] {
        if stale.exists() {
            fs::remove_dir_all(stale).unwrap_or_else(|e| panic!("{}: {e}", stale.display()));
        }
    }
    eprintln!(
        "fakejvm tests: installing junitparser {JUNITPARSER} (a JUnit reader, from PyPI) into a tool venv at {} (once)...",
        dir.display()
    );
    let run = |cmd: &mut Command, what: &str| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        Command::new(&base).args(["-m", "venv"]).arg(&building),
        &format!("{base} -m venv"),
    );
    // `python -m pip`: the .tmp path in bin/ scripts' shebangs breaks at the rename.
    run(
        Command::new(building.join("bin").join("python")).args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
            &format!("junitparser=={JUNITPARSER}"),
        ]),
        "pip install junitparser",
    );
    fs::rename(&building, &dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    fakejvm::atomic::write_atomic(
        &dir.join(MARKER),
        format!("{{\"junitparser\":\"{JUNITPARSER}\"}}").as_bytes(),
        fakejvm::atomic::WriteOptions::CACHE,
    )
    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    python
}

/// The exclusive lock on `path`: test binaries run at once, and whoever comes second finds the
/// marker. Bounded: a pip install from a cold cache takes well under the limit.
fn lock(path: &Path) -> File {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return file,
            Err(fs::TryLockError::WouldBlock) => {}
            Err(fs::TryLockError::Error(e)) => panic!("lock {}: {e}", path.display()),
        }
        assert!(
            started.elapsed() < Duration::from_secs(15 * 60),
            "waited 15 minutes for {}: find its holder with `fuser`",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
