//! One task's socket and process faults, compiled into the steps the session's writer follows.
//!
//! Every position is resolved against the spans of the encoded request (never a hand-picked byte
//! offset), so the same scenario places its faults at the same protocol point in every dialect.
//! Between positions the request is written as usual (or in `split_writes` pieces); at a position
//! the writer pauses, shuts down a direction, or hands an [`Action`] to the runner and waits for it.

use super::spec::{span_name, Fault, Position, Target};
use crate::protocol::{EncodedRequest, Span, SpanKind};
use crate::session::{Direction, WritePlan, WriteStep};
use serde::Serialize;
use std::time::Duration;

/// Where a fault was placed: the span, how far into it, and the byte of the request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Placement {
    pub position: String,
    pub span: Target,
    pub offset_in_span: usize,
    /// Offset in this task's request bytes.
    pub byte: usize,
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (span {} +{}, request byte {})",
            self.position, self.span, self.offset_in_span, self.byte
        )
    }
}

/// What the runner does when the writer reaches an action's position.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    KillWorker,
    StopWorker,
    SignalDaemon(i32),
    CloseDaemonStdin,
    OpenConnection,
    /// End the task and close the connection (FIN).
    Close,
    /// Set SO_LINGER 0, end the task and close: a reset.
    Reset,
    /// shutdown(SHUT_RD) on our end; writing goes on.
    ShutRead,
}

impl Action {
    /// Actions after which nothing more is written.
    fn ends_writing(self) -> bool {
        matches!(self, Action::Close | Action::Reset)
    }
}

#[derive(Clone, Debug)]
pub struct PlannedAction {
    /// Index of the fault in the scenario's `faults` list.
    pub fault: usize,
    pub action: Action,
    pub placement: Placement,
}

/// A task's write plan with its faults in it.
#[derive(Clone, Debug)]
pub struct TaskPlan {
    pub write: WritePlan,
    /// `WriteStep::Action(i)` refers to `actions[i]`.
    pub actions: Vec<PlannedAction>,
    /// (fault index, where it sits) for every fault of this task, in list order.
    pub placements: Vec<(usize, Placement)>,
}

/// What happens at one byte position, in the order the faults are listed.
#[derive(Clone, Debug)]
enum Event {
    Pause(Duration),
    ShutdownWrite,
    Action(usize),
}

/// Compiles the faults of task `task` (indices into `faults`) for this request. Errors name the
/// fault and what is wrong with its position.
pub fn compile(faults: &[Fault], task: usize, req: &EncodedRequest) -> Result<TaskPlan, String> {
    let len = req.bytes.len();
    let mut events: Vec<(usize, Event)> = vec![];
    let mut splits: Vec<(usize, usize, usize)> = vec![];
    let mut actions = vec![];
    let mut placements = vec![];
    // The first position after which nothing is written, and the fault that put it there.
    let mut end_of_writing: Option<(usize, usize)> = None;

    for (fi, fault) in faults.iter().enumerate() {
        if fault.task() != Some(task) {
            continue;
        }
        let at = |p: &Position| {
            resolve(p, req).map_err(|e| format!("fault #{fi} ({}): {e}", fault.describe()))
        };
        if let Fault::SplitWrites {
            from, to, chunk, ..
        } = fault
        {
            if *chunk == 0 {
                return Err(format!(
                    "fault #{fi} ({}): `chunk` must be at least 1 byte",
                    fault.describe()
                ));
            }
            let start = match from {
                Some(p) => at(p)?,
                None => Placement {
                    position: "request start".into(),
                    span: Target::Span(first_span(req)),
                    offset_in_span: 0,
                    byte: 0,
                },
            };
            let end = match to {
                Some(p) => at(p)?.byte,
                None => len,
            };
            if end <= start.byte {
                return Err(format!(
                    "fault #{fi} ({}): `to` (byte {end}) is not after `from` (byte {})",
                    fault.describe(),
                    start.byte
                ));
            }
            splits.push((start.byte, end, *chunk));
            placements.push((fi, start));
            continue;
        }
        let Some(pos) = fault.at() else { continue };
        let place = at(pos)?;
        let mut push_action = |action: Action, place: &Placement| {
            actions.push(PlannedAction {
                fault: fi,
                action,
                placement: place.clone(),
            });
            Event::Action(actions.len() - 1)
        };
        let (event, ends) = match fault {
            Fault::Delay { ms, .. } => (Event::Pause(Duration::from_millis(*ms)), false),
            Fault::Truncate { .. } => (push_action(Action::Close, &place), true),
            Fault::Reset { .. } => (push_action(Action::Reset, &place), true),
            Fault::HalfClose {
                direction: Direction::ToWorker,
                ..
            } => (Event::ShutdownWrite, true),
            Fault::HalfClose {
                direction: Direction::FromWorker,
                ..
            } => (push_action(Action::ShutRead, &place), false),
            Fault::KillWorker { .. } => (push_action(Action::KillWorker, &place), false),
            Fault::StopWorker { .. } => (push_action(Action::StopWorker, &place), false),
            Fault::SignalDaemon { signal, .. } => {
                (push_action(Action::SignalDaemon(signal.0), &place), false)
            }
            Fault::CloseDaemonStdin { .. } => {
                (push_action(Action::CloseDaemonStdin, &place), false)
            }
            Fault::OpenConnection { .. } => (push_action(Action::OpenConnection, &place), false),
            Fault::ForkFail { .. }
            | Fault::RlimitAs { .. }
            | Fault::ExecutorMemory { .. }
            | Fault::SyscallFail { .. }
            | Fault::OpenDescriptors { .. }
            | Fault::RlimitNofile { .. }
            | Fault::StopChild { .. }
            | Fault::SplitWrites { .. } => {
                unreachable!("launch faults have no task; split_writes is handled above")
            }
        };
        if let Some((byte, other)) = end_of_writing {
            if place.byte > byte || (place.byte == byte && ends) {
                return Err(format!(
                    "fault #{fi} ({}) at request byte {} can never happen: fault #{other} stops writing at byte {byte}",
                    fault.describe(),
                    place.byte
                ));
            }
        }
        if ends {
            if let Some((first, _)) = placements
                .iter()
                .find(|(_, p): &&(usize, Placement)| p.byte > place.byte)
            {
                return Err(format!(
                    "fault #{first} comes after request byte {}, where fault #{fi} ({}) stops writing",
                    place.byte,
                    fault.describe()
                ));
            }
            end_of_writing = Some((place.byte, fi));
        }
        events.push((place.byte, event));
        placements.push((fi, place));
    }

    // Cut the request at every event and every split boundary; write the pieces in between.
    let mut cuts: Vec<usize> = vec![0, len];
    cuts.extend(events.iter().map(|(b, _)| *b));
    for (a, b, _) in &splits {
        cuts.push(*a);
        cuts.push(*b);
    }
    cuts.sort_unstable();
    cuts.dedup();

    let mut steps = vec![];
    'outer: for (i, &cut) in cuts.iter().enumerate() {
        // Events at this byte, in list order (the sort is stable).
        for (_, ev) in events.iter().filter(|(b, _)| *b == cut) {
            match ev {
                Event::Pause(d) => steps.push(WriteStep::Pause(*d)),
                Event::ShutdownWrite => {
                    steps.push(WriteStep::ShutdownWrite);
                    break 'outer;
                }
                Event::Action(a) => {
                    steps.push(WriteStep::Action(*a));
                    if actions[*a].action.ends_writing() {
                        break 'outer;
                    }
                }
            }
        }
        let Some(&next) = cuts.get(i + 1) else { break };
        let chunk = splits
            .iter()
            .find(|(a, b, _)| *a <= cut && next <= *b)
            .map(|(_, _, c)| *c);
        steps.push(WriteStep::Write {
            start: cut,
            end: next,
            chunk,
        });
    }
    Ok(TaskPlan {
        write: WritePlan {
            steps: merge_writes(steps),
        },
        actions,
        placements,
    })
}

/// Neighbouring plain writes become one (so a fault-free stretch is a single write, as without faults).
fn merge_writes(steps: Vec<WriteStep>) -> Vec<WriteStep> {
    let mut out: Vec<WriteStep> = vec![];
    for s in steps {
        if let (
            Some(WriteStep::Write {
                end, chunk: None, ..
            }),
            WriteStep::Write {
                start,
                end: e2,
                chunk: None,
            },
        ) = (out.last_mut(), &s)
        {
            if *end == *start {
                *end = *e2;
                continue;
            }
        }
        out.push(s);
    }
    out
}

fn first_span(req: &EncodedRequest) -> SpanKind {
    req.spans
        .first()
        .map(|s| s.kind)
        .unwrap_or(SpanKind::Header)
}

/// Where `target` lies in this request: a span of the encoder, or an Arrow part of the data
/// items (their byte ranges are only known once the streams are written).
fn target_span(target: Target, req: &EncodedRequest) -> Result<Span, String> {
    let (kind, k) = match target {
        Target::Span(kind) => {
            return req.span(kind).ok_or_else(|| {
                let have: Vec<String> = req.spans.iter().map(|s| span_name(s.kind)).collect();
                format!(
                    "this request has no span {} (it has: {})",
                    span_name(kind),
                    have.join(", ")
                )
            })
        }
        Target::Batch(k) => (crate::arrow::DataPartKind::Batch, k),
        Target::Group(k) => (crate::arrow::DataPartKind::Group, k),
    };
    let parts: Vec<(usize, usize)> = req
        .spans
        .iter()
        .filter(|s| matches!(s.kind, SpanKind::Data(_)))
        .flat_map(|s| {
            crate::arrow::data_parts(&req.bytes[s.start..s.end])
                .into_iter()
                .filter(|p| p.kind == kind)
                .map(move |p| (s.start + p.start, s.start + p.end))
                .collect::<Vec<_>>()
        })
        .collect();
    match parts.get(k) {
        Some(&(start, end)) => Ok(Span {
            kind: SpanKind::Data(0),
            start,
            end,
        }),
        None if parts.is_empty() && kind == crate::arrow::DataPartKind::Group => Err(format!(
            "this request has no group markers: {target} needs a 4.1+ grouped or cogrouped kind \
             (3.5 and 4.0 send each group as one batch: name it {{\"batch\": K}})"
        )),
        None => Err(format!(
            "this request's data section has {} Arrow {} (0..{}): there is no {target}",
            parts.len(),
            if kind == crate::arrow::DataPartKind::Batch {
                "record batches"
            } else {
                "groups"
            },
            parts.len()
        )),
    }
}

/// The byte a position names in this request.
pub fn resolve(p: &Position, req: &EncodedRequest) -> Result<Placement, String> {
    let kind = match p {
        Position::Before(k) | Position::After(k) => *k,
        Position::Inside { span, .. } => *span,
    };
    let span: Span = target_span(kind, req)?;
    let len = span.end - span.start;
    let offset = match p {
        Position::Before(_) => 0,
        Position::After(_) => len,
        Position::Inside {
            offset: Some(o), ..
        } => {
            if *o == 0 || *o >= len {
                return Err(format!(
                    "offset {o} is not inside span {kind} ({len} bytes): use 1..={}",
                    len.saturating_sub(1)
                ));
            }
            *o
        }
        Position::Inside { offset: None, .. } => {
            if len < 2 {
                return Err(format!(
                    "span {kind} is {len} byte(s) long: nothing is inside it"
                ));
            }
            len / 2
        }
    };
    Ok(Placement {
        position: p.to_string(),
        span: kind,
        offset_in_span: offset,
        byte: span.start + offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// header 0..10, command 10..20, data[0] 20..28, data[1] 28..36, end_of_data 36..40, final 40..44
    fn req() -> EncodedRequest {
        let spans = [
            (SpanKind::Header, 0, 10),
            (SpanKind::Command, 10, 20),
            (SpanKind::Data(0), 20, 28),
            (SpanKind::Data(1), 28, 36),
            (SpanKind::EndOfData, 36, 40),
            (SpanKind::FinalMarker, 40, 44),
        ];
        EncodedRequest {
            bytes: vec![0; 44],
            spans: spans
                .iter()
                .map(|&(kind, start, end)| Span { kind, start, end })
                .collect(),
        }
    }

    fn f(json: &str) -> Fault {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn no_faults_is_one_write() {
        let p = compile(&[], 0, &req()).unwrap();
        assert_eq!(p.write, WritePlan::whole(44));
        assert!(p.placements.is_empty());
    }

    #[test]
    fn a_delay_after_a_frame_cuts_the_request_there() {
        let p = compile(
            &[f(r#"{"kind":"delay","at":{"after":{"data":0}},"ms":5}"#)],
            0,
            &req(),
        )
        .unwrap();
        assert_eq!(
            p.write.steps,
            vec![
                WriteStep::Write {
                    start: 0,
                    end: 28,
                    chunk: None
                },
                WriteStep::Pause(Duration::from_millis(5)),
                WriteStep::Write {
                    start: 28,
                    end: 44,
                    chunk: None
                },
            ]
        );
        assert_eq!(p.placements[0].1.byte, 28);
    }

    #[test]
    fn faults_of_other_tasks_are_ignored() {
        let p = compile(
            &[f(
                r#"{"kind":"delay","task":1,"at":{"after":"header"},"ms":5}"#,
            )],
            0,
            &req(),
        )
        .unwrap();
        assert!(p.placements.is_empty());
    }

    #[test]
    fn split_writes_inside_a_frame_body_and_an_action_in_the_header() {
        let faults = [
            f(
                r#"{"kind":"split_writes","from":{"inside":{"data":1},"offset":4},"to":{"after":{"data":1}},"chunk":1}"#,
            ),
            f(r#"{"kind":"kill_worker","at":{"inside":"header","offset":3}}"#),
        ];
        let p = compile(&faults, 0, &req()).unwrap();
        assert_eq!(
            p.write.steps,
            vec![
                WriteStep::Write {
                    start: 0,
                    end: 3,
                    chunk: None
                },
                WriteStep::Action(0),
                WriteStep::Write {
                    start: 3,
                    end: 32,
                    chunk: None
                },
                WriteStep::Write {
                    start: 32,
                    end: 36,
                    chunk: Some(1)
                },
                WriteStep::Write {
                    start: 36,
                    end: 44,
                    chunk: None
                },
            ]
        );
        assert_eq!(p.actions[0].action, Action::KillWorker);
        assert_eq!(
            p.actions[0].placement.to_string(),
            "inside header at +3 (span header +3, request byte 3)"
        );
    }

    #[test]
    fn truncation_and_half_close_end_the_writing() {
        let p = compile(
            &[f(r#"{"kind":"truncate","at":{"inside":"command"}}"#)],
            0,
            &req(),
        )
        .unwrap();
        assert_eq!(
            p.write.steps,
            vec![
                WriteStep::Write {
                    start: 0,
                    end: 15,
                    chunk: None
                },
                WriteStep::Action(0)
            ]
        );
        assert_eq!(p.actions[0].action, Action::Close);
        let p = compile(
            &[f(
                r#"{"kind":"half_close","at":{"before":"end_of_data"},"direction":"to_worker"}"#,
            )],
            0,
            &req(),
        )
        .unwrap();
        assert_eq!(
            p.write.steps,
            vec![
                WriteStep::Write {
                    start: 0,
                    end: 36,
                    chunk: None
                },
                WriteStep::ShutdownWrite
            ]
        );
    }

    #[test]
    fn impossible_positions_are_errors_that_say_why() {
        let e = compile(
            &[f(r#"{"kind":"delay","at":{"after":{"data":5}},"ms":1}"#)],
            0,
            &req(),
        )
        .unwrap_err();
        assert!(
            e.contains("no span data[5]") && e.contains("data[1]"),
            "{e}"
        );
        let e = compile(
            &[f(
                r#"{"kind":"delay","at":{"inside":"final_marker","offset":4},"ms":1}"#,
            )],
            0,
            &req(),
        )
        .unwrap_err();
        assert!(e.contains("offset 4 is not inside"), "{e}");
        let e = compile(
            &[
                f(r#"{"kind":"reset","at":{"after":"header"}}"#),
                f(r#"{"kind":"delay","at":{"after":"command"},"ms":1}"#),
            ],
            0,
            &req(),
        )
        .unwrap_err();
        assert!(e.contains("can never happen"), "{e}");
    }
}
