//! The `faults` list of a scenario file, as typed values. Documented for users in
//! scenarios/README.md ("Faults"); like the rest of the format, unknown fields are errors.
//!
//! Three families of faults:
//! - launch faults, applied when the daemon (or direct worker) starts: `fork_fail`, `rlimit_as`,
//!   `executor_memory`, `syscall_fail`, `open_descriptors`, `rlimit_nofile`, `stop_child`;
//! - socket faults on one task's request, placed at a protocol position: `split_writes`, `delay`,
//!   `truncate`, `reset`, `half_close`;
//! - process faults, performed when the request reaches a protocol position: `kill_worker`,
//!   `stop_worker`, `signal_daemon`, `close_daemon_stdin`, `open_connection`.

use crate::protocol::SpanKind;
use crate::session::Direction;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// The daemon's fork() fails on a schedule (an LD_PRELOAD shim loaded into the daemon only).
    ForkFail {
        errno: Errno,
        schedule: ForkSchedule,
        #[serde(default)]
        expect: FateExpect,
    },
    /// fakejvm sets RLIMIT_AS (soft) on the process it starts: the daemon (its forks inherit it)
    /// or, in direct modes, each worker.
    RlimitAs {
        bytes: u64,
        #[serde(default)]
        expect: FateExpect,
    },
    /// PYSPARK_EXECUTOR_MEMORY_MB, which the worker turns into RLIMIT_AS itself (a number, or any
    /// string to see what the worker makes of it).
    ExecutorMemory {
        mb: EnvValue,
        #[serde(default)]
        expect: FateExpect,
    },
    /// A system call of the daemon or of each worker fails on a schedule (the LD_PRELOAD shim):
    /// send/recv on a socket, close of a socket, the daemon's accept and select/poll. With `task`
    /// only the worker started for that task is affected (a launch fault all the same: the shim
    /// is loaded once, and learns the task when a worker is forked or started).
    SyscallFail {
        #[serde(default)]
        process: ShimProcess,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<usize>,
        call: Syscall,
        errno: Errno,
        schedule: CallSchedule,
        #[serde(default)]
        expect: FateExpect,
    },
    /// The daemon (or each direct worker) starts with descriptors 0..count-1 all open and
    /// inheritable, so every descriptor it makes is numbered `count` or more.
    OpenDescriptors {
        count: u32,
        #[serde(default)]
        expect: FateExpect,
    },
    /// fakejvm sets the RLIMIT_NOFILE soft limit on the daemon (its forks inherit it) or on each
    /// direct worker.
    RlimitNofile {
        limit: u64,
        #[serde(default)]
        expect: FateExpect,
    },
    /// The child of the daemon's fork number `fork` stops itself (SIGSTOP) right after fork(),
    /// before it writes its pid; with `stall_ms` it sleeps that long instead, then goes on.
    StopChild {
        #[serde(default = "first_fork")]
        fork: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stall_ms: Option<u64>,
        #[serde(default)]
        expect: FateExpect,
    },
    /// Write `from`..`to` (default: the whole request) in pieces of `chunk` bytes, one write each.
    SplitWrites {
        #[serde(default)]
        task: usize,
        #[serde(default)]
        from: Option<Position>,
        #[serde(default)]
        to: Option<Position>,
        chunk: usize,
        #[serde(default)]
        expect: FateExpect,
    },
    /// Stop writing for `ms` at a position, then go on.
    Delay {
        #[serde(default)]
        task: usize,
        at: Position,
        ms: u64,
        #[serde(default)]
        expect: FateExpect,
    },
    /// Write up to the position, then close the connection (FIN). Nothing more can be read, so the
    /// task's outcome is what the worker process did (see README).
    Truncate {
        #[serde(default)]
        task: usize,
        at: Position,
        #[serde(default)]
        expect: FateExpect,
    },
    /// Write up to the position, then close with SO_LINGER 0: the worker gets a TCP reset.
    Reset {
        #[serde(default)]
        task: usize,
        at: Position,
        #[serde(default)]
        expect: FateExpect,
    },
    /// At the position, shut down one direction: `to_worker` (the worker reads EOF; nothing more is
    /// written) or `from_worker` (we stop receiving; the rest of the request is still written).
    HalfClose {
        #[serde(default)]
        task: usize,
        at: Position,
        direction: Direction,
        #[serde(default)]
        expect: FateExpect,
    },
    /// At the position, kill the task's worker the way Spark does: its pid on the daemon's stdin
    /// (direct modes: SIGKILL to its process group).
    KillWorker {
        #[serde(default)]
        task: usize,
        at: Position,
        #[serde(default)]
        expect: FateExpect,
    },
    /// At the position, SIGSTOP the task's worker. After the task it is killed as Spark would kill
    /// a hung worker (its pid on the daemon's stdin), so nothing is left behind.
    StopWorker {
        #[serde(default)]
        task: usize,
        at: Position,
        #[serde(default)]
        expect: FateExpect,
    },
    /// At the position, send a signal to the daemon.
    SignalDaemon {
        #[serde(default)]
        task: usize,
        at: Position,
        signal: Signal,
        #[serde(default)]
        expect: FateExpect,
    },
    /// At the position, close the daemon's stdin (Spark's way of telling it to shut down).
    CloseDaemonStdin {
        #[serde(default)]
        task: usize,
        at: Position,
        #[serde(default)]
        expect: FateExpect,
    },
    /// At the position, open another connection to the daemon, as a concurrent task would (the
    /// daemon forks for it). It is closed when the task ends.
    OpenConnection {
        #[serde(default)]
        task: usize,
        at: Position,
        #[serde(default)]
        expect: FateExpect,
    },
}

fn first_fork() -> u32 {
    1
}

impl Fault {
    /// The task a socket or process fault acts on; None for launch faults.
    pub fn task(&self) -> Option<usize> {
        match self {
            Fault::ForkFail { .. }
            | Fault::RlimitAs { .. }
            | Fault::ExecutorMemory { .. }
            | Fault::SyscallFail { .. }
            | Fault::OpenDescriptors { .. }
            | Fault::RlimitNofile { .. }
            | Fault::StopChild { .. } => None,
            Fault::SplitWrites { task, .. }
            | Fault::Delay { task, .. }
            | Fault::Truncate { task, .. }
            | Fault::Reset { task, .. }
            | Fault::HalfClose { task, .. }
            | Fault::KillWorker { task, .. }
            | Fault::StopWorker { task, .. }
            | Fault::SignalDaemon { task, .. }
            | Fault::CloseDaemonStdin { task, .. }
            | Fault::OpenConnection { task, .. } => Some(*task),
        }
    }

    pub fn expect(&self) -> &FateExpect {
        match self {
            Fault::ForkFail { expect, .. }
            | Fault::RlimitAs { expect, .. }
            | Fault::ExecutorMemory { expect, .. }
            | Fault::SyscallFail { expect, .. }
            | Fault::OpenDescriptors { expect, .. }
            | Fault::RlimitNofile { expect, .. }
            | Fault::StopChild { expect, .. }
            | Fault::SplitWrites { expect, .. }
            | Fault::Delay { expect, .. }
            | Fault::Truncate { expect, .. }
            | Fault::Reset { expect, .. }
            | Fault::HalfClose { expect, .. }
            | Fault::KillWorker { expect, .. }
            | Fault::StopWorker { expect, .. }
            | Fault::SignalDaemon { expect, .. }
            | Fault::CloseDaemonStdin { expect, .. }
            | Fault::OpenConnection { expect, .. } => expect,
        }
    }

    /// The single position of a positioned fault (split_writes has a range instead).
    pub fn at(&self) -> Option<&Position> {
        match self {
            Fault::Delay { at, .. }
            | Fault::Truncate { at, .. }
            | Fault::Reset { at, .. }
            | Fault::HalfClose { at, .. }
            | Fault::KillWorker { at, .. }
            | Fault::StopWorker { at, .. }
            | Fault::SignalDaemon { at, .. }
            | Fault::CloseDaemonStdin { at, .. }
            | Fault::OpenConnection { at, .. } => Some(at),
            _ => None,
        }
    }

    /// One line for people: the kind and its parameters.
    pub fn describe(&self) -> String {
        match self {
            Fault::ForkFail {
                errno, schedule, ..
            } => format!("fork_fail {} on {}", errno, schedule.describe()),
            Fault::RlimitAs { bytes, .. } => format!("rlimit_as {bytes} bytes"),
            Fault::ExecutorMemory { mb, .. } => {
                format!("executor_memory PYSPARK_EXECUTOR_MEMORY_MB={}", mb.0)
            }
            Fault::SyscallFail {
                process,
                task,
                call,
                errno,
                schedule,
                ..
            } => format!(
                "syscall_fail: the {process}'s {} fails with {errno} on {}{}",
                call.name(),
                schedule.describe(call.name()),
                task.map(|t| format!(", in task {t}'s worker only"))
                    .unwrap_or_default()
            ),
            Fault::OpenDescriptors { count, .. } => {
                format!(
                    "open_descriptors: 0..{} open at start",
                    count.saturating_sub(1)
                )
            }
            Fault::RlimitNofile { limit, .. } => format!("rlimit_nofile {limit}"),
            Fault::StopChild {
                fork,
                stall_ms: None,
                ..
            } => format!("stop_child: SIGSTOP the child of fork #{fork} before its pid"),
            Fault::StopChild {
                fork,
                stall_ms: Some(ms),
                ..
            } => format!("stop_child: stall the child of fork #{fork} {ms} ms before its pid"),
            Fault::SplitWrites {
                chunk, from, to, ..
            } => {
                let from = from
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "request start".into());
                let to = to
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "request end".into());
                format!("split_writes of {chunk} byte(s) from {from} to {to}")
            }
            Fault::Delay { ms, at, .. } => format!("delay {ms} ms {at}"),
            Fault::Truncate { at, .. } => format!("truncate then close {at}"),
            Fault::Reset { at, .. } => format!("reset (SO_LINGER 0) {at}"),
            Fault::HalfClose { at, direction, .. } => {
                let d = match direction {
                    Direction::ToWorker => "to_worker (shutdown SHUT_WR: the worker reads EOF)",
                    Direction::FromWorker => "from_worker (shutdown SHUT_RD: we stop receiving)",
                };
                format!("half_close {d} {at}")
            }
            Fault::KillWorker { at, .. } => format!("kill_worker {at}"),
            Fault::StopWorker { at, .. } => format!("stop_worker (SIGSTOP) {at}"),
            Fault::SignalDaemon { at, signal, .. } => format!("signal_daemon {signal} {at}"),
            Fault::CloseDaemonStdin { at, .. } => format!("close_daemon_stdin {at}"),
            Fault::OpenConnection { at, .. } => format!("open_connection {at}"),
        }
    }
}

/// When fork() fails: `"every"`, `{"nth": [1, 2]}` (1-based ordinals of the daemon's fork calls)
/// or `{"probability": 0.5, "seed": 7}` (repeatable for a seed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "serde_json::Value")]
pub enum ForkSchedule {
    Every,
    Nth(Vec<u32>),
    Random { probability: f64, seed: u64 },
}

impl ForkSchedule {
    /// The shim's FAKEJVM_FORKFAIL_WHEN value.
    pub fn shim_value(&self) -> String {
        match self {
            ForkSchedule::Every => "every".into(),
            ForkSchedule::Nth(n) => format!(
                "nth:{}",
                n.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            ),
            ForkSchedule::Random { probability, seed } => format!("random:{probability}:{seed}"),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ForkSchedule::Every => "every fork".into(),
            ForkSchedule::Nth(n) => {
                let list: Vec<String> = n.iter().map(|k| format!("#{k}")).collect();
                format!("fork {}", list.join(", "))
            }
            ForkSchedule::Random { probability, seed } => {
                format!("each fork with probability {probability} (seed {seed})")
            }
        }
    }
}

impl TryFrom<serde_json::Value> for ForkSchedule {
    type Error = String;
    fn try_from(v: serde_json::Value) -> Result<Self, String> {
        parse_schedule(&v, "fork", "")
    }
}

/// `"every"`, `{"nth": [...]}` or `{"probability": p, "seed": s}`, for fork (`what`) or call
/// schedules; `more_help` names the forms only the caller knows.
fn parse_schedule(
    v: &serde_json::Value,
    what: &str,
    more_help: &str,
) -> Result<ForkSchedule, String> {
    let help = format!(
        "expected \"every\", {{\"nth\": [1, 2]}}{more_help} or {{\"probability\": 0.5, \"seed\": 7}}"
    );
    if v.as_str() == Some("every") {
        return Ok(ForkSchedule::Every);
    }
    let Some(obj) = v.as_object() else {
        return Err(format!("bad {what} schedule {v}: {help}"));
    };
    if let Some(nth) = obj.get("nth") {
        if obj.len() != 1 {
            return Err(format!(
                "bad {what} schedule {v}: `nth` takes no other field; {help}"
            ));
        }
        let list: Option<Vec<u32>> = nth.as_array().and_then(|a| {
            a.iter()
                .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
                .collect()
        });
        return match list {
            Some(l) if !l.is_empty() && l.iter().all(|&n| n >= 1) && l.len() <= 64 => Ok(ForkSchedule::Nth(l)),
            _ => Err(format!("bad {what} schedule {v}: `nth` is a list of 1 to 64 {what} numbers, counting from 1")),
        };
    }
    if let Some(p) = obj.get("probability") {
        let unknown: Vec<&String> = obj
            .keys()
            .filter(|k| *k != "probability" && *k != "seed")
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "bad {what} schedule {v}: unknown field(s) {unknown:?}; {help}"
            ));
        }
        let probability = p.as_f64().filter(|p| (0.0..=1.0).contains(p));
        let seed = obj.get("seed").map(|s| s.as_u64()).unwrap_or(Some(0));
        return match (probability, seed) {
            (Some(probability), Some(seed)) => Ok(ForkSchedule::Random { probability, seed }),
            _ => Err(format!("bad {what} schedule {v}: `probability` is in 0..=1 and `seed` a non-negative integer")),
        };
    }
    Err(format!("bad {what} schedule {v}: {help}"))
}

impl From<ForkSchedule> for serde_json::Value {
    fn from(s: ForkSchedule) -> Self {
        match s {
            ForkSchedule::Every => "every".into(),
            ForkSchedule::Nth(n) => serde_json::json!({ "nth": n }),
            ForkSchedule::Random { probability, seed } => {
                serde_json::json!({ "probability": probability, "seed": seed })
            }
        }
    }
}

/// Which process a `syscall_fail` acts in: the daemon, or every worker (a daemon's forked
/// children; in direct modes the process fakejvm starts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShimProcess {
    Daemon,
    #[default]
    Worker,
}

impl std::fmt::Display for ShimProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ShimProcess::Daemon => "daemon",
            ShimProcess::Worker => "worker",
        })
    }
}

/// The calls `syscall_fail` can fail. `send` is every way bytes leave through a socket (send,
/// sendto, sendmsg, write: a daemon's worker writes through os.fdopen, a direct one through
/// socket.makefile), `recv` every way they arrive (recv, recvfrom, recvmsg, read); both and
/// `close` count socket descriptors only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Syscall {
    Send,
    Recv,
    Close,
    Accept,
    Select,
    Poll,
}

impl Syscall {
    pub fn shim(self) -> forkfail::Call {
        match self {
            Syscall::Send => forkfail::Call::Send,
            Syscall::Recv => forkfail::Call::Recv,
            Syscall::Close => forkfail::Call::Close,
            Syscall::Accept => forkfail::Call::Accept,
            Syscall::Select => forkfail::Call::Select,
            Syscall::Poll => forkfail::Call::Poll,
        }
    }

    pub fn name(self) -> &'static str {
        self.shim().name()
    }
}

/// When a call fails: a fork schedule's forms (ordinals count that call in the process, from its
/// start or its fork) or `{"after_bytes": N}`: every send (or recv) once N bytes have gone
/// through, the call that would cross N cut to end exactly there; with `"times": K` only the
/// first K calls from there fail (a transient failure at a byte position, which read counts,
/// unlike byte counts, cannot name: how a request is split into reads depends on timing).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "serde_json::Value")]
pub enum CallSchedule {
    Calls(ForkSchedule),
    AfterBytes { bytes: u64, times: Option<u32> },
}

impl CallSchedule {
    /// The shim's schedule value.
    pub fn shim_value(&self) -> String {
        match self {
            CallSchedule::Calls(s) => s.shim_value(),
            CallSchedule::AfterBytes { bytes, times: None } => format!("bytes:{bytes}"),
            CallSchedule::AfterBytes {
                bytes,
                times: Some(k),
            } => format!("bytes:{bytes}:{k}"),
        }
    }

    /// Whether every call is failed from some point on (a retried EINTR would then spin).
    pub fn fails_forever(&self) -> bool {
        match self {
            CallSchedule::Calls(ForkSchedule::Every)
            | CallSchedule::AfterBytes { times: None, .. } => true,
            CallSchedule::AfterBytes { times: Some(_), .. } => false,
            CallSchedule::Calls(ForkSchedule::Random { probability, .. }) => *probability >= 1.0,
            CallSchedule::Calls(ForkSchedule::Nth(_)) => false,
        }
    }

    pub fn describe(&self, call: &str) -> String {
        match self {
            CallSchedule::Calls(ForkSchedule::Every) => format!("every {call}"),
            CallSchedule::Calls(ForkSchedule::Nth(n)) => {
                let list: Vec<String> = n.iter().map(|k| format!("#{k}")).collect();
                format!("{call} {}", list.join(", "))
            }
            CallSchedule::Calls(ForkSchedule::Random { probability, seed }) => {
                format!("each {call} with probability {probability} (seed {seed})")
            }
            CallSchedule::AfterBytes { bytes, times: None } => {
                format!("every {call} after {bytes} byte(s)")
            }
            CallSchedule::AfterBytes {
                bytes,
                times: Some(1),
            } => format!("the first {call} after {bytes} byte(s)"),
            CallSchedule::AfterBytes {
                bytes,
                times: Some(k),
            } => format!("the first {k} {call}s after {bytes} byte(s)"),
        }
    }
}

impl TryFrom<serde_json::Value> for CallSchedule {
    type Error = String;
    fn try_from(v: serde_json::Value) -> Result<Self, String> {
        if let Some(obj) = v.as_object().filter(|o| o.contains_key("after_bytes")) {
            let bytes = obj["after_bytes"].as_u64();
            let times = obj.get("times").map(|t| {
                t.as_u64()
                    .and_then(|t| u32::try_from(t).ok())
                    .filter(|t| *t >= 1)
            });
            let known = obj.keys().all(|k| k == "after_bytes" || k == "times");
            return match (bytes, times) {
                (Some(bytes), None) if known => Ok(CallSchedule::AfterBytes { bytes, times: None }),
                (Some(bytes), Some(Some(t))) if known => Ok(CallSchedule::AfterBytes {
                    bytes,
                    times: Some(t),
                }),
                _ => Err(format!(
                    "bad call schedule {v}: `after_bytes` is a byte count (a non-negative integer), with at most `times` (how many calls fail from there, 1 or more)"
                )),
            };
        }
        parse_schedule(&v, "call", ", {\"after_bytes\": 100}").map(CallSchedule::Calls)
    }
}

impl From<CallSchedule> for serde_json::Value {
    fn from(s: CallSchedule) -> Self {
        match s {
            CallSchedule::Calls(s) => s.into(),
            CallSchedule::AfterBytes { bytes, times: None } => {
                serde_json::json!({ "after_bytes": bytes })
            }
            CallSchedule::AfterBytes {
                bytes,
                times: Some(t),
            } => serde_json::json!({ "after_bytes": bytes, "times": t }),
        }
    }
}

/// A number that scenario files may also give by name: an errno ("EAGAIN") or a signal
/// ("SIGTERM"). `K` says which table, range and wording apply.
pub struct NamedNumber<K>(pub i32, std::marker::PhantomData<K>);

/// What sets one kind of [`NamedNumber`] apart.
pub trait NumberKind {
    /// "errno", "signal": for messages.
    const WHAT: &'static str;
    const EXAMPLE: &'static str;
    const NAMES: &'static [(&'static str, i32)];
    const RANGE: std::ops::RangeInclusive<i32>;
    /// Whether a named value is shown with its number too ("ENOMEM (12)" but "SIGTERM").
    const SHOW_NUMBER: bool;
}

/// Errnos: every one in the worker's table (fork's own, and some it cannot return, to see what
/// the daemon does with an unexpected one), or any positive number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrnoKind {}

impl NumberKind for ErrnoKind {
    const WHAT: &'static str = "errno";
    const EXAMPLE: &'static str = "EAGAIN";
    const NAMES: &'static [(&'static str, i32)] = crate::worker::ERRNOS;
    const RANGE: std::ops::RangeInclusive<i32> = 1..=i32::MAX;
    const SHOW_NUMBER: bool = true;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalKind {}

impl NumberKind for SignalKind {
    const WHAT: &'static str = "signal";
    const EXAMPLE: &'static str = "SIGTERM";
    const NAMES: &'static [(&'static str, i32)] = &[
        ("SIGHUP", libc::SIGHUP),
        ("SIGINT", libc::SIGINT),
        ("SIGQUIT", libc::SIGQUIT),
        ("SIGABRT", libc::SIGABRT),
        ("SIGKILL", libc::SIGKILL),
        ("SIGUSR1", libc::SIGUSR1),
        ("SIGSEGV", libc::SIGSEGV),
        ("SIGUSR2", libc::SIGUSR2),
        ("SIGPIPE", libc::SIGPIPE),
        ("SIGTERM", libc::SIGTERM),
        ("SIGCONT", libc::SIGCONT),
        ("SIGSTOP", libc::SIGSTOP),
    ];
    const RANGE: std::ops::RangeInclusive<i32> = 1..=64;
    const SHOW_NUMBER: bool = false;
}

/// An errno, by name ("EAGAIN") or number.
pub type Errno = NamedNumber<ErrnoKind>;
/// A signal, by name ("SIGTERM") or number.
pub type Signal = NamedNumber<SignalKind>;

impl<K: NumberKind> NamedNumber<K> {
    pub const fn new(n: i32) -> Self {
        NamedNumber(n, std::marker::PhantomData)
    }

    pub fn name(self) -> Option<&'static str> {
        K::NAMES
            .iter()
            .find(|(_, n)| *n == self.0)
            .map(|(name, _)| *name)
    }
}

// By hand rather than derived: a derive would ask the same of the marker type `K`.
impl<K> Clone for NamedNumber<K> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K> Copy for NamedNumber<K> {}
impl<K> PartialEq for NamedNumber<K> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl<K> Eq for NamedNumber<K> {}

impl<K: NumberKind> std::fmt::Debug for NamedNumber<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", K::WHAT, self.0)
    }
}

impl<K: NumberKind> std::fmt::Display for NamedNumber<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(name) if K::SHOW_NUMBER => write!(f, "{name} ({})", self.0),
            Some(name) => write!(f, "{name}"),
            None => write!(f, "{} {}", K::WHAT, self.0),
        }
    }
}

impl<K: NumberKind> TryFrom<serde_json::Value> for NamedNumber<K> {
    type Error = String;
    fn try_from(v: serde_json::Value) -> Result<Self, String> {
        let what = K::WHAT;
        if let Some(n) = v.as_i64() {
            return match i32::try_from(n) {
                Ok(n) if K::RANGE.contains(&n) => Ok(Self::new(n)),
                _ if *K::RANGE.end() == i32::MAX => {
                    Err(format!("{what} {n} must be a positive number"))
                }
                _ => Err(format!(
                    "{what} {n} is outside {}..={}",
                    K::RANGE.start(),
                    K::RANGE.end()
                )),
            };
        }
        let name = v.as_str().ok_or_else(|| {
            format!(
                "{what} {v}: expected a name like \"{}\" or a number",
                K::EXAMPLE
            )
        })?;
        K::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, e)| Self::new(*e))
            .ok_or_else(|| {
                format!(
                    "unknown {what} {name:?}: use one of {} or a number",
                    K::NAMES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

impl<K: NumberKind> From<NamedNumber<K>> for serde_json::Value {
    fn from(e: NamedNumber<K>) -> Self {
        match e.name() {
            Some(n) => n.into(),
            None => e.0.into(),
        }
    }
}

impl<K: NumberKind> Serialize for NamedNumber<K> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_json::Value::from(*self).serialize(s)
    }
}

impl<'de, K: NumberKind> Deserialize<'de> for NamedNumber<K> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::try_from(serde_json::Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// An environment value given as a JSON number or string (kept verbatim).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "serde_json::Value")]
pub struct EnvValue(pub String);

impl TryFrom<serde_json::Value> for EnvValue {
    type Error = String;
    fn try_from(v: serde_json::Value) -> Result<Self, String> {
        match v {
            serde_json::Value::String(s) => Ok(EnvValue(s)),
            serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => Ok(EnvValue(n.to_string())),
            other => Err(format!("{other} is not an integer or a string")),
        }
    }
}

impl From<EnvValue> for serde_json::Value {
    fn from(v: EnvValue) -> Self {
        match v.0.parse::<i64>() {
            Ok(n) if n.to_string() == v.0 => n.into(),
            _ => v.0.into(),
        }
    }
}

/// What a position names: a span of the encoded request, or a part of a UDF task's Arrow data
/// section (found by walking the IPC messages of the data items, [`crate::arrow::data_parts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "serde_json::Value")]
pub enum Target {
    Span(SpanKind),
    /// The K-th Arrow record batch message of the data section (from 0, over every stream and
    /// both sides of a cogroup), from its continuation marker to the end of its body.
    Batch(usize),
    /// The K-th group of a 4.1+ grouped or cogrouped data section: its `1`/`2` marker and its
    /// stream(s). 3.5 and 4.0 send each group as one batch: name it by `batch`.
    Group(usize),
}

impl TryFrom<serde_json::Value> for Target {
    type Error = String;
    fn try_from(v: serde_json::Value) -> Result<Self, String> {
        if let Ok(k) = serde_json::from_value::<SpanKind>(v.clone()) {
            return Ok(Target::Span(k));
        }
        let part = |key: &str| {
            v.as_object()
                .filter(|o| o.len() == 1)
                .and_then(|o| o.get(key))
                .and_then(|k| k.as_u64())
        };
        match (part("batch"), part("group")) {
            (Some(k), _) => Ok(Target::Batch(k as usize)),
            (_, Some(k)) => Ok(Target::Group(k as usize)),
            _ => Err(format!("unknown span {v}: expected \"header\", \"init_prefix\", \"command\", {{\"data\": K}}, \"end_of_data\", \"final_marker\", or in an Arrow data section {{\"batch\": K}} or {{\"group\": K}}")),
        }
    }
}

impl From<Target> for serde_json::Value {
    fn from(t: Target) -> Self {
        match t {
            Target::Span(k) => serde_json::to_value(k).unwrap_or_default(),
            Target::Batch(k) => serde_json::json!({ "batch": k }),
            Target::Group(k) => serde_json::json!({ "group": k }),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Span(k) => f.write_str(&span_name(*k)),
            Target::Batch(k) => write!(f, "arrow batch[{k}]"),
            Target::Group(k) => write!(f, "group[{k}]"),
        }
    }
}

/// A place in a task's request, named by the spans of the encoded request:
/// `{"before": SPAN}`, `{"after": SPAN}` or `{"inside": SPAN, "offset": N}` (N bytes into the span,
/// 0 < N < its length; the middle when omitted). SPAN is "init_prefix" (4.3 only), "header",
/// "command", {"data": K} (the K-th data item, from 0), "end_of_data" or "final_marker"; in a UDF
/// task's Arrow data section also {"batch": K} and {"group": K} ([`Target`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PositionJson", into = "PositionJson")]
pub enum Position {
    Before(Target),
    After(Target),
    Inside { span: Target, offset: Option<usize> },
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PositionJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    before: Option<Target>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<Target>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inside: Option<Target>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offset: Option<usize>,
}

impl TryFrom<PositionJson> for Position {
    type Error = String;
    fn try_from(p: PositionJson) -> Result<Self, String> {
        match (p.before, p.after, p.inside, p.offset) {
            (Some(s), None, None, None) => Ok(Position::Before(s)),
            (None, Some(s), None, None) => Ok(Position::After(s)),
            (None, None, Some(span), offset) => Ok(Position::Inside { span, offset }),
            (None, None, None, Some(_)) => Err("`offset` needs `inside`: {\"inside\": \"header\", \"offset\": 5}".into()),
            _ => Err("a position is exactly one of {\"before\": SPAN}, {\"after\": SPAN} or {\"inside\": SPAN, \"offset\": N}".into()),
        }
    }
}

impl From<Position> for PositionJson {
    fn from(p: Position) -> Self {
        match p {
            Position::Before(s) => PositionJson {
                before: Some(s),
                ..Default::default()
            },
            Position::After(s) => PositionJson {
                after: Some(s),
                ..Default::default()
            },
            Position::Inside { span, offset } => PositionJson {
                inside: Some(span),
                offset,
                ..Default::default()
            },
        }
    }
}

pub fn span_name(s: SpanKind) -> String {
    match s {
        SpanKind::Header => "header".into(),
        SpanKind::InitPrefix => "init_prefix".into(),
        SpanKind::Command => "command".into(),
        SpanKind::Data(k) => format!("data[{k}]"),
        SpanKind::EndOfData => "end_of_data".into(),
        SpanKind::FinalMarker => "final_marker".into(),
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Before(s) => write!(f, "before {s}"),
            Position::After(s) => write!(f, "after {s}"),
            Position::Inside {
                span,
                offset: Some(o),
            } => write!(f, "inside {span} at +{o}"),
            Position::Inside { span, offset: None } => {
                write!(f, "inside {span} (middle)")
            }
        }
    }
}

/// What must have become of the processes once the fault has played out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FateExpect {
    /// The task's worker (socket and process faults only), checked when the task has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<Fate>,
    /// The daemon: checked when the task has ended (launch faults: after the last task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<Fate>,
}

/// `"alive"`, `"gone"` (ended, however), `{"exit": N}` or `{"signal": "SIGKILL"}`. An exit status
/// or signal can only be known for processes fakejvm started (the daemon, direct workers): a
/// forked worker is the daemon's child, so for it only alive/gone can be checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "serde_json::Value")]
pub enum Fate {
    Alive,
    Gone,
    Exit(i32),
    Signal(Signal),
}

impl TryFrom<serde_json::Value> for Fate {
    type Error = String;
    fn try_from(v: serde_json::Value) -> Result<Self, String> {
        const HELP: &str =
            "expected \"alive\", \"gone\", {\"exit\": N} or {\"signal\": \"SIGKILL\"}";
        match v.as_str() {
            Some("alive") => return Ok(Fate::Alive),
            Some("gone") => return Ok(Fate::Gone),
            _ => {}
        }
        let obj = v
            .as_object()
            .filter(|o| o.len() == 1)
            .ok_or_else(|| format!("bad fate {v}: {HELP}"))?;
        if let Some(code) = obj.get("exit") {
            let code = code
                .as_i64()
                .and_then(|c| i32::try_from(c).ok())
                .ok_or_else(|| format!("bad exit status {code}"))?;
            return Ok(Fate::Exit(code));
        }
        if let Some(sig) = obj.get("signal") {
            return Ok(Fate::Signal(Signal::try_from(sig.clone())?));
        }
        Err(format!("bad fate {v}: {HELP}"))
    }
}

impl From<Fate> for serde_json::Value {
    fn from(f: Fate) -> Self {
        match f {
            Fate::Alive => "alive".into(),
            Fate::Gone => "gone".into(),
            Fate::Exit(c) => serde_json::json!({ "exit": c }),
            Fate::Signal(s) => serde_json::json!({ "signal": serde_json::Value::from(s) }),
        }
    }
}

impl std::fmt::Display for Fate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fate::Alive => write!(f, "alive"),
            Fate::Gone => write!(f, "gone"),
            Fate::Exit(c) => write!(f, "exited with status {c}"),
            Fate::Signal(s) => write!(f, "killed by {s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Fault, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn faults_parse_with_their_defaults() {
        let f = parse(r#"{"kind":"fork_fail","errno":"EAGAIN","schedule":{"nth":[1,2]}}"#).unwrap();
        assert_eq!(
            f,
            Fault::ForkFail {
                errno: Errno::new(libc::EAGAIN),
                schedule: ForkSchedule::Nth(vec![1, 2]),
                expect: FateExpect::default()
            }
        );
        let f = parse(r#"{"kind":"fork_fail","errno":12,"schedule":{"probability":0.5,"seed":3}}"#)
            .unwrap();
        assert!(
            matches!(f, Fault::ForkFail { errno, schedule: ForkSchedule::Random { seed: 3, .. }, .. } if errno.0 == 12)
        );
        let f = parse(r#"{"kind":"delay","at":{"after":{"data":1}},"ms":20,"expect":{"daemon":"alive","worker":{"exit":255}}}"#).unwrap();
        assert_eq!(f.task(), Some(0));
        assert_eq!(
            f.at(),
            Some(&Position::After(Target::Span(SpanKind::Data(1))))
        );
        assert_eq!(f.expect().worker, Some(Fate::Exit(255)));
        let f = parse(r#"{"kind":"signal_daemon","task":2,"at":{"inside":"header","offset":3},"signal":"SIGTERM"}"#).unwrap();
        assert_eq!(f.describe(), "signal_daemon SIGTERM inside header at +3");
        let f = parse(r#"{"kind":"executor_memory","mb":-1}"#).unwrap();
        assert_eq!(
            f,
            Fault::ExecutorMemory {
                mb: EnvValue("-1".into()),
                expect: FateExpect::default()
            }
        );
    }

    #[test]
    fn mistakes_are_refused_with_the_reason() {
        let e = parse(r#"{"kind":"delay","at":{"after":"header"},"ms":20,"bogus":1}"#).unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let e = parse(r#"{"kind":"fork_fail","errno":"EWHAT","schedule":"every"}"#).unwrap_err();
        assert!(e.contains("EAGAIN"), "{e}");
        let e =
            parse(r#"{"kind":"fork_fail","errno":"ENOMEM","schedule":{"nth":[0]}}"#).unwrap_err();
        assert!(e.contains("counting from 1"), "{e}");
        let e = parse(r#"{"kind":"delay","at":{"after":"header","before":"command"},"ms":1}"#)
            .unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
        let e =
            parse(r#"{"kind":"kill_worker","at":{"after":"header"},"expect":{"worker":"dead"}}"#)
                .unwrap_err();
        assert!(e.contains("gone"), "{e}");
    }

    #[test]
    fn lifecycle_faults_parse_and_refuse_bad_values() {
        let f = parse(r#"{"kind":"syscall_fail","call":"send","errno":"EPIPE","schedule":{"after_bytes":100}}"#).unwrap();
        assert_eq!(
            f,
            Fault::SyscallFail {
                process: ShimProcess::Worker,
                task: None,
                call: Syscall::Send,
                errno: Errno::new(libc::EPIPE),
                schedule: CallSchedule::AfterBytes {
                    bytes: 100,
                    times: None
                },
                expect: FateExpect::default()
            }
        );
        assert_eq!(
            f.describe(),
            "syscall_fail: the worker's send fails with EPIPE (32) on every send after 100 byte(s)"
        );
        let f = parse(r#"{"kind":"syscall_fail","task":2,"call":"recv","errno":"EINTR","schedule":{"after_bytes":4096,"times":1}}"#).unwrap();
        assert_eq!(f.task(), None, "still a launch fault");
        assert_eq!(
            f.describe(),
            "syscall_fail: the worker's recv fails with EINTR (4) on the first recv after 4096 byte(s), in task 2's worker only"
        );
        if let Fault::SyscallFail { schedule, .. } = &f {
            assert_eq!(schedule.shim_value(), "bytes:4096:1");
            assert!(!schedule.fails_forever());
        }
        let f = parse(r#"{"kind":"syscall_fail","process":"daemon","call":"accept","errno":"EMFILE","schedule":{"nth":[1]}}"#).unwrap();
        assert!(matches!(
            f,
            Fault::SyscallFail {
                schedule: CallSchedule::Calls(ForkSchedule::Nth(_)),
                ..
            }
        ));
        let f = parse(r#"{"kind":"stop_child"}"#).unwrap();
        assert_eq!(
            f,
            Fault::StopChild {
                fork: 1,
                stall_ms: None,
                expect: FateExpect::default()
            }
        );
        for (bad, says) in [
            (
                r#"{"kind":"syscall_fail","call":"sendd","errno":"EPIPE","schedule":{"nth":[1]}}"#,
                "unknown variant",
            ),
            (
                r#"{"kind":"syscall_fail","call":"send","errno":"EPIPE","schedule":{"after_bytes":-1}}"#,
                "after_bytes",
            ),
            (
                r#"{"kind":"syscall_fail","call":"send","errno":"EPIPE","schedule":{"nth":[0]}}"#,
                "call numbers, counting from 1",
            ),
            (
                r#"{"kind":"syscall_fail","call":"send","errno":"EPIPE","schedule":{"after_bytes":10,"times":0}}"#,
                "`times`",
            ),
            (
                r#"{"kind":"syscall_fail","call":"send","errno":"EPIPE","schedule":{"after_bytes":10,"nth":[1]}}"#,
                "`times`",
            ),
            (
                r#"{"kind":"syscall_fail","task":-1,"call":"send","errno":"EPIPE","schedule":"every"}"#,
                "invalid value",
            ),
            (
                r#"{"kind":"syscall_fail","process":"driver","call":"send","errno":"EPIPE","schedule":"every"}"#,
                "unknown variant",
            ),
            (
                r#"{"kind":"open_descriptors","count":"many"}"#,
                "invalid type",
            ),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn round_trips() {
        for s in [
            r#"{"kind":"fork_fail","errno":"ENOMEM","schedule":"every","expect":{"daemon":"alive"}}"#,
            r#"{"kind":"half_close","task":1,"at":{"inside":{"data":0},"offset":6},"direction":"to_worker","expect":{"worker":{"signal":"SIGKILL"}}}"#,
            r#"{"kind":"syscall_fail","process":"daemon","call":"poll","errno":"EINTR","schedule":{"probability":0.5,"seed":7}}"#,
            r#"{"kind":"syscall_fail","call":"recv","errno":"ECONNRESET","schedule":{"after_bytes":0}}"#,
            r#"{"kind":"syscall_fail","task":3,"call":"recv","errno":"EINTR","schedule":{"after_bytes":70,"times":2}}"#,
            r#"{"kind":"stop_child","fork":2,"stall_ms":500,"expect":{"worker":"gone"}}"#,
            r#"{"kind":"open_descriptors","count":1100}"#,
            r#"{"kind":"rlimit_nofile","limit":64}"#,
        ] {
            let f = parse(s).unwrap();
            let back: Fault = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
            assert_eq!(f, back);
        }
    }
}

#[cfg(test)]
mod target_tests {
    use super::*;

    #[test]
    fn arrow_targets_parse_next_to_spans_and_name_the_rest() {
        let p: Position = serde_json::from_str(r#"{"inside": {"batch": 2}, "offset": 3}"#).unwrap();
        assert_eq!(
            p,
            Position::Inside {
                span: Target::Batch(2),
                offset: Some(3)
            }
        );
        let p: Position = serde_json::from_str(r#"{"before": {"group": 1}}"#).unwrap();
        assert_eq!(p.to_string(), "before group[1]");
        let p: Position = serde_json::from_str(r#"{"after": "command"}"#).unwrap();
        assert_eq!(p, Position::After(Target::Span(SpanKind::Command)));
        let e = serde_json::from_str::<Position>(r#"{"after": {"batchh": 1}}"#).unwrap_err();
        assert!(e.to_string().contains("{\"batch\": K}"), "{e}");
    }
}
