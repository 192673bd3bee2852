//! framehop 0.16 (samply's unwinder), set up on this process's loaded
//! modules, for `stack-cost` to time and count against heapprof's unwind
//! table: the crate the project named for cached DWARF unwinding.
//!
//! Modules come from `dl_iterate_phdr`; framehop reads their `.eh_frame`,
//! `.eh_frame_hdr` and code where they are mapped (they stay loaded for
//! the whole run). It unwinds without allocating
//! (`MustNotAllocateDuringUnwind`), with its own rule cache, reading only
//! the current thread's stack.

use std::ffi::{CStr, c_int, c_void};
use std::ops::Range;
use std::time::Instant;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, Module, MustNotAllocateDuringUnwind, Unwinder};

type Policy = MustNotAllocateDuringUnwind;

pub struct Framehop {
    unwinder: UnwinderX86_64<&'static [u8], Policy>,
    cache: CacheX86_64<Policy>,
    /// The calling thread's stack, the only memory unwinding reads.
    stack: Range<u64>,
    /// Modules added, and the time it took.
    pub modules: usize,
    pub setup_ns: u64,
}

impl Framehop {
    /// An unwinder for every module loaded now, for the calling thread.
    pub fn new() -> Framehop {
        let started = Instant::now();
        let mut modules: Vec<Module<&'static [u8]>> = Vec::new();
        // SAFETY: the callback has dl_iterate_phdr's signature and casts
        // `data` back to the Vec passed here, which outlives the call.
        unsafe { libc::dl_iterate_phdr(Some(on_module), (&raw mut modules).cast()) };
        let count = modules.len();
        let mut unwinder = UnwinderX86_64::new();
        for module in modules {
            unwinder.add_module(module);
        }
        Framehop {
            unwinder,
            cache: CacheX86_64::new_in(),
            stack: thread_stack(),
            modules: count,
            setup_ns: started.elapsed().as_nanos() as u64,
        }
    }

    /// Captures the calling stack's return addresses into `buf`; returns
    /// how many.
    #[inline(never)]
    pub fn capture(&mut self, buf: &mut [usize]) -> usize {
        let (ip, sp, bp): (u64, u64, u64);
        // SAFETY: reads three registers into outputs; no memory, no flags.
        unsafe {
            core::arch::asm!(
                "lea {ip}, [rip]",
                "mov {sp}, rsp",
                "mov {bp}, rbp",
                ip = out(reg) ip,
                sp = out(reg) sp,
                bp = out(reg) bp,
                options(nomem, nostack, preserves_flags),
            );
        }
        let stack = self.stack.clone();
        let mut read = |addr: u64| {
            if addr >= stack.start && addr.saturating_add(8) <= stack.end && addr.is_multiple_of(8)
            {
                // SAFETY: an aligned word of this thread's own stack,
                // which is mapped and readable.
                Ok(unsafe { (addr as *const u64).read_volatile() })
            } else {
                Err(())
            }
        };
        let regs = UnwindRegsX86_64::new(ip, sp, bp);
        let mut frames = self
            .unwinder
            .iter_frames(ip, regs, &mut self.cache, &mut read);
        let mut n = 0;
        while n < buf.len() {
            match frames.next() {
                Ok(Some(frame)) => {
                    buf[n] = frame.address() as usize;
                    n += 1;
                }
                _ => break,
            }
        }
        n
    }
}

/// The calling thread's stack, from its lowest to its highest address.
fn thread_stack() -> Range<u64> {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    let (mut addr, mut size) = (std::ptr::null_mut(), 0usize);
    // SAFETY: fills and then reads a thread attribute object of the calling
    // thread, destroyed before returning.
    unsafe {
        assert_eq!(
            libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()),
            0
        );
        libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size);
        libc::pthread_attr_destroy(attr.as_mut_ptr());
    }
    addr as u64..addr as u64 + size as u64
}

unsafe extern "C" fn on_module(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: dl_iterate_phdr passes a valid info and our `data`, the Vec;
    // the program headers are valid during the callback.
    let (info, phdrs, modules) = unsafe {
        let info = &*info;
        let phdrs: &[libc::Elf64_Phdr] = if info.dlpi_phdr.is_null() {
            &[]
        } else {
            std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum))
        };
        (info, phdrs, &mut *data.cast::<Vec<Module<&'static [u8]>>>())
    };
    let bias = info.dlpi_addr;
    let svma = |p: &libc::Elf64_Phdr| p.p_vaddr..p.p_vaddr + p.p_memsz;
    // SAFETY: the range is inside a loaded segment of this module, which
    // stays loaded for the rest of the run (the bench loads, never unloads).
    let bytes = |r: &Range<u64>| unsafe {
        std::slice::from_raw_parts((bias + r.start) as *const u8, (r.end - r.start) as usize)
    };
    let Some(hdr) = phdrs.iter().find(|p| p.p_type == libc::PT_GNU_EH_FRAME) else {
        return 0;
    };
    let Some(text) = phdrs
        .iter()
        .find(|p| p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_X != 0)
    else {
        return 0;
    };
    let (hdr_svma, text_svma) = (svma(hdr), svma(text));
    let hdr_bytes = bytes(&hdr_svma);
    // eh_frame_ptr, encoded pc-relative signed 4 bytes (0x1b), as every
    // module here has it.
    if hdr_bytes.len() < 8 || hdr_bytes[1] != 0x1b {
        return 0;
    }
    let rel = i32::from_le_bytes(hdr_bytes[4..8].try_into().unwrap());
    let eh_frame_start = (hdr_svma.start + 4).wrapping_add_signed(i64::from(rel));
    let Some(segment) = phdrs
        .iter()
        .filter(|p| p.p_type == libc::PT_LOAD)
        .map(svma)
        .find(|s| s.contains(&eh_frame_start))
    else {
        return 0;
    };
    let eh_frame_svma = eh_frame_start..segment.end;
    let name = if info.dlpi_name.is_null() {
        String::new()
    } else {
        // SAFETY: a NUL-terminated string owned by the loader.
        unsafe { CStr::from_ptr(info.dlpi_name) }
            .to_string_lossy()
            .into_owned()
    };
    modules.push(Module::new(
        name,
        bias + text_svma.start..bias + text_svma.end,
        bias,
        ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: Some(text_svma.clone()),
            text: Some(bytes(&text_svma)),
            eh_frame_svma: Some(eh_frame_svma.clone()),
            eh_frame: Some(bytes(&eh_frame_svma)),
            eh_frame_hdr_svma: Some(hdr_svma.clone()),
            eh_frame_hdr: Some(hdr_bytes),
            ..Default::default()
        },
    ));
    0
}
