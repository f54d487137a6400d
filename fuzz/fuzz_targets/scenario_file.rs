//! The scenario file parser over any text: a scenario or an error message, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: fakejvm_fuzz::CappedAlloc = fakejvm_fuzz::CappedAlloc;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = fakejvm::scenario::Scenario::parse(text) {
        assert!(!e.is_empty());
    }
});
