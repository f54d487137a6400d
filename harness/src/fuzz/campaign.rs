//! The live campaign: lanes pick a seed or corpus case, mutate it, run it on a real worker, judge
//! it, and save what is new.
//!
//! Everything lives in `--out`: `state.json` (counts, signatures, runs; rewritten atomically every
//! few seconds), one reproducer file per finding (written the moment it is found, then again once
//! minimised), `corpus/` (one case per distinct behaviour), and `summary.json` at the end. A
//! campaign that finds `state.json` in `--out` resumes it: known signatures are not reported
//! again, the corpus is reloaded, and findings that were not minimised yet are minimised first.

use super::case::Case;
use super::exec::{ExecMode, ExecOptions, Executor, Lane, Observation};
use super::minimise::{minimise, LiveCheck, MinimiseStats, Reproduces};
use super::mutate::{self, Context};
use super::oracle::{ExpectedRule, Judge, Verdict};
use super::seeds::{self, Seed, SeedReport};
use super::signature::Signature;
use crate::golden::format::utc_now;
use crate::protocol::{decode_requests, Dialect};
use crate::pyenv::PythonEnv;
use crate::repro::{self, BadInput, Found, Reproducer, RequestBytes};
use crate::verdict::{Outcome, OutcomeKind};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const STATE_FILE: &str = "state.json";
pub const SUMMARY_FILE: &str = "summary.json";
const STATE_KIND: &str = "fakejvm-fuzz-state";
const STATE_FORMAT: u32 = 1;
/// One corpus case per behaviour, up to this many.
const CORPUS_MAX: usize = 4096;
/// This many harness errors in a row (no daemon, cannot connect) end the campaign.
const HARNESS_STREAK_LIMIT: u64 = 50;

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
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FindingRecord {
    pub signature: Signature,
    pub text: String,
    pub count: u64,
    /// The reproducer, relative to --out.
    pub file: String,
    pub minimised: bool,
    /// Did not reproduce on a fresh worker when checked (kept, not minimised).
    #[serde(default)]
    pub flaky: bool,
    pub len: usize,
    pub first_exec: u64,
    pub first_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExpectedRecord {
    pub text: String,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub started: String,
    pub execs: u64,
    pub elapsed_ms: u64,
    pub finished: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    kind: String,
    format: u32,
    pyspark: String,
    python: String,
    dialect: Dialect,
    mode: ExecMode,
    execs: u64,
    elapsed_ms: u64,
    minimise_runs: u64,
    harness_errors: u64,
    daemon_restarts: u64,
    runs: Vec<RunRecord>,
    findings: BTreeMap<String, FindingRecord>,
    expected: BTreeMap<String, ExpectedRecord>,
    /// Processes found alive in the daemon's group with no case to blame (killed).
    #[serde(default)]
    unattributed_leaks: Vec<(i32, String)>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Figures {
    pub execs: u64,
    pub elapsed_ms: u64,
    pub execs_per_sec: f64,
    pub minimise_runs: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct FindingSummary {
    pub id: String,
    pub signature: String,
    pub count: u64,
    pub file: String,
    pub minimised: bool,
    pub flaky: bool,
    pub len: usize,
    pub new: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct CampaignSummary {
    pub fakejvm: &'static str,
    pub out: String,
    pub pyspark: String,
    pub python: String,
    pub dialect: Dialect,
    pub mode: ExecMode,
    pub jobs: usize,
    /// This run, then all runs of this --out together.
    pub run: Figures,
    pub total: Figures,
    pub resumed: bool,
    pub seeds: SeedReport,
    pub corpus: usize,
    pub daemon_restarts: u64,
    pub harness_errors: u64,
    pub findings: Vec<FindingSummary>,
    pub new_findings: usize,
    /// The most frequent clean outcomes (expected exceptions and passes).
    pub expected: Vec<ExpectedRecord>,
    /// Processes of ours alive after the campaign's shutdown (then killed): must be empty.
    pub leftover_processes: Vec<(i32, String)>,
    /// Processes of the daemon's group that outlived their case with no case known (killed).
    pub unattributed_leaks: Vec<(i32, String)>,
    /// The daemons this run started (pid = process group id), for checking that nothing of
    /// theirs is left.
    pub daemon_pgids: Vec<i32>,
    /// Why the campaign stopped early, if it did.
    pub aborted: Option<String>,
}

impl CampaignSummary {
    /// A few lines for the terminal.
    pub fn text(&self) -> String {
        let mut s = format!(
            "fuzz: pyspark {} | dialect {:?} | {} x{} | {} execs in {:.1} s = {:.0} execs/s | corpus {} | {} finding(s), {} new{}\n",
            self.pyspark,
            self.dialect,
            self.mode.name(),
            self.jobs,
            self.run.execs,
            self.run.elapsed_ms as f64 / 1000.0,
            self.run.execs_per_sec,
            self.corpus,
            self.findings.len(),
            self.new_findings,
            if self.resumed { format!(" (resumed: {} execs in total)", self.total.execs) } else { String::new() },
        );
        s.push_str(&format!(
            "  seeds: {} built-in, {} scenario task(s), {} golden request(s)\n",
            self.seeds.builtin, self.seeds.scenario_tasks, self.seeds.golden_requests
        ));
        // Goldens of other request families are left out by design: one line for all of them.
        if !self.seeds.other_dialect.is_empty() {
            s.push_str(&format!(
                "    left out: {} golden(s) recorded in other dialects\n",
                self.seeds.other_dialect.len()
            ));
        }
        let rest = &self.seeds.skipped;
        for why in rest.iter().take(8) {
            s.push_str(&format!("    left out: {why}\n"));
        }
        if rest.len() > 8 {
            s.push_str(&format!(
                "    left out: {} more (see summary.json)\n",
                rest.len() - 8
            ));
        }
        for f in &self.findings {
            let state = if f.flaky {
                "flaky"
            } else if f.minimised {
                "minimised"
            } else {
                "raw"
            };
            s.push_str(&format!(
                "  {:>6}x  {}  [{} {} B]  {}\n",
                f.count, f.file, state, f.len, f.signature
            ));
        }
        if !self.leftover_processes.is_empty() {
            s.push_str(&format!(
                "  LEAKED after shutdown: {:?}\n",
                self.leftover_processes
            ));
        }
        if !self.unattributed_leaks.is_empty() {
            s.push_str(&format!(
                "  outlived their case (no case known, killed): {:?}\n",
                self.unattributed_leaks
            ));
        }
        if let Some(a) = &self.aborted {
            s.push_str(&format!("  aborted: {a}\n"));
        }
        s.push_str(&format!(
            "  summary: {}",
            Path::new(&self.out).join(SUMMARY_FILE).display()
        ));
        s
    }
}

struct Campaign {
    cfg: CampaignConfig,
    env: PythonEnv,
    dialect: Dialect,
    seeds: Vec<Seed>,
    judge: Judge,
    exec: Executor,
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
    started: Instant,
    base_execs: u64,
    base_elapsed_ms: u64,
    /// Findings of an earlier run that still want minimising: (id, reproducer file).
    pending: Mutex<Vec<(String, PathBuf)>>,
}

/// Run a campaign to its end (duration or max execs) and return its summary (also written to
/// `--out/summary.json`).
pub async fn run(env: PythonEnv, cfg: CampaignConfig) -> anyhow::Result<CampaignSummary> {
    let dialect = Dialect::for_version(env.pyspark.major, env.pyspark.minor).ok_or_else(|| {
        BadInput(format!(
            "pyspark {} is older than any dialect fakejvm speaks",
            env.pyspark
        ))
    })?;
    std::fs::create_dir_all(cfg.out.join("corpus"))
        .map_err(|e| BadInput::new(&cfg.out, format!("cannot create the output directory: {e}")))?;
    let (seeds, mut seed_report) = seeds::load(&env, dialect, &cfg.seed_dirs, cfg.builtin_seeds)?;
    let state = load_or_new_state(&cfg, &env, dialect)?;
    let exec = Executor::start(
        env.clone(),
        dialect,
        cfg.mode,
        ExecOptions {
            deadline: cfg.deadline,
            memory_limit_mb: cfg.memory_limit_mb,
            ..ExecOptions::default()
        },
    )
    .await?;
    let (seeds, dropped) = seeds::calibrate(seeds, &exec, cfg.jobs).await;
    seed_report.skipped.extend(dropped);
    if seeds.is_empty() {
        return Err(BadInput(format!(
            "no seed runs cleanly against pyspark {}: {}",
            env.pyspark,
            seed_report
                .skipped
                .iter()
                .chain(&seed_report.other_dialect)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ))
        .into());
    }
    let corpus = load_corpus(&cfg.out, &seeds);
    let pending = unminimised(&cfg.out, &state);

    let campaign = Arc::new(Campaign {
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
        started: Instant::now(),
        pending: Mutex::new(pending),
        cfg,
        env,
        dialect,
        seeds,
        exec,
    });
    {
        let mut st = campaign.state.lock().unwrap_or_else(|p| p.into_inner());
        st.runs.push(RunRecord {
            started: utc_now(),
            execs: 0,
            elapsed_ms: 0,
            finished: false,
        });
    }
    campaign.save_state();

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
            let mut lanes = vec![];
            for id in 0..campaign.cfg.jobs.max(1) {
                lanes.push(tokio::task::spawn_local(lane(campaign.clone(), id)));
            }
            for l in lanes {
                if let Err(e) = l.await {
                    campaign.abort(format!("a fuzz lane panicked: {e}"));
                }
            }
            campaign.stop.store(true, Ordering::Relaxed);
            let _ = leaks.await;
            // Workers of the last cases get the grace period before the final leak check.
            let until = Instant::now() + campaign.cfg.leak_grace + Duration::from_millis(500);
            while campaign.exec.watched() > 0 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(200)).await;
                campaign.report_leaks().await;
            }
            campaign.report_leaks().await;
            saver.abort();
            let _ = saver.await;
            if let Some((bar, task)) = progress {
                task.abort();
                let _ = task.await;
                bar.finish_and_clear();
            }
        })
        .await;

    let elapsed_ms = campaign.started.elapsed().as_millis() as u64;
    let campaign = match Arc::try_unwrap(campaign) {
        Ok(c) => c,
        Err(_) => anyhow::bail!(
            "fuzz campaign: a background task still holds the campaign after the lanes ended"
        ),
    };
    let restarts = campaign.exec.daemon_restarts();
    let daemon_pgids = campaign.exec.daemon_pids();
    let shutdown = campaign.exec.shutdown().await;
    let leftovers = shutdown.map(|s| s.leftovers).unwrap_or_default();

    let execs = campaign.execs.load(Ordering::Relaxed);
    let min_runs = campaign.minimise_runs.load(Ordering::Relaxed);
    let mut st = campaign
        .state
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    st.execs += execs;
    st.elapsed_ms += elapsed_ms;
    st.minimise_runs += min_runs;
    st.daemon_restarts += restarts;
    if let Some(r) = st.runs.last_mut() {
        r.execs = execs;
        r.elapsed_ms = elapsed_ms;
        r.finished = true;
    }
    let out = &campaign.cfg.out;
    write_state(out, &st);
    update_counts(out, &st);

    let new_ids = campaign
        .new_ids
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    let mut findings: Vec<FindingSummary> = st
        .findings
        .iter()
        .map(|(id, f)| FindingSummary {
            id: id.clone(),
            signature: f.text.clone(),
            count: f.count,
            file: f.file.clone(),
            minimised: f.minimised,
            flaky: f.flaky,
            len: f.len,
            new: new_ids.contains(id),
        })
        .collect();
    findings.sort_by(|a, b| b.count.cmp(&a.count).then(a.file.cmp(&b.file)));
    let mut expected: Vec<ExpectedRecord> = st.expected.values().cloned().collect();
    expected.sort_by_key(|e| std::cmp::Reverse(e.count));
    expected.truncate(30);
    let per_sec = |n: u64, ms: u64| {
        if ms == 0 {
            0.0
        } else {
            n as f64 * 1000.0 / ms as f64
        }
    };
    let summary = CampaignSummary {
        fakejvm: env!("CARGO_PKG_VERSION"),
        out: out.display().to_string(),
        pyspark: campaign.env.pyspark.to_string(),
        python: campaign.env.python_version.clone(),
        dialect: campaign.dialect,
        mode: campaign.cfg.mode,
        jobs: campaign.cfg.jobs,
        run: Figures {
            execs,
            elapsed_ms,
            execs_per_sec: per_sec(execs, elapsed_ms),
            minimise_runs: min_runs,
        },
        total: Figures {
            execs: st.execs,
            elapsed_ms: st.elapsed_ms,
            execs_per_sec: per_sec(st.execs, st.elapsed_ms),
            minimise_runs: st.minimise_runs,
        },
        resumed: st.runs.len() > 1,
        seeds: seed_report,
        corpus: campaign
            .corpus
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .len(),
        daemon_restarts: st.daemon_restarts,
        harness_errors: st.harness_errors,
        new_findings: findings.iter().filter(|f| f.new).count(),
        findings,
        expected,
        leftover_processes: leftovers,
        unattributed_leaks: st.unattributed_leaks.clone(),
        daemon_pgids,
        aborted: campaign
            .aborted
            .into_inner()
            .unwrap_or_else(|p| p.into_inner()),
    };
    let mut bytes = serde_json::to_vec_pretty(&summary)?;
    bytes.push(b'\n');
    crate::report::write_atomic(&out.join(SUMMARY_FILE), &bytes)?;
    Ok(summary)
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
        let mut case = c.pick(&mut rng);
        let ctx = Context {
            dialect: c.dialect,
            seeds: &c.seeds,
            mutate_command: c.cfg.mutate_command,
        };
        for _ in 0..4 {
            if mutate::mutate(&mut case, &ctx, &mut rng) > 0 {
                break;
            }
        }
        let bytes = Arc::new(case.to_bytes());
        let obs = c.exec.exec(&mut lane, bytes).await;
        let n = c.execs.fetch_add(1, Ordering::Relaxed) + 1;
        match c.judge.judge(&obs, &case, c.seeds.get(case.seed)) {
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

    /// A seed half the time, else a corpus case.
    fn pick(&self, rng: &mut impl Rng) -> Case {
        let corpus = self.corpus.lock().unwrap_or_else(|p| p.into_inner());
        if corpus.is_empty() || rng.random_bool(0.5) {
            self.seeds[rng.random_range(0..self.seeds.len())]
                .case
                .clone()
        } else {
            corpus[rng.random_range(0..corpus.len())].clone()
        }
    }

    /// Keep the case when it shows a behaviour the corpus has not seen.
    fn add_to_corpus(&self, case: &Case, sig: &Signature) {
        let id = sig.id();
        {
            let mut keys = self.corpus_keys.lock().unwrap_or_else(|p| p.into_inner());
            if keys.len() >= CORPUS_MAX || !keys.insert(id.clone()) {
                return;
            }
        }
        let seed = self
            .seeds
            .get(case.seed)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let entry = CorpusEntry {
            seed,
            signature: sig.text(),
            frames: case.frames.clone(),
        };
        if let Ok(bytes) = serde_json::to_vec(&entry) {
            let _ = crate::report::write_atomic(
                &self.cfg.out.join("corpus").join(format!("{id}.json")),
                &bytes,
            );
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
        let file_name = format!("{}-{id}.json", sig.slug());
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
        if let Err(e) = raw.save(&path) {
            tracing::error!("cannot write the reproducer {}: {e}", path.display());
        }
        self.save_state();
        self.add_to_corpus(&case, &sig);
        if sig.kind == OutcomeKind::LeakedProcess {
            return; // each test would wait the leak grace period: kept as found
        }
        self.minimise_and_save(case, sig, raw, &path).await;
    }

    /// Confirm on a fresh worker, minimise, and rewrite the reproducer.
    async fn minimise_and_save(&self, case: Case, sig: Signature, raw: Reproducer, path: &Path) {
        let id = sig.id();
        let seed = self.seeds.get(case.seed);
        let mut check = TimedCheck {
            live: LiveCheck {
                exec: &self.exec,
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
        let obs = self.exec.exec_fresh(bytes).await;
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
            r
        } else {
            // The minimised case reproduced during ddmin but not on this last run: keep the
            // confirmed original rather than a case that may not replay.
            tracing::warn!("finding {id}: the minimised case ended in {} on its final run; keeping the original", final_sig.text());
            raw.clone()
        };
        if let Err(e) = repro.save(path) {
            tracing::error!("cannot rewrite the reproducer {}: {e}", path.display());
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
        case.seed = self
            .seeds
            .iter()
            .position(|s| s.name == raw.found.seed)
            .unwrap_or(usize::MAX);
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
        let file = self
            .cfg
            .out
            .join(format!("{}-{}.json", sig.slug(), sig.id()));
        let seed = self.seeds.get(case.seed);
        Reproducer {
            kind: repro::KIND.into(),
            format: repro::FORMAT,
            title: format!("{} (pyspark {})", sig.text(), self.env.pyspark),
            pyspark: self.env.pyspark.to_string(),
            python: self.env.python_version.clone(),
            dialect: self.dialect,
            mode: self.cfg.mode,
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
            traceback: obs.traceback.as_deref().map(trim_traceback),
            worker_at_deadline: obs.worker_at_deadline.clone(),
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

    async fn report_leaks(&self) {
        for leak in self.exec.leaked(self.cfg.leak_grace).await {
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
            let case = Case::from_spans(usize::MAX, &bytes, &spans);
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
            self.on_finding(case, sig, outcome, obs, n).await;
        }
    }

    fn save_state(&self) {
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
        write_state(&self.cfg.out, &st);
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

#[derive(Serialize, Deserialize)]
struct CorpusEntry {
    seed: String,
    signature: String,
    frames: Vec<super::case::Frame>,
}

fn write_state(out: &Path, st: &State) {
    match serde_json::to_vec_pretty(st) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            if let Err(e) = crate::report::write_atomic(&out.join(STATE_FILE), &bytes) {
                tracing::error!("cannot write {}: {e}", out.join(STATE_FILE).display());
            }
        }
        Err(e) => tracing::error!("cannot serialise the campaign state: {e}"),
    }
}

fn load_or_new_state(
    cfg: &CampaignConfig,
    env: &PythonEnv,
    dialect: Dialect,
) -> Result<State, BadInput> {
    let path = cfg.out.join(STATE_FILE);
    let fresh = State {
        kind: STATE_KIND.into(),
        format: STATE_FORMAT,
        pyspark: env.pyspark.to_string(),
        python: env.python_version.clone(),
        dialect,
        mode: cfg.mode,
        execs: 0,
        elapsed_ms: 0,
        minimise_runs: 0,
        harness_errors: 0,
        daemon_restarts: 0,
        runs: vec![],
        findings: BTreeMap::new(),
        expected: BTreeMap::new(),
        unattributed_leaks: vec![],
    };
    let mut st = if path.exists() {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| BadInput::new(&path, format!("cannot read: {e}")))?;
        let st: State = serde_json::from_str(&text).map_err(|e| {
            BadInput::new(
                &path,
                format!("not a fuzz campaign state ({e}); use another --out or remove it"),
            )
        })?;
        if st.kind != STATE_KIND || st.format != STATE_FORMAT {
            return Err(BadInput::new(
                &path,
                format!(
                    "a {} format {} file, not a {STATE_KIND} format {STATE_FORMAT}",
                    st.kind, st.format
                ),
            ));
        }
        if st.pyspark != fresh.pyspark || st.mode != fresh.mode || st.python != fresh.python {
            return Err(BadInput::new(
                &path,
                format!(
                    "holds a campaign for pyspark {} / Python {} / {} mode, not pyspark {} / Python {} / {} mode: use another --out to start a new one",
                    st.pyspark,
                    st.python,
                    st.mode.name(),
                    fresh.pyspark,
                    fresh.python,
                    fresh.mode.name()
                ),
            ));
        }
        st
    } else {
        fresh
    };
    // A reproducer written just before a kill, when state.json was not rewritten yet.
    for (id, file, r) in reproducers_in(&cfg.out) {
        st.findings.entry(id).or_insert_with(|| FindingRecord {
            text: r.signature.text(),
            signature: r.signature.clone(),
            count: r.found.count.max(1),
            file,
            minimised: r.minimised,
            flaky: false,
            len: r.request.len,
            first_exec: r.found.exec,
            first_at: r.found.at.clone(),
        });
    }
    Ok(st)
}

/// Reproducer files directly in `out`: (signature id, file name, reproducer).
fn reproducers_in(out: &Path) -> Vec<(String, String, Reproducer)> {
    let Ok(dir) = std::fs::read_dir(out) else {
        return vec![];
    };
    let mut found = vec![];
    for e in dir.flatten() {
        let p = e.path();
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        if !name.ends_with(".json") || name == STATE_FILE || name == SUMMARY_FILE {
            continue;
        }
        if let Ok(r) = Reproducer::load(&p) {
            found.push((r.signature_id.clone(), name, r));
        }
    }
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found
}

fn unminimised(out: &Path, st: &State) -> Vec<(String, PathBuf)> {
    st.findings
        .iter()
        .filter(|(_, f)| !f.minimised && !f.flaky && f.signature.kind != OutcomeKind::LeakedProcess)
        .map(|(id, f)| (id.clone(), out.join(&f.file)))
        .filter(|(_, p)| p.is_file())
        .collect()
}

fn load_corpus(out: &Path, seeds: &[Seed]) -> Vec<(String, Case)> {
    let Ok(dir) = std::fs::read_dir(out.join("corpus")) else {
        return vec![];
    };
    let mut entries: Vec<(String, Case)> = vec![];
    for e in dir.flatten() {
        let p = e.path();
        let Some(id) = p.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        let Ok(entry) = serde_json::from_str::<CorpusEntry>(&text) else {
            continue;
        };
        let seed = seeds
            .iter()
            .position(|s| s.name == entry.seed)
            .unwrap_or(usize::MAX);
        entries.push((
            id,
            Case {
                seed,
                frames: entry.frames,
            },
        ));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

/// Rewrite each reproducer's `found.count` with the campaign's count.
fn update_counts(out: &Path, st: &State) {
    for f in st.findings.values() {
        let p = out.join(&f.file);
        if let Ok(mut r) = Reproducer::load(&p) {
            if r.found.count != f.count {
                r.found.count = f.count;
                let _ = r.save(&p);
            }
        }
    }
}

async fn periodic_save(c: Arc<Campaign>) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        c.save_state();
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
            let msg = format!(
                "{execs} execs ({rate:.0}/s) | findings {findings} ({new} new) | corpus {corpus} | clean behaviours {behaviours} | restarts {}",
                c.exec.daemon_restarts()
            );
            if tty {
                b.set_message(msg);
                b.tick();
            } else if last_line.elapsed() >= Duration::from_secs(30) {
                eprintln!("fuzz: {msg}");
                last_line = Instant::now();
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
