//! Reading the process table from /proc: who is alive, who is whose parent, which process group.
//!
//! Used for two checks that the JVM does not make: that a "pid" from the daemon belongs to a live
//! child of the daemon (a failed fork writes an errno there instead), and that no process of ours
//! outlives a shutdown.

use std::fs;

/// The fields of `/proc/<pid>/stat` that we need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub pid: i32,
    /// R, S, D, T, Z (zombie: dead, waiting to be reaped), X (dead), ...
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
}

impl ProcStat {
    /// A zombie has exited; it only waits for its parent to reap it, so it is not "running".
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
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
    let mut rest = line.get(close + 1..)?.split_ascii_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    let pgrp = rest.next()?.parse().ok()?;
    Some(ProcStat { pid, state, ppid, pgrp })
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

/// Every live (not zombie) process whose process group is one of `pgids`.
pub(crate) fn members_of(pgids: &[i32]) -> Vec<ProcStat> {
    let Ok(dir) = fs::read_dir("/proc") else { return vec![] };
    let mut found: Vec<ProcStat> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
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
        let s = parse_stat("4242 (python3 (x) y) S 17 4242 4242 0 -1 4194560 ...").unwrap();
        assert_eq!(s, ProcStat { pid: 4242, state: 'S', ppid: 17, pgrp: 4242 });
    }

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id() as i32;
        let s = stat(me).expect("our own /proc entry");
        assert_eq!(s.pid, me);
        assert!(!s.is_dead());
        assert_eq!(s.pgrp, unsafe { libc::getpgrp() });
        assert!(!cmdline(me).is_empty());
    }

    #[test]
    fn a_missing_pid_has_no_stat() {
        assert_eq!(stat(0), None);
        assert_eq!(stat(-3), None);
    }
}
