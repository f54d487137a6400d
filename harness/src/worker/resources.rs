//! What a task's worker used, read from /proc while the task runs: its peak resident set, its user
//! and system CPU, the most threads it ran, and every process it spawned (pid, command line,
//! whether it outlived the task). A scenario task can put limits on them (`expect_resources`).
//!
//! A UDF that starts its own process pool (spaCy's `nlp.pipe(n_process=...)`, joblib,
//! multiprocessing) oversubscribes an executor that gave it one core: Spark cannot see it, so
//! fakejvm looks. A sampler thread reads the worker's `/proc/PID/status` and `stat` every
//! [`INTERVAL`] and walks `/proc/*/stat` for its descendants (the kernel's `task/*/children`
//! files need CONFIG_PROC_CHILDREN, which many kernels lack). Figures are sampled: a process that
//! lives shorter than an interval can be missed, and CPU spent in the last interval before the
//! worker exits is not counted. The peak RSS is the kernel's own high-water mark (VmHWM), reset
//! when the task starts, so it misses nothing.

use super::procs::{self, ProcStat};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How often the sampler reads /proc. Nothing depends on it being kept: a busy machine only
/// makes the figures coarser.
pub const INTERVAL: Duration = Duration::from_millis(10);

/// How long after its task a spawned process may take to end before it counts as having
/// outlived the task (a limit, not a sleep: it ends when the last one is gone).
pub const OUTLIVE_GRACE: Duration = Duration::from_secs(2);

/// How long a killed process gets to disappear.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// What one task's worker used, from the moment its connection was ready to the end of the task.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Usage {
    /// The worker's pid: what a daemon's child sent in the handshake, or the direct worker
    /// fakejvm started.
    pub pid: i32,
    /// The worker's peak resident set in KiB (VmHWM, reset at the start of the task). A daemon's
    /// forked worker starts with the daemon's pages, which it shares until it writes them.
    pub peak_rss_kib: u64,
    /// The largest sum, at one sample, of the resident sets of the worker and of the processes it
    /// spawned that were alive then (KiB); `peak_rss_kib` when it spawned none.
    pub peak_total_rss_kib: u64,
    /// CPU the worker itself used during the task, from `/proc/PID/stat` utime and stime.
    pub user_cpu_ms: u64,
    pub system_cpu_ms: u64,
    /// The most threads (`Threads:` of /proc/PID/status) the worker ran at one sample.
    pub peak_threads: u64,
    /// How many times /proc was read for this task.
    pub samples: u64,
    /// Every descendant of the worker seen while the task ran, in the order they were seen.
    pub processes: Vec<Spawned>,
}

/// A process the worker (or one of its children) started.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Spawned {
    pub pid: i32,
    /// Its parent when first seen (the worker, or another spawned process).
    pub ppid: i32,
    /// Its last command line seen (a forked process shows its parent's until it execs).
    pub cmdline: String,
    /// User + system CPU it had used at its last sample.
    pub cpu_ms: u64,
    /// Its largest resident set at one sample, in KiB.
    pub peak_rss_kib: u64,
    /// Still alive [`OUTLIVE_GRACE`] after the task ended: left behind by the worker.
    pub outlived: bool,
    /// It outlived the task and fakejvm's SIGKILL removed it (false only if it survived that).
    pub killed: bool,
}

/// `expect_resources` on a task: at most this much. Every field is optional; at least one is given.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResourceLimits {
    /// Processes the worker may spawn while the task runs (descendants seen; 0 forbids any).
    #[serde(default)]
    pub max_processes: Option<u64>,
    /// Peak resident set in MiB, of the worker or of the worker with its spawned processes at one
    /// sample, whichever is larger.
    #[serde(default)]
    pub max_rss_mib: Option<u64>,
    /// Threads the worker may run at once (its main thread counts).
    #[serde(default)]
    pub max_threads: Option<u64>,
}

/// Which limit of [`ResourceLimits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    Processes,
    RssMib,
    Threads,
}

/// A limit the task broke: what, the limit, and what was seen (MiB rounded up for RSS).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Exceeded {
    pub what: Limit,
    pub limit: u64,
    pub seen: u64,
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Exceeded { limit, seen, .. } = self;
        match self.what {
            Limit::Processes => write!(f, "{seen} process(es) spawned, at most {limit} allowed"),
            Limit::RssMib => write!(f, "peak RSS {seen} MiB, at most {limit} MiB allowed"),
            Limit::Threads => write!(f, "{seen} threads, at most {limit} allowed"),
        }
    }
}

impl ResourceLimits {
    /// At least one limit, each one a worker could meet; `at` is the field's path.
    pub fn validate(&self, at: &str) -> Result<(), String> {
        if self.max_processes.is_none() && self.max_rss_mib.is_none() && self.max_threads.is_none()
        {
            return Err(format!(
                "{at}: empty: give `max_processes`, `max_rss_mib` and/or `max_threads`"
            ));
        }
        if self.max_rss_mib == Some(0) {
            return Err(format!(
                "{at}.max_rss_mib: 0 MiB: no Python worker runs in less than a few MiB"
            ));
        }
        if self.max_threads == Some(0) {
            return Err(format!(
                "{at}.max_threads: 0: the worker's main thread counts, so at least 1"
            ));
        }
        Ok(())
    }

    /// The limits `usage` broke, in field order.
    pub fn check(&self, usage: &Usage) -> Vec<Exceeded> {
        let mut out = vec![];
        let spawned = usage.processes.len() as u64;
        if let Some(limit) = self.max_processes.filter(|l| spawned > *l) {
            out.push(Exceeded {
                what: Limit::Processes,
                limit,
                seen: spawned,
            });
        }
        let rss_kib = usage.peak_rss_kib.max(usage.peak_total_rss_kib);
        if let Some(limit) = self
            .max_rss_mib
            .filter(|l| rss_kib > l.saturating_mul(1024))
        {
            out.push(Exceeded {
                what: Limit::RssMib,
                limit,
                seen: rss_kib.div_ceil(1024),
            });
        }
        if let Some(limit) = self.max_threads.filter(|l| usage.peak_threads > *l) {
            out.push(Exceeded {
                what: Limit::Threads,
                limit,
                seen: usage.peak_threads,
            });
        }
        out
    }
}

impl Usage {
    /// The spawned processes by pid and command line, as a report lists processes.
    pub fn process_list(&self) -> Vec<(i32, String)> {
        self.processes
            .iter()
            .map(|p| (p.pid, p.cmdline.clone()))
            .collect()
    }

    /// Those that outlived the task (and were killed).
    pub fn outlived(&self) -> Vec<(i32, String)> {
        self.processes
            .iter()
            .filter(|p| p.outlived)
            .map(|p| (p.pid, p.cmdline.clone()))
            .collect()
    }

    /// `peak RSS 41.2 MiB, CPU 20 ms user + 0 ms system, 1 thread, no process spawned`.
    pub fn summary(&self) -> String {
        let mut s = format!("peak RSS {}", mib(self.peak_rss_kib));
        if !self.processes.is_empty() {
            s.push_str(&format!(
                " ({} with its processes)",
                mib(self.peak_total_rss_kib)
            ));
        }
        s.push_str(&format!(
            ", CPU {} ms user + {} ms system, {} thread{}, ",
            self.user_cpu_ms,
            self.system_cpu_ms,
            self.peak_threads,
            if self.peak_threads == 1 { "" } else { "s" }
        ));
        match self.processes.len() {
            0 => s.push_str("no process spawned"),
            1 => s.push_str("1 process spawned:"),
            n => s.push_str(&format!("{n} processes spawned:")),
        }
        s
    }
}

impl Spawned {
    /// `pid 1234 python -m pyspark.daemon (ended; CPU 30 ms, peak RSS 40.1 MiB)`.
    pub fn line(&self) -> String {
        let fate = match (self.outlived, self.killed) {
            (false, _) => "ended",
            (true, true) => "outlived the task, killed",
            (true, false) => "outlived the task, still alive after SIGKILL",
        };
        format!(
            "pid {} {} ({fate}; CPU {} ms, peak RSS {})",
            self.pid,
            self.cmdline,
            self.cpu_ms,
            mib(self.peak_rss_kib)
        )
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Samples one worker on a thread of its own until [`Sampler::finish`].
pub struct Sampler {
    stop: mpsc::Sender<Duration>,
    done: tokio::sync::oneshot::Receiver<Usage>,
}

impl Sampler {
    /// Starts sampling `pid` at once (the first sample is taken before this returns, so a task
    /// always has one, however quickly its worker ends).
    pub fn start(pid: i32) -> Sampler {
        let (stop, stop_rx) = mpsc::channel::<Duration>();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let mut tracker = Tracker::new(pid);
        tracker.reset_peak();
        tracker.sample();
        std::thread::Builder::new()
            .name(format!("fakejvm-resources-{pid}"))
            .spawn(move || {
                let grace = loop {
                    match stop_rx.recv_timeout(INTERVAL) {
                        Err(RecvTimeoutError::Timeout) => tracker.sample(),
                        Ok(grace) => break grace,
                        // The task was abandoned (a panic): nobody wants the figures.
                        Err(RecvTimeoutError::Disconnected) => break Duration::ZERO,
                    }
                };
                tracker.sample();
                tracker.settle(grace);
                let _ = done_tx.send(tracker.usage);
            })
            .map(|_| ())
            .unwrap_or_else(|e| eprintln!("fakejvm: cannot start the resource sampler: {e}"));
        Sampler { stop, done }
    }

    /// The task is over: one last sample, then spawned processes get up to `grace` to end; those
    /// still alive outlived the task and are SIGKILLed. Returns what the worker used.
    pub async fn finish(self, grace: Duration) -> Usage {
        let _ = self.stop.send(grace);
        self.done.await.unwrap_or_default()
    }
}

/// A process seen in /proc, known by pid and start time (a pid can be reused).
#[derive(Clone, Copy)]
struct Seen {
    start_time: u64,
    /// A descendant of the worker: its index in `Usage::processes`.
    ours: Option<usize>,
}

struct Tracker {
    usage: Usage,
    worker_start: Option<u64>,
    /// CPU ticks of the worker when the task started.
    base_ticks: (u64, u64),
    /// Every pid in /proc at the last scan, classified once.
    seen: BTreeMap<i32, Seen>,
    page_kib: u64,
    ticks_per_s: f64,
}

impl Tracker {
    fn new(pid: i32) -> Tracker {
        let first = procs::stat(pid);
        // SAFETY: sysconf only reads a system constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        Tracker {
            usage: Usage {
                pid,
                ..Usage::default()
            },
            worker_start: first.map(|s| s.start_time),
            base_ticks: first.map_or((0, 0), |s| (s.utime, s.stime)),
            seen: BTreeMap::new(),
            page_kib: (page / 1024).max(1),
            ticks_per_s: procs::clock_ticks(),
        }
    }

    /// Resets the worker's VmHWM to its current RSS (`clear_refs` 5, Linux 4.0+), so a reused
    /// worker's peak is this task's. Nothing else of the process changes; if the kernel refuses,
    /// the peak counts from the worker's start.
    fn reset_peak(&self) {
        let _ = fs::write(format!("/proc/{}/clear_refs", self.usage.pid), "5");
    }

    fn ms(&self, ticks: u64) -> u64 {
        (ticks as f64 * 1000.0 / self.ticks_per_s).round() as u64
    }

    fn sample(&mut self) {
        self.usage.samples += 1;
        let worker_rss = self.sample_worker();
        let spawned_rss = self.scan();
        self.usage.peak_total_rss_kib = self
            .usage
            .peak_total_rss_kib
            .max(worker_rss + spawned_rss)
            .max(self.usage.peak_rss_kib);
    }

    /// The worker's own figures; its current RSS in KiB (0 once it has exited).
    fn sample_worker(&mut self) -> u64 {
        let pid = self.usage.pid;
        let Some(st) = procs::stat(pid).filter(|s| Some(s.start_time) == self.worker_start) else {
            return 0;
        };
        // A zombie keeps its CPU times (final and exact) but no longer has memory or threads.
        self.usage.user_cpu_ms = self.ms(st.utime.saturating_sub(self.base_ticks.0));
        self.usage.system_cpu_ms = self.ms(st.stime.saturating_sub(self.base_ticks.1));
        if st.is_dead() {
            return 0;
        }
        let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
            return 0;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        };
        if let Some(hwm) = field("VmHWM:") {
            self.usage.peak_rss_kib = self.usage.peak_rss_kib.max(hwm);
        }
        if let Some(threads) = field("Threads:") {
            self.usage.peak_threads = self.usage.peak_threads.max(threads);
        }
        field("VmRSS:").unwrap_or(0)
    }

    /// Walks /proc for the worker's descendants: a new pid is classified once, by its parent
    /// (a child is always younger than its parent, so a parent is known by the time its child
    /// is looked at, or is new in the same scan). Returns their current RSS sum in KiB.
    fn scan(&mut self) -> u64 {
        let pids = procs::all_pids();
        let now: std::collections::BTreeSet<i32> = pids.iter().copied().collect();
        self.seen.retain(|pid, _| now.contains(pid));
        let mut fresh: Vec<ProcStat> = vec![];
        let mut rss = 0;
        for pid in pids {
            let known = self.seen.get(&pid).copied();
            // A process that is not ours never becomes ours (a child gets a new pid), so it is
            // not read again while its pid stays in /proc.
            if known.is_some_and(|s| s.ours.is_none()) {
                continue;
            }
            let Some(st) = procs::stat(pid) else {
                continue;
            };
            match known {
                Some(Seen {
                    start_time,
                    ours: Some(i),
                }) if start_time == st.start_time => rss += self.update(i, &st),
                // New, or the same pid reused by another process.
                _ => fresh.push(st),
            }
        }
        // Parents first, so a child and its parent both new in this scan are both found.
        fresh.sort_by_key(|s| s.start_time);
        for st in fresh {
            let parent_is_ours = st.ppid == self.usage.pid
                || self.seen.get(&st.ppid).is_some_and(|s| s.ours.is_some());
            let ours = (parent_is_ours && st.pid != self.usage.pid).then(|| {
                self.usage.processes.push(Spawned {
                    pid: st.pid,
                    ppid: st.ppid,
                    cmdline: String::new(),
                    cpu_ms: 0,
                    peak_rss_kib: 0,
                    outlived: false,
                    killed: false,
                });
                self.usage.processes.len() - 1
            });
            self.seen.insert(
                st.pid,
                Seen {
                    start_time: st.start_time,
                    ours,
                },
            );
            if let Some(i) = ours {
                rss += self.update(i, &st);
            }
        }
        rss
    }

    /// A spawned process's figures from its stat; its RSS in KiB.
    fn update(&mut self, i: usize, st: &ProcStat) -> u64 {
        let cpu = self.ms(st.utime + st.stime);
        let p = &mut self.usage.processes[i];
        p.cpu_ms = cpu;
        if st.is_dead() {
            return 0;
        }
        // Re-read each time: a forked child shows its parent's command line until it execs. A
        // read that races the process's exit comes back cut short (a prefix of the real one) or
        // empty (`[comm]`): neither replaces what was seen.
        let cmdline = procs::cmdline(st.pid);
        let cut = cmdline.starts_with('[') || p.cmdline.starts_with(&cmdline);
        if p.cmdline.is_empty() || !cut {
            p.cmdline = cmdline;
        }
        let rss = st.rss_pages * self.page_kib;
        p.peak_rss_kib = p.peak_rss_kib.max(rss);
        rss
    }

    /// The spawned processes still alive (not zombies), by index.
    fn alive(&self) -> Vec<usize> {
        self.seen
            .iter()
            .filter_map(|(pid, s)| {
                let i = s.ours?;
                procs::stat(*pid)
                    .filter(|st| st.start_time == s.start_time && !st.is_dead())
                    .map(|_| i)
            })
            .collect()
    }

    /// After the task: up to `grace` for spawned processes to end (sampling on), then SIGKILL
    /// for those that outlived it.
    fn settle(&mut self, grace: Duration) {
        let until = Instant::now() + grace;
        while !self.alive().is_empty() && Instant::now() < until {
            std::thread::sleep(INTERVAL);
            self.sample();
        }
        let left = self.alive();
        if left.is_empty() {
            return;
        }
        for &i in &left {
            let p = &mut self.usage.processes[i];
            p.outlived = true;
            // SAFETY: kill(2) only, on a pid whose start time matched a moment ago.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
        }
        let until = Instant::now() + KILL_GRACE;
        let mut still = left.clone();
        while !still.is_empty() && Instant::now() < until {
            std::thread::sleep(INTERVAL);
            let alive = self.alive();
            still.retain(|i| alive.contains(i));
        }
        for i in left {
            self.usage.processes[i].killed = !still.contains(&i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(processes: usize, rss_kib: u64, threads: u64) -> Usage {
        Usage {
            pid: 1,
            peak_rss_kib: rss_kib,
            peak_total_rss_kib: rss_kib,
            peak_threads: threads,
            processes: (0..processes)
                .map(|i| Spawned {
                    pid: 100 + i as i32,
                    ppid: 1,
                    cmdline: "python".into(),
                    cpu_ms: 0,
                    peak_rss_kib: 0,
                    outlived: false,
                    killed: false,
                })
                .collect(),
            ..Usage::default()
        }
    }

    #[test]
    fn limits_name_what_was_exceeded() {
        let l = ResourceLimits {
            max_processes: Some(0),
            max_rss_mib: Some(100),
            max_threads: Some(4),
        };
        assert_eq!(l.check(&usage(0, 100 * 1024, 4)), vec![]);
        let e = l.check(&usage(4, 100 * 1024 + 1, 5));
        assert_eq!(
            e.iter()
                .map(|e| (e.what, e.limit, e.seen))
                .collect::<Vec<_>>(),
            vec![
                (Limit::Processes, 0, 4),
                (Limit::RssMib, 100, 101),
                (Limit::Threads, 4, 5)
            ]
        );
        assert_eq!(e[0].to_string(), "4 process(es) spawned, at most 0 allowed");
    }

    #[test]
    fn empty_or_impossible_limits_are_refused() {
        let at = "tasks[0].expect_resources";
        assert!(ResourceLimits::default()
            .validate(at)
            .unwrap_err()
            .contains("empty"));
        let zero_rss = ResourceLimits {
            max_rss_mib: Some(0),
            ..Default::default()
        };
        assert!(zero_rss.validate(at).unwrap_err().contains("max_rss_mib"));
        let zero_processes = ResourceLimits {
            max_processes: Some(0),
            ..Default::default()
        };
        assert_eq!(zero_processes.validate(at), Ok(()));
    }

    /// A real child of ours, forked by `sh`, is seen with its command line, and a process left
    /// alive past the grace is reported as outlived and killed. Counts, not timings: the grace
    /// is generous and only ends early.
    #[tokio::test]
    async fn a_spawned_process_is_seen_and_one_left_behind_is_killed() {
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & echo started; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(sh.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let sampler = Sampler::start(sh.id() as i32);
        let usage = sampler.finish(Duration::from_millis(200)).await;
        assert!(usage.samples >= 2, "{usage:?}");
        assert!(
            usage.peak_threads >= 1 && usage.peak_rss_kib > 0,
            "{usage:?}"
        );
        let sleep = usage
            .processes
            .iter()
            .find(|p| p.cmdline.contains("sleep 30"))
            .unwrap_or_else(|| panic!("the sleep was not seen: {usage:?}"));
        assert!(sleep.outlived && sleep.killed, "{sleep:?}");
        assert_eq!(usage.outlived().len(), 1);
        // The shell's `wait` returns once its child is killed.
        assert!(sh.wait().is_ok());
    }
}
