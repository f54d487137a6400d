//! Shared by the fuzz targets.
//!
//! [`CappedAlloc`] aborts the process on any single allocation above [`LIMIT`]. Inputs are at
//! most 64 KiB (ci/fuzz-targets passes -max_len=65536), so a bigger allocation can only come
//! from trusting a length or count read from the input: with this allocator every target checks
//! on every input that fakejvm's decoders refuse oversized lengths *before* allocating them, with
//! or without a sanitizer. libFuzzer sees the abort as a crash and saves the input.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;

/// The decoders' bound on one frame, as every target passes it: the same `Limits` value the
/// harness carries in `SessionOptions`, here 4 MiB (an input is at most 64 KiB).
pub const LIMITS: fakejvm::wire::Limits = fakejvm::wire::Limits { max_frame_len: 4 << 20 };

/// The decoders reserve room for a frame once its length passed `LIMITS` (tokio-util's way), and
/// a growing buffer may double: anything past four times the limit trusted a length it had not
/// checked.
pub const LIMIT: usize = 4 * LIMITS.max_frame_len;

pub struct CappedAlloc;

fn check(size: usize) {
    if size > LIMIT {
        // No formatting machinery here: it could allocate, and we are inside the allocator.
        let mut digits = [0u8; 20];
        let mut n = size;
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(b"fakejvm-fuzz: refused an allocation of ");
        let _ = err.write_all(&digits[i..]);
        let _ = err.write_all(b" bytes (limit 16 MiB, 4x the frame limit): a length or count from the input was trusted\n");
        std::process::abort();
    }
}

unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

/// Every dialect, picked by one byte of the input where a target wants only one.
pub fn dialect(b: u8) -> fakejvm::protocol::Dialect {
    fakejvm::protocol::Dialect::ALL[b as usize % 4]
}
