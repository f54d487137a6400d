//! The task request (JVM -> worker) and the worker's reply as typed values, and the dialects that
//! turn them into bytes for one pyspark version.
//!
//! One layout is written once (`request.rs`, `reply.rs`); a [`Dialect`] only answers the handful
//! of questions on which the four request families differ. See ../shared/PROTOCOL.md.

mod reply;
mod request;
mod udf;

pub use reply::{
    decode_replies, decode_replies_with, Reply, ReplyDecoder, ReplyEnd, ReplyItem, Timing,
};
pub use request::{
    decode_requests, decode_requests_as, decode_requests_with, DecodedRequest, EncodedRequest,
    RequestDecoder, Span, SpanKind,
};
pub use udf::{
    Arg, ChainedFunc, CommandExtras, EvalType, InputFraming, Profiler, StateServer, Udf, UdfBody,
    UdfCommand, UdfLayout, Udtf, EVAL_CONF_KEYS,
};

use serde::{Deserialize, Serialize};
use std::fmt;

/// A request family: request bytes of one family are not understood by workers of another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Dialect {
    /// pyspark 3.3 to 4.0: flat task context, barrier port and secret always sent.
    A,
    /// pyspark 4.1: barrier port/secret only for barrier tasks; -1 port means a socket path.
    B,
    /// pyspark 4.2: the task context is one JSON string; runner and eval conf maps; 4 timing longs.
    C,
    /// pyspark 4.3: everything before the data is wrapped in a -8 init message.
    D,
}

impl Dialect {
    pub const ALL: [Dialect; 4] = [Dialect::A, Dialect::B, Dialect::C, Dialect::D];

    /// The family of a pyspark version, or None for versions we do not speak (before 3.3).
    pub fn for_version(major: u32, minor: u32) -> Option<Dialect> {
        match (major, minor) {
            (3, 3..) | (4, 0) => Some(Dialect::A),
            (4, 1) => Some(Dialect::B),
            (4, 2) => Some(Dialect::C),
            (4, 3..) | (5.., _) => Some(Dialect::D),
            _ => None,
        }
    }

    pub fn versions(self) -> &'static str {
        match self {
            Dialect::A => "3.3-4.0",
            Dialect::B => "4.1",
            Dialect::C => "4.2",
            Dialect::D => "4.3+",
        }
    }

    /// 4.2 moved the task context (and, 4.3, the barrier/conn info) into one JSON string.
    pub fn json_context(self) -> bool {
        matches!(self, Dialect::C | Dialect::D)
    }

    /// 3.3-4.0 always send barrier port and secret (0 and "" when not a barrier task).
    pub fn always_sends_barrier_fields(self) -> bool {
        self == Dialect::A
    }

    /// From 4.1 a port of -1 is followed by a Unix socket path instead of a secret.
    pub fn conn_info_may_be_path(self) -> bool {
        self != Dialect::A
    }

    /// From 4.2 every request carries the runner conf and eval conf maps after the eval type.
    pub fn has_conf_maps(self) -> bool {
        matches!(self, Dialect::C | Dialect::D)
    }

    /// 4.3 wraps the header in START_OF_INIT_MESSAGE (-8) + length.
    pub fn wraps_init_message(self) -> bool {
        self == Dialect::D
    }

    /// Longs after TIMING_DATA: boot, init, finish; 4.2 adds processing time.
    pub fn timing_longs(self) -> usize {
        if matches!(self, Dialect::C | Dialect::D) {
            4
        } else {
            3
        }
    }

    /// Unix-domain-socket worker mode exists from 4.1.
    pub fn has_unix_sockets(self) -> bool {
        self != Dialect::A
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} (pyspark {})", self, self.versions())
    }
}

impl std::str::FromStr for Dialect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "A" => Ok(Dialect::A),
            "B" => Ok(Dialect::B),
            "C" => Ok(Dialect::C),
            "D" => Ok(Dialect::D),
            _ => Err(format!(
                "unknown dialect {s:?}: expected A (3.3-4.0), B (4.1), C (4.2) or D (4.3)"
            )),
        }
    }
}

/// Where a barrier task or a broadcast decryption server listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnInfo {
    Port {
        port: i32,
        secret: String,
    },
    /// pyspark 4.1+: a Unix socket path, no secret.
    Path(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub key: String,
    pub name: String,
    pub addresses: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskContext {
    pub is_barrier: bool,
    /// Only meaningful for barrier tasks (family A sends port 0 and "" otherwise).
    pub barrier: Option<ConnInfo>,
    pub stage_id: i32,
    pub partition_id: i32,
    pub attempt_number: i32,
    pub task_attempt_id: i64,
    pub cpus: i32,
    /// 4.3 requires `cpuAmount` (a decimal) in the JSON; earlier families ignore it.
    pub cpu_amount: Option<String>,
    pub resources: Vec<Resource>,
    pub local_properties: Vec<(String, String)>,
}

impl Default for TaskContext {
    fn default() -> Self {
        TaskContext {
            is_barrier: false,
            barrier: None,
            stage_id: 0,
            partition_id: 0,
            attempt_number: 0,
            task_attempt_id: 0,
            cpus: 1,
            cpu_amount: None,
            resources: vec![],
            local_properties: vec![],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BroadcastOp {
    /// Register broadcast `id`; `path` is the file holding its pickle (absent when a
    /// decryption server serves it).
    Add { id: i64, path: Option<String> },
    /// Sent as the negative long `-1 - id`.
    Remove { id: i64 },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Broadcasts {
    pub decryption_server: Option<ConnInfo>,
    pub ops: Vec<BroadcastOp>,
}

/// One element of the request's data section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataItem {
    Frame(#[serde(with = "hex_bytes")] Vec<u8>),
    /// A -5 length: None for UTF8Deserializer, a TypeError for pickle readers.
    Null,
    /// Bytes sent as they are, no length: for raw streams and for deliberately broken framing.
    Raw(#[serde(with = "hex_bytes")] Vec<u8>),
}

/// The whole request for one task, independent of dialect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRequest {
    pub split_index: i32,
    /// "MAJOR.MINOR" of the worker's Python: a mismatch is an error in the worker.
    pub python_version: String,
    pub context: TaskContext,
    pub spark_files_dir: String,
    pub includes: Vec<String>,
    pub broadcasts: Broadcasts,
    pub eval_type: EvalType,
    pub runner_conf: Vec<(String, String)>,
    pub eval_conf: Vec<(String, String)>,
    /// NON_UDF: the cloudpickled (func, profiler, deserializer, serializer) tuple.
    #[serde(with = "hex_bytes")]
    pub command: Vec<u8>,
    /// Eval types other than NON_UDF: the UDF command section, written instead of `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udf: Option<UdfCommand>,
    pub data: Vec<DataItem>,
    /// Whether END_OF_DATA_SECTION (-1) closes the data (false only to break the protocol).
    pub end_of_data: bool,
    /// The int after the data: END_OF_STREAM (-4) lets the worker be reused; None sends nothing.
    pub final_marker: Option<i32>,
}

impl TaskRequest {
    /// A NON_UDF request with everything but the command and data at the JVM's defaults.
    pub fn non_udf(python_version: &str, command: Vec<u8>, data: Vec<DataItem>) -> TaskRequest {
        TaskRequest {
            split_index: 0,
            python_version: python_version.to_owned(),
            context: TaskContext::default(),
            spark_files_dir: String::new(),
            includes: vec![],
            broadcasts: Broadcasts::default(),
            eval_type: EvalType::NonUdf,
            runner_conf: vec![],
            eval_conf: vec![],
            command,
            udf: None,
            data,
            end_of_data: true,
            final_marker: Some(crate::wire::SpecialLength::EndOfStream.value()),
        }
    }
}

pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub(crate) fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}
