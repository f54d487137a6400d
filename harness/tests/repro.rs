//! Reproducer files against real pyspark 4.0.5 workers: the three classic malformed-stream
//! classes (short read -> struct.error, negative length -> ValueError from read(), NULL in a
//! pickled batch -> TypeError) each reproduce to their signature, a changed signature does not,
//! and a broken file is one line naming it.

mod common;

use fakejvm::error::BadInput;
use fakejvm::fuzz::case::Case;
use fakejvm::fuzz::reproducer::Reproducer;
use fakejvm::fuzz::signature::Signature;
use fakejvm::protocol::{DataItem, Dialect, SpanKind, TaskRequest};
use fakejvm::pyenv::{self, CommandSpec, SerializerSpec};
use fakejvm::repro::{self, ReproArgs};
use fakejvm::verdict::OutcomeKind;
use std::path::Path;

fn args(file: &Path) -> ReproArgs {
    ReproArgs {
        file: file.to_path_buf(),
        python: None,
        pyspark: None,
        python_version: Default::default(),
        runs: 1,
        json: false,
    }
}

fn raw(bytes: &[u8]) -> Case {
    Case::from_spans(
        None,
        bytes,
        &[fakejvm::protocol::Span {
            kind: SpanKind::Header,
            start: 0,
            end: bytes.len(),
        }],
    )
}

fn assert_class(sig: &Signature, exc_type: &str, function: &str) {
    assert_eq!(sig.kind, OutcomeKind::PythonException, "{}", sig.text());
    assert_eq!(sig.exc_type.as_deref(), Some(exc_type), "{}", sig.text());
    assert!(
        sig.frames[0].starts_with(&format!("serializers.py:{function}"))
            || sig.frames[0].contains(function),
        "{}",
        sig.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_classes_reproduce_and_a_changed_signature_does_not() {
    let env = common::env_for("4.0.5");
    let dir = tempfile::tempdir().unwrap();

    // Short read: three bytes of the split index, then EOF.
    let (short, r) =
        common::record_reproducer(&env, &raw(&[0, 0, 0]), dir.path(), "short-read").await;
    assert_class(&r.signature, "struct.error", "read_int");
    assert_eq!(
        repro::repro_cmd(args(&short)).await.unwrap(),
        1,
        "the short read should reproduce"
    );

    // Negative length: the python version string claims -7 bytes.
    let mut b = 0i32.to_be_bytes().to_vec();
    b.extend((-7i32).to_be_bytes());
    let (negative, r) =
        common::record_reproducer(&env, &raw(&b), dir.path(), "negative-length").await;
    assert_class(&r.signature, "ValueError", "loads");
    assert!(
        r.traceback
            .as_deref()
            .unwrap_or("")
            .contains("read length must be non-negative"),
        "{:?}",
        r.traceback
    );
    assert_eq!(repro::repro_cmd(args(&negative)).await.unwrap(), 1);

    // NULL among pickled batches.
    let spec = CommandSpec {
        function: "func = lambda split, it: it".into(),
        deserializer: SerializerSpec::Batched { size: 2 },
        serializer: SerializerSpec::AutoBatched,
    };
    let command = pyenv::build_commands(&env, &[spec]).unwrap().remove(0);
    let batch = fakejvm::pickle::batched_frames(
        &[
            fakejvm::pickle::Value::Int(1),
            fakejvm::pickle::Value::Int(2),
        ],
        2,
    )
    .remove(0);
    let req = TaskRequest::non_udf(
        &env.python_version,
        command,
        vec![DataItem::Frame(batch), DataItem::Null],
    );
    let case = Case::from_encoded(None, &Dialect::A.encode_request(&req));
    let (null, r) = common::record_reproducer(&env, &case, dir.path(), "null-in-batch").await;
    assert_eq!(
        r.signature.exc_type.as_deref(),
        Some("TypeError"),
        "{}",
        r.signature.text()
    );
    assert!(
        r.traceback.as_deref().unwrap_or("").contains("NoneType"),
        "{:?}",
        r.traceback
    );
    assert_eq!(repro::repro_cmd(args(&null)).await.unwrap(), 1);

    // The same bytes recorded with another signature: "no longer reproduces", exit 0.
    let mut changed = Reproducer::load(&short).unwrap();
    changed.signature.exc_type = Some("EOFError".into());
    changed.signature_id = changed.signature.id();
    let path = dir.path().join("changed.json");
    changed.save(&path).unwrap();
    assert_eq!(repro::repro_cmd(args(&path)).await.unwrap(), 0);

    // As a user runs it: exit 1 and four lines that end in REPRODUCES; exit 0 for the changed one.
    let out = fakejvm_cmd()
        .arg("repro")
        .arg(&short)
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8_lossy(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[0].starts_with("repro   ") && lines[3].starts_with("result  REPRODUCES"),
        "{text}"
    );
    fakejvm_cmd().arg("repro").arg(&path).assert().code(0);
}

fn fakejvm_cmd() -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("fakejvm").expect("binary");
    c.env_remove("FAKEJVM_PYTHON")
        .timeout(std::time::Duration::from_secs(300));
    c
}

#[tokio::test]
async fn broken_reproducers_and_flags_are_one_line_of_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.json");
    std::fs::write(
        &p,
        "{\"kind\": \"fakejvm-reproducer\", \"format\": 1, \"title\": 3}",
    )
    .unwrap();
    let err = repro::repro_cmd(args(&p)).await.unwrap_err();
    let bad = err
        .downcast_ref::<BadInput>()
        .unwrap_or_else(|| panic!("not BadInput: {err:#}"));
    assert!(
        bad.to_string().starts_with(&p.display().to_string()),
        "{bad}"
    );
    assert_eq!(bad.to_string().lines().count(), 1);

    let err = repro::repro_cmd(ReproArgs {
        runs: 0,
        ..args(&p)
    })
    .await
    .unwrap_err();
    assert!(err.downcast_ref::<BadInput>().is_some(), "{err:#}");

    let missing = dir.path().join("nope.json");
    let err = repro::repro_cmd(args(&missing)).await.unwrap_err();
    assert!(
        err.to_string().contains("nope.json") && err.to_string().contains("cannot read"),
        "{err}"
    );

    // From the command line: exit 2 and one line naming the file.
    let out = fakejvm_cmd()
        .arg("repro")
        .arg(&p)
        .assert()
        .code(2)
        .get_output()
        .stderr
        .clone();
    let stderr = String::from_utf8_lossy(&out);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("fakejvm: {}", p.display())),
        "{stderr}"
    );
}
