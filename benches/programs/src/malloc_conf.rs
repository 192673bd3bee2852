//! jemalloc's `malloc_conf`, set at build time: the options string jemalloc
//! reads at initialisation. tikv-jemalloc-sys builds jemalloc with the
//! `_rjem_` prefix, so the symbol is `_rjem_malloc_conf` (the environment
//! variable would be `_RJEM_MALLOC_CONF`, which overrides it).

/// `const char *malloc_conf`.
#[repr(transparent)]
pub struct ConfPtr(pub *const u8);

// SAFETY: only ever points to an immutable static C string.
unsafe impl Sync for ConfPtr {}

/// Exports `_rjem_malloc_conf` pointing to the C string literal given.
macro_rules! malloc_conf {
    ($conf:literal) => {
        #[used]
        #[unsafe(export_name = "_rjem_malloc_conf")]
        pub static MALLOC_CONF: $crate::malloc_conf::ConfPtr =
            $crate::malloc_conf::ConfPtr($conf.as_ptr().cast());
    };
}
pub(crate) use malloc_conf;
