//! The bytes exchanged before a task, on each transport, as Spark 4.x's PythonWorkerFactory and
//! pyspark's daemon.py / worker.py / util.py exchange them (read in pyspark 4.0.5, 4.1.4, 4.3.0):
//!
//! - daemon announce (daemon stdout): TCP: the port as an i32. Unix socket (4.1+): the socket path
//!   as an i32 length plus UTF-8.
//! - daemon, per connection: the forked child writes its pid (i32) first; then, on TCP only, the
//!   JVM sends the secret as a string and reads "ok" or "err" (string; after "err" the child closes).
//! - direct worker: it connects back and, on TCP only, sends the secret as a string and needs the
//!   reply "ok"; then it writes its pid (i32). On a Unix socket it writes its pid at once.
//!
//! Every read and write here has a deadline and every length read from the peer is bounded.

use super::{procs, WorkerError};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

/// Longer than any reply or secret we expect ("ok", "err", 64 hex digits).
pub(crate) const MAX_AUTH_STRING: i32 = 1024;
/// A Unix socket path cannot be longer than sun_path (108 bytes); leave room for odd systems.
pub(crate) const MAX_SOCKET_PATH: i32 = 4096;

pub(crate) struct Deadline {
    pub at: Instant,
    pub budget: std::time::Duration,
}

/// Reads exactly `buf.len()` bytes, appending them to `transcript` as they arrive (so a short read
/// still shows what came).
pub(crate) async fn read_exact_by<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    deadline: &Deadline,
    during: &'static str,
    transcript: &mut Vec<u8>,
) -> Result<(), WorkerError> {
    let mut got = 0;
    while got < buf.len() {
        let n = match timeout_at(deadline.at, r.read(&mut buf[got..])).await {
            Err(_) => {
                return Err(WorkerError::Timeout {
                    what: during,
                    after: deadline.budget,
                })
            }
            Ok(Err(source)) => return Err(WorkerError::Io { during, source }),
            Ok(Ok(n)) => n,
        };
        transcript.extend_from_slice(&buf[got..got + n]);
        if n == 0 {
            return Err(WorkerError::Closed {
                during,
                got: buf[..got].to_vec(),
            });
        }
        got += n;
    }
    Ok(())
}

pub(crate) async fn read_i32<R: AsyncRead + Unpin>(
    r: &mut R,
    deadline: &Deadline,
    during: &'static str,
    transcript: &mut Vec<u8>,
) -> Result<i32, WorkerError> {
    let mut b = [0u8; 4];
    read_exact_by(r, &mut b, deadline, during, transcript).await?;
    Ok(i32::from_be_bytes(b))
}

/// A length-prefixed string whose length must be in 0..=max.
pub(crate) async fn read_string<R: AsyncRead + Unpin>(
    r: &mut R,
    max: i32,
    deadline: &Deadline,
    during: &'static str,
    transcript: &mut Vec<u8>,
) -> Result<Vec<u8>, WorkerError> {
    let len = read_i32(r, deadline, during, transcript).await?;
    if !(0..=max).contains(&len) {
        return Err(WorkerError::BadLength {
            during,
            value: len,
            max,
        });
    }
    let mut body = vec![0u8; len as usize];
    read_exact_by(r, &mut body, deadline, during, transcript).await?;
    Ok(body)
}

pub(crate) fn encode_string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

pub(crate) async fn write_all_by<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    deadline: &Deadline,
    during: &'static str,
    transcript: &mut Vec<u8>,
) -> Result<(), WorkerError> {
    let io = async {
        w.write_all(bytes).await?;
        w.flush().await
    };
    match timeout_at(deadline.at, io).await {
        Err(_) => Err(WorkerError::Timeout {
            what: during,
            after: deadline.budget,
        }),
        Ok(Err(source)) => Err(WorkerError::Io { during, source }),
        Ok(Ok(())) => {
            transcript.extend_from_slice(bytes);
            Ok(())
        }
    }
}

/// What a daemon connection yields before the task: the worker's pid and the raw bytes both ways.
pub(crate) struct Handshake {
    pub pid: i32,
    pub inbound: Vec<u8>,
    pub outbound: Vec<u8>,
}

/// The JVM's side of a daemon connection. `secret` is None on a Unix socket (no auth there, 4.1+).
pub(crate) async fn with_daemon<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    secret: Option<&str>,
    daemon_pid: i32,
    deadline: &Deadline,
) -> Result<Handshake, WorkerError> {
    let mut hs = Handshake {
        pid: 0,
        inbound: vec![],
        outbound: vec![],
    };
    hs.pid = read_i32(
        s,
        deadline,
        "reading the forked worker's pid from the daemon",
        &mut hs.inbound,
    )
    .await?;
    check_forked_pid(hs.pid, daemon_pid)?;
    if let Some(secret) = secret {
        let msg = encode_string(secret);
        write_all_by(
            s,
            &msg,
            deadline,
            "sending the secret to the forked worker",
            &mut hs.outbound,
        )
        .await?;
        let reply = read_string(
            s,
            MAX_AUTH_STRING,
            deadline,
            "reading the worker's auth reply",
            &mut hs.inbound,
        )
        .await?;
        check_auth_reply(&reply)?;
    }
    Ok(hs)
}

/// The JVM's side of a direct worker's connection. `secret` is None on a Unix socket.
pub(crate) async fn with_direct_worker<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    secret: Option<&str>,
    deadline: &Deadline,
) -> Result<Handshake, WorkerError> {
    let mut hs = Handshake {
        pid: 0,
        inbound: vec![],
        outbound: vec![],
    };
    if let Some(secret) = secret {
        let got = read_string(
            s,
            MAX_AUTH_STRING,
            deadline,
            "reading the secret the worker sends",
            &mut hs.inbound,
        )
        .await?;
        if got != secret.as_bytes() {
            // Answer as Spark's authClient does before giving up, so the worker's side sees it too.
            let _ = write_all_by(
                s,
                &encode_string("err"),
                deadline,
                "rejecting the worker's secret",
                &mut hs.outbound,
            )
            .await;
            return Err(WorkerError::WrongSecretFromWorker {
                got: String::from_utf8_lossy(&got).into_owned(),
            });
        }
        write_all_by(
            s,
            &encode_string("ok"),
            deadline,
            "accepting the worker's secret",
            &mut hs.outbound,
        )
        .await?;
    }
    hs.pid = read_i32(
        s,
        deadline,
        "reading the direct worker's pid",
        &mut hs.inbound,
    )
    .await?;
    if hs.pid <= 0 {
        return Err(WorkerError::NegativePid { value: hs.pid });
    }
    Ok(hs)
}

fn check_auth_reply(reply: &[u8]) -> Result<(), WorkerError> {
    match reply {
        b"ok" => Ok(()),
        b"err" => Err(WorkerError::AuthRejected),
        other => Err(WorkerError::BadAuthReply {
            reply: other.to_vec(),
        }),
    }
}

/// Spark's JVM rejects only `pid < 0`. But when fork() fails with anything other than EAGAIN or
/// EINTR, daemon.py (every version) writes the POSITIVE errno where the pid belongs and closes the
/// socket. So a small value is only believed to be a pid if /proc shows a live process whose
/// parent is the daemon. A value past every errno (Linux's MAX_ERRNO is 4095) is a pid even when
/// that worker is already gone: one that dies right after writing its pid (RLIMIT_NOFILE too low
/// for its dup, seen on 4.2.1 under load) must be a crashed worker, not a fork errno; what
/// follows on the connection says how it ended.
pub(crate) fn check_forked_pid(value: i32, daemon_pid: i32) -> Result<(), WorkerError> {
    const MAX_ERRNO: i32 = 4095;
    if value < 0 {
        return Err(WorkerError::NegativePid { value });
    }
    if value > MAX_ERRNO || procs::live_child_of(value, daemon_pid) {
        Ok(())
    } else {
        Err(WorkerError::ErrnoAsPid { value })
    }
}

/// "ENOMEM: Cannot allocate memory", or "not a known errno" for numbers outside the table.
pub fn errno_label(value: i32) -> String {
    let name = ERRNOS
        .iter()
        .find(|(_, n)| *n == value)
        .map(|(name, _)| *name);
    match name {
        Some(name) => {
            let text = io::Error::from_raw_os_error(value).to_string();
            // io::Error prints "Cannot allocate memory (os error 12)"; the number is already shown.
            let text = text.split(" (os error").next().unwrap_or(&text).to_string();
            format!("{name}: {text}")
        }
        None => "not an errno this table knows".to_string(),
    }
}

/// The one errno table: the errnos fork() and the daemon's accept path can plausibly produce, and
/// the usual low ones. Labels for what a daemon wrote where a pid belongs, and the names a
/// scenario may give a fork fault.
pub(crate) const ERRNOS: &[(&str, i32)] = &[
    ("EPERM", libc::EPERM),
    ("ENOENT", libc::ENOENT),
    ("ESRCH", libc::ESRCH),
    ("EINTR", libc::EINTR),
    ("EIO", libc::EIO),
    ("ENXIO", libc::ENXIO),
    ("E2BIG", libc::E2BIG),
    ("ENOEXEC", libc::ENOEXEC),
    ("EBADF", libc::EBADF),
    ("ECHILD", libc::ECHILD),
    ("EAGAIN", libc::EAGAIN),
    ("ENOMEM", libc::ENOMEM),
    ("EACCES", libc::EACCES),
    ("EFAULT", libc::EFAULT),
    ("EBUSY", libc::EBUSY),
    ("EEXIST", libc::EEXIST),
    ("ENODEV", libc::ENODEV),
    ("EINVAL", libc::EINVAL),
    ("ENFILE", libc::ENFILE),
    ("EMFILE", libc::EMFILE),
    ("ENOSPC", libc::ENOSPC),
    ("EPIPE", libc::EPIPE),
    ("ERANGE", libc::ERANGE),
    ("EDEADLK", libc::EDEADLK),
    ("ENOSYS", libc::ENOSYS),
    ("ECONNRESET", libc::ECONNRESET),
    ("ECONNABORTED", libc::ECONNABORTED),
    ("EDQUOT", libc::EDQUOT),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_labels_name_the_errno() {
        assert_eq!(errno_label(12), "ENOMEM: Cannot allocate memory");
        assert!(errno_label(11).starts_with("EAGAIN: "));
        assert_eq!(errno_label(99999), "not an errno this table knows");
    }

    #[test]
    fn a_small_positive_pid_that_is_not_the_daemons_child_is_an_errno() {
        // Whatever runs as pid 12 here (if anything), its parent is not our process.
        let me = std::process::id() as i32;
        let err = check_forked_pid(12, me).unwrap_err();
        assert!(
            matches!(err, WorkerError::ErrnoAsPid { value: 12 }),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("errno 12 (ENOMEM"), "{text}");
        assert!(text.contains("pid < 0"), "{text}");
        assert!(matches!(
            check_forked_pid(-1, me),
            Err(WorkerError::NegativePid { value: -1 })
        ));
    }

    #[tokio::test]
    async fn auth_replies() {
        assert!(check_auth_reply(b"ok").is_ok());
        assert!(matches!(
            check_auth_reply(b"err"),
            Err(WorkerError::AuthRejected)
        ));
        assert!(matches!(
            check_auth_reply(b"no"),
            Err(WorkerError::BadAuthReply { .. })
        ));
    }

    #[tokio::test]
    async fn reads_are_bounded_and_keep_a_transcript() {
        let deadline = Deadline {
            at: Instant::now() + std::time::Duration::from_secs(1),
            budget: std::time::Duration::from_secs(1),
        };
        let mut t = vec![];
        let mut src: &[u8] = &[0x7f, 0xff, 0xff, 0xff];
        let err = read_string(&mut src, 16, &deadline, "x", &mut t)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                WorkerError::BadLength {
                    value: i32::MAX,
                    ..
                }
            ),
            "{err}"
        );
        let mut t = vec![];
        let mut short: &[u8] = &[0, 0];
        let err = read_i32(&mut short, &deadline, "x", &mut t)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, WorkerError::Closed { got, .. } if got == &[0, 0]),
            "{err}"
        );
        assert_eq!(t, vec![0, 0]);
    }
}
