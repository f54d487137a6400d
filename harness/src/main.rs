//! The `fakejvm` command line. Exit codes: 0 all passed, 1 something failed, 2 bad input
//! (a broken file, a wrong flag or version: one line naming it), 3 fakejvm itself failed (one
//! line), 130 / 143 interrupted by Ctrl-C / SIGTERM.

use clap::{Args, Parser, Subcommand};
use fakejvm::decode::{self, StreamDirection};
use fakejvm::error::{self, env_failure, BadInput, HarnessError};
use fakejvm::protocol::{Dialect, UdfLayout};
use fakejvm::pyenv::{self, PythonEnv};
use fakejvm::report::{self, Summary};
use fakejvm::scenario::{self, RunOptions, Scenario, Status};
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
    /// Use this Python interpreter (it must have pyspark installed) instead of a cached env.
    #[arg(long, env = "FAKEJVM_PYTHON", global = true)]
    python: Option<PathBuf>,
    /// The pyspark version of the cached env to use (provisioned on first use).
    #[arg(long, global = true, value_name = "VERSION")]
    pyspark: Option<String>,
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
        /// Write a machine-readable report here (written atomically).
        #[arg(long, value_name = "PATH")]
        json: Option<PathBuf>,
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
        /// Write the scenarios' machine-readable report here (written atomically).
        #[arg(long, value_name = "PATH")]
        json: Option<PathBuf>,
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
    /// Throughput: fakejvm vs the worker alone vs a real Spark local[1] JVM, side by side.
    Bench(fakejvm::bench::BenchArgs),
    /// Show or set up the Python env (interpreter, pyspark version, dialect).
    Env {
        #[command(flatten)]
        env: EnvArgs,
        #[command(subcommand)]
        action: Option<EnvAction>,
    },
}

#[derive(Subcommand)]
enum EnvAction {
    /// Create (or check) the cached venv for a pyspark version.
    Setup,
    /// List the pinned versions and which are already provisioned.
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

fn resolve_env(args: &EnvArgs) -> anyhow::Result<PythonEnv> {
    pyenv::resolve(args.python.as_deref(), args.pyspark.as_deref())
        .map_err(|e| env_failure(None, e))
}

async fn dispatch(cmd: Command) -> anyhow::Result<u8> {
    match cmd {
        Command::Run {
            env,
            paths,
            dialect,
            json,
            deadline_ms,
            transcripts,
        } => {
            let opts = RunOptions {
                dialect,
                deadline: deadline_ms.map(Duration::from_millis),
                keep_transcripts: transcripts,
            };
            run_scenarios(&env, &paths, &opts, json.as_deref()).await
        }
        Command::Check {
            env,
            scenarios,
            golden,
            json,
        } => {
            println!("== scenarios ({})", scenarios.display());
            let a =
                run_scenarios(&env, &[scenarios], &RunOptions::default(), json.as_deref()).await?;
            println!("== goldens ({})", golden.display());
            // With --python (or FAKEJVM_PYTHON), goldens of other pyspark versions are N/A.
            let b = fakejvm::golden::replay_cmd(fakejvm::golden::ReplayArgs::replay(
                vec![golden],
                env.python.clone(),
            ))
            .await?;
            Ok(a.max(b))
        }
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
        Command::Fuzz(args) => fakejvm::fuzz::fuzz_cmd(args).await,
        Command::Repro(args) => fakejvm::repro::repro_cmd(args).await,
        Command::Record(args) => fakejvm::golden::record_cmd(args).await,
        Command::Replay(args) => fakejvm::golden::replay_cmd(args).await,
        Command::Tap(_) => unreachable!("handled before the runtime starts"),
        Command::Env { env, action } => match action {
            None => {
                let e = resolve_env(&env)?;
                print_env(&e);
                Ok(0)
            }
            Some(EnvAction::Setup) => {
                let v = env.pyspark.as_deref().unwrap_or(pyenv::DEFAULT_PYSPARK);
                let e = pyenv::setup(v).map_err(|e| env_failure(None, e))?;
                print_env(&e);
                Ok(0)
            }
            Some(EnvAction::List) => {
                for v in pyenv::PINNED {
                    let (dir, ready) = pyenv::cached_env(v).map_err(|e| env_failure(None, e))?;
                    let version: pyenv::PysparkVersion = v
                        .parse()
                        .map_err(|e| HarnessError::new(format!("the pinned version {v}: {e}")))?;
                    let d = Dialect::for_version(version.major, version.minor)
                        .map(|d| format!("{d:?}"))
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "pyspark {v:<6} dialect {d}  {}  {}",
                        if ready { "ready  " } else { "missing" },
                        dir.display()
                    );
                }
                Ok(0)
            }
        },
    }
}

async fn run_scenarios(
    env: &EnvArgs,
    paths: &[PathBuf],
    opts: &RunOptions,
    json: Option<&std::path::Path>,
) -> anyhow::Result<u8> {
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
    let env = resolve_env(env)?;
    // Build every command up front: a function that does not compile is a broken
    // scenario file (exit 2), found before any worker starts. Builds are cached on disk.
    for (f, s) in &scenarios {
        s.check_for(env.pyspark, &env.python_version)
            .map_err(|problem| BadInput::new(f, problem))?;
        scenario::build_tasks(&env, s).map_err(|e| env_failure(Some(f), e))?;
    }
    let mut reports = vec![];
    for (f, s) in &scenarios {
        let r = scenario::run_scenario(&env, f, s, opts).await;
        println!("{}", report::scenario_lines(&r));
        reports.push(r);
    }
    let summary = Summary::of(&reports);
    println!("{}", summary.line(&env.pyspark.to_string()));
    if let Some(path) = json {
        report::write_json(path, &env.pyspark.to_string(), &env.python, &reports)
            .map_err(|e| HarnessError::io("write the JSON report", path, e))?;
    }
    Ok(if reports.iter().any(|r| r.status == Status::Failed) {
        1
    } else {
        0
    })
}

fn print_env(e: &PythonEnv) {
    let dialect = Dialect::for_version(e.pyspark.major, e.pyspark.minor);
    println!("python       {}", e.python.display());
    println!("python ver   {}", e.python_version);
    println!("pyspark      {}", e.pyspark);
    println!("pyspark dir  {}", e.pyspark_dir.display());
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
