//! The accuracy workload's call sites, shared by `accuracy` (heapprof) and
//! `accuracy-jemalloc` (jemalloc's profiler): each returns the exact bytes
//! it allocated and keeps in use.

use std::hint::black_box;

/// (allocated, in use) bytes, exact.
pub type Truth = (u64, u64);

pub struct Rng(pub u64);

impl Rng {
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + (self.0 % (hi - lo) as u64) as usize
    }
}

/// 4096 buffers of 4 KiB, kept (16 MiB).
#[inline(never)]
pub fn site_buffers_4k(kept: &mut Vec<Vec<u8>>) -> Truth {
    for _ in 0..4096 {
        kept.push(vec![1u8; 4096]);
    }
    (4096 * 4096, 4096 * 4096)
}

/// 65536 objects of 64 B, kept (4 MiB).
#[inline(never)]
pub fn site_small_64(kept: &mut Vec<Vec<u8>>) -> Truth {
    for _ in 0..65536 {
        kept.push(vec![2u8; 64]);
    }
    (65536 * 64, 65536 * 64)
}

/// 8192 objects of 16 B-8 KiB (uniform), kept (~32 MiB).
#[inline(never)]
pub fn site_mixed_kept(kept: &mut Vec<Vec<u8>>, rng: &mut Rng) -> Truth {
    let mut bytes = 0;
    for _ in 0..8192 {
        let size = rng.range(16, 8193);
        kept.push(vec![3u8; size]);
        bytes += size as u64;
    }
    (bytes, bytes)
}

/// 16384 objects of 1 KiB, every other one freed (16 MiB allocated, 8 kept).
#[inline(never)]
pub fn site_half_freed(kept: &mut Vec<Vec<u8>>) -> Truth {
    for i in 0..16384 {
        let v = vec![4u8; 1024];
        if i % 2 == 0 {
            kept.push(v);
        } else {
            black_box(v);
        }
    }
    (16384 * 1024, 8192 * 1024)
}

/// 64 objects of 100 KiB, kept (6.25 MiB).
#[inline(never)]
pub fn site_large_100k(kept: &mut Vec<Vec<u8>>) -> Truth {
    for _ in 0..64 {
        kept.push(vec![5u8; 100 * 1024]);
    }
    (64 * 100 * 1024, 64 * 100 * 1024)
}

/// 256 MiB in 16 B-64 KiB blocks, all freed.
#[inline(never)]
pub fn site_churn(rng: &mut Rng) -> Truth {
    let total = 256u64 << 20;
    let mut done = 0u64;
    while done < total {
        let size = rng.range(16, 65537).min((total - done) as usize);
        black_box(Vec::<u8>::with_capacity(size));
        done += size as u64;
    }
    (total, 0)
}

pub const SITES: [&str; 6] = [
    "site_buffers_4k",
    "site_small_64",
    "site_mixed_kept",
    "site_half_freed",
    "site_large_100k",
    "site_churn",
];

/// Runs every site; returns the kept objects and the truth, in `SITES` order.
pub fn run_all() -> (Vec<Vec<Vec<u8>>>, [Truth; 6]) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut kept: Vec<Vec<Vec<u8>>> = vec![
        Vec::with_capacity(4096),
        Vec::with_capacity(65536),
        Vec::with_capacity(8192),
        Vec::with_capacity(8192),
        Vec::with_capacity(64),
    ];
    let truth = [
        site_buffers_4k(&mut kept[0]),
        site_small_64(&mut kept[1]),
        site_mixed_kept(&mut kept[2], &mut rng),
        site_half_freed(&mut kept[3]),
        site_large_100k(&mut kept[4]),
        site_churn(&mut rng),
    ];
    (kept, truth)
}

/// Which site a symbol name belongs to.
pub fn site_of(function: &str) -> Option<usize> {
    SITES.iter().position(|s| {
        function.ends_with(&format!("::{s}")) || function.contains(&format!("::{s}::"))
    })
}
