//! GNU build IDs of ELF files, so a profile's mappings can be matched with
//! the right binary (by `go tool pprof`, Parca, Pyroscope or debuginfod).
//!
//! The file is read through the `object` crate's read cache, so only the
//! ELF headers and notes are read, not the whole (possibly huge,
//! debug-info-laden) file.

use object::Object;

/// Lower-case hex build ID of the ELF file at `path`, empty if it has none
/// or cannot be read.
pub fn build_id(path: &str) -> String {
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
