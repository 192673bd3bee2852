//! `heapprof ps`: the processes that announce a heapprof endpoint.

use anyhow::Result;
use heapprof::sys::discovery;
use heapprof::sys::fs::Fs;
use heapprof::sys::procfs;

use crate::format::bytes;

pub(super) fn run(json: bool) -> Result<()> {
    let dir = discovery::dir();
    let (found, skipped) = discovery::list(&dir);
    for reason in &skipped {
        eprintln!("heapprof: skipped {reason}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(());
    }
    println!("{:>8}  {:<22}  {:>10}  COMMAND", "PID", "ADDRESS", "RSS");
    for e in &found {
        let rss = procfs::read_status(&Fs::real(), e.pid)
            .map(|s| bytes(s.vm_rss as f64))
            .unwrap_or_else(|_| "?".into());
        println!(
            "{:>8}  {:<22}  {:>10}  {}",
            e.pid,
            e.addr,
            rss,
            e.cmdline.join(" ")
        );
    }
    if found.is_empty() {
        eprintln!("no process serves heapprof (looked in {})", dir.display());
    }
    Ok(())
}
