//! `/debug/pprof/`: the index page, laid out like Go's.

use axum::response::Html;

/// (name, link, description) of each profile, in Go's wording where Go has one.
const PROFILES: &[(&str, &str, &str)] = &[
    (
        "allocs",
        "allocs?debug=1",
        "A sampling of all past memory allocations",
    ),
    (
        "block",
        "block?debug=1",
        "Stack traces that led to blocking on synchronization primitives. Always empty \
         here: Rust has no blocking profiler; see goroutine for where threads wait.",
    ),
    (
        "cmdline",
        "cmdline",
        "The command line invocation of the current program",
    ),
    (
        "goroutine",
        "goroutine?debug=1",
        "Stack traces of all current OS threads (a Rust process has threads, not \
         goroutines), with each thread's name. Use debug=2 as a query parameter for one \
         block per thread with its name and state.",
    ),
    (
        "heap",
        "heap?debug=1",
        "A sampling of memory allocations of live objects. You can specify the gc GET \
         parameter to release unused allocator memory before taking the heap sample. heapprof \
         adds peak=1 (the heap at its high-water mark), min_age=60s (only live \
         allocations at least that old) and resident=1 (a resident_space sample type that \
         accounts for the whole RSS); leak suspects are at /debug/heapprof/leaks, the \
         samples behind the estimates at /debug/heapprof/sampling.",
    ),
    (
        "mutex",
        "mutex?debug=1",
        "Stack traces of holders of contended mutexes. Always empty here: Rust's locks \
         record no contention.",
    ),
    (
        "profile",
        "profile",
        "CPU profile. You can specify the duration in the seconds GET parameter. After you \
         get the profile file, use the go tool pprof command to investigate the profile.",
    ),
    (
        "symbol",
        "symbol",
        "Resolves addresses to function names (remote symbolization for go tool pprof).",
    ),
    (
        "threadcreate",
        "threadcreate?debug=1",
        "Stack traces that led to the creation of new OS threads. Always empty here: Rust \
         threads record no creation stack; see goroutine.",
    ),
];

/// `GET /debug/pprof/`.
pub(crate) async fn index() -> Html<String> {
    let threads = heapprof::sys::procfs::self_status().threads;
    Html(page(heapprof::stats().sites, threads))
}

fn page(sites: usize, threads: u64) -> String {
    let mut rows = String::new();
    let mut descriptions = String::new();
    for (name, link, description) in PROFILES {
        let count = match *name {
            "allocs" | "heap" => sites.to_string(),
            "goroutine" => threads.to_string(),
            "block" | "mutex" | "threadcreate" => "0".to_owned(),
            _ => String::new(),
        };
        rows.push_str(&format!(
            "<tr><td>{count}</td><td><a href='{link}'>{name}</a></td></tr>\n"
        ));
        descriptions.push_str(&format!(
            "<li><div class=profile-name>{name}: </div> {description}</li>\n"
        ));
    }
    format!(
        "<html>\n<head>\n<title>/debug/pprof/</title>\n</head>\n<body>\n/debug/pprof/\n\
         <br>\n<p>Set debug=1 as a query parameter to export in legacy text format</p>\n<br>\n\
         Types of profiles available:\n<table>\n<thead><td>Count</td><td>Profile</td></thead>\n\
         {rows}</table>\n<a href='goroutine?debug=2'>full thread stack dump</a>\n<br>\n\
         <a href='/metrics'>metrics</a> (Prometheus)\n<br>\n\
         <p>\nProfile Descriptions:\n<ul>\n{descriptions}</ul>\n</p>\n</body>\n</html>\n"
    )
}
