//! Each dialect's request decoder over any bytes: no panic, no allocation driven by a length,
//! and the spans it reports lie inside the stream, in order.
#![no_main]
use fakejvm::protocol::{decode_requests, Dialect};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: fakejvm_fuzz::CappedAlloc = fakejvm_fuzz::CappedAlloc;

fuzz_target!(|data: &[u8]| {
    for d in Dialect::ALL {
        let (reqs, err) = decode_requests(d, data);
        let mut at = 0usize;
        for r in &reqs {
            for s in &r.spans {
                assert!(s.start <= s.end && s.end <= data.len(), "{d:?}: span {s:?} outside {} bytes", data.len());
                assert!(s.start >= at, "{d:?}: spans out of order: {:?}", r.spans);
                at = s.end;
            }
        }
        if let Some(e) = err {
            assert!(e.at_byte as usize <= data.len(), "{d:?}: {e}");
        }
    }
});
