//! The tasks (threads) of this process as `/proc/self/task` lists them: ids,
//! names (`comm`), scheduler states, and which signals each one blocks or
//! has pending (`status`: `SigBlk`, `SigPnd`).
//!
//! Signal masks are hexadecimal bit sets, bit `n - 1` for signal `n`, as
//! the kernel prints them (`render_sigset_t` in `fs/proc/array.c`).

use super::fs::Fs;

/// What `/proc/self/task/TID/status` says about one task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskStatus {
    /// `State`, e.g. `S (sleeping)`.
    pub state: String,
    /// `SigBlk`: signals the task blocks.
    pub blocked: u64,
    /// `SigPnd`: signals pending for this task alone.
    pub pending: u64,
}

impl TaskStatus {
    /// Whether signal `signal` (1..=64) is in the `SigBlk` mask.
    pub fn blocks(&self, signal: i32) -> bool {
        in_set(self.blocked, signal)
    }

    /// Whether signal `signal` is already pending for this task.
    pub fn has_pending(&self, signal: i32) -> bool {
        in_set(self.pending, signal)
    }
}

fn in_set(set: u64, signal: i32) -> bool {
    (1..=64).contains(&signal) && set & (1u64 << (signal - 1)) != 0
}

/// Thread ids of `/proc/self/task`, ascending.
///
/// The directory is read twice and the two lists merged: the kernel lists
/// tasks by position in the thread list, so a thread that exits during a
/// read shifts the rest and one live thread can be skipped (a thread that
/// starts during the read may be missed by both, like any snapshot).
pub fn list(fs: &Fs) -> Vec<u32> {
    let read = || {
        fs.list("/proc/self/task")
            .unwrap_or_default()
            .into_iter()
            .filter_map(|name| name.parse::<u32>().ok())
    };
    let mut tids: Vec<u32> = read().chain(read()).collect();
    tids.sort_unstable();
    tids.dedup();
    tids
}

/// `/proc/self/task/TID/comm` without the newline; `None` once the thread
/// has exited.
pub fn comm(fs: &Fs, tid: u32) -> Option<String> {
    let text = fs.read(format!("/proc/self/task/{tid}/comm")).ok()?;
    Some(text.strip_suffix('\n').unwrap_or(&text).to_owned())
}

/// `/proc/self/task/TID/status`; `None` once the thread has exited.
pub fn status(fs: &Fs, tid: u32) -> Option<TaskStatus> {
    fs.read(format!("/proc/self/task/{tid}/status"))
        .ok()
        .map(|text| parse_status(&text))
}

/// Parses the `State`, `SigBlk` and `SigPnd` lines of a task's `status`.
pub fn parse_status(text: &str) -> TaskStatus {
    let mut status = TaskStatus::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let mask = || u64::from_str_radix(value, 16).unwrap_or(0);
        match key {
            "State" => status.state = value.to_owned(),
            "SigBlk" => status.blocked = mask(),
            "SigPnd" => status.pending = mask(),
            _ => {}
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_state_and_signal_masks() {
        let text = "Name:\tworker\nState:\tS (sleeping)\nTgid:\t7\nSigPnd:\t0000000000000000\n\
                    ShdPnd:\t0000000000000000\nSigBlk:\t0000000000800000\nSigIgn:\t0000000000001000\n";
        let s = parse_status(text);
        assert_eq!(s.state, "S (sleeping)");
        // 0x800000 is bit 23, signal 24 (SIGXCPU); SIGURG (23) is bit 22.
        assert!(s.blocks(24));
        assert!(!s.blocks(23));
        assert!(!s.has_pending(24));
        assert!(!s.blocks(0) && !s.blocks(65));
    }

    #[test]
    fn lists_this_process_threads_with_names() {
        let fs = Fs::real();
        let me = unsafe_free_gettid();
        let tids = list(&fs);
        assert!(tids.contains(&me), "{me} in {tids:?}");
        assert!(comm(&fs, me).is_some_and(|n| !n.is_empty()));
        assert!(status(&fs, me).is_some_and(|s| s.state.starts_with('R')));
        assert_eq!(comm(&fs, u32::MAX), None);
    }

    fn unsafe_free_gettid() -> u32 {
        std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|p| p.file_name()?.to_str()?.parse().ok())
            .expect("/proc/thread-self")
    }
}
