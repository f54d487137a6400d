//! Volatile fields, found and replaced through the typed protocol values of the dialect, never by
//! byte offsets: a request is decoded into a `TaskRequest`, its volatile fields are swapped for
//! placeholders (to store and compare) or for live values (to replay), and it is encoded again
//! by the same dialect. A reply is decoded into a `Reply` and its timings are zeroed.
//!
//! Volatile in a request: the spark files dir (a temp dir per executor), broadcast file paths,
//! barrier and decryption-server ports, secrets and socket paths. Volatile in a reply: the
//! timing longs, and a traceback's paths and line numbers (an exception compares by type and
//! message). The handshake (pid, secret) is never part of the stored streams.

use crate::protocol::{BroadcastOp, ConnInfo, Dialect, Reply, ReplyEnd, TaskRequest, Timing};
use crate::verdict::parse_exception;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub(crate) const SPARK_FILES_DIR: &str = "<spark-files-dir>";
pub const SECRET: &str = "<secret>";
pub(crate) const SOCKET_PATH: &str = "<socket-path>";

pub(crate) fn broadcast_placeholder(id: i64) -> String {
    format!("<broadcast-{id}>")
}

/// The request with every volatile field replaced by its placeholder.
pub fn normalise_request(req: &TaskRequest) -> TaskRequest {
    let mut r = req.clone();
    if r.split_index == -1 {
        return r;
    }
    r.spark_files_dir = SPARK_FILES_DIR.to_owned();
    // Spark's call site names the driver script by its absolute path ("collect at /home/.../x.py:61").
    for (k, v) in &mut r.context.local_properties {
        if k.starts_with("callSite.") {
            *v = strip_dirs(v);
        } else if let Some(placeholder) = volatile_sql_property(k) {
            *v = placeholder.to_owned();
        } else {
            // 4.x: spark.job.tags and spark.sql.execution.query.id name the session and query
            // by random UUIDs.
            *v = mask_uuids(v);
        }
    }
    // The JVM writes the properties in its hash map's order, which differs between runs of
    // one job once SQL copies the session conf in.
    r.context.local_properties.sort();
    r.context.barrier = r.context.barrier.as_ref().map(normalise_conn);
    r.broadcasts.decryption_server = r.broadcasts.decryption_server.as_ref().map(normalise_conn);
    for op in &mut r.broadcasts.ops {
        if let BroadcastOp::Add { id, path: Some(p) } = op {
            *p = broadcast_placeholder(*id);
        }
    }
    r
}

/// A Spark SQL job copies the session's whole SparkConf into each task's local properties; these
/// keys differ between two runs of the same job (seen with 3.5.9-4.3.0).
fn volatile_sql_property(key: &str) -> Option<&'static str> {
    Some(match key {
        "spark.driver.port" => "<port>",
        "spark.driver.host" => "<host>",
        "spark.app.id" => "<app-id>",
        "spark.app.startTime" | "spark.app.submitTime" => "<time>",
        "spark.sql.warehouse.dir" => "<warehouse-dir>",
        _ => return None,
    })
}

/// Every UUID (8-4-4-4-12 hex digits) in `s` as `<uuid>`.
fn mask_uuids(s: &str) -> String {
    const SHAPE: [usize; 5] = [8, 4, 4, 4, 12];
    let is_uuid = |w: &[u8]| {
        w.len() == 36
            && w.split(|b| *b == b'-')
                .map(|g| g.len())
                .eq(SHAPE.iter().copied())
            && w.iter().all(|b| *b == b'-' || b.is_ascii_hexdigit())
    };
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if i + 36 <= b.len() && is_uuid(&b[i..i + 36]) {
            out.push_str("<uuid>");
            i += 36;
        } else {
            let c = s[i..].chars().next().expect("in bounds");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Every absolute path in `s` cut to its file name.
fn strip_dirs(s: &str) -> String {
    s.split(' ')
        .map(|w| {
            if w.starts_with('/') {
                w.rsplit('/').next().unwrap_or(w)
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A real port or socket path is volatile; the JVM's "none" markers (-1 with an empty or
/// redacted secret, 0 and "") are not, and stay visible.
fn normalise_conn(c: &ConnInfo) -> ConnInfo {
    match c {
        ConnInfo::Port { port, secret } => ConnInfo::Port {
            port: if *port > 0 { 0 } else { *port },
            secret: if secret.is_empty() {
                String::new()
            } else {
                SECRET.to_owned()
            },
        },
        ConnInfo::Path(_) => ConnInfo::Path(SOCKET_PATH.to_owned()),
    }
}

/// Stands for a secret removed from a stored request: same length, so every length and offset
/// of the recording stays as the JVM wrote it.
pub(crate) fn redaction(len: usize) -> String {
    const HEAD: &str = "<redacted-secret";
    if len < HEAD.len() + 1 {
        return "*".repeat(len);
    }
    format!("{HEAD}{}>", "-".repeat(len - HEAD.len() - 1))
}

pub(crate) fn is_redaction(s: &str) -> bool {
    !s.is_empty() && s == redaction(s.len())
}

/// The secrets a decoded request carries: the barrier / task-context secret (the 4.2+ JVM puts
/// its worker auth secret in every task's JSON context, barrier or not) and the broadcast
/// decryption server's.
pub(crate) fn secrets_in(req: &TaskRequest) -> Vec<String> {
    [
        req.context.barrier.as_ref(),
        req.broadcasts.decryption_server.as_ref(),
    ]
    .into_iter()
    .flatten()
    .filter_map(|c| match c {
        ConnInfo::Port { secret, .. } if !secret.is_empty() && !is_redaction(secret) => {
            Some(secret.clone())
        }
        _ => None,
    })
    .collect()
}

/// The recorded request bytes with every secret the typed decode found replaced, in place, by a
/// same-length [`redaction`], within the header of the request that carries it. Nothing else
/// changes: the stored stream is still the JVM's, minus a credential.
pub fn redact_secrets(bytes: &[u8], decoded: &[crate::protocol::DecodedRequest]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for d in decoded {
        let Some(header) = d
            .spans
            .iter()
            .find(|s| s.kind == crate::protocol::SpanKind::Header)
        else {
            continue;
        };
        for secret in secrets_in(&d.request) {
            let needle = secret.as_bytes();
            let mask = redaction(needle.len());
            let mut at = header.start;
            while let Some(pos) = find(&out[at..header.end], needle) {
                out[at + pos..at + pos + needle.len()].copy_from_slice(mask.as_bytes());
                at += pos + needle.len();
            }
        }
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What a replay puts where the recording had volatile values.
#[derive(Clone, Debug)]
pub struct LiveValues {
    /// An empty directory of the replay's own, standing for the executor's spark files dir.
    pub spark_files_dir: PathBuf,
    /// Broadcast id -> the copy of its file in the golden folder.
    pub broadcasts: BTreeMap<i64, PathBuf>,
    /// The live worker auth secret, where the recording had a redacted one (4.2+ task context).
    pub secret: Option<String>,
}

/// The request with its volatile fields re-filled for a live worker. A broadcast the golden has
/// no copy of keeps a path that does not exist: the worker fails only if it reads the value,
/// and that failure is then what the replay reports.
pub fn refill_request(req: &TaskRequest, live: &LiveValues) -> TaskRequest {
    let mut r = req.clone();
    if r.split_index == -1 {
        return r;
    }
    r.spark_files_dir = live.spark_files_dir.display().to_string();
    if let Some(ConnInfo::Port { secret, .. }) = &mut r.context.barrier {
        if is_redaction(secret) {
            *secret = live.secret.clone().unwrap_or_default();
        }
    }
    for op in &mut r.broadcasts.ops {
        if let BroadcastOp::Add { id, path: Some(p) } = op {
            *p = match live.broadcasts.get(id) {
                Some(file) => file.display().to_string(),
                None => live
                    .spark_files_dir
                    .join(format!("missing-broadcast-{id}"))
                    .display()
                    .to_string(),
            };
        }
    }
    r
}

/// The reply with timings and stream offsets zeroed and a traceback cut to its "Type: message"
/// line.
pub fn normalise_reply(r: &Reply) -> Reply {
    let mut r = r.clone();
    // Where a reply sits in its stream depends on the handshake before it, not on the worker.
    r.start = 0;
    r.end_offset = 0;
    match &mut r.end {
        ReplyEnd::Completed { timing, .. } => {
            *timing = Timing {
                boot_ms: 0,
                init_ms: 0,
                finish_ms: 0,
                processing_ms: timing.processing_ms.map(|_| 0),
            };
        }
        ReplyEnd::Exception { traceback } => *traceback = normalise_traceback(traceback),
    }
    r
}

pub(crate) fn normalise_traceback(tb: &str) -> String {
    let (t, m) = parse_exception(tb);
    if m.is_empty() {
        format!("{t}\n")
    } else {
        format!("{t}: {m}\n")
    }
}

pub fn encode_requests(dialect: Dialect, reqs: &[TaskRequest]) -> Vec<u8> {
    reqs.iter()
        .flat_map(|r| dialect.encode_request(r).bytes)
        .collect()
}

/// The worker environment as stored in an index: values that differ per run or per machine
/// (paths, ports, secrets, session ids) become placeholders, so re-recording does not churn.
pub fn worker_env(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    env.iter()
        .map(|(k, v)| {
            let v = if k.contains("SECRET") {
                SECRET.to_owned()
            } else if k.ends_with("_PORT") {
                "<port>".to_owned()
            } else if k.ends_with("UUID") && v != "default" {
                "<uuid>".to_owned()
            } else if v.contains('/') {
                "<path>".to_owned()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

/// Variables of the recorded worker environment that a replay passes on. The transport, the
/// secret and reuse are the worker module's business (it sets them itself); placeholders are
/// not values.
pub fn replay_env(stored: &BTreeMap<String, String>) -> Vec<(String, String)> {
    const OWNED_BY_THE_LAUNCHER: [&str; 4] = [
        "SPARK_REUSE_WORKER",
        "PYTHON_UNIX_DOMAIN_ENABLED",
        "PYTHONUNBUFFERED",
        "PYSPARK_PYTHON",
    ];
    stored
        .iter()
        .filter(|(_, v)| !(v.starts_with('<') && v.ends_with('>')))
        .filter(|(k, _)| {
            !k.starts_with("PYTHON_WORKER_FACTORY_") && !OWNED_BY_THE_LAUNCHER.contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The broadcast copies of a golden folder, by id, as absolute paths.
pub fn broadcast_files(dir: &Path, stored: &BTreeMap<i64, String>) -> BTreeMap<i64, PathBuf> {
    let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    stored.iter().map(|(id, f)| (*id, abs.join(f))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode_replies, decode_requests, DataItem};
    use crate::wire::{self, Limits, SpecialLength};
    use bytes::BytesMut;

    fn request() -> TaskRequest {
        let mut r = TaskRequest::non_udf(
            "3.11",
            vec![0x80, 5, 0x4e, 0x2e],
            vec![DataItem::Frame(b"x".to_vec())],
        );
        r.spark_files_dir = "/tmp/spark-1234/userFiles-abcd".into();
        r.context.local_properties = vec![(
            "callSite.short".into(),
            "collect at /home/me/jobs.py:61".into(),
        )];
        r.broadcasts.ops = vec![
            BroadcastOp::Add {
                id: 3,
                path: Some("/tmp/spark-1234/broadcast123".into()),
            },
            BroadcastOp::Remove { id: 1 },
        ];
        r
    }

    #[test]
    fn normalising_twice_changes_nothing_more_and_keeps_the_layout() {
        for d in Dialect::ALL {
            let mut req = request();
            // D always writes cpuAmount (4.3 requires it): decoding gives it back.
            req.context.cpu_amount = (d == Dialect::D).then(|| "1".into());
            let n = normalise_request(&req);
            assert_eq!(normalise_request(&n), n);
            assert_eq!(n.spark_files_dir, SPARK_FILES_DIR);
            assert_eq!(n.context.local_properties[0].1, "collect at jobs.py:61");
            assert_eq!(
                n.broadcasts.ops[0],
                BroadcastOp::Add {
                    id: 3,
                    path: Some("<broadcast-3>".into())
                }
            );
            assert_eq!(n.broadcasts.ops[1], BroadcastOp::Remove { id: 1 });
            let bytes = d.encode_request(&n).bytes;
            let (back, err) = decode_requests(d, &bytes);
            assert!(err.is_none());
            assert_eq!(back[0].request, n);
        }
    }

    #[test]
    fn refilling_points_broadcasts_at_the_golden_copies() {
        let live = LiveValues {
            spark_files_dir: "/tmp/live".into(),
            broadcasts: [(3, PathBuf::from("/g/broadcast-3.bin"))]
                .into_iter()
                .collect(),
            secret: Some("live".into()),
        };
        let r = refill_request(&normalise_request(&request()), &live);
        assert_eq!(r.spark_files_dir, "/tmp/live");
        assert_eq!(
            r.broadcasts.ops[0],
            BroadcastOp::Add {
                id: 3,
                path: Some("/g/broadcast-3.bin".into())
            }
        );
    }

    #[test]
    fn replies_round_trip_and_lose_only_their_timings() {
        for d in Dialect::ALL {
            let mut b = BytesMut::new();
            wire::put_frame(&mut b, b"out", Limits::DEFAULT).unwrap();
            wire::put_special(&mut b, SpecialLength::TimingData);
            for t in 0..d.timing_longs() {
                wire::put_long(&mut b, 1_700_000_000_000 + t as i64);
            }
            wire::put_long(&mut b, 0);
            wire::put_long(&mut b, 0);
            wire::put_special(&mut b, SpecialLength::EndOfDataSection);
            wire::put_int(&mut b, 1);
            wire::put_frame(&mut b, b"acc", Limits::DEFAULT).unwrap();
            wire::put_int(&mut b, -4);
            let (replies, err) = decode_replies(d, &b);
            assert!(err.is_none());
            assert_eq!(
                d.encode_replies(&replies, Limits::DEFAULT).unwrap(),
                b.to_vec(),
                "dialect {d}"
            );
            let n = normalise_reply(&replies[0]);
            assert!(
                matches!(&n.end, ReplyEnd::Completed { timing, .. } if timing.boot_ms == 0 && timing.processing_ms == (d.timing_longs() == 4).then_some(0))
            );
            assert_eq!(n.data, replies[0].data);
        }
    }

    #[test]
    fn secrets_in_a_json_context_are_redacted_in_place_and_refilled_live() {
        let secret = "e6bb32b4c6d88e5a26607ed3d3e57e431477c85eb97257e48d00beb2dcd810f1";
        let mut req = request();
        req.context.barrier = Some(ConnInfo::Port {
            port: -1,
            secret: secret.into(),
        });
        for d in [Dialect::C, Dialect::D] {
            let bytes = d.encode_request(&req).bytes;
            let (decoded, _) = decode_requests(d, &bytes);
            let redacted = redact_secrets(&bytes, &decoded);
            assert_eq!(redacted.len(), bytes.len());
            assert!(find(&redacted, secret.as_bytes()).is_none());
            let (back, err) = decode_requests(d, &redacted);
            assert!(err.is_none());
            let Some(ConnInfo::Port {
                port: -1,
                secret: masked,
            }) = &back[0].request.context.barrier
            else {
                panic!("{:?}", back[0].request.context)
            };
            assert!(is_redaction(masked) && masked.len() == 64, "{masked}");
            let live = LiveValues {
                spark_files_dir: "/x".into(),
                broadcasts: BTreeMap::new(),
                secret: Some("live".into()),
            };
            let refilled = refill_request(&back[0].request, &live);
            assert_eq!(
                refilled.context.barrier,
                Some(ConnInfo::Port {
                    port: -1,
                    secret: "live".into()
                })
            );
            assert_eq!(
                normalise_request(&back[0].request).context.barrier,
                Some(ConnInfo::Port {
                    port: -1,
                    secret: SECRET.into()
                })
            );
        }
    }

    #[test]
    fn a_sql_jobs_volatile_properties_become_placeholders_in_key_order() {
        let mut req = request();
        req.context.local_properties = vec![
            (
                "spark.job.tags".into(),
                "spark-session-489d8990-fd03-4971-8a1c-c17aa06037ea-execution-root-id-1".into(),
            ),
            ("spark.driver.port".into(), "44139".into()),
            ("spark.app.id".into(), "local-1796171178223".into()),
            ("spark.sql.shuffle.partitions".into(), "1".into()),
        ];
        let n = normalise_request(&req);
        assert_eq!(
            n.context.local_properties,
            vec![
                ("spark.app.id".into(), "<app-id>".into()),
                ("spark.driver.port".into(), "<port>".into()),
                (
                    "spark.job.tags".into(),
                    "spark-session-<uuid>-execution-root-id-1".into()
                ),
                ("spark.sql.shuffle.partitions".into(), "1".into()),
            ]
        );
        assert_eq!(normalise_request(&n), n);
    }

    #[test]
    fn tracebacks_keep_type_and_message_only() {
        let tb = "Traceback (most recent call last):\n  File \"/home/x/worker.py\", line 1234, in main\nValueError: boom 42\n";
        assert_eq!(normalise_traceback(tb), "ValueError: boom 42\n");
    }

    #[test]
    fn env_placeholders() {
        let env: BTreeMap<String, String> = [
            ("PYTHONHASHSEED", "0"),
            ("PYTHONPATH", "/a/pyspark.zip:/b"),
            ("PYTHON_WORKER_FACTORY_SECRET", "abc"),
            ("PYTHON_WORKER_FACTORY_PORT", "4242"),
            ("SPARK_JOB_ARTIFACT_UUID", "default"),
            ("PYSPARK_SPARK_SESSION_UUID", "1234-5678"),
            ("SPARK_REUSE_WORKER", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let n = worker_env(&env);
        assert_eq!(n["PYTHONPATH"], "<path>");
        assert_eq!(n["PYTHON_WORKER_FACTORY_SECRET"], "<secret>");
        assert_eq!(n["PYTHON_WORKER_FACTORY_PORT"], "<port>");
        assert_eq!(n["SPARK_JOB_ARTIFACT_UUID"], "default");
        assert_eq!(n["PYSPARK_SPARK_SESSION_UUID"], "<uuid>");
        let replay = replay_env(&n);
        assert_eq!(
            replay,
            vec![
                ("PYTHONHASHSEED".to_owned(), "0".to_owned()),
                ("SPARK_JOB_ARTIFACT_UUID".to_owned(), "default".to_owned())
            ]
        );
    }
}
