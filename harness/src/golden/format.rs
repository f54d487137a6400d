//! The golden folder on disk: `index.json` and the files it names.
//!
//! ```text
//! golden/<name>/
//!   index.json            versions, mode, dialect, the Spark command, per connection: files,
//!                         pid, handshake lengths, task spans, the tap's turns
//!   c0.request.bin        JVM -> worker, raw as recorded, after the handshake
//!   c0.reply.bin          worker -> JVM, raw as recorded (or as blessed), after the handshake
//!   c0.request.txt        the normalised request stream as text (crate::decode)
//!   c0.reply.txt          the normalised reply stream as text
//!   broadcast-<id>.bin    broadcast files the requests name, copied while Spark had them
//!   *.new, pending.*      a change `fakejvm replay --bless` staged for review (see bless.rs)
//! ```
//! The handshake (pid, secret, "ok") is kept out of the stream files: its lengths and the pid are
//! in the index, the secret is nowhere.

use crate::error::BadInput;
use crate::protocol::{Dialect, UdfLayout};
use crate::worker::Mode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const INDEX: &str = "index.json";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// Bumped when this layout changes incompatibly.
    pub format: u32,
    pub name: String,
    /// The pyspark of the JVM and of the worker (one env serves both).
    pub pyspark: String,
    /// The worker's Python, major.minor.patch.
    pub python: String,
    pub dialect: Dialect,
    pub mode: Mode,
    /// SPARK_REUSE_WORKER was set for the worker (Spark's default, spark.python.worker.reuse).
    pub reuse: bool,
    /// UTC, RFC 3339.
    pub recorded_at: String,
    /// The command that ran the Spark job, as given to `fakejvm record` (after `--`).
    pub command: Vec<String>,
    /// Spark's and Python's variables the JVM gave the worker, volatile values replaced by
    /// `<...>` placeholders (see normalise::worker_env).
    pub worker_env: BTreeMap<String, String>,
    /// Daemon modes: what the JVM wrote to the daemon's stdin (pids it asked to kill).
    #[serde(default)]
    pub daemon_kill_requests: Vec<i32>,
    pub connections: Vec<Connection>,
    /// Broadcast id -> file in this folder.
    #[serde(default)]
    pub broadcasts: BTreeMap<i64, String>,
    /// Facts the recorder noticed (e.g. a request the dialect does not re-encode byte for byte).
    #[serde(default)]
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    /// "c0", "c1"... in the order the JVM opened them.
    pub id: String,
    /// The worker's pid as it announced it (volatile: informational only).
    pub pid: i32,
    pub request: String,
    pub reply: String,
    pub request_text: String,
    pub reply_text: String,
    pub handshake: Handshake,
    /// Requests (= replies) on this connection; more than one means a reused worker.
    pub tasks: usize,
    /// Byte ranges [start, end) of each request in the request file and each reply in the reply
    /// file, from the decoder at record (or bless) time.
    pub request_spans: Vec<[u64; 2]>,
    pub reply_spans: Vec<[u64; 2]>,
    /// What the worker wrote after the JVM closed the connection following its last task, as a
    /// span [start, end) of the reply file (not counted in `tasks`). A reused worker reads the
    /// next split index, meets EOF and answers -2 with an EOFError traceback (seen with 4.0.5);
    /// the JVM never reads it, the tap does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_close: Option<[u64; 2]>,
    /// The tap's own account of the framing: (request offset, reply offset) each time the JVM
    /// started writing again after the worker had written, offsets after the handshake.
    pub turns: Vec<[u64; 2]>,
    /// Milliseconds after the first connection opened.
    pub opened_ms: u64,
    pub closed_ms: Option<u64>,
    /// When `fakejvm replay --bless` last replaced this connection's replies with a live
    /// worker's (UTC). The turns' reply offsets are then those of the JVM recording, not of the
    /// reply file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blessed: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handshake {
    /// JVM -> worker handshake bytes (the secret string, or "ok" in direct mode; 0 on Unix sockets).
    pub to_worker_bytes: u64,
    /// worker -> JVM handshake bytes (pid and "ok", or secret and pid in direct mode; pid only on Unix sockets).
    pub to_jvm_bytes: u64,
}

impl Index {
    /// The UDF command layout of the recorded pyspark line: family A holds two (3.5 and 4.0).
    pub fn layout(&self) -> UdfLayout {
        layout_of(&self.pyspark, self.dialect)
    }
}

/// The layout of a pyspark version text, or the family's newest line when it does not parse.
pub(crate) fn layout_of(pyspark: &str, dialect: Dialect) -> UdfLayout {
    pyspark
        .parse::<crate::pyenv::PysparkVersion>()
        .ok()
        .and_then(|v| UdfLayout::for_version(v.major, v.minor))
        .filter(|l| l.dialect() == dialect)
        .unwrap_or(UdfLayout::default_for(dialect))
}

/// A golden folder, loaded and checked: every file the index names exists.
#[derive(Clone, Debug)]
pub struct Golden {
    pub dir: PathBuf,
    pub index: Index,
}

impl Golden {
    pub fn load(dir: &Path) -> Result<Golden, BadInput> {
        let path = dir.join(INDEX);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| BadInput::new(&path, format!("cannot read: {e}")))?;
        let index: Index = serde_json::from_str(&text)
            .map_err(|e| BadInput::new(&path, format!("not a golden index: {e}")))?;
        if index.format != FORMAT_VERSION {
            return Err(BadInput::new(&path, format!("format {} is not the one this fakejvm reads ({FORMAT_VERSION}); re-record it with ci/record-goldens", index.format)));
        }
        if index.connections.is_empty() {
            return Err(BadInput::new(
                &path,
                "no connections: the recording saw no worker traffic",
            ));
        }
        for c in &index.connections {
            for f in [&c.request, &c.reply] {
                let p = dir.join(f);
                if !p.is_file() {
                    return Err(BadInput::new(
                        &p,
                        format!("missing (named by {} connection {})", path.display(), c.id),
                    ));
                }
            }
            if c.request_spans.len() != c.tasks || c.reply_spans.len() != c.tasks {
                return Err(BadInput::new(
                    &path,
                    format!(
                        "connection {}: {} tasks but {} request and {} reply spans",
                        c.id,
                        c.tasks,
                        c.request_spans.len(),
                        c.reply_spans.len()
                    ),
                ));
            }
        }
        for (id, f) in &index.broadcasts {
            let p = dir.join(f);
            if !p.is_file() {
                return Err(BadInput::new(
                    &p,
                    format!("missing (broadcast {id}, named by {})", path.display()),
                ));
            }
        }
        Ok(Golden {
            dir: dir.to_path_buf(),
            index,
        })
    }

    pub fn read(&self, file: &str) -> Result<Vec<u8>, BadInput> {
        let p = self.dir.join(file);
        std::fs::read(&p).map_err(|e| BadInput::new(&p, format!("cannot read: {e}")))
    }
}

/// The index as `index.json` holds it: pretty JSON and a final newline.
pub fn index_text(index: &Index) -> serde_json::Result<String> {
    Ok(serde_json::to_string_pretty(index)? + "\n")
}

/// Golden folders under the given paths: a folder with an index.json is one golden; any other
/// folder is searched recursively; a path to an index.json means its folder. Sorted.
pub fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>, BadInput> {
    let mut out = vec![];
    for p in paths {
        if p.is_file() && p.file_name().is_some_and(|n| n == INDEX) {
            out.push(p.parent().unwrap_or(Path::new(".")).to_path_buf());
        } else if p.is_dir() {
            let before = out.len();
            walk(p, &mut out).map_err(|e| BadInput::new(p, format!("cannot list: {e}")))?;
            if out.len() == before {
                return Err(BadInput::new(p, "holds no golden (no index.json under it)"));
            }
        } else if p.exists() {
            return Err(BadInput::new(
                p,
                "is neither a golden folder nor its index.json",
            ));
        } else {
            return Err(BadInput::new(p, "no such file or directory"));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if dir.join(INDEX).is_file() {
        out.push(dir.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        // Hidden folders are work in progress (ci/record-goldens stages into golden/.recording.*).
        let hidden = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if p.is_dir() && !hidden {
            walk(&p, out)?;
        }
    }
    Ok(())
}

/// Now, as RFC 3339 UTC (no date crate: days-to-civil from Howard Hinnant's algorithm).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_now_looks_like_rfc3339() {
        let t = utc_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
        assert!(t.as_str() > "2024-01-01", "{t}");
    }

    #[test]
    fn a_broken_index_is_bad_input_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(INDEX), "{\"format\": 1").unwrap();
        let e = Golden::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("index.json") && e.contains("not a golden index"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    #[test]
    fn collecting_an_empty_dir_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let e = collect(&[dir.path().to_path_buf()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds no golden"), "{e}");
        let e = collect(&[dir.path().join("nope")]).unwrap_err().to_string();
        assert!(e.contains("no such file"), "{e}");
    }
}
