//! The golden corpus (golden/): streams a real Spark JVM exchanged with real pyspark workers,
//! recorded by `fakejvm record` (ci/record-goldens). Every golden must replay against a live
//! worker of its version; every recorded stream must decode, and the decoder's framing must
//! agree with the tap's own account of it; a corrupted reply must fail with a readable
//! frame-level diff; --bless stages the change for review and only --accept moves it in; no
//! pending change may sit in golden/.

mod common;
use common::{env_for, repo_root};
use fakejvm::decode::{self, StreamDirection};
use fakejvm::golden::bless;
use fakejvm::golden::format::{self, Golden};
use fakejvm::golden::normalise::{self, LiveValues};
use fakejvm::golden::replay::{replay_all, replay_golden, GoldenStatus, ReplayOptions};
use fakejvm::golden::spool::{self, Role, TapMeta, Transport};
use fakejvm::protocol::{decode_replies, decode_requests, ReplyItem};
use fakejvm::session::{self, SessionOptions, Transcript, WritePlan};
use fakejvm::verdict::Outcome;
use fakejvm::worker::{
    kill_marked_groups, leftover_processes, spawn_in_group, LaunchOptions, Mode, Workers,
};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn corpus() -> Vec<PathBuf> {
    let root = repo_root().join("golden");
    let dirs = format::collect(std::slice::from_ref(&root)).unwrap_or_else(|e| {
        panic!("no golden corpus at {}: {e}\nrecord it with `ci/record-goldens` (needs Java 17; minutes)", root.display())
    });
    assert!(
        !dirs.is_empty(),
        "no goldens under {}: record them with `ci/record-goldens`",
        root.display()
    );
    dirs
}

fn load(dir: &Path) -> Golden {
    Golden::load(dir).unwrap_or_else(|e| panic!("{e}"))
}

/// The env of every version in the corpus, first: a missing env fails here, saying how to get it.
fn check_envs(dirs: &[PathBuf]) {
    let versions: BTreeSet<String> = dirs.iter().map(|d| load(d).index.pyspark).collect();
    for v in versions {
        env_for(&v);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_golden_replays_against_a_live_worker() {
    let dirs = corpus();
    check_envs(&dirs);
    let started = std::time::Instant::now();
    let reports = replay_all(&dirs, &ReplayOptions::default(), 2, |r| {
        eprintln!("{}", r.text())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reports.len(), dirs.len());
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| r.status != GoldenStatus::Passed)
        .map(|r| r.text())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} goldens failed:\n{}",
        failed.len(),
        reports.len(),
        failed.join("\n")
    );
    // Every task ends in the same typed outcome scenarios and fuzz cases end in.
    for r in &reports {
        assert_eq!(r.outcomes.len(), r.tasks, "{}", r.dir.display());
        assert!(
            r.outcomes.iter().all(|o| *o == Outcome::Passed),
            "{}: {:?}",
            r.dir.display(),
            r.outcomes
        );
    }
    eprintln!(
        "{} goldens replayed in {:.1} s",
        reports.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn every_recorded_stream_decodes_and_agrees_with_the_recorded_framing() {
    for dir in corpus() {
        let g = load(&dir);
        let ix = &g.index;
        let name = dir.display().to_string();
        for c in &ix.connections {
            let at = format!("{name} {}", c.id);

            let requests = g.read(&c.request).unwrap();
            let d = decode::decode_as(ix.layout(), StreamDirection::Request, &requests);
            assert!(d.error.is_none(), "{at}: request stream: {:?}", d.error);
            assert_eq!(d.requests.len(), c.tasks, "{at}: requests");
            for (k, r) in d.requests.iter().enumerate() {
                let start = r.spans.iter().map(|s| s.start).min().unwrap() as u64;
                let end = r.spans.iter().map(|s| s.end).max().unwrap() as u64;
                assert_eq!([start, end], c.request_spans[k], "{at}: request {k} span");
            }
            assert_eq!(
                c.request_spans.last().unwrap()[1],
                requests.len() as u64,
                "{at}: bytes after the last request"
            );
            assert!(!d.to_text().is_empty());

            let replies = g.read(&c.reply).unwrap();
            let d = decode::decode_as(ix.layout(), StreamDirection::Reply, &replies);
            assert!(d.error.is_none(), "{at}: reply stream: {:?}", d.error);
            assert_eq!(
                d.replies.len(),
                c.tasks + c.after_close.is_some() as usize,
                "{at}: replies"
            );
            for (k, r) in d.replies.iter().take(c.tasks).enumerate() {
                assert_eq!(
                    [r.start, r.end_offset],
                    c.reply_spans[k],
                    "{at}: reply {k} span"
                );
            }
            if let Some(span) = c.after_close {
                let r = d.replies.last().unwrap();
                assert_eq!(
                    [r.start, r.end_offset],
                    span,
                    "{at}: the answer to the close"
                );
            }
            assert_eq!(
                d.replies.last().unwrap().end_offset,
                replies.len() as u64,
                "{at}: bytes after the last reply"
            );

            // The tap saw the JVM start writing each request right after the worker's previous
            // reply ended (the JVM does not pipeline tasks on a connection): the decoder's
            // boundaries must be among those moments. A blessed reply file is not the JVM's,
            // so only the request half is checked there.
            for k in 0..c.tasks {
                let request_start = c.request_spans[k][0];
                let previous_reply_end = if k == 0 { 0 } else { c.reply_spans[k - 1][1] };
                let seen = c.turns.iter().any(|[w, j]| {
                    *w == request_start && (c.blessed.is_some() || *j == previous_reply_end)
                });
                assert!(seen, "{at}: the tap never saw request {k} start at byte {request_start} after reply byte {previous_reply_end}; turns {:?}", c.turns);
            }
            for f in [&c.request_text, &c.reply_text] {
                assert!(dir.join(f).is_file(), "{at}: {f} is missing");
            }
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

/// A copy of golden/pyspark-4.0.5/map_parallelize whose recorded reply 0 says 100 more in the
/// last small int of its first data frame than the worker does: one byte of its pickle, so every
/// length and span in the index still holds. Returns the folder, the reply file and the original
/// value.
fn changed_golden(tmp: &Path) -> (PathBuf, PathBuf, u8) {
    let source = corpus()
        .into_iter()
        .find(|d| d.ends_with("pyspark-4.0.5/map_parallelize"))
        .expect("the corpus has golden/pyspark-4.0.5/map_parallelize");
    env_for("4.0.5");
    let dir = tmp.join("map_parallelize");
    copy_dir(&source, &dir);
    let ix = load(&dir).index;
    let reply_file = dir.join(&ix.connections[0].reply);
    let mut bytes = std::fs::read(&reply_file).unwrap();
    let (replies, err) = decode_replies(ix.dialect, &bytes);
    assert!(err.is_none());
    let ReplyItem::Frame(frame) = &replies[0].data[0] else {
        panic!("reply 0 starts with a frame")
    };
    // The frame's payload starts 4 bytes into the reply (after its length); a pickled list of
    // small ints ends "K<n>e." or "K<n>." before STOP: bump the last small int.
    let pos = frame
        .iter()
        .rposition(|b| *b == b'K')
        .expect("a BININT1 opcode in the pickle")
        + 1;
    let original = frame[pos];
    bytes[replies[0].start as usize + 4 + pos] = original.wrapping_add(100);
    std::fs::write(&reply_file, &bytes).unwrap();
    (dir, reply_file, original)
}

fn fakejvm(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fakejvm"))
        .args(args)
        .env_remove("FAKEJVM_PYTHON")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Loadable and consistent: the index loads, every reply file it names decodes into the replies
/// it counts, at the spans it records.
fn assert_consistent(dir: &Path, when: &str) {
    let g = Golden::load(dir).unwrap_or_else(|e| panic!("{when}: {e}"));
    for c in &g.index.connections {
        let bytes = g.read(&c.reply).unwrap_or_else(|e| panic!("{when}: {e}"));
        let (replies, err) = decode_replies(g.index.dialect, &bytes);
        assert!(
            err.is_none(),
            "{when}: {} does not decode: {err:?}",
            c.reply
        );
        assert_eq!(
            replies.len(),
            c.tasks + c.after_close.is_some() as usize,
            "{when}: {}",
            c.reply
        );
        let spans: Vec<[u64; 2]> = replies
            .iter()
            .take(c.tasks)
            .map(|r| [r.start, r.end_offset])
            .collect();
        assert_eq!(spans, c.reply_spans, "{when}: the spans of {}", c.reply);
    }
}

/// The review flow: a changed reply fails with a frame-level diff; --bless stages the live reply
/// beside the golden with a readable diff and leaves the golden as it is (which then fails as
/// pending); --review shows the diff; --accept moves it in; then the golden replays green.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_reply_is_staged_by_bless_reviewed_and_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, reply_file, original) = changed_golden(tmp.path());
    let golden_bytes = std::fs::read(&reply_file).unwrap();

    let report = replay_golden(&dir, &ReplayOptions::default())
        .await
        .unwrap();
    let text = report.text();
    eprintln!("{text}");
    assert_eq!(report.status, GoldenStatus::Failed, "{text}");
    assert_eq!(report.differences.len(), 1, "{text}");
    let d = &report.differences[0];
    assert_eq!(
        (d.conn.as_str(), d.reply, d.at.as_str()),
        ("c0", 0, "data[0]"),
        "{text}"
    );
    assert!(
        d.expected
            .contains(&format!("pickle [{}]", original as u32 + 100)),
        "{text}"
    );
    assert!(d.got.contains(&format!("pickle [{original}]")), "{text}");
    assert!(
        text.contains("c0 reply 0 data[0]:")
            && text.contains("expected: frame")
            && text.contains("got:      frame"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(&reply_file).unwrap(),
        golden_bytes,
        "replay without --bless rewrote the golden"
    );

    let blessed = replay_golden(
        &dir,
        &ReplayOptions {
            bless: true,
            ..ReplayOptions::default()
        },
    )
    .await
    .unwrap();
    eprintln!("{}", blessed.text());
    assert_eq!(blessed.status, GoldenStatus::Blessed, "{}", blessed.text());
    assert_eq!(
        std::fs::read(&reply_file).unwrap(),
        golden_bytes,
        "--bless rewrote the golden"
    );
    assert!(load(&dir).index.connections[0].blessed.is_none());
    let mut staged: Vec<String> = [
        "c0.reply.bin.new",
        "c0.reply.txt.new",
        "index.json.new",
        bless::MANIFEST,
        bless::DIFF_FILE,
    ]
    .map(String::from)
    .to_vec();
    staged.sort();
    assert_eq!(blessed.pending, staged);
    let diff = std::fs::read_to_string(dir.join(bless::DIFF_FILE)).unwrap();
    // Decoded rows, not hex: the changed frame as its pickled value on each side.
    assert!(
        diff.contains(&format!(
            "-  data[0] frame 17 bytes: pickle [{}]",
            original as u32 + 100
        )),
        "{diff}"
    );
    assert!(
        diff.contains(&format!("+  data[0] frame 17 bytes: pickle [{original}]")),
        "{diff}"
    );
    assert!(!diff.contains("hex "), "{diff}");

    // Pending, the golden fails (and says how to go on) until it is accepted or rejected.
    let pending = replay_golden(&dir, &ReplayOptions::default())
        .await
        .unwrap();
    assert_eq!(pending.status, GoldenStatus::Failed, "{}", pending.text());
    assert!(
        pending.differences.len() == 1
            && pending.text().contains("pending from an earlier --bless"),
        "{}",
        pending.text()
    );

    let (code, out, err) = fakejvm(&[
        "replay".as_ref(),
        "--review".as_ref(),
        tmp.path().as_os_str(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("== {}", dir.display()))
            && out.contains(&diff)
            && out.ends_with("1 golden(s) with pending changes\n"),
        "{out}"
    );

    let (code, out, err) = fakejvm(&[
        "replay".as_ref(),
        "--accept".as_ref(),
        "map_parallelize".as_ref(),
        tmp.path().as_os_str(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        format!("ACCEPT {} (c0)\n1 golden(s) accepted\n", dir.display())
    );
    assert_eq!(bless::pending(&dir), Vec::<String>::new());
    assert_ne!(
        std::fs::read(&reply_file).unwrap(),
        golden_bytes,
        "--accept did not move the live reply in"
    );
    assert!(load(&dir).index.connections[0].blessed.is_some());
    assert_consistent(&dir, "after --accept");
    let again = replay_golden(&dir, &ReplayOptions::default())
        .await
        .unwrap();
    assert_eq!(again.status, GoldenStatus::Passed, "{}", again.text());

    // Nothing pending: --accept names nothing, which is bad input.
    let (code, _, err) = fakejvm(&[
        "replay".as_ref(),
        "--accept".as_ref(),
        "map_parallelize".as_ref(),
        tmp.path().as_os_str(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no golden has pending changes") && err.lines().count() == 1,
        "{err}"
    );
}

/// An accept stopped at any step leaves a golden that loads and is consistent, holding either
/// the old replies or the new ones; running it again finishes it. --reject drops a staged change
/// and leaves the golden as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accept_stopped_at_any_step_leaves_every_golden_loadable() {
    let tmp = tempfile::tempdir().unwrap();
    let (staged, reply_file, _) = changed_golden(tmp.path());
    let reply_name = reply_file.file_name().unwrap().to_owned();
    let old = std::fs::read(&reply_file).unwrap();
    let blessed = replay_golden(
        &staged,
        &ReplayOptions {
            bless: true,
            ..ReplayOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(blessed.status, GoldenStatus::Blessed, "{}", blessed.text());
    let new = std::fs::read(staged.join(format!("{}.new", reply_name.to_string_lossy()))).unwrap();

    let mut finished = false;
    for stop_at in 0.. {
        let dir = tmp.path().join(format!("stop{stop_at}"));
        copy_dir(&staged, &dir);
        let mut steps = 0;
        let result = bless::accept_with(&dir, &mut |_| {
            steps += 1;
            if steps > stop_at {
                Err(std::io::Error::other("stopped by the test"))
            } else {
                Ok(())
            }
        });
        let when = format!("accept stopped after {stop_at} step(s)");
        assert_consistent(&dir, &when);
        let g = load(&dir);
        let now = g.read(&g.index.connections[0].reply).unwrap();
        assert!(
            now == old || now == new,
            "{when}: the reply is neither the old nor the new one"
        );
        match result {
            Ok(conns) => {
                assert_eq!(conns, ["c0"], "{when}");
                assert_eq!(now, new, "{when}");
                assert_eq!(bless::pending(&dir), Vec::<String>::new(), "{when}");
                finished = true;
                break;
            }
            Err(e) => {
                assert!(
                    e.to_string().contains("stopped by the test"),
                    "{when}: {e:#}"
                );
                assert!(
                    !bless::pending(&dir).is_empty(),
                    "{when}: nothing says the accept is unfinished"
                );
                bless::accept(&dir).unwrap_or_else(|e| panic!("{when}: finishing it: {e:#}"));
                assert_consistent(&dir, &format!("{when}, then finished"));
                let done = load(&dir);
                assert_eq!(
                    done.index.connections[0].reply,
                    reply_name.to_string_lossy(),
                    "{when}, then finished"
                );
                assert_eq!(
                    done.read(&done.index.connections[0].reply).unwrap(),
                    new,
                    "{when}, then finished"
                );
                assert_eq!(
                    bless::pending(&dir),
                    Vec::<String>::new(),
                    "{when}, then finished"
                );
            }
        }
        assert!(stop_at < 50, "the accept never finished");
    }
    assert!(finished);
    let last = replay_golden(&staged, &ReplayOptions::default())
        .await
        .unwrap();
    assert_eq!(
        last.status,
        GoldenStatus::Failed,
        "still pending: {}",
        last.text()
    );
    let accepted = tmp.path().join("stop0");
    let report = replay_golden(&accepted, &ReplayOptions::default())
        .await
        .unwrap();
    assert_eq!(report.status, GoldenStatus::Passed, "{}", report.text());

    let rejected = tmp.path().join("rejected");
    copy_dir(&staged, &rejected);
    let removed = bless::discard(&rejected).unwrap();
    assert_eq!(removed.len(), 5, "{removed:?}");
    assert_eq!(bless::pending(&rejected), Vec::<String>::new());
    assert_eq!(std::fs::read(rejected.join(&reply_name)).unwrap(), old);
}

/// CI fails on pending goldens: a change --bless staged in golden/ must be accepted (and
/// committed) or rejected.
#[test]
fn no_golden_has_pending_changes() {
    let root = repo_root().join("golden");
    let mut found = vec![];
    for dir in corpus() {
        found.extend(
            bless::pending(&dir)
                .into_iter()
                .map(|f| dir.join(f).display().to_string()),
        );
    }
    assert!(
        found.is_empty(),
        "pending golden changes under {}:\n  {}\nreview them with `fakejvm replay --review golden`, then --accept NAME / --accept-all or --reject NAME / --reject-all",
        root.display(),
        found.join("\n  ")
    );
}

/// With an interpreter given (--python, FAKEJVM_PYTHON), a golden of another pyspark version is
/// N/A with the reason, not a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_interpreter_replays_its_own_version_and_the_rest_is_not_applicable() {
    let env = env_for("4.0.5");
    let dirs: Vec<PathBuf> = [
        "golden/pyspark-4.0.5/map_parallelize",
        "golden/pyspark-4.1.4/map_parallelize",
    ]
    .iter()
    .map(|d| repo_root().join(d))
    .collect();
    let opts = ReplayOptions {
        python: Some(env.python.clone()),
        ..ReplayOptions::default()
    };
    let reports = replay_all(&dirs, &opts, 2, |r| eprintln!("{}", r.text()))
        .await
        .unwrap();
    assert_eq!(
        reports[0].status,
        GoldenStatus::Passed,
        "{}",
        reports[0].text()
    );
    match &reports[1].status {
        GoldenStatus::NotApplicable { why } => assert!(
            why.contains("recorded with pyspark 4.1.4") && why.contains("has pyspark 4.0.5"),
            "{why}"
        ),
        other => panic!("expected N/A, got {other:?}: {}", reports[1].text()),
    }
}

#[test]
fn a_broken_index_is_one_line_of_bad_input_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("index.json"), "{\"format\": 1, \"name\": ").unwrap();
    let e = Golden::load(tmp.path()).unwrap_err().to_string();
    assert!(
        e.contains("index.json") && e.contains("not a golden index"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");

    let source = corpus().into_iter().next().unwrap();
    let dir = tmp.path().join("g");
    copy_dir(&source, &dir);
    let first = load(&dir).index.connections[0].reply.clone();
    std::fs::remove_file(dir.join(&first)).unwrap();
    let e = Golden::load(&dir).unwrap_err().to_string();
    assert!(e.contains(&first) && e.contains("missing"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
}

/// The tap without Spark: the test plays the JVM, with a launcher script that runs
/// `fakejvm tap` as its "Python". Whatever passes must land in the spool byte for byte, in every
/// mode, and nothing the tap started may outlive it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tap_records_every_byte_in_every_mode_and_leaves_nothing_behind() {
    let version = "4.1.4"; // the first with Unix domain sockets
    let env = env_for(version);
    let golden = load(&repo_root().join("golden/pyspark-4.1.4/map_parallelize"));
    let dialect = golden.index.dialect;
    let (recorded, err) = decode_requests(
        dialect,
        &golden.read(&golden.index.connections[0].request).unwrap(),
    );
    assert!(err.is_none());

    for mode in [Mode::Daemon, Mode::Uds, Mode::Direct, Mode::DirectUds] {
        let tmp = tempfile::tempdir().unwrap();
        let spool_dir = tmp.path().join("spool");
        std::fs::create_dir_all(&spool_dir).unwrap();
        let launcher = tmp.path().join("python");
        std::fs::write(
            &launcher,
            format!(
                "#!/bin/sh\nexec '{}' tap --real-python '{}' --spool '{}' --pyspark {version} -- \"$@\"\n",
                env!("CARGO_BIN_EXE_fakejvm"),
                env.python.display(),
                spool_dir.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            &launcher,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let _cleanup = KillTaps(spool_dir.clone());

        let live = |secret: &str| LiveValues {
            spark_files_dir: tmp.path().to_path_buf(),
            broadcasts: Default::default(),
            secret: Some(secret.into()),
        };
        let exchange = if mode.uses_daemon() {
            daemon_through_tap(
                &launcher,
                mode,
                tmp.path(),
                |secret| {
                    dialect
                        .encode_request(&normalise::refill_request(
                            &recorded[0].request,
                            &live(secret),
                        ))
                        .bytes
                },
                dialect,
            )
            .await
        } else {
            // fakejvm's own launcher plays the JVM for direct workers. (Not for the daemon: it
            // checks that a pid is the daemon's child, and behind the tap the daemon is the tap.)
            let mut workers = Workers::start(
                &launcher,
                LaunchOptions {
                    mode,
                    ..LaunchOptions::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
            let secret = workers.secret().to_owned();
            let request = dialect
                .encode_request(&normalise::refill_request(
                    &recorded[0].request,
                    &live(&secret),
                ))
                .bytes;
            let mut c = workers
                .connect()
                .await
                .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
            let received = run(
                &mut c.reader,
                &mut c.writer,
                dialect,
                &request,
                c.handshake_in.len(),
            )
            .await;
            let exchange = Exchange {
                secret,
                request,
                received,
                handshake_in: c.handshake_in.clone(),
                handshake_out: c.handshake_out.clone(),
            };
            drop(c);
            let report = workers.shutdown(std::time::Duration::from_secs(5)).await;
            assert!(
                report.leftovers.is_empty(),
                "{mode:?}: {:?}",
                report.leftovers
            );
            exchange
        };

        // One tap process (a daemon, or one direct worker); its spool holds the connection.
        let taps: Vec<PathBuf> = std::fs::read_dir(&spool_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        assert_eq!(taps.len(), 1, "{mode:?}: {taps:?}");
        let meta_text = std::fs::read_to_string(taps[0].join(spool::META)).unwrap();
        let meta: TapMeta = serde_json::from_str(&meta_text).unwrap();
        let expected = match mode {
            Mode::Daemon => (Role::Daemon, Transport::Tcp),
            Mode::Direct => (Role::Direct, Transport::Tcp),
            Mode::Uds => (Role::Daemon, Transport::Unix),
            Mode::DirectUds => (Role::Direct, Transport::Unix),
        };
        assert_eq!((meta.role, meta.transport), expected, "{mode:?}");
        assert!(meta.errors.is_empty(), "{mode:?}: {:?}", meta.errors);
        assert!(
            meta.exit.is_some(),
            "{mode:?}: the tap did not record how the real process ended"
        );
        assert!(
            !meta_text.contains(&exchange.secret),
            "{mode:?}: the spool holds the auth secret"
        );

        let to_worker = std::fs::read(spool::conn_file(&taps[0], 0, "to_worker.bin")).unwrap();
        let to_jvm = std::fs::read(spool::conn_file(&taps[0], 0, "to_jvm.bin")).unwrap();
        assert_eq!(
            to_worker,
            [
                exchange.handshake_out.as_slice(),
                exchange.request.as_slice()
            ]
            .concat(),
            "{mode:?}: JVM -> worker bytes"
        );
        let head = [
            exchange.handshake_in.as_slice(),
            exchange.received.as_slice(),
        ]
        .concat();
        assert_eq!(
            &to_jvm[..head.len().min(to_jvm.len())],
            head.as_slice(),
            "{mode:?}: worker -> JVM bytes"
        );
        let split = spool::handshake_split(meta.role, meta.transport, &to_worker, &to_jvm).unwrap();
        assert_eq!(
            (split.to_worker, split.to_jvm),
            (exchange.handshake_out.len(), exchange.handshake_in.len()),
            "{mode:?}"
        );

        let real = meta.real_pid.expect("the real pid");
        assert!(
            leftover_processes(&[real]).is_empty(),
            "{mode:?}: the real process group {real} outlived the tap"
        );
    }
}

struct Exchange {
    secret: String,
    request: Vec<u8>,
    received: Vec<u8>,
    handshake_in: Vec<u8>,
    handshake_out: Vec<u8>,
}

async fn run<R, W>(
    r: &mut R,
    w: &mut W,
    dialect: fakejvm::protocol::Dialect,
    request: &[u8],
    base: usize,
) -> Vec<u8>
where
    R: tokio::io::AsyncRead + Unpin + ?Sized,
    W: tokio::io::AsyncWrite + Unpin + ?Sized,
{
    let mut transcript = Transcript::default();
    let result = session::run_task(
        r,
        w,
        dialect,
        request,
        &WritePlan::whole(request.len()),
        base as u64,
        &SessionOptions::default(),
        &mut transcript,
    )
    .await;
    assert!(result.reply.is_ok(), "{:?}", result.reply);
    transcript.received()
}

/// The JVM's side of a daemon, as Spark's PythonWorkerFactory does it: start it, read where it
/// listens, connect, read the pid, authenticate (TCP), run one task, then close the connection
/// and the daemon's stdin.
async fn daemon_through_tap(
    launcher: &Path,
    mode: Mode,
    dir: &Path,
    request: impl Fn(&str) -> Vec<u8>,
    dialect: fakejvm::protocol::Dialect,
) -> Exchange {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let secret = "6a1c0ffee0ddba11".repeat(4);
    let mut cmd = tokio::process::Command::new(launcher);
    cmd.args(["-m", "pyspark.daemon", "pyspark.worker"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PYTHONUNBUFFERED", "YES")
        .env("SPARK_REUSE_WORKER", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    match mode {
        Mode::Uds => cmd
            .env("PYTHON_UNIX_DOMAIN_ENABLED", "True")
            .env("PYTHON_WORKER_FACTORY_SOCK_DIR", dir),
        _ => cmd.env("PYTHON_WORKER_FACTORY_SECRET", &secret),
    };
    // In a group of ours and with our mark, which the tap passes on to its real daemon (KillTaps).
    let (mut tap, mut group) = spawn_in_group(&mut cmd).unwrap();
    let mut stdout = tap.stdout.take().unwrap();
    let limit = std::time::Duration::from_secs(60);
    let first = tokio::time::timeout(limit, stdout.read_i32())
        .await
        .expect("the tap announces in time")
        .unwrap();
    let (mut r, mut w): (
        Box<dyn tokio::io::AsyncRead + Unpin>,
        Box<dyn tokio::io::AsyncWrite + Unpin>,
    ) = if mode == Mode::Uds {
        let mut path = vec![0u8; first as usize];
        stdout.read_exact(&mut path).await.unwrap();
        let s = tokio::net::UnixStream::connect(String::from_utf8(path).unwrap())
            .await
            .unwrap();
        let (r, w) = s.into_split();
        (Box::new(r), Box::new(w))
    } else {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", first as u16))
            .await
            .unwrap();
        s.set_nodelay(true).unwrap();
        let (r, w) = s.into_split();
        (Box::new(r), Box::new(w))
    };
    let mut handshake_in = vec![0u8; 4];
    tokio::time::timeout(limit, r.read_exact(&mut handshake_in))
        .await
        .unwrap()
        .unwrap();
    let mut handshake_out = vec![];
    if mode != Mode::Uds {
        handshake_out = [
            (secret.len() as i32).to_be_bytes().as_slice(),
            secret.as_bytes(),
        ]
        .concat();
        w.write_all(&handshake_out).await.unwrap();
        let mut ok = vec![0u8; 6];
        tokio::time::timeout(limit, r.read_exact(&mut ok))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&ok[4..], b"ok");
        handshake_in.extend(ok);
    }
    let request = request(&secret);
    let received = run(&mut r, &mut w, dialect, &request, handshake_in.len()).await;
    drop((r, w));
    // Closing the daemon's stdin is how the JVM stops it; the tap must end, and end everything.
    drop(tap.stdin.take());
    tokio::time::timeout(std::time::Duration::from_secs(20), tap.wait())
        .await
        .expect("the tap ends after its stdin closes")
        .unwrap();
    group.mark_reaped();
    Exchange {
        secret,
        request,
        received,
        handshake_in,
        handshake_out,
    }
}

/// On any way out of the test: SIGKILL each tap's real process group that is still ours (its
/// members carry the mark our tap inherited from us).
struct KillTaps(PathBuf);

impl Drop for KillTaps {
    fn drop(&mut self) {
        let reals: Vec<i32> = std::fs::read_dir(&self.0)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join(spool::META)).ok())
            .filter_map(|b| serde_json::from_slice::<TapMeta>(&b).ok()?.real_pid)
            .collect();
        kill_marked_groups(&reals);
    }
}

/// The UDF goldens (harness/python/spark_jobs/udf_jobs.py) and the eval type each one's JVM sends:
/// Spark SQL jobs, recorded for every pinned version where the eval type exists.
const UDF_GOLDENS: [(&str, fakejvm::protocol::EvalType); 10] = {
    use fakejvm::protocol::EvalType as E;
    [
        ("udf_sql_squared", E::SqlBatchedUdf),
        ("udf_pandas_tokenizer", E::SqlScalarPandasUdf),
        ("udf_grouped_agg_mean", E::SqlGroupedAggPandasUdf),
        ("udf_apply_in_pandas", E::SqlGroupedMapPandasUdf),
        ("udf_cogroup_apply_in_pandas", E::SqlCogroupedMapPandasUdf),
        ("udf_window_mean", E::SqlWindowAggPandasUdf),
        ("udf_map_in_pandas", E::SqlMapPandasIterUdf),
        ("udf_map_in_arrow", E::SqlMapArrowIterUdf),
        ("udf_arrow_udf", E::SqlScalarArrowUdf),
        ("udf_udtf", E::SqlTableUdf),
    ]
};

/// The eval type the JVM of `layout` sent for `job`: from 4.2 on a UDTF runs as Arrow (301) by
/// default (`spark.sql.execution.pythonUDTF.arrow.enabled`); `has` is asked of the job's own kind.
fn udf_eval_sent(
    job: &str,
    eval: fakejvm::protocol::EvalType,
    layout: fakejvm::protocol::UdfLayout,
) -> fakejvm::protocol::EvalType {
    use fakejvm::protocol::{EvalType as E, UdfLayout as L};
    match job {
        "udf_udtf" if layout >= L::Pyspark42 => E::SqlArrowTableUdf,
        _ => eval,
    }
}

/// Every UDF golden is there for every pinned version whose pyspark has its eval type (and
/// absent where it has not); its JVM sent that eval type, and each UDF task's command and data
/// section decode to the end with that line's layout (3.5's and 4.0's differ in one family), the
/// Arrow streams of both directions included.
#[test]
fn udf_goldens_exist_for_every_version_with_the_eval_type_and_decode_whole() {
    use fakejvm::protocol::{decode_replies, decode_requests_as, DataItem, UdfLayout};
    let root = repo_root().join("golden");
    for v in fakejvm::pyenv::PINNED {
        let version: fakejvm::pyenv::PysparkVersion = v.parse().unwrap();
        let layout = UdfLayout::for_version(version.major, version.minor).unwrap();
        for (job, eval) in UDF_GOLDENS {
            let dir = root.join(format!("pyspark-{v}")).join(job);
            let at = dir.display().to_string();
            if !layout.has(eval) {
                assert!(!dir.exists(), "{at}: pyspark {v} has no {eval}");
                continue;
            }
            let g = load(&dir);
            assert_eq!(g.index.layout(), layout, "{at}");
            let mut seen = 0;
            for c in &g.index.connections {
                let (reqs, err) = decode_requests_as(layout, &g.read(&c.request).unwrap());
                assert!(err.is_none(), "{at} {}: {err:?}", c.id);
                let sent = udf_eval_sent(job, eval, layout);
                for r in reqs.iter().filter(|r| r.request.udf.is_some()) {
                    assert_eq!(r.request.eval_type, sent, "{at} {}", c.id);
                    seen += 1;
                    if !sent.is_pickled() {
                        let tables = fakejvm::arrow::decode_data_section(&r.request.data)
                            .unwrap_or_else(|e| panic!("{at} {}: {e}", c.id));
                        assert!(!tables.is_empty(), "{at} {}: no Arrow input", c.id);
                    } else {
                        assert!(
                            r.request.data.iter().all(|d| matches!(d, DataItem::Frame(f)
                                if fakejvm::pickle::loads(f).is_ok())),
                            "{at} {}: pickled rows that do not load",
                            c.id
                        );
                    }
                }
                let (replies, err) = decode_replies(g.index.dialect, &g.read(&c.reply).unwrap());
                assert!(err.is_none(), "{at} {}: {err:?}", c.id);
                for item in replies.iter().flat_map(|r| &r.data) {
                    if let ReplyItem::ArrowStream(b) = item {
                        fakejvm::arrow::decode_stream(b)
                            .unwrap_or_else(|e| panic!("{at} {}: reply stream: {e}", c.id));
                    }
                }
            }
            assert!(seen > 0, "{at}: no {eval} task recorded");
        }
    }
}

/// A changed Arrow reply: replay fails naming the stream's rows on both sides, and --bless stages
/// a diff of rows (one line a row), not of bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_arrow_reply_fails_with_its_rows_and_bless_diffs_rows() {
    let source = repo_root().join("golden/pyspark-4.3.0/udf_grouped_agg_mean");
    env_for("4.3.0");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("udf_grouped_agg_mean");
    copy_dir(&source, &dir);
    let ix = load(&dir).index;
    // The UDF task's reply holds the group means 1.5 and 6.0; 6.0 becomes 7.0 in place (one
    // byte of the little-endian double), so every length and span still holds.
    let conn = ix
        .connections
        .iter()
        .find(|c| {
            let (r, _) = decode_replies(ix.dialect, &load(&dir).read(&c.reply).unwrap());
            r.iter().any(|r| {
                r.data
                    .iter()
                    .any(|i| matches!(i, ReplyItem::ArrowStream(_)))
            })
        })
        .expect("an Arrow reply");
    let reply_file = dir.join(&conn.reply);
    let mut bytes = std::fs::read(&reply_file).unwrap();
    let six = 6.0f64.to_le_bytes();
    let at = bytes
        .windows(8)
        .rposition(|w| w == six)
        .expect("6.0 in the reply");
    bytes[at + 6] = 0x1c; // 0x4018... (6.0) -> 0x401c... (7.0)
    std::fs::write(&reply_file, &bytes).unwrap();

    let report = replay_golden(&dir, &ReplayOptions::default())
        .await
        .unwrap();
    let text = report.text();
    assert_eq!(report.status, GoldenStatus::Failed, "{text}");
    assert_eq!(report.differences.len(), 1, "{text}");
    let d = &report.differences[0];
    assert!(d.expected.contains("[[1.5],[7.0]]"), "{text}");
    assert!(d.got.contains("[[1.5],[6.0]]"), "{text}");

    let blessed = replay_golden(
        &dir,
        &ReplayOptions {
            bless: true,
            ..ReplayOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(blessed.status, GoldenStatus::Blessed, "{}", blessed.text());
    let diff = std::fs::read_to_string(dir.join(bless::DIFF_FILE)).unwrap();
    assert!(diff.contains("-    batch 1 row 0: [7.0]"), "{diff}");
    assert!(diff.contains("+    batch 1 row 0: [6.0]"), "{diff}");
    assert!(!diff.contains("-    batch 0 row 0"), "{diff}");
    assert!(!diff.contains("hex "), "{diff}");
}
