//! The golden index loader (golden::Golden::load) over any index.json: a golden or a one-line
//! error naming the file, never a panic. The folder is real; the files the index names are not
//! there, so an index that parses ends in a "missing" error, which is checked too.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

#[global_allocator]
static ALLOC: fakejvm_fuzz::CappedAlloc = fakejvm_fuzz::CappedAlloc;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    // On tmpfs when there is one: the target writes index.json once per input.
    let base = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    DIR.get_or_init(|| tempfile::Builder::new().prefix("fakejvm-fuzz-golden-").tempdir_in(base).expect("a temp dir").keep())
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    std::fs::write(dir.join("index.json"), data).expect("writing index.json");
    match fakejvm::golden::Golden::load(dir) {
        Ok(g) => assert!(!g.index.connections.is_empty()),
        Err(e) => {
            let text = e.to_string();
            assert_eq!(text.lines().count(), 1, "{text}");
        }
    }
});
