//! Where mutation starts: well-formed requests of the campaign's dialect.
//!
//! Three sources, all ending as a typed [`TaskRequest`] (when it can be had) plus its frames:
//! - built-in identity seeds (`func = lambda split, it: it` over each input framing): their
//!   output must equal their input, which makes them round-trip seeds for the silent-wrong-output
//!   oracle;
//! - scenario files (`--seeds DIR`): each task as `fakejvm run` would send it;
//! - golden folders (`--seeds DIR` holding `index.json` folders): the requests a real Spark JVM
//!   sent, cut into frames by the request decoder. Only goldens of the campaign's dialect apply.
//!
//! Seeds must be self-contained (a reproducer replays anywhere), so scenario tasks that send
//! broadcast files, spark files or includes are left out.

use super::case::Case;
use crate::error::{BadInput, HarnessError};
use crate::pickle::{self, FrameKind};
use crate::protocol::{decode_requests, DataItem, Dialect, TaskRequest};
use crate::pyenv::{self, CommandSpec, PythonEnv, SerializerSpec};
use crate::scenario::{self, Input, Scenario};
use serde_json::json;
use std::path::{Path, PathBuf};

/// How the output of a round-trip seed relates to its input: the function is the identity, so
/// the values the worker writes (per `output`) equal the values of the data frames sent (per
/// `input`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundTrip {
    pub input: FrameKind,
    pub output: FrameKind,
}

#[derive(Clone, Debug)]
pub struct Seed {
    pub name: String,
    /// The typed request when one is known (all built-in and scenario seeds, goldens that decode):
    /// field mutations change it and re-encode the header.
    pub request: Option<TaskRequest>,
    pub case: Case,
    pub round_trip: Option<RoundTrip>,
}

/// What went into the seed list, for the campaign's first lines.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SeedReport {
    pub builtin: usize,
    pub scenario_tasks: usize,
    pub golden_requests: usize,
    /// Why each left-out source was left out.
    pub skipped: Vec<String>,
    /// Goldens recorded in another request family (left out by design, so listed apart).
    pub other_dialect: Vec<String>,
}

/// Why a golden folder gives no seeds.
enum GoldenSkip {
    OtherDialect(Dialect),
    Unreadable(String),
}

/// A built-in seed: an identity function over one framing of the input.
struct Builtin {
    name: &'static str,
    deserializer: SerializerSpec,
    serializer: SerializerSpec,
    data: Vec<DataItem>,
}

fn builtins() -> Vec<Builtin> {
    let values: Vec<pickle::Value> = [
        json!(1),
        json!(-2),
        json!(1u64 << 40),
        json!("text"),
        json!("é😀"),
        json!(null),
        json!([1, [2, "x"]]),
        json!(2.5),
        json!(true),
    ]
    .iter()
    .map(|v| pickle::value_from_json(v).expect("built-in seed values are plain JSON"))
    .collect();
    let frames = |f: Vec<Vec<u8>>| f.into_iter().map(DataItem::Frame).collect::<Vec<_>>();
    let lines = ["plain", "naïve", "", "😀 emoji"];
    let mut utf8: Vec<DataItem> = lines
        .iter()
        .map(|l| DataItem::Frame(l.as_bytes().to_vec()))
        .collect();
    utf8.insert(2, DataItem::Null);
    vec![
        Builtin {
            name: "identity_batched",
            deserializer: SerializerSpec::Batched { size: 3 },
            serializer: SerializerSpec::AutoBatched,
            data: frames(pickle::batched_frames(&values, 3)),
        },
        Builtin {
            name: "identity_pickle",
            deserializer: SerializerSpec::Pickle,
            serializer: SerializerSpec::Pickle,
            data: frames(pickle::unbatched_frames(&values[..4])),
        },
        Builtin {
            name: "identity_utf8",
            deserializer: SerializerSpec::Utf8,
            serializer: SerializerSpec::AutoBatched,
            data: utf8,
        },
        Builtin {
            name: "identity_noop",
            deserializer: SerializerSpec::NoOp,
            serializer: SerializerSpec::NoOp,
            data: vec![
                DataItem::Frame(b"\x00\x01raw".to_vec()),
                DataItem::Frame(vec![]),
                DataItem::Frame(vec![0xff; 9]),
            ],
        },
    ]
}

/// The frame kind a (de)serializer spec reads or writes, when it is a simple one.
fn frame_kind(spec: &SerializerSpec) -> Option<FrameKind> {
    match spec {
        SerializerSpec::Batched { .. } | SerializerSpec::AutoBatched => Some(FrameKind::Batched),
        SerializerSpec::Pickle => Some(FrameKind::Unbatched),
        SerializerSpec::Utf8 => Some(FrameKind::Utf8),
        SerializerSpec::NoOp => Some(FrameKind::Raw),
        SerializerSpec::Pair { .. } | SerializerSpec::Cartesian { .. } => None,
    }
}

/// True for `func = lambda a, b: b` (any names, any spacing): the identity over the iterator.
fn is_identity(function: &str) -> bool {
    let s: String = function.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(rest) = s.strip_prefix("func=lambda") else {
        return false;
    };
    let Some((args, body)) = rest.split_once(':') else {
        return false;
    };
    matches!(args.split_once(','), Some((_, it)) if it == body && !it.is_empty())
}

/// Every seed for a campaign in `dialect` against `env`: the built-ins, then what `dirs` hold.
pub fn load(
    env: &PythonEnv,
    dialect: Dialect,
    dirs: &[PathBuf],
    with_builtins: bool,
) -> anyhow::Result<(Vec<Seed>, SeedReport)> {
    let mut report = SeedReport::default();
    // Typed seeds first: (name, request, the command spec when the command is still to be
    // built, round trip).
    let mut typed: Vec<(String, TaskRequest, Option<CommandSpec>, Option<RoundTrip>)> = vec![];
    if with_builtins {
        for b in builtins() {
            let rt = match (frame_kind(&b.deserializer), frame_kind(&b.serializer)) {
                (Some(input), Some(output)) => Some(RoundTrip { input, output }),
                _ => None,
            };
            let req = TaskRequest::non_udf(&env.python_version, vec![], b.data);
            let spec = CommandSpec {
                function: "func = lambda split, it: it".into(),
                deserializer: b.deserializer,
                serializer: b.serializer,
            };
            typed.push((b.name.to_string(), req, Some(spec), rt));
            report.builtin += 1;
        }
    }
    let mut goldens = vec![];
    let scratch = tempfile::Builder::new()
        .prefix("fakejvm-fuzz-seeds-")
        .tempdir()
        .map_err(|e| {
            HarnessError::new(format!("cannot make a temporary directory for seeds: {e}"))
        })?;
    for dir in dirs {
        if !dir.exists() {
            return Err(BadInput::new(dir, "--seeds: no such file or directory").into());
        }
        let mut scenario_files = vec![];
        walk(dir, &mut scenario_files, &mut goldens)
            .map_err(|e| BadInput::new(dir, format!("cannot list: {e}")))?;
        for file in scenario_files {
            let sc = Scenario::load(&file).map_err(BadInput::from)?;
            if let Some(req) = sc
                .requires
                .as_ref()
                .filter(|r| !r.matches(env.pyspark, &env.python_version))
            {
                report.skipped.push(format!(
                    "{}: needs {}, the campaign runs pyspark {} on python {}",
                    file.display(),
                    req.describe(),
                    env.pyspark,
                    env.python_version
                ));
                continue;
            }
            sc.check_for(env.pyspark, &env.python_version)
                .map_err(|problem| BadInput::new(&file, problem))?;
            // Commands and UDF function pickles, built by the target pyspark (cached).
            let built = scenario::build_tasks(env, &sc)
                .map_err(|e| crate::error::env_failure(Some(&file), e))?;
            for ((i, task), built) in sc.tasks.iter().enumerate().zip(built) {
                let name = format!("{}#{i}", file.display());
                if !task.broadcasts.is_empty()
                    || !task.files.is_empty()
                    || !task.includes.is_empty()
                {
                    report.skipped.push(format!("{name}: sends broadcast or spark files, which a reproducer could not carry"));
                    continue;
                }
                if task.request.is_some() {
                    report.skipped.push(format!(
                        "{name}: a raw request to a worker module, not a pyspark.worker task"
                    ));
                    continue;
                }
                if matches!(task.input, Input::OutputOf { .. }) {
                    report
                        .skipped
                        .push(format!("{name}: its input is an earlier task's output"));
                    continue;
                }
                let spec = scenario::command_spec(task);
                let req = scenario::build_request(
                    task,
                    env,
                    built,
                    &scratch.path().join(format!("s{}", typed.len())),
                    &[],
                )
                .map_err(|e| HarnessError::new(format!("{}: task {i}: {e:#}", file.display())))?;
                let rt = match (
                    is_identity(&task.function),
                    frame_kind(&spec.deserializer),
                    frame_kind(&spec.serializer),
                ) {
                    (true, Some(input), Some(output)) => Some(RoundTrip { input, output }),
                    _ => None,
                };
                typed.push((name, req, None, rt));
                report.scenario_tasks += 1;
            }
        }
    }

    let specs: Vec<CommandSpec> = typed.iter().filter_map(|t| t.2.clone()).collect();
    let mut commands = pyenv::build_commands(env, &specs)
        .map_err(|e| crate::error::env_failure(None, e).context("building seed commands"))?
        .into_iter();
    let mut seeds = vec![];
    for (name, mut req, spec, round_trip) in typed {
        if spec.is_some() {
            req.command = commands.next().unwrap_or_default();
        }
        // The scratch dir goes away; the worker only puts the files dir on sys.path, so a path that
        // no longer exists behaves like an empty one. A fixed text keeps reproducers stable.
        req.spark_files_dir = "/nonexistent/fakejvm-fuzz/files".into();
        let case = Case::from_encoded(Some(seeds.len()), &dialect.encode_request(&req));
        seeds.push(Seed {
            name,
            request: Some(req),
            case,
            round_trip,
        });
    }
    for g in goldens {
        match golden_seeds(&g, dialect, seeds.len()) {
            Ok(found) => {
                report.golden_requests += found.len();
                seeds.extend(found);
            }
            Err(GoldenSkip::OtherDialect(d)) => report.other_dialect.push(format!(
                "{}: recorded in dialect {d:?}, the campaign speaks {dialect:?}",
                g.display()
            )),
            Err(GoldenSkip::Unreadable(why)) => {
                report.skipped.push(format!("{}: {why}", g.display()))
            }
        }
    }
    if seeds.is_empty() {
        let where_ = dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(BadInput::msg(format!(
            "{where_}: no usable seeds for dialect {dialect:?} (and built-in seeds are off)"
        ))
        .into());
    }
    Ok((seeds, report))
}

/// Scenario files and golden folders under `dir` (a golden folder is not searched further).
fn walk(
    dir: &Path,
    scenarios: &mut Vec<PathBuf>,
    goldens: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    if dir.is_file() {
        scenarios.push(dir.to_path_buf());
        return Ok(());
    }
    if dir.join(crate::golden::format::INDEX).is_file() {
        goldens.push(dir.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, scenarios, goldens)?;
        } else if p.extension().is_some_and(|x| x == "json") {
            scenarios.push(p);
        }
    }
    Ok(())
}

/// Each recorded request of a golden, cut into frames by the decoder.
fn golden_seeds(dir: &Path, dialect: Dialect, first_index: usize) -> Result<Vec<Seed>, GoldenSkip> {
    let g = crate::golden::Golden::load(dir).map_err(|e| GoldenSkip::Unreadable(e.to_string()))?;
    if g.index.dialect != dialect {
        return Err(GoldenSkip::OtherDialect(g.index.dialect));
    }
    let mut out = vec![];
    for c in &g.index.connections {
        let bytes = g
            .read(&c.request)
            .map_err(|e| GoldenSkip::Unreadable(e.to_string()))?;
        for (t, [start, end]) in c.request_spans.iter().enumerate() {
            let Some(window) = bytes.get(*start as usize..*end as usize) else {
                return Err(GoldenSkip::Unreadable(format!(
                    "{} task {t}: span {start}..{end} is past the end of {}",
                    c.id, c.request
                )));
            };
            let (decoded, err) = decode_requests(dialect, window);
            let name = format!("{}:{}#{t}", dir.display(), c.id);
            match (decoded.into_iter().next(), err) {
                (Some(d), None)
                    if d.request
                        .broadcasts
                        .ops
                        .iter()
                        .any(|op| matches!(op, crate::protocol::BroadcastOp::Add { .. })) =>
                {
                    // The broadcast files were on the recording machine: a reproducer could not
                    // carry them (the function would fail with FileNotFoundError here).
                    continue;
                }
                (Some(d), None) => {
                    let case = Case::from_spans(Some(first_index + out.len()), window, &d.spans);
                    out.push(Seed {
                        name,
                        request: Some(d.request),
                        case,
                        round_trip: None,
                    });
                }
                // A request the decoder does not model (e.g. a SQL eval type) is still a seed,
                // as one opaque frame.
                _ => out.push(Seed {
                    name,
                    request: None,
                    case: Case::from_spans(Some(first_index + out.len()), window, &[]),
                    round_trip: None,
                }),
            }
        }
    }
    Ok(out)
}

/// The deadline for a campaign over `seeds`: `arrow` (when the user chose none) if any seed is an
/// Arrow UDF request, else `deadline`.
/// Some seed is an Arrow UDF request (its worker imports pandas and pyarrow).
pub fn has_arrow(seeds: &[Seed]) -> bool {
    seeds.iter().any(|s| {
        s.request
            .as_ref()
            .is_some_and(|r| r.udf.is_some() && !r.eval_type.is_pickled())
    })
}

pub fn deadline_for(
    seeds: &[Seed],
    deadline: std::time::Duration,
    arrow: Option<std::time::Duration>,
) -> std::time::Duration {
    let has_arrow = has_arrow(seeds);
    match arrow {
        Some(a) if has_arrow => a.max(deadline),
        _ => deadline,
    }
}

/// Run every seed once, unmutated, and keep those that end within half the deadline without a
/// hang or a crash: a seed that is slow or broken by itself (a scenario that exhausts memory on
/// purpose, say) would turn every case drawn from it into a "finding" about the seed. Seeds that
/// fail with an exception stay (raising on purpose is a fine start). `jobs` seeds run at once.
/// Returns the kept seeds, renumbered, and why each other one went (a seed that crashes the
/// worker natively among them: see [`calibrate_all`] for the campaign, which reports those).
pub async fn calibrate(
    seeds: Vec<Seed>,
    exec: &super::exec::Executor,
    jobs: usize,
) -> (Vec<Seed>, Vec<String>) {
    let c = calibrate_all(seeds, exec, jobs).await;
    let mut dropped = c.dropped;
    dropped.extend(
        c.crashed
            .iter()
            .map(|(s, obs)| format!("{}: {}", s.name, native_crash_words(obs))),
    );
    (c.kept, dropped)
}

/// What calibration made of the seeds.
pub struct Calibration {
    /// Renumbered from 0.
    pub kept: Vec<Seed>,
    /// Why each left-out seed went (not the crashed ones).
    pub dropped: Vec<String>,
    /// Seeds that unmutated kill the worker by a fatal signal, with that run: findings in their
    /// own right (a crash in native code needs no mutation to be a bug), never mutated.
    pub crashed: Vec<(Seed, super::exec::Observation)>,
}

/// "unmutated it kills the worker (SIGSEGV)".
pub fn native_crash_words(obs: &super::exec::Observation) -> String {
    let sig = super::signature::Signature::of(&obs.outcome, obs.traceback.as_deref(), 1);
    format!(
        "unmutated it kills the worker ({})",
        sig.exc_type.as_deref().unwrap_or("a fatal signal")
    )
}

/// [`calibrate`], with the seeds that crash the worker natively apart.
pub async fn calibrate_all(
    seeds: Vec<Seed>,
    exec: &super::exec::Executor,
    jobs: usize,
) -> Calibration {
    use crate::verdict::Outcome;
    let limit = exec.deadline() / 2;
    let mut verdicts: Vec<(Option<String>, Option<super::exec::Observation>)> =
        Vec::with_capacity(seeds.len());
    for chunk in seeds.chunks(jobs.max(1)) {
        let runs = chunk
            .iter()
            .map(|s| exec.exec_fresh(std::sync::Arc::new(s.case.to_bytes())));
        for obs in join_all(runs.collect()).await {
            let sig = super::signature::Signature::of(&obs.outcome, obs.traceback.as_deref(), 1);
            if super::native_stack::is_native_crash(&sig) {
                verdicts.push((None, Some(obs)));
                continue;
            }
            verdicts.push((
                match &obs.outcome {
                    Outcome::Hang { .. } => Some("it hangs unmutated".to_string()),
                    Outcome::WorkerCrashed { .. }
                    | Outcome::DaemonDied { .. }
                    | Outcome::Harness { .. }
                    | Outcome::ProtocolViolation { .. } => {
                        Some(format!("unmutated it ends in {:?}", obs.outcome.kind()))
                    }
                    _ if obs.elapsed > limit => Some(format!(
                        "it takes {} ms unmutated (over half the {} ms deadline)",
                        obs.elapsed.as_millis(),
                        exec.deadline().as_millis()
                    )),
                    _ => None,
                },
                None,
            ));
        }
    }
    let mut kept = vec![];
    let mut dropped = vec![];
    let mut crashed = vec![];
    for (mut s, (why, crash)) in seeds.into_iter().zip(verdicts) {
        match (why, crash) {
            (_, Some(obs)) => crashed.push((s, obs)),
            (Some(w), None) => dropped.push(format!("{}: {w}", s.name)),
            (None, None) => {
                s.case.seed = Some(kept.len());
                kept.push(s);
            }
        }
    }
    Calibration {
        kept,
        dropped,
        crashed,
    }
}

/// Await futures side by side, results in order (a few lines instead of a dependency).
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futures.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|v| v.expect("every future finished"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_functions_are_recognised() {
        assert!(is_identity("func = lambda split, it: it"));
        assert!(is_identity("func = lambda s,x : x\n"));
        assert!(!is_identity("func = lambda split, it: (x * 2 for x in it)"));
        assert!(!is_identity("func = lambda split, it: split"));
        assert!(!is_identity("def func(s, it):\n    return it"));
    }

    #[tokio::test]
    async fn join_all_keeps_the_order() {
        let slow = async {
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            1
        };
        let fast = async { 2 };
        let a: std::pin::Pin<Box<dyn std::future::Future<Output = i32>>> = Box::pin(slow);
        let b: std::pin::Pin<Box<dyn std::future::Future<Output = i32>>> = Box::pin(fast);
        assert_eq!(join_all(vec![a, b]).await, vec![1, 2]);
    }

    #[test]
    fn builtin_seeds_have_data() {
        for b in builtins() {
            assert!(!b.data.is_empty(), "{}", b.name);
            assert!(frame_kind(&b.deserializer).is_some() && frame_kind(&b.serializer).is_some());
        }
    }
}
