//! The live campaign: lanes pick a seed or corpus case, mutate it, run it on a real worker, judge
//! it, and save what is new.
//!
//! Everything lives in `--out` (see [`super::state`]): `state.json` (rewritten atomically every
//! few seconds), one reproducer file per finding (written the moment it is found, then again once
//! minimised), `corpus/`, and `summary.json` at the end ([`super::summary`]). A campaign that
//! finds `state.json` in `--out` resumes it: known signatures are not reported again, the corpus
//! is reloaded, and findings that were not minimised yet are minimised first. A file that cannot
//! be written stops the campaign with a [`HarnessError`].
//!
//! The persistent and warm-fork executors are not pyspark's own process model, so a campaign in
//! either also starts a fork server (the real daemon) and re-runs each new signature there
//! before it reports it: a finding that does not end in the same signature on the daemon is
//! dropped and counted (`not confirmed`), one that does is minimised and replayed on the daemon,
//! and its reproducer says where it was found and where it was confirmed.
//!
//! With `--coverage` (those two executors only) every case also reports the lines of pyspark it
//! ran, and one that reaches a line no earlier case reached joins the corpus ([`super::coverage`]);
//! `--coverage-blind` counts the same without that.

use super::case::Case;
use super::coverage::{self, CaseLines, Coverage, CoverageConfig, Tracer};
use super::exec::{ExecMode, ExecOptions, Executor, Lane, Observation};
use super::minimise::{minimise, LiveCheck, MinimiseStats, Reproduces};
use super::mutate::{self, Context};
use super::native_stack;
use super::oracle::{ExpectedRule, Judge, Verdict};
use super::reproducer::{self, Found, Reproducer, RequestBytes};
use super::seeds::{self, Seed, SeedReport};
use super::signature::Signature;
use super::state::{self, ExpectedRecord, FindingRecord, NotConfirmedRecord, RunRecord, State};
use super::summary::{self, CampaignSummary, Figures};
use crate::error::{BadInput, HarnessError};
use crate::golden::format::utc_now;
use crate::protocol::{decode_requests, Dialect};
use crate::pyenv::PythonEnv;
use crate::verdict::{Outcome, OutcomeKind};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use super::state::STATE_FILE;
pub use super::summary::SUMMARY_FILE;

/// One corpus case per behaviour, up to this many.
const CORPUS_MAX: usize = 4096;
/// This many harness errors in a row (no daemon, cannot connect) end the campaign.
const HARNESS_STREAK_LIMIT: u64 = 50;
/// Cases of one signature the persistent or warm-fork executor found that are re-run on the
/// fork server before that signature is only counted as not confirmed.
pub const CONFIRM_TRIES: u64 = 3;

#[derive(Clone, Debug)]
pub struct CampaignConfig {
    pub seed_dirs: Vec<PathBuf>,
    pub builtin_seeds: bool,
    pub duration: Duration,
    pub max_execs: Option<u64>,
    pub out: PathBuf,
    pub mode: ExecMode,
    pub jobs: usize,
    pub deadline: Duration,
    /// The deadline instead of `deadline` when a seed is an Arrow UDF request (None: `deadline`
    /// was chosen by the user and stays).
    pub arrow_deadline: Option<Duration>,
    pub expected: Vec<ExpectedRule>,
    pub sig_frames: usize,
    /// Runs and wall time one finding's minimisation may take.
    pub minimise_runs: usize,
    pub minimise_time: Duration,
    pub leak_grace: Duration,
    pub rng_seed: u64,
    pub progress: bool,
    /// See `mutate::Context::mutate_command`.
    pub mutate_command: bool,
    /// See `exec::ExecOptions::memory_limit_mb`.
    pub memory_limit_mb: Option<u64>,
    /// See `exec::ExecOptions::recycle_after`.
    pub recycle_after: u64,
    /// `--coverage` / `--coverage-blind` / `--coverage-report` (persistent and warm-fork only).
    pub coverage: Option<CoverageConfig>,
}

/// What the fork server made of a case another executor found.
enum Confirmation {
    /// Same signature: the daemon's observation of it.
    Confirmed(Box<Observation>),
    /// Another outcome (its signature text); or `None` when the signature was re-run
    /// `CONFIRM_TRIES` times already and this case was only counted.
    NotConfirmed(Option<String>),
}

struct Campaign {
    cfg: CampaignConfig,
    env: PythonEnv,
    dialect: Dialect,
    /// The calibrated seeds, then the seeds that crash the worker natively unmutated (reported
    /// as findings, never picked): `pickable` are the first.
    seeds: Vec<Seed>,
    pickable: usize,
    /// Seeds that crash the worker natively, with their calibration run: reported before the
    /// lanes start.
    seed_crashes: Mutex<Vec<(Case, Observation)>>,
    seed_report: SeedReport,
    judge: Judge,
    exec: Executor,
    /// Persistent and warm-fork campaigns: the fork server that confirms, minimises and replays
    /// their findings.
    confirm: Option<Executor>,
    /// Held while a leak is confirmed on `confirm`, so the periodic leak check does not take
    /// the leak being waited for.
    confirm_leaks: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    corpus: Mutex<Vec<Case>>,
    corpus_keys: Mutex<HashSet<String>>,
    /// Findings (by id) first seen in this run.
    new_ids: Mutex<HashSet<String>>,
    execs: AtomicU64,
    minimise_runs: AtomicU64,
    harness_streak: AtomicU64,
    stop: AtomicBool,
    aborted: Mutex<Option<String>>,
    /// The first file fakejvm could not write: the campaign ends with it as its error.
    failed: Mutex<Option<HarnessError>>,
    started: Instant,
    base_execs: u64,
    base_elapsed_ms: u64,
    /// Findings of an earlier run that still want minimising: (id, reproducer file).
    pending: Mutex<Vec<(String, PathBuf)>>,
    /// With coverage: the map, its timeline and the cov-N entries made.
    coverage: Option<Mutex<Coverage>>,
    /// Applied mutations of this run by kind, for the summary.
    mutations: Mutex<BTreeMap<String, u64>>,
}

/// Run a campaign to its end (duration or max execs) and return its summary (also written to
/// `--out/summary.json`).
pub async fn run(env: PythonEnv, cfg: CampaignConfig) -> anyhow::Result<CampaignSummary> {
    let campaign = Arc::new(Campaign::prepare(env, cfg).await?);
    campaign.begin_run();
    campaign.report_seed_crashes().await;
    drive(&campaign).await;
    let campaign = match Arc::try_unwrap(campaign) {
        Ok(c) => c,
        Err(_) => anyhow::bail!(
            "fuzz campaign: a background task still holds the campaign after the lanes ended"
        ),
    };
    campaign.finish().await
}

impl Campaign {
    /// Seeds loaded and calibrated on a started executor, the state and corpus of an earlier
    /// run of `--out` read back.
    async fn prepare(env: PythonEnv, mut cfg: CampaignConfig) -> anyhow::Result<Campaign> {
        let dialect =
            Dialect::for_version(env.pyspark.major, env.pyspark.minor).ok_or_else(|| {
                BadInput::msg(format!(
                    "pyspark {} is older than any dialect fakejvm speaks",
                    env.pyspark
                ))
            })?;
        let corpus_dir = cfg.out.join(state::CORPUS_DIR);
        std::fs::create_dir_all(&corpus_dir).map_err(|e| {
            BadInput::new(&cfg.out, format!("cannot create the output directory: {e}"))
        })?;
        let (seeds, mut seed_report) =
            seeds::load(&env, dialect, &cfg.seed_dirs, cfg.builtin_seeds)?;
        cfg.deadline = seeds::deadline_for(&seeds, cfg.deadline, cfg.arrow_deadline);
        let state = State::load_or_new(&cfg.out, &env, dialect, cfg.mode)?;
        let (tracer, mut cov) = match &cfg.coverage {
            Some(c) => {
                CoverageConfig::check_mode(cfg.mode)?;
                let tracer = Tracer::for_env(&env)?;
                let cov = Coverage::load_or_new(&cfg.out, &tracer, c.feedback)?;
                (Some(tracer), Some(cov))
            }
            None => (None, None),
        };
        let options = ExecOptions {
            deadline: cfg.deadline,
            memory_limit_mb: cfg.memory_limit_mb,
            recycle_after: cfg.recycle_after,
            preload_arrow: seeds::has_arrow(&seeds),
            coverage: tracer,
            ..ExecOptions::default()
        };
        let exec = Executor::start(env.clone(), dialect, cfg.mode, options.clone()).await?;
        let confirm = if cfg.mode.needs_confirmation() {
            let untraced = ExecOptions {
                coverage: None,
                ..options
            };
            match Executor::start(env.clone(), dialect, ExecMode::ForkServer, untraced).await {
                Ok(c) => Some(c),
                Err(e) => {
                    let _ = exec.shutdown().await;
                    return Err(e);
                }
            }
        } else {
            None
        };
        if let Err(e) = exec.prestart(cfg.jobs).await {
            let _ = exec.shutdown().await;
            if let Some(c) = confirm {
                let _ = c.shutdown().await;
            }
            return Err(e);
        }
        let calibration = seeds::calibrate_all(seeds, &exec, cfg.jobs).await;
        seed_report.skipped.extend(calibration.dropped);
        let mut seeds = calibration.kept;
        let pickable = seeds.len();
        let mut seed_crashes = vec![];
        for (mut seed, obs) in calibration.crashed {
            seed_report.skipped.push(format!(
                "{}: {}: reported as a finding",
                seed.name,
                seeds::native_crash_words(&obs)
            ));
            seed.case.seed = Some(seeds.len());
            seed_crashes.push((seed.case.clone(), obs));
            seeds.push(seed);
        }
        if seeds.is_empty() {
            let why = seed_report
                .skipped
                .iter()
                .chain(&seed_report.other_dialect)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ");
            let _ = exec.shutdown().await;
            if let Some(c) = confirm {
                let _ = c.shutdown().await;
            }
            return Err(BadInput::msg(format!(
                "no seed runs cleanly against pyspark {}: {why}",
                env.pyspark
            ))
            .into());
        }
        let corpus = state::load_corpus(&cfg.out, &seeds);
        let pending = state.unminimised(&cfg.out);
        if let Some(c) = cov.as_mut() {
            // What the servers' imports and the seeds reached is known before the first case.
            c.add(&exec.take_unclaimed_coverage());
            c.skip_past(corpus.iter().map(|(k, _)| k));
            c.point(state.elapsed_ms as f64 / 1000.0, state.execs);
        }
        Ok(Campaign {
            judge: Judge {
                expected: cfg.expected.clone(),
                depth: cfg.sig_frames,
            },
            base_execs: state.execs,
            base_elapsed_ms: state.elapsed_ms,
            corpus_keys: Mutex::new(corpus.iter().map(|(k, _)| k.clone()).collect()),
            corpus: Mutex::new(corpus.into_iter().map(|(_, c)| c).collect()),
            state: Mutex::new(state),
            new_ids: Mutex::new(HashSet::new()),
            execs: AtomicU64::new(0),
            minimise_runs: AtomicU64::new(0),
            harness_streak: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            aborted: Mutex::new(None),
            failed: Mutex::new(None),
            started: Instant::now(),
            pending: Mutex::new(pending),
            coverage: cov.map(Mutex::new),
            mutations: Mutex::new(BTreeMap::new()),
            cfg,
            env,
            dialect,
            seeds,
            pickable,
            seed_crashes: Mutex::new(seed_crashes),
            seed_report,
            exec,
            confirm,
            confirm_leaks: tokio::sync::Mutex::new(()),
        })
    }

    /// Seeds that crash the worker natively unmutated: findings like any case's (confirmed,
    /// minimised, with their native stack), found at exec 0.
    async fn report_seed_crashes(&self) {
        let crashes =
            std::mem::take(&mut *self.seed_crashes.lock().unwrap_or_else(|p| p.into_inner()));
        for (case, obs) in crashes {
            if let Verdict::Finding(sig, outcome) =
                self.judge.judge(&obs, &case, case.seed_in(&self.seeds))
            {
                self.on_finding(case, sig, outcome, obs, 0).await;
            }
        }
    }

    /// This run's record, saved before the first case.
    fn begin_run(&self) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .runs
            .push(RunRecord {
                started: utc_now(),
                execs: 0,
                elapsed_ms: 0,
                finished: false,
            });
        self.save_state();
    }

    /// After the lanes: the executor shut down, the final state, counts and summary written.
    async fn finish(self) -> anyhow::Result<CampaignSummary> {
        let elapsed_ms = self.started.elapsed().as_millis() as u64;
        let restarts = self.exec.daemon_restarts();
        let mut daemon_pgids = self.exec.daemon_pids();
        let recycles = self.exec.recycles();
        let servers_started = self.exec.servers_started();
        let mut leftovers = self
            .exec
            .shutdown()
            .await
            .map(|s| s.leftovers)
            .unwrap_or_default();
        if let Some(c) = self.confirm {
            daemon_pgids.extend(c.daemon_pids());
            leftovers.extend(c.shutdown().await.map(|s| s.leftovers).unwrap_or_default());
        }
        if let Some(e) = self.failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e.into());
        }
        let execs = self.execs.load(Ordering::Relaxed);
        let min_runs = self.minimise_runs.load(Ordering::Relaxed);
        let mut st = self.state.into_inner().unwrap_or_else(|p| p.into_inner());
        st.execs += execs;
        st.elapsed_ms += elapsed_ms;
        st.minimise_runs += min_runs;
        st.daemon_restarts += restarts;
        if let Some(r) = st.runs.last_mut() {
            r.execs = execs;
            r.elapsed_ms = elapsed_ms;
            r.finished = true;
        }
        let out = &self.cfg.out;
        st.write(out)?;
        st.update_counts(out)?;
        let coverage = match &self.coverage {
            Some(c) => {
                let mut c = c.lock().unwrap_or_else(|p| p.into_inner()).clone();
                c.point(st.elapsed_ms as f64 / 1000.0, st.execs);
                Some(finish_coverage(&self.env, &self.cfg, c, st.execs)?)
            }
            None => None,
        };

        let new_ids = self.new_ids.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut findings = summary::findings(&st, &new_ids);
        summary::add_native_stacks(&mut findings, out);
        let summary = CampaignSummary {
            fakejvm: env!("CARGO_PKG_VERSION"),
            out: out.display().to_string(),
            pyspark: self.env.pyspark.to_string(),
            python: self.env.python_version.clone(),
            dialect: self.dialect,
            mode: self.cfg.mode,
            jobs: self.cfg.jobs,
            run: Figures::of(execs, elapsed_ms, min_runs),
            total: Figures::of(st.execs, st.elapsed_ms, st.minimise_runs),
            resumed: st.runs.len() > 1,
            seeds: self.seed_report,
            corpus: self
                .corpus
                .into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .len(),
            daemon_restarts: st.daemon_restarts,
            harness_errors: st.harness_errors,
            new_findings: findings.iter().filter(|f| f.new).count(),
            findings,
            expected: summary::top_expected(&st),
            leftover_processes: leftovers,
            unattributed_leaks: st.unattributed_leaks.clone(),
            not_confirmed: summary::not_confirmed(&st),
            recycles,
            servers_started,
            daemon_pgids,
            mutations: self
                .mutations
                .into_inner()
                .unwrap_or_else(|p| p.into_inner()),
            aborted: self.aborted.into_inner().unwrap_or_else(|p| p.into_inner()),
            coverage,
        };
        summary.write(out)?;
        Ok(summary)
    }
}

/// The final map saved, the executable lines of the files it reached computed (once, by the
/// target interpreter), and the HTML report written when asked for.
fn finish_coverage(
    env: &PythonEnv,
    cfg: &CampaignConfig,
    cov: Coverage,
    execs: u64,
) -> anyhow::Result<coverage::CoverageSummary> {
    let out = &cfg.out;
    cov.save(out)?;
    let mut files: Vec<String> = coverage::KEY_FILES.iter().map(|f| f.to_string()).collect();
    files.extend(
        cov.files()
            .keys()
            .filter(|f| !coverage::KEY_FILES.contains(&f.as_str()))
            .cloned(),
    );
    let executable = coverage::executable_lines(env, &files)?;
    let report = cfg.coverage.as_ref().and_then(|c| c.report.clone());
    if let Some(dir) = &report {
        coverage::write_report(
            dir,
            &env.pyspark_dir,
            &cov,
            &executable,
            &coverage::ReportHead {
                pyspark: &env.pyspark.to_string(),
                python: &env.python_version,
                execs,
            },
        )?;
    }
    Ok(cov.summary(&executable, report.as_deref()))
}

impl Campaign {
    /// AFL's rule: a case that reached lines of pyspark no earlier case reached joins the
    /// corpus as `cov-N` (with feedback; blind campaigns only count them).
    fn on_coverage(&self, case: &Case, lines: &CaseLines, verdict: &Verdict) {
        let Some(cov) = &self.coverage else { return };
        let (new, name) = {
            let mut c = cov.lock().unwrap_or_else(|p| p.into_inner());
            // A server started since (a recycle) ran pyspark's imports: no case's credit.
            let startup = self.exec.take_unclaimed_coverage();
            if !startup.is_empty() {
                c.add(&startup);
            }
            let new = c.add(lines);
            if new == 0 || !c.feedback || matches!(verdict, Verdict::Harness(_)) {
                return;
            }
            {
                let keys = self.corpus_keys.lock().unwrap_or_else(|p| p.into_inner());
                if keys.len() >= CORPUS_MAX {
                    return;
                }
            }
            (new, c.next_entry())
        };
        let signature = match verdict {
            Verdict::Finding(sig, _) | Verdict::Expected(sig) => sig.text(),
            Verdict::Harness(_) => String::new(),
        };
        if !self.check(state::save_coverage_entry(
            &self.cfg.out,
            &name,
            case,
            &self.seeds,
            signature,
            new,
        )) {
            return;
        }
        self.corpus_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name);
        self.corpus
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(case.clone());
    }

    /// A timeline point, and the map saved for a resumed campaign.
    fn coverage_point(&self) -> bool {
        let Some(cov) = &self.coverage else {
            return true;
        };
        let execs = self.base_execs + self.execs.load(Ordering::Relaxed);
        let secs =
            (self.base_elapsed_ms + self.started.elapsed().as_millis() as u64) as f64 / 1000.0;
        let snapshot = {
            let mut c = cov.lock().unwrap_or_else(|p| p.into_inner());
            c.point(secs, execs);
            c.clone()
        };
        self.check(snapshot.save(&self.cfg.out))
    }

    /// Lines reached and cov-N entries so far, for the progress line.
    fn coverage_now(&self) -> Option<(usize, u64)> {
        let c = self
            .coverage
            .as_ref()?
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Some((c.lines(), c.entries))
    }
}

/// The lanes and their helpers (progress line, periodic save, leak watch) until the campaign
/// stops, then a last leak check once the last cases' workers had their grace period.
async fn drive(campaign: &Arc<Campaign>) {
    // session::run_task's future is not Send (a watch guard lives across an await in its
    // writer), so the lanes run as local tasks on this thread; the Python side is the work.
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let progress = campaign
                .cfg
                .progress
                .then(|| spawn_progress(campaign.clone()));
            let saver = tokio::task::spawn_local(periodic_save(campaign.clone()));
            let leaks = tokio::task::spawn_local(watch_leaks(campaign.clone()));
            let lanes: Vec<_> = (0..campaign.cfg.jobs.max(1))
                .map(|id| tokio::task::spawn_local(lane(campaign.clone(), id)))
                .collect();
            for l in lanes {
                if let Err(e) = l.await {
                    campaign.abort(format!("a fuzz lane panicked: {e}"));
                }
            }
            campaign.stop.store(true, Ordering::Relaxed);
            let _ = leaks.await;
            campaign.last_leak_check().await;
            saver.abort();
            let _ = saver.await;
            if let Some((bar, task)) = progress {
                task.abort();
                let _ = task.await;
                bar.finish_and_clear();
            }
        })
        .await;
}

async fn lane(c: Arc<Campaign>, id: usize) {
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(c.cfg.rng_seed.wrapping_add(id as u64 * 0x9e37_79b9));
    let mut lane = Lane::default();
    loop {
        if c.should_stop() {
            break;
        }
        // Findings of an earlier run that were saved but not minimised: this lane does one.
        let next = c.pending.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some((sig_id, file)) = next {
            c.finish_pending(&sig_id, &file).await;
            continue;
        }
        if c.pickable == 0 {
            break; // every seed crashed the worker unmutated: reported, nothing to mutate
        }
        let mut case = c.pick(&mut rng);
        let ctx = Context {
            dialect: c.dialect,
            // Not the crashing seeds: nothing of theirs is spliced into other cases.
            seeds: &c.seeds[..c.pickable],
            mutate_command: c.cfg.mutate_command,
        };
        for _ in 0..4 {
            let applied = mutate::mutate(&mut case, &ctx, &mut rng);
            if !applied.is_empty() {
                let mut counts = c.mutations.lock().unwrap_or_else(|p| p.into_inner());
                for kind in applied {
                    *counts.entry(kind.to_string()).or_default() += 1;
                }
                break;
            }
        }
        let bytes = Arc::new(case.to_bytes());
        let (obs, lines) = c.exec.exec_traced(&mut lane, bytes).await;
        let n = c.execs.fetch_add(1, Ordering::Relaxed) + 1;
        let verdict = c.judge.judge(&obs, &case, case.seed_in(&c.seeds));
        if let Some(lines) = &lines {
            c.on_coverage(&case, lines, &verdict);
        }
        match verdict {
            Verdict::Finding(sig, outcome) => {
                c.harness_streak.store(0, Ordering::Relaxed);
                c.on_finding(case, sig, outcome, obs, n).await;
            }
            Verdict::Expected(sig) => {
                c.harness_streak.store(0, Ordering::Relaxed);
                c.on_expected(case, sig);
            }
            Verdict::Harness(e) => {
                c.state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .harness_errors += 1;
                if c.harness_streak.fetch_add(1, Ordering::Relaxed) + 1 >= HARNESS_STREAK_LIMIT {
                    c.abort(format!(
                        "{HARNESS_STREAK_LIMIT} harness errors in a row, the last: {e}"
                    ));
                }
            }
        }
    }
}

impl Campaign {
    fn should_stop(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return true;
        }
        let over = self.started.elapsed() >= self.cfg.duration
            || self
                .cfg
                .max_execs
                .is_some_and(|m| self.execs.load(Ordering::Relaxed) >= m);
        if over {
            self.stop.store(true, Ordering::Relaxed);
        }
        over
    }

    fn abort(&self, why: String) {
        tracing::error!("fuzz campaign aborted: {why}");
        self.aborted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(why);
        self.stop.store(true, Ordering::Relaxed);
    }

    /// fakejvm's own failure (a file it cannot write): the campaign stops and `run` returns it,
    /// rather than go on claiming findings whose files do not exist.
    fn fail(&self, e: HarnessError) {
        tracing::error!("fuzz campaign stopped: {e}");
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
        self.stop.store(true, Ordering::Relaxed);
    }

    /// `result`'s error, if any, stops the campaign; true when it was Ok.
    fn check(&self, result: Result<(), HarnessError>) -> bool {
        match result {
            Ok(()) => true,
            Err(e) => {
                self.fail(e);
                false
            }
        }
    }

    /// A seed half the time, else a corpus case.
    fn pick(&self, rng: &mut impl Rng) -> Case {
        let corpus = self.corpus.lock().unwrap_or_else(|p| p.into_inner());
        if corpus.is_empty() || rng.random_bool(0.5) {
            self.seeds[rng.random_range(0..self.pickable)].case.clone()
        } else {
            corpus[rng.random_range(0..corpus.len())].clone()
        }
    }

    /// Keep the case when it shows a behaviour the corpus has not seen.
    fn add_to_corpus(&self, case: &Case, sig: &Signature) {
        if case.seed.is_some_and(|i| i >= self.pickable) {
            return; // a seed that crashes the worker unmutated is a finding, never mutated
        }
        let id = sig.id();
        {
            let mut keys = self.corpus_keys.lock().unwrap_or_else(|p| p.into_inner());
            if keys.len() >= CORPUS_MAX || !keys.insert(id.clone()) {
                return;
            }
        }
        if !self.check(state::save_corpus_entry(
            &self.cfg.out,
            case,
            &self.seeds,
            sig,
        )) {
            return;
        }
        self.corpus
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(case.clone());
    }

    fn on_expected(&self, case: Case, sig: Signature) {
        let id = sig.id();
        let new = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let e = st.expected.entry(id).or_insert_with(|| ExpectedRecord {
                text: sig.text(),
                count: 0,
            });
            e.count += 1;
            e.count == 1
        };
        if new {
            self.add_to_corpus(&case, &sig);
        }
    }

    async fn on_finding(
        &self,
        case: Case,
        sig: Signature,
        outcome: Outcome,
        obs: Observation,
        exec_no: u64,
    ) {
        let id = sig.id();
        let file_name = reproducer::file_name(&sig);
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(f) = st.findings.get_mut(&id) {
                f.count += 1;
                return;
            }
        }
        // Persistent and warm-fork: only what the real daemon reproduces is a finding.
        let mut obs = obs;
        let mut outcome = outcome;
        if let Some(daemon) = &self.confirm {
            match self.confirm_on_daemon(daemon, &case, &sig).await {
                Confirmation::Confirmed(on_daemon) => {
                    if let Verdict::Finding(_, o) =
                        self.judge
                            .judge(&on_daemon, &case, case.seed_in(&self.seeds))
                    {
                        outcome = o;
                    }
                    obs = *on_daemon;
                }
                Confirmation::NotConfirmed(said) => {
                    let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    let r = st
                        .not_confirmed
                        .entry(id)
                        .or_insert_with(|| NotConfirmedRecord {
                            text: sig.text(),
                            count: 0,
                            checked: 0,
                            daemon_said: String::new(),
                            first_at: utc_now(),
                        });
                    r.count += 1;
                    if let Some(said) = said {
                        r.checked += 1;
                        r.daemon_said = said;
                    }
                    return;
                }
            }
        }
        let first = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            match st.findings.get_mut(&id) {
                Some(f) => {
                    f.count += 1;
                    false
                }
                None => {
                    st.findings.insert(
                        id.clone(),
                        FindingRecord {
                            signature: sig.clone(),
                            text: sig.text(),
                            count: 1,
                            file: file_name.clone(),
                            minimised: false,
                            flaky: false,
                            len: case.len(),
                            first_exec: self.base_execs + exec_no,
                            first_at: utc_now(),
                        },
                    );
                    true
                }
            }
        };
        if !first {
            return;
        }
        self.new_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone());
        let path = self.cfg.out.join(&file_name);
        // Saved before anything else: a campaign killed from here on still has it.
        let raw = self.reproducer(&case, &sig, &outcome, &obs, None, case.len(), exec_no);
        if !self.check(state::save_reproducer(&raw, &path)) || !self.save_state() {
            return;
        }
        self.add_to_corpus(&case, &sig);
        if sig.kind == OutcomeKind::LeakedProcess {
            return; // each test would wait the leak grace period: kept as found
        }
        self.minimise_and_save(case, sig, raw, &path).await;
    }

    /// Re-run a case another executor found on the fork server (twice before it is called not
    /// reproduced, as a fresh-worker check is); a leak waits the grace period and asks the fork
    /// server's leak watch.
    async fn confirm_on_daemon(
        &self,
        daemon: &Executor,
        case: &Case,
        sig: &Signature,
    ) -> Confirmation {
        let id = sig.id();
        let checked = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .not_confirmed
            .get(&id)
            .map(|r| r.checked)
            .unwrap_or(0);
        if checked >= CONFIRM_TRIES {
            return Confirmation::NotConfirmed(None);
        }
        let seed = case.seed_in(&self.seeds);
        let bytes = Arc::new(case.to_bytes());
        let mut said = String::new();
        for _ in 0..2 {
            let obs = daemon.exec_fresh(bytes.clone()).await;
            self.minimise_runs.fetch_add(1, Ordering::Relaxed);
            let got = if sig.kind == OutcomeKind::LeakedProcess {
                let _hold = self.confirm_leaks.lock().await;
                tokio::time::sleep(self.cfg.leak_grace + Duration::from_millis(300)).await;
                let leaks = daemon.leaked(self.cfg.leak_grace).await;
                match leaks.iter().find(|l| l.bytes.as_deref() == Some(&bytes)) {
                    Some(l) => Signature::of(
                        &Outcome::LeakedProcess {
                            processes: vec![(l.pid, l.cmdline.clone())],
                        },
                        None,
                        self.cfg.sig_frames,
                    ),
                    None => self.judge.signature(&obs, case, seed),
                }
            } else {
                self.judge.signature(&obs, case, seed)
            };
            if &got == sig {
                return Confirmation::Confirmed(Box::new(obs));
            }
            said = got.text();
        }
        Confirmation::NotConfirmed(Some(said))
    }

    /// The executor findings are minimised and replayed on: the confirming fork server when
    /// there is one.
    fn replay_exec(&self) -> &Executor {
        self.confirm.as_ref().unwrap_or(&self.exec)
    }

    /// Confirm on a fresh worker, minimise, and rewrite the reproducer.
    async fn minimise_and_save(&self, case: Case, sig: Signature, raw: Reproducer, path: &Path) {
        let id = sig.id();
        let seed = case.seed_in(&self.seeds);
        let mut check = TimedCheck {
            live: LiveCheck {
                exec: self.replay_exec(),
                judge: &self.judge,
                seed,
                target: &sig,
            },
            // Never long past the campaign's own end: an unfinished minimisation is picked up
            // again when the campaign is resumed.
            until: (Instant::now() + self.cfg.minimise_time)
                .min(self.started + self.cfg.duration + Duration::from_secs(5)),
            runs: 0,
        };
        let confirmed = check.reproduces(&case).await || check.reproduces(&case).await;
        if !confirmed && check.out_of_time() {
            // Not flaky, just late: left unminimised for a resumed campaign to finish.
            self.minimise_runs
                .fetch_add(check.runs as u64, Ordering::Relaxed);
            return;
        }
        if !confirmed {
            self.minimise_runs
                .fetch_add(check.runs as u64, Ordering::Relaxed);
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(f) = st.findings.get_mut(&id) {
                f.flaky = true;
            }
            drop(st);
            self.save_state();
            return;
        }
        let (min, stats) = minimise(&case, &mut check, self.cfg.minimise_runs).await;
        // One more run of the minimised case for its outcome and traceback.
        let bytes = Arc::new(min.to_bytes());
        let obs = self.replay_exec().exec_fresh(bytes).await;
        check.runs += 1;
        self.minimise_runs
            .fetch_add(check.runs as u64, Ordering::Relaxed);
        let final_sig = self.judge.signature(&obs, &min, seed);
        let repro = if final_sig == sig {
            let outcome = match self.judge.judge(&obs, &min, seed) {
                Verdict::Finding(_, out) => out,
                _ => obs.outcome.clone(),
            };
            let mut r = self.reproducer(
                &min,
                &sig,
                &outcome,
                &obs,
                Some(&stats),
                case.len(),
                raw.found.exec,
            );
            r.found = raw.found.clone();
            r.confirmed_in = Some(r.mode);
            r
        } else {
            // The minimised case reproduced during ddmin but not on this last run: keep the
            // confirmed original rather than a case that may not replay.
            tracing::warn!("finding {id}: the minimised case ended in {} on its final run; keeping the original", final_sig.text());
            Reproducer {
                confirmed_in: Some(raw.mode),
                ..raw.clone()
            }
        };
        let mut repro = repro;
        if native_stack::is_native_crash(&repro.signature) {
            native_stack::fill(&mut repro, &self.env).await;
        }
        if !self.check(state::save_reproducer(&repro, path)) {
            return;
        }
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(f) = st.findings.get_mut(&id) {
                f.minimised = repro.minimised;
                f.len = repro.request.len;
            }
        }
        self.save_state();
    }

    /// A finding of an earlier run saved before it could be minimised.
    async fn finish_pending(&self, sig_id: &str, path: &Path) {
        let Ok(raw) = Reproducer::load(path) else {
            tracing::warn!(
                "{}: not a readable reproducer, left as it is",
                path.display()
            );
            return;
        };
        let Ok(mut case) = raw.case() else { return };
        case.seed = self.seeds.iter().position(|s| s.name == raw.found.seed);
        if raw.signature.id() != sig_id {
            return;
        }
        self.minimise_and_save(case, raw.signature.clone(), raw, path)
            .await;
    }

    #[allow(clippy::too_many_arguments)]
    fn reproducer(
        &self,
        case: &Case,
        sig: &Signature,
        outcome: &Outcome,
        obs: &Observation,
        stats: Option<&MinimiseStats>,
        original_len: usize,
        exec_no: u64,
    ) -> Reproducer {
        let file = self.cfg.out.join(reproducer::file_name(sig));
        let seed = case.seed_in(&self.seeds);
        let crashed = matches!(outcome, Outcome::WorkerCrashed { .. });
        Reproducer {
            kind: reproducer::KIND.into(),
            format: reproducer::FORMAT,
            title: format!("{} (pyspark {})", sig.text(), self.env.pyspark),
            pyspark: self.env.pyspark.to_string(),
            python: self.env.python_version.clone(),
            dialect: self.dialect,
            mode: self.replay_exec().mode,
            found_in: Some(self.cfg.mode),
            // Persistent and warm-fork findings reach here confirmed on the fork server.
            confirmed_in: self.confirm.as_ref().map(|c| c.mode),
            close_after_write: obs.close_after_write,
            deadline_ms: self.cfg.deadline.as_millis() as u64,
            memory_limit_mb: self.cfg.memory_limit_mb,
            signature_id: sig.id(),
            signature: sig.clone(),
            signature_frames: self.cfg.sig_frames,
            request: RequestBytes::of(case),
            round_trip: seed
                .and_then(|s| s.round_trip)
                .filter(|_| sig.kind == OutcomeKind::Mismatch)
                .map(Into::into),
            outcome: serde_json::to_value(outcome).unwrap_or_default(),
            // A crash's text is faulthandler's dump (innermost frame first, so never cut from
            // the top); any other is a -2 traceback (innermost last).
            traceback: obs
                .traceback
                .as_deref()
                .filter(|_| !crashed)
                .map(trim_traceback),
            worker_at_deadline: obs.worker_at_deadline.clone(),
            fault_dump: obs.traceback.clone().filter(|_| crashed),
            native_stack: None,
            native_stack_missing: None,
            minimised: stats.is_some(),
            minimise: stats.and_then(|s| serde_json::to_value(s).ok()),
            original_len,
            found: Found {
                at: utc_now(),
                seed: seed.map(|s| s.name.clone()).unwrap_or_default(),
                exec: self.base_execs + exec_no,
                count: 1,
            },
            replay: format!("fakejvm repro {}", file.display()),
        }
    }

    /// Workers of the last cases get the grace period before the final leak check.
    async fn last_leak_check(&self) {
        let until = Instant::now() + self.cfg.leak_grace + Duration::from_millis(500);
        while self.exec.watched() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.report_leaks().await;
        }
        self.report_leaks().await;
    }

    async fn report_leaks(&self) {
        let mut leaks = self.exec.leaked(self.cfg.leak_grace).await;
        let mut confirmed = vec![];
        if let Some(c) = &self.confirm {
            // Leaks of minimisation and confirmation runs happen on the daemon itself. Skipped
            // while a leak is being confirmed there (that check takes its own leak).
            if let Ok(_hold) = self.confirm_leaks.try_lock() {
                confirmed = c.leaked(self.cfg.leak_grace).await;
            }
        }
        let from_daemon = confirmed.len();
        leaks.extend(confirmed);
        let total = leaks.len();
        for (i, leak) in leaks.into_iter().enumerate() {
            let on_daemon = i >= total - from_daemon;
            let outcome = Outcome::LeakedProcess {
                processes: vec![(leak.pid, leak.cmdline.clone())],
            };
            let Some(bytes) = leak.bytes else {
                // No case to replay: counted and listed, killed by the executor.
                tracing::warn!(
                    "a process of the daemon's group outlived its case: {} {}",
                    leak.pid,
                    leak.cmdline
                );
                self.state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .unattributed_leaks
                    .push((leak.pid, leak.cmdline));
                continue;
            };
            let sig = Signature::of(&outcome, None, self.cfg.sig_frames);
            let (reqs, _) = decode_requests(self.dialect, &bytes);
            let spans = reqs.first().map(|r| r.spans.clone()).unwrap_or_default();
            let case = Case::from_spans(None, &bytes, &spans);
            let obs = Observation {
                outcome: outcome.clone(),
                traceback: None,
                pid: Some(leak.pid),
                reply: None,
                close_after_write: Executor::close_after_write(self.cfg.mode, self.dialect, &bytes),
                elapsed: Duration::ZERO,
                daemon_restarted: false,
                reused_worker: false,
                worker_at_deadline: None,
            };
            let n = self.execs.load(Ordering::Relaxed);
            if on_daemon {
                self.on_daemon_finding(case, sig, outcome, obs, n).await;
            } else {
                self.on_finding(case, sig, outcome, obs, n).await;
            }
        }
    }

    /// A leak found on the confirming fork server itself (by a minimisation or confirmation
    /// run): already where it would be confirmed, so recorded as found there.
    async fn on_daemon_finding(
        &self,
        case: Case,
        sig: Signature,
        outcome: Outcome,
        obs: Observation,
        exec_no: u64,
    ) {
        let id = sig.id();
        let file_name = reproducer::file_name(&sig);
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(f) = st.findings.get_mut(&id) {
                f.count += 1;
                return;
            }
            st.findings.insert(
                id.clone(),
                FindingRecord {
                    signature: sig.clone(),
                    text: sig.text(),
                    count: 1,
                    file: file_name.clone(),
                    minimised: false,
                    flaky: false,
                    len: case.len(),
                    first_exec: self.base_execs + exec_no,
                    first_at: utc_now(),
                },
            );
        }
        self.new_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        let mut raw = self.reproducer(&case, &sig, &outcome, &obs, None, case.len(), exec_no);
        raw.found_in = Some(ExecMode::ForkServer);
        let path = self.cfg.out.join(&file_name);
        if self.check(state::save_reproducer(&raw, &path)) {
            self.save_state();
        }
    }

    /// Rewrite state.json with the figures so far; false (and the campaign stopped) when it
    /// cannot be written.
    fn save_state(&self) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // The figures so far, so a killed campaign resumes from about here.
        let execs = self.execs.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed().as_millis() as u64;
        st.execs = self.base_execs + execs;
        st.elapsed_ms = self.base_elapsed_ms + elapsed;
        st.minimise_runs += self.minimise_runs.load(Ordering::Relaxed);
        st.daemon_restarts += self.exec.daemon_restarts();
        if let Some(r) = st.runs.last_mut() {
            r.execs = execs;
            r.elapsed_ms = elapsed;
        }
        self.check(st.write(&self.cfg.out))
    }
}

/// The live check with a wall-clock limit: past it, nothing reproduces any more, which ends
/// ddmin quickly (a hang costs a whole deadline per run).
struct TimedCheck<'a> {
    live: LiveCheck<'a>,
    until: Instant,
    runs: usize,
}

impl TimedCheck<'_> {
    fn out_of_time(&self) -> bool {
        Instant::now() >= self.until
    }
}

impl Reproduces for TimedCheck<'_> {
    async fn reproduces(&mut self, candidate: &Case) -> bool {
        if self.out_of_time() {
            return false;
        }
        self.runs += 1;
        self.live.reproduces(candidate).await
    }
}

fn trim_traceback(tb: &str) -> String {
    let lines: Vec<&str> = tb.lines().collect();
    if lines.len() <= 40 {
        return tb.to_string();
    }
    format!(
        "[{} lines cut]\n{}",
        lines.len() - 40,
        lines[lines.len() - 40..].join("\n")
    )
}

async fn periodic_save(c: Arc<Campaign>) {
    loop {
        tokio::time::sleep(coverage::POINT_EVERY).await;
        if !c.save_state() || !c.coverage_point() {
            return;
        }
    }
}

async fn watch_leaks(c: Arc<Campaign>) {
    while !c.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.report_leaks().await;
    }
}

fn spawn_progress(c: Arc<Campaign>) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    let bar = if tty {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .expect("a valid template"),
    );
    let b = bar.clone();
    let task = tokio::task::spawn_local(async move {
        let mut last_line = Instant::now();
        let (mut last_execs, mut last_at) = (0u64, Instant::now());
        // Lines reached when the last line was printed (on a terminal: 30 s ago at most).
        let mut lines_then = c.coverage_now().map(|(l, _)| l).unwrap_or(0);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let execs = c.execs.load(Ordering::Relaxed);
            let rate = (execs - last_execs) as f64 / last_at.elapsed().as_secs_f64().max(1e-3);
            (last_execs, last_at) = (execs, Instant::now());
            let (findings, behaviours) = {
                let st = c.state.lock().unwrap_or_else(|p| p.into_inner());
                (st.findings.len(), st.expected.len())
            };
            let new = c.new_ids.lock().unwrap_or_else(|p| p.into_inner()).len();
            let corpus = c.corpus.lock().unwrap_or_else(|p| p.into_inner()).len();
            let not_confirmed: u64 = c
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .not_confirmed
                .values()
                .map(|r| r.count)
                .sum();
            let mut msg = format!(
                "{execs} execs ({rate:.0}/s) | findings {findings} ({new} new) | corpus {corpus} | clean behaviours {behaviours} | restarts {}",
                c.exec.daemon_restarts()
            );
            if c.confirm.is_some() {
                msg.push_str(&format!(" | not confirmed {not_confirmed}"));
            }
            let coverage = c.coverage_now();
            if let Some((lines, entries)) = coverage {
                msg.push_str(&format!(
                    " | coverage {lines} lines (+{} since the last line), {entries} cov entries",
                    lines.saturating_sub(lines_then)
                ));
            }
            let due = last_line.elapsed() >= Duration::from_secs(30);
            if tty {
                b.set_message(msg);
                b.tick();
            } else if due {
                eprintln!("fuzz: {msg}");
            }
            if due {
                last_line = Instant::now();
                lines_then = coverage.map(|(l, _)| l).unwrap_or(lines_then);
            }
        }
    });
    (bar, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_tracebacks_keep_their_end() {
        let tb: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let t = trim_traceback(&tb);
        assert!(
            t.starts_with("[60 lines cut]") && t.ends_with("line 99"),
            "{t}"
        );
    }
}
