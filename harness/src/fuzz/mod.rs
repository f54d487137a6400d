//! The live-worker fuzzer: `fakejvm fuzz`.
//!
//! Requests are mutated as typed frames ([`case`], [`mutate`]) starting from [`seeds`], run on
//! real workers forked by one long-lived daemon, on reused workers, or in fakejvm's persistent
//! and warm-fork servers ([`exec`], [`server`]), judged by the oracles ([`oracle`]),
//! deduplicated by [`signature`], shrunk ([`minimise`]) and saved as [`reproducer`] files by the
//! [`campaign`] (its [`state`] resumes, its [`summary`] reports); `fakejvm repro` (crate::repro)
//! replays them and `fakejvm fuzz merge` ([`merge`]) joins campaigns. [`bench`] measures execs
//! per second of the ways to run a case. The in-process targets over fakejvm's own decoders are
//! a separate cargo-fuzz crate (`fuzz/` at the repo root).

pub mod arrow_mutation;
pub mod bench;
pub mod campaign;
pub mod case;
pub mod coverage;
pub mod dial;
pub mod exec;
pub mod merge;
pub mod minimise;
pub mod mutate;
pub mod native_stack;
pub mod oracle;
pub mod reproducer;
pub mod seeds;
pub mod server;
pub mod signature;
pub mod state;
pub mod summary;
pub mod udf_mutation;

pub use bench::{fuzz_bench, BenchConfig, BenchReport};
pub use campaign::CampaignConfig;
pub use exec::ExecMode;
pub use summary::CampaignSummary;

use crate::error::{BadInput, HarnessError};
use crate::pyenv;
use oracle::ExpectedRule;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true)]
pub struct FuzzArgs {
    #[command(subcommand)]
    pub command: Option<FuzzCommand>,
    /// Seed directories or files: scenario files (*.json) and golden folders (with index.json).
    /// Built-in identity seeds are always added (see --no-builtin-seeds).
    #[arg(long, value_name = "DIR")]
    pub seeds: Vec<PathBuf>,
    /// How long to fuzz: 90s, 10m, 1h (a bare number is seconds).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub duration: Duration,
    /// Stop after this many cases (whichever of this and --duration comes first).
    #[arg(long, value_name = "N")]
    pub max_execs: Option<u64>,
    /// Where findings, corpus and campaign state go; a directory with a state.json is resumed.
    #[arg(long, default_value = "findings")]
    pub out: PathBuf,
    /// Reuse workers (SPARK_REUSE_WORKER): each lane keeps one worker for case after case.
    #[arg(long, conflicts_with = "mode")]
    pub reuse: bool,
    /// How cases reach workers: fork-server (default: pyspark's daemon forks a fresh worker per
    /// case), reuse, spawn, persistent (fakejvm's loop serves case after case in one process per
    /// lane, pyspark's state reset in between) or warm-fork (that loop forks per case from a
    /// parent with pyspark.worker, and with Arrow seeds pandas and pyarrow, imported and its heap
    /// frozen). Findings of the last two
    /// are re-run on a fork server and reported only if they reproduce there.
    #[arg(long = "exec", visible_alias = "mode", value_enum, value_name = "MODE")]
    pub mode: Option<ExecMode>,
    /// Persistent executor: a server recycles itself after this many cases (and whenever it
    /// finds state it cannot reset); 0 for only the latter.
    #[arg(long, default_value_t = exec::DEFAULT_RECYCLE_AFTER, value_name = "N")]
    pub recycle_after: u64,
    /// Cases in flight at once.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// The pyspark of the cached env to fuzz (provisioned on first use); default 4.0.5.
    #[arg(long, value_name = "VERSION")]
    pub pyspark: Option<String>,
    /// Use this interpreter (with pyspark) instead of a cached env.
    #[arg(long, env = "FAKEJVM_PYTHON")]
    pub python: Option<PathBuf>,
    #[command(flatten)]
    pub python_version: crate::pyenv::PythonVersionArg,
    /// A case with no complete reply after this long is a hang (milliseconds). Default 2000, and
    /// 5000 for pyspark 4.2+, whose fresh workers import pyspark.worker after the fork, and 10000
    /// when a seed is an Arrow UDF request (each fresh worker imports pandas and pyarrow).
    #[arg(long, value_name = "MS")]
    pub deadline_ms: Option<u64>,
    /// An exception that is a clean failure, not a finding: TYPE, TYPE@CODE or *@CODE
    /// (CODE must appear in a traceback frame's source). Repeatable; adds to the defaults.
    /// The defaults: EOFError, UnpicklingError, *@pickle.loads(, *@unpickler.load(),
    /// pyspark.errors.*, SystemExit, *@user-code (the task's own function raised), and pyarrow's
    /// clean errors ArrowInvalid, ArrowTypeError, ArrowNotImplementedError, ArrowIndexError,
    /// ArrowKeyError, ArrowCapacityError, ArrowSerializationError. ArrowMemoryError stays a
    /// finding unless a rule names it; a worker killed by a signal always is one.
    #[arg(long = "expect-exception", value_name = "RULE")]
    pub expect_exception: Vec<String>,
    /// Drop one default rule, written as listed under --expect-exception (e.g. ArrowInvalid, to
    /// have pyarrow's refusals reported). Repeatable.
    #[arg(long = "not-expected", value_name = "RULE")]
    pub not_expected: Vec<String>,
    /// Drop all the default expected exceptions (see --expect-exception).
    #[arg(long)]
    pub no_default_expected: bool,
    /// Traceback frames (innermost first) in a finding's signature.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub sig_frames: usize,
    /// Worker runs one finding's minimisation may take.
    #[arg(long, default_value_t = 300, value_name = "N")]
    pub minimise_runs: usize,
    /// Wall time one finding's minimisation may take.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub minimise_time: Duration,
    /// Seed of the mutation RNG (default: from the clock).
    #[arg(long)]
    pub rng_seed: Option<u64>,
    /// Only the seeds from --seeds.
    #[arg(long)]
    pub no_builtin_seeds: bool,
    /// Also edit bytes inside the command (the cloudpickled function). Off by default: a corrupt
    /// command only reaches cloudpickle (an expected unpickling error) or CPython running broken
    /// bytecode (a crash in the task's own function), not the protocol. Its length, truncation
    /// and splicing are mutated either way.
    #[arg(long)]
    pub mutate_command: bool,
    /// Address-space limit (RLIMIT_AS) of the daemon and every worker, in MiB; 0 for none. A
    /// mutated length can make a worker allocate what it says: under the limit that is a quick
    /// MemoryError (a finding with its own signature) instead of seconds of zero-filling.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    pub memory_limit_mb: u64,
    /// Trace which lines of pyspark's Python files each case runs (sys.monitoring on CPython
    /// 3.12+, coverage.py's C tracer on 3.9-3.11, installed once into fakejvm's tools cache),
    /// beside the protocol; a case that reaches a line no earlier case reached joins the corpus
    /// (corpus/cov-N.json). Persistent and warm-fork executors only. summary.json gets the
    /// lines per file and a timeline.
    #[arg(long)]
    pub coverage: bool,
    /// Trace and count as --coverage does, but add no case to the corpus for new lines: the
    /// control arm of a comparison (implies the tracing of --coverage).
    #[arg(long)]
    pub coverage_blind: bool,
    /// At the end, write an HTML coverage report into DIR: an index of worker.py,
    /// serializers.py, sql/pandas/serializers.py and every other pyspark file reached (lines hit
    /// / executable), and a page per file with its hit lines marked (implies --coverage unless
    /// --coverage-blind).
    #[arg(long, value_name = "DIR")]
    pub coverage_report: Option<PathBuf>,
    /// No progress line on the terminal.
    #[arg(long)]
    pub no_progress: bool,
    /// Measure execs/s of every executor side by side instead of fuzzing: RDD and UDF seeds
    /// apart, clean and mutated cases, at 1, 2 and 4 lanes, with CPU per case.
    #[arg(long)]
    pub bench: bool,
    /// With --bench: time per measurement (one per row and lane count).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub bench_time: Duration,
    /// With --bench: only these modes (repeatable; default all five).
    #[arg(long, value_enum, value_name = "MODE")]
    pub bench_mode: Vec<ExecMode>,
    /// With --bench: the lane counts of the scaling columns.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,2,4",
        value_name = "N,N,.."
    )]
    pub bench_lanes: Vec<usize>,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum FuzzCommand {
    /// Join the findings of several campaigns (e.g. one per machine) into one deduplicated set:
    /// one reproducer per signature, counts added up, the first seen kept.
    Merge(Box<merge::MergeArgs>),
}

const DEFAULT_DEADLINE_MS: u64 = 2000;
/// pyspark 4.2+ daemons import pyspark.worker in every fresh worker (3.3-4.1 import it once,
/// before forking): on a busy 2-core machine that import alone can take over a second.
const DEFAULT_DEADLINE_MS_IMPORTING: u64 = 5000;
/// Seeds that are Arrow UDF requests: every fresh worker imports pandas and pyarrow for its
/// task, half a second on a quiet machine and over two on a busy 2-core one.
const DEFAULT_DEADLINE_MS_ARROW: u64 = 10_000;

/// "10m", "90s", "1h", "500ms", or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: write e.g. 90s, 10m, 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl FuzzArgs {
    pub(crate) fn exec_mode(&self) -> ExecMode {
        if self.reuse {
            ExecMode::Reuse
        } else {
            self.mode.unwrap_or(ExecMode::ForkServer)
        }
    }

    fn expected(&self) -> Result<Vec<ExpectedRule>, BadInput> {
        let mut rules = if self.no_default_expected {
            vec![]
        } else {
            ExpectedRule::defaults()
        };
        for r in &self.not_expected {
            let drop =
                ExpectedRule::parse(r).map_err(|e| BadInput(format!("--not-expected: {e}")))?;
            if !oracle::DEFAULT_EXPECTED
                .iter()
                .any(|(d, _)| ExpectedRule::parse(d).as_ref() == Ok(&drop))
            {
                let all: Vec<&str> = oracle::DEFAULT_EXPECTED.iter().map(|(d, _)| *d).collect();
                return Err(BadInput(format!(
                    "--not-expected {r}: not a default rule (they are: {})",
                    all.join(", ")
                )));
            }
            rules.retain(|x| x != &drop);
        }
        for r in &self.expect_exception {
            rules.push(
                ExpectedRule::parse(r).map_err(|e| BadInput(format!("--expect-exception: {e}")))?,
            );
        }
        Ok(rules)
    }

    fn rng_seed(&self) -> u64 {
        self.rng_seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
    }

    pub(crate) fn campaign_config(&self) -> Result<CampaignConfig, BadInput> {
        if self.jobs == 0 {
            return Err(BadInput(
                "--jobs 0: at least one case must be in flight".into(),
            ));
        }
        if self.sig_frames == 0 {
            return Err(BadInput(
                "--sig-frames 0: a signature needs at least the frame that raised".into(),
            ));
        }
        if let Some(missing) = self.seeds.iter().find(|p| !p.exists()) {
            return Err(BadInput::new(missing, "--seeds: no such file or directory"));
        }
        if self.deadline_ms == Some(0) {
            return Err(BadInput(
                "--deadline-ms 0: every case would be a hang".into(),
            ));
        }
        let coverage = (self.coverage || self.coverage_blind || self.coverage_report.is_some())
            .then(|| coverage::CoverageConfig {
                feedback: !self.coverage_blind,
                report: self.coverage_report.clone(),
            });
        if coverage.is_some() && !self.bench {
            coverage::CoverageConfig::check_mode(self.exec_mode())?;
        }
        Ok(CampaignConfig {
            seed_dirs: self.seeds.clone(),
            builtin_seeds: !self.no_builtin_seeds,
            duration: self.duration,
            max_execs: self.max_execs,
            out: self.out.clone(),
            mode: self.exec_mode(),
            jobs: self.jobs,
            deadline: Duration::from_millis(self.deadline_ms.unwrap_or(DEFAULT_DEADLINE_MS)),
            arrow_deadline: self
                .deadline_ms
                .is_none()
                .then(|| Duration::from_millis(DEFAULT_DEADLINE_MS_ARROW)),
            expected: self.expected()?,
            sig_frames: self.sig_frames,
            minimise_runs: self.minimise_runs,
            minimise_time: self.minimise_time,
            leak_grace: exec::LEAK_GRACE,
            rng_seed: self.rng_seed(),
            progress: !self.no_progress,
            mutate_command: self.mutate_command,
            memory_limit_mb: Some(self.memory_limit_mb).filter(|mb| *mb > 0),
            recycle_after: self.recycle_after,
            coverage,
        })
    }
}

/// `fakejvm fuzz`. Exit codes: 0 the campaign ran (findings are in --out), 1 it aborted or left
/// processes behind; a `BadInput` error (bad flag, broken seed file) means 2, any other error
/// (a reproducer or state file that cannot be written, an executor that fails) 3.
pub async fn fuzz_cmd(args: FuzzArgs) -> anyhow::Result<u8> {
    if let Some(FuzzCommand::Merge(m)) = &args.command {
        return merge::merge_cmd(m);
    }
    let mut cfg = args.campaign_config()?;
    let want = pyenv::Want::new(args.pyspark.as_deref(), args.python_version.python_version);
    let env = pyenv::resolve_with(args.python.as_deref(), &want)
        .map_err(|e| crate::error::env_failure(None, e))?;
    if args.deadline_ms.is_none() && (env.pyspark.major, env.pyspark.minor) >= (4, 2) {
        cfg.deadline = Duration::from_millis(DEFAULT_DEADLINE_MS_IMPORTING);
    }
    if args.bench {
        let bench = BenchConfig {
            seed_dirs: cfg.seed_dirs.clone(),
            builtin_seeds: cfg.builtin_seeds,
            jobs: cfg.jobs,
            time: args.bench_time,
            spawn_time: args.bench_time,
            deadline: cfg.deadline,
            arrow_deadline: cfg.arrow_deadline,
            rng_seed: cfg.rng_seed,
            mutate_command: cfg.mutate_command,
            memory_limit_mb: cfg.memory_limit_mb,
            recycle_after: cfg.recycle_after,
            modes: if args.bench_mode.is_empty() {
                ExecMode::ALL.to_vec()
            } else {
                args.bench_mode.clone()
            },
            lanes: {
                if args.bench_lanes.contains(&0) {
                    return Err(
                        BadInput("--bench-lanes: a lane count of 0 runs nothing".into()).into(),
                    );
                }
                args.bench_lanes.clone()
            },
        };
        let report = fuzz_bench(env, bench).await?;
        print!("{}", report.table());
        let path = cfg.out.join("bench.json");
        let mut bytes = serde_json::to_vec_pretty(&report)?;
        bytes.push(b'\n');
        crate::report::write_atomic(&path, &bytes)
            .map_err(|e| HarnessError::io("write", &path, e))?;
        println!("bench: {}", path.display());
        return Ok(if report.leftovers() > 0 { 1 } else { 0 });
    }
    eprintln!(
        "fuzz: pyspark {} ({}), {} mode, {} job(s), {:?}{}, findings in {}",
        env.pyspark,
        env.python.display(),
        cfg.mode.name(),
        cfg.jobs,
        cfg.duration,
        cfg.max_execs
            .map(|m| format!(" or {m} execs"))
            .unwrap_or_default(),
        cfg.out.display()
    );
    let summary = campaign::run(env, cfg).await?;
    println!("{}", summary.text());
    Ok(
        if summary.aborted.is_some() || !summary.leftover_processes.is_empty() {
            1
        } else {
            0
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_lists_every_default_expected_rule() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            fuzz: FuzzArgs,
        }
        let help = Cli::command().render_long_help().to_string();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for (rule, _) in oracle::DEFAULT_EXPECTED {
            assert!(help.contains(rule), "--help does not list {rule}");
        }
        for t in oracle::ARROW_FINDINGS {
            assert!(help.contains(t), "--help does not say {t} stays a finding");
        }
    }

    #[test]
    fn not_expected_drops_one_default_and_refuses_others() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            fuzz: FuzzArgs,
        }
        let args = |extra: &[&str]| {
            let mut v = vec!["fuzz"];
            v.extend(extra);
            Cli::try_parse_from(v).unwrap().fuzz
        };
        let all = args(&[]).expected().unwrap();
        let fewer = args(&["--not-expected", "ArrowInvalid"])
            .expected()
            .unwrap();
        assert_eq!(fewer.len(), all.len() - 1);
        assert!(!fewer
            .iter()
            .any(|r| r.matches("pyarrow.lib.ArrowInvalid", "")));
        let e = args(&["--not-expected", "KeyError"])
            .expected()
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a default rule"), "{e}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
    }
}
