//! Builds shim/forkfail.c into a shared object in OUT_DIR; src/lib.rs embeds its bytes.
//!
//! The cc crate finds the C compiler (the same `cc` Rust already needs to link on Linux, or $CC)
//! and its flags for the target; cc builds static archives, so the compiler is invoked here
//! directly with `-shared`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = PathBuf::from("shim/forkfail.c");
    println!("cargo:rerun-if-changed={}", src.display());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("libforkfail.so");

    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os != "linux" {
        // LD_PRELOAD interposition of fork() is a Linux (glibc) technique; elsewhere ship an empty
        // shim so the crate still builds, and `forkfail::available()` says it is not there.
        std::fs::write(&out, b"").expect("writing an empty shim into OUT_DIR");
        return;
    }

    let compiler = cc::Build::new().pic(true).opt_level(2).get_compiler();
    let mut cmd: Command = compiler.to_command();
    cmd.args(["-shared", "-Wall", "-Wextra", "-o"])
        .arg(&out)
        .arg(&src)
        .arg("-ldl");
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("could not run the C compiler {:?} to build the fork-failure shim: {e}; install a C compiler (gcc or clang) or set CC", compiler.path())
    });
    assert!(
        status.success(),
        "the C compiler failed to build {} ({status}); see the compiler output above",
        src.display()
    );
}
