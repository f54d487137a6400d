//! Coverage feedback (`fakejvm fuzz --coverage`, issue 15) against real pyspark workers: short
//! campaigns on pyspark 4.0.5 / CPython 3.11 (coverage.py's C tracer, installed pinned into the
//! tools cache on first use) and 4.3.0 / CPython 3.12 (sys.monitoring), in both executors that run
//! fakejvm's persist loop, with feedback and blind; the HTML report; the refusal of other
//! executors; the bench's traced rows. Bounded by case counts, never by speed.

mod common;

use assert_cmd::Command;
use fakejvm::fuzz::campaign::{self, CampaignConfig};
use fakejvm::fuzz::coverage::CoverageConfig;
use fakejvm::fuzz::oracle::ExpectedRule;
use fakejvm::fuzz::ExecMode;
use fakejvm::pyenv::{self, PythonEnv};
use std::path::Path;
use std::time::Duration;

fn config(out: &Path, mode: ExecMode, feedback: bool) -> CampaignConfig {
    CampaignConfig {
        seed_dirs: vec![common::repo_root().join("scenarios/core")],
        builtin_seeds: true,
        // A cap for a campaign that stops making progress, not the bound: `max_execs` is.
        duration: Duration::from_secs(900),
        max_execs: Some(120),
        out: out.to_path_buf(),
        mode,
        jobs: 2,
        deadline: Duration::from_secs(5),
        arrow_deadline: None,
        expected: ExpectedRule::defaults(),
        sig_frames: 1,
        minimise_runs: 10,
        minimise_time: Duration::from_secs(3),
        leak_grace: Duration::from_secs(2),
        rng_seed: 5,
        progress: false,
        mutate_command: false,
        memory_limit_mb: Some(1024),
        recycle_after: 50,
        coverage: Some(CoverageConfig {
            feedback,
            report: Some(out.join("coverage-html")),
        }),
    }
}

/// The lean pyspark 4.3.0 env on CPython 3.12 (RDD seeds need no pandas or pyarrow).
fn env_py312(version: &str) -> PythonEnv {
    let want = pyenv::Want {
        flavor: pyenv::Flavor::Lean,
        ..pyenv::Want::new(Some(version), Some("3.12".parse().unwrap()))
    };
    pyenv::resolve_with(None, &want).unwrap_or_else(|e| {
        panic!(
            "no lean pyspark {version} env on Python 3.12: {e}\n\
             to provision it by hand run `cargo run -p fakejvm -- env setup --lean --pyspark {version} --python-version 3.12`"
        )
    })
}

fn cov_entries(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out.join("corpus"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("cov-") && n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

/// One campaign and everything a coverage campaign must leave: lines of worker.py reached,
/// cov-N entries exactly when feedback is on, a report whose index links worker.py's page, the
/// map for a resumed run, and no process of ours.
async fn campaign_with_coverage(env: &PythonEnv, mode: ExecMode, feedback: bool, tracer: &str) {
    let what = format!(
        "pyspark {} / Python {} / {} / {}",
        env.pyspark,
        env.python_version,
        mode.name(),
        if feedback { "feedback" } else { "blind" }
    );
    let out = tempfile::tempdir().unwrap();
    let summary = campaign::run(env.clone(), config(out.path(), mode, feedback))
        .await
        .unwrap();
    eprintln!("{what}:\n{}", summary.text());
    assert!(summary.aborted.is_none(), "{what}: {:?}", summary.aborted);
    assert!(
        summary.run.execs >= 120,
        "{what}: {} cases",
        summary.run.execs
    );
    let cov = summary.coverage.as_ref().expect("a coverage summary");
    assert!(cov.tracer.contains(tracer), "{what}: {}", cov.tracer);
    assert_eq!(cov.feedback, feedback, "{what}");
    let worker = cov
        .files
        .iter()
        .find(|f| f.file == "worker.py")
        .expect("worker.py in the summary");
    assert!(worker.hit > 0, "{what}: no line of worker.py reached");
    assert!(
        worker
            .executable
            .is_some_and(|e| e >= worker.hit_executable),
        "{what}: {worker:?}"
    );
    assert!(
        cov.timeline.len() >= 2 && cov.timeline.last().unwrap().lines == cov.lines,
        "{what}: {:?}",
        cov.timeline
    );
    let entries = cov_entries(out.path());
    if feedback {
        assert!(!entries.is_empty(), "{what}: no cov-N corpus entry");
        assert_eq!(entries.len() as u64, cov.corpus_entries, "{what}");
    } else {
        assert_eq!(
            entries,
            Vec::<String>::new(),
            "{what}: a blind campaign adds none"
        );
        assert_eq!(cov.corpus_entries, 0, "{what}");
    }
    let index = std::fs::read_to_string(out.path().join("coverage-html/index.html")).unwrap();
    assert!(
        index.contains("<a href=\"worker.py.html\">worker.py</a>"),
        "{what}: {index}"
    );
    let page = std::fs::read_to_string(out.path().join("coverage-html/worker.py.html")).unwrap();
    assert!(
        page.contains("<tr class=\"hit\">"),
        "{what}: no hit line marked"
    );
    assert!(out.path().join("coverage.json").is_file(), "{what}");
    assert_eq!(summary.leftover_processes, vec![], "{what}");
    let alive: Vec<(i32, String)> = fakejvm::worker::leftover_processes(&summary.daemon_pgids);
    assert_eq!(alive, vec![], "{what}: processes alive after the campaign");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coverage_on_pyspark_4_0_5_and_python_3_11_traces_with_coverage_pys_ctracer() {
    let env = common::env_for("4.0.5");
    assert_eq!(
        env.python_version, "3.11",
        "the base Python of the pinned envs"
    );
    campaign_with_coverage(&env, ExecMode::Persistent, true, "CTracer").await;
    campaign_with_coverage(&env, ExecMode::WarmFork, false, "CTracer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coverage_on_pyspark_4_3_0_and_python_3_12_traces_with_sys_monitoring() {
    let env = env_py312("4.3.0");
    assert_eq!(env.python_version, "3.12");
    campaign_with_coverage(&env, ExecMode::WarmFork, true, "sys.monitoring").await;
    campaign_with_coverage(&env, ExecMode::Persistent, false, "sys.monitoring").await;
}

/// pyspark's own daemon and worker are not traced: bad input, one line, before anything starts.
#[test]
fn coverage_with_another_executor_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never");
    for flags in [
        &["--coverage", "--exec", "fork-server"][..],
        &["--coverage-blind", "--exec", "reuse"][..],
        &["--coverage-report", "r"][..],
    ] {
        let got = Command::cargo_bin("fakejvm")
            .expect("binary")
            .env_remove("FAKEJVM_PYTHON")
            .timeout(Duration::from_secs(60))
            .arg("fuzz")
            .args(flags)
            .arg("--out")
            .arg(&out)
            .assert()
            .code(2)
            .get_output()
            .clone();
        let err = String::from_utf8_lossy(&got.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{flags:?}: {err}");
        assert!(
            err.contains("use --exec persistent or --exec warm-fork"),
            "{flags:?}: {err}"
        );
        assert!(!out.exists(), "{flags:?}: nothing may start");
    }
}

/// `fuzz --bench` measures the persistent executor with tracing on beside it without.
#[test]
fn the_bench_has_traced_persistent_rows() {
    let env = common::env_for("4.0.5");
    let dir = tempfile::tempdir().unwrap();
    Command::cargo_bin("fakejvm")
        .expect("binary")
        .env_remove("FAKEJVM_PYTHON")
        .timeout(Duration::from_secs(300))
        .args(["fuzz", "--bench", "--bench-mode", "persistent"])
        .args(["--bench-time", "1s", "--bench-lanes", "1", "--python"])
        .arg(&env.python)
        .arg("--out")
        .arg(dir.path())
        .assert()
        .success()
        .stdout(predicates::str::contains("persistent+cov"));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("bench.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    for traced in [false, true] {
        let row = rows
            .iter()
            .find(|r| r["traced"] == traced && r["cases"] == "mutated")
            .unwrap_or_else(|| panic!("no row traced={traced}: {report:#}"));
        let cell = &row["cells"][0];
        assert!(cell["execs"].as_u64().unwrap() > 0, "{cell:#}");
        assert_eq!(cell["leftovers"], 0, "{cell:#}");
        assert_eq!(
            cell["coverage_lines"].as_u64().is_some_and(|l| l > 0),
            traced,
            "{cell:#}"
        );
    }
}
