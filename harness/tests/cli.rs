//! The command line as a user meets it: bad input is one clear line and exit code 2; the
//! bundled scenarios pass.

mod common;
use assert_cmd::Command;
use predicates::prelude::*;
use std::path::Path;

fn fakejvm() -> Command {
    let mut c = Command::cargo_bin("fakejvm").expect("binary");
    c.env_remove("FAKEJVM_PYTHON")
        .timeout(std::time::Duration::from_secs(300));
    c
}

fn scenario_file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Exit 2 and exactly one line on stderr that names the file and contains `problem`.
fn assert_bad_input(args: &[&str], file_hint: &str, problem: &str) {
    let out = fakejvm().args(args).assert().code(2).get_output().clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{stderr}");
    assert!(
        lines[0].contains(file_hint),
        "the line must name {file_hint:?}: {}",
        lines[0]
    );
    assert!(
        lines[0].contains(problem),
        "the line must say {problem:?}: {}",
        lines[0]
    );
}

const GOOD: &str = r#"{"tasks":[{"function":"func = lambda s, it: it","input":{"encoding":"pickle","values":[1]},"expect":{"values":[1]}}]}"#;

#[test]
fn truncated_scenario_is_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let f = scenario_file(d.path(), "cut.json", &GOOD[..GOOD.len() / 2]);
    assert_bad_input(&["run", f.to_str().unwrap()], "cut.json", "truncated");
}

#[test]
fn unknown_field_is_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let f = scenario_file(
        d.path(),
        "typo.json",
        &GOOD.replace("\"input\"", "\"inptu\""),
    );
    assert_bad_input(&["run", f.to_str().unwrap()], "typo.json", "inptu");
}

#[test]
fn missing_function_is_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let f = scenario_file(
        d.path(),
        "nofunc.json",
        r#"{"tasks":[{"expect":{"values":[]}}]}"#,
    );
    assert_bad_input(&["run", f.to_str().unwrap()], "nofunc.json", "function");
}

#[test]
fn nonexistent_python_is_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let f = scenario_file(d.path(), "good.json", GOOD);
    assert_bad_input(
        &[
            "run",
            "--python",
            "/nonexistent/python3",
            f.to_str().unwrap(),
        ],
        "/nonexistent/python3",
        "",
    );
}

#[test]
fn wrong_flag_is_exit_2() {
    fakejvm()
        .args(["run", "--no-such-flag", "x.json"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--no-such-flag"));
}

#[test]
fn missing_scenario_path_is_bad_input() {
    assert_bad_input(
        &["run", "/nonexistent/scenarios"],
        "/nonexistent/scenarios",
        "no such file",
    );
}

#[test]
fn undecodable_stream_is_bad_input_naming_the_offset() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("junk.bin");
    std::fs::write(&f, [0, 0, 0, 0, 0, 0, 0, 9, b'x']).unwrap();
    assert_bad_input(
        &[
            "decode",
            f.to_str().unwrap(),
            "--dialect",
            "A",
            "--direction",
            "request",
        ],
        "junk.bin",
        "at byte",
    );
}

#[test]
fn bundled_core_scenarios_pass_from_the_command_line() {
    let root = common::repo_root();
    let _ = common::env_for(fakejvm::pyenv::DEFAULT_PYSPARK);
    let d = tempfile::tempdir().unwrap();
    let report = d.path().join("report.json");
    fakejvm()
        .current_dir(&root)
        .args(["run", "scenarios/core", "--json", report.to_str().unwrap()])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("0 failed"));
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(doc["summary"]["failed"], 0);
    assert!(doc["summary"]["passed"].as_u64().unwrap() >= 6);
}

#[test]
fn function_that_does_not_compile_is_bad_input() {
    let _ = common::env_for(fakejvm::pyenv::DEFAULT_PYSPARK);
    let d = tempfile::tempdir().unwrap();
    let f = scenario_file(
        d.path(),
        "syntax.json",
        &GOOD.replace("func = lambda s, it: it", "func = lambda s, it: (("),
    );
    assert_bad_input(&["run", f.to_str().unwrap()], "syntax.json", "SyntaxError");
}
