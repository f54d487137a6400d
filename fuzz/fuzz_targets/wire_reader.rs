//! The wire primitives: any sequence of reads over any bytes never panics, never reads past the
//! end, an error points inside the buffer, and a Partial read leaves the cursor where it was.
#![no_main]
use arbitrary::Arbitrary;
use fakejvm::wire::{Limits, Reader, Slot, Status};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: fakejvm_fuzz::CappedAlloc = fakejvm_fuzz::CappedAlloc;

#[derive(Arbitrary, Debug)]
enum Op {
    Int,
    Long,
    Bool,
    Str,
    Slot,
    Frame,
    Count(u8),
    Bytes(u16),
}

#[derive(Arbitrary, Debug)]
struct Input {
    max_frame: u32,
    base: u32,
    ops: Vec<Op>,
    bytes: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let max = (input.max_frame as usize) % (1 << 20);
    let mut r = Reader::new(&input.bytes).with_limits(Limits { max_frame_len: max }).with_base(input.base as u64);
    for op in &input.ops {
        let before = r.position();
        let result = match op {
            Op::Int => r.int().map(|s| s.map(|_| ())),
            Op::Long => r.long().map(|s| s.map(|_| ())),
            Op::Bool => r.bool().map(|s| s.map(|_| ())),
            Op::Str => r.string("s").map(|s| s.map(|s| assert!(s.len() <= max))),
            Op::Slot => r.slot("f").map(|s| {
                s.map(|s| {
                    if let Slot::Bytes(b) = s {
                        assert!(b.len() <= max)
                    }
                })
            }),
            Op::Frame => r.frame("f").map(|s| s.map(|b| assert!(b.len() <= max))),
            Op::Count(min) => r.count("c", *min as usize).map(|s| s.map(|_| ())),
            Op::Bytes(n) => r.bytes(*n as usize).map(|s| s.map(|_| ())),
        };
        assert!(r.position() <= input.bytes.len());
        match result {
            // Failed reads point at the item, inside the stream seen so far.
            Err(e) => {
                let at = e.at_byte - input.base as u64;
                assert!(at as usize <= input.bytes.len(), "{e}");
            }
            Ok(Status::Partial) => assert_eq!(r.position(), before, "a Partial read moved the cursor"),
            Ok(Status::Complete(())) => {}
        }
    }
});
