//! The calling process's memory cgroup, v1 or v2, read the way the kubelet
//! reads it: usage, working set (usage minus inactive file pages, floored at
//! 0) and limit. Used by the OOM guard; the `heapprof` command has the full
//! reader (per-field breakdown, children, events).

use std::path::{Path, PathBuf};

/// Where the process's memory cgroup lives and which version it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MemoryCgroup {
    pub dir: PathBuf,
    pub v2: bool,
}

/// One reading of a memory cgroup, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reading {
    pub usage: u64,
    pub working_set: u64,
    /// `None` when unlimited.
    pub limit: Option<u64>,
}

/// Finds the memory cgroup of this process from /proc/self/cgroup and
/// /proc/self/mountinfo; `None` if it has none (e.g. cgroup v2 without the
/// memory controller).
pub(crate) fn current() -> Option<MemoryCgroup> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    locate(&cgroups, &mountinfo).filter(|c| {
        c.dir
            .join(if c.v2 {
                "memory.current"
            } else {
                "memory.usage_in_bytes"
            })
            .exists()
    })
}

/// The memory cgroup directory given /proc/PID/cgroup and mountinfo text.
pub(crate) fn locate(cgroups: &str, mountinfo: &str) -> Option<MemoryCgroup> {
    // v1: "N:memory,...:/path"; v2: "0::/path".
    let v1_path = cgroups.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    });
    let v2_path = cgroups.lines().find_map(|l| l.strip_prefix("0::"));
    for line in mountinfo.lines() {
        // id parent major:minor root mount-point opts... - fstype source super-opts
        let (left, right) = line.split_once(" - ")?;
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (root, mount) = (left.get(3)?, left.get(4)?);
        match (right.first().copied(), v1_path, v2_path) {
            (Some("cgroup"), Some(path), _)
                if right
                    .get(2)
                    .is_some_and(|o| o.split(',').any(|x| x == "memory")) =>
            {
                return Some(MemoryCgroup {
                    dir: join(mount, root, path),
                    v2: false,
                });
            }
            (Some("cgroup2"), None, Some(path)) => {
                return Some(MemoryCgroup {
                    dir: join(mount, root, path),
                    v2: true,
                });
            }
            _ => {}
        }
    }
    None
}

fn join(mount: &str, root: &str, path: &str) -> PathBuf {
    let rel = path
        .strip_prefix(root)
        .unwrap_or(path)
        .trim_start_matches('/');
    Path::new(mount).join(rel)
}

/// Reads usage, working set and limit.
pub(crate) fn read(cg: &MemoryCgroup) -> std::io::Result<Reading> {
    let file = |name: &str| std::fs::read_to_string(cg.dir.join(name));
    let (usage, limit, stat) = if cg.v2 {
        (
            file("memory.current")?,
            file("memory.max")?,
            file("memory.stat")?,
        )
    } else {
        (
            file("memory.usage_in_bytes")?,
            file("memory.limit_in_bytes")?,
            file("memory.stat")?,
        )
    };
    Ok(parse(&usage, &limit, &stat, cg.v2))
}

/// Builds a [`Reading`] from the files' text.
pub(crate) fn parse(usage: &str, limit: &str, stat: &str, v2: bool) -> Reading {
    let usage = usage.trim().parse().unwrap_or(0);
    let inactive_key = if v2 {
        "inactive_file"
    } else {
        "total_inactive_file"
    };
    let inactive = stat
        .lines()
        .find_map(|l| l.strip_prefix(inactive_key)?.trim().parse::<u64>().ok())
        .unwrap_or(0);
    // v2 writes "max"; v1 writes a huge page-rounded i64::MAX for no limit.
    let limit = limit
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|&l| l < (1u64 << 62));
    Reading {
        usage,
        working_set: usage.saturating_sub(inactive),
        limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
24 1 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
30 24 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
35 24 0:31 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
";

    #[test]
    fn finds_v1_memory_before_a_controllerless_v2() {
        let cg = locate("12:memory:/pod/ctr\n0::/pod/ctr\n", MOUNTINFO).unwrap();
        assert_eq!(cg.dir, Path::new("/sys/fs/cgroup/memory/pod/ctr"));
        assert!(!cg.v2);
    }

    #[test]
    fn finds_pure_v2() {
        let mountinfo = "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let cg = locate("0::/kubepods/pod1/ctr\n", mountinfo).unwrap();
        assert_eq!(cg.dir, Path::new("/sys/fs/cgroup/kubepods/pod1/ctr"));
        assert!(cg.v2);
    }

    #[test]
    fn working_set_is_usage_minus_inactive_file() {
        let r = parse(
            "1000000\n",
            "max\n",
            "anon 1\ninactive_file 300000\nactive_file 5\n",
            true,
        );
        assert_eq!(
            r,
            Reading {
                usage: 1_000_000,
                working_set: 700_000,
                limit: None
            }
        );
        let r = parse(
            "500\n",
            "9223372036854771712\n",
            "cache 9\ntotal_inactive_file 800\n",
            false,
        );
        assert_eq!(r.working_set, 0, "floored at zero");
        assert_eq!(r.limit, None);
        let r = parse("5\n", "268435456\n", "", false);
        assert_eq!(r.limit, Some(268_435_456));
    }
}
