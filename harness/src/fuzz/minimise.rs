//! Shrinking a finding before it is saved: delta debugging (ddmin, complement steps) first over
//! the case's frames, then over the bytes inside the frames that are left, culprit frames (the
//! ones a mutation touched) first. Every candidate runs on a fresh worker and must end in the same
//! signature; a budget bounds the number of runs.

use super::case::Case;
use super::exec::Executor;
use super::oracle::Judge;
use super::seeds::Seed;
use super::signature::Signature;
use std::sync::Arc;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MinimiseStats {
    pub runs: usize,
    pub original_len: usize,
    pub original_frames: usize,
    pub final_len: usize,
    pub final_frames: usize,
    /// The budget ran out before ddmin finished: the case may shrink further.
    pub budget_exhausted: bool,
}

/// Does a candidate still reproduce the target signature? (Its futures need not be Send: the
/// campaign's lanes are local tasks.)
#[allow(async_fn_in_trait)]
pub trait Reproduces {
    async fn reproduces(&mut self, candidate: &Case) -> bool;
}

/// The live oracle: run on a fresh worker and compare signatures.
pub struct LiveCheck<'a> {
    pub exec: &'a Executor,
    pub judge: &'a Judge,
    pub seed: Option<&'a Seed>,
    pub target: &'a Signature,
}

impl Reproduces for LiveCheck<'_> {
    async fn reproduces(&mut self, candidate: &Case) -> bool {
        let obs = self.exec.exec_fresh(Arc::new(candidate.to_bytes())).await;
        &self.judge.signature(&obs, candidate, self.seed) == self.target
    }
}

/// Raw byte-level ddmin only for frames up to this long: beyond it, it costs about one run per
/// byte (removing a chunk of a big frame almost always breaks the framing).
const RAW_BYTES_UP_TO: usize = 2048;

/// Shrink `case`, which is known to reproduce, within `budget` runs.
pub async fn minimise<R: Reproduces>(
    case: &Case,
    oracle: &mut R,
    budget: usize,
) -> (Case, MinimiseStats) {
    let mut stats = MinimiseStats {
        original_len: case.len(),
        original_frames: case.frames.len(),
        ..Default::default()
    };
    let mut left = budget;
    let mut best = case.clone();

    // Frames.
    let frames = ddmin(
        best.frames.clone(),
        &mut left,
        &mut stats.runs,
        |frames| {
            let mut c = best.clone();
            c.frames = frames.to_vec();
            c
        },
        oracle,
    )
    .await;
    best.frames = frames;

    // Bytes, culprit frames first, then the rest from the end (where the worker stopped reading).
    // A well-framed frame first loses payload with its length kept true (its framing stays
    // valid, so big payloads shrink fast); then raw bytes go, for frames small enough.
    let mut order: Vec<usize> = (0..best.frames.len())
        .filter(|&i| best.frames[i].touched)
        .collect();
    order.extend(
        (0..best.frames.len())
            .rev()
            .filter(|&i| !best.frames[i].touched),
    );
    for &i in &order {
        if left == 0 {
            break;
        }
        let Some(payload) = best.frames[i].payload().map(<[u8]>::to_vec) else {
            continue;
        };
        let base = best.clone();
        let shrunk = ddmin(
            payload,
            &mut left,
            &mut stats.runs,
            |p| {
                let mut c = base.clone();
                let mut bytes = (p.len() as i32).to_be_bytes().to_vec();
                bytes.extend_from_slice(p);
                c.frames[i].bytes = bytes;
                c
            },
            oracle,
        )
        .await;
        let mut bytes = (shrunk.len() as i32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&shrunk);
        best.frames[i].bytes = bytes;
    }
    for i in order {
        if left == 0 {
            break;
        }
        if best.frames[i].bytes.len() > RAW_BYTES_UP_TO {
            continue;
        }
        let bytes = best.frames[i].bytes.clone();
        let base = best.clone();
        let shrunk = ddmin(
            bytes,
            &mut left,
            &mut stats.runs,
            |b| {
                let mut c = base.clone();
                c.frames[i].bytes = b.to_vec();
                c
            },
            oracle,
        )
        .await;
        best.frames[i].bytes = shrunk;
    }
    best.frames.retain(|f| !f.bytes.is_empty());
    stats.budget_exhausted = left == 0;
    stats.final_len = best.len();
    stats.final_frames = best.frames.len();
    (best, stats)
}

/// ddmin with complement steps: try dropping one of n chunks; on success keep the rest and
/// coarsen, else refine until chunks are single items.
async fn ddmin<T: Clone, R: Reproduces>(
    mut items: Vec<T>,
    left: &mut usize,
    runs: &mut usize,
    build: impl Fn(&[T]) -> Case,
    oracle: &mut R,
) -> Vec<T> {
    let mut n = 2usize;
    while items.len() >= 2 && *left > 0 {
        let chunk = items.len().div_ceil(n);
        let mut reduced = false;
        let mut start = 0;
        while start < items.len() && *left > 0 {
            let end = (start + chunk).min(items.len());
            let candidate: Vec<T> = items[..start]
                .iter()
                .chain(&items[end..])
                .cloned()
                .collect();
            *left -= 1;
            *runs += 1;
            if oracle.reproduces(&build(&candidate)).await {
                items = candidate;
                n = (n - 1).max(2);
                reduced = true;
                break;
            }
            start = end;
        }
        if !reduced {
            if n >= items.len() {
                break;
            }
            n = (n * 2).min(items.len());
        }
    }
    // A last single item may be removable too (ddmin stops at two).
    if items.len() == 1 && *left > 0 {
        *left -= 1;
        *runs += 1;
        if oracle.reproduces(&build(&[])).await {
            items.clear();
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::case::Frame;
    use crate::protocol::SpanKind;

    /// Reproduces while the bytes hold "BAD" somewhere.
    struct Contains(&'static [u8], usize);
    impl Reproduces for Contains {
        async fn reproduces(&mut self, c: &Case) -> bool {
            self.1 += 1;
            c.to_bytes().windows(self.0.len()).any(|w| w == self.0)
        }
    }

    fn case() -> Case {
        let f = |kind, b: &[u8], touched| Frame {
            kind,
            bytes: b.to_vec(),
            touched,
        };
        Case {
            seed: 0,
            frames: vec![
                f(SpanKind::Header, b"header bytes", false),
                f(SpanKind::Command, b"command", false),
                f(SpanKind::Data(0), b"xxBADxx", true),
                f(SpanKind::Data(1), b"more", false),
                f(SpanKind::EndOfData, b"-1", false),
            ],
        }
    }

    #[tokio::test]
    async fn shrinks_to_the_culprit_frame_then_its_bytes() {
        let mut oracle = Contains(b"BAD", 0);
        let (min, stats) = minimise(&case(), &mut oracle, 500).await;
        assert_eq!(min.to_bytes(), b"BAD");
        assert_eq!(min.frames.len(), 1);
        assert_eq!(min.frames[0].kind, SpanKind::Data(0));
        assert_eq!(stats.runs, oracle.1);
        assert!(!stats.budget_exhausted);
    }

    #[tokio::test]
    async fn the_budget_is_respected() {
        let mut oracle = Contains(b"BAD", 0);
        let (min, stats) = minimise(&case(), &mut oracle, 3).await;
        assert_eq!(oracle.1, 3);
        assert!(stats.budget_exhausted);
        assert!(min.to_bytes().windows(3).any(|w| w == b"BAD"));
    }
}
