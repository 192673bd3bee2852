// Shared by the quickstart example and the verifier-cost bench's
// churn-system program (`include!`d, so that the bench counts the blocks of
// a command the same way for both targets).

/// Allocates and frees `total` bytes in buffers of 16 B to 64 KiB from a
/// xorshift sequence, each freed before the next, the last one cut so that
/// exactly `total` bytes are allocated. Returns the bytes allocated.
#[inline(never)]
fn churn(total: usize) -> usize {
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut done = 0;
    while done < total {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let size = (16 + (rng % 65_521) as usize).min(total - done);
        let buf: Vec<u8> = Vec::with_capacity(size);
        std::hint::black_box(&buf);
        done += size;
    }
    done
}
