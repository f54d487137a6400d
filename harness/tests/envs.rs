//! fakejvm's own envs as a user meets them: `env setup --locked` rebuilds exactly a lock, with uv
//! and with pip; `env list` shows every cached env; a run without UDF tasks uses the lean env and
//! says so; a combination that cannot exist is N/A (exit 2, one line with the reason and how to
//! get the interpreter) before anything is built.
//!
//! Every env here is built under a scratch FAKEJVM_CACHE_DIR, never in the shared cache; uv's
//! download cache is the normal one (`<cache_root>/uv-cache`), so only the first run on a
//! machine downloads pyspark.

mod common;
use assert_cmd::Command;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LEAN_LOCK: &str = "harness/locks/pyspark-4.0.5-py3.11-lean.txt";
const FULL_LOCK: &str = "harness/locks/pyspark-4.0.5-py3.11.txt";

/// fakejvm with its cache under `root`.
fn fakejvm(root: &Path) -> Command {
    let mut c = Command::cargo_bin("fakejvm").expect("binary");
    c.env_remove("FAKEJVM_PYTHON")
        .env_remove("FAKEJVM_PYTHON_VERSION")
        .env("FAKEJVM_CACHE_DIR", root)
        .env("UV_CACHE_DIR", fakejvm::pyenv::uv_cache())
        .current_dir(common::repo_root())
        // A cold cache downloads and builds pyspark (hundreds of MB): generous, never a speed bound.
        .timeout(Duration::from_secs(40 * 60));
    c
}

/// name -> version as the lock file says, read here line by line (not by fakejvm's parser).
fn pins(lock: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(lock)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('#') && l.contains("=="))
        .map(|l| {
            let pin = l.split_whitespace().next().unwrap();
            let (n, v) = pin.split_once("==").unwrap();
            (n.to_lowercase().replace('_', "-"), v.to_string())
        })
        .collect()
}

/// name -> version of every distribution the interpreter sees, asked of Python itself; pip's
/// venv seeds (pip, setuptools) are the venv's, not the lock's.
fn installed(python: &Path) -> BTreeMap<String, String> {
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import json, importlib.metadata as m\n\
             print(json.dumps({d.metadata['Name'].lower().replace('_', '-'): d.version for d in m.distributions()}))",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut all: BTreeMap<String, String> = serde_json::from_slice(&out.stdout).unwrap();
    for seed in ["pip", "setuptools", "wheel"] {
        all.remove(seed);
    }
    all
}

fn stdout_of(c: &mut Command, code: i32) -> String {
    let out = c.assert().code(code).get_output().clone();
    assert!(
        out.status.code() == Some(code),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn python_of(setup_stdout: &str) -> PathBuf {
    let line = setup_stdout
        .lines()
        .find_map(|l| l.strip_prefix("python       "))
        .unwrap_or_else(|| panic!("no python line in:\n{setup_stdout}"));
    PathBuf::from(line.trim())
}

#[test]
fn locked_setup_rebuilds_exactly_the_lock_with_uv_and_with_pip() {
    let lock = common::repo_root().join(LEAN_LOCK);
    let wanted = pins(&lock);
    assert_eq!(
        wanted.keys().collect::<Vec<_>>(),
        ["py4j", "pyspark"],
        "a lean lock pins pyspark and its one dependency"
    );
    let scratch = tempfile::tempdir().unwrap();
    for installer in ["uv", "pip"] {
        let root = scratch.path().join(installer);
        let out = stdout_of(
            fakejvm(&root).args([
                "env",
                "setup",
                "--locked",
                LEAN_LOCK,
                "--installer",
                installer,
            ]),
            0,
        );
        let python = python_of(&out);
        assert!(python.starts_with(&root), "{}", python.display());
        assert_eq!(installed(&python), wanted, "{installer} env vs {LEAN_LOCK}");
        // The env keeps the lock it was built from: the same first line, pins and hashes (its
        // second line says which installer built it).
        let kept = python
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("fakejvm-lock.txt");
        let body = |p: &Path| {
            let text = std::fs::read_to_string(p).unwrap();
            let first = text.lines().next().unwrap().to_string();
            let rest: Vec<String> = text
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .map(str::to_string)
                .collect();
            (first, rest)
        };
        assert_eq!(body(&kept), body(&lock));
        // Asked again, the finished env is found, not rebuilt.
        let again = fakejvm(&root)
            .args(["env", "setup", "--locked", LEAN_LOCK])
            .assert()
            .code(0)
            .get_output()
            .clone();
        let stderr = String::from_utf8_lossy(&again.stderr);
        assert!(!stderr.contains("provisioning"), "{stderr}");

        // env list: one line for it, with its pyspark, Python, flavor, dialect, size and lock.
        let list = stdout_of(fakejvm(&root).args(["env", "list"]), 0);
        let lines: Vec<&str> = list.lines().collect();
        assert_eq!(lines.len(), 4, "{list}");
        assert!(
            lines[3].starts_with("CPythons for --python-version: ") && lines[3].contains("3.11 ("),
            "{list}"
        );
        let cols: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "pyspark",
                "python",
                "env",
                "dialect",
                "size",
                "own",
                "installer",
                "lock",
                "dir"
            ],
            "{list}"
        );
        let cols: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(&cols[..4], ["4.0.5", "3.11", "lean", "A"], "{list}");
        assert_eq!(cols[5], "MB", "{list}");
        let size: u64 = cols[4].parse().unwrap();
        assert!(size > 100, "pyspark 4.0.5 alone is hundreds of MB: {list}");
        assert_eq!(cols[8], installer, "{list}");
        assert_eq!(cols[9], "yes", "{list}");
        assert!(cols[10].starts_with(root.to_str().unwrap()), "{list}");
        assert!(lines[2].starts_with("1 envs; on disk: "), "{list}");
        if installer == "uv" {
            // uv hardlinks from its cache: the env itself holds little of its size.
            let own: u64 = cols[6].parse().unwrap();
            assert!(own * 4 < size, "own {own} MB of {size} MB: {list}");
        }
    }
}

/// RDD-only runs use the lean env, a run with a UDF task the full one; the first line says which.
#[test]
fn the_run_header_says_lean_or_full() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path();
    for lock in [LEAN_LOCK, FULL_LOCK] {
        stdout_of(fakejvm(root).args(["env", "setup", "--locked", lock]), 0);
    }
    let cases = [
        (
            "scenarios/core/map_double.json",
            "lean env (pyspark and py4j only)",
        ),
        (
            "scenarios/udf/scalar_iter.json",
            "full env (pyspark, pandas, pyarrow)",
        ),
    ];
    for (file, which) in cases {
        assert!(common::repo_root().join(file).is_file(), "{file}");
        let out = stdout_of(
            fakejvm(root).args(["run", "--python-version", "3.11", file]),
            0,
        );
        let header = out.lines().next().unwrap();
        assert!(
            header.starts_with("env   pyspark 4.0.5 | python 3.11 | ") && header.contains(which),
            "{file}: {header}"
        );
        assert!(header.contains(root.to_str().unwrap()), "{header}");
        assert!(out.contains("1 passed, 0 failed"), "{out}");
    }
}

/// Runs fakejvm, expects exit 2 and exactly one line containing every one of `wanted`.
fn assert_one_line(c: &mut Command, wanted: &[&str]) {
    let out = c.assert().code(2).get_output().clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("fakejvm: "), "{stderr}");
    for w in wanted {
        assert!(stderr.contains(w), "the line must contain {w:?}: {stderr}");
    }
}

#[test]
fn a_combination_that_cannot_exist_is_na_in_one_line_before_anything_is_built() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("cache");
    // A Python the pyspark line does not declare.
    assert_one_line(
        fakejvm(&root).args([
            "env",
            "setup",
            "--pyspark",
            "3.5.9",
            "--python-version",
            "3.13",
        ]),
        &[
            "N/A: pyspark 3.5.9 declares Python 3.8 to 3.11 (its classifiers), not 3.13",
            "the nearest is --python-version 3.11",
            "pyenv install 3.11",
        ],
    );
    assert_one_line(
        fakejvm(&root).args([
            "env",
            "setup",
            "--pyspark",
            "4.0",
            "--python-version",
            "2.7",
        ]),
        &["N/A: pyspark 4.0.5 needs Python >=3.9 (its Requires-Python), not 2.7"],
    );
    // A Python this machine does not have: a PATH and pyenv root with only the default python3.
    let bin = scratch.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let python3 = common::env_for(fakejvm::pyenv::DEFAULT_PYSPARK).python;
    std::os::unix::fs::symlink(&python3, bin.join("python3")).unwrap();
    let version = fakejvm::pyenv::base_python_minor().unwrap();
    let other = if version == "3.12" { "3.11" } else { "3.12" };
    assert_one_line(
        fakejvm(&root)
            .env("PATH", &bin)
            .env("PYENV_ROOT", scratch.path().join("no-pyenv"))
            .env_remove("FAKEJVM_BASE_PYTHON")
            .args([
                "env",
                "setup",
                "--pyspark",
                "4.1.4",
                "--python-version",
                other,
            ]),
        &[
            &format!("N/A: no Python {other} on this machine"),
            &format!("python3 is {version}"),
            &format!("pyenv install {other}"),
        ],
    );
    // A run asking for one is refused the same way, before any worker starts.
    let f = scratch.path().join("s.json");
    std::fs::write(&f, r#"{"tasks":[{"function":"func = lambda s, it: it","input":{"encoding":"pickle","values":[1]},"expect":{"values":[1]}}]}"#).unwrap();
    assert_one_line(
        fakejvm(&root)
            .args(["run", "--pyspark", "4.3.0", "--python-version", "3.10"])
            .arg(&f),
        &["N/A: pyspark 4.3.0 needs Python >=3.11"],
    );
    // Not a Python version at all.
    assert_one_line(
        fakejvm(&root).args(["env", "setup", "--python-version", "3"]),
        &["\"3\" is not a Python version: write MAJOR.MINOR"],
    );
    assert!(!root.join("envs").exists(), "nothing was built");
}
