//! `fakejvm fuzz --bench`: execs per second of the three ways to run a case, side by side in
//! one run, over the same seeds and the same mutator: a fork server (one daemon forks a fresh
//! worker per case), reused workers (SPARK_REUSE_WORKER), and a new interpreter per case.

use super::exec::{ExecMode, ExecOptions, Executor, Lane};
use super::mutate::{self, Context};
use super::seeds::{self, Seed, SeedReport};
use crate::error::BadInput;
use crate::protocol::Dialect;
use crate::pyenv::PythonEnv;
use crate::verdict::OutcomeKind;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub seed_dirs: Vec<PathBuf>,
    pub builtin_seeds: bool,
    pub jobs: usize,
    /// Per row; the spawn row runs for `spawn_time`.
    pub time: Duration,
    pub spawn_time: Duration,
    pub deadline: Duration,
    /// See `CampaignConfig::arrow_deadline`.
    pub arrow_deadline: Option<Duration>,
    pub rng_seed: u64,
    pub mutate_command: bool,
    pub memory_limit_mb: Option<u64>,
    pub modes: Vec<ExecMode>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub mode: ExecMode,
    /// "mutated": fuzz cases as a campaign runs them; "clean": the seeds as they are.
    pub cases: &'static str,
    pub jobs: usize,
    pub execs: u64,
    pub secs: f64,
    pub execs_per_sec: f64,
    /// Cases that ran on a worker left by an earlier case.
    pub reused_pct: f64,
    pub outcomes: BTreeMap<String, u64>,
    /// Processes of ours alive after the row's shutdown (then killed).
    pub leftovers: usize,
    /// CPU time the whole machine spent per case during the row (milliseconds): ours, the
    /// daemon's, the workers' and the kernel's on their behalf. None where /proc/stat is missing.
    pub cpu_ms_per_exec: Option<f64>,
    /// Share of the row's CPU time the hypervisor gave to other guests.
    pub steal_pct: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub pyspark: String,
    pub dialect: Dialect,
    pub cpus: usize,
    pub seeds: SeedReport,
    pub rows: Vec<BenchRow>,
}

impl BenchReport {
    pub fn table(&self) -> String {
        let spawn = self
            .rows
            .iter()
            .find(|r| r.mode == ExecMode::Spawn)
            .map(|r| r.execs_per_sec)
            .filter(|v| *v > 0.0);
        let mut s = format!(
            "fuzz bench: pyspark {} (dialect {:?}), {} CPU(s), {} seed(s)\n{:<12} {:<8} {:>4} {:>7} {:>6} {:>9} {:>9} {:>7} {:>10}\n",
            self.pyspark,
            self.dialect,
            self.cpus,
            self.seeds.builtin + self.seeds.scenario_tasks + self.seeds.golden_requests,
            "mode",
            "cases",
            "jobs",
            "execs",
            "secs",
            "execs/s",
            "vs spawn",
            "reused",
            "CPU/case"
        );
        for r in &self.rows {
            let ratio = spawn
                .map(|sp| format!("{:.1}x", r.execs_per_sec / sp))
                .unwrap_or_else(|| "-".into());
            s.push_str(&format!(
                "{:<12} {:<8} {:>4} {:>7} {:>6.1} {:>9.1} {:>9} {:>6.0}% {:>10}\n",
                r.mode.name(),
                r.cases,
                r.jobs,
                r.execs,
                r.secs,
                r.execs_per_sec,
                ratio,
                r.reused_pct,
                r.cpu_ms_per_exec
                    .map(|c| format!("{c:.2} ms"))
                    .unwrap_or_else(|| "-".into())
            ));
        }
        s
    }
}

pub async fn fuzz_bench(env: PythonEnv, cfg: BenchConfig) -> anyhow::Result<BenchReport> {
    let dialect = Dialect::for_version(env.pyspark.major, env.pyspark.minor).ok_or_else(|| {
        BadInput(format!(
            "pyspark {} is older than any dialect fakejvm speaks",
            env.pyspark
        ))
    })?;
    let (seeds, mut seed_report) = seeds::load(&env, dialect, &cfg.seed_dirs, cfg.builtin_seeds)?;
    let cfg = BenchConfig {
        deadline: seeds::deadline_for(&seeds, cfg.deadline, cfg.arrow_deadline),
        ..cfg
    };
    // The same seeds a campaign would keep (see seeds::calibrate), checked on a fork server.
    let probe = Executor::start(
        env.clone(),
        dialect,
        ExecMode::ForkServer,
        ExecOptions {
            deadline: cfg.deadline,
            memory_limit_mb: cfg.memory_limit_mb,
            ..ExecOptions::default()
        },
    )
    .await?;
    let (seeds, dropped) = seeds::calibrate(seeds, &probe, cfg.jobs).await;
    let _ = probe.shutdown().await;
    seed_report.skipped.extend(dropped);
    if seeds.is_empty() {
        return Err(BadInput(format!(
            "no seed runs cleanly against pyspark {}",
            env.pyspark
        ))
        .into());
    }
    let seeds = Arc::new(seeds);
    let mut rows = vec![];
    let plan = [
        (ExecMode::ForkServer, true),
        (ExecMode::ForkServer, false),
        (ExecMode::Reuse, true),
        (ExecMode::Reuse, false),
        (ExecMode::Spawn, true),
    ];
    for (mode, mutated) in plan.into_iter().filter(|(m, _)| cfg.modes.contains(m)) {
        let time = if mode == ExecMode::Spawn {
            cfg.spawn_time
        } else {
            cfg.time
        };
        rows.push(bench_row(&env, dialect, seeds.clone(), mode, mutated, time, &cfg).await?);
    }
    Ok(BenchReport {
        pyspark: env.pyspark.to_string(),
        dialect,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        seeds: seed_report,
        rows,
    })
}

async fn bench_row(
    env: &PythonEnv,
    dialect: Dialect,
    seeds: Arc<Vec<Seed>>,
    mode: ExecMode,
    mutated: bool,
    time: Duration,
    cfg: &BenchConfig,
) -> anyhow::Result<BenchRow> {
    let exec = Arc::new(
        Executor::start(
            env.clone(),
            dialect,
            mode,
            ExecOptions {
                deadline: cfg.deadline,
                memory_limit_mb: cfg.memory_limit_mb,
                ..ExecOptions::default()
            },
        )
        .await?,
    );
    let execs = Arc::new(AtomicU64::new(0));
    let reused = Arc::new(AtomicU64::new(0));
    let cpu_before = CpuTimes::now();
    let started = Instant::now();
    let until = started + time;
    // Local tasks: session::run_task's future is not Send.
    let local = tokio::task::LocalSet::new();
    let mut lanes = vec![];
    for id in 0..cfg.jobs.max(1) {
        let (exec, seeds, execs, reused) =
            (exec.clone(), seeds.clone(), execs.clone(), reused.clone());
        let rng_seed = cfg.rng_seed.wrapping_add(id as u64);
        let mutate_command = cfg.mutate_command;
        lanes.push(local.spawn_local(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(rng_seed);
            let mut lane = Lane::default();
            let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
            while Instant::now() < until {
                let mut case = seeds[rng.random_range(0..seeds.len())].case.clone();
                if mutated {
                    let ctx = Context {
                        dialect,
                        seeds: &seeds,
                        mutate_command,
                    };
                    mutate::mutate(&mut case, &ctx, &mut rng);
                }
                let obs = exec.exec(&mut lane, Arc::new(case.to_bytes())).await;
                execs.fetch_add(1, Ordering::Relaxed);
                if obs.reused_worker {
                    reused.fetch_add(1, Ordering::Relaxed);
                }
                let kind: OutcomeKind = obs.outcome.kind();
                *outcomes.entry(format!("{kind:?}")).or_default() += 1;
            }
            outcomes
        }));
    }
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let per_lane = local
        .run_until(async {
            let mut all = vec![];
            for l in lanes {
                all.push(l.await);
            }
            all
        })
        .await;
    for lane in per_lane {
        for (k, v) in lane? {
            *outcomes.entry(k).or_default() += v;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let n = execs.load(Ordering::Relaxed);
    let cpu = CpuTimes::now().and_then(|c| c.since(&cpu_before));
    let exec = Arc::try_unwrap(exec)
        .map_err(|_| anyhow::anyhow!("bench: a lane still holds the executor"))?;
    let leftovers = exec
        .shutdown()
        .await
        .map(|s| s.leftovers.len())
        .unwrap_or(0);
    Ok(BenchRow {
        mode,
        cases: if mutated { "mutated" } else { "clean" },
        jobs: cfg.jobs.max(1),
        execs: n,
        secs,
        execs_per_sec: n as f64 / secs.max(1e-9),
        reused_pct: if n == 0 {
            0.0
        } else {
            100.0 * reused.load(Ordering::Relaxed) as f64 / n as f64
        },
        outcomes,
        leftovers,
        cpu_ms_per_exec: cpu.map(|c| 1000.0 * c.busy / (n.max(1) as f64)),
        steal_pct: cpu.map(|c| 100.0 * c.steal / (c.busy + c.idle + c.steal).max(1e-9)),
    })
}

/// Machine-wide CPU time from /proc/stat, in seconds: what a row costs, whoever spent it (our
/// process, the daemon, its workers, the kernel on their behalf). `execs/s <= CPUs / cost` is
/// then the ceiling any tuning of ours runs into.
#[derive(Clone, Copy, Debug)]
struct CpuTimes {
    busy: f64,
    idle: f64,
    /// Taken by the hypervisor for other guests: a noisy neighbour, not our cost.
    steal: f64,
}

impl CpuTimes {
    fn now() -> Option<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        let v: Vec<f64> = line
            .split_ascii_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is already in user).
        if v.len() < 8 {
            return None;
        }
        let hz = crate::worker::procs::clock_ticks();
        Some(CpuTimes {
            busy: (v[0] + v[1] + v[2] + v[5] + v[6]) / hz,
            idle: (v[3] + v[4]) / hz,
            steal: v[7] / hz,
        })
    }

    fn since(&self, before: &Option<CpuTimes>) -> Option<CpuTimes> {
        let b = before.as_ref()?;
        Some(CpuTimes {
            busy: self.busy - b.busy,
            idle: self.idle - b.idle,
            steal: self.steal - b.steal,
        })
    }
}
