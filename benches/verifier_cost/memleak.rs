//! bcc's `memleak-bpfcc` for the verifier-cost bench: finding it, giving
//! it kernel headers, telling when it has attached, reading its report.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::Tool;
use crate::work_dir;

const MEMLEAK_INSTALL: &str = "apt-get install bpfcc-tools linux-headers-amd64";

/// How to run memleak-bpfcc here, or why it cannot run.
pub struct Memleak {
    bin: PathBuf,
    /// BCC_KERNEL_SOURCE, if one was set or prepared.
    kernel_source: Option<PathBuf>,
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Debian ships kernel headers in two directories, `-common` and `-amd64`;
/// bcc wants one tree. Merged with symlinks (`cp -rs`) under
/// `target/bench-verifier/kernel-headers`, once.
fn kernel_headers() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("BCC_KERNEL_SOURCE") {
        return Ok(dir.into());
    }
    let mut common: Vec<PathBuf> = std::fs::read_dir("/usr/src")
        .map_err(|e| format!("/usr/src: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("linux-headers-") && name.ends_with("-common")
        })
        .collect();
    common.sort();
    let common = common
        .pop()
        .ok_or("no /usr/src/linux-headers-*-common (install linux-headers-amd64)")?;
    let arch = PathBuf::from(common.to_string_lossy().replace("-common", "-amd64"));
    if !arch.is_dir() {
        return Err(format!("{} missing", arch.display()));
    }
    let name = arch.file_name().unwrap_or_default().to_owned();
    let merged = work_dir().join("kernel-headers").join(name);
    let stamp = merged.join(".merged");
    if stamp.exists() {
        return Ok(merged);
    }
    let _ = std::fs::remove_dir_all(&merged);
    std::fs::create_dir_all(&merged).map_err(|e| format!("{}: {e}", merged.display()))?;
    // The architecture tree goes second: its Makefile and generated headers
    // win over the common ones.
    for (src, extra) in [(&common, None), (&arch, Some("--remove-destination"))] {
        let status = Command::new("cp")
            .arg("-rs")
            .args(extra)
            .arg(format!("{}/.", src.display()))
            .arg(&merged)
            .status()
            .map_err(|e| format!("cp: {e}"))?;
        if !status.success() {
            return Err(format!("cp -rs {} failed", src.display()));
        }
    }
    std::fs::write(&stamp, "").map_err(|e| e.to_string())?;
    Ok(merged)
}

pub fn find_memleak() -> Result<Memleak, String> {
    let bin = find_in_path("memleak-bpfcc")
        .ok_or_else(|| format!("memleak-bpfcc not found: install it with `{MEMLEAK_INSTALL}`"))?;
    let kernel_source = match kernel_headers() {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!(
                "memleak: no kernel headers prepared ({e}); trying without BCC_KERNEL_SOURCE"
            );
            None
        }
    };
    Ok(Memleak { bin, kernel_source })
}

impl Memleak {
    pub fn command(&self, extra: &[String]) -> Command {
        let mut c = Command::new(&self.bin);
        if let Some(dir) = &self.kernel_source {
            c.env("BCC_KERNEL_SOURCE", dir);
        }
        c.env("PYTHONUNBUFFERED", "1").args(extra);
        c
    }

    pub fn shown(&self, args: &str) -> String {
        let env = self
            .kernel_source
            .as_ref()
            .map(|d| format!("BCC_KERNEL_SOURCE={} ", d.display()))
            .unwrap_or_default();
        format!("{env}memleak-bpfcc {args}")
    }
}

/// Number of `perf_event` file descriptors of `pid`: bcc holds one per
/// attached uprobe.
fn perf_events(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|l| l.to_string_lossy().contains("perf_event"))
                .count()
        })
        .unwrap_or(0)
}

/// One stack with outstanding allocations, as a tool reported it.
#[derive(Debug, Default)]
pub struct Stack {
    pub bytes: u64,
    pub count: u64,
    pub frames: Vec<String>,
}

/// The stacks of memleak's last report.
pub fn parse_memleak(out: &str) -> Vec<Stack> {
    let mut stacks: Vec<Stack> = Vec::new();
    for line in out.lines() {
        if line.contains("stacks with outstanding allocations") {
            stacks.clear();
            continue;
        }
        let t = line.trim();
        let words: Vec<&str> = t.split_whitespace().collect();
        if let [bytes, "bytes", "in", count, "allocations", "from", "stack"] = words.as_slice() {
            stacks.push(Stack {
                bytes: bytes.parse().unwrap_or(0),
                count: count.parse().unwrap_or(0),
                frames: Vec::new(),
            });
        } else if line.starts_with("\t\t")
            && let Some(s) = stacks.last_mut()
        {
            // "0x00000000004a1b2c\tsymbol+0x12 [module]"
            let frame = t.split_once('\t').map_or(t, |(_, f)| f);
            s.frames.push(frame.to_string());
        }
    }
    stacks
}

/// bcc prints "Attaching to pid" before it attaches; the probes are in
/// place when its count of perf_event descriptors stops growing.
pub fn memleak_attached(tool: &mut Tool) -> Result<(), String> {
    let mut last = (0, Instant::now());
    tool.wait_until("attached", Duration::from_secs(120), |pid| {
        let n = perf_events(pid);
        if n != last.0 {
            last = (n, Instant::now());
        }
        n > 0 && last.1.elapsed() >= Duration::from_millis(500)
    })
}
