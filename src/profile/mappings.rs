//! The process's executable mappings, with the GNU build ID of each file,
//! for the Mapping table of a pprof profile. Build IDs are cached per path.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::sys::build_id::build_id;
use crate::sys::maps::{self, Mapping};

static BUILD_IDS: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);

/// Executable file mappings of this process, the main executable first,
/// each with its file's build ID (empty if none).
pub(crate) fn current() -> Vec<(Mapping, String)> {
    static REGISTERED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    extern "C" fn reset_in_child() {
        crate::alloc::fork::reset_mutex(&BUILD_IDS, || None);
    }
    crate::alloc::fork::on_child(&REGISTERED, reset_in_child);
    let text = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut out: Vec<Mapping> = maps::parse_maps(&text)
        .into_iter()
        .filter(Mapping::is_executable_file)
        .collect();
    // pprof treats the first mapping as the main binary.
    out.sort_by_key(|m| (m.path != exe, m.start));
    let mut ids = BUILD_IDS.lock();
    let ids = ids.get_or_insert_with(HashMap::new);
    out.into_iter()
        .map(|m| {
            let id = ids
                .entry(m.path.clone())
                .or_insert_with(|| build_id(&m.path))
                .clone();
            (m, id)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_test_binarys_build_id() {
        let maps = current();
        assert!(!maps.is_empty());
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(maps[0].0.path, exe.display().to_string());
        // rustc passes --build-id to the linker on Linux by default.
        assert!(maps[0].1.len() >= 16, "{:?}", maps[0]);
    }
}
