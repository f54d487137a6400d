//! What CI reads: the JUnit files of `run` and `replay`, read back by a real JUnit consumer
//! (junitparser from PyPI), hold one testcase per scenario task or golden with the run's counts;
//! the shards of a run (`--shard I/N`), joined by `report merge`, are the unsharded run: the
//! same table, outcomes, JSON summary and JUnit cases.

mod common;
use assert_cmd::Command;
use common::junit_reader::{self, Counts};
use serde_json::Value;
use std::path::{Path, PathBuf};

const PYSPARK: &str = fakejvm::pyenv::DEFAULT_PYSPARK;

fn fakejvm() -> Command {
    let mut c = Command::cargo_bin("fakejvm").expect("binary");
    c.env_remove("FAKEJVM_PYTHON")
        .timeout(std::time::Duration::from_secs(600));
    c
}

/// Text that XML 1.0 cannot hold (a control character), a CDATA end and markup, in what the
/// worker returns and what it writes to stderr: a Python string literal's body, inside JSON.
const NASTY: &str = r#"\\x01 ]]> <b>&amp;</b> \" done"#;

/// Four scenario files: one task that passes, two tasks that pass, a mismatch whose values
/// and stderr hold [`NASTY`], and two tasks no pyspark version runs (N/A).
fn scenarios(dir: &Path) -> PathBuf {
    let dir = dir.join("scenarios");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    let task = |func: &str, values: &str, expect: &str| {
        format!(
            r#"{{"function":"{func}","input":{{"encoding":"pickle_batched","batch_size":2,"values":{values}}},"expect":{expect}}}"#
        )
    };
    let double = task(
        "func = lambda s, it: (x * 2 for x in it)",
        "[1, 2, 3]",
        r#"{"values":[2, 4, 6]}"#,
    );
    write(
        "a_pass.json",
        format!(r#"{{"description":"doubles three numbers","tasks":[{double}]}}"#),
    );
    write(
        "b_two_tasks.json",
        format!(r#"{{"description":"two tasks, one worker each","tasks":[{double},{double}]}}"#),
    );
    let nasty = format!(
        "import sys\\ndef func(s, it):\\n    sys.stderr.write('stderr: {NASTY}\\\\n'); sys.stderr.flush()\\n    for x in it:\\n        yield '{NASTY}'\\n"
    );
    write(
        "c_mismatch.json",
        format!(
            r#"{{"description":"a value with ]]> and a control character that the expectation does not match","tasks":[{}]}}"#,
            task(&nasty, "[1]", r#"{"values":["something else"]}"#)
        ),
    );
    write(
        "d_not_applicable.json",
        format!(
            r#"{{"description":"for a pyspark that does not exist yet","requires":">=99.0","tasks":[{double},{double}]}}"#
        ),
    );
    dir
}

/// The tests, failures, errors and skipped the JUnit file must hold: counted from the run's
/// own JSON report (a task per testcase; an N/A scenario's tasks from its file).
fn counts_of_run(report: &Value, scenario_dir: &Path) -> Counts {
    let mut c = Counts::default();
    for s in report["scenarios"].as_array().unwrap() {
        let tasks = s["tasks"].as_array().unwrap();
        if s["verdict"] == "n/a" {
            let file: Value =
                serde_json::from_slice(&std::fs::read(s["file"].as_str().unwrap()).unwrap())
                    .unwrap();
            let n = file["tasks"].as_array().unwrap().len();
            c.tests += n;
            c.skipped += n;
            continue;
        }
        assert!(s["file"]
            .as_str()
            .unwrap()
            .starts_with(scenario_dir.to_str().unwrap()));
        for t in tasks {
            c.tests += 1;
            if t["ok"] != true {
                if t["outcome"]["kind"] == "Harness" {
                    c.errors += 1;
                } else {
                    c.failures += 1;
                }
            }
        }
    }
    c
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `fakejvm run DIR --pyspark PYSPARK` with `extra` flags; returns its stdout.
fn run(dir: &Path, extra: &[&str], code: i32) -> String {
    let out = fakejvm()
        .args(["run", dir.to_str().unwrap(), "--pyspark", PYSPARK])
        .args(extra)
        .assert()
        .code(code)
        .get_output()
        .clone();
    String::from_utf8(out.stdout).unwrap()
}

/// The table without its timings (` 123 ms` at the end of each verdict line).
/// The text without what differs run to run: timings, and the resource figures of the `used:`
/// lines (RSS, CPU, threads are sampled). The `env` header a run prints first is left out too:
/// a merge prints the verdicts and summary, not the env line of each shard.
fn untimed(text: &str) -> String {
    let re = regex::Regex::new(r"(?m) \d+ ms$").unwrap();
    let text = re.replace_all(text, " N ms");
    let used = regex::Regex::new(r"(?m)^(      task \d+: used:).*$").unwrap();
    let text = used.replace_all(&text, "$1 [FIGURES]");
    text.lines()
        .filter(|l| !l.starts_with("env   "))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn junit_of_a_run_is_read_back_by_junitparser_with_the_runs_counts() {
    let _ = common::env_for(PYSPARK);
    let d = tempfile::tempdir().unwrap();
    let dir = scenarios(d.path());
    let (json, xml) = (d.path().join("run.json"), d.path().join("run.xml"));
    let stdout = run(
        &dir,
        &[
            "--json",
            json.to_str().unwrap(),
            "--junit",
            xml.to_str().unwrap(),
        ],
        1,
    );
    eprintln!("{stdout}");
    let report = read_json(&json);
    assert_eq!(
        report["summary"],
        serde_json::json!({"passed": 2, "failed": 1, "not_applicable": 1})
    );
    let want = counts_of_run(&report, &dir);
    assert_eq!(
        want,
        Counts {
            tests: 6,
            failures: 1,
            errors: 0,
            skipped: 2
        }
    );

    let read = junit_reader::read(&xml);
    assert_eq!(read.totals(), want);
    assert_eq!(read.suites.len(), 1);
    let suite = &read.suites[0];
    assert!(
        suite.name.contains(&format!("pyspark {PYSPARK}")),
        "{}",
        suite.name
    );
    assert_eq!(suite.properties["pyspark"], PYSPARK);
    assert_eq!(suite.properties["command"], "run");

    let names: Vec<(String, &str, &str)> = read
        .cases()
        .map(|c| {
            (
                Path::new(&c.classname)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                c.name.split(':').next().unwrap(),
                c.result.as_str(),
            )
        })
        .collect();
    let own = |f: &str, t: &'static str, r: &'static str| (f.to_string(), t, r);
    assert_eq!(
        names,
        vec![
            own("a_pass.json", "task 0", "passed"),
            own("b_two_tasks.json", "task 0", "passed"),
            own("b_two_tasks.json", "task 1", "passed"),
            own("c_mismatch.json", "task 0", "failure"),
            own("d_not_applicable.json", "task 0", "skipped"),
            own("d_not_applicable.json", "task 1", "skipped"),
        ]
    );
    let failed = read.cases().find(|c| c.result == "failure").unwrap();
    assert_eq!(failed.kind.as_deref(), Some("Mismatch"));
    let message = failed.message.as_deref().unwrap();
    assert!(
        message.starts_with("task 0: Mismatch: expected"),
        "{message}"
    );
    // The verdict text is the one the run printed, whole: the CDATA split around "]]>" and the
    // control character made visible are undone or shown, never lost.
    let text = failed.text.as_deref().unwrap();
    let printed = stdout
        .split("\nFAIL  ")
        .nth(1)
        .map(|t| format!("FAIL  {}", t.split("\nN/A ").next().unwrap()))
        .unwrap();
    assert_eq!(
        text.trim_end(),
        printed.replace('\u{1}', r"\u{1}").trim_end()
    );
    assert!(
        text.contains(r#"]]> <b>&amp;</b> \" done"#) && text.contains(r"\u{1}"),
        "{text}"
    );
    let stderr = failed.system_err.as_deref().unwrap();
    assert!(
        stderr.contains(r#"stderr: \u{1} ]]> <b>&amp;</b> " done"#),
        "{stderr}"
    );
    let skipped = read.cases().find(|c| c.result == "skipped").unwrap();
    assert!(
        skipped
            .message
            .as_deref()
            .unwrap()
            .contains("needs pyspark >=99.0"),
        "{skipped:?}"
    );
}

#[test]
fn junit_of_a_replay_is_read_back_by_junitparser() {
    let env = common::env_for(PYSPARK);
    let root = common::repo_root();
    let d = tempfile::tempdir().unwrap();
    let xml = d.path().join("replay.xml");
    // With --python, a golden of another version is N/A: one passes, one is skipped.
    let ours = format!("golden/pyspark-{PYSPARK}/map_parallelize");
    let theirs = "golden/pyspark-3.5.9/map_parallelize";
    assert_ne!(PYSPARK, "3.5.9");
    fakejvm()
        .current_dir(&root)
        .args(["replay", &ours, theirs, "--python"])
        .arg(&env.python)
        .args(["--junit", xml.to_str().unwrap()])
        .assert()
        .code(0);
    let read = junit_reader::read(&xml);
    assert_eq!(
        read.totals(),
        Counts {
            tests: 2,
            failures: 0,
            errors: 0,
            skipped: 1
        }
    );
    let mut suites: Vec<(&str, &str)> = read
        .suites
        .iter()
        .map(|s| (s.properties["pyspark"].as_str(), s.cases[0].result.as_str()))
        .collect();
    suites.sort();
    assert_eq!(suites, vec![("3.5.9", "skipped"), (PYSPARK, "passed")]);
    assert!(read
        .cases()
        .any(|c| c.classname == ours && c.name.starts_with("replay of 2 task")));
}

#[test]
fn three_shards_merged_are_the_unsharded_run() {
    let _ = common::env_for(PYSPARK);
    let d = tempfile::tempdir().unwrap();
    let dir = scenarios(d.path());
    let path = |name: &str| d.path().join(name).to_str().unwrap().to_string();
    let whole = untimed(&run(
        &dir,
        &["--json", &path("all.json"), "--junit", &path("all.xml")],
        1,
    ));
    let mut shard_files = vec![];
    let mut shard_items: Vec<Vec<String>> = vec![];
    for i in 1..=3 {
        let shard = format!("{i}/3");
        let json = path(&format!("shard{i}.json"));
        // Sorted, c_mismatch.json is the third file: it is shard 3's.
        let stdout = run(&dir, &["--shard", &shard, "--json", &json], (i == 3) as i32);
        eprintln!("shard {shard}:\n{stdout}");
        let report = read_json(Path::new(&json));
        assert_eq!(report["shard"], shard.as_str());
        shard_items.push(
            report["scenarios"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["file"].as_str().unwrap().to_string())
                .collect(),
        );
        shard_files.push(json);
    }
    // Four files dealt round robin in sorted order: 2, 1 and 1, none twice.
    let sizes: Vec<usize> = shard_items.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![2, 1, 1]);
    let mut all: Vec<&String> = shard_items.iter().flatten().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 4);

    // Given in any order, the shards merge into the unsharded table.
    let mut merge = vec![
        "report",
        "merge",
        &shard_files[2],
        &shard_files[0],
        &shard_files[1],
    ];
    let (mjson, mxml) = (path("merged.json"), path("merged.xml"));
    merge.extend(["--json", &mjson, "--junit", &mxml]);
    let out = fakejvm().args(&merge).assert().code(1).get_output().clone();
    let merged = untimed(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(merged, whole);

    let (a, b) = (
        read_json(Path::new(&path("all.json"))),
        read_json(Path::new(&mjson)),
    );
    assert_eq!(a["summary"], b["summary"]);
    assert!(b.get("shard").is_none(), "a merged report is the whole run");
    let outcomes = |doc: &Value| -> Vec<(String, String, Vec<String>)> {
        doc["scenarios"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["file"].as_str().unwrap().to_string(),
                    s["verdict"].as_str().unwrap().to_string(),
                    s["tasks"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| t["outcome"]["kind"].as_str().unwrap().to_string())
                        .collect(),
                )
            })
            .collect()
    };
    assert_eq!(outcomes(&a), outcomes(&b));

    let (ja, jb) = (
        junit_reader::read(Path::new(&path("all.xml"))),
        junit_reader::read(Path::new(&mxml)),
    );
    assert_eq!(ja.totals(), jb.totals());
    let cases = |r: &junit_reader::Read| -> Vec<(String, String, String, Option<String>)> {
        r.cases()
            .map(|c| {
                (
                    c.classname.clone(),
                    c.name.clone(),
                    c.result.clone(),
                    c.message.clone(),
                )
            })
            .collect()
    };
    assert_eq!(cases(&ja), cases(&jb));

    // A shard short, or one twice: one line, exit 2, and no table.
    let line = |args: &[&str], wanted: &str| {
        let out = fakejvm().args(args).assert().code(2).get_output().clone();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(wanted), "{wanted:?} in {stderr}");
        assert!(out.stdout.is_empty());
    };
    line(
        &["report", "merge", &shard_files[0], &shard_files[2]],
        "shard 2/3 is missing",
    );
    line(
        &[
            "report",
            "merge",
            &shard_files[0],
            &shard_files[1],
            &shard_files[1],
            &shard_files[2],
        ],
        "shard 2/3 is given twice",
    );
    line(
        &["report", "merge", &shard_files[0], &path("all.json")],
        "merge the shards of one split",
    );
}

/// A bad --shard is refused while the flags are read (one line, exit 2), for every command that
/// takes it: the interpreter named after it is never looked at.
#[test]
fn a_bad_shard_is_one_line_and_exit_2() {
    let d = tempfile::tempdir().unwrap();
    for bad in ["0/2", "3/2", "x", "1/0", "2"] {
        for cmd in [
            vec!["run", "scenarios"],
            vec!["check"],
            vec!["replay", "golden"],
        ] {
            let out = fakejvm()
                .current_dir(d.path())
                .args(&cmd)
                .args(["--shard", bad, "--python", "/nonexistent/python"])
                .assert()
                .code(2)
                .get_output()
                .clone();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(
                stderr.starts_with("fakejvm: ")
                    && stderr.contains("--shard")
                    && stderr.contains(&format!("{bad:?} is not a shard")),
                "{cmd:?} --shard {bad}: {stderr}"
            );
        }
    }
    // merge: a file that is not a report names the file.
    let junk = d.path().join("junk.json");
    std::fs::write(&junk, "{\"summary\": 1}").unwrap();
    let out = fakejvm()
        .args(["report", "merge"])
        .arg(&junk)
        .assert()
        .code(2)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.lines().count() == 1
            && stderr.contains("junk.json")
            && stderr.contains("not a fakejvm JSON report"),
        "{stderr}"
    );
}
