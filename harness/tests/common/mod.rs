//! Shared by the integration tests: the pinned env of each family, provisioned on first use.
#![allow(dead_code)]

use fakejvm::pyenv::{self, PythonEnv};
use fakejvm::scenario::{self, RunOptions, Scenario, ScenarioReport, Status};
use std::path::{Path, PathBuf};

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
