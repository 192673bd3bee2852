//! `heapprof pprof-heap`: fetch a heap profile (or read one), name it if
//! the process served it unsymbolized, and open it in `go tool pprof` when
//! Go is installed.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pprof::protos::Message;

use crate::fetch::{self, Source};
use crate::{name_profile, profile};

pub(super) fn run(
    target: &str,
    output: Option<PathBuf>,
    binaries: &[PathBuf],
    debug_dirs: &[PathBuf],
) -> Result<()> {
    let mut body = Source::parse(target).heap_profile("")?;
    let mut p = profile::read_proto(&body, fetch::settings().max_bytes)
        .with_context(|| format!("reading {target}"))?;
    if name_profile::is_unsymbolized(&p) {
        let used = name_profile::name(&mut p, binaries, debug_dirs)?;
        eprintln!(
            "heapprof: the profile was unsymbolized; named it from {}",
            used.join(", ")
        );
        body = gzip(&p.encode_to_vec())?;
    }
    if let Some(path) = output {
        std::fs::write(&path, &body).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {} bytes to {}", body.len(), path.display());
        return Ok(());
    }
    let path = std::env::temp_dir().join(format!(
        "heapprof-{}-{}.pb.gz",
        target.replace(['/', ':'], "_"),
        std::process::id()
    ));
    std::fs::write(&path, &body).with_context(|| format!("writing {}", path.display()))?;
    open_in_go(&path);
    Ok(())
}

fn gzip(raw: &[u8]) -> Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(raw)?;
    Ok(gz.finish()?)
}

fn open_in_go(path: &Path) {
    let go = std::process::Command::new("go")
        .args(["tool", "pprof"])
        .arg(path)
        .status();
    match go {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!(
            "go tool pprof exited with {status}; profile kept at {}",
            path.display()
        ),
        Err(_) => println!(
            "profile saved to {} (install Go for `go tool pprof`, or use `heapprof top`)",
            path.display()
        ),
    }
}
