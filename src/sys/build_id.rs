//! GNU build IDs of ELF files, so a profile's mappings can be matched with
//! the right binary (by `go tool pprof`, Parca, Pyroscope or debuginfod).
//!
//! Only the ELF header, the program headers and the `PT_NOTE` segments are
//! read, through the `object` crate's read cache. Parsing the file as an
//! `object::File` would be simpler and is not done: it also reads the
//! symbol tables, several MiB in a large binary (5 MiB of the OOM guard's
//! first, unsymbolized dump of a 200 MB service, `BENCHMARKS.md`), and a
//! build ID is read when a profile is built, possibly near a memory limit.
//! A note segment over 64 KiB is skipped unread: the `heapprof` command
//! reads the build IDs of files other users may have written.

use object::read::elf::{FileHeader, ProgramHeader};
use object::{FileKind, ReadCache, ReadRef, elf};

/// Largest `PT_NOTE` segment read, bytes. Linkers write a few notes of
/// a few dozen bytes each (build ID, ABI tag, GNU properties).
const MAX_NOTE_SEGMENT: u64 = 64 * 1024;

/// Lower-case hex build ID of the ELF file at `path`, empty if it has none
/// or cannot be read.
pub fn build_id(path: &str) -> String {
    let Ok(file) = std::fs::File::open(path) else {
        return String::new();
    };
    let cache = ReadCache::new(file);
    let id = match FileKind::parse(&cache) {
        Ok(FileKind::Elf64) => note_of::<elf::FileHeader64<object::Endianness>, _>(&cache),
        Ok(FileKind::Elf32) => note_of::<elf::FileHeader32<object::Endianness>, _>(&cache),
        _ => None,
    };
    id.map(|id| id.iter().map(|b| format!("{b:02x}")).collect())
        .unwrap_or_default()
}

/// The descriptor of the first `NT_GNU_BUILD_ID` note in a `PT_NOTE`
/// segment of the ELF file in `data`.
fn note_of<'data, Elf: FileHeader, R: ReadRef<'data>>(data: R) -> Option<&'data [u8]> {
    let header = Elf::parse(data).ok()?;
    let endian = header.endian().ok()?;
    for segment in header.program_headers(endian, data).ok()? {
        if segment.p_filesz(endian).into() > MAX_NOTE_SEGMENT {
            continue;
        }
        let Ok(Some(mut notes)) = segment.notes(endian, data) else {
            continue;
        };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == elf::ELF_NOTE_GNU && note.n_type(endian) == elf::NT_GNU_BUILD_ID {
                return Some(note.desc());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The build ID as `object` finds it parsing the whole file.
    fn parsed_build_id(path: &str) -> String {
        use object::Object;
        let data = std::fs::read(path).unwrap();
        let file = object::File::parse(&*data).unwrap();
        file.build_id()
            .unwrap()
            .map(|id| id.iter().map(|b| format!("{b:02x}")).collect())
            .unwrap_or_default()
    }

    #[test]
    fn matches_the_whole_files_parse() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let exe = exe.to_str().unwrap();
        let id = build_id(exe);
        assert!(id.len() >= 32, "{id:?}");
        assert_eq!(id, parsed_build_id(exe));
        // A shared library from the system: Rust links glibc dynamically.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let libc = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.contains("libc.so"))
            .expect("libc is mapped");
        assert_eq!(build_id(libc), parsed_build_id(libc), "{libc}");
    }

    #[test]
    fn files_without_one_give_an_empty_id() {
        assert_eq!(build_id("/proc/self/status"), "");
        assert_eq!(build_id("/nonexistent/heapprof"), "");
        let dir = std::env::temp_dir().join(format!("heapprof-buildid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let truncated = dir.join("truncated");
        let exe = std::fs::read(std::fs::read_link("/proc/self/exe").unwrap()).unwrap();
        std::fs::write(&truncated, &exe[..100]).unwrap();
        assert_eq!(build_id(truncated.to_str().unwrap()), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_oversized_note_segment_is_not_read() {
        use object::read::elf::{FileHeader, ProgramHeader};
        let exe = std::fs::read(std::fs::read_link("/proc/self/exe").unwrap()).unwrap();
        let header = elf::FileHeader64::<object::Endianness>::parse(&*exe).unwrap();
        let endian = header.endian().unwrap();
        let phoff = header.e_phoff(endian) as usize;
        let phentsize = usize::from(header.e_phentsize(endian));
        let mut crafted = exe.clone();
        let mut notes = 0;
        for (i, ph) in header
            .program_headers(endian, &*exe)
            .unwrap()
            .iter()
            .enumerate()
        {
            if ph.p_type(endian) != elf::PT_NOTE {
                continue;
            }
            // p_filesz, at offset 32 of an Elf64_Phdr: the rest of the file,
            // which is in bounds and over the limit.
            let size = (exe.len() as u64 - ph.p_offset(endian)).to_ne_bytes();
            let at = phoff + i * phentsize + 32;
            crafted[at..at + 8].copy_from_slice(&size);
            notes += 1;
        }
        assert!(notes > 0, "the test binary has a PT_NOTE segment");
        assert!(exe.len() as u64 > 2 * MAX_NOTE_SEGMENT);
        let dir = std::env::temp_dir().join(format!("heapprof-bignote-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("crafted");
        std::fs::write(&path, &crafted).unwrap();
        assert_eq!(build_id(path.to_str().unwrap()), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
