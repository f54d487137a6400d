//! Connecting to the fork server without holding `Workers`.
//!
//! `Workers::connect` takes `&mut self`, so through it only one connection can be in its
//! handshake at a time. The daemon is single-threaded but does not wait for a child's handshake:
//! it accepts, forks and goes back to `select`. With several handshakes in flight it forks the
//! next worker while the last one still writes its pid and checks the secret, which is where the
//! fork server's throughput comes from (measured on this 2-core machine with 6 lanes, against
//! connecting through `Workers`: 170-184 -> 226 clean cases/s, +20-30%).
//! It dials through `worker::dial_daemon`, the handshake every other connection uses.

use crate::worker::{dial_daemon, Connection, DaemonAddr, Deadline, WorkerError};
use std::time::Duration;
use tokio::time::Instant;

/// Everything needed to reach the daemon, cheap to clone per connection.
#[derive(Clone, Debug)]
pub struct Dialer {
    pub addr: DaemonAddr,
    /// Checked by every server fakejvm dials this way (the TCP daemon, fakejvm's loop on either
    /// socket), so always sent.
    pub secret: String,
    pub daemon_pid: i32,
    pub timeout: Duration,
}

impl Dialer {
    /// From the daemon's raw announce (its stdout began with the port as an i32).
    pub fn new(
        announce: &[u8],
        secret: &str,
        daemon_pid: i32,
        timeout: Duration,
    ) -> Option<Dialer> {
        let port = i32::from_be_bytes(announce.get(..4)?.try_into().ok()?);
        Some(Dialer {
            addr: DaemonAddr::Tcp(u16::try_from(port).ok().filter(|p| *p > 0)?),
            secret: secret.to_string(),
            daemon_pid,
            timeout,
        })
    }

    /// The same handshake as `Workers::connect` (worker::handshake), with the same bounds.
    pub async fn connect(&self) -> Result<Connection, WorkerError> {
        let deadline = Deadline {
            at: Instant::now() + self.timeout,
            budget: self.timeout,
        };
        dial_daemon(&self.addr, Some(&self.secret), self.daemon_pid, &deadline).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_comes_from_the_announce() {
        let d = Dialer::new(&40000i32.to_be_bytes(), "s", 1, Duration::from_secs(1)).unwrap();
        assert_eq!(d.addr, DaemonAddr::Tcp(40000));
        assert!(Dialer::new(&0i32.to_be_bytes(), "s", 1, Duration::from_secs(1)).is_none());
        assert!(Dialer::new(&70000i32.to_be_bytes(), "s", 1, Duration::from_secs(1)).is_none());
        assert!(Dialer::new(&[0, 1], "s", 1, Duration::from_secs(1)).is_none());
    }
}
