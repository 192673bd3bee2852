//! Compiles the eBPF programs in `bpf/` with clang into `OUT_DIR`. They are
//! C because Rust eBPF programs (aya-ebpf) need the nightly-only
//! `-Z build-std=core` for the bpf target, which a stable toolchain lacks;
//! clang with libbpf's headers (`bpf_helpers.h`, `bpf_tracing.h`) builds
//! them in a fraction of a second.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// Programs in `bpf/NAME.bpf.c`, built to `OUT_DIR/NAME.bpf.o`.
const PROGRAMS: &[&str] = &["uprobes", "tracepoints"];

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR not set")?);
    for name in PROGRAMS {
        let src = format!("bpf/{name}.bpf.c");
        println!("cargo:rerun-if-changed={src}");
        let obj = out.join(format!("{name}.bpf.o"));
        let status = Command::new(std::env::var("CLANG").unwrap_or_else(|_| "clang".into()))
            .args(["-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86"])
            .args(["-I/usr/include/x86_64-linux-gnu", "-c", &src, "-o"])
            .arg(&obj)
            .status()
            .context("running clang (install clang and libbpf-dev)")?;
        if !status.success() {
            bail!("clang failed on {src}: {status}");
        }
    }
    println!("cargo:rerun-if-env-changed=CLANG");
    Ok(())
}
