//! The wire primitives: any sequence of reads over any bytes never panics, never reads past the
//! end, and an error points inside the buffer.
#![no_main]
use arbitrary::Arbitrary;
use fakejvm::wire::{Reader, Slot};
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
    let mut r = Reader::new(&input.bytes).with_max_frame(max).with_base(input.base as u64);
    for op in &input.ops {
        let before = r.position();
        let result = match op {
            Op::Int => r.int().map(|_| ()),
            Op::Long => r.long().map(|_| ()),
            Op::Bool => r.bool().map(|_| ()),
            Op::Str => r.string("s").map(|s| assert!(s.len() <= max)),
            Op::Slot => r.slot("f").map(|s| {
                if let Slot::Bytes(b) = s {
                    assert!(b.len() <= max)
                }
            }),
            Op::Frame => r.frame("f").map(|b| assert!(b.len() <= max)),
            Op::Count(min) => r.count("c", *min as usize).map(|_| ()),
            Op::Bytes(n) => r.bytes(*n as usize, "b").map(|_| ()),
        };
        assert!(r.position() <= input.bytes.len());
        if let Err(e) = result {
            // Failed reads point at the item, inside the stream seen so far.
            let at = e.at_byte - input.base as u64;
            assert!(at as usize <= input.bytes.len(), "{e}");
            if e.is_incomplete() {
                assert!(r.position() >= before);
            }
        }
    }
});
