//! Running one short-lived helper process (python, pip) to completion, with a deadline.
//!
//! The helper leads its own process group (a `worker::Group`, registered for Ctrl-C), and the
//! whole group is SIGKILLed when it exits, when the deadline passes, or when the caller unwinds:
//! pip starts build subprocesses of its own, and none of them may outlive us. Exit is detected
//! with `waitid(WNOWAIT)`, which leaves the leader a zombie, so the group id cannot be reused by a
//! stranger before we signal it.

use crate::worker::{spawn_in_group, Group};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// What a helper wrote, and how it ended.
#[derive(Debug)]
pub(super) struct Ran {
    /// None when the deadline passed and the group was killed.
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Ran {
    pub(super) fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The last lines of stderr (then stdout, where pip reports some errors), for an error message.
    pub(super) fn tail(&self) -> String {
        let mut text = String::from_utf8_lossy(&self.stderr).trim_end().to_string();
        if text.is_empty() {
            text = String::from_utf8_lossy(&self.stdout).trim_end().to_string();
        }
        if text.is_empty() {
            return "no output".into();
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(12)..].join("\n")
    }

    pub(super) fn status_text(&self) -> String {
        match self.status {
            Some(status) => status.to_string(),
            None => "killed at its deadline".to_string(),
        }
    }
}

/// Run `cmd` with `input` on its stdin (or /dev/null), to completion or `limit`. With
/// `echo = Some(prefix)`, each output line is also copied to our stderr as it arrives, so a
/// person sees a long pip install progress. Err only when the program cannot be started.
pub(super) fn run(
    mut cmd: Command,
    input: Option<Vec<u8>>,
    limit: Duration,
    echo: Option<&'static str>,
) -> io::Result<Ran> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let (child, group) = spawn_in_group(&mut cmd)?;
    let mut helper = Helper { child, group };
    let deadline = Instant::now() + limit;

    if let (Some(bytes), Some(mut stdin)) = (input, helper.child.stdin.take()) {
        // A helper that exits without reading gives EPIPE here, which its exit status explains.
        thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        });
    }
    let (sender, outputs) = mpsc::channel();
    for (stream, which) in [
        (helper.child.stdout.take().map(boxed), 0),
        (helper.child.stderr.take().map(boxed), 1),
    ] {
        let sender = sender.clone();
        if let Some(stream) = stream {
            thread::spawn(move || {
                let _ = sender.send((which, drain(stream, echo)));
            });
        }
    }
    drop(sender);

    let mut pause = Duration::from_millis(1);
    let exited = loop {
        if helper.exited_unreaped() {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    let status = helper.kill_and_reap()?;

    let mut ran = Ran {
        status: exited.then_some(status),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    // The group is dead, so the pipes are closed unless someone left the group; do not wait forever.
    for _ in 0..2 {
        match outputs.recv_timeout(Duration::from_secs(5)) {
            Ok((0, bytes)) => ran.stdout = bytes,
            Ok((_, bytes)) => ran.stderr = bytes,
            Err(_) => break,
        }
    }
    Ok(ran)
}

fn boxed<R: Read + Send + 'static>(r: R) -> Box<dyn Read + Send> {
    Box::new(r)
}

fn drain(stream: Box<dyn Read + Send>, echo: Option<&'static str>) -> Vec<u8> {
    let mut all = Vec::new();
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return all,
            Ok(_) => {
                if let Some(prefix) = echo {
                    eprint!("{prefix}{}", String::from_utf8_lossy(&line));
                    if !line.ends_with(b"\n") {
                        eprintln!();
                    }
                }
                all.extend_from_slice(&line);
            }
        }
    }
}

/// The helper and its group; killed and reaped on drop (an early return, a panic) unless reaped.
struct Helper {
    child: Child,
    group: Group,
}

impl Helper {
    fn exited_unreaped(&self) -> bool {
        // SAFETY: waitid only writes into `info`, which is a plain C struct.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let flags = libc::WEXITED | libc::WNOWAIT | libc::WNOHANG;
            libc::waitid(
                libc::P_PID,
                self.group.pgid() as libc::id_t,
                &mut info,
                flags,
            ) == 0
                && info.si_pid() != 0
        }
    }

    fn kill_and_reap(&mut self) -> io::Result<ExitStatus> {
        // The unreaped leader keeps the group id ours until this signal has gone out.
        self.group.signal(libc::SIGKILL);
        let status = self.child.wait();
        self.group.mark_reaped();
        status
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if !self.group.leader_reaped {
            let _ = self.kill_and_reap();
        }
    }
}
