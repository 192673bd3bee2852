//! A process's memory as `/proc` shows it: `status`, `smaps_rollup`, its
//! threads and their stacks (mappings themselves are in `maps`).
//!
//! # Thread stacks
//!
//! The main thread's stack is the mapping labelled `[stack]`. glibc allocates
//! every other thread's stack as an anonymous `rw-p` mapping with a
//! `PROT_NONE` guard page directly below it. A mapping counts as a thread
//! stack when it contains the stack pointer of one of the tasks: the pointer
//! comes from `/proc/PID/task/TID/syscall` (second-to-last field; present for
//! a task blocked in a syscall, which most idle threads are) or from the
//! `kstkesp` field of `task/TID/stat` when the kernel fills it. A task for
//! which neither gives a pointer (it is running) is matched by shape
//! instead: an anonymous `rw-p` mapping that starts exactly where an
//! anonymous `---p` guard mapping ends. glibc malloc's arenas have the
//! opposite shape (usable part first, reserved `---p` part above), so they
//! do not match.

use std::collections::BTreeSet;

use super::fs::Fs;
use super::maps::{Mapping, kb_value, parse_maps};

/// Errors reading a process's `/proc` files.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The process does not exist (any more).
    #[error("process {pid} not found (exited?)")]
    NoProcess {
        /// The process id.
        pid: u32,
    },
    /// A file exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Fields of `/proc/PID/status`, in bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// `Name`.
    pub name: String,
    /// `VmRSS`.
    pub vm_rss: u64,
    /// `VmHWM`: peak RSS.
    pub vm_hwm: u64,
    /// `RssAnon`.
    pub rss_anon: u64,
    /// `RssFile`.
    pub rss_file: u64,
    /// `RssShmem`.
    pub rss_shmem: u64,
    /// `Threads`.
    pub threads: u64,
}

/// `/proc/PID/status` of process `pid`.
pub fn read_status(fs: &Fs, pid: u32) -> Result<Status, ProcError> {
    let path = format!("/proc/{pid}/status");
    fs.read(&path)
        .map(|s| parse_status(&s))
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ProcError::NoProcess { pid },
            _ => ProcError::Read { path, source },
        })
}

/// This process's `/proc/self/status` (all zero if unreadable).
pub fn self_status() -> Status {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| parse_status(&s))
        .unwrap_or_default()
}

/// Parses `/proc/PID/status`.
pub fn parse_status(text: &str) -> Status {
    let mut s = Status::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let kb = || kb_value(value);
        match key {
            "Name" => s.name = value.to_string(),
            "VmRSS" => s.vm_rss = kb(),
            "VmHWM" => s.vm_hwm = kb(),
            "RssAnon" => s.rss_anon = kb(),
            "RssFile" => s.rss_file = kb(),
            "RssShmem" => s.rss_shmem = kb(),
            "Threads" => s.threads = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    s
}

/// The user stack pointer in `/proc/PID/task/TID/syscall`: the second-to-last
/// field of `NR args... SP PC` or `-1 SP PC`; none when `running`.
pub fn parse_syscall_sp(text: &str) -> Option<u64> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.len() < 3 {
        return None;
    }
    let sp = fields[fields.len() - 2].trim_start_matches("0x");
    u64::from_str_radix(sp, 16).ok().filter(|&sp| sp != 0)
}

/// `kstkesp` (field 29) of `/proc/PID/task/TID/stat`; none when 0.
pub fn parse_stat_sp(text: &str) -> Option<u64> {
    // The command name may contain spaces and parentheses: skip past the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    // Fields after the name start at field 3 (state); kstkesp is field 29.
    let sp: u64 = rest.split_whitespace().nth(29 - 3)?.parse().ok()?;
    (sp != 0).then_some(sp)
}

/// User and system CPU time of a process from `/proc/PID/stat`, in clock ticks.
pub fn parse_stat_cpu_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Thread stacks found in a process's mappings.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stacks {
    /// Tasks (threads) in `/proc/PID/task`.
    pub threads: u64,
    /// Stack mappings found (main `[stack]` included).
    pub stacks: u64,
    /// Of those, matched by a task's stack pointer or the `[stack]` label.
    pub matched_by_sp: u64,
    /// Resident bytes of all stack mappings.
    pub rss: u64,
    /// Virtual size of all stack mappings.
    pub size: u64,
}

/// Which of `maps` are thread stacks, given the stack pointers known.
/// Returns the indices of the stack mappings and how many came from a
/// pointer or the `[stack]` label (see the module docs).
pub fn find_stacks(maps: &[Mapping], sps: &[u64], tasks_without_sp: usize) -> (Vec<usize>, u64) {
    let mut found = BTreeSet::new();
    for (i, m) in maps.iter().enumerate() {
        if m.path == "[stack]" || sps.iter().any(|&sp| m.contains(sp)) {
            found.insert(i);
        }
    }
    let by_sp = found.len() as u64;
    if tasks_without_sp > 0 {
        let shaped = (1..maps.len()).filter(|&i| {
            let (guard, stack) = (&maps[i - 1], &maps[i]);
            !found.contains(&i)
                && guard.path.is_empty()
                && guard.perms == "---p"
                && guard.end == stack.start
                && stack.path.is_empty()
                && stack.perms == "rw-p"
        });
        let extra: Vec<usize> = shaped.take(tasks_without_sp).collect();
        found.extend(extra);
    }
    (found.into_iter().collect(), by_sp)
}

/// What `/proc` says about a process's memory.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ProcessMemory {
    /// The process id.
    pub pid: u32,
    /// The command line, space-separated.
    pub cmdline: String,
    /// `/proc/PID/status`.
    pub status: Status,
    /// `Rss` from `smaps_rollup` (0 if unreadable).
    pub rollup_rss: u64,
    /// Thread stacks.
    pub stacks: Stacks,
    /// Resident bytes of the brk heap (`[heap]`).
    pub brk_heap_rss: u64,
    /// Resident anonymous bytes outside stacks (brk heap, allocator
    /// arenas, other anonymous mmaps, private-dirty pages of file mappings).
    pub anon_other_rss: u64,
    /// CPU time used so far, in clock ticks.
    #[serde(skip)]
    pub cpu_ticks: u64,
    /// The mappings, from `smaps` (for [`crate::sys::partition`]).
    #[serde(skip)]
    pub mappings: Vec<Mapping>,
    /// Indices in `mappings` of the thread stacks.
    #[serde(skip)]
    pub stack_mappings: Vec<usize>,
}

/// Reads a process's memory picture from `/proc/PID`.
pub fn read_process(fs: &Fs, pid: u32) -> Result<ProcessMemory, ProcError> {
    let base = format!("/proc/{pid}");
    if !fs.exists(&base) {
        return Err(ProcError::NoProcess { pid });
    }
    let read = |name: &str| {
        let path = format!("{base}/{name}");
        fs.read(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ProcError::NoProcess { pid },
            _ => ProcError::Read { path, source },
        })
    };
    let status = parse_status(&read("status")?);
    let maps = parse_maps(&read("smaps")?);
    let rollup_rss = read("smaps_rollup")
        .map(|t| parse_maps_rollup_rss(&t))
        .unwrap_or(0);
    let cmdline = read("cmdline")
        .unwrap_or_default()
        .split('\0')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let cpu_ticks = read("stat")
        .ok()
        .and_then(|t| parse_stat_cpu_ticks(&t))
        .unwrap_or(0);

    let tids = fs.list(format!("{base}/task")).unwrap_or_default();
    let mut sps = Vec::new();
    let mut without_sp = 0;
    for tid in &tids {
        let sp = fs
            .read(format!("{base}/task/{tid}/syscall"))
            .ok()
            .and_then(|t| parse_syscall_sp(&t))
            .or_else(|| {
                let stat = fs.read(format!("{base}/task/{tid}/stat")).ok()?;
                parse_stat_sp(&stat)
            });
        match sp {
            Some(sp) => sps.push(sp),
            None => without_sp += 1,
        }
    }
    let (stack_idx, matched_by_sp) = find_stacks(&maps, &sps, without_sp);
    let mut stacks = Stacks {
        threads: tids.len() as u64,
        stacks: stack_idx.len() as u64,
        matched_by_sp,
        ..Stacks::default()
    };
    for &i in &stack_idx {
        stacks.rss += maps[i].rss;
        stacks.size += maps[i].end - maps[i].start;
    }
    let anon_total: u64 = maps.iter().map(|m| m.anonymous).sum();
    let stack_anon: u64 = stack_idx.iter().map(|&i| maps[i].anonymous).sum();
    let brk_heap_rss = maps
        .iter()
        .filter(|m| m.path == "[heap]")
        .map(|m| m.rss)
        .sum();
    Ok(ProcessMemory {
        pid,
        cmdline,
        status,
        rollup_rss,
        stacks,
        brk_heap_rss,
        anon_other_rss: anon_total.saturating_sub(stack_anon),
        cpu_ticks,
        mappings: maps,
        stack_mappings: stack_idx,
    })
}

/// `Rss` from `/proc/PID/smaps_rollup`.
pub fn parse_maps_rollup_rss(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("Rss:"))
        .map(|v| kb_value(v.trim()))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::maps::tests::MAPS;

    #[test]
    fn parses_status() {
        let s = parse_status(
            "Name:\tquickstart\nVmHWM:\t  2000 kB\nVmRSS:\t  1000 kB\n\
             RssAnon:\t   600 kB\nRssFile:\t   399 kB\nRssShmem:\t     1 kB\nThreads:\t3\n",
        );
        assert_eq!(s.name, "quickstart");
        assert_eq!(s.vm_rss, 1000 * 1024);
        assert_eq!(s.vm_hwm, 2000 * 1024);
        assert_eq!(s.rss_anon + s.rss_file + s.rss_shmem, s.vm_rss);
        assert_eq!(s.threads, 3);
    }

    #[test]
    fn stack_pointer_sources() {
        assert_eq!(
            parse_syscall_sp("202 0x7f1 0x80 0x0 0x0 0x0 0x0 0x7f0000800f00 0x7f10000123"),
            Some(0x7f00_0080_0f00)
        );
        assert_eq!(
            parse_syscall_sp("-1 0x7ffd00000100 0x55d0"),
            Some(0x7ffd_0000_0100)
        );
        assert_eq!(parse_syscall_sp("running"), None);
        let mut stat = String::from("42 (a b) c) S");
        for i in 4..=52 {
            stat.push_str(if i == 29 { " 12345" } else { " 0" });
        }
        assert_eq!(parse_stat_sp(&stat), Some(12345));
        assert_eq!(parse_stat_sp("42 (x) S 0 0"), None);
    }

    #[test]
    fn finds_stacks_by_sp_label_and_shape() {
        let maps = parse_maps(MAPS);
        // One thread with a known sp in the first thread stack.
        let (idx, by_sp) = find_stacks(&maps, &[0x7f00_0080_0000], 0);
        assert_eq!(idx, vec![2, 6]);
        assert_eq!(by_sp, 2);
        // A second thread that was running: matched by the guard-page shape.
        let (idx, by_sp) = find_stacks(&maps, &[0x7f00_0080_0000], 1);
        assert_eq!(idx, vec![2, 4, 6]);
        assert_eq!(by_sp, 2);
    }

    #[test]
    fn reads_this_process() {
        let p = read_process(&Fs::real(), std::process::id()).unwrap();
        assert!(p.status.vm_rss > 0);
        assert!(p.stacks.threads >= 1);
        assert!(p.stacks.stacks >= 1, "at least [stack]: {:?}", p.stacks);
        assert!(matches!(
            read_process(&Fs::real(), u32::MAX - 1),
            Err(ProcError::NoProcess { .. })
        ));
    }
}
