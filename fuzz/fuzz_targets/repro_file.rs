//! The reproducer file parser over any text: a checked reproducer (whose bytes and frames then
//! agree) or a one-line error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: fakejvm_fuzz::CappedAlloc = fakejvm_fuzz::CappedAlloc;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match fakejvm::fuzz::reproducer::Reproducer::parse(text) {
        Ok(r) => {
            let bytes = r.bytes().expect("parse checked the bytes");
            let case = r.case().expect("parse checked the frames");
            assert_eq!(case.to_bytes(), bytes);
        }
        Err(e) => assert!(!e.is_empty()),
    }
});
