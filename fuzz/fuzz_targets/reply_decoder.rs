//! Each dialect's reply decoder over any bytes: no panic, no allocation driven by a length, and
//! feeding the bytes in chunks decodes exactly what feeding them at once does.
#![no_main]
use fakejvm::protocol::{decode_replies_with, Dialect, ReplyDecoder};
use fakejvm::wire::Status;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: fakejvm_fuzz::CappedAlloc = fakejvm_fuzz::CappedAlloc;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else { return };
    let chunk = 1 + chunk as usize % 32;
    for d in Dialect::ALL {
        let (whole, whole_err) = decode_replies_with(d, data, fakejvm_fuzz::LIMITS);
        let mut dec = ReplyDecoder::new(d).with_limits(fakejvm_fuzz::LIMITS);
        let mut pieces = vec![];
        let mut piece_err = None;
        'feed: for c in data.chunks(chunk) {
            dec.feed(c);
            loop {
                match dec.next_reply() {
                    Ok(Status::Complete(r)) => pieces.push(r),
                    Ok(Status::Partial) => break,
                    Err(e) => {
                        piece_err = Some(e);
                        break 'feed;
                    }
                }
            }
        }
        // Same replies, and an error in one is an error (or a stop) in the other.
        let n = whole.len().min(pieces.len());
        assert_eq!(whole[..n], pieces[..n], "{d:?}: chunked decoding differs");
        if whole_err.is_none() {
            assert!(piece_err.is_none(), "{d:?}: chunked decoding failed where whole did not: {piece_err:?}");
            assert_eq!(whole.len(), pieces.len(), "{d:?}");
        }
    }
});
