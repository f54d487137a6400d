//! `fakejvm record`: run a real Spark job with the tap as PYSPARK_PYTHON, then turn the tap's
//! spool into a golden folder.
//!
//! The job's JVM comes from the same env as the worker (pip's pyspark ships the jars), so the
//! JVM and the worker are always the same Spark version.

use super::format::{self, Connection, Handshake, Index, FORMAT_VERSION};
use super::normalise;
use super::spool::{self, ConnMeta, Role, TapMeta, Transport};
use super::write_atomic;
use crate::decode::{self, StreamDirection};
use crate::error::BadInput;
use crate::protocol::{
    decode_replies, decode_requests_as, BroadcastOp, Dialect, Reply, TaskRequest, UdfLayout,
};
use crate::pyenv::{self, PythonEnv};
use crate::wire::{Limits, WireError};
use crate::worker::{kill_marked_groups, spawn_in_group, Mode};

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Record a golden from a real Spark JVM.
#[derive(clap::Args, Debug, Clone)]
pub struct RecordArgs {
    /// The golden folder to write, e.g. golden/pyspark-4.0.5/map_parallelize.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The Python (with pyspark) for the job and its workers; default: fakejvm's cached env of
    /// --pyspark.
    #[arg(long, env = "FAKEJVM_PYTHON", value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// The pyspark version of the cached env to use (provisioned on first use).
    #[arg(long, value_name = "VERSION")]
    pub pyspark: Option<String>,
    #[command(flatten)]
    pub python_version: crate::pyenv::PythonVersionArg,
    /// Replace the golden at --out if there is one.
    #[arg(long)]
    pub force: bool,
    /// JAVA_HOME for the job's JVM; default: $JAVA_HOME, else a Java 17 under /usr/lib/jvm.
    #[arg(long, value_name = "DIR")]
    pub java_home: Option<PathBuf>,
    /// Kill the job after this many seconds.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub timeout: u64,
    /// The command that runs the Spark job (after `--`). `{python}` in it stands for the env's
    /// interpreter, and is stored as such in the index.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

pub async fn record_cmd(args: RecordArgs) -> anyhow::Result<u8> {
    let want = pyenv::Want::new(args.pyspark.as_deref(), args.python_version.python_version);
    let env = pyenv::resolve_with(args.python.as_deref(), &want)
        .map_err(|e| crate::error::env_failure(None, e))?;
    let dialect = Dialect::for_version(env.pyspark.major, env.pyspark.minor).ok_or_else(|| {
        BadInput(format!(
            "{}: pyspark {} has no dialect fakejvm speaks",
            env.python.display(),
            env.pyspark
        ))
    })?;
    if args.out.join(format::INDEX).exists() && !args.force {
        return Err(BadInput::new(
            &args.out,
            "already holds a golden: pass --force to record it again",
        )
        .into());
    }
    let name = args
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "golden".into());
    let java_home = java_home(args.java_home.as_deref())?;

    let work = tempfile::Builder::new()
        .prefix("fakejvm-record-")
        .tempdir()?;
    let spool_dir = work.path().join("spool");
    std::fs::create_dir_all(&spool_dir)?;
    let launcher = write_launcher(work.path(), &env, &spool_dir)?;

    let argv: Vec<String> = args
        .command
        .iter()
        .map(|a| a.replace("{python}", &env.python.display().to_string()))
        .collect();
    eprintln!(
        "fakejvm record: pyspark {} (dialect {dialect:?}), JAVA_HOME={}, running: {}",
        env.pyspark,
        java_home.display(),
        argv.join(" ")
    );
    let status = run_job(
        &argv,
        &launcher,
        &java_home,
        Duration::from_secs(args.timeout),
        &spool_dir,
    )
    .await?;
    if let Some(problem) = status {
        let kept = work.keep();
        eprintln!(
            "fakejvm record: {problem}; nothing was written to {}; the spool is kept at {}",
            args.out.display(),
            kept.display()
        );
        return Ok(1);
    }

    let python_full = python_full_version(&env.python)
        .await
        .unwrap_or_else(|| env.python_version.clone());
    let meta = RecordingMeta {
        name,
        env: &env,
        dialect,
        python_full,
        command: args.command.clone(),
    };
    // Built beside --out, then renamed into place: an old golden stays whole until the new one is.
    let parent = args
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let staging = tempfile::Builder::new()
        .prefix(".fakejvm-record-")
        .tempdir_in(parent)?;
    std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))?;
    let index = match assemble(&spool_dir, &meta, staging.path()) {
        Ok(i) => i,
        Err(e) => {
            let kept = work.keep();
            eprintln!(
                "fakejvm record: {e:#}\nthe spool is kept at {} for a look",
                kept.display()
            );
            return Ok(1);
        }
    };
    if args.out.exists() {
        std::fs::remove_dir_all(&args.out)?;
    }
    std::fs::rename(staging.keep(), &args.out)?;
    print_summary(&args.out, &index);
    Ok(0)
}

/// A launcher script for PYSPARK_PYTHON: the JVM runs it with its arguments and the tap
/// decides what to do with them.
fn write_launcher(dir: &Path, env: &PythonEnv, spool_dir: &Path) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = dir.join("python");
    let script = format!(
        "#!/bin/sh\n# Written by `fakejvm record`: stands in for PYSPARK_PYTHON.\nexec {} tap --real-python {} --spool {} --pyspark {} -- \"$@\"\n",
        sh_quote(&exe.display().to_string()),
        sh_quote(&env.python.display().to_string()),
        sh_quote(&spool_dir.display().to_string()),
        env.pyspark,
    );
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// JAVA_HOME for the job: given, else the environment's, else a Java 17 (Spark 3.5-4.x all run
/// on 17) from the usual Debian/Ubuntu location.
fn java_home(given: Option<&Path>) -> Result<PathBuf, BadInput> {
    if let Some(p) = given {
        return if p.join("bin/java").is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(BadInput::new(p, "has no bin/java: not a JAVA_HOME"))
        };
    }
    if let Some(p) = std::env::var_os("JAVA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.join("bin/java").is_file())
    {
        return Ok(p);
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/jvm")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    candidates.sort();
    candidates
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains("17")) && p.join("bin/java").is_file())
        .ok_or_else(|| BadInput("no Java found for the Spark JVM: pass --java-home DIR or set JAVA_HOME to a Java 17".into()))
}

/// Run the job in its own process group; None when it exited 0, else what went wrong. The JVM and
/// the taps it started are in that group too: they get a grace period to stop on their own (the
/// JVM stops the daemon when the driver goes, and the tap then writes its last records) before
/// whatever is left of the group is killed, and then the real workers of any tap that could not
/// clean up after itself (their groups are the taps', but they carry our mark).
async fn run_job(
    argv: &[String],
    launcher: &Path,
    java_home: &Path,
    limit: Duration,
    spool_dir: &Path,
) -> anyhow::Result<Option<String>> {
    let (prog, rest) = argv
        .split_first()
        .ok_or_else(|| BadInput("record needs a command after `--`".into()))?;
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(rest)
        .env("PYSPARK_PYTHON", launcher)
        .env("JAVA_HOME", java_home)
        .stdin(std::process::Stdio::null())
        // Our stdout is for the summary; the job's chatter goes to stderr.
        .stdout(std::process::Stdio::from(std::io::stderr()));
    let (mut child, mut group) = spawn_in_group(&mut cmd)
        .map_err(|e| BadInput(format!("{prog}: cannot start the job: {e}")))?;
    let mut result = tokio::time::timeout(limit, child.wait()).await;
    if result.is_err() {
        group.signal(libc::SIGTERM);
        if let Ok(status) = tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
            result = Ok(status);
        }
    }
    if let Ok(Ok(_)) = result {
        group.mark_reaped();
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while !group.members().is_empty() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    group.signal(libc::SIGKILL);
    let reals: Vec<i32> = read_taps(spool_dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|(_, tap)| tap.real_pid)
        .collect();
    kill_marked_groups(&reals);
    if !group.leader_reaped {
        let _ = child.wait().await;
        group.mark_reaped();
    }
    Ok(match result {
        Err(_) => Some(format!(
            "the job did not finish within {} s and was killed",
            limit.as_secs()
        )),
        Ok(Ok(s)) if s.success() => None,
        Ok(Ok(s)) => Some(format!("the job failed ({s})")),
        Ok(Err(e)) => Some(format!("waiting for the job: {e}")),
    })
}

/// The interpreter's full version ("3.11.9"); a helper in a group of its own like every child.
async fn python_full_version(python: &Path) -> Option<String> {
    let mut cmd = tokio::process::Command::new(python);
    cmd.args(["-c", "import platform; print(platform.python_version())"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let (child, mut group) = spawn_in_group(&mut cmd).ok()?;
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .ok()?
        .ok()?;
    group.mark_reaped();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn read_taps(spool_dir: &Path) -> std::io::Result<Vec<(PathBuf, TapMeta)>> {
    let mut out = vec![];
    for e in std::fs::read_dir(spool_dir)? {
        let p = e?.path();
        if p.is_dir() {
            if let Ok(text) = std::fs::read(p.join(spool::META)) {
                if let Ok(m) = serde_json::from_slice::<TapMeta>(&text) {
                    out.push((p, m));
                }
            }
        }
    }
    Ok(out)
}

struct RecordingMeta<'a> {
    name: String,
    env: &'a PythonEnv,
    dialect: Dialect,
    python_full: String,
    command: Vec<String>,
}

struct Spooled {
    meta: ConnMeta,
    to_worker: Vec<u8>,
    to_jvm: Vec<u8>,
}

fn mode_of(role: Role, transport: Transport) -> Mode {
    match (role, transport) {
        (Role::Daemon, Transport::Tcp) => Mode::Daemon,
        (Role::Daemon, Transport::Unix) => Mode::Uds,
        (Role::Direct, Transport::Tcp) => Mode::Direct,
        (Role::Direct, Transport::Unix) => Mode::DirectUds,
    }
}

/// Spool -> golden folder at `out` (which exists and is empty). Errors say which connection and
/// where its bytes stopped making sense.
fn assemble(spool_dir: &Path, rec: &RecordingMeta, out: &Path) -> anyhow::Result<Index> {
    let taps = read_taps(spool_dir)?;
    if taps.is_empty() {
        anyhow::bail!(
            "the job never started a Python worker through PYSPARK_PYTHON (no tap ran): does it run an RDD action, \
             and does its driver leave PYSPARK_PYTHON alone?"
        );
    }
    let mut notes = vec![];
    let mut kills = vec![];
    let mut conns: Vec<Spooled> = vec![];
    for (dir, tap) in &taps {
        for e in &tap.errors {
            notes.push(format!("tap {}: {e}", tap.tap_pid));
        }
        // A daemon's tap writes stdin.bin (the pids the JVM asked it to kill) from the start, so a
        // missing or torn one means kill requests the golden cannot show.
        if tap.role == Role::Daemon {
            match std::fs::read(dir.join("stdin.bin")) {
                Ok(stdin) => {
                    kills.extend(stdin.chunks_exact(4).map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]])));
                    if stdin.len() % 4 != 0 {
                        notes.push(format!("tap {}: stdin.bin ends in {} byte(s) of a pid: the last kill request is cut", tap.tap_pid, stdin.len() % 4));
                    }
                }
                Err(e) => notes.push(format!("tap {}: cannot read stdin.bin ({e}): the daemon's kill requests are not in this golden", tap.tap_pid)),
            }
        }
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            let fname = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if !(fname.starts_with("conn-") && fname.ends_with(".json")) {
                continue;
            }
            let meta: ConnMeta = serde_json::from_slice(&std::fs::read(&p)?)?;
            let k = meta.index;
            conns.push(Spooled {
                meta,
                to_worker: std::fs::read(spool::conn_file(dir, k, "to_worker.bin"))
                    .unwrap_or_default(),
                to_jvm: std::fs::read(spool::conn_file(dir, k, "to_jvm.bin")).unwrap_or_default(),
            });
        }
    }
    let (role, transport) = (taps[0].1.role, taps[0].1.transport);
    if let Some((_, other)) = taps
        .iter()
        .find(|(_, t)| (t.role, t.transport) != (role, transport))
    {
        anyhow::bail!("the job started workers two ways ({role:?}/{transport:?} and {:?}/{:?}): record one mode per golden", other.role, other.transport);
    }
    conns.sort_by_key(|c| c.meta.opened_unix_us);
    let t0 = conns.first().map(|c| c.meta.opened_unix_us).unwrap_or(0);
    let env = taps[0].1.env.clone();
    let dialect = rec.dialect;
    let layout = format::layout_of(&rec.env.pyspark.to_string(), dialect);

    let mut connections = vec![];
    let mut broadcasts = BTreeMap::new();
    // (connection, note): the same note for several connections is written once.
    let mut conn_notes: Vec<(String, String)> = vec![];
    for c in &conns {
        for e in &c.meta.errors {
            notes.push(format!(
                "connection opened at +{} ms: {e}",
                (c.meta.opened_unix_us - t0) / 1000
            ));
        }
        if c.to_worker.is_empty() && c.to_jvm.is_empty() {
            notes.push(format!(
                "a connection opened at +{} ms carried no bytes; left out",
                (c.meta.opened_unix_us - t0) / 1000
            ));
            continue;
        }
        let id = format!("c{}", connections.len());
        let hs = spool::handshake_split(role, transport, &c.to_worker, &c.to_jvm)
            .map_err(|e| anyhow::anyhow!("{id}: the handshake does not parse: {e}"))?;
        let raw_requests = &c.to_worker[hs.to_worker..];
        let rep_bytes = &c.to_jvm[hs.to_jvm..];
        let (reqs, req_err) = decode_requests_as(layout, raw_requests);
        if let Some(e) = req_err {
            anyhow::bail!("{id}: the JVM's request stream does not decode as dialect {dialect:?} ({layout}): {e}");
        }
        let redacted = normalise::redact_secrets(raw_requests, &reqs);
        let (reqs, _) = decode_requests_as(layout, &redacted);
        let req_bytes = &redacted[..];
        let (replies, rep_err) = decode_replies(dialect, rep_bytes);
        if let Some(e) = rep_err {
            anyhow::bail!(
                "{id}: the worker's reply stream does not decode as dialect {dialect:?}: {e}"
            );
        }
        // One reply more than requests: the worker's answer to the JVM closing the connection.
        let after_close = match replies.len().checked_sub(reqs.len()) {
            Some(0) => None,
            Some(1) if replies.last().is_some_and(|r| r.data.is_empty()) => replies.last().map(|r| [r.start, r.end_offset]),
            _ => anyhow::bail!("{id}: {} request(s) but {} reply(ies): the JVM gave up on a task mid-way; record a job that does not", reqs.len(), replies.len()),
        };
        if reqs.is_empty() {
            notes.push(format!("{id}: handshake only, no task; left out"));
            continue;
        }
        let requests: Vec<TaskRequest> = reqs.iter().map(|r| r.request.clone()).collect();
        if let Some(n) = reencode_check(layout, req_bytes, &reqs) {
            conn_notes.push((id.clone(), n));
        }
        if let Some(d) = first_difference(
            &dialect.encode_replies(&replies, Limits::DEFAULT)?,
            rep_bytes,
        ) {
            notes.push(format!("{id}: the decoded replies do not re-encode to the worker's bytes: first difference at reply byte {d}"));
        }
        for r in &requests {
            for op in &r.broadcasts.ops {
                if let BroadcastOp::Add { id: bid, .. } = op {
                    let src = spool::broadcast_file(spool_dir, *bid);
                    let file = format!("broadcast-{bid}.bin");
                    if src.is_file() {
                        std::fs::copy(&src, out.join(&file))?;
                        broadcasts.insert(*bid, file);
                    } else if !broadcasts.contains_key(bid) {
                        notes.push(format!("{id}: broadcast {bid} was not copied while it existed; a replay cannot read its value"));
                    }
                }
            }
        }
        let files = ConnFiles::new(&id);
        std::fs::write(out.join(&files.request), req_bytes)?;
        std::fs::write(out.join(&files.reply), rep_bytes)?;
        std::fs::write(
            out.join(&files.request_text),
            request_text(layout, &requests),
        )?;
        std::fs::write(out.join(&files.reply_text), reply_text(dialect, &replies)?)?;
        let (tw, tj) = (hs.to_worker as u64, hs.to_jvm as u64);
        connections.push(Connection {
            id: id.clone(),
            pid: hs.pid,
            request: files.request,
            reply: files.reply,
            request_text: files.request_text,
            reply_text: files.reply_text,
            handshake: Handshake {
                to_worker_bytes: tw,
                to_jvm_bytes: tj,
            },
            tasks: requests.len(),
            request_spans: reqs.iter().map(|r| request_span(&r.spans)).collect(),
            reply_spans: replies
                .iter()
                .take(reqs.len())
                .map(|r| [r.start, r.end_offset])
                .collect(),
            after_close,
            turns: c
                .meta
                .turns
                .iter()
                .filter(|(w, j)| *w >= tw && *j >= tj)
                .map(|(w, j)| [w - tw, j - tj])
                .collect(),
            opened_ms: (c.meta.opened_unix_us - t0) / 1000,
            closed_ms: c.meta.closed_unix_us.map(|t| t.saturating_sub(t0) / 1000),
            blessed: None,
        });
    }
    if connections.is_empty() {
        anyhow::bail!("no connection carried a task: the recording holds nothing to replay");
    }
    let mut merged: Vec<(Vec<String>, String)> = vec![];
    for (id, n) in conn_notes {
        match merged.iter_mut().find(|(_, text)| *text == n) {
            Some((ids, _)) => ids.push(id),
            None => merged.push((vec![id], n)),
        }
    }
    notes.extend(
        merged
            .into_iter()
            .map(|(ids, n)| format!("{}: {n}", ids.join(", "))),
    );
    let index = Index {
        format: FORMAT_VERSION,
        name: rec.name.clone(),
        pyspark: rec.env.pyspark.to_string(),
        python: rec.python_full.clone(),
        dialect,
        mode: mode_of(role, transport),
        reuse: env.contains_key("SPARK_REUSE_WORKER"),
        recorded_at: format::utc_now(),
        command: rec.command.clone(),
        worker_env: normalise::worker_env(&env),
        daemon_kill_requests: kills,
        connections,
        broadcasts,
        notes,
    };
    write_index(out, &index)?;
    Ok(index)
}

pub(crate) struct ConnFiles {
    pub request: String,
    pub reply: String,
    pub request_text: String,
    pub reply_text: String,
}

impl ConnFiles {
    pub(crate) fn new(id: &str) -> ConnFiles {
        ConnFiles {
            request: format!("{id}.request.bin"),
            reply: format!("{id}.reply.bin"),
            request_text: format!("{id}.request.txt"),
            reply_text: format!("{id}.reply.txt"),
        }
    }
}

pub(crate) fn request_span(spans: &[crate::protocol::Span]) -> [u64; 2] {
    let start = spans.iter().map(|s| s.start).min().unwrap_or(0) as u64;
    let end = spans.iter().map(|s| s.end).max().unwrap_or(0) as u64;
    [start, end]
}

/// The normalised requests as text: stable across recordings (no paths, ports or secrets).
pub(crate) fn request_text(layout: UdfLayout, requests: &[TaskRequest]) -> String {
    let normal: Vec<TaskRequest> = requests.iter().map(normalise::normalise_request).collect();
    let bytes = normalise::encode_requests(layout.dialect(), &normal);
    with_header(
        decode::decode_as(layout, StreamDirection::Request, &bytes).to_text(),
        &format!("--pyspark {}", layout.version()),
        "request",
    )
}

/// The normalised replies as text: timings zeroed, tracebacks cut to type and message.
pub(crate) fn reply_text(dialect: Dialect, replies: &[Reply]) -> Result<String, WireError> {
    let normal: Vec<Reply> = replies.iter().map(normalise::normalise_reply).collect();
    let bytes = dialect.encode_replies(&normal, Limits::DEFAULT)?;
    Ok(with_header(
        decode::decode(dialect, StreamDirection::Reply, &bytes).to_text(),
        &format!("--dialect {dialect:?}"),
        "reply",
    ))
}

/// `flag`: how `fakejvm decode` is told the stream's layout (requests: the pyspark line, since
/// family A holds two UDF layouts).
fn with_header(text: String, flag: &str, what: &str) -> String {
    format!(
        "# The {what} stream, normalised (volatile fields as <placeholders>, timings 0); byte offsets are of the\n\
         # normalised stream. The raw bytes: fakejvm decode {flag} --direction {what} <the .bin file>\n{text}"
    )
}

pub(crate) fn write_index(dir: &Path, index: &Index) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(index)?;
    text.push('\n');
    write_atomic(&dir.join(format::INDEX), text.as_bytes())?;
    Ok(())
}

/// Does the dialect write the JVM's requests back byte for byte? None if so; else what differs.
/// The 4.2+ task context is JSON, which the JVM writes in its own key order and pyspark reads by
/// key: a difference in key order alone is named as such.
fn reencode_check(
    layout: UdfLayout,
    bytes: &[u8],
    decoded: &[crate::protocol::DecodedRequest],
) -> Option<String> {
    let dialect = layout.dialect();
    let mut key_order = None;
    for (k, d) in decoded.iter().enumerate() {
        let [start, end] = request_span(&d.spans);
        let recorded = &bytes[start as usize..end as usize];
        let ours = dialect.encode_request(&d.request).bytes;
        if ours == recorded {
            continue;
        }
        let our_json = decode_requests_as(layout, &ours)
            .0
            .first()
            .and_then(|o| o.context_json.clone());
        if let (Some(theirs), Some(ours_json)) = (&d.context_json, &our_json) {
            let same_values = serde_json::from_str::<serde_json::Value>(theirs).ok()
                == serde_json::from_str::<serde_json::Value>(ours_json).ok();
            let spliced = replace_once(recorded, theirs.as_bytes(), ours_json.as_bytes());
            if same_values && spliced.as_deref() == Some(&ours[..]) {
                key_order.get_or_insert_with(|| json_keys(theirs));
                continue;
            }
        }
        let at = first_difference(&ours, recorded).unwrap_or(0);
        let part = d
            .spans
            .iter()
            .find(|s| (s.start..s.end).contains(&(start as usize + at)))
            .map(|s| format!("{:?}", s.kind))
            .unwrap_or_default();
        return Some(format!(
            "dialect {dialect:?} does not re-encode request {k} as the JVM wrote it: first difference at byte {} ({part}); a replay sends the dialect's bytes",
            start as usize + at
        ));
    }
    key_order.map(|keys| {
        format!(
            "the requests re-encode byte for byte except the order of the task context JSON's keys: the JVM writes {keys}; \
             pyspark reads the JSON by key, and a replay sends the dialect's order"
        )
    })
}

fn json_keys(text: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect::<Vec<_>>().join(", "),
        _ => "?".into(),
    }
}

fn replace_once(hay: &[u8], from: &[u8], to: &[u8]) -> Option<Vec<u8>> {
    let at = hay.windows(from.len().max(1)).position(|w| w == from)?;
    Some([&hay[..at], to, &hay[at + from.len()..]].concat())
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len())),
    )
}

fn print_summary(out: &Path, index: &Index) {
    let tasks: usize = index.connections.iter().map(|c| c.tasks).sum();
    println!(
        "recorded {}: pyspark {} (python {}), dialect {:?}, mode {:?}, {} connection(s), {} task(s), {} broadcast file(s)",
        out.display(),
        index.pyspark,
        index.python,
        index.dialect,
        index.mode,
        index.connections.len(),
        tasks,
        index.broadcasts.len()
    );
    for n in &index.notes {
        println!("  note: {n}");
    }
}
