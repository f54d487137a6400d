//! The persistent executor and the warm fork server (issue 15) against real pyspark workers:
//! a campaign in each leaves no process behind and reports only findings the real daemon
//! reproduced; the persistent executor gives the fork server's verdict on RDD seeds (4.0.5 and
//! 4.3.0), also on a process that already served cases; `fakejvm fuzz merge` joins campaigns.
//! Bounded by case counts, never by speed.

mod common;

use fakejvm::fuzz::campaign::{self, CampaignConfig};
use fakejvm::fuzz::exec::{ExecOptions, Executor};
use fakejvm::fuzz::oracle::{ExpectedRule, Judge};
use fakejvm::fuzz::reproducer::Reproducer;
use fakejvm::fuzz::ExecMode;
use fakejvm::protocol::{ConnInfo, Dialect};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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
        minimise_runs: 20,
        minimise_time: Duration::from_secs(5),
        leak_grace: Duration::from_secs(2),
        rng_seed: 11,
        progress: false,
        mutate_command: false,
        memory_limit_mb: Some(1024),
        // Small, so a 500-case campaign also sees servers recycle and new ones start.
        recycle_after: 150,
        coverage: None,
    }
}

fn alive_in_groups(pgids: &[i32]) -> Vec<String> {
    assert!(
        !pgids.is_empty(),
        "the campaign reported no server or daemon"
    );
    fakejvm::worker::leftover_processes(pgids)
        .into_iter()
        .map(|(p, c)| format!("{p} {c}"))
        .collect()
}

/// The leak gate of each new executor: 500 mutated cases, then nothing of ours alive; every
/// reported finding was confirmed on the fork server and replays there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_and_warm_fork_campaigns_leak_nothing_and_confirm_findings() {
    let env = common::env_for("4.0.5");
    for mode in [ExecMode::Persistent, ExecMode::WarmFork] {
        let out = tempfile::tempdir().unwrap();
        let summary = campaign::run(env.clone(), config(out.path(), mode, 500))
            .await
            .unwrap();
        eprintln!("{}", summary.text());
        assert!(summary.aborted.is_none(), "{mode:?}: {:?}", summary.aborted);
        assert_eq!(summary.mode, mode);
        assert!(
            summary.run.execs >= 500,
            "{mode:?}: {} cases",
            summary.run.execs
        );
        assert_eq!(
            summary.leftover_processes,
            vec![],
            "{mode:?}: processes left after the campaign"
        );
        assert_eq!(
            alive_in_groups(&summary.daemon_pgids),
            Vec::<String>::new(),
            "{mode:?}: processes alive after the campaign"
        );
        if mode == ExecMode::Persistent {
            // 500 cases at 150 a server: at least four servers, each started by a recycle.
            assert!(summary.servers_started >= 4, "{}", summary.servers_started);
            assert!(
                summary
                    .recycles
                    .keys()
                    .any(|k| k.starts_with("served N cases")),
                "{:?}",
                summary.recycles
            );
        }
        for f in &summary.findings {
            let r = Reproducer::load(&out.path().join(&f.file)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                r.mode,
                ExecMode::ForkServer,
                "{}: replays on the daemon",
                f.file
            );
            assert_eq!(r.found_in, Some(mode), "{}", f.file);
            assert_eq!(r.confirmed_in, Some(ExecMode::ForkServer), "{}", f.file);
        }
    }
}

/// Same seeds, same verdicts: each RDD seed of scenarios/core (and the built-in identity
/// seeds) ends in the same signature on a fork server and on the persistent executor, run
/// twice there so the second run is on a process that served cases already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_persistent_executor_gives_the_fork_servers_verdicts_on_rdd_seeds() {
    for version in ["4.0.5", "4.3.0"] {
        let env = common::env_for(version);
        let dialect = Dialect::for_version(env.pyspark.major, env.pyspark.minor).unwrap();
        let (seeds, _) = fakejvm::fuzz::seeds::load(
            &env,
            dialect,
            &[common::repo_root().join("scenarios/core")],
            true,
        )
        .unwrap();
        let seeds: Vec<_> = seeds
            .into_iter()
            .filter(|s| s.request.as_ref().is_some_and(|r| r.udf.is_none()))
            .collect();
        assert!(seeds.len() >= 8, "{version}: {} RDD seeds", seeds.len());
        let opts = ExecOptions {
            deadline: Duration::from_secs(10),
            memory_limit_mb: Some(1024),
            ..ExecOptions::default()
        };
        let daemon = Executor::start(env.clone(), dialect, ExecMode::ForkServer, opts.clone())
            .await
            .unwrap();
        let persistent = Executor::start(env.clone(), dialect, ExecMode::Persistent, opts)
            .await
            .unwrap();
        let judge = Judge {
            expected: ExpectedRule::defaults(),
            depth: 2,
        };
        let mut compared = 0;
        let mut on_used_server = 0;
        // Each seed also as a barrier task (its class attributes on BarrierTaskContext), run
        // between plain ones: a reset that puts back too much or too little shows there.
        let mut cases = vec![];
        for s in &seeds {
            cases.push((s, s.case.to_bytes(), "plain"));
            let mut req = s.request.clone().unwrap();
            req.context.is_barrier = true;
            req.context.barrier = Some(ConnInfo::Port {
                port: 1,
                secret: "barrier-secret".into(),
            });
            cases.push((s, dialect.encode_request(&req).bytes, "barrier"));
        }
        for (s, bytes, how) in cases {
            let bytes = Arc::new(bytes);
            let want = judge.signature(&daemon.exec_fresh(bytes.clone()).await, &s.case, Some(s));
            for run in 0..2 {
                let obs = persistent.exec_fresh(bytes.clone()).await;
                on_used_server += obs.reused_worker as usize;
                let got = judge.signature(&obs, &s.case, Some(s));
                assert_eq!(
                    got.text(),
                    want.text(),
                    "{version}: seed {} as a {how} task (run {run} on the persistent executor)",
                    s.name
                );
                compared += 1;
            }
        }
        assert!(
            on_used_server >= compared / 2,
            "{version}: only {on_used_server} of {compared} cases ran on a server that had served one before"
        );
        assert!(
            persistent.servers_started() < compared as u64,
            "{version}: {} servers for {compared} cases: not persistent",
            persistent.servers_started()
        );
        let left = persistent.shutdown().await.unwrap().leftovers;
        assert_eq!(left, vec![], "{version}");
        let left = daemon.shutdown().await.unwrap().leftovers;
        assert_eq!(left, vec![], "{version}");
    }
}

/// Two real campaigns merged: one reproducer per signature, counts added up, the earliest
/// first-seen time kept; merging the merge again with one campaign adds that one's counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_joins_campaigns_by_signature() {
    use fakejvm::fuzz::merge::{merge, MERGED_FILE};
    use std::collections::BTreeMap;

    let env = common::env_for("4.0.5");
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let sa = campaign::run(
        env.clone(),
        CampaignConfig {
            rng_seed: 1,
            ..config(a.path(), ExecMode::ForkServer, 200)
        },
    )
    .await
    .unwrap();
    let sb = campaign::run(
        env,
        CampaignConfig {
            rng_seed: 2,
            ..config(b.path(), ExecMode::ForkServer, 200)
        },
    )
    .await
    .unwrap();
    assert!(
        !sa.findings.is_empty() && !sb.findings.is_empty(),
        "400 mutated cases and no finding: {:?} / {:?}",
        sa.findings,
        sb.findings
    );
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for f in sa.findings.iter().chain(&sb.findings) {
        *want.entry(f.id.clone()).or_default() += f.count;
    }
    let out = tempfile::tempdir().unwrap();
    let m = merge(
        &[a.path().to_path_buf(), b.path().to_path_buf()],
        out.path(),
    )
    .unwrap();
    eprintln!("{}", m.text(out.path()));
    assert_eq!(m.sources.len(), 2);
    let got: BTreeMap<String, u64> = m.findings.iter().map(|f| (f.id.clone(), f.count)).collect();
    assert_eq!(got, want);
    for f in &m.findings {
        let r = Reproducer::load(&out.path().join(&f.file)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.signature_id, f.id);
        assert_eq!(r.found.count, f.count);
        let seen = [&sa, &sb]
            .iter()
            .filter(|s| s.findings.iter().any(|g| g.id == f.id))
            .count();
        assert_eq!(f.seen_in.len(), seen, "{:?}", f.seen_in);
    }
    assert!(out.path().join(MERGED_FILE).is_file());

    // A merge is an input too: merged + a again counts a twice.
    let out2 = tempfile::tempdir().unwrap();
    let m2 = merge(
        &[out.path().to_path_buf(), a.path().to_path_buf()],
        out2.path(),
    )
    .unwrap();
    for f in &m2.findings {
        let once = want.get(&f.id).copied().unwrap_or(0);
        let in_a = sa
            .findings
            .iter()
            .find(|g| g.id == f.id)
            .map(|g| g.count)
            .unwrap_or(0);
        assert_eq!(f.count, once + in_a, "{}", f.signature);
    }
}

/// A folder that is not a campaign is refused in one line naming it, exit 2.
#[test]
fn merge_refuses_a_folder_that_is_not_a_campaign() {
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_fakejvm"))
        .args(["fuzz", "merge"])
        .arg(dir.path())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&dir.path().display().to_string()) && err.contains("state.json"),
        "{err}"
    );
}
