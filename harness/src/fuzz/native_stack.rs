//! The native stack of a worker that dies by a fatal signal, for its reproducer.
//!
//! faulthandler's dump names the Python frames; a crash inside pyarrow's C++ (or CPython, or
//! any extension) needs the C frames too. After a native-crash finding is minimised, its case
//! runs once more on a *direct* worker (`python -m pyspark.worker` connecting back, as
//! `spark.python.use.daemon=false` does) started under `gdb -batch -ex run -ex bt`: gdb stops
//! the worker at the signal, before faulthandler's handler runs, and prints the backtrace of the
//! thread that received it. The reproducer holds that text (`native_stack`) or why there is
//! none (`native_stack_missing`: no gdb on PATH, the worker did not crash under gdb, ...).
//!
//! Process groups: gdb runs its inferior in a process group of its own (job control), which our
//! group kill would miss. An exec wrapper ([`JOIN_GROUP`], run by gdb between its fork and the
//! worker's exec) moves the worker back into gdb's group, the group fakejvm owns and kills.
//!
//! eu-stack reads live processes and core files only: a worker that crashes is neither by the
//! time fakejvm knows, so eu-stack alone is reported as missing gdb, not used.

use super::reproducer::Reproducer;
use super::signature::{Signature, FATAL_SIGNALS};
use crate::protocol::Dialect;
use crate::pyenv::PythonEnv;
use crate::session::{self, SessionOptions, Transcript, WritePlan, WriteStep};
use crate::verdict::OutcomeKind;
use crate::worker::{LaunchOptions, Mode, ProcessTweaks, Workers, Wrapper};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Lines of gdb output around the backtrace, so the worker's own prints (same pipe) are not
/// mistaken for frames.
const BEGIN: &str = "@@fakejvm-native-stack-begin@@";
const END: &str = "@@fakejvm-native-stack-end@@";
/// Frames kept (the innermost ones matter; a deep Python recursion has thousands).
const MAX_FRAMES: usize = 48;
/// A frame line past this is cut (gdb prints every scalar argument).
const MAX_LINE: usize = 400;
/// gdb starting, reading the symbols of python and of every extension the worker loads
/// (pandas, pyarrow's libarrow), then the case: far slower than a fuzz case.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(90);
const CASE_DEADLINE: Duration = Duration::from_secs(120);
/// gdb prints the stack and exits (killing its inferior) right after the crash.
const GDB_EXIT_WAIT: Duration = Duration::from_secs(30);

/// Run by gdb (through its startup shell) in front of the worker: join gdb's process group,
/// then become the worker. One exec more, which gdb's `exec-wrapper` expects.
const JOIN_GROUP: &str = "import os, sys\nos.setpgid(0, os.getpgid(os.getppid()))\nos.execv(sys.argv[1], sys.argv[1:])\n";

/// Whether a finding is a worker killed by a fatal signal (the kind that has a native stack).
pub fn is_native_crash(sig: &Signature) -> bool {
    sig.kind == OutcomeKind::WorkerCrashed
        && sig
            .exc_type
            .as_deref()
            .is_some_and(|s| FATAL_SIGNALS.iter().any(|(_, name, _)| *name == s))
}

/// What a native-stack run needs: the case and how the campaign sent it.
pub struct Target<'a> {
    pub env: &'a PythonEnv,
    pub dialect: Dialect,
    pub bytes: &'a [u8],
    pub close_after_write: bool,
    pub memory_limit_mb: Option<u64>,
}

/// The native stack, or why there is none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NativeStack {
    Stack(String),
    Missing(String),
}

impl NativeStack {
    /// As the reproducer's two fields: (`native_stack`, `native_stack_missing`).
    pub fn into_fields(self) -> (Option<String>, Option<String>) {
        match self {
            NativeStack::Stack(s) => (Some(s), None),
            NativeStack::Missing(m) => (None, Some(m)),
        }
    }
}

/// The first `n` lines of a stack, for terminal output.
pub fn head(stack: &str, n: usize) -> Vec<String> {
    stack.lines().take(n).map(str::to_string).collect()
}

/// `name` in a directory of PATH, if it is there and executable.
pub fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// gdb on PATH, or why a native stack cannot be had.
pub fn debugger() -> Result<PathBuf, String> {
    if let Some(gdb) = on_path("gdb") {
        return Ok(gdb);
    }
    Err(match on_path("eu-stack") {
        Some(eu) => format!(
            "gdb is not on PATH ({} is, but eu-stack reads only live processes and core files, and a crashed worker is neither): install gdb (apt-get install gdb)",
            eu.display()
        ),
        None => "gdb not on PATH (nor eu-stack): install gdb (apt-get install gdb) for the native stack of a crashing worker".into(),
    })
}

/// The gdb command line in front of `python -m pyspark.worker`.
fn gdb_wrapper(gdb: &Path, python: &Path, join_group: &Path) -> Wrapper {
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    let args: Vec<String> = [
        "-nx",
        "-batch",
        // A prompt for debuginfod would wait for an answer nobody gives.
        "-iex",
        "set debuginfod enabled off",
        "-ex",
        "set pagination off",
        "-ex",
        "set width 0",
        "-ex",
        "set confirm off",
        // Signals the worker sees in normal life (a closed socket, a child's exit): not the crash.
        "-ex",
        "handle SIGPIPE SIGCHLD SIGALRM SIGUSR1 SIGUSR2 SIGWINCH SIGHUP SIGTERM nostop noprint pass",
        "-ex",
    ]
    .into_iter()
    .map(String::from)
    .chain([
        format!(
            "set exec-wrapper {} -I {}",
            quote(python),
            quote(join_group)
        ),
        "-ex".into(),
        "run".into(),
        "-ex".into(),
        format!("echo \\n{BEGIN}\\n"),
        "-ex".into(),
        format!("bt {MAX_FRAMES}"),
        "-ex".into(),
        format!("echo {END}\\n"),
        "--args".into(),
    ])
    .collect();
    Wrapper {
        program: gdb.to_path_buf(),
        args,
    }
}

/// Lines of a native stack the campaign summary and `fakejvm repro` print.
pub const HEAD_LINES: usize = 6;

/// Set the reproducer's `native_stack` (or `native_stack_missing`) from a run of its request
/// under gdb, sent as the reproducer says (dialect, half-close, memory limit).
pub async fn fill(r: &mut Reproducer, env: &PythonEnv) {
    let stack = match r.bytes() {
        Ok(bytes) => {
            capture(&Target {
                env,
                dialect: r.dialect,
                bytes: &bytes,
                close_after_write: r.close_after_write,
                memory_limit_mb: r.memory_limit_mb,
            })
            .await
        }
        Err(e) => NativeStack::Missing(format!("the request does not decode: {e}")),
    };
    (r.native_stack, r.native_stack_missing) = stack.into_fields();
}

/// Run the case once on a direct worker under gdb and return the backtrace of the thread the
/// fatal signal stopped. Never silent: every way it can fail is a `Missing` with the reason.
pub async fn capture(t: &Target<'_>) -> NativeStack {
    let gdb = match debugger() {
        Ok(g) => g,
        Err(why) => return NativeStack::Missing(why),
    };
    let dir = match tempfile::Builder::new()
        .prefix("fakejvm-native-stack-")
        .tempdir()
    {
        Ok(d) => d,
        Err(e) => return NativeStack::Missing(format!("cannot make a temporary directory: {e}")),
    };
    let join_group = dir.path().join("join_group.py");
    if let Err(e) = std::fs::write(&join_group, JOIN_GROUP) {
        return NativeStack::Missing(format!("cannot write {}: {e}", join_group.display()));
    }
    let launch = LaunchOptions {
        mode: Mode::Direct,
        connect_timeout: CONNECT_TIMEOUT,
        rlimit_as: t.memory_limit_mb.map(|mb| mb.saturating_mul(1024 * 1024)),
        ..LaunchOptions::default()
    };
    let mut workers = match Workers::start(&t.env.python, launch).await {
        Ok(w) => w,
        Err(e) => return NativeStack::Missing(format!("cannot start a direct worker: {e}")),
    };
    let tweaks = ProcessTweaks {
        wrapper: Some(gdb_wrapper(&gdb, &t.env.python, &join_group)),
        ..ProcessTweaks::default()
    };
    let result = run_under_gdb(&mut workers, &tweaks, t).await;
    let stdout = String::from_utf8_lossy(&workers.stdout()).into_owned();
    let stderr = String::from_utf8_lossy(&workers.stderr()).into_owned();
    let report = workers.shutdown(Duration::from_secs(2)).await;
    if !report.leftovers.is_empty() {
        tracing::warn!(
            "native stack run: killed what was left of gdb's group: {:?}",
            report.leftovers
        );
    }
    match result {
        Err(why) => NativeStack::Missing(format!("{why}{}", stderr_tail(&stderr))),
        Ok(()) => match parse_gdb(&stdout) {
            Ok(stack) => NativeStack::Stack(stack),
            Err(why) => NativeStack::Missing(format!("{why}{}", stderr_tail(&stderr))),
        },
    }
}

async fn run_under_gdb(
    workers: &mut Workers,
    tweaks: &ProcessTweaks,
    t: &Target<'_>,
) -> Result<(), String> {
    let mut conn = workers
        .connect_with(tweaks)
        .await
        .map_err(|e| format!("the worker under gdb did not connect back: {e}"))?;
    let mut steps = vec![WriteStep::Write {
        start: 0,
        end: t.bytes.len(),
        chunk: None,
    }];
    if t.close_after_write {
        steps.push(WriteStep::ShutdownWrite);
    }
    #[allow(clippy::needless_update)] // robust to fields added later
    let opts = SessionOptions {
        deadline: CASE_DEADLINE,
        record_transcript: false,
        count_only: false,
        limits: super::exec::FUZZ_LIMITS,
        ..SessionOptions::default()
    };
    let base = conn.handshake_in.len() as u64;
    let _ = session::run_task(
        &mut conn.reader,
        &mut conn.writer,
        t.dialect,
        t.bytes,
        &WritePlan { steps },
        base,
        &opts,
        &mut Transcript::default(),
    )
    .await;
    let pid = conn.pid;
    drop(conn);
    // gdb exits after its last command; its output is complete once it has.
    if workers
        .wait_direct_worker(pid, GDB_EXIT_WAIT)
        .await
        .is_none()
    {
        return Err(format!(
            "gdb did not exit within {GDB_EXIT_WAIT:?} of the case (the worker under it may hang rather than crash)"
        ));
    }
    Ok(())
}

fn stderr_tail(stderr: &str) -> String {
    // gdb's warnings about auto-load and index caches are noise next to a real error.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            !(l.contains("auto-load")
                || l.contains("index cache")
                || l.starts_with("To enable execution")
                || l.starts_with("To completely disable")
                || l.starts_with("line to your configuration")
                || l.starts_with("For more information")
                || l.starts_with("\"Auto-loading")
                || l.starts_with("\tadd-auto-load")
                || l.starts_with("\tset auto-load")
                || l.trim_start().starts_with("info \""))
        })
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    let from = lines.len().saturating_sub(3);
    format!("; stderr ends: {}", lines[from..].join(" | "))
}

/// The stop line ("Program received signal SIGSEGV, Segmentation fault.") and the frames
/// between the markers; an error says what gdb saw instead.
pub fn parse_gdb(stdout: &str) -> Result<String, String> {
    let Some(begin) = stdout.rfind(BEGIN) else {
        return Err("gdb did not reach its backtrace command (no marker in its output)".into());
    };
    let before = &stdout[..begin];
    let after = &stdout[begin + BEGIN.len()..];
    let body = after.split(END).next().unwrap_or("");
    let stop = before
        .lines()
        .rev()
        .find(|l| l.contains("received signal "))
        .map(str::trim);
    let frames: Vec<String> = body
        .lines()
        .map(str::trim_end)
        .filter(|l| l.starts_with('#') || l.starts_with("(More stack frames follow"))
        .map(|l| {
            if l.chars().count() > MAX_LINE {
                format!("{}...", l.chars().take(MAX_LINE).collect::<String>())
            } else {
                l.to_string()
            }
        })
        .collect();
    match stop {
        Some(stop) if !frames.is_empty() => Ok(format!("{stop}\n{}", frames.join("\n"))),
        Some(stop) => Err(format!(
            "gdb stopped the worker ({stop}) but printed no frames"
        )),
        None => {
            let exited = before
                .lines()
                .rev()
                .find(|l| l.contains("[Inferior ") && l.contains("exited"))
                .map(str::trim);
            Err(match exited {
                Some(e) => format!("under gdb the worker did not crash: {e}"),
                None => "under gdb the worker did not stop at a signal".into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRASH: &str = "pg 1 2\n\nProgram received signal SIGSEGV, Segmentation fault.\n__strlen_evex () at ../sysdeps/x86_64/multiarch/strlen-evex.S:79\n79\t../sysdeps/x86_64/multiarch/strlen-evex.S: No such file or directory.\n\n@@fakejvm-native-stack-begin@@\n#0  __strlen_evex () at ../sysdeps/x86_64/multiarch/strlen-evex.S:79\n#1  0x00007ffff715a608 in string_at (size=-1, ptr=0x0) at Modules/_ctypes/_ctypes.c:5564\n@@fakejvm-native-stack-end@@\n";

    #[test]
    fn a_crash_gives_the_stop_line_and_frames() {
        let s = parse_gdb(CRASH).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines[0],
            "Program received signal SIGSEGV, Segmentation fault."
        );
        assert!(lines[1].starts_with("#0  __strlen_evex"), "{s}");
        assert!(lines[2].contains("string_at"), "{s}");
        assert_eq!(lines.len(), 3);
        assert_eq!(head(&s, 2).len(), 2);
    }

    #[test]
    fn no_crash_and_no_marker_say_why() {
        let exited = "[Inferior 1 (process 9) exited with code 01]\n\n@@fakejvm-native-stack-begin@@\n@@fakejvm-native-stack-end@@\n";
        assert!(parse_gdb(exited)
            .unwrap_err()
            .contains("did not crash: [Inferior 1 (process 9) exited with code 01]"));
        assert!(parse_gdb("nothing").unwrap_err().contains("no marker"));
    }

    #[test]
    fn only_fatal_signals_are_native_crashes() {
        let sig = |kind, t: Option<&str>| Signature {
            kind,
            exc_type: t.map(String::from),
            frames: vec![],
            detail: None,
        };
        assert!(is_native_crash(&sig(
            OutcomeKind::WorkerCrashed,
            Some("SIGSEGV")
        )));
        assert!(is_native_crash(&sig(
            OutcomeKind::WorkerCrashed,
            Some("SIGABRT")
        )));
        assert!(!is_native_crash(&sig(OutcomeKind::WorkerCrashed, None)));
        assert!(!is_native_crash(&sig(
            OutcomeKind::PythonException,
            Some("SIGSEGV")
        )));
    }

    #[test]
    fn the_wrapper_quotes_its_paths_for_gdbs_shell() {
        let w = gdb_wrapper(
            Path::new("/usr/bin/gdb"),
            Path::new("/e/it's/python"),
            Path::new("/t/j.py"),
        );
        assert!(w
            .args
            .contains(&"set exec-wrapper '/e/it'\\''s/python' -I '/t/j.py'".to_string()));
        assert_eq!(w.args.last().map(String::as_str), Some("--args"));
    }
}
