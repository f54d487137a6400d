//! pyspark's frame layouts (pyspark/serializers.py; the same in 3.5.9, 4.0.5, 4.1.4, 4.2.1,
//! 4.3.0 except where noted).

use super::*;

/// BatchedSerializer(CPickleSerializer(), batch_size).dump_stream: each frame pickles a list.
/// `batch_size` -1 (UNLIMITED) gives exactly one frame, even for no values. For any other
/// size below 1 this mirrors pyspark 3.5-4.1, whose counting loop never reaches the size: one
/// frame with every value, none when there are none. (pyspark 4.2+ slices with islice
/// instead: size 0 writes no frames at all, and a negative size raises ValueError.)
pub fn batched_frames(values: &[Value], batch_size: i32) -> Vec<Vec<u8>> {
    const UNLIMITED_BATCH_SIZE: i32 = -1;
    if batch_size == UNLIMITED_BATCH_SIZE {
        return vec![dumps_list(values)];
    }
    match usize::try_from(batch_size) {
        Ok(n) if n > 0 => values.chunks(n).map(dumps_list).collect(),
        _ if values.is_empty() => Vec::new(),
        _ => vec![dumps_list(values)],
    }
}

/// AutoBatchedSerializer(CPickleSerializer()).dump_stream, bestSize 64 KiB: batches start at
/// one value, double after a frame shorter than 64 KiB, and halve (down to 1) after one longer
/// than 640 KiB. Frame lengths decide the batches, hence `dumps`' byte-for-byte CPython output.
pub fn auto_batched_frames(values: &[Value]) -> Vec<Vec<u8>> {
    const BEST: usize = 1 << 16;
    let mut frames = Vec::new();
    let (mut batch, mut rest) = (1usize, values);
    while !rest.is_empty() {
        let (now, later) = rest.split_at(batch.min(rest.len()));
        let frame = dumps_list(now);
        if frame.len() < BEST {
            batch = batch.saturating_mul(2);
        } else if frame.len() > BEST * 10 && batch > 1 {
            batch /= 2;
        }
        frames.push(frame);
        rest = later;
    }
    frames
}

/// CPickleSerializer.dump_stream: one pickled value per frame.
pub fn unbatched_frames(values: &[Value]) -> Vec<Vec<u8>> {
    values.iter().map(dumps).collect()
}

/// UTF8Deserializer's input (textFile lines): UTF-8 frames; None is sent as NULL (-5).
pub fn utf8_frames(lines: &[Option<String>]) -> Vec<Option<Vec<u8>>> {
    lines
        .iter()
        .map(|l| l.as_ref().map(|s| s.as_bytes().to_vec()))
        .collect()
}

/// PairDeserializer's input (RDD.zip): key batch i, then value batch i, alternating on one
/// stream, as the JVM writes each (key bytes, value bytes) pair. PairDeserializer pairs them
/// with zip() and raises ValueError when two paired batches differ in length. If one side has
/// more batches, its extra frames follow in order (pyspark keeps alternating over them).
/// CartesianDeserializer reads the same alternation; for RDD.cartesian the JVM sends every
/// (key batch, value batch) combination: see `cartesian_frames`.
pub fn pair_frames(keys: &[Vec<u8>], values: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(keys.len() + values.len());
    for (k, v) in keys.iter().zip(values) {
        out.push(k.clone());
        out.push(v.clone());
    }
    let common = keys.len().min(values.len());
    out.extend(keys[common..].iter().cloned());
    out.extend(values[common..].iter().cloned());
    out
}

/// CartesianDeserializer's input (RDD.cartesian): the JVM's cartesian product of the two
/// sides' batches, each combination sent as key batch then value batch.
pub fn cartesian_frames(keys: &[Vec<u8>], values: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(2 * keys.len() * values.len());
    for k in keys {
        for v in values {
            out.push(k.clone());
            out.push(v.clone());
        }
    }
    out
}

/// How a worker's output serializer laid out its frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// BatchedSerializer or AutoBatchedSerializer over CPickle: each frame a pickled list.
    Batched,
    /// CPickleSerializer: each frame one pickled value.
    Unbatched,
    /// UTF-8 text per frame (NULL is None).
    Utf8,
    /// NoOpSerializer: raw bytes per frame (NULL is None).
    Raw,
}

/// The values a worker wrote, from its output frames (`None` = a NULL (-5) frame): batches are
/// flattened, text becomes `Str`, raw payloads `Bytes`.
pub fn decode_frames<B: AsRef<[u8]>>(kind: FrameKind, frames: &[Option<B>]) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (frame, payload) in frames.iter().enumerate() {
        let in_frame = |e: PickleError| PickleError::InFrame {
            frame,
            source: Box::new(e),
        };
        match (kind, payload.as_ref().map(|b| b.as_ref())) {
            (FrameKind::Batched, None) => {
                return Err(PickleError::UnexpectedNull {
                    frame,
                    serializer: "batched pickle serializer",
                })
            }
            (FrameKind::Unbatched, None) => {
                return Err(PickleError::UnexpectedNull {
                    frame,
                    serializer: "CPickleSerializer",
                })
            }
            (FrameKind::Utf8 | FrameKind::Raw, None) => out.push(Value::None),
            (FrameKind::Batched, Some(b)) => match loads(b).map_err(in_frame)? {
                Value::List(items) => out.extend(items),
                other => {
                    return Err(PickleError::NotABatch {
                        frame,
                        got: other.type_name(),
                    })
                }
            },
            (FrameKind::Unbatched, Some(b)) => out.push(loads(b).map_err(in_frame)?),
            (FrameKind::Utf8, Some(b)) => match std::str::from_utf8(b) {
                Ok(s) => out.push(Value::Str(s.to_owned())),
                Err(e) => {
                    return Err(PickleError::NotUtf8 {
                        frame,
                        at: e.valid_up_to(),
                    })
                }
            },
            (FrameKind::Raw, Some(b)) => out.push(Value::Bytes(b.to_vec())),
        }
    }
    Ok(out)
}
