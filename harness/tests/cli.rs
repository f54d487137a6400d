//! The command line as a user meets it: bad input is exactly one line naming the file and the
//! field, exit code 2, before any Python starts; fakejvm's own failures are one line and exit 3;
//! the bundled scenarios pass.

mod common;
use assert_cmd::Command;
use predicates::prelude::*;
use std::path::{Path, PathBuf};

fn fakejvm() -> Command {
    let mut c = Command::cargo_bin("fakejvm").expect("binary");
    c.env_remove("FAKEJVM_PYTHON")
        .timeout(std::time::Duration::from_secs(300));
    c
}

fn scenario_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs `args`, expects exit `code` and returns stderr, which must be exactly one line
/// starting with "fakejvm: " that contains every one of `wanted`.
fn assert_one_line(args: &[&str], code: i32, wanted: &[&str]) -> String {
    let out = fakejvm()
        .args(args)
        .assert()
        .code(code)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected exactly one line on stderr, got:\n{stderr}"
    );
    assert!(stderr.starts_with("fakejvm: "), "{stderr}");
    for w in wanted {
        assert!(stderr.contains(w), "the line must contain {w:?}: {stderr}");
    }
    stderr
}

/// Exit 2 and exactly one line on stderr that names the file and contains `problem`.
fn assert_bad_input(args: &[&str], file_hint: &str, problem: &str) {
    assert_one_line(args, 2, &[file_hint, problem]);
}

/// An interpreter that leaves a mark when anything runs it, then is the real env's Python: a
/// bad scenario must be refused before fakejvm starts any Python (a probe, a command build, a
/// daemon or a worker).
struct MarkingPython {
    _dir: tempfile::TempDir,
    script: PathBuf,
    marker: PathBuf,
}

impl MarkingPython {
    fn new() -> MarkingPython {
        let real = common::env_for(fakejvm::pyenv::DEFAULT_PYSPARK).python;
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("python-ran");
        let script = dir.path().join("python");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ntouch '{}'\nexec '{}' \"$@\"\n",
                marker.display(),
                real.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        MarkingPython {
            _dir: dir,
            script,
            marker,
        }
    }

    fn ran(&self) -> bool {
        self.marker.exists()
    }
}

/// Each scenario text in `cases` (what it shows, text, then what the one line must contain) is
/// refused by `fakejvm run` with exit 2 and one line naming the file and holding every wanted
/// text, and no Python ran for any of them. `python` is returned so a caller can go on with it.
fn assert_refused_before_python(
    stem: &str,
    cases: &[(String, String, Vec<&str>)],
) -> MarkingPython {
    let python = MarkingPython::new();
    let d = tempfile::tempdir().unwrap();
    for (i, (what, text, wanted)) in cases.iter().enumerate() {
        let f = scenario_file(d.path(), &format!("{stem}{i}.json"), text);
        let file = f.display().to_string();
        let mut all = vec![file.as_str()];
        all.extend(wanted.iter().copied());
        let line = assert_one_line(
            &[
                "run",
                "--python",
                python.script.to_str().unwrap(),
                f.to_str().unwrap(),
            ],
            2,
            &all,
        );
        assert!(!python.ran(), "{what}: a Python ran before {line}");
    }
    python
}

const GOOD: &str = r#"{"tasks":[{"function":"func = lambda s, it: it","input":{"encoding":"pickle","values":[1]},"expect":{"values":[1]}}]}"#;

/// One task around `task_fields` (JSON object members without the braces).
fn one_task(task_fields: &str) -> String {
    format!(r#"{{"tasks":[{{"function":"func = lambda s, it: it",{task_fields}}}]}}"#)
}

/// A bad value in each scenario field: exit 2, one line naming the file and the field's path,
/// and no Python ran.
#[test]
fn a_bad_value_in_any_field_is_one_line_naming_file_and_field_before_any_python_runs() {
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "input $int",
            one_task(
                r#""input":{"encoding":"pickle","values":[1,2,{"$int":"abc"}]},"expect":{"values":[1]}"#,
            ),
            "tasks[0].input.values[2]",
            "not a decimal integer",
        ),
        (
            "input $tuple",
            one_task(
                r#""input":{"encoding":"pickle_batched","batch_size":2,"values":[{"$tuple":5}]},"expect":{"outcome":"Passed"}"#,
            ),
            "tasks[0].input.values[0]",
            "$tuple",
        ),
        (
            "input unknown tag",
            one_task(
                r#""input":{"encoding":"auto_batched","values":[[{"$tupel":[1]}]]},"expect":{"outcome":"Passed"}"#,
            ),
            "tasks[0].input.values[0]",
            "$tupel",
        ),
        (
            "hex frame",
            one_task(
                r#""input":{"encoding":"raw","frames":[{"int":-5},{"hex":"zz"}]},"expect":{"outcome":"Passed"}"#,
            ),
            "tasks[0].input.frames[1].hex",
            "not hex",
        ),
        (
            "bytes frame",
            one_task(
                r#""input":{"encoding":"raw","frames":[{"bytes":"abc"}]},"expect":{"outcome":"Passed"}"#,
            ),
            "tasks[0].input.frames[0].bytes",
            "not hex",
        ),
        (
            "range",
            one_task(
                r#""input":{"encoding":"pickle","range":[10,0]},"expect":{"outcome":"Passed"}"#,
            ),
            "tasks[0].input.range",
            "starts after it ends",
        ),
        (
            "broadcast value",
            one_task(r#""broadcasts":[{"id":1,"value":{"$bytes":"xyz"}}],"expect":{"values":[]}"#),
            "tasks[0].broadcasts[0].value",
            "$bytes",
        ),
        (
            "broadcast id",
            one_task(r#""broadcasts":[{"id":-2,"value":1}],"expect":{"values":[]}"#),
            "tasks[0].broadcasts[0].id",
            "negative",
        ),
        (
            "expect values",
            one_task(r#""expect":{"values":[{"$tuple":[1,{"$float":"big"}]}]}"#),
            "tasks[0].expect.values[0]",
            "\"big\"",
        ),
        (
            "expect_by_version values",
            one_task(
                r#""expect":{"values":[]},"expect_by_version":[{"pyspark":">=4.1","note":"n","expect":{"values":[{"$set":5}]}}]"#,
            ),
            "tasks[0].expect_by_version[0].expect.values[0]",
            "$set",
        ),
        (
            "expect_by_version version",
            one_task(
                r#""expect":{"values":[]},"expect_by_version":[{"pyspark":"four","note":"n","expect":{"values":[]}}]"#,
            ),
            "tasks[0].expect_by_version[0].pyspark",
            "four",
        ),
        (
            "expect_by_version two expectations",
            one_task(
                r#""expect":{"values":[]},"expect_by_version":[{"pyspark":"<4.2","note":"n","expect":{"values":[],"outcome":"Hang"}}]"#,
            ),
            "tasks[0].expect_by_version[0].expect",
            "exactly one",
        ),
        (
            "outcome name",
            one_task(r#""expect":{"outcome":"Hangs"}"#),
            "tasks[0].expect.outcome",
            "Hangs",
        ),
        (
            "expect exit without a crash",
            one_task(r#""expect":{"outcome":"Hang","exit":{"code":3}}"#),
            "tasks[0].expect.exit",
            "WorkerCrashed",
        ),
        (
            "unknown task field",
            one_task(r#""inptu":{},"expect":{"values":[]}"#),
            "tasks[0]",
            "inptu",
        ),
        (
            "unknown top-level field",
            GOOD.replace(r#"{"tasks""#, r#"{"taks":[],"tasks""#),
            "taks",
            "unknown field",
        ),
        (
            "output_of a later task",
            one_task(r#""input":{"encoding":"output_of","task":0},"expect":{"values":[]}"#),
            "tasks[0].input.task",
            "earlier task",
        ),
        (
            "file name",
            one_task(r#""files":{"../x.py":"x = 1"},"expect":{"values":[]}"#),
            "tasks[0].files",
            "../x.py",
        ),
        (
            "expect $global name",
            one_task(r#""expect":{"values":[{"$global":"len"}]}"#),
            "tasks[0].expect.values[0] (at /$global)",
            "is not module.Name",
        ),
        (
            "expect $global key",
            one_task(r#""expect":{"values":[{"$global":"m.P","args":[],"stat":1}]}"#),
            "tasks[0].expect.values[0] (at /stat)",
            "unknown key \"stat\"",
        ),
        (
            "expect frames hex",
            one_task(r#""expect":{"frames":{"data":[{"hex":"zz"}]}}"#),
            "tasks[0].expect.frames.data[0].hex",
            "is not hex",
        ),
        (
            "expect frames empty",
            one_task(r#""expect":{"frames":{}}"#),
            "tasks[0].expect.frames",
            "give `count`",
        ),
        (
            "expect frames count and data",
            one_task(
                r#""expect":{"values":[]},"expect_by_version":[{"pyspark":">=4.1","note":"n","expect":{"frames":{"count":2,"data":[null]}}}]"#,
            ),
            "tasks[0].expect_by_version[0].expect.frames",
            "`count` is 2 but `data` lists 1",
        ),
        (
            "expect frames with outcome",
            one_task(r#""expect":{"outcome":"Passed","frames":{"count":1}}"#),
            "tasks[0].expect",
            "not with `exception` or `outcome`",
        ),
        (
            "expect frames unknown field",
            one_task(r#""expect":{"frames":{"counts":1}}"#),
            "tasks[0].expect.frames.counts",
            "unknown field",
        ),
    ];
    let cases: Vec<_> = cases
        .into_iter()
        .map(|(what, text, field, problem)| (what.to_string(), text, vec![field, problem]))
        .collect();
    let python = assert_refused_before_python("bad", &cases);
    let d = tempfile::tempdir().unwrap();
    // The same interpreter does run for a good file: the check above can fail.
    let f = scenario_file(d.path(), "good.json", GOOD);
    fakejvm()
        .args(["run", "--python", python.script.to_str().unwrap()])
        .arg(&f)
        .assert()
        .code(0);
    assert!(python.ran(), "the marking interpreter never ran");
}

#[test]
fn truncated_scenario_is_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let f = scenario_file(d.path(), "cut.json", &GOOD[..GOOD.len() / 2]);
    assert_bad_input(&["run", f.to_str().unwrap()], "cut.json", "truncated");
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
        "not found",
    );
}

#[test]
fn a_bad_pyspark_version_is_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let f = scenario_file(d.path(), "good.json", GOOD);
    assert_bad_input(
        &["run", "--pyspark", "four", f.to_str().unwrap()],
        "\"four\"",
        "not a pyspark version",
    );
    assert_bad_input(
        &["env", "setup", "--pyspark", "4.0.5; rm -rf /"],
        "4.0.5; rm -rf /",
        "not a pyspark version",
    );
}

#[test]
fn wrong_flags_are_one_line_and_exit_2() {
    assert_bad_input(
        &["run", "--no-such-flag", "x.json"],
        "--no-such-flag",
        "unexpected argument",
    );
    assert_bad_input(&["fuzz", "--duration", "5y"], "--duration", "unknown unit");
    assert_bad_input(&["fuzz", "--jobs", "0"], "--jobs 0", "at least one");
    assert_bad_input(
        &["repro", "x.json", "--runs", "0"],
        "--runs 0",
        "at least one",
    );
    assert_bad_input(&["run"], "<PATHS>", "required");
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

/// A report fakejvm cannot write after a passing run is its own failure: exit 3, one line.
#[test]
fn an_unwritable_report_is_a_harness_error_exit_3() {
    let _ = common::lean_env_for(fakejvm::pyenv::DEFAULT_PYSPARK);
    let d = tempfile::tempdir().unwrap();
    let f = scenario_file(d.path(), "good.json", GOOD);
    let out = fakejvm()
        .args(["run", "--json", "/proc/x/report.json"])
        .arg(&f)
        .assert()
        .code(3)
        .get_output()
        .clone();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("1 passed"),
        "the run itself passed: {stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("fakejvm: cannot write the JSON report /proc/x/report.json"),
        "{stderr}"
    );
}

#[test]
fn bundled_core_scenarios_pass_from_the_command_line() {
    let root = common::repo_root();
    let _ = common::lean_env_for(fakejvm::pyenv::DEFAULT_PYSPARK);
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
    let _ = common::lean_env_for(fakejvm::pyenv::DEFAULT_PYSPARK);
    let d = tempfile::tempdir().unwrap();
    let f = scenario_file(
        d.path(),
        "syntax.json",
        &GOOD.replace("func = lambda s, it: it", "func = lambda s, it: (("),
    );
    assert_bad_input(&["run", f.to_str().unwrap()], "syntax.json", "SyntaxError");
}

/// A scenario with one UDF task: `udf` and `expect` are JSON objects.
fn udf_task(udf: &str, expect: &str) -> String {
    format!(r#"{{"tasks":[{{"udf":{udf},"expect":{expect}}}]}}"#)
}

const ROWS: &str = r#"{"rows":[[1.0]]}"#;

/// Issue 11: a bad value in each field of the UDF task form is exit 2, one line naming the file
/// and the field, before any Python runs (no glue, no probe, no worker).
#[test]
fn a_bad_value_in_any_udf_field_is_one_line_before_any_python_runs() {
    let scalar = |fields: &str| {
        format!(
            r#"{{"eval_type":"SQL_SCALAR_PANDAS_UDF","udfs":[{{"function":"func = lambda v: v","return_type":"double"}}],{fields}}}"#
        )
    };
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "unknown eval type",
            udf_task(
                r#"{"eval_type":"SQL_SCALAR_PANDAZ_UDF","udfs":[],"input":{"schema":"v double","rows":[]}}"#,
                ROWS,
            ),
            "tasks[0].udf.eval_type",
            "unknown eval type",
        ),
        (
            "return type",
            udf_task(
                r#"{"eval_type":"SQL_BATCHED_UDF","udfs":[{"function":"func = abs","return_type":"array<dubble>"}],"input":{"schema":"v double","rows":[]}}"#,
                ROWS,
            ),
            "tasks[0].udf.udfs[0].return_type",
            "does not parse",
        ),
        (
            "schema",
            udf_task(
                &scalar(r#""input":{"schema":"v double,,","rows":[]}"#),
                ROWS,
            ),
            "tasks[0].udf.input.schema",
            "does not parse",
        ),
        (
            "a row of the wrong width",
            udf_task(
                &scalar(r#""input":{"schema":"v double","rows":[[1.0],[1.0,2.0]]}"#),
                ROWS,
            ),
            "tasks[0].udf.input.rows[1]",
            "2 values, but the schema has 1 columns",
        ),
        (
            "a value of the wrong type",
            udf_task(
                &scalar(r#""input":{"schema":"v double","rows":[["one"]]}"#),
                ROWS,
            ),
            "tasks[0].udf.input.rows: column v (double)",
            "\"one\"",
        ),
        (
            "a grouped kind without groups",
            udf_task(
                r#"{"eval_type":"SQL_GROUPED_AGG_PANDAS_UDF","udfs":[{"function":"func = lambda v: v.mean()","return_type":"double"}],"input":{"schema":"v double","rows":[[1.0]]}}"#,
                ROWS,
            ),
            "tasks[0].udf.input.rows",
            "takes `groups`",
        ),
        (
            "a kind newer than 3.5 without requires",
            udf_task(
                r#"{"eval_type":"SQL_SCALAR_ARROW_UDF","udfs":[{"function":"func = lambda a: a","return_type":"double"}],"input":{"schema":"v double","rows":[]}}"#,
                ROWS,
            ),
            "tasks[0].udf.eval_type",
            "add \"requires\": \">=4.1\"",
        ),
        (
            "a stateful kind",
            udf_task(
                r#"{"eval_type":"SQL_GROUPED_MAP_PANDAS_UDF_WITH_STATE","udfs":[{"function":"func = abs","return_type":"v double"}],"input":{"schema":"v double","groups":[]}}"#,
                ROWS,
            ),
            "tasks[0].udf.eval_type",
            "keeps state",
        ),
        (
            "values expected of a UDF",
            udf_task(
                &scalar(r#""input":{"schema":"v double","rows":[]}"#),
                r#"{"values":[1.0]}"#,
            ),
            "tasks[0].expect.values",
            "expect `rows`",
        ),
        (
            "an offset past the columns",
            udf_task(
                r#"{"eval_type":"SQL_BATCHED_UDF","udfs":[{"function":"func = abs","return_type":"double","args":[3]}],"input":{"schema":"v double","rows":[]}}"#,
                ROWS,
            ),
            "tasks[0].udf.udfs[0].args[0]",
            "offset 3",
        ),
        (
            "a window UDF without its bound",
            udf_task(
                r#"{"eval_type":"SQL_WINDOW_AGG_PANDAS_UDF","udfs":[{"function":"func = lambda v: v.mean()","return_type":"double"}],"input":{"schema":"v double","groups":[]}}"#,
                ROWS,
            ),
            "tasks[0].udf.udfs[0].window",
            "bounded",
        ),
        (
            "framing of an unknown line",
            udf_task(
                &scalar(r#""input":{"schema":"v double","rows":[]},"framing_of":"3.9""#),
                ROWS,
            ),
            "tasks[0].udf.framing_of",
            "\"3.9\"",
        ),
        (
            "a UDTF kind without its handler",
            udf_task(
                r#"{"eval_type":"SQL_TABLE_UDF","udfs":[{"function":"func = abs","return_type":"double"}],"input":{"schema":"v double","rows":[]}}"#,
                ROWS,
            ),
            "tasks[0].udf.udtf",
            "give `udtf`",
        ),
        (
            "an unknown field",
            udf_task(
                &scalar(r#""input":{"schema":"v double","rows":[]},"conff":{}"#),
                ROWS,
            ),
            "tasks[0].udf",
            "conff",
        ),
        (
            "expected rows that are not lists",
            udf_task(
                &scalar(r#""input":{"schema":"v double","rows":[]}"#),
                r#"{"rows":[1.0]}"#,
            ),
            "tasks[0].expect.rows[0]",
            "a list of column values",
        ),
    ];
    let cases: Vec<_> = cases
        .into_iter()
        .map(|(what, text, field, problem)| (what.to_string(), text, vec![field, problem]))
        .collect();
    assert_refused_before_python("badudf", &cases);
}

/// A kind the target version lacks, in a scenario whose `requires` lets it run there: bad input
/// (exit 2), found before any worker starts.
#[test]
fn a_udf_kind_the_version_lacks_is_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let f = scenario_file(
        d.path(),
        "too_new.json",
        r#"{"requires":">=3.5","tasks":[{"udf":{"eval_type":"SQL_SCALAR_ARROW_UDF","udfs":[{"function":"func = lambda a: a","return_type":"double"}],"input":{"schema":"v double","rows":[[1.0]]}},"expect":{"rows":[[1.0]]}}]}"#,
    );
    assert_one_line(
        &["run", "--pyspark", "4.0.5", f.to_str().unwrap()],
        2,
        &[
            "too_new.json",
            "tasks[0].udf.eval_type",
            "exists from pyspark 4.1",
        ],
    );
}

/// A 3.5 SQL_BATCHED_UDF request over `((1.0,), (2.0,))`: the function pickle is a stand-in (decode
/// never unpickles it), the rest is the layout's own encoding.
fn udf_request_35(dir: &Path) -> PathBuf {
    use fakejvm::pickle::{dumps, Value};
    use fakejvm::protocol::{DataItem, Dialect, EvalType, Udf, UdfCommand, UdfLayout};
    let rows = Value::Tuple(vec![
        Value::Tuple(vec![Value::Float(1.0)]),
        Value::Tuple(vec![Value::Float(2.0)]),
    ]);
    let cmd = UdfCommand::udfs(
        UdfLayout::Pyspark35,
        vec![Udf::simple(&[0], vec![0x80, 5, b'N', b'.'])],
    );
    let mut req = cmd.place("3.11", EvalType::SqlBatchedUdf, vec![]);
    req.data = vec![DataItem::Frame(dumps(&rows))];
    req.end_of_data = true;
    let p = dir.join("udf35.request.bin");
    std::fs::write(&p, Dialect::A.encode_request(&req).bytes).unwrap();
    p
}

#[test]
fn decode_reads_a_udf_command_as_the_named_pyspark_line() {
    let d = tempfile::tempdir().unwrap();
    let f = udf_request_35(d.path());
    let f = f.to_str().unwrap();
    for v in ["3.5", "3.5.9"] {
        fakejvm()
            .args(["decode", f, "--pyspark", v, "--direction", "request"])
            .assert()
            .code(0)
            .stdout(predicate::str::contains(
                "SQL_BATCHED_UDF (100) as pyspark 3.5",
            ))
            .stdout(predicate::str::contains("udf 0: args [0]"))
            .stdout(predicate::str::contains("2 pickled row(s) [[1.0],[2.0]]"))
            .stdout(predicate::str::contains("END_OF_DATA_SECTION (-1)"));
    }
    // Family A alone reads the section as 4.0's (a profiling flag first): 3.5's bytes do not fit.
    assert_bad_input(
        &["decode", f, "--dialect", "A", "--direction", "request"],
        "udf35.request.bin",
        "pyspark 4.0",
    );
}

#[test]
fn decode_with_a_bad_pyspark_value_is_one_line_exit_2() {
    let d = tempfile::tempdir().unwrap();
    let f = udf_request_35(d.path());
    let f = f.to_str().unwrap();
    for (value, problem) in [
        ("four", "not a pyspark version"),
        ("4", "not a pyspark version"),
        ("4.0.5.1", "not a pyspark version"),
        ("3.4.1", "from 3.5 on"),
    ] {
        assert_one_line(
            &["decode", f, "--pyspark", value, "--direction", "request"],
            2,
            &["--pyspark", problem],
        );
    }
    assert_one_line(
        &["decode", f, "--direction", "request"],
        2,
        &["--dialect", "--pyspark"],
    );
    assert_one_line(
        &[
            "decode",
            f,
            "--pyspark",
            "3.5",
            "--dialect",
            "A",
            "--direction",
            "request",
        ],
        2,
        &["--dialect", "--pyspark"],
    );
}

/// A stream a real Spark 3.5.9 JVM sent (golden/): decode with --pyspark shows the UDF by name,
/// its arguments, function pickle and return type, the runner conf, and the Arrow input and
/// output as schemas and rows, to the end.
#[test]
fn decode_shows_a_recorded_grouped_agg_udf_request_and_reply_as_rows() {
    let dir = common::repo_root().join("golden/pyspark-3.5.9/udf_grouped_agg_mean");
    let ix = fakejvm::golden::Golden::load(&dir).unwrap().index;
    let decoded: Vec<(String, String)> = ix
        .connections
        .iter()
        .map(|c| {
            let run = |file: &str, direction: &str| {
                let out = fakejvm()
                    .args(["decode", "--pyspark", "3.5.9", "--direction", direction])
                    .arg(dir.join(file))
                    .assert()
                    .code(0)
                    .get_output()
                    .clone();
                String::from_utf8(out.stdout).unwrap()
            };
            (run(&c.request, "request"), run(&c.reply, "reply"))
        })
        .collect();
    let (request, reply) = decoded
        .iter()
        .find(|(q, _)| q.contains("SQL_GROUPED_AGG_PANDAS_UDF (202) as pyspark 3.5"))
        .expect("a 202 task in the golden");
    for want in [
        "udf 0: args [0]",
        "(func, return type); types DoubleType",
        "runner_conf [(\"spark.sql.session.timeZone\", \"UTC\")",
        // 3.5: one stream, one batch per group.
        "Arrow stream: _0: double; 2 batch(es), 5 row(s)",
        "batch 1 row 2: [10.0]",
        "final int -4 (END_OF_STREAM)",
    ] {
        assert!(request.contains(want), "{want:?} not in:\n{request}");
    }
    for want in [
        "START_ARROW_STREAM (-6) + ",
        "batch 0 row 0: [1.5]",
        "batch 1 row 0: [6.0]",
    ] {
        assert!(reply.contains(want), "{want:?} not in:\n{reply}");
    }
}

/// Issue 13: bad values in the launch fields (worker and daemon modules, launch-time files,
/// stderr expectations, Python-version conditions) are exit 2, one line naming the field,
/// before any Python runs.
#[test]
fn a_bad_value_in_any_launch_field_is_one_line_before_any_python_runs() {
    let task = r#"{"function":"func = lambda s, it: it","expect":{"values":[]}}"#;
    let with = |fields: &str| format!(r#"{{{fields},"tasks":[{task}]}}"#);
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "worker module",
            with(r#""worker_module":"my-worker""#),
            "worker_module",
            "not a Python module name",
        ),
        (
            "daemon module in direct mode",
            with(r#""mode":"direct","daemon_module":"my_daemon""#),
            "daemon_module",
            "starts no daemon",
        ),
        (
            "launch file outside its folder",
            with(r#""launch_files":{"../evil.py":"x = 1"}"#),
            "launch_files",
            "without `..`",
        ),
        (
            "empty stderr text",
            with(r#""expect_stderr":{"contains":[""]}"#),
            "expect_stderr.contains",
            "matches anything",
        ),
        (
            "faulthandler for the whole scenario",
            with(r#""expect_stderr":{"faulthandler_contains":"Segmentation"}"#),
            "expect_stderr.faulthandler_contains",
            "one worker",
        ),
        (
            "requires with an unknown key",
            with(r#""requires":{"pyspark":">=4.0","jvm":"17"}"#),
            "requires",
            "unknown field `jvm`",
        ),
        (
            "python requirement",
            with(r#""requires":{"python":"three"}"#),
            "requires",
            "bad version requirement",
        ),
        (
            "expect_by_version without a version",
            r#"{"tasks":[{"function":"func = lambda s, it: it","expect":{"values":[]},"expect_by_version":[{"expect":{"values":[]},"note":"x"}]}]}"#.to_string(),
            "tasks[0].expect_by_version[0]",
            "`pyspark`, `python` and/or `module`",
        ),
    ];
    let cases: Vec<_> = cases
        .into_iter()
        .map(|(what, text, field, problem)| (what.to_string(), text, vec![field, problem]))
        .collect();
    assert_refused_before_python("badlaunch", &cases);
}

/// Issue 13 part 2: bad values in the worker-module fields (`worker_module.each_in` and
/// `except`, a task's raw `request`, `expect_by_version[].module`) are exit 2, one line naming
/// the field, before any Python runs.
#[test]
fn a_bad_value_in_any_worker_module_field_is_one_line_before_any_python_runs() {
    let raw = |task: &str| format!(r#"{{"mode":"direct","tasks":[{task}]}}"#);
    let each = |wm: &str| {
        format!(
            r#"{{"mode":"direct","worker_module":{wm},"tasks":[{{"request":{{"frames":[{{"text":"0.0"}}]}},"expect":{{"outcome":"PythonException"}}}}]}}"#
        )
    };
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "each_in not a module name",
            each(r#"{"each_in":"pyspark-x"}"#),
            "worker_module",
            "not a Python module name",
        ),
        (
            "each_in with an unknown key",
            each(r#"{"each_in":"pyspark","only":["x"]}"#),
            "worker_module",
            "unknown field `only`",
        ),
        (
            "except without each_in",
            each(r#"{"except":["pyspark.worker"]}"#),
            "worker_module",
            "give `each_in`",
        ),
        (
            "except outside each_in",
            each(r#"{"each_in":"pyspark.sql.worker","except":["pyspark.worker"]}"#),
            "except[0]",
            "is not inside",
        ),
        (
            "except not a pattern",
            each(r#"{"each_in":"pyspark","except":["pyspark.*.worker"]}"#),
            "except[0]",
            "`package.*` pattern",
        ),
        (
            "a raw request with a function",
            raw(r#"{"function":"func = lambda s, it: it","request":{"frames":[]},"expect":{"outcome":"Hang"}}"#),
            "tasks[0].request",
            "no `function` or `udf`",
        ),
        (
            "a raw request with an input",
            raw(r#"{"request":{"frames":[{"int":1}]},"input":{"encoding":"pickle","values":[1]},"expect":{"outcome":"Hang"}}"#),
            "tasks[0].input",
            "remove `input`",
        ),
        (
            "a raw frame that is not hex",
            raw(r#"{"request":{"frames":[{"hex":"zz"}]},"expect":{"outcome":"Hang"}}"#),
            "tasks[0].request.frames[0].hex",
            "is not hex",
        ),
        (
            "an unknown end of a raw request",
            raw(r#"{"request":{"frames":[{"int":1}],"then":"close"},"expect":{"outcome":"Hang"}}"#),
            "tasks[0].request.then",
            "unknown variant `close`",
        ),
        (
            "a raw request that sends and waits for nothing",
            raw(r#"{"request":{"frames":[]},"expect":{"outcome":"Hang"}}"#),
            "tasks[0].request",
            "sends nothing",
        ),
        (
            "output values from a raw request",
            raw(r#"{"request":{"frames":[{"int":1}]},"expect":{"values":[1]}}"#),
            "tasks[0].expect",
            "not decoded as output",
        ),
        (
            "an exit status pinned on a daemon's worker",
            r#"{"tasks":[{"request":{"frames":[{"text":"0.0"}]},"expect":{"outcome":"PythonException","exit":{"code":255}}}]}"#.to_string(),
            "tasks[0].expect.exit",
            "exit status is unknown",
        ),
        (
            "a fault outside a raw request's frames",
            r#"{"mode":"direct","faults":[{"kind":"delay","ms":10,"at":{"after":"header"}}],"tasks":[{"request":{"frames":[{"int":1}]},"expect":{"outcome":"Hang"}}]}"#.to_string(),
            "fault #0",
            "name one of its frames",
        ),
        (
            "expect_by_version with a bad module pattern",
            raw(r#"{"request":{"frames":[{"int":1}]},"expect":{"outcome":"Hang"},"expect_by_version":[{"module":"pyspark.sql.","expect":{"outcome":"Hang"},"note":"x"}]}"#),
            "tasks[0].expect_by_version[0].module",
            "not a module name",
        ),
    ];
    let cases: Vec<_> = cases
        .into_iter()
        .map(|(what, text, field, problem)| (what.to_string(), text, vec![field, problem]))
        .collect();
    assert_refused_before_python("badmodules", &cases);
}

/// `each_in` names a package of the installed pyspark: one this version lacks, or one without a
/// worker module, is exit 2 and one line, before any worker starts.
#[test]
fn an_each_in_package_this_pyspark_lacks_is_bad_input() {
    let d = tempfile::tempdir().unwrap();
    for (stem, package, problem) in [
        (
            "lacks",
            "pyspark.no_such_package",
            "has no package or module",
        ),
        ("none", "pyspark.sql.types", "has no worker module under"),
    ] {
        let text = format!(
            r#"{{"mode":"direct","worker_module":{{"each_in":"{package}"}},"tasks":[{{"request":{{"frames":[{{"text":"0.0"}}]}},"expect":{{"outcome":"PythonException"}}}}]}}"#
        );
        let f = scenario_file(d.path(), &format!("{stem}.json"), &text);
        assert_one_line(
            &["run", "--pyspark", "4.0.5", f.to_str().unwrap()],
            2,
            &[
                f.to_str().unwrap(),
                "worker_module.each_in",
                "pyspark 4.0.5",
                problem,
            ],
        );
    }
}

/// A scenario with launch-time files and a custom worker module holds no absolute path: it runs
/// from any working directory.
#[test]
fn launch_files_and_worker_modules_run_from_any_directory() {
    let elsewhere = tempfile::tempdir().unwrap();
    let file = common::repo_root().join("scenarios/lifecycle/module_worker_wrapper.json");
    fakejvm()
        .current_dir(elsewhere.path())
        .args(["run", "--pyspark", "4.1.4"])
        .arg(&file)
        .assert()
        .code(0)
        .stdout(predicate::str::contains("1 passed, 0 failed"));
}

/// The lifecycle fields (issue 13 parts 4-6): every bad value of `syscall_fail`,
/// `open_descriptors`, `rlimit_nofile`, `stop_child` and `connect_timeout_ms` is one line naming
/// the file and the problem, exit 2, before any Python runs.
#[test]
fn a_bad_value_in_any_lifecycle_field_is_one_line_before_any_python_runs() {
    let task = r#"{"function": "func = lambda s, it: it", "expect": {"outcome": "Passed"}}"#;
    let with = |top: &str| format!(r#"{{{top}, "tasks": [{task}, {task}]}}"#);
    let fault = |f: &str| with(&format!(r#""faults": [{f}]"#));
    let cases: Vec<(String, &str)> = vec![
        (
            fault(
                r#"{"kind": "syscall_fail", "call": "sendd", "errno": "EPIPE", "schedule": {"nth": [1]}}"#,
            ),
            "unknown variant `sendd`",
        ),
        (
            fault(
                r#"{"kind": "syscall_fail", "process": "driver", "call": "send", "errno": "EPIPE", "schedule": {"nth": [1]}}"#,
            ),
            "unknown variant `driver`",
        ),
        (
            fault(
                r#"{"kind": "syscall_fail", "call": "send", "errno": "EPIPEE", "schedule": {"nth": [1]}}"#,
            ),
            "unknown errno \"EPIPEE\"",
        ),
        (
            fault(
                r#"{"kind": "syscall_fail", "call": "send", "errno": "EPIPE", "schedule": {"nth": [0]}}"#,
            ),
            "counting from 1",
        ),
        (
            fault(
                r#"{"kind": "syscall_fail", "call": "send", "errno": "EPIPE", "schedule": {"after_bytes": -3}}"#,
            ),
            "after_bytes",
        ),
        (
            fault(
                r#"{"kind": "syscall_fail", "call": "send", "errno": "EPIPE", "schedule": {"probability": 2}}"#,
            ),
            "`probability` is in 0..=1",
        ),
        (
            fault(
                r#"{"kind": "syscall_fail", "call": "close", "errno": "EIO", "schedule": {"after_bytes": 10}}"#,
            ),
            "needs a call that moves bytes",
        ),
        (
            fault(
                r#"{"kind": "syscall_fail", "call": "recv", "errno": "EINTR", "schedule": "every"}"#,
            ),
            "PEP 475",
        ),
        (
            fault(
                r#"{"kind": "syscall_fail", "call": "accept", "errno": "EMFILE", "schedule": {"nth": [1]}}"#,
            ),
            "accept, select and poll are the daemon's",
        ),
        (
            with(
                r#""mode": "direct", "faults": [{"kind": "syscall_fail", "process": "daemon", "call": "poll", "errno": "EMFILE", "schedule": {"nth": [1]}}]"#,
            ),
            "needs a daemon",
        ),
        (
            fault(
                r#"{"kind": "syscall_fail", "process": "daemon", "call": "poll", "errno": "EMFILE", "schedule": {"nth": [1]}, "expect": {"worker": "gone"}}"#,
            ),
            "`expect.worker` applies to",
        ),
        (
            fault(
                r#"{"kind": "syscall_fail", "task": 2, "call": "send", "errno": "EPIPE", "schedule": {"nth": [3]}}"#,
            ),
            "task 2 does not exist (the scenario has 2 task(s)",
        ),
        (
            fault(
                r#"{"kind": "syscall_fail", "task": 0, "process": "daemon", "call": "accept", "errno": "EMFILE", "schedule": {"nth": [1]}}"#,
            ),
            "`task` picks a task's worker",
        ),
        (
            fault(
                r#"{"kind": "syscall_fail", "task": "first", "call": "send", "errno": "EPIPE", "schedule": {"nth": [3]}}"#,
            ),
            "invalid type",
        ),
        (
            fault(
                r#"{"kind": "syscall_fail", "call": "recv", "errno": "EINTR", "schedule": {"after_bytes": 68, "times": 0}}"#,
            ),
            "with at most `times` (how many calls fail from there, 1 or more)",
        ),
        (
            fault(
                r#"{"kind": "syscall_fail", "call": "recv", "errno": "EINTR", "schedule": {"after_bytes": 68, "time": 1}}"#,
            ),
            "with at most `times`",
        ),
        (
            fault(
                r#"{"kind": "syscall_fail", "call": "recv", "errno": "EINTR", "schedule": {"after_bytes": 68}}"#,
            ),
            "PEP 475",
        ),
        (
            fault(r#"{"kind": "open_descriptors", "count": 2}"#),
            "outside 4..=65536",
        ),
        (
            fault(r#"{"kind": "open_descriptors", "count": -1}"#),
            "invalid value",
        ),
        (
            fault(r#"{"kind": "rlimit_nofile", "limit": 0}"#),
            "leaves no descriptor",
        ),
        (
            fault(
                r#"{"kind": "open_descriptors", "count": 1100}, {"kind": "rlimit_nofile", "limit": 64}"#,
            ),
            "is not above open_descriptors' 1100",
        ),
        (
            fault(r#"{"kind": "stop_child", "fork": 0}"#),
            "counts the daemon's forks from 1",
        ),
        (
            fault(r#"{"kind": "stop_child", "stall_ms": 0}"#),
            "`stall_ms` 0 holds nothing",
        ),
        (
            fault(r#"{"kind": "stop_child", "how": "stop"}"#),
            "unknown field `how`",
        ),
        (
            with(r#""mode": "direct", "faults": [{"kind": "stop_child"}]"#),
            "needs a daemon",
        ),
        (with(r#""connect_timeout_ms": 0"#), "connect_timeout_ms: 0"),
        (
            with(r#""connect_timeout_ms": "soon""#),
            "connect_timeout_ms",
        ),
    ];
    let cases: Vec<_> = cases
        .into_iter()
        .enumerate()
        .map(|(i, (text, problem))| (format!("case {i}"), text, vec![problem]))
        .collect();
    assert_refused_before_python("lifecycle", &cases);
}

/// Issue 13 part 9: every bad value of a task's `expect_resources` is one line naming the file
/// and the field, exit 2, before any Python runs.
#[test]
fn a_bad_expect_resources_is_one_line_before_any_python_runs() {
    let with = |fields: &str| one_task(&format!(r#""expect":{{"outcome":"Passed"}},{fields}"#));
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            with(r#""expect_resources":{}"#),
            vec!["tasks[0].expect_resources", "empty"],
        ),
        (
            with(r#""expect_resources":{"max_procs":0}"#),
            vec!["tasks[0].expect_resources", "unknown field `max_procs`"],
        ),
        (
            with(r#""expect_resources":{"max_processes":-1}"#),
            vec!["tasks[0].expect_resources.max_processes", "invalid value"],
        ),
        (
            with(r#""expect_resources":{"max_rss_mib":"lots"}"#),
            vec!["tasks[0].expect_resources.max_rss_mib", "invalid type"],
        ),
        (
            with(r#""expect_resources":{"max_rss_mib":0}"#),
            vec!["tasks[0].expect_resources.max_rss_mib", "0 MiB"],
        ),
        (
            with(r#""expect_resources":{"max_threads":0}"#),
            vec!["tasks[0].expect_resources.max_threads", "main thread"],
        ),
        (
            one_task(r#""expect":{"outcome":"ResourceExceeded"}"#),
            vec![
                "tasks[0].expect.outcome",
                "needs the task's `expect_resources`",
            ],
        ),
    ];
    let cases: Vec<_> = cases
        .into_iter()
        .enumerate()
        .map(|(i, (text, wanted))| (format!("case {i}"), text, wanted))
        .collect();
    assert_refused_before_python("resources", &cases);
}

/// A golden's request carries the driver's Python, which the worker compares with its own: on
/// another CPython minor every golden is N/A with the reason (not a failure), and no env is
/// built for it.
#[test]
fn goldens_on_another_python_minor_are_not_applicable_with_the_reason() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../golden/pyspark-4.3.0");
    let out = fakejvm()
        .args([
            "replay",
            golden.to_str().unwrap(),
            "--python-version",
            "3.12",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = text.lines().last().unwrap_or_default();
    assert!(last.starts_with("0 passed, 0 blessed, 0 failed,"), "{text}");
    assert!(
        text.contains("recorded with Python 3.11") && text.contains("is Python 3.12"),
        "{text}"
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("provisioning"));
}
