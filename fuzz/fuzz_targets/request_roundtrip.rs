//! Each dialect's encoder and decoder agree: any well-formed NON_UDF request, encoded, decodes
//! without error into a request that encodes to the same bytes, with the same spans.
#![no_main]
use arbitrary::Arbitrary;
use fakejvm::protocol::{decode_requests, BroadcastOp, Broadcasts, ConnInfo, DataItem, Resource, TaskContext, TaskRequest};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: fakejvm_fuzz::CappedAlloc = fakejvm_fuzz::CappedAlloc;

#[derive(Arbitrary, Debug)]
struct Conn {
    port: i32,
    text: String,
    path: bool,
}

impl Conn {
    fn info(self) -> ConnInfo {
        if self.path {
            ConnInfo::Path(self.text)
        } else {
            ConnInfo::Port { port: self.port, secret: self.text }
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Req {
    dialect: u8,
    split_index: i32,
    python_version: String,
    barrier: Option<Conn>,
    ints: [i32; 4],
    task_attempt_id: i64,
    cpu_amount: Option<String>,
    resources: Vec<(String, String, Vec<String>)>,
    local_properties: Vec<(String, String)>,
    spark_files_dir: String,
    includes: Vec<String>,
    server: Option<Conn>,
    /// (add?, id >= 0, path)
    broadcasts: Vec<(bool, u32, String)>,
    runner_conf: Vec<(String, String)>,
    eval_conf: Vec<(String, String)>,
    command: Vec<u8>,
    data: Vec<Option<Vec<u8>>>,
    final_marker: i32,
}

fuzz_target!(|r: Req| {
    let d = fakejvm_fuzz::dialect(r.dialect);
    let server = r.server.map(Conn::info);
    let req = TaskRequest {
        split_index: r.split_index,
        python_version: r.python_version,
        context: TaskContext {
            // The barrier fields are only meaningful (and only decoded) for barrier tasks.
            is_barrier: r.barrier.is_some(),
            barrier: r.barrier.map(Conn::info),
            stage_id: r.ints[0],
            partition_id: r.ints[1],
            attempt_number: r.ints[2],
            task_attempt_id: r.task_attempt_id,
            cpus: r.ints[3],
            cpu_amount: r.cpu_amount,
            resources: r.resources.into_iter().map(|(key, name, addresses)| Resource { key, name, addresses }).collect(),
            local_properties: r.local_properties,
        },
        spark_files_dir: r.spark_files_dir,
        includes: r.includes,
        broadcasts: Broadcasts {
            ops: r
                .broadcasts
                .into_iter()
                .map(|(add, id, path)| {
                    if add {
                        BroadcastOp::Add { id: id as i64, path: server.is_none().then_some(path) }
                    } else {
                        BroadcastOp::Remove { id: id as i64 }
                    }
                })
                .collect(),
            decryption_server: server,
        },
        eval_type: fakejvm::protocol::EvalType::NonUdf,
        runner_conf: if d.has_conf_maps() { r.runner_conf } else { vec![] },
        eval_conf: if d.has_conf_maps() { r.eval_conf } else { vec![] },
        command: r.command,
        udf: None,
        data: r.data.into_iter().map(|f| f.map(DataItem::Frame).unwrap_or(DataItem::Null)).collect(),
        end_of_data: true,
        final_marker: Some(r.final_marker),
    };
    let enc = d.encode_request(&req);
    let (dec, err) = decode_requests(d, &enc.bytes);
    assert!(err.is_none(), "{d:?}: our own encoding does not decode: {err:?}");
    assert_eq!(dec.len(), 1, "{d:?}");
    if req.split_index != -1 {
        assert_eq!(dec[0].spans, enc.spans, "{d:?}");
    }
    let again = d.encode_request(&dec[0].request);
    assert!(again.bytes == enc.bytes, "{d:?}: decode then encode changed the bytes");
});
