//! Process groups we own, and the ways to end them: the one owner for every child fakejvm starts
//! (daemons, direct workers, the Spark JVM of `record` and `bench`, pip and probes, the taps'
//! real processes).
//!
//! Every child is spawned by [`spawn_in_group`]: it leads its own process group, so one `killpg`
//! reaches everything it forks, and the group is registered before anyone can see the child, in
//! the one registry the interrupt handler kills. Killing the group is the only way to reach the
//! daemon's forked workers: they are our grandchildren, so `kill_on_drop` on the daemon's `Child`
//! alone would orphan them.
//!
//! Some processes leave the group we made: pyspark's daemon calls `setpgid(0, 0)` itself, so the
//! daemon that a Spark JVM (of `record` or `bench`) starts is in no group of ours. To find those,
//! every child also carries [`OWNER_ENV`] in its environment, which everything it starts inherits
//! (Spark's ProcessBuilder passes the JVM's whole environment on to Python). On Ctrl-C the
//! handler kills the registered groups, then every process that carries our mark.

use super::procs;
use std::collections::BTreeSet;
use std::io;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Names the fakejvm process whose Ctrl-C ends this process: `<pid>.<start time>`. Set on every
/// child; a fakejvm that inherits it (the tap, started by a JVM that `record` started) passes the
/// same value on, so `record` finds the tap's real daemon and its forks too.
pub const OWNER_ENV: &str = "FAKEJVM_OWNER";

/// Passed on unchanged to every child when set, even through a cleared environment: ci/test sets
/// it for `cargo test` and afterwards looks for live processes that carry it (a leak).
pub const TEST_RUN_ENV: &str = "FAKEJVM_TEST_RUN";

static LIVE_GROUPS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn live() -> std::sync::MutexGuard<'static, BTreeSet<i32>> {
    // A panic while holding this lock must not stop the cleanup that runs during unwinding.
    LIVE_GROUPS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Owner {
    token: String,
    /// False when the token was inherited: then an ancestor fakejvm owns the sweep.
    minted: bool,
}

fn owner() -> &'static Owner {
    static OWNER: OnceLock<Owner> = OnceLock::new();
    OWNER.get_or_init(
        || match std::env::var(OWNER_ENV).ok().filter(|t| !t.is_empty()) {
            Some(token) => Owner {
                token,
                minted: false,
            },
            None => {
                let me = std::process::id() as i32;
                // The start time makes the mark unique even after our pid is reused.
                let started = procs::stat(me).map(|s| s.start_time).unwrap_or(0);
                Owner {
                    token: format!("{me}.{started}"),
                    minted: true,
                }
            }
        },
    )
}

/// The value of [`OWNER_ENV`] that this process gives its children.
pub fn owner_token() -> &'static str {
    &owner().token
}

/// Does `pid` carry our mark? Reads its initial environment (a zombie has none).
fn carries_our_mark(pid: i32) -> bool {
    let wanted = format!("{OWNER_ENV}={}", owner_token());
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).any(|var| var == wanted.as_bytes()))
        .unwrap_or(false)
}

/// Is `pgid` still the group we made? Yes while its leader is our unreaped child (alive or a
/// zombie: either way the kernel keeps the id reserved), or while a live member carries our mark.
/// Otherwise the number may have been reused by a stranger, who must not get our signal.
fn owned(pgid: i32, leader_reaped: bool) -> bool {
    if pgid <= 1 {
        return false;
    }
    let me = std::process::id() as i32;
    (!leader_reaped && procs::stat(pgid).is_some_and(|s| s.ppid == me))
        || procs::members_of(&[pgid])
            .iter()
            .any(|m| carries_our_mark(m.pid))
}

/// Groups registered now, by every owner in this process.
pub fn registered_groups() -> Vec<i32> {
    live().iter().copied().collect()
}

/// `killpg`; false when the group has no members left (ESRCH) or the signal was refused.
fn signal_group(pgid: i32, signal: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: killpg only sends a signal; pgid > 1 keeps it off our own group (0) and init's (1).
    unsafe { libc::killpg(pgid, signal) == 0 }
}

/// One process group we own: SIGKILLed and forgotten on drop (also while unwinding a panic).
/// The kernel keeps a group id reserved while its leader is unreaped or any member lives; once
/// both are gone the number may be reused, so a signal goes out only while [`owned`] says yes.
#[derive(Debug)]
pub struct Group {
    pub(crate) pgid: i32,
    /// Set by whoever reaps the leader; then only marked members keep the group ours.
    pub(crate) leader_reaped: bool,
}

impl Group {
    pub fn pgid(&self) -> i32 {
        self.pgid
    }

    /// The leader has been waited for (its pid is free for reuse from now on).
    pub fn mark_reaped(&mut self) {
        self.leader_reaped = true;
    }

    pub(crate) fn still_ours(&self) -> bool {
        owned(self.pgid, self.leader_reaped)
    }

    /// Signal the whole group, if it is still ours; false if not or if nobody was left.
    pub fn signal(&self, signal: i32) -> bool {
        self.still_ours() && signal_group(self.pgid, signal)
    }

    /// Signal the leader alone (Spark's `Process.destroy()` is a SIGTERM to the leader).
    pub fn signal_leader(&self, signal: i32) -> bool {
        // SAFETY: kill only sends a signal, and only to our unreaped child.
        !self.leader_reaped && self.still_ours() && unsafe { libc::kill(self.pgid, signal) == 0 }
    }

    /// Live processes in the group (zombies left out), with their command lines.
    pub fn members(&self) -> Vec<(i32, String)> {
        leftover_processes(&[self.pgid])
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        live().remove(&self.pgid);
    }
}

/// A command that [`spawn_in_group`] can start: std's (for synchronous helpers such as pip) and
/// tokio's.
pub trait GroupCommand {
    type Child;
    /// Its own process group, our mark in its environment.
    fn prepare(&mut self, env: &[(&'static str, String)]);
    fn start(&mut self) -> io::Result<Self::Child>;
    fn pid_of(child: &Self::Child) -> Option<u32>;
}

impl GroupCommand for std::process::Command {
    type Child = std::process::Child;
    fn prepare(&mut self, env: &[(&'static str, String)]) {
        use std::os::unix::process::CommandExt;
        self.process_group(0).envs(env.iter().map(|(k, v)| (k, v)));
    }
    fn start(&mut self) -> io::Result<Self::Child> {
        self.spawn()
    }
    fn pid_of(child: &Self::Child) -> Option<u32> {
        Some(child.id())
    }
}

impl GroupCommand for tokio::process::Command {
    type Child = tokio::process::Child;
    fn prepare(&mut self, env: &[(&'static str, String)]) {
        self.process_group(0)
            .kill_on_drop(true)
            .envs(env.iter().map(|(k, v)| (k, v)));
    }
    fn start(&mut self) -> io::Result<Self::Child> {
        self.spawn()
    }
    fn pid_of(child: &Self::Child) -> Option<u32> {
        child.id()
    }
}

/// What every child gets on top of the environment its command was given (even a cleared one).
fn marks() -> Vec<(&'static str, String)> {
    let mut env = vec![(OWNER_ENV, owner_token().to_string())];
    if let Some(run) = std::env::var(TEST_RUN_ENV).ok().filter(|r| !r.is_empty()) {
        env.push((TEST_RUN_ENV, run));
    }
    env
}

/// Start `cmd` as the leader of a new process group, marked as ours, and register the group.
/// The registry stays locked while the child starts, so an interrupt handler that runs meanwhile
/// waits and then sees the new group: no child is ever unregistered and alive.
pub fn spawn_in_group<C: GroupCommand>(cmd: &mut C) -> io::Result<(C::Child, Group)> {
    cmd.prepare(&marks());
    let mut registry = live();
    let child = cmd.start()?;
    let pgid = C::pid_of(&child)
        .map(|p| p as i32)
        .filter(|p| *p > 1)
        .ok_or_else(|| io::Error::other("the child has no pid"))?;
    registry.insert(pgid);
    Ok((
        child,
        Group {
            pgid,
            leader_reaped: false,
        },
    ))
}

/// SIGKILL every registered group that is still ours (of every owner in this process) and forget
/// them all. For a CLI's Ctrl-C path and for test teardown; returns the groups signalled.
pub fn kill_all_registered() -> Vec<i32> {
    let mut registry = live();
    let groups: Vec<i32> = std::mem::take(&mut *registry).into_iter().collect();
    groups
        .into_iter()
        .filter(|&g| owned(g, false) && signal_group(g, libc::SIGKILL))
        .collect()
}

/// SIGKILL every live process (but us) that carries the mark this process minted, until a pass
/// finds none (a daemon may fork between our look and our kill), for at most ten seconds.
/// Returns the pids killed. A process that inherited its mark leaves this to its ancestor.
pub fn kill_marked() -> Vec<i32> {
    if !owner().minted {
        return vec![];
    }
    let me = std::process::id() as i32;
    let mut killed = BTreeSet::new();
    // SIGKILL takes effect within moments; the bound only guards against a process stuck in D state.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let marked: Vec<i32> = procs::all_pids()
            .into_iter()
            .filter(|&p| p != me && carries_our_mark(p))
            .collect();
        if marked.is_empty() || std::time::Instant::now() > until {
            break;
        }
        for pid in marked {
            // SAFETY: kill only sends a signal; the process carries our mark, so we started it.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed.insert(pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    killed.into_iter().collect()
}

/// On SIGINT or SIGTERM: SIGKILL every registered group and every marked process, then exit with
/// 128 + the signal (130 for Ctrl-C, 143 for SIGTERM), as a shell reports a process killed by it.
/// Drop handlers do not run when `process::exit` ends the process, so without this a Ctrl-C would
/// leave forked workers and JVMs behind. Call it from inside a tokio runtime, once.
pub fn install_interrupt_handler() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Create both streams before returning, so a signal right after this call is not missed.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        let (name, number) = tokio::select! {
            _ = interrupt.recv() => ("SIGINT", libc::SIGINT),
            _ = terminate.recv() => ("SIGTERM", libc::SIGTERM),
        };
        let groups = kill_all_registered();
        let marked = kill_marked();
        eprintln!("fakejvm: {name}: killed process groups {groups:?} and {} other process(es) of ours, exiting", marked.len());
        std::process::exit(128 + number);
    });
    Ok(())
}

/// Live processes (pid, command line) whose process group is one of `pgids`. Zombies are left
/// out: they have exited and only wait to be reaped (orphans are reaped by init, not by us).
pub fn leftover_processes(pgids: &[i32]) -> Vec<(i32, String)> {
    procs::members_of(pgids)
        .into_iter()
        .map(|s| (s.pid, procs::cmdline(s.pid)))
        .collect()
}

/// SIGKILL those of `pgids` that are still ours (a live member carries our mark): for groups
/// that a child of ours made, such as a tap's real daemon, which we did not spawn ourselves.
pub fn kill_marked_groups(pgids: &[i32]) -> Vec<i32> {
    pgids
        .iter()
        .copied()
        .filter(|&g| owned(g, true) && signal_group(g, libc::SIGKILL))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spawned_child_is_marked_registered_and_killed_with_its_group_on_drop() {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "sleep 60 & wait"]).env_clear();
        let (mut child, group) = spawn_in_group(&mut cmd).unwrap();
        let pgid = group.pgid();
        assert!(registered_groups().contains(&pgid));
        // The shell and its sleep: poll for the fork (never assume it is instant), and for the
        // child's exec to settle: while the kernel swaps its memory, /proc/<pid>/environ reads
        // empty for a moment, which a busy machine can stretch.
        let until = std::time::Instant::now() + Duration::from_secs(30);
        let settled =
            |m: &[(i32, String)]| m.len() == 2 && m.iter().all(|(p, _)| carries_our_mark(*p));
        while !settled(&group.members()) && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        let members = group.members();
        assert_eq!(members.len(), 2, "{members:?}");
        assert!(
            members.iter().all(|(p, _)| carries_our_mark(*p)),
            "a cleared environment still carries the mark"
        );
        drop(group);
        assert!(!registered_groups().contains(&pgid));
        assert!(child.wait().unwrap().code().is_none(), "killed by a signal");
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while !leftover_processes(&[pgid]).is_empty() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(leftover_processes(&[pgid]), vec![]);
    }

    #[test]
    fn a_reaped_group_without_members_is_not_ours() {
        let mut cmd = std::process::Command::new("true");
        let (mut child, mut group) = spawn_in_group(&mut cmd).unwrap();
        child.wait().unwrap();
        group.mark_reaped();
        assert!(!group.still_ours());
        assert!(!group.signal(libc::SIGKILL));
    }
}
