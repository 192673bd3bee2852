//! The process's executable mappings, from `/proc/self/maps`, with the GNU
//! build ID of each file, for the Mapping table of a pprof profile.
//!
//! Build IDs let `go tool pprof`, Parca and Pyroscope match a profile with
//! the right binary (for their own symbolization or for debuginfod). They are
//! read with the `object` crate through a read cache, so only the ELF headers
//! and notes are read, not the whole (possibly huge, debug-info-laden) file,
//! and cached per path.

use std::collections::HashMap;

use parking_lot::Mutex;

/// One executable, file-backed mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: String,
    /// Lower-case hex build ID, empty if the file has none.
    pub build_id: String,
}

static BUILD_IDS: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);

/// Executable file mappings of this process, the main executable first.
pub(crate) fn current() -> Vec<Mapping> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut out = parse_maps(&maps);
    // pprof treats the first mapping as the main binary.
    out.sort_by_key(|m| (m.path != exe, m.start));
    let mut ids = BUILD_IDS.lock();
    let ids = ids.get_or_insert_with(HashMap::new);
    for m in &mut out {
        m.build_id = ids
            .entry(m.path.clone())
            .or_insert_with(|| build_id(&m.path))
            .clone();
    }
    out
}

/// Parses `/proc/PID/maps` text, keeping executable mappings of files.
pub(crate) fn parse_maps(maps: &str) -> Vec<Mapping> {
    maps.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.split_ascii_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let _inode = fields.next()?;
    let path = fields.collect::<Vec<_>>().join(" ");
    if !perms.contains('x') || !path.starts_with('/') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        path,
        build_id: String::new(),
    })
}

fn build_id(path: &str) -> String {
    use object::Object;
    let Ok(file) = std::fs::File::open(path) else {
        return String::new();
    };
    let cache = object::ReadCache::new(file);
    let Ok(obj) = object::File::parse(&cache) else {
        return String::new();
    };
    match obj.build_id() {
        Ok(Some(id)) => id.iter().map(|b| format!("{b:02x}")).collect(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_executable_file_mappings_only() {
        let text = "\
55d0c0a00000-55d0c0a2e000 r--p 00000000 fe:01 123 /usr/bin/demo
55d0c0a2e000-55d0c0b00000 r-xp 0002e000 fe:01 123 /usr/bin/demo
7f0000000000-7f0000021000 rw-p 00000000 00:00 0
7ffd1e9f0000-7ffd1ea11000 r-xp 00000000 00:00 0 [vdso]
7f1000000000-7f1000100000 r-xp 00028000 fe:01 9 /lib/x86_64-linux-gnu/libc.so.6
";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 2);
        assert_eq!(maps[0].start, 0x55d0_c0a2_e000);
        assert_eq!(maps[0].offset, 0x2e000);
        assert_eq!(maps[1].path, "/lib/x86_64-linux-gnu/libc.so.6");
    }

    #[test]
    fn reads_this_test_binarys_build_id() {
        let maps = current();
        assert!(!maps.is_empty());
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(maps[0].path, exe.display().to_string());
        // rustc passes --build-id to the linker on Linux by default.
        assert!(maps[0].build_id.len() >= 16, "{:?}", maps[0]);
    }
}
