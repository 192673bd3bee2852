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
        "cmdline",
        "cmdline",
        "The command line invocation of the current program",
    ),
    (
        "heap",
        "heap?debug=1",
        "A sampling of memory allocations of live objects. You can specify the gc GET \
         parameter to release unused allocator memory before taking the heap sample. heapprof \
         adds peak=1 (the heap at its high-water mark) and min_age=60s (only live \
         allocations at least that old); leak suspects are at /debug/heapprof/leaks.",
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
];

/// `GET /debug/pprof/`.
pub(crate) async fn index() -> Html<String> {
    Html(page(heapprof::stats().sites))
}

fn page(sites: usize) -> String {
    let mut rows = String::new();
    let mut descriptions = String::new();
    for (name, link, description) in PROFILES {
        let count = match *name {
            "allocs" | "heap" => sites.to_string(),
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
         {rows}</table>\n<a href='/metrics'>metrics</a> (Prometheus)\n<br>\n\
         <p>\nProfile Descriptions:\n<ul>\n{descriptions}</ul>\n</p>\n</body>\n</html>\n"
    )
}
