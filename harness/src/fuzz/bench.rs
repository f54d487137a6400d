//! `fakejvm fuzz --bench`: execs per second of the ways to run a case, side by side in one run,
//! over the same seeds and the same mutator: a fork server (one daemon forks a fresh worker per
//! case), reused workers (SPARK_REUSE_WORKER), a new interpreter per case, fakejvm's persistent
//! executor (one process per lane serves case after case) and its warm fork server. RDD seeds
//! and UDF seeds are measured apart (a UDF case's fresh worker imports pandas and pyarrow), each
//! clean and mutated, at each lane count of `--bench-lanes` (the scaling columns), with the CPU
//! time a case costs: the whole machine's (from /proc/stat, so a busy neighbour shows up in it)
//! and our own processes' (getrusage of fakejvm and its reaped children). The persistent
//! executor is measured a second time with `--coverage`'s tracing on (`persistent+cov`), so the
//! cost of tracing stands beside the rate without it.

use super::coverage::{Coverage, Tracer};
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
    /// Lanes of the calibration run.
    pub jobs: usize,
    /// Per measurement; spawn rows run for `spawn_time`.
    pub time: Duration,
    pub spawn_time: Duration,
    pub deadline: Duration,
    /// See `CampaignConfig::arrow_deadline`.
    pub arrow_deadline: Option<Duration>,
    pub rng_seed: u64,
    pub mutate_command: bool,
    pub memory_limit_mb: Option<u64>,
    pub recycle_after: u64,
    pub modes: Vec<ExecMode>,
    /// The lane counts measured for each row (the scaling columns).
    pub lanes: Vec<usize>,
}

/// One measurement: a row's mode and cases at one lane count.
#[derive(Clone, Debug, Serialize)]
pub struct BenchCell {
    pub jobs: usize,
    pub execs: u64,
    pub secs: f64,
    pub execs_per_sec: f64,
    /// Cases that ran on a worker (or persistent server) left by an earlier case.
    pub reused_pct: f64,
    pub outcomes: BTreeMap<String, u64>,
    /// Processes of ours alive after the measurement's shutdown (then killed).
    pub leftovers: usize,
    /// CPU time the whole machine spent per case (milliseconds): ours, the daemon's, the
    /// workers' and the kernel's on their behalf, and anybody else's. None without /proc/stat.
    pub cpu_ms_per_exec: Option<f64>,
    /// CPU time of fakejvm and the processes it started and reaped, per case (milliseconds):
    /// exact for spawn, persistent and warm-fork; None for fork-server and reuse, whose workers
    /// pyspark's daemon leaves to the kernel to reap (SIGCHLD ignored), uncounted by anyone.
    pub own_cpu_ms_per_exec: Option<f64>,
    /// Share of the measurement's CPU time the hypervisor gave to other guests.
    pub steal_pct: Option<f64>,
    /// Persistent: servers started (one per lane, plus one per recycle or crash).
    pub servers_started: u64,
    /// Traced rows: lines of pyspark the cell's cases (and servers' imports) reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coverage_lines: Option<usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    /// "rdd" (NON_UDF requests, and goldens that do not decode) or "udf".
    pub seeds: &'static str,
    pub mode: ExecMode,
    /// "mutated": fuzz cases as a campaign runs them; "clean": the seeds as they are.
    pub cases: &'static str,
    /// With `--coverage`'s tracing on (each case's lines merged into a map, as a campaign does).
    pub traced: bool,
    /// One per lane count, in `--bench-lanes` order.
    pub cells: Vec<BenchCell>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub pyspark: String,
    pub dialect: Dialect,
    pub cpus: usize,
    pub seeds: SeedReport,
    /// Seeds of each class after calibration.
    pub rdd_seeds: usize,
    pub udf_seeds: usize,
    pub lanes: Vec<usize>,
    pub rows: Vec<BenchRow>,
}

impl BenchRow {
    /// The cell of the most lanes: the one whose CPU figures the table shows.
    fn widest(&self) -> Option<&BenchCell> {
        self.cells.iter().max_by_key(|c| c.jobs)
    }
}

impl BenchReport {
    pub fn leftovers(&self) -> usize {
        self.rows
            .iter()
            .flat_map(|r| &r.cells)
            .map(|c| c.leftovers)
            .sum()
    }

    pub fn table(&self) -> String {
        let ms = |v: Option<f64>| {
            v.map(|c| format!("{c:.2} ms"))
                .unwrap_or_else(|| "-".into())
        };
        let mut s = format!(
            "fuzz bench: pyspark {} (dialect {:?}), {} CPU(s), {} RDD + {} UDF seed(s); execs/s at {} lane(s)
",
            self.pyspark,
            self.dialect,
            self.cpus,
            self.rdd_seeds,
            self.udf_seeds,
            self.lanes
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        s.push_str(&format!("{:<5} {:<14} {:<8}", "seeds", "mode", "cases"));
        for n in &self.lanes {
            s.push_str(&format!(
                " {:>9}",
                format!("{n} lane{}", if *n == 1 { "" } else { "s" })
            ));
        }
        s.push_str(&format!(
            " {:>9} {:>7} {:>10} {:>10}
",
            "vs spawn", "reused", "CPU/case", "own CPU"
        ));
        for r in &self.rows {
            let spawn = self
                .rows
                .iter()
                .find(|o| o.seeds == r.seeds && o.mode == ExecMode::Spawn)
                .and_then(|o| o.widest())
                .map(|c| c.execs_per_sec)
                .filter(|v| *v > 0.0);
            let mode = if r.traced {
                format!("{}+cov", r.mode.name())
            } else {
                r.mode.name().to_string()
            };
            s.push_str(&format!("{:<5} {:<14} {:<8}", r.seeds, mode, r.cases));
            for n in &self.lanes {
                match r.cells.iter().find(|c| c.jobs == *n) {
                    Some(c) => s.push_str(&format!(" {:>9.1}", c.execs_per_sec)),
                    None => s.push_str(&format!(" {:>9}", "-")),
                }
            }
            let w = r.widest();
            let ratio = match (spawn, w) {
                (Some(sp), Some(c)) => format!("{:.1}x", c.execs_per_sec / sp),
                _ => "-".into(),
            };
            s.push_str(&format!(
                " {:>9} {:>6.0}% {:>10} {:>10}
",
                ratio,
                w.map(|c| c.reused_pct).unwrap_or(0.0),
                ms(w.and_then(|c| c.cpu_ms_per_exec)),
                ms(w.and_then(|c| c.own_cpu_ms_per_exec)),
            ));
        }
        s.push_str("(vs spawn, reused and CPU are of the most lanes; CPU/case is the whole machine's, own CPU fakejvm's and its reaped children's; +cov: with --coverage's tracing)
");
        s
    }
}

/// The seeds of one class, renumbered (a case's seed index points into its own list).
fn class_of(seeds: &[Seed], udf: bool) -> Vec<Seed> {
    let mut out: Vec<Seed> = seeds
        .iter()
        .filter(|s| s.request.as_ref().is_some_and(|r| r.udf.is_some()) == udf)
        .cloned()
        .collect();
    for (i, s) in out.iter_mut().enumerate() {
        s.case.seed = Some(i);
    }
    out
}

pub async fn fuzz_bench(env: PythonEnv, cfg: BenchConfig) -> anyhow::Result<BenchReport> {
    let dialect = Dialect::for_version(env.pyspark.major, env.pyspark.minor).ok_or_else(|| {
        BadInput(format!(
            "pyspark {} is older than any dialect fakejvm speaks",
            env.pyspark
        ))
    })?;
    let (seeds, mut seed_report) = seeds::load(&env, dialect, &cfg.seed_dirs, cfg.builtin_seeds)?;
    // The same seeds a campaign would keep (see seeds::calibrate), checked on a fork server.
    let probe = Executor::start(
        env.clone(),
        dialect,
        ExecMode::ForkServer,
        ExecOptions {
            deadline: seeds::deadline_for(&seeds, cfg.deadline, cfg.arrow_deadline),
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
    let classes = [
        ("rdd", class_of(&seeds, false)),
        ("udf", class_of(&seeds, true)),
    ];
    let (rdd_seeds, udf_seeds) = (classes[0].1.len(), classes[1].1.len());
    // The traced rows need a tracer (on CPython 3.9-3.11 coverage.py's, installed once): one
    // that cannot be had leaves them out, said here, rather than fail the whole table.
    let tracer = if cfg.modes.contains(&ExecMode::Persistent) {
        match Tracer::for_env(&env) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("fuzz bench: no persistent+cov rows: {e}");
                None
            }
        }
    } else {
        None
    };
    // (mode, mutated, traced)
    let plan = [
        (ExecMode::ForkServer, true, false),
        (ExecMode::ForkServer, false, false),
        (ExecMode::Reuse, true, false),
        (ExecMode::Reuse, false, false),
        (ExecMode::Spawn, true, false),
        (ExecMode::Persistent, true, false),
        (ExecMode::Persistent, false, false),
        (ExecMode::Persistent, true, true),
        (ExecMode::Persistent, false, true),
        (ExecMode::WarmFork, true, false),
        (ExecMode::WarmFork, false, false),
    ];
    let mut rows = vec![];
    for (class, seeds) in classes {
        if seeds.is_empty() {
            continue;
        }
        // Each class gets its own deadline: RDD rows are not held to the Arrow seeds' 10 s.
        let deadline = seeds::deadline_for(&seeds, cfg.deadline, cfg.arrow_deadline);
        let seeds = Arc::new(seeds);
        let chosen = plan
            .into_iter()
            .filter(|(m, _, traced)| cfg.modes.contains(m) && (!traced || tracer.is_some()));
        for (mode, mutated, traced) in chosen {
            let time = if mode == ExecMode::Spawn {
                cfg.spawn_time
            } else {
                cfg.time
            };
            let mut cells = vec![];
            for &jobs in &cfg.lanes {
                let m = Measure {
                    env: &env,
                    dialect,
                    seeds: seeds.clone(),
                    mode,
                    mutated,
                    time,
                    jobs,
                    deadline,
                    tracer: tracer.clone().filter(|_| traced),
                };
                cells.push(m.run(&cfg).await?);
            }
            rows.push(BenchRow {
                seeds: class,
                mode,
                cases: if mutated { "mutated" } else { "clean" },
                traced,
                cells,
            });
        }
    }
    Ok(BenchReport {
        pyspark: env.pyspark.to_string(),
        dialect,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        seeds: seed_report,
        rdd_seeds,
        udf_seeds,
        lanes: cfg.lanes.clone(),
        rows,
    })
}

/// One cell of the table.
struct Measure<'a> {
    env: &'a PythonEnv,
    dialect: Dialect,
    seeds: Arc<Vec<Seed>>,
    mode: ExecMode,
    mutated: bool,
    time: Duration,
    jobs: usize,
    deadline: Duration,
    /// Traced rows: `--coverage`'s tracer.
    tracer: Option<Tracer>,
}

impl Measure<'_> {
    async fn run(&self, cfg: &BenchConfig) -> anyhow::Result<BenchCell> {
        let dialect = self.dialect;
        let mutated = self.mutated;
        let exec = Arc::new(
            Executor::start(
                self.env.clone(),
                dialect,
                self.mode,
                ExecOptions {
                    deadline: self.deadline,
                    memory_limit_mb: cfg.memory_limit_mb,
                    recycle_after: cfg.recycle_after,
                    preload_arrow: seeds::has_arrow(&self.seeds),
                    coverage: self.tracer.clone(),
                    ..ExecOptions::default()
                },
            )
            .await?,
        );
        // Every lane's persistent server up before the clock starts, as a daemon is.
        exec.prestart(self.jobs.max(1)).await?;
        // Traced: every case's lines go into a map, as a campaign's do.
        let map = self.tracer.as_ref().map(|t| {
            let mut c = Coverage::new(t, true);
            c.add(&exec.take_unclaimed_coverage());
            Arc::new(std::sync::Mutex::new(c))
        });
        let execs = Arc::new(AtomicU64::new(0));
        let reused = Arc::new(AtomicU64::new(0));
        // What the live servers spent starting up is not the cases' cost: it is counted in
        // their reaped children's time later, so it is taken off here.
        let own_before = OwnCpu::now().map(|c| c + live_cpu(&exec.server_pids()));
        let cpu_before = CpuTimes::now();
        let started = Instant::now();
        let until = started + self.time;
        // Local tasks: session::run_task's future is not Send.
        let local = tokio::task::LocalSet::new();
        let mut lanes = vec![];
        for id in 0..self.jobs.max(1) {
            let (exec, seeds, execs, reused, map) = (
                exec.clone(),
                self.seeds.clone(),
                execs.clone(),
                reused.clone(),
                map.clone(),
            );
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
                    let (obs, lines) = exec.exec_traced(&mut lane, Arc::new(case.to_bytes())).await;
                    if let (Some(map), Some(lines)) = (&map, lines) {
                        map.lock().unwrap_or_else(|p| p.into_inner()).add(&lines);
                    }
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
        let servers_started = exec.servers_started();
        let coverage_lines = map.map(|m| {
            let mut c = m.lock().unwrap_or_else(|p| p.into_inner());
            let recycled = exec.take_unclaimed_coverage();
            c.add(&recycled);
            c.lines()
        });
        let leftovers = exec
            .shutdown()
            .await
            .map(|s| s.leftovers.len())
            .unwrap_or(0);
        // Every process of the cell is reaped now: its CPU time is in our children's.
        let own = match (OwnCpu::now(), own_before) {
            (Some(after), Some(before))
                if !matches!(self.mode, ExecMode::ForkServer | ExecMode::Reuse) =>
            {
                Some(after - before)
            }
            _ => None,
        };
        Ok(BenchCell {
            jobs: self.jobs.max(1),
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
            own_cpu_ms_per_exec: own.map(|c| 1000.0 * c / (n.max(1) as f64)),
            steal_pct: cpu.map(|c| 100.0 * c.steal / (c.busy + c.idle + c.steal).max(1e-9)),
            servers_started,
            coverage_lines,
        })
    }
}

/// CPU seconds of this process and of every child it has reaped (with what they reaped).
struct OwnCpu;

impl OwnCpu {
    fn now() -> Option<f64> {
        let mut total = 0.0;
        for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
            // SAFETY: getrusage only writes the struct we pass.
            let mut u: libc::rusage = unsafe { std::mem::zeroed() };
            if unsafe { libc::getrusage(who, &mut u) } != 0 {
                return None;
            }
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            total += secs(u.ru_utime) + secs(u.ru_stime);
        }
        Some(total)
    }
}

/// CPU seconds live processes have spent so far (from /proc).
fn live_cpu(pids: &[i32]) -> f64 {
    let hz = crate::worker::procs::clock_ticks();
    pids.iter()
        .filter_map(|p| crate::worker::procs::stat(*p))
        .map(|s| (s.utime + s.stime) as f64 / hz)
        .sum()
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
