//! Native crashes as fuzz findings, against real pyspark 4.0.5 workers: seeds whose tasks kill
//! the worker by SIGSEGV (an RDD function reading address 0 through ctypes) and SIGABRT (a SQL
//! UDF calling os.abort()) are reported by the campaign's seed calibration as WorkerCrashed
//! findings with their signal; each reproducer holds faulthandler's dump and the native stack of
//! the crashing thread (from gdb), and `fakejvm repro` replays it (exit 1) and prints that stack.
//! No process is left behind, gdb's included.

mod common;

use fakejvm::fuzz::campaign::{self, CampaignConfig};
use fakejvm::fuzz::native_stack;
use fakejvm::fuzz::oracle::ExpectedRule;
use fakejvm::fuzz::reproducer::Reproducer;
use fakejvm::fuzz::ExecMode;
use fakejvm::verdict::OutcomeKind;
use std::path::Path;
use std::time::Duration;

/// gdb is what turns a native crash into a native stack: a machine without it fails here,
/// saying how to get it, rather than pass without checking the stack.
fn require_gdb() {
    if let Err(why) = native_stack::debugger() {
        panic!("{why}\nthis test needs gdb: install it with `apt-get install gdb`");
    }
}

fn config(out: &Path) -> CampaignConfig {
    CampaignConfig {
        seed_dirs: vec![common::repo_root().join("harness/tests/data/native_crash")],
        // The identity seeds give the lanes something to mutate; the crashing seeds never are.
        builtin_seeds: true,
        duration: Duration::from_secs(1800),
        max_execs: Some(20),
        out: out.to_path_buf(),
        mode: ExecMode::ForkServer,
        jobs: 2,
        deadline: Duration::from_secs(5),
        arrow_deadline: None,
        expected: ExpectedRule::defaults(),
        sig_frames: 1,
        minimise_runs: 40,
        minimise_time: Duration::from_secs(60),
        leak_grace: Duration::from_secs(2),
        rng_seed: 11,
        progress: false,
        mutate_command: false,
        memory_limit_mb: Some(1024),
        recycle_after: fakejvm::fuzz::exec::DEFAULT_RECYCLE_AFTER,
        coverage: None,
    }
}

/// One campaign at a time: each test checks that none of this binary's processes is left.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Live processes that fakejvm started from this test binary (they carry its owner mark).
fn ours_alive() -> Vec<String> {
    alive_with(&format!(
        "{}={}",
        fakejvm::worker::OWNER_ENV,
        fakejvm::worker::owner_token()
    ))
}

/// Live processes whose environment holds `mark` (NAME=VALUE), as "pid cmdline".
fn alive_with(mark: &str) -> Vec<String> {
    common::alive_with(mark)
        .iter()
        .map(|p| p.to_string())
        .collect()
}

fn crash_reproducer(out: &Path, signal: &str) -> (std::path::PathBuf, Reproducer) {
    let mut hits = vec![];
    for e in std::fs::read_dir(out).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            if let Ok(r) = Reproducer::load(&p) {
                if r.signature.kind == OutcomeKind::WorkerCrashed
                    && r.signature.exc_type.as_deref() == Some(signal)
                {
                    hits.push((p, r));
                }
            }
        }
    }
    assert_eq!(
        hits.len(),
        1,
        "one {signal} reproducer in {}",
        out.display()
    );
    hits.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_seeds_are_findings_with_their_dump_and_native_stack_and_replay() {
    let _one = ONE_AT_A_TIME.lock().await;
    require_gdb();
    let env = common::env_for("4.0.5");
    let out = tempfile::tempdir().unwrap();
    let summary = campaign::run(env.clone(), config(out.path()))
        .await
        .unwrap();
    eprintln!("{}", summary.text());
    assert!(summary.aborted.is_none(), "{:?}", summary.aborted);
    assert_eq!(summary.leftover_processes, vec![]);
    for name in ["segfault_in_map", "abort_in_sql_udf"] {
        assert!(
            summary
                .seeds
                .skipped
                .iter()
                .any(|s| s.contains(name) && s.contains("reported as a finding")),
            "{name} is not listed as a crashing seed: {:?}",
            summary.seeds.skipped
        );
    }

    for (signal, fatal, native_frame) in [
        (
            "SIGSEGV",
            "Fatal Python error: Segmentation fault",
            "string_at",
        ),
        ("SIGABRT", "Fatal Python error: Aborted", "abort"),
    ] {
        let (path, r) = crash_reproducer(out.path(), signal);
        let dump = r.fault_dump.as_deref().unwrap_or("");
        assert!(
            dump.contains(fatal) && dump.contains("File \""),
            "{signal}: faulthandler's dump with Python frames: {dump:?}"
        );
        let stack = r
            .native_stack
            .as_deref()
            .unwrap_or_else(|| panic!("{signal}: no native stack: {:?}", r.native_stack_missing));
        assert!(
            stack
                .lines()
                .next()
                .unwrap_or("")
                .contains(&format!("received signal {signal}")),
            "{signal}: the stop line first: {stack}"
        );
        let frames: Vec<&str> = stack.lines().filter(|l| l.starts_with('#')).collect();
        assert!(frames.len() >= 3, "{signal}: frames: {stack}");
        assert!(frames[0].starts_with("#0 "), "{stack}");
        assert!(
            frames.iter().any(|f| f.contains(native_frame)),
            "{signal}: no {native_frame} frame: {stack}"
        );
        assert!(
            frames.iter().any(|f| f.contains("_PyEval_EvalFrame")),
            "{signal}: the interpreter below the crash: {stack}"
        );
        assert!(r.minimised, "{signal}: minimised");
        let f = summary
            .findings
            .iter()
            .find(|f| f.id == r.signature_id)
            .expect("the finding is in the summary");
        assert!(
            f.native_stack.first().is_some_and(|l| l.contains(signal)),
            "{signal}: the summary shows the native stack: {:?}",
            f.native_stack
        );
        assert!(summary.text().contains("native  #0"), "{}", summary.text());

        // `fakejvm repro`: reproduces (exit 1) and prints the stack; its processes carry a tag.
        let tag = format!("native-crash-{}-{signal}", std::process::id());
        let run = assert_cmd::Command::cargo_bin("fakejvm")
            .unwrap()
            .arg("repro")
            .arg(&path)
            .env("FAKEJVM_PYTHON", &env.python)
            .env(fakejvm::worker::TEST_RUN_ENV, &tag)
            .timeout(Duration::from_secs(600))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert_eq!(
            run.status.code(),
            Some(1),
            "{signal}: repro should reproduce:\n{stdout}\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(
            stdout.contains("REPRODUCES")
                && stdout.contains("native  stack of the crashing thread (recorded)")
                && stdout.contains("#0 "),
            "{signal}: {stdout}"
        );
        assert_eq!(
            alive_with(&format!("{}={tag}", fakejvm::worker::TEST_RUN_ENV)),
            Vec::<String>::new(),
            "processes left behind by `fakejvm repro`"
        );
    }
    assert_eq!(ours_alive(), Vec::<String>::new(), "processes left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repro_takes_the_stack_itself_when_the_file_has_none() {
    let _one = ONE_AT_A_TIME.lock().await;
    require_gdb();
    let env = common::env_for("4.0.5");
    let out = tempfile::tempdir().unwrap();
    // One crashing seed, no campaign: the case as calibration would see it.
    let seeds = common::repo_root().join("harness/tests/data/native_crash/segfault_in_map.json");
    let mut cfg = config(out.path());
    cfg.seed_dirs = vec![seeds];
    cfg.builtin_seeds = false;
    cfg.max_execs = Some(0);
    let summary = campaign::run(env.clone(), cfg).await.unwrap();
    assert_eq!(summary.findings.len(), 1, "{}", summary.text());
    let (path, mut r) = crash_reproducer(out.path(), "SIGSEGV");
    r.native_stack = None;
    r.native_stack_missing = None;
    r.save(&path).unwrap();
    let report = fakejvm::repro::run(&path, &r, Some(&env.python), None, None, 1)
        .await
        .unwrap();
    assert!(report.reproduced, "{:?}", report.replayed);
    assert_eq!(
        report.native_stack_source,
        Some("taken by this replay under gdb")
    );
    let text = report.text(&r);
    assert!(
        text.contains("received signal SIGSEGV") && text.contains("#0 "),
        "{text}"
    );
    assert_eq!(ours_alive(), Vec::<String>::new(), "processes left behind");
}
