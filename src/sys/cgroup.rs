//! Memory cgroups, v1 and v2, read the way cAdvisor and the kubelet read
//! them.
//!
//! - usage: `memory.usage_in_bytes` (v1) or `memory.current` (v2);
//! - working set: usage minus inactive file pages (`total_inactive_file` in
//!   v1's `memory.stat`, `inactive_file` in v2's), floored at 0: what the
//!   kubelet evicts on and what `container_memory_working_set_bytes` shows;
//! - rss: `total_rss` (v1) / `anon` (v2); cache: `total_cache` / `file`;
//! - limit: `memory.limit_in_bytes` (v1; values near `i64::MAX` mean none)
//!   or `memory.max` (v2; `max` means none);
//! - failures: `memory.failcnt` (v1) / the `max` count of `memory.events`
//!   (v2); OOM kills: `oom_kill` of `memory.oom_control` (v1) /
//!   `memory.events` (v2).
//!
//! A process's memory cgroup is its path in `/proc/PID/cgroup` (the v1 line
//! that names the `memory` controller, else the v2 `0::` line) below the
//! mount point of that hierarchy in this process's
//! `/proc/self/mountinfo`. A v2 hierarchy without the memory controller
//! has no memory files and counts as none.

use std::collections::HashMap;

use super::fs::Fs;

/// Errors reading a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `/proc/PID/cgroup` could not be read.
    #[error("cannot read /proc/{pid}/cgroup: {source}")]
    ProcCgroup {
        /// The process.
        pid: u32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No memory cgroup directory found for the process or path.
    #[error("no memory cgroup found for {what} (no v1 memory controller, no v2 memory.current)")]
    NotFound {
        /// What was looked up.
        what: String,
    },
    /// A memory file could not be read.
    #[error("cgroup file {path} unreadable: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// cgroup version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Version {
    /// cgroup v1 memory controller.
    V1,
    /// cgroup v2 unified hierarchy.
    V2,
}

/// Memory figures of one cgroup, in bytes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CgroupMemory {
    /// Directory of the cgroup.
    pub dir: String,
    /// Version of the hierarchy.
    pub version: Version,
    /// Usage (includes page cache).
    pub usage: u64,
    /// Usage minus inactive file pages, floored at 0.
    pub working_set: u64,
    /// Anonymous memory (`total_rss` / `anon`).
    pub rss: u64,
    /// Page cache (`total_cache` / `file`).
    pub cache: u64,
    /// Inactive file pages (reclaimable page cache).
    #[serde(rename = "inactive_file")]
    pub file_inactive: u64,
    /// The limit; none when unlimited.
    pub limit: Option<u64>,
    /// Times the limit was hit.
    pub failcnt: u64,
    /// OOM events (v2 `oom`; v1 `under_oom` now).
    pub oom: u64,
    /// OOM kills.
    pub oom_kill: u64,
    /// Child cgroups (containers of a pod), same figures.
    pub children: Vec<CgroupMemory>,
}

impl CgroupMemory {
    /// Bytes the working set can still grow before the limit: the room
    /// the kubelet and the OOM killer leave. `None` when unlimited.
    pub fn headroom(&self) -> Option<u64> {
        self.limit.map(|l| l.saturating_sub(self.working_set))
    }
}

/// Parses `memory.stat` (`key value` lines).
pub fn parse_stat(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Parses a number file (`memory.current`, `memory.usage_in_bytes`).
fn parse_number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Parses a v1 `memory.limit_in_bytes`: near `i64::MAX` (page-rounded) means
/// unlimited.
pub fn parse_limit_v1(text: &str) -> Option<u64> {
    parse_number(text).filter(|&l| l < (1 << 62))
}

/// Parses a v2 `memory.max`: `max` means unlimited.
pub fn parse_limit_v2(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => None,
        t => t.parse().ok(),
    }
}

/// cAdvisor's working set: usage minus inactive file, floored at 0.
pub fn working_set(usage: u64, inactive_file: u64) -> u64 {
    usage.saturating_sub(inactive_file)
}

/// The memory cgroup path of a process from `/proc/PID/cgroup` contents:
/// the v1 `memory` line if there is one, else the v2 `0::` line.
pub fn parse_proc_cgroup(text: &str) -> Option<(Version, String)> {
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            return Some((Version::V1, path.to_string()));
        }
        if id == "0" && controllers.is_empty() {
            v2 = Some((Version::V2, path.to_string()));
        }
    }
    v2
}

/// The memory cgroup directory of process `pid`.
pub fn dir_of_pid(fs: &Fs, pid: u32) -> Result<String, CgroupError> {
    let text = fs
        .read(format!("/proc/{pid}/cgroup"))
        .map_err(|source| CgroupError::ProcCgroup { pid, source })?;
    let mountinfo = fs.read("/proc/self/mountinfo").unwrap_or_default();
    locate(&text, &mountinfo)
        .filter(|dir| version_of(fs, dir).is_some())
        .ok_or_else(|| CgroupError::NotFound {
            what: format!("pid {pid}"),
        })
}

/// The memory cgroup of this process, if it has one with memory files.
pub fn dir_of_self(fs: &Fs) -> Option<String> {
    let text = fs.read("/proc/self/cgroup").ok()?;
    let mountinfo = fs.read("/proc/self/mountinfo").ok()?;
    locate(&text, &mountinfo).filter(|dir| version_of(fs, dir).is_some())
}

/// The directory of the memory cgroup named in `/proc/PID/cgroup` text
/// `cgroups`, below its hierarchy's mount point in `mountinfo`.
pub fn locate(cgroups: &str, mountinfo: &str) -> Option<String> {
    let (version, path) = parse_proc_cgroup(cgroups)?;
    memory_mounts(mountinfo)
        .into_iter()
        .find(|m| m.version == version)
        .map(|m| m.join(&path))
}

/// Where a cgroup hierarchy that can hold memory cgroups is mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mount {
    version: Version,
    /// The mount point.
    point: String,
    /// The cgroup path mounted there (`/` unless a namespace or bind
    /// mount shows a sub-tree).
    root: String,
}

impl Mount {
    /// The directory of cgroup `path` (as `/proc/PID/cgroup` names it).
    fn join(&self, path: &str) -> String {
        let rel = path
            .strip_prefix(self.root.as_str())
            .unwrap_or(path)
            .trim_matches('/');
        let point = self.point.trim_end_matches('/');
        if rel.is_empty() {
            point.to_string()
        } else {
            format!("{point}/{rel}")
        }
    }
}

/// The v1 `memory` and the v2 mounts of `mountinfo` text, in its order.
fn memory_mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // id parent major:minor root mount-point opts... - fstype source super-opts
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (root, point) = (*left.get(3)?, *left.get(4)?);
            let version = match *right.first()? {
                "cgroup" if right.get(2)?.split(',').any(|o| o == "memory") => Version::V1,
                "cgroup2" => Version::V2,
                _ => return None,
            };
            Some(Mount {
                version,
                point: point.to_string(),
                root: root.to_string(),
            })
        })
        .collect()
}

/// The memory cgroup directory a user named: a directory, or a cgroup path
/// below a memory hierarchy mounted here (`/kubepods/pod1` for
/// `/sys/fs/cgroup/memory/kubepods/pod1`).
pub fn dir_of_path(fs: &Fs, path: &str) -> Result<String, CgroupError> {
    let path = path.trim_end_matches('/');
    let mountinfo = fs.read("/proc/self/mountinfo").unwrap_or_default();
    std::iter::once(path.to_string())
        .chain(memory_mounts(&mountinfo).iter().map(|m| m.join(path)))
        .find(|d| version_of(fs, d).is_some())
        .ok_or_else(|| CgroupError::NotFound {
            what: path.to_string(),
        })
}

/// The version of the memory cgroup directory `dir`, if it is one.
pub fn version_of(fs: &Fs, dir: &str) -> Option<Version> {
    if fs.exists(format!("{dir}/memory.usage_in_bytes")) {
        Some(Version::V1)
    } else if fs.exists(format!("{dir}/memory.current")) {
        Some(Version::V2)
    } else {
        None
    }
}

/// Reads the cgroup at `dir` and its children down to `depth` levels
/// (1: a pod's containers).
pub fn read(fs: &Fs, dir: &str, depth: u32) -> Result<CgroupMemory, CgroupError> {
    let version = version_of(fs, dir).ok_or_else(|| CgroupError::NotFound {
        what: dir.to_string(),
    })?;
    let file = |name: &str| {
        let path = format!("{dir}/{name}");
        fs.read(&path)
            .map_err(|source| CgroupError::Read { path, source })
    };
    let mut cg = match version {
        Version::V1 => {
            let stat = parse_stat(&file("memory.stat")?);
            let usage = parse_number(&file("memory.usage_in_bytes")?).unwrap_or(0);
            let oom = parse_stat(&file("memory.oom_control").unwrap_or_default());
            from_parts(
                dir,
                version,
                usage,
                &stat,
                ["total_inactive_file", "total_rss", "total_cache"],
                parse_limit_v1(&file("memory.limit_in_bytes")?),
                parse_number(&file("memory.failcnt").unwrap_or_default()).unwrap_or(0),
                oom.get("under_oom").copied().unwrap_or(0),
                oom.get("oom_kill").copied().unwrap_or(0),
            )
        }
        Version::V2 => {
            let stat = parse_stat(&file("memory.stat")?);
            let usage = parse_number(&file("memory.current")?).unwrap_or(0);
            let events = parse_stat(&file("memory.events").unwrap_or_default());
            let get = |k: &str| events.get(k).copied().unwrap_or(0);
            from_parts(
                dir,
                version,
                usage,
                &stat,
                ["inactive_file", "anon", "file"],
                parse_limit_v2(&file("memory.max")?),
                get("max"),
                get("oom"),
                get("oom_kill"),
            )
        }
    };
    if depth == 0 {
        return Ok(cg);
    }
    for child in fs.subdirs(dir).unwrap_or_default() {
        let child_dir = format!("{dir}/{child}");
        if version_of(fs, &child_dir).is_some() {
            cg.children.push(read(fs, &child_dir, depth - 1)?);
        }
    }
    Ok(cg)
}

#[allow(clippy::too_many_arguments)]
fn from_parts(
    dir: &str,
    version: Version,
    usage: u64,
    stat: &HashMap<String, u64>,
    [inactive_key, rss_key, cache_key]: [&str; 3],
    limit: Option<u64>,
    failcnt: u64,
    oom: u64,
    oom_kill: u64,
) -> CgroupMemory {
    let get = |k: &str| stat.get(k).copied().unwrap_or(0);
    let inactive_file = get(inactive_key);
    CgroupMemory {
        dir: dir.to_string(),
        version,
        usage,
        working_set: working_set(usage, inactive_file),
        rss: get(rss_key),
        cache: get(cache_key),
        file_inactive: inactive_file,
        limit,
        failcnt,
        oom,
        oom_kill,
        children: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Fs {
        Fs::at(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/cgroup"
        ))
    }

    #[test]
    fn proc_cgroup_lines() {
        let v1 = "4:memory:/kubepods/pod1/c1\n0::/\n";
        assert_eq!(
            parse_proc_cgroup(v1),
            Some((Version::V1, "/kubepods/pod1/c1".into()))
        );
        let v2 = "0::/kubepods.slice/pod2\n";
        assert_eq!(
            parse_proc_cgroup(v2),
            Some((Version::V2, "/kubepods.slice/pod2".into()))
        );
        assert_eq!(parse_proc_cgroup("1:cpu:/\n"), None);
    }

    const MOUNTINFO: &str = "\
24 1 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
30 24 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
35 24 0:31 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
";

    #[test]
    fn finds_v1_memory_before_a_controllerless_v2() {
        let dir = locate("12:memory:/pod/ctr\n0::/pod/ctr\n", MOUNTINFO).unwrap();
        assert_eq!(dir, "/sys/fs/cgroup/memory/pod/ctr");
    }

    #[test]
    fn finds_pure_v2_and_namespaced_roots() {
        let mountinfo = "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let dir = locate("0::/kubepods/pod1/ctr\n", mountinfo).unwrap();
        assert_eq!(dir, "/sys/fs/cgroup/kubepods/pod1/ctr");
        // A container's own view: its cgroup is the root of the mount.
        let mountinfo = "30 1 0:26 /kubepods/pod1/ctr /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let dir = locate("0::/kubepods/pod1/ctr\n", mountinfo).unwrap();
        assert_eq!(dir, "/sys/fs/cgroup");
        assert_eq!(
            locate("0::/x\n", "1 0 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }

    #[test]
    fn working_set_is_usage_minus_inactive_file() {
        let v2 = parse_stat("anon 1\ninactive_file 300000\nactive_file 5\n");
        assert_eq!(working_set(1_000_000, v2["inactive_file"]), 700_000);
        let v1 = parse_stat("cache 9\ntotal_inactive_file 800\n");
        assert_eq!(
            working_set(500, v1["total_inactive_file"]),
            0,
            "floored at zero"
        );
        let cg = |limit| CgroupMemory {
            dir: String::new(),
            version: Version::V1,
            usage: 500,
            working_set: 300,
            rss: 0,
            cache: 0,
            file_inactive: 200,
            limit,
            failcnt: 0,
            oom: 0,
            oom_kill: 0,
            children: Vec::new(),
        };
        assert_eq!(cg(Some(1000)).headroom(), Some(700));
        assert_eq!(cg(Some(100)).headroom(), Some(0));
        assert_eq!(cg(None).headroom(), None);
    }

    #[test]
    fn limits_and_working_set() {
        assert_eq!(parse_limit_v1("9223372036854771712\n"), None);
        assert_eq!(parse_limit_v1("268435456\n"), Some(256 << 20));
        assert_eq!(parse_limit_v2("max\n"), None);
        assert_eq!(parse_limit_v2("536870912\n"), Some(512 << 20));
        assert_eq!(working_set(100, 30), 70);
        assert_eq!(working_set(100, 300), 0);
    }

    /// A pod cgroup v2 in the kernel's file format (hand-written fixture:
    /// this machine's cgroup2 has no memory controller): two containers,
    /// one of them OOM-killed once.
    #[test]
    fn v2_pod_from_fixture() {
        let fs = fixture();
        let dir = dir_of_pid(&fs, 4242).unwrap();
        assert_eq!(dir, "/sys/fs/cgroup/kubepods.slice/pod1");
        let pod = read(&fs, &dir, 1).unwrap();
        assert!(read(&fs, &dir, 0).unwrap().children.is_empty());
        assert_eq!(pod.version, Version::V2);
        assert_eq!(pod.usage, 734_003_200);
        assert_eq!(pod.working_set, 734_003_200 - 209_715_200);
        assert_eq!(pod.rss, 503_316_480);
        assert_eq!(pod.cache, 230_686_720);
        assert_eq!(pod.limit, Some(1 << 30));
        assert_eq!((pod.failcnt, pod.oom, pod.oom_kill), (3, 1, 1));
        assert_eq!(pod.children.len(), 2);
        let app = &pod.children[0];
        assert!(app.dir.ends_with("/app"));
        assert_eq!(app.limit, None);
        assert_eq!(app.working_set, 0, "inactive_file above usage floors at 0");
        let shipper = &pod.children[1];
        assert!(shipper.dir.ends_with("/log-shipper"));
        assert_eq!(shipper.oom_kill, 1);
        assert_eq!(shipper.working_set, 471_859_200 - 10_485_760);
    }

    #[test]
    fn missing_cgroup_is_an_error() {
        let fs = fixture();
        assert!(matches!(
            read(&fs, "/sys/fs/cgroup/nope", 1),
            Err(CgroupError::NotFound { .. })
        ));
        assert!(matches!(
            dir_of_pid(&fs, 1),
            Err(CgroupError::ProcCgroup { .. })
        ));
    }

    #[test]
    fn user_paths_resolve_below_the_mounted_hierarchies() {
        let fs = fixture();
        assert_eq!(
            dir_of_path(&fs, "/kubepods.slice/pod1/").unwrap(),
            "/sys/fs/cgroup/kubepods.slice/pod1"
        );
        assert_eq!(
            dir_of_path(&fs, "/sys/fs/cgroup/kubepods.slice/pod1").unwrap(),
            "/sys/fs/cgroup/kubepods.slice/pod1"
        );
        assert!(dir_of_path(&fs, "/nope").is_err());
    }
}
