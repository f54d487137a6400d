//! `fakejvm matrix` over two pinned envs of different families: the table it prints, its JSON,
//! its HTML page's structure, its JUnit read back by a real JUnit consumer (junitparser), and
//! two shards joined by `report merge` into the same table. Bad specs are exit 2 before any
//! worker starts.

mod common;
use assert_cmd::Command;
use common::junit_reader;
use serde_json::Value;

fn fakejvm() -> Command {
    let mut c = Command::cargo_bin("fakejvm").expect("binary");
    c.env_remove("FAKEJVM_PYTHON")
        .timeout(std::time::Duration::from_secs(900));
    c
}

/// Two files every env passes, one (Unix-socket daemon) that 4.0 has not: N/A there, and one
/// whose expectation both meet only through `expect_by_version` (PASS*).
const FILES: &[&str] = &[
    "scenarios/core/map_double.json",
    "scenarios/core/raises.json",
    "scenarios/core/uds_daemon.json",
    "scenarios/core/task_context.json",
];
const PYSPARK: &str = "4.0.5,4.1.4";

fn matrix(extra: &[&str]) -> (String, i32) {
    let root = common::repo_root();
    // The envs exist before the run (as `cargo test` provisions them), so the run's text is
    // only the table's.
    common::env_for("4.0.5");
    common::env_for("4.1.4");
    let out = fakejvm()
        .current_dir(&root)
        .arg("matrix")
        .args(FILES)
        .args(["--pyspark", PYSPARK])
        .args(extra)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// The table's lines (header, rows, counts, differences), without the per-env progress lines
/// and timings that differ run to run.
fn table_lines(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("pyspark "))
        .take_while(|l| !l.starts_with("time:"))
        .map(str::to_string)
        .collect()
}

#[test]
fn prints_the_table_writes_json_html_and_junit() {
    let dir = tempfile::tempdir().unwrap();
    let (json, html, xml) = (
        dir.path().join("m.json"),
        dir.path().join("m.html"),
        dir.path().join("m.xml"),
    );
    let (stdout, code) = matrix(&[
        "--jobs",
        "2",
        "--json",
        json.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
        "--junit",
        xml.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}");
    let table = table_lines(&stdout);
    assert!(
        table[0].contains("4.0.5") && table[0].contains("4.1.4"),
        "{stdout}"
    );
    let row = |file: &str| {
        table
            .iter()
            .find(|l| l.starts_with(file))
            .unwrap_or_else(|| panic!("no row for {file}:\n{stdout}"))
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
    };
    assert_eq!(row("scenarios/core/map_double.json"), ["PASS", "PASS"]);
    assert_eq!(row("scenarios/core/uds_daemon.json"), ["N/A", "PASS"]);
    // 4.0 and 4.1 both send the task context their own way (the scenario's expect_by_version).
    assert_eq!(row("scenarios/core/task_context.json"), ["PASS*", "PASS*"]);
    assert!(
        stdout.contains("4 scenarios x 2 envs: 7 PASS, 0 FAIL, 1 N/A"),
        "{stdout}"
    );
    assert!(
        stdout.contains("scenarios/core/uds_daemon.json on 4.1.4/py3.11: PASS (first column: N/A)"),
        "{stdout}"
    );

    let doc: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(doc["columns"].as_array().unwrap().len(), 2);
    assert_eq!(doc["table"]["rows"].as_array().unwrap().len(), FILES.len());
    assert_eq!(doc["runs"].as_array().unwrap().len(), 2);
    assert_eq!(doc["differences"].as_array().unwrap().len(), 1);

    // The page: one header cell per env after the scenario column, one body row per file, a
    // cell per env in each, and every non-PASS cell linking to its verdict on the page.
    let page = std::fs::read_to_string(&html).unwrap();
    let head = page
        .split("<thead>")
        .nth(1)
        .unwrap()
        .split("</thead>")
        .next()
        .unwrap();
    assert_eq!(head.matches("<th>").count(), 3, "{head}");
    let body = page
        .split("<tbody>")
        .nth(1)
        .unwrap()
        .split("</tbody>")
        .next()
        .unwrap();
    let rows: Vec<&str> = body.split("<tr>").skip(1).collect();
    assert_eq!(rows.len(), FILES.len(), "{body}");
    for r in &rows {
        assert_eq!(r.matches("<td").count(), 3, "{r}");
    }
    for (anchor, _) in page.match_indices("href=\"#v-") {
        let id = &page[anchor + 7..];
        let id = &id[..id.find('"').unwrap()];
        assert!(page.contains(&format!("id=\"{id}\"")), "{id} links nowhere");
    }
    assert!(
        page.contains("class=\"pass differs\""),
        "the PASS of 4.1.4 beside the N/A of 4.0.5 is not outlined"
    );

    // junitparser: a suite per env; a case per task (raises has one, the others one each).
    let read = junit_reader::read(&xml);
    assert_eq!(read.suites.len(), 2);
    let total = read.totals();
    assert_eq!(total.failures + total.errors, 0, "{read:?}");
    assert_eq!(total.skipped, 1, "uds_daemon on 4.0.5: {read:?}");
    for s in &read.suites {
        assert_eq!(s.declared, s.counted, "{}", s.name);
    }
}

#[test]
fn two_shards_merge_into_the_unsharded_table() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, _) = matrix(&[]);
    let mut reports = vec![];
    for i in 1..=2 {
        let path = dir.path().join(format!("shard{i}.json"));
        let shard = format!("{i}/2");
        let (stdout, code) = matrix(&["--shard", &shard, "--json", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{stdout}");
        assert!(
            stdout
                .lines()
                .any(|l| l.ends_with(" -") || l.contains(" - ")),
            "a shard shows other shards' cells as -:\n{stdout}"
        );
        reports.push(path);
    }
    reports.reverse();
    let out = fakejvm()
        .arg("report")
        .arg("merge")
        .args(&reports)
        .output()
        .unwrap();
    let merged = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{merged}");
    assert_eq!(table_lines(&merged), table_lines(&whole));
}

#[test]
fn bad_specs_are_refused_before_any_worker() {
    for (args, needle) in [
        (vec!["--pyspark", "4.0"], "not a release like 4.0.5"),
        (vec!["--pyspark", "4.0.5..4.0.1"], "runs backwards"),
        (
            vec!["--pyspark", "4.0.5", "--python", "3"],
            "not a CPython version",
        ),
        (vec!["--pyspark", "3.2.4"], "older than fakejvm speaks"),
        (vec!["--pyspark", "4.0.5", "--jobs", "0"], "--jobs"),
    ] {
        let out = fakejvm()
            .current_dir(common::repo_root())
            .args(["matrix", "scenarios/core/map_double.json"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = fakejvm()
        .current_dir(common::repo_root())
        .args(["matrix", "no/such/dir", "--pyspark", "4.0.5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
