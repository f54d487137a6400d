//! Process groups we own, and the ways to end them.
//!
//! Every process we spawn is the leader of its own process group, and everything it forks stays
//! in that group (the daemon even calls `setpgid(0, 0)` itself). Killing the group is the only way
//! to reach the daemon's forked workers: they are our grandchildren, so `kill_on_drop` on the
//! daemon's `Child` alone would orphan them. A global registry lets a Ctrl-C handler kill every
//! group of every `Workers` in the process.

use super::procs;
use std::collections::BTreeSet;
use std::sync::Mutex;

static LIVE_GROUPS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn live() -> std::sync::MutexGuard<'static, BTreeSet<i32>> {
    // A panic while holding this lock must not stop the cleanup that runs during unwinding.
    LIVE_GROUPS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn register(pgid: i32) {
    // pgid 0 means "my own group" to killpg and 1 is init's: never ours to kill.
    assert!(pgid > 1, "refusing to register process group {pgid}");
    live().insert(pgid);
}

pub(crate) fn unregister(pgid: i32) {
    live().remove(&pgid);
}

/// Groups registered now, by every `Workers` in this process.
pub fn registered_groups() -> Vec<i32> {
    live().iter().copied().collect()
}

/// `killpg`; false when the group has no members left (ESRCH) or the signal was refused.
pub(crate) fn signal_group(pgid: i32, signal: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    unsafe { libc::killpg(pgid, signal) == 0 }
}

/// One group we own. The kernel keeps a group id reserved while its leader is unreaped or any
/// member lives; once both are gone the number may be reused by a stranger, so after reaping the
/// leader we only signal the group if /proc still shows members in it.
#[derive(Debug)]
pub(crate) struct Group {
    pub pgid: i32,
    pub leader_reaped: bool,
}

impl Group {
    pub fn new(pgid: i32) -> Group {
        register(pgid);
        Group {
            pgid,
            leader_reaped: false,
        }
    }

    pub fn still_ours(&self) -> bool {
        !self.leader_reaped || !procs::members_of(&[self.pgid]).is_empty()
    }

    pub fn signal(&self, signal: i32) -> bool {
        self.still_ours() && signal_group(self.pgid, signal)
    }
}

/// SIGKILL every registered group (of every `Workers` in this process) and forget them.
/// For a CLI's Ctrl-C path and for test teardown; returns the groups signalled.
pub fn kill_all_registered() -> Vec<i32> {
    let groups: Vec<i32> = std::mem::take(&mut *live()).into_iter().collect();
    groups
        .into_iter()
        .filter(|&g| signal_group(g, libc::SIGKILL))
        .collect()
}

/// On SIGINT or SIGTERM: SIGKILL every registered group, then exit with status 130.
/// Drop handlers do not run when a signal ends the process, so without this a Ctrl-C would leave
/// forked workers behind. Call it from inside a tokio runtime, once.
pub fn install_interrupt_handler() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Create both streams before returning, so a signal right after this call is not missed.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        let killed = kill_all_registered();
        eprintln!("fakejvm: {name}: killed worker process groups {killed:?}, exiting");
        std::process::exit(130);
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
