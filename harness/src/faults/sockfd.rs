//! Finding the file descriptor of our end of a worker's TCP connection, for the socket faults
//! that need the socket itself (SO_LINGER 0 for a reset, shutdown(SHUT_RD)).
//!
//! `worker::Connection` hands out its two halves as boxed `AsyncRead`/`AsyncWrite`, which hide the
//! socket. So the fd is found from the outside: the worker's socket (from /proc/<pid>/fd) has a
//! local and a remote address in /proc/net/tcp; our end is the socket of this process whose
//! addresses are the same two, swapped. A TCP 4-tuple is unique, so this finds exactly our end
//! even when other scenarios run in the same process. Unix-socket connections have no such
//! tuple, so these faults are for TCP modes (daemon, direct) only.

use std::collections::HashMap;
use std::fs;
use std::os::fd::RawFd;

/// (local, remote) as the hex "ADDR:PORT" strings of /proc/net/tcp.
type Tuple = (String, String);

/// Socket inodes a process holds open.
fn socket_inodes(pid: &str) -> Vec<(u64, Option<RawFd>)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return vec![];
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let target = fs::read_link(e.path()).ok()?;
        let inode = target
            .to_str()?
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()?;
        Some((inode, e.file_name().to_str()?.parse().ok()))
    })
    .collect()
}

/// inode -> (local, remote) for every established TCP socket (IPv4 and IPv6).
fn tcp_table() -> HashMap<u64, Tuple> {
    let mut out = HashMap::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            if f.len() > 9 && f[3] == "01" {
                if let Ok(inode) = f[9].parse() {
                    out.insert(inode, (f[1].to_string(), f[2].to_string()));
                }
            }
        }
    }
    out
}

/// Our fd of the TCP connection whose other end the process `worker_pid` holds.
pub fn our_end_of(worker_pid: i32) -> Result<RawFd, String> {
    let table = tcp_table();
    let theirs: Vec<&Tuple> = socket_inodes(&worker_pid.to_string())
        .iter()
        .filter_map(|(inode, _)| table.get(inode))
        .collect();
    if theirs.is_empty() {
        return Err(format!(
            "worker {worker_pid} holds no established TCP socket (it has exited, or this is a Unix-socket \
             connection: reset and half_close from_worker need daemon or direct mode over TCP)"
        ));
    }
    for (inode, fd) in socket_inodes("self") {
        let (Some(fd), Some((local, remote))) = (fd, table.get(&inode)) else {
            continue;
        };
        if theirs.iter().any(|(l, r)| l == remote && r == local) {
            return Ok(fd);
        }
    }
    Err(format!(
        "none of this process's sockets is connected to worker {worker_pid}"
    ))
}

/// SO_LINGER {on, 0}: closing the socket then sends a reset instead of a FIN.
pub(super) fn set_linger_zero(fd: RawFd) -> std::io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: fd is an open socket of ours; the option value is a plain struct of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub(super) fn shutdown_read(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: shutdown on an open socket fd has no memory effects.
    if unsafe { libc::shutdown(fd, libc::SHUT_RD) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child process holding the other end stands in for a worker.
    #[test]
    fn finds_our_end_of_a_connection_held_by_another_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut child = std::process::Command::new("python3")
            .args(["-c", &format!("import socket,time; s=socket.create_connection(('127.0.0.1',{port})); time.sleep(5)")])
            .spawn()
            .unwrap();
        let (ours, _) = listener.accept().unwrap();
        let found = our_end_of(child.id() as i32);
        child.kill().unwrap();
        child.wait().unwrap();
        use std::os::fd::AsRawFd;
        assert_eq!(found.unwrap(), ours.as_raw_fd());
        assert!(our_end_of(child.id() as i32).is_err());
    }
}
