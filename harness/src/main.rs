//! The `fakejvm` command line. Exit codes: 0 all passed, 1 something failed, 2 bad input
//! (a broken file, a wrong flag or version: one line naming it), 3 fakejvm itself failed (one
//! line), 130 / 143 interrupted by Ctrl-C / SIGTERM.

use clap::{Args, Parser, Subcommand};
use fakejvm::decode::{self, StreamDirection};
use fakejvm::error::{self, env_failure, BadInput};
use fakejvm::outputs::{self, Entry, OutputArgs, RunCommand, RunDoc, ScenarioPart};
use fakejvm::protocol::{Dialect, UdfLayout};
use fakejvm::pyenv::{self, PythonEnv};
use fakejvm::report::{self, Summary};
use fakejvm::scenario::{self, RunOptions, Scenario, Status};
use fakejvm::shard::Shard;
use fakejvm::worker;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "fakejvm",
    version,
    about = "A fake Spark JVM: drives real pyspark workers over the PythonRDD pipe protocol",
    long_about = "fakejvm plays the JVM side of Spark's Python worker protocol, byte for byte, against real \
                  `python -m pyspark.daemon` / `pyspark.worker` processes.\n\n\
                  Exit codes:\n  \
                  0    all passed (repro: the finding no longer reproduces)\n  \
                  1    something failed (repro: the finding still reproduces)\n  \
                  2    bad input: a broken file, a wrong flag, value or version; one line naming it\n  \
                  3    fakejvm itself failed (cannot write a report, an env will not provision, a daemon \
                  cannot be spawned); one line\n  \
                  130  interrupted by Ctrl-C\n  \
                  143  terminated by SIGTERM"
)]
struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG works too.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct EnvArgs {
    /// Use this Python interpreter (it must have pyspark installed) instead of a cached env; also
    /// a venv directory, a PEX file or a conda-pack / venv-pack archive (see `fakejvm doctor`).
    #[arg(long, env = "FAKEJVM_PYTHON", global = true)]
    python: Option<PathBuf>,
    /// The pyspark of the cached env to use, provisioned on first use: any release from 3.4.0
    /// (3.5.2, 4.1.4), or a line (4.1) for its pinned release.
    #[arg(long, global = true, value_name = "VERSION")]
    pyspark: Option<String>,
    #[command(flatten)]
    python_version: pyenv::PythonVersionArg,
}

impl EnvArgs {
    fn want(&self, flavor: pyenv::Flavor) -> pyenv::Want {
        pyenv::Want {
            flavor,
            ..pyenv::Want::new(self.pyspark.as_deref(), self.python_version.python_version)
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run scenario files (or every *.json under a directory) against real workers.
    Run {
        #[command(flatten)]
        env: EnvArgs,
        /// Scenario files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Force a request dialect instead of the one of the detected pyspark version.
        #[arg(long)]
        dialect: Option<Dialect>,
        #[command(flatten)]
        out: OutputArgs,
        /// Override every task's deadline (milliseconds).
        #[arg(long, value_name = "MS")]
        deadline_ms: Option<u64>,
        /// Keep the byte transcripts of every task in the JSON report.
        #[arg(long)]
        transcripts: bool,
    },
    /// The main job: run the bundled scenarios (default env) and replay the bundled goldens
    /// (each against its recorded pyspark version). Run from the repository root.
    Check {
        #[command(flatten)]
        env: EnvArgs,
        /// Scenario files or directories.
        #[arg(long, default_value = "scenarios")]
        scenarios: PathBuf,
        /// Golden folders or directories.
        #[arg(long, default_value = "golden")]
        golden: PathBuf,
        // --json, --junit: one report of the scenarios and the goldens; --shard: this shard's
        // share of each.
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Print a captured stream frame by frame as readable text.
    #[command(group(clap::ArgGroup::new("family").required(true).args(["dialect", "pyspark"])))]
    Decode {
        file: PathBuf,
        /// The stream's request family: A (3.3-4.0), B (4.1), C (4.2), D (4.3). UDF command
        /// sections are read as the family's newest line (A: 4.0); use --pyspark for 3.5.
        #[arg(long, conflicts_with = "pyspark")]
        dialect: Option<Dialect>,
        /// The pyspark line that wrote or read the stream (3.5, 4.0.5...): picks the family and
        /// the UDF command layout, which differ inside family A (3.5 vs 4.0).
        #[arg(long, value_name = "X.Y[.Z]", value_parser = decode::parse_udf_layout)]
        pyspark: Option<UdfLayout>,
        #[arg(long, value_enum)]
        direction: StreamDirection,
        /// Skip this many bytes first (e.g. a pid and auth reply at the start of a connection).
        #[arg(long, default_value_t = 0)]
        skip: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Record a golden from a real Spark JVM: runs COMMAND with PYSPARK_PYTHON set to a recording tap.
    Record(fakejvm::golden::RecordArgs),
    /// Replay goldens against live workers of the recorded version; compare the replies frame by frame.
    Replay(fakejvm::golden::ReplayArgs),
    /// (internal) The recording tap that `record` puts in place of PYSPARK_PYTHON.
    #[command(hide = true)]
    Tap(fakejvm::golden::TapArgs),
    /// Live fuzz campaign: mutated requests against real workers (fork server, reuse, spawn, persistent, warm fork); `fuzz merge` joins campaigns.
    Fuzz(fakejvm::fuzz::FuzzArgs),
    /// Replay a reproducer file: exit 0 if it no longer reproduces, 1 if it does.
    Repro(fakejvm::repro::ReproArgs),
    /// Run scenario files over many (pyspark, Python) envs and print a compatibility table.
    Matrix(fakejvm::matrix::MatrixArgs),
    /// Throughput: fakejvm vs the worker alone vs a real Spark local[1] JVM, side by side.
    Bench(fakejvm::bench::BenchArgs),
    /// Work with JSON reports: `report merge` joins the shards of a run (`--shard I/N`).
    Report {
        #[command(subcommand)]
        action: ReportAction,
    },
    /// Check a worker env before shipping it (interpreter, venv, PEX, conda-pack / venv-pack
    /// archive): Python, pyspark vs --spark, pandas/pyarrow/numpy, and real tasks and UDFs through it.
    #[command(after_help = fakejvm::doctor::AFTER_HELP)]
    Doctor(fakejvm::doctor::DoctorArgs),
    /// Show or set up the Python env (interpreter, pyspark version, dialect).
    Env {
        #[command(flatten)]
        env: EnvArgs,
        #[command(subcommand)]
        action: Option<EnvAction>,
    },
}

#[derive(Subcommand)]
enum ReportAction {
    /// Join the JSON reports of a run's N shards: prints the table the unsharded run prints
    /// and writes one JUnit file (--junit) and one JSON report (--json). A missing or repeated
    /// shard is bad input (exit 2); exit 1 if anything failed.
    Merge(fakejvm::merge::MergeArgs),
}

#[derive(Subcommand)]
enum EnvAction {
    /// Create (or check) the cached env for --pyspark and --python-version: installed with uv
    /// (itself installed from PyPI into the cache, once) or venv + pip, from the lock committed
    /// for a pinned env, else from a fresh resolution; either way the env records its lock
    /// (fakejvm-lock.txt in it). Prints the time it took. A combination that cannot exist (a
    /// Python the pyspark line does not declare, or one this machine lacks) is exit 2, one line
    /// saying why and how to get the interpreter.
    Setup {
        /// Rebuild exactly this lock (a fakejvm-lock.txt of another env, or one from
        /// harness/locks): it names its pyspark, Python and flavor.
        #[arg(long, value_name = "FILE")]
        locked: Option<PathBuf>,
        /// How to install: uv (fast; envs hardlink one shared cache), pip (venv + pip), or auto
        /// (uv when it can be had from PyPI, else pip).
        #[arg(long, value_enum, default_value_t = pyenv::InstallerChoice::Auto)]
        installer: pyenv::InstallerChoice,
        /// The lean env (pyspark and py4j only), which runs that have no UDF task use.
        #[arg(long, conflicts_with = "locked")]
        lean: bool,
        /// Rebuild the env even if it is complete (to measure, or to rebuild an env made before
        /// locks from its committed lock).
        #[arg(long)]
        rebuild: bool,
        /// Resolve afresh even where harness/locks has a lock (how ci/update-locks makes them).
        #[arg(long, conflicts_with = "locked")]
        resolve: bool,
    },
    /// Every cached env: pyspark, Python, flavor, dialect, size on disk, installer, lock.
    List,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help and --version: clap's own text, exit 0.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("fakejvm: {}", flag_error_line(&e));
            return ExitCode::from(2);
        }
    };
    // The tap stands in for a Python interpreter: it runs its own runtime and signal handling.
    let cli = Cli {
        command: match cli.command {
            Command::Tap(args) => return ExitCode::from(fakejvm::golden::tap_main(args)),
            other => other,
        },
        ..cli
    };
    init_logging(cli.verbose);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async {
        if let Err(e) = worker::install_interrupt_handler() {
            tracing::warn!("no Ctrl-C handler: {e}");
        }
        dispatch(cli.command).await
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("fakejvm: {}", error::message(&e));
            ExitCode::from(error::exit_code(&e))
        }
    }
}

/// A wrong flag as one line, like every other bad input: clap's message and tip without its
/// usage block, and where to read more.
fn flag_error_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let before_usage: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .filter(|l| !l.starts_with("For more information"))
        .collect();
    let line = error::one_line(&before_usage.join("\n"));
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    format!("{line} (see `fakejvm --help`)")
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn resolve_env(args: &EnvArgs, flavor: pyenv::Flavor) -> anyhow::Result<PythonEnv> {
    pyenv::resolve_with(args.python.as_deref(), &args.want(flavor))
        .map_err(|e| env_failure(None, e))
}

async fn dispatch(cmd: Command) -> anyhow::Result<u8> {
    match cmd {
        Command::Run {
            env,
            paths,
            dialect,
            out,
            deadline_ms,
            transcripts,
        } => {
            let opts = RunOptions {
                dialect,
                deadline: deadline_ms.map(Duration::from_millis),
                keep_transcripts: transcripts,
            };
            let (part, code) = run_scenarios(&env, &paths, &opts, out.shard()).await?;
            let doc = RunDoc {
                command: RunCommand::Run,
                shard: out.shard,
                scenarios: Some(part),
                goldens: None,
            };
            outputs::write(&[doc], &out)?;
            Ok(code)
        }
        Command::Check {
            env,
            scenarios,
            golden,
            out,
        } => {
            println!("== scenarios ({})", scenarios.display());
            let (part, a) =
                run_scenarios(&env, &[scenarios], &RunOptions::default(), out.shard()).await?;
            println!("== goldens ({})", golden.display());
            // With --python (or FAKEJVM_PYTHON), goldens of other pyspark versions are N/A.
            let mut replay = fakejvm::golden::ReplayArgs::replay(vec![golden], env.python.clone());
            replay.python_version = env.python_version.clone();
            replay.out.shard = out.shard;
            let (goldens, b) = fakejvm::golden::replay::replay_part(&replay).await?;
            let doc = RunDoc {
                command: RunCommand::Check,
                shard: out.shard,
                scenarios: Some(part),
                goldens: Some(goldens),
            };
            outputs::write(&[doc], &out)?;
            Ok(a.max(b))
        }
        Command::Report {
            action: ReportAction::Merge(args),
        } => fakejvm::merge::merge_cmd(args),
        Command::Decode {
            file,
            dialect,
            pyspark,
            direction,
            skip,
            json,
        } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| BadInput::new(&file, format!("cannot read: {e}")))?;
            let bytes = bytes.get(skip..).ok_or_else(|| {
                BadInput::new(
                    &file,
                    format!("--skip {skip} is past the end ({} bytes)", bytes.len()),
                )
            })?;
            let layout = pyspark
                .or(dialect.map(UdfLayout::default_for))
                .expect("clap requires --dialect or --pyspark");
            let d = decode::decode_as(layout, direction, bytes);
            let dialect = layout.dialect();
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print!("{}", d.to_text());
            }
            match &d.error {
                None => Ok(0),
                Some(e) => Err(BadInput::new(
                    &file,
                    format!(
                        "does not decode as a {direction:?} stream of dialect {dialect:?} ({layout}): {e}"
                    ),
                )
                .into()),
            }
        }
        Command::Bench(args) => fakejvm::bench::bench_cmd(args).await,
        Command::Matrix(args) => fakejvm::matrix::matrix_cmd(args).await,
        Command::Doctor(args) => fakejvm::doctor::doctor_cmd(args).await,
        Command::Fuzz(args) => fakejvm::fuzz::fuzz_cmd(args).await,
        Command::Repro(args) => fakejvm::repro::repro_cmd(args).await,
        Command::Record(args) => fakejvm::golden::record_cmd(args).await,
        Command::Replay(args) => fakejvm::golden::replay_cmd(args).await,
        Command::Tap(_) => unreachable!("handled before the runtime starts"),
        Command::Env { env, action } => match action {
            None => {
                let e = resolve_env(&env, pyenv::Flavor::Full)?;
                print_env(&e);
                Ok(0)
            }
            Some(EnvAction::Setup {
                locked,
                installer,
                lean,
                rebuild,
                resolve,
            }) => {
                // fakejvm's own env: --python (FAKEJVM_PYTHON) does not apply, as before.
                let locked = match &locked {
                    None => None,
                    Some(file) => Some(read_lock(file)?),
                };
                let flavor = if lean {
                    pyenv::Flavor::Lean
                } else {
                    pyenv::Flavor::Full
                };
                let opts = pyenv::SetupOptions {
                    installer,
                    locked,
                    rebuild,
                    resolve,
                };
                let e = pyenv::setup_with(&env.want(flavor), &opts)
                    .map_err(|e| env_failure(None, e))?;
                print_env(&e);
                Ok(0)
            }
            Some(EnvAction::List) => {
                print!("{}", env_list_text(&pyenv::list_envs()));
                Ok(0)
            }
        },
    }
}

/// Run this shard's share of the scenario files under `paths`, printing each verdict as it is
/// done and then the summary: the scenarios part of the run's report, and the exit code.
async fn run_scenarios(
    env: &EnvArgs,
    paths: &[PathBuf],
    opts: &RunOptions,
    shard: Shard,
) -> anyhow::Result<(ScenarioPart, u8)> {
    // Parse every file before starting anything: a broken file is exit 2, not a failure.
    let files = scenario::collect_files(paths).map_err(BadInput::from)?;
    if files.is_empty() {
        return Err(BadInput::msg(format!(
            "no scenario files (*.json) under {}",
            paths_text(paths)
        ))
        .into());
    }
    let mut scenarios = vec![];
    for f in &files {
        scenarios.push((f.clone(), Scenario::load(f).map_err(BadInput::from)?));
    }
    // Lean when no task needs pandas or pyarrow. The header says which env was used.
    let flavor = scenario::env_flavor(scenarios.iter().map(|(_, s)| s));
    let env = resolve_env(env, flavor)?;
    println!("{}", env_header(&env));
    // `worker_module: {"each_in": ...}` is one run per worker module of this pyspark, listed
    // now: a package this pyspark lacks is a broken file (exit 2) before any worker starts.
    let mut runs = vec![];
    for (f, s) in scenarios {
        let expanded = scenario::expand(&env, &f, &s).map_err(|e| match e {
            scenario::ExpandError::Scenario(problem) => {
                anyhow::Error::from(BadInput::new(&f, problem))
            }
            scenario::ExpandError::Env(e) => env_failure(Some(&f), e),
        })?;
        for one in expanded {
            runs.push((f.clone(), one));
        }
    }
    let version = env.pyspark.to_string();
    let keys: Vec<(String, String, &str)> = runs
        .iter()
        .map(|(f, s)| {
            let name = s.name.clone().unwrap_or_default();
            (f.display().to_string(), name, version.as_str())
        })
        .collect();
    let total = runs.len();
    let scenarios: Vec<(usize, (PathBuf, Scenario))> = runs
        .into_iter()
        .enumerate()
        .zip(shard.picks(&keys))
        .filter_map(|(s, picked)| picked.then_some(s))
        .collect();
    if shard != Shard::ALL {
        eprintln!(
            "fakejvm: shard {shard} runs {} of {total} scenario file(s)",
            scenarios.len()
        );
    }
    // Build every command up front: a function that does not compile is a broken
    // scenario file (exit 2), found before any worker starts. Builds are cached on disk.
    for (_, (f, s)) in &scenarios {
        s.check_for(env.pyspark, &env.python_version)
            .map_err(|problem| BadInput::new(f, problem))?;
        scenario::build_tasks(&env, s).map_err(|e| env_failure(Some(f), e))?;
    }
    let mut reports = vec![];
    let mut entries = vec![];
    for (order, (f, s)) in &scenarios {
        let r = scenario::run_scenario(&env, f, s, opts).await;
        println!("{}", report::scenario_lines(&r));
        entries.push(Entry::scenario(*order, s, &r));
        reports.push(r);
    }
    let summary = Summary::of(&reports);
    println!("{}", summary.line(&version));
    let part = ScenarioPart {
        paths: paths.iter().map(|p| p.display().to_string()).collect(),
        pyspark: version,
        python: env.python.display().to_string(),
        python_version: env.python_version.clone(),
        total,
        entries,
    };
    let failed = reports.iter().any(|r| r.status == Status::Failed);
    Ok((part, if failed { 1 } else { 0 }))
}

fn print_env(e: &PythonEnv) {
    let dialect = Dialect::for_version(e.pyspark.major, e.pyspark.minor);
    println!("python       {}", e.python.display());
    println!("python ver   {}", e.python_version);
    println!("pyspark      {}", e.pyspark);
    println!("pyspark dir  {}", e.pyspark_dir.display());
    match e.flavor {
        Some(f) => println!("env          {}", f.contents()),
        None => println!("env          the interpreter given (--python or FAKEJVM_PYTHON)"),
    }
    match dialect {
        Some(d) => println!("dialect      {d}"),
        None => println!("dialect      none: fakejvm speaks pyspark 3.3 and later"),
    }
}

fn paths_text(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first line of a run: which env its verdicts come from.
fn env_header(e: &PythonEnv) -> String {
    let which = match e.flavor {
        Some(f) => format!(
            "{f} env ({})",
            f.contents().split_once(": ").map_or("", |x| x.1)
        ),
        None => "given interpreter".into(),
    };
    format!(
        "env   pyspark {} | python {} | {which} | {}",
        e.pyspark,
        e.python_version,
        e.python.display()
    )
}

fn read_lock(file: &std::path::Path) -> anyhow::Result<pyenv::lock::Lock> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| BadInput::new(file, format!("cannot read the lock: {e}")))?;
    pyenv::lock::Lock::parse(&text).map_err(|problem| BadInput::new(file, problem).into())
}

/// `fakejvm env list`: one line per cached env, and what they share.
fn env_list_text(envs: &[pyenv::CachedEnv]) -> String {
    let root = pyenv::cache_root();
    if envs.is_empty() {
        return format!(
            "no envs under {} yet: `fakejvm env setup` provisions one (and every run does on first use)\n",
            root.join("envs").display()
        );
    }
    let mb = |b: u64| format!("{} MB", (b + 500_000) / 1_000_000);
    let mut out = format!(
        "{:<8} {:<6} {:<5} {:<7} {:>8} {:>8}  {:<11} {:<4} {}\n",
        "pyspark", "python", "env", "dialect", "size", "own", "installer", "lock", "dir"
    );
    for e in envs {
        let dialect = e
            .pyspark
            .as_deref()
            .and_then(|v| v.parse::<pyenv::PysparkVersion>().ok())
            .and_then(|v| Dialect::for_version(v.major, v.minor))
            .map_or("-".to_string(), |d| format!("{d:?}"));
        let unfinished = "(unfinished: no marker)";
        out.push_str(&format!(
            "{:<8} {:<6} {:<5} {:<7} {:>8} {:>8}  {:<11} {:<4} {}\n",
            e.pyspark.as_deref().unwrap_or("?"),
            e.python.as_deref().unwrap_or("?"),
            e.flavor.map_or("?".to_string(), |f| f.to_string()),
            dialect,
            mb(e.bytes),
            mb(e.own_bytes),
            e.installer
                .as_deref()
                // "uv 0.13.9" or "venv + pip" in the marker.
                .map(|i| if i.starts_with("uv") { "uv" } else { "pip" })
                .unwrap_or(if e.pyspark.is_some() { "pip-old" } else { "?" }),
            if e.locked { "yes" } else { "no" },
            if e.pyspark.is_some() {
                e.dir.display().to_string()
            } else {
                format!("{} {unfinished}", e.dir.display())
            },
        ));
    }
    let pythons: Vec<String> = pyenv::base::available()
        .iter()
        .map(|b| format!("{} ({})", b.version, b.found_by))
        .collect();
    let (uv_all, _) = pyenv::disk_usage(&pyenv::uv_cache());
    let own: u64 = envs.iter().map(|e| e.own_bytes).sum();
    out.push_str(&format!(
        "{} envs; on disk: {} of their own + {} in uv's shared cache ({})\n",
        envs.len(),
        mb(own),
        mb(uv_all),
        pyenv::uv_cache().display()
    ));
    out.push_str(&format!(
        "CPythons for --python-version: {}\n",
        if pythons.is_empty() {
            "none found".to_string()
        } else {
            pythons.join(", ")
        }
    ));
    out
}
