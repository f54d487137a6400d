//! Launching real pyspark workers: daemon (TCP and Unix socket), direct, kill-by-pid, shutdown,
//! cleanup on panic, and the fork-failure errno quirk, against the pip-installed envs.
//!
//! The interpreters: fakejvm's cached env of each version (tests/common::env_for). A missing
//! env is provisioned; one that cannot be FAILS the test, with a message saying how to get one.

mod common;

use fakejvm::worker::{
    leftover_processes, DaemonState, ExitInfo, LaunchOptions, Mode, ProcessTweaks, WorkerError,
    Workers,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The cached env of `version`, found as the binary finds it (`$FAKEJVM_CACHE_DIR`, the base
/// Python of `$FAKEJVM_BASE_PYTHON`) and provisioned on first use.
fn python(version: &str) -> PathBuf {
    common::env_for(version).python
}

fn opts(mode: Mode) -> LaunchOptions {
    LaunchOptions {
        mode,
        ..LaunchOptions::default()
    }
}

/// The request that makes a worker `sys.exit(-1)` at once: split index -1. From 4.3 the split
/// index sits inside the init message (-8, length, payload).
fn exit_request(version: &str) -> Vec<u8> {
    let mut out = vec![];
    if version.starts_with("4.3") {
        out.extend((-8i32).to_be_bytes());
        out.extend(4i32.to_be_bytes());
    }
    out.extend((-1i32).to_be_bytes());
    out
}

/// Split index -1 is not a silent exit: the worker's `except BaseException` catches the
/// SystemExit and reports it like any task failure, -2 and a traceback, before exiting.
fn assert_exits_with_system_exit(version: &str, reply: &[u8]) {
    assert!(
        reply.starts_with(&(-2i32).to_be_bytes()),
        "{version}: expected -2 (exception), got {reply:02x?}"
    );
    let text = String::from_utf8_lossy(&reply[8..]);
    assert!(text.contains("SystemExit: -1"), "{version}: {text}");
}

/// Ok(true) on EOF (or reset), Ok(false) if still open after `wait`; the bytes read on the way.
async fn closes_within(
    reader: &mut (dyn tokio::io::AsyncRead + Send + Unpin),
    wait: Duration,
) -> (bool, Vec<u8>) {
    let mut got = vec![];
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(until, reader.read(&mut buf)).await {
            Err(_) => return (false, got),
            Ok(Ok(0)) | Ok(Err(_)) => return (true, got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads the worker's exception reply (-2, a length, that many bytes) until it is complete;
/// false if the connection closed first or `limit` passed.
async fn read_exception_reply(
    reader: &mut (dyn tokio::io::AsyncRead + Send + Unpin),
    limit: Duration,
) -> (bool, Vec<u8>) {
    let mut got = vec![];
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + limit;
    loop {
        if got.len() >= 8
            && got.len() >= 8 + i32::from_be_bytes(got[4..8].try_into().unwrap()).max(0) as usize
        {
            return (true, got);
        }
        match tokio::time::timeout_at(until, reader.read(&mut buf)).await {
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => return (false, got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Polls until `pid` sleeps in the kernel (state S: blocked, here on a read of its socket), up
/// to `limit`; the state it was last seen in otherwise (None: gone).
async fn asleep_within(pid: i32, limit: Duration) -> Result<(), Option<String>> {
    let until = Instant::now() + limit;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let state = stat
            .as_deref()
            .and_then(|s| s.get(s.rfind(')')? + 2..))
            .and_then(|s| s.split_whitespace().next())
            .map(str::to_owned);
        match state.as_deref() {
            Some("S") => return Ok(()),
            None | Some("Z") => return Err(state),
            _ if Instant::now() >= until => return Err(state),
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?;
    if state == "Z" {
        return None;
    }
    fields.next()?.parse().ok()
}

async fn no_leftovers_soon(pgids: &[i32]) -> Vec<(i32, String)> {
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        let left = leftover_processes(pgids);
        if left.is_empty() || Instant::now() > until {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Start, connect, pid, auth; split index -1; the forked child then waits for US to close
/// (daemon.py drains the socket after a failed task), so the socket only closes after our
/// half-close. Then a clean shutdown: exit status 1 (daemon.py quirk), nothing left behind.
async fn daemon_round_trip(version: &str) {
    let t0 = Instant::now();
    let mut w = Workers::start(&python(version), opts(Mode::Daemon))
        .await
        .unwrap_or_else(|e| panic!("{version}: {e}"));
    let started_ms = t0.elapsed().as_millis();
    let daemon = w.daemon_pid().expect("a daemon");
    assert_eq!(w.process_groups(), vec![daemon]);
    assert_eq!(w.daemon_announce().len(), 4, "a TCP port is one i32");

    let t1 = Instant::now();
    let mut c = w
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{version}: {e}"));
    let connect_ms = t1.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(
        parent_of(c.pid),
        Some(daemon),
        "{version}: the worker is the daemon's child"
    );
    let mut expected_in = c.pid.to_be_bytes().to_vec();
    expected_in.extend([0, 0, 0, 2, b'o', b'k']);
    assert_eq!(c.handshake_in, expected_in, "{version}: pid then \"ok\"");
    let mut expected_out = 64i32.to_be_bytes().to_vec();
    expected_out.extend(w.secret().as_bytes());
    assert_eq!(
        c.handshake_out, expected_out,
        "{version}: the secret as a string"
    );

    // A few more connects for a steadier figure.
    let t2 = Instant::now();
    let mut more = vec![];
    for _ in 0..5 {
        more.push(w.connect().await.unwrap());
    }
    let avg_ms = t2.elapsed().as_secs_f64() * 1000.0 / 5.0;
    eprintln!("[{version}] daemon start {started_ms} ms; first connect {connect_ms:.1} ms; next connects {avg_ms:.1} ms each");

    c.writer.write_all(&exit_request(version)).await.unwrap();
    c.writer.flush().await.unwrap();
    // The whole reply arrives, and then the forked worker is still there, asleep: daemon.py
    // waits for the JVM to close (a worker that closed on its own would have exited).
    let (complete, mut got) = read_exception_reply(&mut c.reader, Duration::from_secs(20)).await;
    assert!(
        complete,
        "{version}: no complete reply before the connection closed (or 20 s passed): {got:02x?}"
    );
    asleep_within(c.pid, Duration::from_secs(20)).await.unwrap_or_else(|state| panic!("{version}: after its reply the forked worker is {state:?}, not waiting for us to close"));
    assert_eq!(
        parent_of(c.pid),
        Some(daemon),
        "{version}: the forked worker is gone; daemon.py waits for the JVM to close"
    );
    c.writer.shutdown().await.unwrap();
    let (closed, rest) = closes_within(&mut c.reader, Duration::from_secs(5)).await;
    assert!(closed, "{version}: still open 5 s after our half-close");
    got.extend(rest);
    assert_exits_with_system_exit(version, &got);
    assert!(w.daemon_state() == DaemonState::Running);

    let pgids = w.process_groups();
    drop(more); // their workers see EOF and exit; shutdown SIGHUPs any that have not yet
    let report = w.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        report.daemon_exit,
        Some(ExitInfo::Code(1)),
        "{version}: daemon.py exits 1 even on stdin close"
    );
    assert!(
        !report.daemon_killed,
        "{version}: the daemon needed SIGKILL: {report:?}"
    );
    assert!(
        report.leftovers.is_empty(),
        "{version}: left behind: {:?}",
        report.leftovers
    );
    assert!(leftover_processes(&pgids).is_empty());
    eprintln!("[{version}] shutdown took {} ms", report.took_ms);
}

#[tokio::test]
async fn daemon_start_connect_auth_exit_4_0_5() {
    daemon_round_trip("4.0.5").await;
}

#[tokio::test]
async fn daemon_start_connect_auth_exit_4_3_0() {
    daemon_round_trip("4.3.0").await;
}

#[tokio::test]
async fn direct_worker_connects_back_and_exits_255_on_split_index_minus_one_4_0_5() {
    let mut w = Workers::start(&python("4.0.5"), opts(Mode::Direct))
        .await
        .unwrap();
    assert_eq!(w.daemon_pid(), None);
    let t = Instant::now();
    let mut c = w.connect().await.unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "[4.0.5] direct connect (spawn + import + connect back) {} ms",
        t.elapsed().as_millis()
    );
    assert_eq!(
        w.process_groups(),
        vec![c.pid],
        "the worker is our child and leads its own group"
    );
    assert_eq!(parent_of(c.pid), Some(std::process::id() as i32));
    let mut expected_in = 64i32.to_be_bytes().to_vec();
    expected_in.extend(w.secret().as_bytes());
    expected_in.extend(c.pid.to_be_bytes());
    assert_eq!(c.handshake_in, expected_in, "secret string, then pid");
    assert_eq!(c.handshake_out, vec![0, 0, 0, 2, b'o', b'k']);

    c.writer.write_all(&exit_request("4.0.5")).await.unwrap();
    let (closed, got) = closes_within(&mut c.reader, Duration::from_secs(5)).await;
    assert!(
        closed,
        "a direct worker exits without waiting for us to close"
    );
    assert_exits_with_system_exit("4.0.5", &got);
    assert_eq!(
        w.wait_direct_worker(c.pid, Duration::from_secs(5)).await,
        Some(ExitInfo::Code(255)),
        "sys.exit(-1)"
    );
    let report = w.shutdown(Duration::from_secs(2)).await;
    assert!(report.leftovers.is_empty(), "{:?}", report.leftovers);
    assert_eq!(report.direct.len(), 1);
    assert_eq!(report.direct[0].exit, Some(ExitInfo::Code(255)));
}

#[tokio::test]
async fn uds_daemon_announces_a_path_and_skips_auth_4_1_4() {
    let t = Instant::now();
    let mut w = Workers::start(&python("4.1.4"), opts(Mode::Uds))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let started_ms = t.elapsed().as_millis();
    let announce = w.daemon_announce().to_vec();
    let len = i32::from_be_bytes(announce[..4].try_into().unwrap()) as usize;
    let path = String::from_utf8(announce[4..].to_vec()).unwrap();
    assert_eq!(path.len(), len);
    assert!(
        path.ends_with(".sock") && path.contains("fakejvm-uds-"),
        "{path}"
    );

    let t = Instant::now();
    let mut c = w.connect().await.unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "[4.1.4] UDS daemon start {started_ms} ms; connect {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(
        c.handshake_in,
        c.pid.to_be_bytes().to_vec(),
        "only the pid: no auth on a Unix socket"
    );
    assert!(c.handshake_out.is_empty());
    assert_eq!(parent_of(c.pid), w.daemon_pid());

    c.writer.write_all(&exit_request("4.1.4")).await.unwrap();
    c.writer.shutdown().await.unwrap();
    let (closed, got) = closes_within(&mut c.reader, Duration::from_secs(5)).await;
    assert!(closed);
    assert_exits_with_system_exit("4.1.4", &got);
    let report = w.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.daemon_exit, Some(ExitInfo::Code(1)));
    assert!(report.leftovers.is_empty(), "{:?}", report.leftovers);
    assert!(
        !std::path::Path::new(&path).exists(),
        "the daemon removes its socket on shutdown"
    );
}

#[tokio::test]
async fn direct_worker_over_a_unix_socket_4_1_4() {
    let mut w = Workers::start(&python("4.1.4"), opts(Mode::DirectUds))
        .await
        .unwrap();
    let mut c = w.connect().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.handshake_in,
        c.pid.to_be_bytes().to_vec(),
        "only the pid: no auth on a Unix socket"
    );
    assert!(c.handshake_out.is_empty());
    c.writer.write_all(&exit_request("4.1.4")).await.unwrap();
    let (closed, got) = closes_within(&mut c.reader, Duration::from_secs(5)).await;
    assert!(closed);
    assert_exits_with_system_exit("4.1.4", &got);
    assert_eq!(
        w.wait_direct_worker(c.pid, Duration::from_secs(5)).await,
        Some(ExitInfo::Code(255))
    );
    let report = w.shutdown(Duration::from_secs(2)).await;
    assert!(report.leftovers.is_empty());
}

#[tokio::test]
async fn uds_mode_on_4_0_5_is_reported_as_a_tcp_port() {
    let err = match Workers::start(&python("4.0.5"), opts(Mode::Uds)).await {
        Err(e) => e,
        Ok(_) => panic!("4.0.5 has no Unix-socket daemon"),
    };
    assert!(matches!(err, WorkerError::BadSocketPath { .. }), "{err}");
    assert!(err.to_string().contains("looks like a TCP port"), "{err}");
}

#[tokio::test]
async fn kill_worker_via_daemon_stdin_closes_its_socket() {
    let mut w = Workers::start(&python("4.0.5"), opts(Mode::Daemon))
        .await
        .unwrap();
    let mut c = w.connect().await.unwrap();
    asleep_within(c.pid, Duration::from_secs(20))
        .await
        .unwrap_or_else(|state| {
            panic!("an idle worker waits for its task, asleep; it is {state:?}")
        });
    w.kill_worker(c.pid).await.unwrap();
    let (closed, _) = closes_within(&mut c.reader, Duration::from_secs(5)).await;
    assert!(
        closed,
        "the daemon SIGKILLed the worker, so its socket closes"
    );
    let gone = Instant::now() + Duration::from_secs(3);
    while parent_of(c.pid).is_some() && Instant::now() < gone {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(parent_of(c.pid), None, "worker {} still alive", c.pid);
    // The daemon only kills its own children: anything else is refused before it reaches stdin.
    let me = std::process::id() as i32;
    assert!(matches!(
        w.kill_worker(me).await,
        Err(WorkerError::UnknownWorker { .. })
    ));
    assert!(w.daemon_state() == DaemonState::Running);
    let report = w.shutdown(Duration::from_secs(5)).await;
    assert!(report.leftovers.is_empty());
}

#[tokio::test]
async fn a_wrong_secret_is_rejected_with_err() {
    // The daemon gets a different secret from extra_env (applied last), so ours does not match.
    let o = LaunchOptions {
        extra_env: vec![("PYTHON_WORKER_FACTORY_SECRET".into(), "not-ours".into())],
        ..opts(Mode::Daemon)
    };
    let mut w = Workers::start(&python("4.0.5"), o).await.unwrap();
    let err = w.connect().await.unwrap_err();
    assert!(matches!(err, WorkerError::AuthRejected), "{err}");
    assert!(w.daemon_state() == DaemonState::Running);
    assert!(w
        .shutdown(Duration::from_secs(5))
        .await
        .leftovers
        .is_empty());
}

/// A sitecustomize.py that makes the REAL daemon's os.fork() fail with `errno_name`: the fault a
/// fork-failure shim injects, without needing to exhaust memory or pids (impossible as root).
fn failing_fork_env(dir: &std::path::Path, errno_name: &str) -> Vec<(String, String)> {
    std::fs::write(
        dir.join("sitecustomize.py"),
        format!(
            "import errno, os\n\
             def _fork():\n    raise OSError(errno.{errno_name}, 'injected by fakejvm tests')\n\
             os.fork = _fork\n"
        ),
    )
    .unwrap();
    vec![("PYTHONPATH".into(), dir.display().to_string())]
}

#[tokio::test]
async fn fork_failure_errno_is_reported_not_taken_for_a_pid() {
    for version in ["4.0.5", "4.3.0"] {
        let dir = tempfile::tempdir().unwrap();
        let o = LaunchOptions {
            extra_env: failing_fork_env(dir.path(), "ENOMEM"),
            ..opts(Mode::Daemon)
        };
        let mut w = Workers::start(&python(version), o).await.unwrap();
        let err = w.connect().await.unwrap_err();
        assert!(
            matches!(err, WorkerError::ErrnoAsPid { value: 12 }),
            "{version}: {err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("errno 12 (ENOMEM") && text.contains("pid < 0"),
            "{text}"
        );
        assert!(
            w.daemon_state() == DaemonState::Running,
            "{version}: a non-EAGAIN fork error does not end the daemon"
        );
        assert!(w
            .shutdown(Duration::from_secs(5))
            .await
            .leftovers
            .is_empty());
    }
}

#[tokio::test]
async fn fork_failing_twice_with_eagain_kills_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let o = LaunchOptions {
        extra_env: failing_fork_env(dir.path(), "EAGAIN"),
        ..opts(Mode::Daemon)
    };
    let mut w = Workers::start(&python("4.0.5"), o).await.unwrap();
    // daemon.py sleeps 1 s and forks again; the second failure propagates and ends it.
    let err = w.connect().await.unwrap_err();
    assert!(
        matches!(
            err,
            WorkerError::DaemonDied {
                exit: Some(ExitInfo::Code(1)),
                ..
            }
        ),
        "{err}"
    );
    assert!(w.daemon_state() != DaemonState::Running);
    let report = w.shutdown(Duration::from_secs(2)).await;
    assert!(report.leftovers.is_empty());
    // It dies silently: the `sys.exit(1)` of `finally: shutdown(1)` replaces the OSError, so no
    // traceback reaches stderr. Only the exit status tells.
    let stderr = String::from_utf8_lossy(&report.stderr);
    assert!(!stderr.contains("injected by fakejvm tests"), "{stderr}");
}

#[tokio::test]
async fn per_connection_tweaks_reach_one_direct_worker_and_are_refused_for_the_daemon() {
    let mut w = Workers::start(&python("4.0.5"), opts(Mode::Direct))
        .await
        .unwrap();
    let tweaks = ProcessTweaks {
        extra_env: vec![("FAKEJVM_MARK".into(), "one".into())],
        rlimit_as: Some(8 << 30),
        ..ProcessTweaks::default()
    };
    let c = w.connect_with(&tweaks).await.unwrap();
    let environ = std::fs::read(format!("/proc/{}/environ", c.pid)).unwrap();
    let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    assert!(vars.contains(&&b"FAKEJVM_MARK=one"[..]));
    assert!(
        !vars.iter().any(|v| v.starts_with(b"CARGO")),
        "the harness's environment is not passed on"
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", c.pid)).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))
        .unwrap();
    assert!(line.contains(&(8u64 << 30).to_string()), "{line}");
    drop(c);
    assert!(w
        .shutdown(Duration::from_secs(2))
        .await
        .leftovers
        .is_empty());

    let mut d = Workers::start(&python("4.0.5"), opts(Mode::Daemon))
        .await
        .unwrap();
    assert!(matches!(
        d.connect_with(&tweaks).await,
        Err(WorkerError::WrongMode { .. })
    ));
    assert!(d
        .shutdown(Duration::from_secs(5))
        .await
        .leftovers
        .is_empty());
}

/// A panic with live daemon, forked worker and direct worker must leave no process behind: Drop
/// SIGKILLs every group while the panic unwinds.
#[test]
fn a_panic_with_live_workers_leaves_no_process_behind() {
    let seen: std::sync::Arc<std::sync::Mutex<Vec<i32>>> = Default::default();
    let seen2 = seen.clone();
    let daemon_python = python("4.0.5");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut daemon = Workers::start(&daemon_python, opts(Mode::Daemon))
                .await
                .unwrap();
            let forked = daemon.connect().await.unwrap();
            let mut direct = Workers::start(&daemon_python, opts(Mode::Direct))
                .await
                .unwrap();
            let child = direct.connect().await.unwrap();
            let mut pids = seen2.lock().unwrap();
            pids.extend(daemon.process_groups());
            pids.extend(direct.process_groups());
            pids.push(forked.pid);
            pids.push(child.pid);
            drop(pids);
            panic!("boom, with live workers");
        })
    }));
    assert!(result.is_err(), "the block panicked");
    let pids = seen.lock().unwrap().clone();
    assert_eq!(pids.len(), 4);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let left = rt.block_on(no_leftovers_soon(&pids[..2]));
    assert!(left.is_empty(), "left behind after a panic: {left:?}");
    for pid in &pids[2..] {
        assert_eq!(
            parent_of(*pid),
            None,
            "worker {pid} still alive after a panic"
        );
    }
}

/// Ctrl-C on a CLI holding live workers: the handler SIGKILLs every registered group and exits
/// with 130. Runs this same test binary as a child (drop handlers do not run on a signal, so this
/// can only be seen from outside).
#[test]
fn interrupt_handler_kills_every_group_and_exits_130() {
    const NAME: &str = "interrupt_handler_kills_every_group_and_exits_130";
    if std::env::var_os("FAKEJVM_WORKER_INTERRUPT_CHILD").is_some() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            fakejvm::worker::install_interrupt_handler().unwrap();
            let mut w = Workers::start(&python("4.0.5"), opts(Mode::Daemon))
                .await
                .unwrap();
            let c = w.connect().await.unwrap();
            println!("GROUPS {} {}", w.daemon_pid().unwrap(), c.pid);
            tokio::time::sleep(Duration::from_secs(60)).await;
            panic!("no interrupt arrived within 60 s");
        });
        return;
    }
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads", "1"])
        .env("FAKEJVM_WORKER_INTERRUPT_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            // libtest prints "test NAME ... " without a newline first, so the marker is mid-line.
            if let Some(at) = line.find("GROUPS ") {
                let _ = tx.send(line[at + "GROUPS ".len()..].to_string());
            }
        }
    });
    let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the child never reported its workers");
    };
    let pids: Vec<i32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let until = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child did not exit within 10 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130), "{status:?}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let left = rt.block_on(no_leftovers_soon(&pids[..1]));
    assert!(left.is_empty(), "left behind after SIGINT: {left:?}");
    assert_eq!(
        parent_of(pids[1]),
        None,
        "forked worker {} survived",
        pids[1]
    );
}
