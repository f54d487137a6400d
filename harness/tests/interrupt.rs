//! Ctrl-C (SIGINT) and SIGTERM on the real `fakejvm record` and `fakejvm bench`, each holding a
//! real Spark local JVM and real pyspark processes: the exit status is 128 + the signal, and no
//! JVM and no pyspark process of that run is left behind.
//!
//! A run's processes are found by FAKEJVM_TEST_RUN, which fakejvm passes on to everything it
//! starts (and Spark's JVM passes on to its Python daemon). Before the signal the test sees the
//! JVM and the pyspark processes by that tag, so the tag demonstrably reached them.

mod common;

use common::{env_for, Proc};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The JVM's startup, a pyspark import and (for bench) the fakejvm side first, on a busy machine.
const SETUP_LIMIT: Duration = Duration::from_secs(600);
/// From the signal to fakejvm's exit, and from its exit to the last process of the run gone.
const EXIT_LIMIT: Duration = Duration::from_secs(60);

/// One JVM at a time: these tests are heavy, and the machine may have two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Live (not zombie) processes whose environment carries `FAKEJVM_TEST_RUN=<tag>`.
fn tagged(tag: &str) -> Vec<Proc> {
    common::alive_with(&format!("FAKEJVM_TEST_RUN={tag}"))
}

fn is_jvm(p: &Proc) -> bool {
    p.cmdline
        .split_whitespace()
        .next()
        .is_some_and(|exe| exe.ends_with("/java") || exe == "java")
}

/// The real daemon or one of its forked workers (not the tap, whose arguments name it too).
fn is_pyspark(p: &Proc) -> bool {
    p.cmdline.contains("pyspark.daemon") && !p.cmdline.contains(" tap ")
}

/// The fakejvm under test; SIGKILLs it and everything of its run if the test fails half-way.
struct Run {
    child: Child,
    tag: String,
    stderr: tempfile::NamedTempFile,
}

impl Run {
    fn start(args: &[&str], tag: &str) -> Run {
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_fakejvm"))
            .args(args)
            .env("FAKEJVM_TEST_RUN", tag)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr.reopen().unwrap()))
            .spawn()
            .unwrap();
        Run {
            child,
            tag: tag.to_string(),
            stderr,
        }
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(self.stderr.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Poll until `ready` holds for the run's processes; fails if fakejvm exits first.
    fn wait_until(&mut self, what: &str, ready: impl Fn(&[Proc]) -> bool) {
        let until = Instant::now() + SETUP_LIMIT;
        loop {
            if ready(&tagged(&self.tag)) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "fakejvm exited ({status}) before {what}; its stderr ends with:\n{}",
                    self.stderr_tail()
                );
            }
            assert!(
                Instant::now() < until,
                "no {what} within {SETUP_LIMIT:?}; stderr:\n{}",
                self.stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Send `signal`, then wait for fakejvm to exit and for every process of the run to go.
    fn interrupt(&mut self, signal: i32) -> (ExitStatus, Vec<Proc>) {
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
        let until = Instant::now() + EXIT_LIMIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < until,
                "fakejvm did not exit within {EXIT_LIMIT:?} of signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let until = Instant::now() + EXIT_LIMIT;
        let mut left = tagged(&self.tag);
        while !left.is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
            left = tagged(&self.tag);
        }
        (status, left)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for p in tagged(&self.tag) {
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
        }
    }
}

/// A job that holds its one task in the worker until it is interrupted, after touching `marker`:
/// then the JVM, the tap, the real daemon and its forked worker all exist. The worker ignores
/// SIGHUP and SIGTERM, as user code may: pyspark's daemon stops its workers with a SIGHUP when its
/// stdin closes, so without that a worker would die with the tap anyway, and the test could not
/// tell fakejvm's cleanup from pyspark's.
fn blocking_job(dir: &Path, marker: &Path) -> std::path::PathBuf {
    let job = dir.join("hold.py");
    std::fs::write(
        &job,
        format!(
            r#"import signal, time
from pyspark import SparkConf, SparkContext

def hold(x):
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open({marker:?}, "w").close()
    time.sleep(3600)  # until the test interrupts fakejvm
    return x

sc = SparkContext(conf=SparkConf().setMaster("local[1]").setAppName("fakejvm-interrupt").set("spark.ui.enabled", "false"))
sc.parallelize([1], 1).map(hold).collect()
"#,
            marker = marker.display().to_string()
        ),
    )
    .unwrap();
    job
}

fn record_is_interrupted_by(signal: i32, expected_code: i32) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let env = env_for("4.0.5");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("task-started");
    let job = blocking_job(dir.path(), &marker);
    let out = dir.path().join("golden");
    let tag = format!("interrupt-record-{signal}-{}", std::process::id());
    let python = env.python.display().to_string();
    let args = [
        "record",
        "--python",
        &python,
        "--out",
        out.to_str().unwrap(),
        "--",
        "{python}",
        job.to_str().unwrap(),
    ];
    let mut run = Run::start(&args, &tag);

    run.wait_until("the task running in a worker", |_| marker.exists());
    let procs = tagged(&tag);
    assert!(
        procs.iter().any(is_jvm),
        "no JVM carries the run's tag: {procs:#?}"
    );
    assert!(
        procs.iter().filter(|p| is_pyspark(p)).count() >= 2,
        "expected the real daemon and its forked worker: {procs:#?}"
    );

    let (status, left) = run.interrupt(signal);
    assert_eq!(
        status.code(),
        Some(expected_code),
        "{status}; stderr:\n{}",
        run.stderr_tail()
    );
    assert!(
        left.is_empty(),
        "left behind after signal {signal}: {left:#?}"
    );
    assert!(!out.exists(), "an interrupted recording wrote a golden");
}

#[test]
fn ctrl_c_on_record_kills_the_jvm_and_every_pyspark_process_and_exits_130() {
    record_is_interrupted_by(libc::SIGINT, 130);
}

#[test]
fn sigterm_on_record_kills_the_jvm_and_every_pyspark_process_and_exits_143() {
    record_is_interrupted_by(libc::SIGTERM, 143);
}

/// bench's Spark side: the glue's JVM starts a pyspark daemon of its own, outside every group
/// fakejvm made (the daemon calls setpgid itself). Interrupted once that daemon exists, with
/// enough work left (half a million lines and ints) that the JVM is still busy when the signal
/// lands.
#[test]
fn ctrl_c_on_bench_kills_the_spark_jvm_and_its_pyspark_daemon_and_exits_130() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let env = env_for("4.0.5");
    let tag = format!("interrupt-bench-{}", std::process::id());
    let python = env.python.display().to_string();
    let args = [
        "bench",
        "--python",
        &python,
        "--lines",
        "500000",
        "--ints",
        "500000",
        // A small Arrow row: the fakejvm side runs before the JVM starts, three times over.
        "--doubles",
        "20000",
        "--no-worker-alone",
    ];
    let mut run = Run::start(&args, &tag);

    run.wait_until("a pyspark daemon started by the Spark JVM", |procs| {
        procs.iter().any(|p| {
            is_pyspark(p)
                && procs
                    .iter()
                    .any(|parent| parent.pid == p.ppid && is_jvm(parent))
        })
    });
    let (status, left) = run.interrupt(libc::SIGINT);
    assert_eq!(
        status.code(),
        Some(130),
        "{status}; stderr:\n{}",
        run.stderr_tail()
    );
    assert!(left.is_empty(), "left behind after Ctrl-C: {left:#?}");
}
