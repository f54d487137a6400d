//! Shared by the integration tests: the pinned env of each family, provisioned on first use.
#![allow(dead_code)]

use fakejvm::fuzz::case::Case;
use fakejvm::fuzz::exec::{ExecMode, ExecOptions, Executor};
use fakejvm::fuzz::oracle::Judge;
use fakejvm::fuzz::reproducer::{self, Found, Reproducer, RequestBytes};
use fakejvm::protocol::Dialect;
use fakejvm::pyenv::{self, PythonEnv};
use fakejvm::scenario::{self, RunOptions, Scenario, ScenarioReport, Status};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod junit_reader;

/// One pinned pyspark per request family: A, B, C, D.
pub const FAMILIES: [&str; 4] = ["4.0.5", "4.1.4", "4.2.1", "4.3.0"];

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The cached env for `version`, provisioned if missing. Never skips: a missing env is a
/// failure that says how to get one.
pub fn env_for(version: &str) -> PythonEnv {
    let env = pyenv::resolve(None, Some(version)).unwrap_or_else(|e| {
        panic!(
            "no Python env with pyspark {version}: {e}\n\
             fakejvm provisions it itself on first use (pip needs to reach PyPI); to do it by hand run\n\
             `cargo run -p fakejvm -- env setup --pyspark {version}`"
        )
    });
    assert_eq!(
        env.pyspark.to_string(),
        version,
        "the env at {} has the wrong pyspark",
        env.python.display()
    );
    env
}

/// The lean env (pyspark and py4j) for `version`, which `fakejvm run` uses for RDD-only files:
/// provisioned here first, so a test that counts stderr lines never sees provisioning's.
pub fn lean_env_for(version: &str) -> PythonEnv {
    let want = pyenv::Want {
        flavor: pyenv::Flavor::Lean,
        ..pyenv::Want::new(Some(version), None)
    };
    pyenv::resolve_with(None, &want).unwrap_or_else(|e| {
        panic!(
            "no lean env with pyspark {version}: {e}\n\
             to provision it by hand run `cargo run -p fakejvm -- env setup --lean --pyspark {version}`"
        )
    })
}

pub async fn run_dir(env: &PythonEnv, dir: &str) -> Vec<ScenarioReport> {
    let files = scenario::collect_files(&[repo_root().join(dir)]).expect("scenario dir");
    assert!(!files.is_empty(), "no scenarios under {dir}");
    let mut out = vec![];
    for f in files {
        let s = Scenario::load(&f).unwrap_or_else(|e| panic!("{e}"));
        let r = scenario::run_scenario(env, &f, &s, &RunOptions::default()).await;
        eprintln!("{}", fakejvm::report::scenario_lines(&r));
        out.push(r);
    }
    out
}

pub fn by_name<'a>(reports: &'a [ScenarioReport], name: &str) -> &'a ScenarioReport {
    reports
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no scenario named {name}"))
}

/// Every scenario passed (or is N/A for a reason listed in `not_applicable`), none leaked.
pub fn assert_all_passed(reports: &[ScenarioReport], not_applicable: &[&str]) {
    for r in reports {
        assert!(
            r.leftovers.is_empty(),
            "{} leaked processes: {:?}",
            r.name,
            r.leftovers
        );
        match &r.status {
            Status::Passed => assert!(
                !not_applicable.contains(&r.name.as_str()),
                "{} ran but was expected N/A",
                r.name
            ),
            Status::NotApplicable { why } => {
                assert!(
                    not_applicable.contains(&r.name.as_str()),
                    "{} was N/A: {why}",
                    r.name
                )
            }
            Status::Failed => panic!("scenario failed:\n{}", fakejvm::report::scenario_lines(r)),
        }
    }
}

/// Run `case` once on a fresh fork-server worker and write what it ended in as a reproducer.
pub async fn record_reproducer(
    env: &PythonEnv,
    case: &Case,
    dir: &Path,
    name: &str,
) -> (PathBuf, Reproducer) {
    let exec = Executor::start(
        env.clone(),
        Dialect::A,
        ExecMode::ForkServer,
        ExecOptions::default(),
    )
    .await
    .unwrap();
    let obs = exec.exec_fresh(Arc::new(case.to_bytes())).await;
    let judge = Judge {
        expected: vec![],
        depth: 1,
    };
    let signature = judge.signature(&obs, case, None);
    let report = exec.shutdown().await.unwrap();
    assert_eq!(report.leftovers, vec![]);
    let path = dir.join(format!("{name}.json"));
    let r = Reproducer {
        kind: reproducer::KIND.into(),
        format: reproducer::FORMAT,
        title: format!("{} (pyspark {})", signature.text(), env.pyspark),
        pyspark: env.pyspark.to_string(),
        python: env.python_version.clone(),
        dialect: Dialect::A,
        mode: ExecMode::ForkServer,
        found_in: None,
        confirmed_in: None,
        close_after_write: obs.close_after_write,
        deadline_ms: 2000,
        memory_limit_mb: None,
        signature_id: signature.id(),
        signature,
        signature_frames: 1,
        request: RequestBytes::of(case),
        round_trip: None,
        outcome: serde_json::to_value(&obs.outcome).unwrap(),
        traceback: obs.traceback.clone(),
        worker_at_deadline: None,
        fault_dump: None,
        native_stack: None,
        native_stack_missing: None,
        minimised: true,
        minimise: None,
        original_len: case.len(),
        found: Found {
            at: "2026-01-01T00:00:00Z".into(),
            seed: "hand-made".into(),
            exec: 0,
            count: 1,
        },
        replay: format!("fakejvm repro {}", path.display()),
    };
    r.save(&path).unwrap();
    (path, r)
}

/// A suite of fault-style scenarios (scenarios/faults, scenarios/lifecycle) and the environment
/// variable that narrows it to the files whose name contains its value.
pub struct Suite {
    pub dir: &'static str,
    pub filter_var: &'static str,
}

impl Suite {
    fn filter(&self) -> String {
        std::env::var(self.filter_var).unwrap_or_default()
    }

    /// Every chosen scenario on `version`, printed with its fault lines; then that every one
    /// passed (or is N/A exactly for `not_applicable`), leaked nothing, and every fault fired
    /// and held; then that no process of the suite is left.
    pub async fn run(&self, version: &str, not_applicable: &[&str]) -> Vec<ScenarioReport> {
        let env = env_for(version);
        let files = scenario::collect_files(&[repo_root().join(self.dir)]).expect(self.dir);
        let filter = self.filter();
        let chosen: Vec<_> = files
            .iter()
            .filter(|f| f.to_string_lossy().contains(&filter))
            .collect();
        assert!(
            !chosen.is_empty(),
            "{}={filter:?} matches none of the {} scenarios of {}",
            self.filter_var,
            files.len(),
            self.dir
        );
        let mut reports = vec![];
        for f in chosen {
            let s = Scenario::load(f).unwrap_or_else(|e| panic!("{e}"));
            // One run per worker module for `worker_module: {"each_in": ...}`.
            let runs = scenario::expand(&env, f, &s).unwrap_or_else(|e| panic!("{e}"));
            for s in runs {
                let r = scenario::run_scenario(&env, f, &s, &RunOptions::default()).await;
                eprintln!("{}", fakejvm::report::scenario_lines(&r));
                if !r.faults.is_empty() {
                    eprintln!("{}", fakejvm::faults::fault_lines(&r.faults));
                }
                reports.push(r);
            }
        }
        assert_nothing_left(&reports, self.dir);
        let problems = suite_problems(&reports, not_applicable);
        assert!(
            problems.is_empty(),
            "pyspark {version}: {} problem(s):\n{}",
            problems.len(),
            problems.join("\n")
        );
        reports
    }

    /// The report of scenario `name`: it must be there, unless the filter left it out.
    pub fn named<'a>(
        &self,
        reports: &'a [ScenarioReport],
        name: &str,
    ) -> Option<&'a ScenarioReport> {
        let found = reports.iter().find(|r| r.name == name);
        assert!(
            found.is_some() || !self.filter().is_empty(),
            "no scenario named {name} in {}",
            self.dir
        );
        found
    }
}

fn suite_problems(reports: &[ScenarioReport], not_applicable: &[&str]) -> Vec<String> {
    let mut problems = vec![];
    for r in reports {
        if !r.leftovers.is_empty() {
            problems.push(format!("{} leaked processes: {:?}", r.name, r.leftovers));
        }
        match &r.status {
            Status::Passed if not_applicable.contains(&r.name.as_str()) => {
                problems.push(format!("{} ran but was expected N/A", r.name))
            }
            Status::NotApplicable { why } if !not_applicable.contains(&r.name.as_str()) => {
                problems.push(format!("{} was N/A: {why}", r.name))
            }
            Status::Failed => problems.push(format!(
                "{}\n{}",
                fakejvm::report::scenario_lines(r),
                fakejvm::faults::fault_lines(&r.faults)
            )),
            _ => {}
        }
        for f in &r.faults {
            if !(f.fired && f.ok) {
                problems.push(format!("{}: fault #{} {:?}", r.name, f.index, f.problem));
            }
        }
    }
    problems
}

/// Every process a suite started is gone: nothing in a daemon's group or a direct worker's, and
/// no pid the reports name (task workers, children a fault held or saw fail a call) alive; a
/// stopped process counts as alive, a zombie as gone.
pub fn assert_nothing_left(reports: &[ScenarioReport], what: &str) {
    use fakejvm::faults::Event;
    let mut groups: Vec<i32> = reports.iter().filter_map(|r| r.daemon_pid).collect();
    // A direct worker leads its own group.
    groups.extend(
        reports
            .iter()
            .filter(|r| !r.mode.uses_daemon())
            .flat_map(|r| r.tasks.iter().filter_map(|t| t.pid)),
    );
    let mut pids: Vec<i32> = reports
        .iter()
        .flat_map(|r| r.tasks.iter().filter_map(|t| t.pid))
        .collect();
    for e in reports
        .iter()
        .flat_map(|r| &r.faults)
        .flat_map(|f| &f.events)
    {
        if let Event::ChildHeld { pid, .. } | Event::CallFailed { pid, .. } = e {
            pids.push(*pid);
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let alive: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let rest: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
                let (state, pgrp) = (rest.first()?.to_string(), rest.get(2)?.parse::<i32>().ok()?);
                let ours = groups.contains(&pgrp) || pids.contains(&pid);
                (ours && state != "Z").then(|| format!("pid {pid} group {pgrp} state {state}"))
            })
            .collect();
        if alive.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "processes of {what} are still alive: {alive:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A live process found by [`alive_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub cmdline: String,
}

impl std::fmt::Display for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.pid, self.cmdline)
    }
}

/// Live (not zombie) processes whose environment holds `mark` (NAME=VALUE): how a test finds
/// what fakejvm started for it (an owner mark, a FAKEJVM_TEST_RUN tag) and checks none is left.
pub fn alive_with(mark: &str) -> Vec<Proc> {
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if !env.split(|b| *b == 0).any(|v| v == mark.as_bytes()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .collect();
        if matches!(fields[0], "Z" | "X") {
            continue;
        }
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&raw)
            .replace('\0', " ")
            .trim()
            .to_string();
        found.push(Proc {
            pid,
            ppid: fields[1].parse().unwrap(),
            cmdline,
        });
    }
    found
}
