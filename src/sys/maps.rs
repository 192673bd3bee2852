//! `/proc/PID/maps` and `/proc/PID/smaps`: a process's mappings, with the
//! resident sizes `smaps` adds, and what backs each one.
//!
//! # What backs a mapping
//!
//! Resident pages come in three kinds, the three RSS counters of
//! `/proc/PID/status`: anonymous (`RssAnon`), file (`RssFile`) and shared
//! memory (`RssShmem`, tmpfs pages). `smaps` gives each mapping's `Rss` and
//! the `Anonymous` part of it (for a private file mapping: the pages
//! written since, copies on write); the rest of a mapping's `Rss` is the
//! page cache of what backs it: shared memory when that is tmpfs
//! (`MAP_SHARED|MAP_ANONYMOUS` shows as `/dev/zero (deleted)`, POSIX shared
//! memory as `/dev/shm/...`, `memfd_create` as `/memfd:...`, System V as
//! `/SYSV...`), file pages otherwise. The few special pages of `[vdso]` and
//! the like count as file pages.

/// One line of `/proc/PID/maps`, with the `smaps` sizes when read from there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `rwxp`-style permissions.
    pub perms: String,
    /// Offset in the mapped file.
    pub offset: u64,
    /// Path or label (`[heap]`, `[stack]`), empty for anonymous memory.
    pub path: String,
    /// `Rss` in bytes (smaps only).
    pub rss: u64,
    /// `Anonymous` in bytes (smaps only).
    pub anonymous: u64,
}

impl Mapping {
    /// Not backed by a file (anonymous, `[heap]`, `[stack]`, ...).
    pub fn is_anonymous(&self) -> bool {
        self.path.is_empty() || self.path.starts_with('[')
    }

    /// Executable code mapped from a file: what a pprof Mapping describes.
    pub fn is_executable_file(&self) -> bool {
        self.perms.contains('x') && self.path.starts_with('/')
    }

    /// Whether `addr` lies inside.
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// What backs the mapping's resident pages that are not `Anonymous`
    /// (see the module docs).
    pub fn backing(&self) -> Backing {
        const SHMEM: [&str; 5] = ["/dev/zero", "/dev/shm/", "/memfd:", "/SYSV", "[anon_shmem"];
        if SHMEM.iter().any(|p| self.path.starts_with(p)) {
            Backing::Shmem
        } else if self.path.starts_with('/') {
            Backing::File
        } else {
            Backing::Anonymous
        }
    }

    /// Resident bytes that are not anonymous: file or shared-memory pages,
    /// per [`Mapping::backing`].
    pub fn rss_not_anonymous(&self) -> u64 {
        self.rss.saturating_sub(self.anonymous)
    }
}

/// What backs a mapping (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// Nothing: anonymous memory (`[heap]`, `[stack]`, thread stacks,
    /// allocator arenas, other `mmap`s) and special mappings (`[vdso]`).
    Anonymous,
    /// A file (its resident pages are page cache).
    File,
    /// tmpfs: shared anonymous memory, POSIX and System V shared memory,
    /// memfds.
    Shmem,
}

/// Parses `/proc/PID/maps` or `/proc/PID/smaps` (sizes filled for smaps).
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    let mut maps: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        if let Some(m) = parse_map_line(line) {
            maps.push(m);
        } else if let (Some(last), Some((key, value))) = (maps.last_mut(), line.split_once(':')) {
            match key {
                "Rss" => last.rss = kb_value(value.trim()),
                "Anonymous" => last.anonymous = kb_value(value.trim()),
                _ => {}
            }
        }
    }
    maps
}

fn parse_map_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, char::is_whitespace);
    let (start, end) = fields.next()?.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    if perms.len() != 4 {
        return None;
    }
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let _dev = fields.next()?;
    let _inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim().to_string();
    Some(Mapping {
        start,
        end,
        perms: perms.to_string(),
        offset,
        path,
        ..Mapping::default()
    })
}

/// `"1234 kB"` as bytes (the kernel writes kB and means KiB).
pub(crate) fn kb_value(value: &str) -> u64 {
    let n = value.split_whitespace().next().unwrap_or("0");
    n.parse::<u64>().unwrap_or(0) * 1024
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// smaps of a process with a brk heap, two thread stacks behind guard
    /// pages, libc and the main `[stack]`.
    pub(crate) const MAPS: &str = "\
55d0c0000000-55d0c0021000 rw-p 00000000 00:00 0                          [heap]
Rss:                 132 kB
Anonymous:           132 kB
7f0000000000-7f0000001000 ---p 00000000 00:00 0
Rss:                   0 kB
Anonymous:             0 kB
7f0000001000-7f0000801000 rw-p 00000000 00:00 0
Rss:                  16 kB
Anonymous:            16 kB
7f0000801000-7f0000802000 ---p 00000000 00:00 0
7f0000802000-7f0001002000 rw-p 00000000 00:00 0
Rss:                   8 kB
Anonymous:             8 kB
7f1000000000-7f1000100000 r-xp 00001000 08:01 1234                       /usr/lib/libc.so.6
Rss:                 900 kB
Anonymous:             0 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                  20 kB
Anonymous:            20 kB
";

    #[test]
    fn executable_file_mappings() {
        let text = "\
55d0c0a00000-55d0c0a2e000 r--p 00000000 fe:01 123 /usr/bin/demo
55d0c0a2e000-55d0c0b00000 r-xp 0002e000 fe:01 123 /usr/bin/demo
7f0000000000-7f0000021000 rw-p 00000000 00:00 0
7ffd1e9f0000-7ffd1ea11000 r-xp 00000000 00:00 0 [vdso]
7f1000000000-7f1000100000 r-xp 00028000 fe:01 9 /lib/x86_64-linux-gnu/libc.so.6
";
        let maps: Vec<Mapping> = parse_maps(text)
            .into_iter()
            .filter(Mapping::is_executable_file)
            .collect();
        assert_eq!(maps.len(), 2);
        assert_eq!(maps[0].start, 0x55d0_c0a2_e000);
        assert_eq!(maps[0].offset, 0x2e000);
        assert_eq!(maps[1].path, "/lib/x86_64-linux-gnu/libc.so.6");
    }

    #[test]
    fn backing_of_mappings() {
        let maps = parse_maps(
            "\
7f0000000000-7f0000001000 rw-s 00000000 00:01 5 /dev/zero (deleted)
7f0000001000-7f0000002000 rw-s 00000000 00:19 6 /dev/shm/queue
7f0000002000-7f0000003000 rw-s 00000000 00:01 7 /memfd:ring (deleted)
7f0000003000-7f0000004000 r--p 00000000 fe:01 8 /usr/lib/libc.so.6
7f0000004000-7f0000005000 rw-p 00000000 00:00 0
7f0000005000-7f0000006000 r-xp 00000000 00:00 0 [vdso]
",
        );
        let kinds: Vec<Backing> = maps.iter().map(Mapping::backing).collect();
        assert_eq!(
            kinds,
            [
                Backing::Shmem,
                Backing::Shmem,
                Backing::Shmem,
                Backing::File,
                Backing::Anonymous,
                Backing::Anonymous
            ]
        );
    }

    #[test]
    fn parses_smaps() {
        let maps = parse_maps(MAPS);
        assert_eq!(maps.len(), 7);
        assert_eq!(maps[0].path, "[heap]");
        assert_eq!(maps[0].rss, 132 * 1024);
        assert_eq!(maps[5].path, "/usr/lib/libc.so.6");
        assert_eq!(maps[5].offset, 0x1000);
        assert!(!maps[5].is_anonymous());
        assert!(maps[2].is_anonymous());
    }
}
