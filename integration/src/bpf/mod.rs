//! eBPF-based checks. The programs are C (`integration/bpf/*.bpf.c`),
//! compiled by `build.rs` with clang and embedded here.

pub mod tracepoints;
pub mod uprobes;

/// `e` and its sources joined with `: `, skipping a source whose text the
/// message already contains (aya's errors often repeat their source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Whether an error text says the kernel refused for lack of privilege.
pub(crate) fn is_permission(text: &str) -> bool {
    text.contains("Operation not permitted") || text.contains("os error 1)")
}
