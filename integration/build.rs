//! Compiles the eBPF programs in `bpf/` with clang (see EBPF-NOTES: the Rust
//! eBPF toolchain does not build here) into `OUT_DIR`.

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
