//! Signatures from any traceback text (a worker writes whatever it likes after -2): no panic on
//! odd UTF-8 boundaries, and the same text always gives the same signature.
#![no_main]
use fakejvm::fuzz::signature::Signature;
use fakejvm::verdict::{parse_exception, Outcome};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: fakejvm_fuzz::CappedAlloc = fakejvm_fuzz::CappedAlloc;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (exc_type, message) = parse_exception(&text);
    let o = Outcome::PythonException { exc_type, message };
    let a = Signature::of(&o, Some(&text), 3);
    let b = Signature::of(&o, Some(&text), 3);
    assert_eq!(a.id(), b.id());
    let crash = Outcome::WorkerCrashed { pid: 1, exit: None, detail: text.to_string() };
    let _ = Signature::of(&crash, Some(&text), 2).text();
});
