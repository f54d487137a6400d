//! A few hundred cases of the live fuzz campaign against real pyspark 4.0.5 workers: it runs
//! cases, writes its state, summary and reproducers, resumes, and leaves no process behind.
//! Campaigns are bounded by a case count, never by how many cases a busy machine gets through
//! in some time.

mod common;

use fakejvm::fuzz::campaign::{self, CampaignConfig, STATE_FILE, SUMMARY_FILE};
use fakejvm::fuzz::oracle::ExpectedRule;
use fakejvm::fuzz::reproducer::Reproducer;
use fakejvm::fuzz::ExecMode;
use std::path::Path;
use std::time::{Duration, Instant};

fn config(out: &Path, mode: ExecMode, max_execs: u64) -> CampaignConfig {
    CampaignConfig {
        seed_dirs: vec![common::repo_root().join("scenarios/core")],
        builtin_seeds: true,
        // A cap for a campaign that stops making progress, not the bound: `max_execs` is.
        duration: Duration::from_secs(1800),
        max_execs: Some(max_execs),
        out: out.to_path_buf(),
        mode,
        jobs: 2,
        deadline: Duration::from_secs(2),
        arrow_deadline: None,
        expected: ExpectedRule::defaults(),
        sig_frames: 1,
        minimise_runs: 40,
        minimise_time: Duration::from_secs(5),
        leak_grace: Duration::from_secs(2),
        rng_seed: 7,
        progress: false,
        mutate_command: false,
        memory_limit_mb: Some(1024),
        recycle_after: fakejvm::fuzz::exec::DEFAULT_RECYCLE_AFTER,
        coverage: None,
    }
}

/// Polls until `pid` is gone or a zombie; false if it still runs after `limit`.
async fn gone_within(pid: i32, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z") {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Live processes in the given process groups (the campaign's daemons and all they forked).
fn alive_in_groups(pgids: &[i32]) -> Vec<String> {
    assert!(!pgids.is_empty(), "the campaign reported no daemon");
    fakejvm::worker::leftover_processes(pgids)
        .into_iter()
        .map(|(p, c)| format!("{p} {c}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_campaign_runs_saves_resumes_and_leaks_nothing() {
    let env = common::env_for("4.0.5");
    let out = tempfile::tempdir().unwrap();
    let summary = campaign::run(env.clone(), config(out.path(), ExecMode::ForkServer, 400))
        .await
        .unwrap();
    eprintln!("{}", summary.text());

    assert!(summary.aborted.is_none(), "{:?}", summary.aborted);
    assert!(
        summary.run.execs >= 400,
        "ran {} cases in {} ms",
        summary.run.execs,
        summary.run.elapsed_ms
    );
    assert!(
        summary.seeds.builtin == 4 && summary.seeds.scenario_tasks > 0,
        "{:?}",
        summary.seeds
    );
    assert!(summary.corpus > 0, "no behaviour reached the corpus");
    assert_eq!(
        summary.leftover_processes,
        vec![],
        "processes left after the campaign"
    );
    assert!(out.path().join(STATE_FILE).is_file() && out.path().join(SUMMARY_FILE).is_file());
    // Which findings two lanes reach depends on their interleaving, so none are required; each
    // one there is must be a loadable reproducer.
    for f in &summary.findings {
        let r = Reproducer::load(&out.path().join(&f.file)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.signature_id, f.id);
        assert_eq!(r.pyspark, "4.0.5");
        assert!(
            r.found.count >= 1 && r.found.count == f.count,
            "{} vs {}",
            r.found.count,
            f.count
        );
    }

    // Resume: the same folder goes on from where it stopped; known findings are not new again.
    let again = campaign::run(env, config(out.path(), ExecMode::ForkServer, 100))
        .await
        .unwrap();
    assert!(again.resumed);
    assert_eq!(again.total.execs, summary.run.execs + again.run.execs);
    for f in again
        .findings
        .iter()
        .filter(|f| summary.findings.iter().any(|g| g.id == f.id))
    {
        assert!(!f.new, "{} reported as new again", f.signature);
    }
    assert_eq!(again.leftover_processes, vec![]);
    for g in summary.daemon_pgids.iter().chain(&again.daemon_pgids) {
        assert!(
            !fakejvm::worker::registered_groups().contains(g),
            "group {g} still registered"
        );
    }
    let mut groups = summary.daemon_pgids.clone();
    groups.extend(&again.daemon_pgids);
    assert_eq!(
        alive_in_groups(&groups),
        Vec::<String>::new(),
        "processes alive after the campaigns"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_mode_runs_cases_on_kept_workers() {
    let env = common::env_for("4.0.5");
    let out = tempfile::tempdir().unwrap();
    let summary = campaign::run(env, config(out.path(), ExecMode::Reuse, 150))
        .await
        .unwrap();
    eprintln!("{}", summary.text());
    assert!(summary.aborted.is_none(), "{:?}", summary.aborted);
    assert!(summary.run.execs >= 150);
    assert_eq!(summary.leftover_processes, vec![]);
    assert_eq!(alive_in_groups(&summary.daemon_pgids), Vec::<String>::new());
}

#[tokio::test]
async fn a_state_of_another_version_is_refused_in_one_line() {
    let env = common::env_for("4.0.5");
    let out = tempfile::tempdir().unwrap();
    let state = serde_json::json!({
        "kind": "fakejvm-fuzz-state", "format": 1, "pyspark": "4.3.0", "python": "3.11", "dialect": "D",
        "mode": "fork_server", "execs": 1, "elapsed_ms": 1, "minimise_runs": 0, "harness_errors": 0,
        "daemon_restarts": 0, "runs": [], "findings": {}, "expected": {}
    });
    std::fs::write(out.path().join(STATE_FILE), state.to_string()).unwrap();
    let err = campaign::run(env, config(out.path(), ExecMode::ForkServer, 10))
        .await
        .unwrap_err();
    let bad = err
        .downcast_ref::<fakejvm::error::BadInput>()
        .unwrap_or_else(|| panic!("not BadInput: {err:#}"));
    let text = bad.to_string();
    assert!(
        text.contains("state.json")
            && text.contains("pyspark 4.3.0")
            && text.contains("another --out"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1);
}

/// The daemon dying is a finding and the fork server comes back; a task past the deadline is a
/// hang whose worker does not outlive it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_death_restarts_the_fork_server_and_hangs_are_cleaned_up() {
    use fakejvm::fuzz::exec::{ExecOptions, Executor};
    use fakejvm::protocol::{DataItem, Dialect, TaskRequest};
    use fakejvm::pyenv::{build_commands, CommandSpec, SerializerSpec};
    use fakejvm::verdict::Outcome;
    use std::sync::Arc;

    let env = common::env_for("4.0.5");
    let spec = |f: &str| CommandSpec {
        function: f.into(),
        deserializer: SerializerSpec::Pickle,
        serializer: SerializerSpec::Pickle,
    };
    let cmds = build_commands(
        &env,
        &[
            spec("func = lambda s, it: it"),
            spec("import time\ndef func(s, it):\n    time.sleep(30)\n    return it\n"),
        ],
    )
    .unwrap();
    let request = |cmd: &Vec<u8>| {
        Arc::new(
            Dialect::A
                .encode_request(&TaskRequest::non_udf(
                    &env.python_version,
                    cmd.clone(),
                    vec![DataItem::Frame(vec![0x80, 5, 0x4b, 7, 0x2e])],
                ))
                .bytes,
        )
    };
    let opts = ExecOptions {
        deadline: Duration::from_millis(1500),
        ..ExecOptions::default()
    };
    let exec = Executor::start(env.clone(), Dialect::A, ExecMode::ForkServer, opts)
        .await
        .unwrap();

    assert_eq!(
        exec.exec_fresh(request(&cmds[0])).await.outcome,
        Outcome::Passed
    );
    let first = exec.daemon_pid();
    unsafe { libc::kill(first, libc::SIGKILL) };
    assert!(
        gone_within(first, Duration::from_secs(10)).await,
        "the SIGKILLed daemon {first} is still running"
    );
    let obs = exec.exec_fresh(request(&cmds[0])).await;
    assert!(
        matches!(obs.outcome, Outcome::DaemonDied { .. }),
        "{}",
        obs.outcome
    );
    assert!(obs.daemon_restarted);
    assert_ne!(exec.daemon_pid(), first);
    assert_eq!(
        exec.exec_fresh(request(&cmds[0])).await.outcome,
        Outcome::Passed,
        "the new daemon serves cases"
    );

    let obs = exec.exec_fresh(request(&cmds[1])).await;
    assert!(
        matches!(obs.outcome, Outcome::Hang { .. }),
        "{}",
        obs.outcome
    );
    // time.sleep: asleep in the kernel, not busy.
    let state = obs.worker_at_deadline.as_deref().unwrap_or("");
    assert!(state.starts_with("state S (sleeping)"), "{state:?}");
    let hung = obs.pid.unwrap();
    assert!(
        gone_within(hung, Duration::from_secs(10)).await,
        "the hung worker {hung} is still alive 10 s after its case"
    );
    // Every worker of the cases above ends (the daemon alone is left in its group), and then
    // none of them is reported as a leak.
    let daemon = exec.daemon_pid();
    let until = Instant::now() + Duration::from_secs(20);
    let mut others: Vec<(i32, String)>;
    loop {
        others = fakejvm::worker::leftover_processes(&[daemon])
            .into_iter()
            .filter(|(p, _)| *p != daemon)
            .collect();
        if others.is_empty() || Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(others, vec![], "still running 20 s after their cases");
    assert!(exec.leaked(Duration::ZERO).await.is_empty());

    let pgids = exec.daemon_pids();
    let report = exec.shutdown().await.unwrap();
    assert_eq!(report.leftovers, vec![]);
    assert_eq!(alive_in_groups(&pgids), Vec::<String>::new());
}

/// Issue 11: the fuzzer takes UDF tasks (scenarios/udf) as seeds and mutates them with the
/// mutators it has. Every task of a version that has its kind becomes a seed; with no deadline
/// chosen the campaign allows for each fresh worker's pandas/pyarrow import, so calibration
/// keeps them all, and a short campaign runs mutated UDF requests and leaks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udf_scenarios_are_seeds() {
    let env = common::env_for("4.1.4");
    let out = tempfile::tempdir().unwrap();
    let cfg = CampaignConfig {
        seed_dirs: vec![common::repo_root().join("scenarios/udf")],
        builtin_seeds: false,
        arrow_deadline: Some(Duration::from_secs(10)),
        ..config(out.path(), ExecMode::ForkServer, 40)
    };
    let summary = campaign::run(env, cfg).await.unwrap();
    eprintln!("{}", summary.text());
    assert!(summary.aborted.is_none(), "{:?}", summary.aborted);
    let tasks: usize =
        fakejvm::scenario::collect_files(&[common::repo_root().join("scenarios/udf")])
            .unwrap()
            .iter()
            .map(|f| fakejvm::scenario::Scenario::load(f).unwrap().tasks.len())
            .sum();
    assert_eq!(summary.seeds.scenario_tasks, tasks, "{:?}", summary.seeds);
    assert!(
        summary.seeds.skipped.is_empty(),
        "{:?}",
        summary.seeds.skipped
    );
    assert!(summary.run.execs >= 40);
    assert_eq!(summary.leftover_processes, vec![]);
}

/// Issue 15: on UDF seeds the campaign mutates the Arrow streams by structure and the command
/// section by typed field. A short campaign over scenarios/udf on 4.0.5 (a fixed case count)
/// counts both families in summary.json's `mutations`, and leaves no process behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udf_seeds_get_arrow_and_udf_field_mutations() {
    let env = common::env_for("4.0.5");
    let out = tempfile::tempdir().unwrap();
    let cfg = CampaignConfig {
        seed_dirs: vec![common::repo_root().join("scenarios/udf")],
        builtin_seeds: false,
        arrow_deadline: Some(Duration::from_secs(10)),
        ..config(out.path(), ExecMode::ForkServer, 80)
    };
    let summary = campaign::run(env, cfg).await.unwrap();
    eprintln!("{}", summary.text());
    assert!(summary.aborted.is_none(), "{:?}", summary.aborted);
    assert!(summary.run.execs >= 80);

    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join(SUMMARY_FILE)).unwrap()).unwrap();
    let mutations = written["mutations"]
        .as_object()
        .expect("summary.json has mutations by kind");
    let family = |prefix: &str| -> u64 {
        mutations
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, n)| n.as_u64().unwrap())
            .sum()
    };
    assert!(family("arrow.") > 0, "no Arrow kind applied: {mutations:?}");
    assert!(
        family("udf.") > 0,
        "no UDF field kind applied: {mutations:?}"
    );

    assert_eq!(summary.leftover_processes, vec![]);
    assert_eq!(alive_in_groups(&summary.daemon_pgids), Vec::<String>::new());
}
