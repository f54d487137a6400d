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
use crate::junit;
use crate::outputs::{Entry, OutputArgs, RunCommand, RunDoc, ScenarioPart};
use crate::protocol::Dialect;
use crate::pyenv::{self, PythonEnv};
use crate::report;
use crate::scenario::{self, RunOptions, Scenario, ScenarioReport, Status};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};
use table::{Cell, Column, Table};
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
    /// --json: the table, each env's timings and every cell's report (`report merge` joins the
    /// shards' ones); --junit: a suite per env; --shard I/N: this runner's share of the cells.
    #[command(flatten)]
    pub out: OutputArgs,
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

/// The JSON report: `runs` (one per env, the form `run --json` writes) is what `report merge`
/// reads; the rest is the table as printed.
#[derive(Serialize)]
struct MatrixJson<'a> {
    fakejvm: &'static str,
    command: &'a str,
    provision_ms: u64,
    run_ms: u64,
    columns: &'a [ColumnInfo],
    table: &'a Table,
    differences: Vec<Difference>,
    runs: Vec<serde_json::Value>,
}

#[derive(Serialize)]
pub struct Difference {
    pub scenario: String,
    pub column: String,
    pub cell: String,
    pub first_column: String,
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

/// Why a column has no env: it cannot exist (N/A, with the reason and how to get the
/// interpreter), or building it failed (fakejvm's own failure: every cell of it fails).
#[derive(Clone, Debug)]
enum NoEnv {
    NotApplicable(String),
    Failed(String),
}

/// The env of one column, provisioned if missing: lean (pyspark and py4j) when no scenario has
/// a UDF task, as `run` chooses.
fn env_for(col: &Column, flavor: pyenv::Flavor) -> Result<PythonEnv, NoEnv> {
    let python = col
        .python
        .0
        .parse::<pyenv::PythonMinor>()
        .map_err(NoEnv::Failed)?;
    let want = pyenv::Want {
        pyspark: Some(col.pyspark.to_string()),
        python_version: Some(python),
        flavor,
    };
    pyenv::resolve_with(None, &want).map_err(|e| match e.not_applicable() {
        Some(why) => NoEnv::NotApplicable(why),
        None => NoEnv::Failed(e.to_string()),
    })
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
    // A shard takes cells, keyed by (scenario, env): it provisions only the envs it has cells of.
    let shard = args.out.shard();
    let keys: Vec<(String, Column)> = columns
        .iter()
        .flat_map(|c| {
            files
                .iter()
                .map(move |f| (f.display().to_string(), c.clone()))
        })
        .collect();
    let picks = shard.picks(&keys);
    let picked: Vec<Vec<bool>> = picks.chunks(files.len()).map(<[bool]>::to_vec).collect();
    let total = columns.len();
    println!(
        "matrix: {} scenario file(s) x {total} env(s) ({}){}",
        scenarios.len(),
        columns
            .iter()
            .map(Column::label)
            .collect::<Vec<_>>()
            .join(", "),
        args.out
            .shard
            .map(|s| format!(
                ", shard {s}: {} cell(s)",
                picks.iter().filter(|p| **p).count()
            ))
            .unwrap_or_default()
    );

    let flavor = scenario::env_flavor(scenarios.iter().map(|(_, s)| s));
    let full = flavor == pyenv::Flavor::Full;
    println!(
        "envs: {}",
        if full {
            "full (pyspark, pandas, pyarrow, numpy: a scenario has a UDF task)"
        } else {
            "lean (pyspark and py4j only: no scenario has a UDF task)"
        }
    );
    let started = Instant::now();
    let wanted = picked.iter().filter(|p| p.contains(&true)).count();
    let bar = progress(wanted as u64);
    let mut envs = vec![];
    for (col, picks) in columns.iter().zip(&picked) {
        let t0 = Instant::now();
        let env = if picks.contains(&true) {
            bar.set_message(format!("provisioning {}", col.label()));
            let env = env_for(col, flavor);
            bar.inc(1);
            env
        } else {
            Err(NoEnv::NotApplicable("not in this shard".into()))
        };
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
    let ran = run_columns(envs, &scenarios, &picked, &opts, args.jobs as usize).await;
    let run = run_started.elapsed();

    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let paths: Vec<String> = args.paths.iter().map(|p| p.display().to_string()).collect();
    let mut infos = vec![];
    let mut cells = vec![];
    let mut docs = vec![];
    for c in ran {
        let entries = c
            .cells
            .iter()
            .map(|(order, report, cell)| {
                let mut e = Entry::scenario(*order, &scenarios[*order].1, report);
                if let serde_json::Value::Object(o) = &mut e.json {
                    o.insert(
                        "matrix_cell".into(),
                        serde_json::to_value(cell).expect("cells serialize"),
                    );
                }
                e
            })
            .collect();
        docs.push(RunDoc {
            command: RunCommand::Matrix,
            shard: args.out.shard,
            scenarios: Some(ScenarioPart {
                paths: paths.clone(),
                pyspark: c.info.column.pyspark.to_string(),
                python: c.info.python_path.clone().unwrap_or_default(),
                python_version: c.info.column.python.0.clone(),
                total: files.len(),
                entries,
            }),
            goldens: None,
        });
        cells.push((
            c.info.column.clone(),
            c.cells.into_iter().map(|(o, _, cell)| (o, cell)).collect(),
        ));
        infos.push(c.info);
    }
    let table = Table::build(&names, cells);
    print!("{}", table.to_text());
    println!(
        "time: provisioning {:.1} s, running {:.1} s ({} job(s))",
        provision.as_secs_f64(),
        run.as_secs_f64(),
        args.jobs
    );
    if let Some(path) = &args.out.json {
        let doc = MatrixJson {
            fakejvm: env!("CARGO_PKG_VERSION"),
            command: &command,
            provision_ms: provision.as_millis() as u64,
            run_ms: run.as_millis() as u64,
            columns: &infos,
            table: &table,
            differences: differences(&table),
            runs: docs.iter().map(RunDoc::to_json).collect(),
        };
        write(path, &serde_json::to_vec_pretty(&doc)?)?;
    }
    if let Some(path) = &args.out.junit {
        let suites: Vec<_> = docs.iter().flat_map(RunDoc::suites).collect();
        junit::write(path, &suites)
            .map_err(|e| HarnessError::io("write the JUnit report", path, e))?;
    }
    if let Some(path) = &args.html {
        write(path, html::page(&table, &command).as_bytes())?;
    }
    let (_, failed, _) = table.counts();
    Ok(if failed > 0 { 1 } else { 0 })
}

pub fn differences(table: &Table) -> Vec<Difference> {
    table
        .differences()
        .into_iter()
        .map(|(r, c)| Difference {
            scenario: table.rows[r].scenario.clone(),
            column: table.columns[c].label(),
            cell: table.rows[r].cells[c].short(),
            first_column: table.rows[r].cells[0].short(),
        })
        .collect()
}

/// The table of merged matrix shards, rebuilt from the cells each entry carries.
pub fn table_of_runs(runs: &[RunDoc]) -> Option<Table> {
    let mut names: Vec<String> = vec![];
    let mut columns = vec![];
    for run in runs {
        if run.command != RunCommand::Matrix {
            return None;
        }
        let part = run.scenarios.as_ref()?;
        let col = Column {
            pyspark: part.pyspark.parse().ok()?,
            python: PythonMinor(part.python_version.clone()),
        };
        let mut cells = std::collections::BTreeMap::new();
        for e in &part.entries {
            let cell: table::Cell =
                serde_json::from_value(e.json.get("matrix_cell")?.clone()).ok()?;
            let file = e.json.get("file")?.as_str()?.to_string();
            if names.len() <= e.unit.order {
                names.resize(e.unit.order + 1, String::new());
            }
            names[e.unit.order] = file;
            cells.insert(e.unit.order, cell);
        }
        columns.push((col, cells));
    }
    Some(Table::build(&names, columns))
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

/// What one env produced: (scenario index, report, cell) for each cell it had.
struct ColumnRun {
    info: ColumnInfo,
    cells: Vec<(usize, ScenarioReport, Cell)>,
}

/// Run every env's scenarios, `jobs` envs at a time, printing a line per env as it finishes;
/// results come back in column order.
async fn run_columns(
    envs: Vec<(Column, Result<PythonEnv, NoEnv>, Duration)>,
    scenarios: &[(PathBuf, Scenario)],
    picked: &[Vec<bool>],
    opts: &RunOptions,
    jobs: usize,
) -> Vec<ColumnRun> {
    let total = envs.len();
    let local = tokio::task::LocalSet::new();
    let scenarios = Rc::new(scenarios.to_vec());
    local
        .run_until(async move {
            let gate = Rc::new(tokio::sync::Semaphore::new(jobs));
            let done = Rc::new(std::cell::Cell::new(0usize));
            let mut set = tokio::task::JoinSet::new();
            for (index, (col, env, provisioned)) in envs.into_iter().enumerate() {
                let (gate, scenarios, opts, done) =
                    (gate.clone(), scenarios.clone(), opts.clone(), done.clone());
                let picks = picked[index].clone();
                set.spawn_local(async move {
                    let _permit = gate.acquire().await.expect("the gate is never closed");
                    let t0 = Instant::now();
                    let python_path = env.as_ref().ok().map(|e| e.python.display().to_string());
                    let cells = run_column(&col, env, &scenarios, &picks, &opts).await;
                    let info = ColumnInfo {
                        label: col.label(),
                        column: col,
                        python_path,
                        provision_ms: provisioned.as_millis() as u64,
                        run_ms: t0.elapsed().as_millis() as u64,
                    };
                    done.set(done.get() + 1);
                    println!("[{}/{total}] {}", done.get(), column_line(&info, &cells));
                    (index, ColumnRun { info, cells })
                });
            }
            let mut out = vec![];
            while let Some(joined) = set.join_next().await {
                out.push(joined.expect("a matrix column task panicked"));
            }
            out.sort_by_key(|(i, _)| *i);
            out.into_iter().map(|(_, c)| c).collect()
        })
        .await
}

/// One env: every scenario it has a cell of, as `fakejvm run` would. A scenario that is invalid
/// for this version (a UDF kind it lacks, a function its pyspark cannot pickle) fails its cell
/// (`refused`) instead of stopping the matrix: in a matrix that is a finding about the scenario.
async fn run_column(
    col: &Column,
    env: Result<PythonEnv, NoEnv>,
    scenarios: &[(PathBuf, Scenario)],
    picks: &[bool],
    opts: &RunOptions,
) -> Vec<(usize, ScenarioReport, Cell)> {
    let mut out = vec![];
    for (i, (f, s)) in scenarios.iter().enumerate() {
        if !picks[i] {
            continue;
        }
        let env = match &env {
            Err(NoEnv::NotApplicable(why)) => {
                let status = Status::NotApplicable { why: why.clone() };
                let r = blank_report(col, f, s, status, vec![]);
                out.push((i, r, Cell::NotApplicable { why: why.clone() }));
                continue;
            }
            Err(NoEnv::Failed(why)) => {
                let problem = format!("no env: {why}");
                let r = blank_report(col, f, s, Status::Failed, vec![problem]);
                let cell = Cell::Fail {
                    outcome: "Harness".into(),
                    verdict: report::scenario_lines(&r),
                };
                out.push((i, r, cell));
                continue;
            }
            Ok(env) => env,
        };
        // `worker_module: {"each_in": ...}` is one run per module this pyspark ships; the row
        // is the file, so its cell is all of them together.
        let runs = match scenario::expand(env, f, s) {
            Ok(runs) => runs,
            Err(e) => {
                let problem = match e {
                    scenario::ExpandError::Scenario(p) => p,
                    scenario::ExpandError::Env(e) => e.to_string(),
                };
                out.push(refused(col, f, s, i, problem));
                continue;
            }
        };
        let mut cells = vec![];
        let mut last = None;
        for one in &runs {
            let problem = match one.check_for(env.pyspark, &env.python_version) {
                Err(problem) => Some(problem),
                Ok(()) => scenario::build_tasks(env, one).err().map(|e| e.to_string()),
            };
            let (r, cell) = match problem {
                Some(problem) => {
                    let (_, r, cell) = refused(col, f, one, i, problem);
                    (r, cell)
                }
                None => {
                    let r = scenario::run_scenario(env, f, one, opts).await;
                    let cell = Cell::of(&r);
                    (r, cell)
                }
            };
            cells.push(cell);
            last = Some(r);
        }
        let r = last.expect("expand gives at least one scenario");
        out.push((i, r, Cell::all(cells)));
    }
    out
}

/// A scenario that cannot run on this version as written: its cell fails as `refused`.
fn refused(
    col: &Column,
    f: &Path,
    s: &Scenario,
    i: usize,
    problem: String,
) -> (usize, ScenarioReport, Cell) {
    let problem = format!("cannot run here as written: {problem}");
    let r = blank_report(col, f, s, Status::Failed, vec![problem]);
    let cell = Cell::Fail {
        outcome: "refused".into(),
        verdict: report::scenario_lines(&r),
    };
    (i, r, cell)
}

/// The report of a scenario that did not run in this env: N/A, or refused with its problem in
/// `notes` (the verdict text and JUnit show it).
fn blank_report(
    col: &Column,
    f: &Path,
    s: &Scenario,
    status: Status,
    notes: Vec<String>,
) -> ScenarioReport {
    let dialect = Dialect::for_version(col.pyspark.major, col.pyspark.minor).unwrap_or(Dialect::D);
    ScenarioReport {
        notes,
        ..ScenarioReport::blank(f, s, &col.pyspark, dialect, status)
    }
}

fn column_line(info: &ColumnInfo, cells: &[(usize, ScenarioReport, Cell)]) -> String {
    let count = |f: fn(&Cell) -> bool| cells.iter().filter(|(_, _, c)| f(c)).count();
    format!(
        "{}: {} passed, {} failed, {} not applicable ({:.1} s)",
        info.label,
        count(|c| matches!(c, Cell::Pass { .. })),
        count(|c| matches!(c, Cell::Fail { .. })),
        count(|c| matches!(c, Cell::NotApplicable { .. })),
        info.run_ms as f64 / 1000.0
    )
}
