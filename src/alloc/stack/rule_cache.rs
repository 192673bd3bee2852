//! A lock-free cache of unwind rules by code address, shared by all
//! threads, in front of the table lookup (`table`).
//!
//! Direct-mapped: 4096 slots of one `AtomicU64` each (32 KiB, static). An
//! entry holds the address's key and its rule in one word, so a reader
//! sees either a whole entry or another whole entry, never a torn one, and
//! needs no lock: a hit is one relaxed load. The slot is
//! `(addr ^ addr >> 12) & 4095`, so slot and key (`addr >> 12`) together
//! name the address exactly; the low 12 bits need not be stored.
//!
//! ```text
//!  63            29 28   27 26                   0
//! [ addr >> 12    | generation | the rule's 27 low bits ]
//! ```
//!
//! Only the rules that end in a plain frame step are cached: CFA from
//! `rsp` or `rbp` with an offset below 256 KiB (so that the rule fits in
//! 27 bits), and the outermost frame. Addresses below 4 KiB or above
//! 2^47 are never cached; an empty slot (0) therefore never matches. The
//! generation is that of the table set the rule came from (its low 2
//! bits): after a new set is published, entries from older sets miss, so
//! code that a `dlclose` unmapped and a later `dlopen` replaced is never
//! unwound by the old rules, even by a reader still finishing with the old
//! set.
//!
//! Two hot addresses that share a slot evict each other; a miss costs a
//! table lookup, about 5 ns a frame when warm (BENCHMARKS.md, "Cost of one
//! sample").

use core::sync::atomic::{AtomicU64, Ordering};

use super::table::{Kind, Rule};

const SLOT_BITS: u32 = 12;
const SLOTS: usize = 1 << SLOT_BITS;
const KEY_SHIFT: u32 = 29;
const GENERATION_SHIFT: u32 = 27;
const RULE_MASK: u64 = (1 << GENERATION_SHIFT) - 1;
/// CFA offsets at or above this are not cached.
const OFFSET_LIMIT: u64 = 1 << 18;

type Cache = [AtomicU64; SLOTS];

static CACHE: Cache = [const { AtomicU64::new(0) }; SLOTS];

/// The slot and key of `addr`, or `None` if it is not cacheable.
#[inline(always)]
fn slot_and_key(addr: u64) -> Option<(usize, u64)> {
    let key = addr >> 12;
    if key.wrapping_sub(1) >= (1 << (64 - KEY_SHIFT)) - 1 {
        return None;
    }
    Some((((addr ^ key) as usize) & (SLOTS - 1), key))
}

/// The tag an entry for `key` from table set `generation` carries.
#[inline(always)]
fn tag(key: u64, generation: u32) -> u64 {
    key << KEY_SHIFT | u64::from(generation & 3) << GENERATION_SHIFT
}

/// The cached rule for `addr` from table set `generation`, if any.
#[inline(always)]
pub(super) fn get(addr: u64, generation: u32) -> Option<Rule> {
    get_in(&CACHE, addr, generation)
}

#[inline(always)]
fn get_in(cache: &Cache, addr: u64, generation: u32) -> Option<Rule> {
    let (slot, key) = slot_and_key(addr)?;
    let entry = cache[slot].load(Ordering::Relaxed);
    (entry & !RULE_MASK == tag(key, generation))
        .then(|| Rule::from_bits((entry & RULE_MASK) as u32))
}

/// Remembers `rule` for `addr` if it is one the cache holds.
#[inline(always)]
pub(super) fn put(addr: u64, generation: u32, rule: Rule) {
    put_in(&CACHE, addr, generation, rule);
}

#[inline(always)]
fn put_in(cache: &Cache, addr: u64, generation: u32, rule: Rule) {
    let Some((slot, key)) = slot_and_key(addr) else {
        return;
    };
    let cacheable = match rule.kind() {
        Kind::Root => true,
        Kind::Sp | Kind::Bp => rule.offset() < OFFSET_LIMIT,
        _ => false,
    };
    if cacheable {
        let bits = u64::from(rule.bits());
        cache[slot].store(tag(key, generation) | bits, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_plain_steps_per_generation_and_nothing_else() {
        // A cache of its own: the shared one is in use by other tests.
        let cache: Cache = [const { AtomicU64::new(0) }; SLOTS];
        let get = |addr, generation| get_in(&cache, addr, generation);
        let put = |addr, generation, rule| put_in(&cache, addr, generation, rule);
        let addr = 0x5555_1234_5678;
        let bp = Rule::cfa(true, 16, 2).unwrap();
        put(addr, 7, bp);
        assert_eq!(get(addr, 7), Some(bp));
        assert_eq!(get(addr, 3), Some(bp), "generations are compared mod 4");
        assert_eq!(get(addr, 8), None, "another table set");
        assert_eq!(get(addr + 1, 7), None, "another address");
        assert_eq!(get(addr + (1 << 24), 7), None, "same slot, another key");
        put(addr, 7, Rule::ROOT);
        assert_eq!(get(addr, 7), Some(Rule::ROOT));
        let far = Rule::cfa(false, OFFSET_LIMIT, 0).unwrap();
        for rule in [far, Rule::SIGNAL, Rule::UNSUPPORTED, Rule::NONE] {
            put(addr + 8, 1, rule);
            assert_eq!(get(addr + 8, 1), None, "{rule:?}");
        }
        put(0x10, 0, Rule::ROOT);
        assert_eq!(get(0x10, 0), None, "below 4 KiB");
        assert_eq!(get(1 << 47, 0), None, "beyond 47 bits");
    }
}
