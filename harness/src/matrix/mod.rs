//! `fakejvm matrix`: scenario files over a set of (pyspark, Python) envs, as one compatibility
//! table.
//!
//! The cells are resolved first (ranges and globs against the releases pip knows), every env is
//! provisioned next (one at a time: pip is the slow part and shares one download cache), and
//! only then do the envs run, `--jobs` at a time, each through the same scenario runner and
//! judge as `fakejvm run`. A cell is the scenario's verdict in that env; an env that cannot
//! exist makes its whole column N/A with the reason.

pub mod html;
pub mod table;
pub mod versions;

use crate::error::{BadInput, HarnessError};
use crate::pyenv::{self, PythonEnv};
use crate::report;
use crate::scenario::{self, RunOptions, Scenario};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use table::{Column, ColumnResult, Table};
use versions::PythonMinor;

#[derive(clap::Args, Clone, Debug)]
pub struct MatrixArgs {
    /// Scenario files or directories.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// pyspark releases, comma-separated: exact (4.0.5), inclusive ranges (3.5.0..3.5.9) and line
    /// globs (4.0.*), the last two resolved against the releases `pip index versions` lists.
    #[arg(long, value_name = "SPEC", default_value = "4.0.5,4.1.4,4.2.1,4.3.0")]
    pub pyspark: String,
    /// CPython versions, comma-separated (3.11,3.12): the base interpreter of each env.
    #[arg(long, value_name = "X.Y,...")]
    pub python: Option<String>,
    /// How many envs run their scenarios at once (provisioning is always one at a time).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,
    /// Write the table, every cell's verdict and each env's timings as JSON (atomically).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write the table as one self-contained HTML page (atomically).
    #[arg(long, value_name = "PATH")]
    pub html: Option<PathBuf>,
    /// Override every task's deadline (milliseconds).
    #[arg(long, value_name = "MS")]
    pub deadline_ms: Option<u64>,
}

/// One env of the matrix, with what it cost.
#[derive(Clone, Debug, Serialize)]
pub struct ColumnInfo {
    pub label: String,
    #[serde(flatten)]
    pub column: Column,
    /// The env's interpreter, when it exists.
    pub python_path: Option<String>,
    pub provision_ms: u64,
    pub run_ms: u64,
}

#[derive(Serialize)]
struct JsonMatrix<'a> {
    fakejvm: &'static str,
    command: &'a str,
    provision_ms: u64,
    run_ms: u64,
    columns: &'a [ColumnInfo],
    table: &'a Table,
    differences: Vec<Difference<'a>>,
}

#[derive(Serialize)]
struct Difference<'a> {
    scenario: &'a str,
    column: String,
    cell: String,
    first_column: String,
}

/// The columns a spec names, in order: pyspark versions outer, Python inner.
pub fn columns_for(args: &MatrixArgs) -> Result<Vec<Column>, BadInput> {
    let items = versions::parse_pyspark_spec(&args.pyspark).map_err(BadInput::msg)?;
    let pythons = match &args.python {
        Some(spec) => versions::parse_python_spec(spec).map_err(BadInput::msg)?,
        None => vec![PythonMinor(
            pyenv::base_python_minor().map_err(|e| BadInput::msg(e.to_string()))?,
        )],
    };
    let all_exact = items
        .iter()
        .all(|i| matches!(i, versions::VersionItem::Exact(_)));
    let releases = if all_exact {
        // Exact releases need no index: pip says so itself if one does not exist.
        items
            .iter()
            .filter_map(|i| match i {
                versions::VersionItem::Exact(v) => Some(*v),
                _ => None,
            })
            .collect::<BTreeSet<_>>()
    } else {
        let stdout = pyenv::releases::pip_index_versions().map_err(BadInput::msg)?;
        versions::parse_pip_index(&stdout).ok_or_else(|| {
            BadInput::msg("`pip index versions pyspark` printed no \"Available versions:\" line")
        })?
    };
    let resolved = versions::resolve(&items, &releases).map_err(BadInput::msg)?;
    if let Some(old) = resolved
        .iter()
        .find(|v| crate::protocol::Dialect::for_version(v.major, v.minor).is_none())
    {
        return Err(BadInput::msg(format!(
            "--pyspark: {old} is older than fakejvm speaks (pyspark 3.3 and later)"
        )));
    }
    Ok(resolved
        .into_iter()
        .flat_map(|v| {
            pythons.iter().map(move |p| Column {
                pyspark: v,
                python: p.clone(),
            })
        })
        .collect())
}

/// The env of one column, provisioned if missing; Err is the reason the column is N/A.
fn env_for(col: &Column) -> Result<PythonEnv, String> {
    let base = pyenv::base_python_minor().map_err(|e| e.to_string())?;
    if col.python.0 != base {
        return Err(format!(
            "fakejvm builds envs from its base interpreter, Python {base}; set FAKEJVM_BASE_PYTHON to a python{} to run this column",
            col.python.0
        ));
    }
    pyenv::setup(&col.pyspark.to_string()).map_err(|e| e.to_string())
}

pub async fn matrix_cmd(args: MatrixArgs) -> anyhow::Result<u8> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    // Every file is parsed before anything is provisioned: a broken one is exit 2.
    let files = scenario::collect_files(&args.paths).map_err(BadInput::from)?;
    if files.is_empty() {
        return Err(BadInput::msg("no scenario files (*.json) under the paths given").into());
    }
    let mut scenarios = vec![];
    for f in &files {
        scenarios.push((f.clone(), Scenario::load(f).map_err(BadInput::from)?));
    }
    let columns = columns_for(&args)?;
    let total = columns.len();
    println!(
        "matrix: {} scenario file(s) x {total} env(s) ({})",
        scenarios.len(),
        columns
            .iter()
            .map(Column::label)
            .collect::<Vec<_>>()
            .join(", ")
    );

    let started = Instant::now();
    let bar = progress(total as u64);
    let mut envs = vec![];
    for col in &columns {
        bar.set_message(format!("provisioning {}", col.label()));
        let t0 = Instant::now();
        let env = env_for(col);
        bar.inc(1);
        envs.push((col.clone(), env, t0.elapsed()));
    }
    bar.finish_and_clear();
    let provision = started.elapsed();

    let opts = RunOptions {
        dialect: None,
        deadline: args.deadline_ms.map(Duration::from_millis),
        keep_transcripts: false,
    };
    let run_started = Instant::now();
    let results = run_columns(envs, &scenarios, &opts, args.jobs as usize, total).await;
    let run = run_started.elapsed();

    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let mut infos = vec![];
    let mut built = vec![];
    for (info, result) in results {
        built.push((info.column.clone(), result));
        infos.push(info);
    }
    let table = Table::build(&names, built);
    print!("{}", table.to_text());
    println!(
        "time: provisioning {:.1} s, running {:.1} s ({} job(s))",
        provision.as_secs_f64(),
        run.as_secs_f64(),
        args.jobs
    );
    if let Some(path) = &args.json {
        let diffs = table
            .differences()
            .into_iter()
            .map(|(r, c)| Difference {
                scenario: &table.rows[r].scenario,
                column: table.columns[c].label(),
                cell: table.rows[r].cells[c].short(),
                first_column: table.rows[r].cells[0].short(),
            })
            .collect();
        let doc = JsonMatrix {
            fakejvm: env!("CARGO_PKG_VERSION"),
            command: &command,
            provision_ms: provision.as_millis() as u64,
            run_ms: run.as_millis() as u64,
            columns: &infos,
            table: &table,
            differences: diffs,
        };
        let bytes = serde_json::to_vec_pretty(&doc)?;
        write(path, &bytes)?;
    }
    if let Some(path) = &args.html {
        write(path, html::page(&table, &command).as_bytes())?;
    }
    let (_, failed, _) = table.counts();
    Ok(if failed > 0 { 1 } else { 0 })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), HarnessError> {
    report::write_atomic(path, bytes).map_err(|e| HarnessError::io("write", path, e))
}

fn progress(len: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("a valid template"),
    );
    bar
}

/// Run every env's scenarios, `jobs` envs at a time, printing a line per env as it finishes;
/// results come back in column order.
async fn run_columns(
    envs: Vec<(Column, Result<PythonEnv, String>, Duration)>,
    scenarios: &[(PathBuf, Scenario)],
    opts: &RunOptions,
    jobs: usize,
    total: usize,
) -> Vec<(ColumnInfo, ColumnResult)> {
    let local = tokio::task::LocalSet::new();
    let scenarios = std::rc::Rc::new(scenarios.to_vec());
    local
        .run_until(async move {
            let gate = std::rc::Rc::new(tokio::sync::Semaphore::new(jobs));
            let done = std::rc::Rc::new(std::cell::Cell::new(0usize));
            let mut set = tokio::task::JoinSet::new();
            for (index, (col, env, provisioned)) in envs.into_iter().enumerate() {
                let (gate, scenarios, opts) = (gate.clone(), scenarios.clone(), opts.clone());
                let done = done.clone();
                set.spawn_local(async move {
                    let _permit = gate.acquire().await.expect("the gate is never closed");
                    let t0 = Instant::now();
                    let (python_path, result) = match env {
                        Err(why) => (None, ColumnResult::NotApplicable(why)),
                        Ok(env) => (
                            Some(env.python.display().to_string()),
                            run_column(&env, &scenarios, &opts).await,
                        ),
                    };
                    let info = ColumnInfo {
                        label: col.label(),
                        column: col,
                        python_path,
                        provision_ms: provisioned.as_millis() as u64,
                        run_ms: t0.elapsed().as_millis() as u64,
                    };
                    done.set(done.get() + 1);
                    println!("[{}/{total}] {}", done.get(), column_line(&info, &result));
                    (index, info, result)
                });
            }
            let mut out = vec![];
            while let Some(done) = set.join_next().await {
                out.push(done.expect("a matrix column task panicked"));
            }
            out.sort_by_key(|(i, _, _)| *i);
            out.into_iter().map(|(_, i, r)| (i, r)).collect()
        })
        .await
}

/// One env: every scenario, as `fakejvm run` would. A scenario that is invalid for this version
/// (a UDF kind it lacks, a function its pyspark cannot pickle) fails its cell here instead of
/// stopping the matrix: in a matrix that is a finding about the scenario.
async fn run_column(
    env: &PythonEnv,
    scenarios: &[(PathBuf, Scenario)],
    opts: &RunOptions,
) -> ColumnResult {
    let (mut reports, mut refused) = (vec![], vec![]);
    for (f, s) in scenarios {
        let problem = match s.check_for(env.pyspark, &env.python_version) {
            Err(problem) => Some(problem),
            Ok(()) => scenario::build_tasks(env, s).err().map(|e| e.to_string()),
        };
        match problem {
            Some(problem) => refused.push((f.display().to_string(), problem)),
            None => reports.push(scenario::run_scenario(env, f, s, opts).await),
        }
    }
    ColumnResult::Ran { reports, refused }
}

fn column_line(info: &ColumnInfo, result: &ColumnResult) -> String {
    match result {
        ColumnResult::NotApplicable(why) => format!("{}: N/A: {why}", info.label),
        ColumnResult::Ran { reports, refused } => {
            let s = report::Summary::of(reports);
            format!(
                "{}: {} passed, {} failed, {} not applicable ({:.1} s)",
                info.label,
                s.passed,
                s.failed + refused.len(),
                s.not_applicable,
                info.run_ms as f64 / 1000.0
            )
        }
    }
}
