//! `heapprof pprof-heap`: fetch a heap profile, and open it in
//! `go tool pprof` when Go is installed.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::fetch::Source;

pub(super) fn run(target: &str, output: Option<PathBuf>) -> Result<()> {
    let body = Source::parse(target).heap_profile("")?;
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
    let go = std::process::Command::new("go")
        .args(["tool", "pprof"])
        .arg(&path)
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
    Ok(())
}
