//! A child memory cgroup (v1) of the test's own, for running an example
//! under a limit; removed on drop. Readings go through `heapprof::sys`,
//! which reads cgroups the way the kubelet does (v1 and v2).

use std::path::PathBuf;
use std::time::Duration;

use heapprof::sys::cgroup::{self, CgroupMemory};
use heapprof::sys::fs::Fs;

/// A child memory cgroup with a limit.
pub struct ChildCgroup(pub PathBuf);

impl ChildCgroup {
    /// Creates `<own cgroup>/<name>-<pid>` with `limit` bytes; the error
    /// says why not (no root, no v1 memory controller).
    pub fn create(name: &str, limit: u64) -> Result<Self, String> {
        let own = cgroup::dir_of_self(&Fs::real())
            .filter(|d| cgroup::version_of(&Fs::real(), d) == Some(cgroup::Version::V1))
            .ok_or("no cgroup v1 memory controller for this process")?;
        let dir = PathBuf::from(own).join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cg = Self(dir);
        cg.set_limit(limit)?;
        Ok(cg)
    }

    /// [`create`](Self::create), or, if it cannot be made: `None` when
    /// the user asked to skip such tests (`HEAPPROF_SKIP_BPF=1`, said on
    /// stderr), else a panic that says what the test needs.
    pub fn create_or_skip(name: &str, limit: u64) -> Option<Self> {
        match Self::create(name, limit) {
            Ok(cg) => Some(cg),
            Err(e) if std::env::var("HEAPPROF_SKIP_BPF").as_deref() == Ok("1") => {
                eprintln!(
                    "SKIPPED by request (HEAPPROF_SKIP_BPF=1): cannot create a memory cgroup: {e}"
                );
                None
            }
            Err(e) => panic!(
                "this test needs root and a cgroup v1 memory controller to create a child \
                 memory cgroup: {e}. Run it as root, or set HEAPPROF_SKIP_BPF=1 to skip it"
            ),
        }
    }

    /// Sets `memory.limit_in_bytes`.
    pub fn set_limit(&self, limit: u64) -> Result<(), String> {
        self.write("memory.limit_in_bytes", &limit.to_string())
    }

    pub fn write(&self, file: &str, value: &str) -> Result<(), String> {
        let path = self.0.join(file);
        std::fs::write(&path, value)
            .map_err(|e| format!("write {value} to {}: {e}", path.display()))
    }

    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.0.join(file)).unwrap_or_default()
    }

    /// The cgroup's memory figures now.
    pub fn memory(&self) -> CgroupMemory {
        cgroup::read(&Fs::real(), &self.0.display().to_string(), 0).expect("a memory cgroup")
    }

    /// Usage minus inactive file pages, as the kubelet reads it.
    pub fn working_set(&self) -> u64 {
        self.memory().working_set
    }

    /// OOM kills in the cgroup so far.
    pub fn oom_kills(&self) -> u64 {
        self.memory().oom_kill
    }

    /// Whether process `pid` is in this cgroup.
    pub fn holds(&self, pid: u32) -> bool {
        self.read("cgroup.procs")
            .lines()
            .any(|l| l.trim() == pid.to_string())
    }

    /// `exe --serve 127.0.0.1:0`, started inside this cgroup (a shell
    /// joins it, then execs the service).
    pub fn serve_command(&self, exe: &std::path::Path) -> std::process::Command {
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" && exec "$2" --serve 127.0.0.1:0"#)
            .arg("sh")
            .arg(&self.0)
            .arg(exe);
        cmd
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.0.display());
    }
}
