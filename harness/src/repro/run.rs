//! `fakejvm repro FILE`: replay a reproducer against a matching env and say, in a few lines
//! that fit in a bug report, whether it still reproduces.

use crate::error::{env_failure, BadInput, HarnessError};
use crate::fuzz::exec::{ExecOptions, Executor, LEAK_GRACE};
use crate::fuzz::native_stack;
use crate::fuzz::oracle::{Judge, Verdict};
use crate::fuzz::reproducer::Reproducer;
use crate::fuzz::seeds::Seed;
use crate::fuzz::signature::Signature;
use crate::protocol::Dialect;
use crate::pyenv;
use crate::verdict::{Outcome, OutcomeKind};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct ReproArgs {
    /// The reproducer file, as `fakejvm fuzz` wrote it.
    pub file: PathBuf,
    /// Use this interpreter (with pyspark) instead of fakejvm's cached env for the file's pyspark.
    #[arg(long, env = "FAKEJVM_PYTHON")]
    pub python: Option<PathBuf>,
    /// Replay against another pyspark release (of the same request family as the file's).
    #[arg(long, value_name = "VERSION")]
    pub pyspark: Option<String>,
    /// The CPython of the cached env; default: the one the file was recorded with (the request
    /// carries it, and the worker refuses another).
    #[command(flatten)]
    pub python_version: pyenv::PythonVersionArg,
    /// Run it this many times; it reproduces if any run does.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReproReport {
    pub file: String,
    pub pyspark: String,
    pub recorded: Signature,
    pub recorded_id: String,
    /// One per run.
    pub replayed: Vec<Signature>,
    /// The last run's outcome, in words.
    pub outcome: String,
    pub reproduced: bool,
    pub elapsed_ms: u64,
    /// A native crash: the backtrace of the crashing thread, the reproducer's own or, when it
    /// has none, one this replay took under gdb (`native_stack_source` says which).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native_stack: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native_stack_source: Option<&'static str>,
    /// A native crash without a native stack: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native_stack_missing: Option<String>,
}

impl ReproReport {
    pub fn text(&self, r: &Reproducer) -> String {
        let mut s = format!("repro   {}\n", self.file);
        s.push_str(&format!(
            "found   {} (pyspark {}, dialect {:?}, {}, {}-byte request{})\n",
            self.recorded.text(),
            r.pyspark,
            r.dialect,
            r.mode.name(),
            r.request.len,
            if r.minimised { ", minimised" } else { "" }
        ));
        if let (Some(found), Some(confirmed)) = (r.found_in, r.confirmed_in) {
            if found != confirmed {
                s.push_str(&format!(
                    "where   found in {}, confirmed on {}; replayed on {}\n",
                    found.name(),
                    confirmed.name(),
                    r.mode.name()
                ));
            }
        }
        s.push_str(&format!(
            "replay  {} (pyspark {})\n",
            short(&self.outcome, 300),
            self.pyspark
        ));
        if let Some(stack) = &self.native_stack {
            let lines: Vec<&str> = stack.lines().collect();
            let shown = native_stack::HEAD_LINES.min(lines.len());
            s.push_str(&format!(
                "native  stack of the crashing thread ({}):\n",
                self.native_stack_source.unwrap_or("recorded")
            ));
            for l in &lines[..shown] {
                s.push_str(&format!("        {l}\n"));
            }
            if lines.len() > shown {
                s.push_str(&format!(
                    "        ... {} more line(s) in the file's native_stack\n",
                    lines.len() - shown
                ));
            }
        } else if let Some(why) = &self.native_stack_missing {
            s.push_str(&format!("native  stack missing: {why}\n"));
        }
        if self.reproduced {
            s.push_str(&format!(
                "result  REPRODUCES (signature {})",
                self.recorded_id
            ));
        } else {
            let last = self
                .replayed
                .last()
                .map(Signature::text)
                .unwrap_or_default();
            s.push_str(&format!(
                "result  does not reproduce: the replay ended in {last}"
            ));
        }
        s
    }
}

fn short(s: &str, n: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() > n {
        format!("{}...", line.chars().take(n).collect::<String>())
    } else {
        line.to_string()
    }
}

/// `fakejvm repro`. Exit codes: 0 no longer reproduces, 1 reproduces; a `BadInput` error means
/// 2, any other error (the executor failed) 3.
pub async fn repro_cmd(args: ReproArgs) -> anyhow::Result<u8> {
    if args.runs == 0 {
        return Err(BadInput::msg("--runs 0: give at least one run").into());
    }
    let r = Reproducer::load(&args.file)?;
    let report = run(
        &args.file,
        &r,
        args.python.as_deref(),
        args.pyspark.as_deref(),
        args.python_version.python_version,
        args.runs,
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.text(&r));
    }
    Ok(if report.reproduced { 1 } else { 0 })
}

/// Replay `r` (read from `file`) `runs` times on fresh workers.
pub async fn run(
    file: &Path,
    r: &Reproducer,
    python: Option<&Path>,
    pyspark: Option<&str>,
    python_version: Option<pyenv::PythonMinor>,
    runs: usize,
) -> anyhow::Result<ReproReport> {
    let started = Instant::now();
    let bytes = r.bytes().map_err(|e| BadInput::new(file, e))?;
    let case = r.case().map_err(|e| BadInput::new(file, e))?;
    let wanted = pyspark.unwrap_or(&r.pyspark);
    // Without an interpreter given, fakejvm's env of the recorded Python (found by base).
    let recorded = r.python.parse::<pyenv::PythonMinor>().ok();
    let python_version = python_version.or(if python.is_none() { recorded } else { None });
    let want = pyenv::Want::new(Some(wanted), python_version);
    let env = pyenv::resolve_with(python, &want).map_err(|e| env_failure(Some(file), e))?;
    if env.python_version != r.python {
        return Err(BadInput::new(
            file,
            format!(
                "recorded with Python {} but {} is Python {}: the request carries the Python version, so replay it with --python pointing at a Python {} with pyspark {}",
                r.python,
                env.python.display(),
                env.python_version,
                r.python,
                r.pyspark
            ),
        )
        .into());
    }
    let dialect = Dialect::for_version(env.pyspark.major, env.pyspark.minor).ok_or_else(|| {
        BadInput::new(
            file,
            format!(
                "pyspark {} is older than any dialect fakejvm speaks",
                env.pyspark
            ),
        )
    })?;
    if dialect != r.dialect {
        return Err(BadInput::new(
            file,
            format!(
                "recorded in dialect {:?}, but pyspark {} speaks dialect {dialect:?}",
                r.dialect, env.pyspark
            ),
        )
        .into());
    }
    let exec = Executor::start(
        env.clone(),
        dialect,
        r.mode,
        ExecOptions {
            deadline: Duration::from_millis(r.deadline_ms),
            memory_limit_mb: r.memory_limit_mb,
            ..ExecOptions::default()
        },
    )
    .await?;
    // Rules do not matter here: the signature alone is compared.
    let judge = Judge {
        expected: vec![],
        depth: r.signature_frames,
    };
    let seed = r.round_trip.map(|rt| Seed {
        name: "reproducer".into(),
        request: None,
        case: case.clone(),
        round_trip: Some(rt.into()),
    });
    let bytes = Arc::new(bytes);
    let mut replayed = vec![];
    let mut outcome = String::new();
    for _ in 0..runs {
        let obs = exec.exec_fresh(bytes.clone()).await;
        let (mut sig, judged) = match judge.judge(&obs, &case, seed.as_ref()) {
            Verdict::Finding(s, o) => (s, o),
            Verdict::Expected(s) => (s, obs.outcome.clone()),
            Verdict::Harness(e) => {
                return Err(HarnessError::new(format!(
                    "replaying {}: fakejvm itself failed: {e}",
                    file.display()
                ))
                .into())
            }
        };
        outcome = match &judged {
            Outcome::PythonException { exc_type, message } => {
                format!("PythonException {exc_type}: {message}")
            }
            Outcome::WorkerCrashed { pid, .. } => format!("{} (pid {pid})", sig.text()),
            o @ Outcome::Hang { .. } => match &obs.worker_at_deadline {
                Some(w) => format!("{o}; the worker then: {w}"),
                None => o.to_string(),
            },
            o => o.to_string(),
        };
        if r.signature.kind == OutcomeKind::LeakedProcess {
            tokio::time::sleep(LEAK_GRACE + Duration::from_millis(200)).await;
            let leaks = exec.leaked(LEAK_GRACE).await;
            if let Some(l) = leaks.iter().find(|l| l.bytes.is_some()).or(leaks.first()) {
                let o = Outcome::LeakedProcess {
                    processes: vec![(l.pid, l.cmdline.clone())],
                };
                outcome = o.to_string();
                sig = Signature::of(&o, None, r.signature_frames);
            }
        }
        replayed.push(sig);
    }
    let _ = exec.shutdown().await;
    let reproduced = replayed.iter().any(|s| s == &r.signature);
    // The file's stack when it has one; else, for a native crash that reproduced, one taken now.
    let (mut native, mut source, mut missing) = (
        r.native_stack.clone(),
        r.native_stack.as_ref().map(|_| "recorded"),
        r.native_stack_missing.clone(),
    );
    if native.is_none() && reproduced && native_stack::is_native_crash(&r.signature) {
        let mut live = r.clone();
        native_stack::fill(&mut live, &env).await;
        source = live
            .native_stack
            .as_ref()
            .map(|_| "taken by this replay under gdb");
        (native, missing) = (live.native_stack, live.native_stack_missing);
    }
    Ok(ReproReport {
        file: file.display().to_string(),
        pyspark: env.pyspark.to_string(),
        recorded_id: r.signature_id.clone(),
        recorded: r.signature.clone(),
        replayed,
        outcome,
        reproduced,
        elapsed_ms: started.elapsed().as_millis() as u64,
        native_stack: native,
        native_stack_source: source,
        native_stack_missing: missing,
    })
}
