//! Reading the process table from /proc: who is alive, who is whose parent, which process group.
//!
//! Used for checks that the JVM does not make: that a "pid" from the daemon belongs to a live
//! child of the daemon (a failed fork writes an errno there instead), that no process of ours
//! outlives a shutdown or a fuzz case, and what a hung worker was doing.

use std::fs;
use std::time::Duration;

/// The fields of `/proc/<pid>/stat` that we need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub pid: i32,
    /// R, S, D, T, Z (zombie: dead, waiting to be reaped), X (dead), ...
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    /// CPU time in user and kernel mode, in clock ticks (see `clock_ticks`).
    pub utime: u64,
    pub stime: u64,
    /// When the process started, in clock ticks after boot.
    pub start_time: u64,
    /// Resident set size, in pages.
    pub rss_pages: u64,
}

impl ProcStat {
    /// A zombie has exited; it only waits for its parent to reap it, so it is not "running".
    pub(crate) fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }

    /// How long ago it started (from its start time and /proc/uptime).
    pub(crate) fn age(&self) -> Option<Duration> {
        let uptime: f64 = fs::read_to_string("/proc/uptime")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(Duration::from_secs_f64(
            (uptime - self.start_time as f64 / clock_ticks()).max(0.0),
        ))
    }
}

/// Clock ticks per second, the unit of CPU and start times in /proc.
pub(crate) fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64).max(1.0)
}

/// Alive (not a zombie) and a child of `parent`.
pub(crate) fn live_child_of(pid: i32, parent: i32) -> bool {
    stat(pid).is_some_and(|s| s.ppid == parent && !s.is_dead())
}

/// `None` when the process does not exist (or vanished while we read it).
pub(crate) fn stat(pid: i32) -> Option<ProcStat> {
    if pid <= 0 {
        return None;
    }
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The command name (`comm`) sits in parentheses and may itself contain spaces and parentheses,
/// so the fixed fields are found after the LAST ')'.
fn parse_stat(line: &str) -> Option<ProcStat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let pid = line[..open].trim().parse().ok()?;
    // After the ')': state (0), ppid (1), pgrp (2), ... utime (11), stime (12), ... starttime (19),
    // vsize (20), rss (21).
    let rest: Vec<&str> = line.get(close + 1..)?.split_ascii_whitespace().collect();
    let num = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        pid,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        pgrp: rest.get(2)?.parse().ok()?,
        utime: num(11)?,
        stime: num(12)?,
        start_time: num(19)?,
        rss_pages: num(21)?,
    })
}

/// The command line with NULs as spaces; `[comm]` for processes without one.
pub(crate) fn cmdline(pid: i32) -> String {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let text: String = String::from_utf8_lossy(&raw)
        .split('\0')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if !text.is_empty() {
        return text;
    }
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    format!("[{}]", comm.trim())
}

/// Every pid in /proc now (processes, not threads).
pub(crate) fn all_pids() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// Every live (not zombie) process whose process group is one of `pgids`.
pub(crate) fn members_of(pgids: &[i32]) -> Vec<ProcStat> {
    let mut found: Vec<ProcStat> = all_pids()
        .into_iter()
        .filter_map(stat)
        .filter(|s| pgids.contains(&s.pgrp) && !s.is_dead())
        .collect();
    found.sort_by_key(|s| s.pid);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_comm_with_spaces_and_parentheses() {
        let line = "4242 (python3 (x) y) S 17 4242 4242 0 -1 4194560 120 0 0 0 35 7 0 0 20 0 1 0 9001 160000000 9500 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            s,
            ProcStat {
                pid: 4242,
                state: 'S',
                ppid: 17,
                pgrp: 4242,
                utime: 35,
                stime: 7,
                start_time: 9001,
                rss_pages: 9500
            }
        );
    }

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id() as i32;
        let s = stat(me).expect("our own /proc entry");
        assert_eq!(s.pid, me);
        assert!(!s.is_dead());
        assert_eq!(s.pgrp, unsafe { libc::getpgrp() });
        assert!(!cmdline(me).is_empty());
        assert!(s.age().expect("an age") < Duration::from_secs(24 * 3600));
        assert!(s.rss_pages > 0);
    }

    #[test]
    fn our_own_process_is_no_child_of_pid_1_unless_it_is() {
        let me = std::process::id() as i32;
        let parent = unsafe { libc::getppid() };
        assert!(live_child_of(me, parent));
        assert!(!live_child_of(me, parent + 1));
        assert!(!live_child_of(0, 0));
    }

    #[test]
    fn a_missing_pid_has_no_stat() {
        assert_eq!(stat(0), None);
        assert_eq!(stat(-3), None);
    }
}
