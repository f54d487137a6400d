//! Every README command as a user runs it: the real `fakejvm` binary, and its whole transcript
//! (exit code, stdout, stderr) compared with the text below, volatile parts redacted. After a
//! deliberate change of output, refresh the snapshots with
//! `SNAPSHOTS=overwrite cargo test -p fakejvm --test transcripts` and read the diff.
//!
//! Exit codes: 0 pass, 1 a failure found, 2 bad input, 3 fakejvm's own failure.

mod common;

use common::{env_for, repo_root};
use fakejvm::fuzz::case::Case;
use fakejvm::fuzz::reproducer::Reproducer;
use fakejvm::golden::format::Golden;
use fakejvm::protocol::{decode_replies, ReplyItem, Span, SpanKind};
use fakejvm::pyenv;
use snapbox::cmd::Command;
use snapbox::{str, Assert, Redactions};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The binary, run from the repository root (so paths print as a user types them) with the
/// environment it would see: FAKEJVM_CACHE_DIR and FAKEJVM_BASE_PYTHON pass through, an
/// inherited FAKEJVM_PYTHON does not (it would override the env under test).
///
/// Redacted: `[MS]` durations, `[PID]` pids, `[ROOT]` this checkout, `[TMP]` the test's temp
/// dir, `[CACHE]` the env cache dir, `[MIB]` and `[THREADS]` what a task's worker used.
fn fakejvm(tmp: &Path) -> Command {
    fakejvm_with(redactions(tmp))
}

fn fakejvm_with(redactions: Redactions) -> Command {
    Command::new(snapbox::cmd::cargo_bin!("fakejvm"))
        .current_dir(repo_root())
        .env_remove("FAKEJVM_PYTHON")
        // A limit, not a timing assertion: only a hung run gets near it.
        .timeout(Duration::from_secs(600))
        .with_assert(
            Assert::new()
                .action_env(snapbox::assert::DEFAULT_ACTION_ENV)
                // Linux paths need no backslash folding, and a decoded JSON string keeps its escapes.
                .normalize_paths(false)
                .redact_with(redactions),
        )
}

fn redactions(tmp: &Path) -> Redactions {
    let mut r = Redactions::new();
    r.insert("[ROOT]", repo_root()).unwrap();
    r.insert("[TMP]", tmp.to_path_buf()).unwrap();
    r.insert("[CACHE]", pyenv::cache_root()).unwrap();
    r.insert("[MS]", regex::Regex::new(r"\b\d+ ms\b").unwrap())
        .unwrap();
    r.insert(
        "[PID]",
        regex::Regex::new(r"\bpid (?<redacted>\d+)").unwrap(),
    )
    .unwrap();
    // What a task's worker used: memory varies, and a direct worker's threads follow the cores.
    r.insert("[MIB]", regex::Regex::new(r"\b\d+\.\d MiB\b").unwrap())
        .unwrap();
    r.insert("[THREADS]", regex::Regex::new(r"\b\d+ threads?\b").unwrap())
        .unwrap();
    r
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temp dir")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

const GOLDEN: &str = "golden/pyspark-4.0.5/map_parallelize";

#[test]
fn check_runs_the_core_scenarios_then_replays_a_golden() {
    env_for("4.0.5");
    let tmp = tempdir();
    fakejvm(tmp.path())
        .args(["check", "--scenarios", "scenarios/core", "--golden", GOLDEN])
        .assert()
        .code(0)
        .stdout_eq(str![[r#"
== scenarios (scenarios/core)
env   pyspark 4.0.5 | python 3.11 | lean env (pyspark and py4j only) | [CACHE]/envs/pyspark-4.0.5-py3.11-lean/bin/python
PASS  scenarios/core/daemon_cannot_start.json  [daemon_cannot_start | pyspark 4.0.5 | dialect A | Daemon] [MS]
PASS  scenarios/core/direct_crash.json  [direct_crash | pyspark 4.0.5 | dialect A | Direct] [MS]
      task 0: used: peak RSS [MIB], CPU [MS] user + [MS] system, [THREADS], no process spawned
PASS  scenarios/core/direct_hang.json  [direct_hang | pyspark 4.0.5 | dialect A | Direct] [MS]
      task 0: used: peak RSS [MIB], CPU [MS] user + [MS] system, [THREADS], no process spawned
PASS  scenarios/core/direct_mode.json  [direct_mode | pyspark 4.0.5 | dialect A | Direct] [MS]
      task 0: used: peak RSS [MIB], CPU [MS] user + [MS] system, [THREADS], no process spawned
N/A   scenarios/core/direct_uds_reuse.json  [direct_uds_reuse | pyspark 4.0.5 | dialect A | DirectUds] [MS]
      not applicable: needs pyspark >=4.1, this is 4.0.5
PASS  scenarios/core/map_double.json  [map_double | pyspark 4.0.5 | dialect A | Daemon] [MS]
      task 0: used: peak RSS [MIB], CPU [MS] user + [MS] system, [THREADS], no process spawned
PASS  scenarios/core/multiline_exception.json  [multiline_exception | pyspark 4.0.5 | dialect A | Daemon] [MS]
      task 0: used: peak RSS [MIB], CPU [MS] user + [MS] system, [THREADS], no process spawned
PASS  scenarios/core/raises.json  [raises | pyspark 4.0.5 | dialect A | Daemon] [MS]
      task 0: used: peak RSS [MIB], CPU [MS] user + [MS] system, [THREADS], no process spawned
PASS  scenarios/core/reuse_two_tasks.json  [reuse_two_tasks | pyspark 4.0.5 | dialect A | Daemon] [MS]
      task 0: used: peak RSS [MIB], CPU [MS] user + [MS] system, [THREADS], no process spawned
      task 1: used: peak RSS [MIB], CPU [MS] user + [MS] system, [THREADS], no process spawned
PASS  scenarios/core/task_context.json  [task_context | pyspark 4.0.5 | dialect A | Daemon] [MS]
      task 0: known behaviour, pyspark 4.0.5: only the last resource survives: worker.py resets the resource dict inside its per-resource loop (3.3-4.1; fixed by the JSON task context in 4.2)
      task 0: used: peak RSS [MIB], CPU [MS] user + [MS] system, [THREADS], no process spawned
PASS  scenarios/core/textfile_utf8.json  [textfile_utf8 | pyspark 4.0.5 | dialect A | Daemon] [MS]
      task 0: used: peak RSS [MIB], CPU [MS] user + [MS] system, [THREADS], no process spawned
N/A   scenarios/core/uds_daemon.json  [uds_daemon | pyspark 4.0.5 | dialect A | Uds] [MS]
      not applicable: needs pyspark >=4.1, this is 4.0.5
10 passed, 0 failed, 2 not applicable (pyspark 4.0.5)
== goldens (golden/pyspark-4.0.5/map_parallelize)
PASS  golden/pyspark-4.0.5/map_parallelize  [pyspark 4.0.5 | dialect A | Daemon | 2 task(s)] [MS]
1 passed, 0 blessed, 0 failed, 0 n/a

"#]])
        .stderr_eq(str![]);
}

#[test]
fn run_a_passing_scenario() {
    env_for("4.0.5");
    let tmp = tempdir();
    fakejvm(tmp.path())
        .args(["run", "scenarios/core/map_double.json"])
        .assert()
        .code(0)
        .stdout_eq(str![[r#"
env   pyspark 4.0.5 | python 3.11 | lean env (pyspark and py4j only) | [CACHE]/envs/pyspark-4.0.5-py3.11-lean/bin/python
PASS  scenarios/core/map_double.json  [map_double | pyspark 4.0.5 | dialect A | Daemon] [MS]
      task 0: used: peak RSS [MIB], CPU [MS] user + [MS] system, [THREADS], no process spawned
1 passed, 0 failed, 0 not applicable (pyspark 4.0.5)

"#]])
        .stderr_eq(str![]);
}

#[test]
fn run_a_failing_scenario() {
    env_for("4.0.5");
    let tmp = tempdir();
    let f = write(
        tmp.path(),
        "wrong.json",
        r#"{
  "description": "rdd.map(lambda x: x * 2), expecting a wrong last value",
  "tasks": [
    {
      "function": "func = lambda split, it: (x * 2 for x in it)",
      "input": {"encoding": "pickle_batched", "batch_size": 2, "values": [1, 2, 3]},
      "expect": {"values": [2, 4, 7]}
    }
  ]
}"#,
    );
    fakejvm(tmp.path())
        .arg("run")
        .arg(&f)
        .assert()
        .code(1)
        .stdout_eq(str![[r#"
env   pyspark 4.0.5 | python 3.11 | lean env (pyspark and py4j only) | [CACHE]/envs/pyspark-4.0.5-py3.11-lean/bin/python
FAIL  [TMP]/wrong.json  [wrong | pyspark 4.0.5 | dialect A | Daemon] [MS]
      task 0: Mismatch: expected [2,4,7], got [2,4,6]
      task 0: used: peak RSS [MIB], CPU [MS] user + [MS] system, [THREADS], no process spawned
0 passed, 1 failed, 0 not applicable (pyspark 4.0.5)

"#]])
        .stderr_eq(str![]);
}

#[test]
fn replay_a_golden_that_holds() {
    env_for("4.0.5");
    let tmp = tempdir();
    fakejvm(tmp.path())
        .args(["replay", GOLDEN])
        .assert()
        .code(0)
        .stdout_eq(str![[r#"
PASS  golden/pyspark-4.0.5/map_parallelize  [pyspark 4.0.5 | dialect A | Daemon | 2 task(s)] [MS]
1 passed, 0 blessed, 0 failed, 0 n/a

"#]])
        .stderr_eq(str![]);
}

/// A copy of the golden whose first recorded reply frame says `[100]` where the worker answers
/// `[0]`: the replay must fail on that frame.
#[test]
fn replay_a_golden_whose_reply_changed() {
    env_for("4.0.5");
    let tmp = tempdir();
    let dir = tmp.path().join("map_parallelize");
    copy_dir(&repo_root().join(GOLDEN), &dir);
    let golden = Golden::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let reply_file = dir.join(&golden.index.connections[0].reply);
    let mut bytes = std::fs::read(&reply_file).unwrap();
    let (replies, err) = decode_replies(golden.index.dialect, &bytes);
    assert!(err.is_none(), "{err:?}");
    let ReplyItem::Frame(frame) = &replies[0].data[0] else {
        panic!("reply 0 starts with a frame")
    };
    // A pickled one-element list of a small int ends "K<n>a.": set <n>. The frame's payload
    // starts 4 bytes into the reply, after its length.
    let pos = frame.iter().rposition(|b| *b == b'K').expect("a BININT1") + 1;
    assert_eq!(frame[pos], 0, "the recorded first value");
    bytes[replies[0].start as usize + 4 + pos] = 100;
    std::fs::write(&reply_file, &bytes).unwrap();

    fakejvm(tmp.path())
        .arg("replay")
        .arg(&dir)
        .assert()
        .code(1)
        .stdout_eq(str![[r#"
FAIL  [TMP]/map_parallelize  [pyspark 4.0.5 | dialect A | Daemon | 2 task(s)] [MS]
      c0 reply 0 data[0]:
        expected: frame 17 bytes: pickle [100]
        got:      frame 17 bytes: pickle [0]
0 passed, 0 blessed, 1 failed, 0 n/a

"#]])
        .stderr_eq(str![]);
}

/// A short read (three bytes of the split index, then EOF) run once on a fork-server worker and
/// saved as a reproducer, as the fuzzer saves its findings.
async fn short_read_reproducer(dir: &Path) -> (PathBuf, Reproducer) {
    let env = env_for("4.0.5");
    let bytes = [0u8, 0, 0];
    let case = Case::from_spans(
        None,
        &bytes,
        &[Span {
            kind: SpanKind::Header,
            start: 0,
            end: bytes.len(),
        }],
    );
    common::record_reproducer(&env, &case, dir, "short-read").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repro_of_a_finding_that_still_reproduces() {
    let tmp = tempdir();
    let (path, _) = short_read_reproducer(tmp.path()).await;
    fakejvm(tmp.path())
        .arg("repro")
        .arg(&path)
        .assert()
        .code(1)
        .stdout_eq(str![[r#"
repro   [TMP]/short-read.json
found   PythonException struct.error at serializers.py:read_int: return struct.unpack("!i", length)[0] (pyspark 4.0.5, dialect A, fork-server, 3-byte request, minimised)
replay  PythonException struct.error: unpack requires a buffer of 4 bytes (pyspark 4.0.5)
result  REPRODUCES (signature 3800d1a06a1f)

"#]])
        .stderr_eq(str![]);
}

/// The same bytes recorded under another signature: the worker's answer no longer matches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repro_of_a_finding_that_no_longer_reproduces() {
    let tmp = tempdir();
    let (_, mut r) = short_read_reproducer(tmp.path()).await;
    r.signature.exc_type = Some("EOFError".into());
    r.signature_id = r.signature.id();
    let path = tmp.path().join("changed.json");
    r.replay = format!("fakejvm repro {}", path.display());
    r.save(&path).unwrap();
    fakejvm(tmp.path())
        .arg("repro")
        .arg(&path)
        .assert()
        .code(0)
        .stdout_eq(str![[r#"
repro   [TMP]/changed.json
found   PythonException EOFError at serializers.py:read_int: return struct.unpack("!i", length)[0] (pyspark 4.0.5, dialect A, fork-server, 3-byte request, minimised)
replay  PythonException struct.error: unpack requires a buffer of 4 bytes (pyspark 4.0.5)
result  does not reproduce: the replay ended in PythonException struct.error at serializers.py:read_int: return struct.unpack("!i", length)[0]

"#]])
        .stderr_eq(str![]);
}

#[test]
fn repro_of_a_broken_file() {
    let tmp = tempdir();
    let p = write(
        tmp.path(),
        "broken.json",
        r#"{"kind": "fakejvm-reproducer", "format": 1, "title": 3}"#,
    );
    fakejvm(tmp.path())
        .arg("repro")
        .arg(&p)
        .assert()
        .code(2)
        .stdout_eq(str![])
        .stderr_eq(str![[r#"
fakejvm: [TMP]/broken.json: not a valid reproducer: title: invalid type: integer `3`, expected a string

"#]]);
}

#[test]
fn fuzz_with_bad_flags() {
    let tmp = tempdir();
    fakejvm(tmp.path())
        .args(["fuzz", "--jobs", "0"])
        .assert()
        .code(2)
        .stdout_eq(str![])
        .stderr_eq(str![[r#"
fakejvm: --jobs 0: at least one case must be in flight

"#]]);
    fakejvm(tmp.path())
        .args(["fuzz", "--duration", "banana"])
        .assert()
        .code(2)
        .stdout_eq(str![])
        .stderr_eq(str![[r#"
fakejvm: invalid value 'banana' for '--duration <DURATION>': "banana" is not a duration: write e.g. 90s, 10m, 1h (see `fakejvm --help`)

"#]]);
}

/// Every pinned env is provisioned first (the suite needs them all anyway), so that each line
/// says `ready` whatever state the machine was in. The env dirs are keyed by the base Python
/// (`FAKEJVM_BASE_PYTHON`), whose version is `[PYTHON]`.
/// A recorded request stream decodes to the same text wherever it is decoded. The stream holds
/// the paths of the machine it was recorded on, which are data here, not this checkout: no
/// `[ROOT]`.
#[test]
fn decode_a_recorded_request_stream() {
    let tmp = tempdir();
    let mut r = redactions(tmp.path());
    r.remove("[ROOT]").unwrap();
    r.remove("[CACHE]").unwrap();
    fakejvm_with(r)
        .args([
            "decode",
            "golden/pyspark-4.0.5/direct_mode/c0.request.bin",
            "--dialect",
            "A",
            "--direction",
            "request",
        ])
        .assert()
        .code(0)
        .stdout_eq(str![[r#"
request 0  bytes 0..1800
  @0..332          header: split_index 0
                     python_version "3.11"
                     task: stage 0 partition 0 attempt 0 task_attempt_id 0 cpus 1
                     barrier false
                     local property "spark.rdd.scope" = "{\"id\":\"1\",\"name\":\"collect\"}"
                     local property "callSite.short" = "collect at /work/main/harness/python/spark_jobs/jobs.py:61"
                     local property "spark.rdd.scope.noOverride" = "true"
                     spark_files_dir "/tmp/spark-369fa79d-d145-4a63-9ff9-d807676cb724/userFiles-0cc261e8-7c40-4a23-a176-16cee04f48b4", includes []
                     eval_type 0 (NonUdf)
  @332..1762       command: 1426-byte pickle (func, profiler, deserializer, serializer)
  @1762..1792      data[0] frame 26 bytes: pickle [0,1,2,3,4]
  @1792..1796      END_OF_DATA_SECTION (-1)
  @1796..1800      final int -4 (END_OF_STREAM)

"#]])
        .stderr_eq(str![]);
}

#[test]
fn a_broken_scenario_file_is_one_line() {
    let tmp = tempdir();
    let f = write(tmp.path(), "broken.json", "{\"tasks\": [\n");
    fakejvm(tmp.path())
        .arg("run")
        .arg(&f)
        .assert()
        .code(2)
        .stdout_eq(str![])
        .stderr_eq(str![[r#"
fakejvm: [TMP]/broken.json: truncated JSON (ends at line 2, column 0)

"#]]);
}

#[test]
fn a_wrong_flag_is_one_line() {
    let tmp = tempdir();
    fakejvm(tmp.path())
        .args(["run", "--no-such-flag", "scenarios/core/map_double.json"])
        .assert()
        .code(2)
        .stdout_eq(str![])
        .stderr_eq(str![[r#"
fakejvm: unexpected argument '--no-such-flag' found | tip: to pass '--no-such-flag' as a value, use '-- --no-such-flag' (see `fakejvm --help`)

"#]]);
}

#[test]
fn a_pyspark_that_is_not_a_version_is_one_line() {
    let tmp = tempdir();
    fakejvm(tmp.path())
        .args([
            "run",
            "--pyspark",
            "not-a-version",
            "scenarios/core/map_double.json",
        ])
        .assert()
        .code(2)
        .stdout_eq(str![])
        .stderr_eq(str![[r#"
fakejvm: "not-a-version" is not a pyspark version fakejvm can use: write a release like 4.0.5, or a pinned line (4.0 for 4.0.5, 4.1 for 4.1.4, 4.2 for 4.2.1, 4.3 for 4.3.0, 3.5 for 3.5.9)

"#]]);
}
