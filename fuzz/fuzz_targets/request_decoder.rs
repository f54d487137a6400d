//! Each dialect's request decoder over any bytes: no panic, no allocation driven by a length,
//! the spans it reports lie inside the stream, in order, and feeding the bytes in chunks to the
//! incremental decoder finds exactly the requests decoding them at once does.
#![no_main]
use fakejvm::protocol::{decode_requests_with, Dialect, RequestDecoder};
use fakejvm::wire::Status;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: fakejvm_fuzz::CappedAlloc = fakejvm_fuzz::CappedAlloc;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else { return };
    let chunk = 1 + chunk as usize % 32;
    for d in Dialect::ALL {
        let (reqs, err) = decode_requests_with(d, data, fakejvm_fuzz::LIMITS);
        let mut at = 0usize;
        for r in &reqs {
            for s in &r.spans {
                assert!(s.start <= s.end && s.end <= data.len(), "{d:?}: span {s:?} outside {} bytes", data.len());
                assert!(s.start >= at, "{d:?}: spans out of order: {:?}", r.spans);
                at = s.end;
            }
        }
        if let Some(e) = &err {
            assert!(e.at_byte as usize <= data.len(), "{d:?}: {e}");
        }

        let mut dec = RequestDecoder::new(d).with_limits(fakejvm_fuzz::LIMITS);
        let mut pieces = vec![];
        let mut piece_err = None;
        'feed: for c in data.chunks(chunk) {
            dec.feed(c);
            loop {
                match dec.next_request() {
                    Ok(Status::Complete(r)) => pieces.push(r),
                    Ok(Status::Partial) => break,
                    Err(e) => {
                        piece_err = Some(e);
                        break 'feed;
                    }
                }
            }
        }
        assert_eq!(reqs.len(), pieces.len(), "{d:?}: chunked decoding found other requests");
        for (w, p) in reqs.iter().zip(&pieces) {
            assert_eq!(w.spans, p.spans, "{d:?}");
            assert_eq!(w.request, p.request, "{d:?}");
        }
        if let Some(e) = err.filter(|e| !matches!(e.kind, fakejvm::wire::WireErrorKind::Truncated { .. })) {
            assert_eq!(Some(e), piece_err, "{d:?}");
        }
    }
});
