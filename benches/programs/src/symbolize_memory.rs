//! Anonymous memory a symbolizer takes to name functions of a binary, for
//! `cargo bench --bench symbolizer_memory`.
//!
//! `symbolize-memory METHOD FILE N`: picks N functions of the ELF file FILE
//! spread evenly over its symbol table, and names an address in the middle
//! of each, with names, files, lines and inlined frames, by METHOD:
//!
//! - `heapprof`: heapprof's resolver (`heapprof::offline::name_file_offsets`, what
//!   `heapprof pprof-heap` and the in-process profiles use);
//! - `blazesym`: blazesym's ELF/DWARF source, code info and inlined
//!   functions on;
//! - `backtrace`: the `backtrace` crate's resolver (addr2line), which can
//!   only name this process's own code, so FILE must be this program.
//!
//! Prints `RESULT method=.. functions=.. named=.. inlined=.. peak_kib=..
//! after_kib=.. ms=..`: the peak rise of `RssAnon` over its level before
//! the call (polled every 200 us from a thread started beforehand), what
//! is left once the symbolizer is dropped, and the time taken.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

/// `RssAnon` of this process, KiB.
fn rss_anon_kib() -> u64 {
    heapprof::sys::procfs::self_status().rss_anon / 1024
}

/// File offsets of an address in the middle of `n` functions of `path`.
fn function_offsets(path: &str, n: usize) -> Vec<u64> {
    let data = std::fs::read(path).expect("read the ELF file");
    let file = object::File::parse(&*data).expect("parse the ELF file");
    let mut functions: Vec<(u64, u64)> = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.size() >= 2)
        .map(|s| (s.address(), s.size()))
        .collect();
    functions.sort_unstable();
    functions.dedup_by_key(|f| f.0);
    let step = (functions.len() / n.max(1)).max(1);
    functions
        .iter()
        .step_by(step)
        .take(n)
        .filter_map(|&(address, size)| {
            let vaddr = address + size / 2;
            file.segments().find_map(|seg| {
                let (offset, _) = seg.file_range();
                (seg.address() <= vaddr && vaddr < seg.address() + seg.size())
                    .then(|| vaddr - seg.address() + offset)
            })
        })
        .collect()
}

/// Names at `offsets` of `path`; returns (named, inlined frames).
fn symbolize(method: &str, path: &str, offsets: &[u64]) -> (usize, usize) {
    match method {
        "heapprof" => {
            let frames =
                heapprof::offline::name_file_offsets(path, offsets).expect("heapprof resolver");
            let named = frames.iter().filter(|f| !f.is_empty()).count();
            let inlined = frames.iter().map(|f| f.len().saturating_sub(1)).sum();
            (named, inlined)
        }
        "blazesym" => {
            use blazesym::symbolize::source::{Elf, Source};
            use blazesym::symbolize::{Input, Symbolized, Symbolizer};
            let symbolizer = Symbolizer::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .build();
            let source = Source::Elf(Elf::new(path));
            let syms = symbolizer
                .symbolize(&source, Input::FileOffset(offsets))
                .expect("blazesym");
            let mut counts = (0, 0);
            for s in &syms {
                if let Symbolized::Sym(sym) = s {
                    counts.0 += 1;
                    counts.1 += sym.inlined.len();
                }
            }
            counts
        }
        "backtrace" => {
            let maps_text = std::fs::read_to_string("/proc/self/maps").unwrap();
            let maps = heapprof::sys::maps::parse_maps(&maps_text);
            let exe = std::fs::read_link("/proc/self/exe").unwrap();
            let exe = exe.to_str().unwrap();
            let mut counts = (0, 0);
            for &off in offsets {
                // Where file offset `off` of the executable is mapped here.
                let Some(addr) = maps
                    .iter()
                    .find(|m| {
                        m.path == exe && m.offset <= off && off < m.offset + (m.end - m.start)
                    })
                    .map(|m| m.start + (off - m.offset))
                else {
                    continue;
                };
                let mut frames = 0;
                backtrace::resolve(addr as *mut std::ffi::c_void, |s| {
                    frames += usize::from(s.name().is_some());
                });
                counts.0 += usize::from(frames > 0);
                counts.1 += frames.saturating_sub(1);
            }
            backtrace::clear_symbol_cache();
            counts
        }
        other => panic!("unknown method {other}: heapprof, blazesym or backtrace"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, method, path, n] = &args[..] else {
        panic!("usage: symbolize-memory heapprof|blazesym|backtrace FILE N");
    };
    let n: usize = n.parse().expect("N");
    let offsets = function_offsets(path, n);

    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_anon_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let before = rss_anon_kib();
    peak.store(before, Ordering::Relaxed);
    let started = Instant::now();
    let (named, inlined) = symbolize(method, path, &offsets);
    let ms = started.elapsed().as_secs_f64() * 1e3;
    std::thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();
    let after = rss_anon_kib();
    println!(
        "RESULT method={method} functions={} named={named} inlined={inlined} peak_kib={} \
         after_kib={} ms={ms:.0}",
        offsets.len(),
        peak.load(Ordering::Relaxed).saturating_sub(before),
        after.saturating_sub(before),
    );
}
