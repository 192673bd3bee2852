//! `heapprof_http::push` against a loopback receiver that checks what
//! Pyroscope's `/ingest` checks (`pkg/ingester/pyroscope/ingest_handler.go`,
//! `api/model/labelset`, `pkg/og/convert/pprof/profile.go`): the `name`
//! label set, `from`/`until`, the dispatch on `format` and the content
//! type, the multipart part `profile`, a profile that decodes; plus the
//! credentials. The first request gets a 503 to exercise the retry, and the
//! received profile must satisfy `go tool pprof -raw`.

mod common;

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::*;
use heapprof_http::push::PushConfig;

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

const TOKEN: &str = "push-test-token";

#[inline(never)]
fn push_test_retain() -> Vec<Box<[u8]>> {
    (0..64)
        .map(|_| vec![1u8; 64 * 1024].into_boxed_slice())
        .collect()
}

/// What the receiver saw: accepted profiles and refusals.
#[derive(Default)]
struct Seen {
    requests: usize,
    accepted: Vec<(HashMap<String, String>, Vec<u8>)>,
    refused: Vec<String>,
}

type Shared = Arc<Mutex<Seen>>;

fn query_map(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() + 1 {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Pyroscope's label-set parse of `name`: `app{k=v,...}`, app name in
/// `[A-Za-z0-9_./-]`, label names in `[A-Za-z0-9_.]`, not `__name__`.
fn check_name(name: &str) -> Result<HashMap<String, String>, String> {
    let (app, rest) = name.split_once('{').ok_or("no label set")?;
    let labels = rest.strip_suffix('}').ok_or("label set not closed")?;
    let app_ok = |c: char| c.is_ascii_alphanumeric() || "_./-".contains(c);
    if app.is_empty() || !app.chars().all(app_ok) {
        return Err(format!("invalid service name {app:?}"));
    }
    let mut out = HashMap::new();
    for pair in labels.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or("label without =")?;
        if k.is_empty()
            || k == "__name__"
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.".contains(c))
        {
            return Err(format!("invalid label name {k:?}"));
        }
        out.insert(k.to_owned(), v.to_owned());
    }
    out.insert("__name__".into(), app.to_owned());
    Ok(out)
}

/// The `profile` part of a multipart body.
fn profile_part(content_type: &str, body: &[u8]) -> Result<Vec<u8>, String> {
    let boundary = content_type
        .strip_prefix("multipart/form-data; boundary=")
        .ok_or_else(|| format!("not multipart: {content_type}"))?;
    let delimiter = format!("--{boundary}");
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let mut at = find(body, delimiter.as_bytes(), 0).ok_or("no first boundary")?;
    loop {
        let head_start = at + delimiter.len() + 2;
        let head_end = find(body, b"\r\n\r\n", head_start).ok_or("no part header end")?;
        let head = String::from_utf8_lossy(&body[head_start..head_end]).into_owned();
        let next = find(body, format!("\r\n{delimiter}").as_bytes(), head_end)
            .ok_or("part not terminated")?;
        if head.contains("name=\"profile\"") {
            return Ok(body[head_end + 4..next].to_vec());
        }
        at = next + 2;
        if body[at + delimiter.len()..].starts_with(b"--") {
            return Err("no part named profile".into());
        }
    }
}

fn check(
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(HashMap<String, String>, Vec<u8>), String> {
    let q = query_map(query);
    let labels = check_name(q.get("name").ok_or("no name")?)?;
    let secs = |k: &str| -> Result<u64, String> {
        q.get(k)
            .ok_or(format!("no {k}"))?
            .parse()
            .map_err(|e| format!("{k}: {e}"))
    };
    let (from, until) = (secs("from")?, secs("until")?);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if from > until || until > now + 5 || now - from > 3600 {
        return Err(format!("window {from}..{until} at {now}"));
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {TOKEN}") {
        return Err(format!("authorization {auth:?}"));
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Pyroscope: format=pprof means the body is the profile itself; the
    // multipart `profile` part is only read without a format.
    if q.contains_key("format") {
        return Err(format!("format={} with a multipart body", q["format"]));
    }
    let profile = profile_part(content_type, body)?;
    if profile.get(..2) != Some(&[0x1f, 0x8b][..]) {
        return Err("profile is not gzip".into());
    }
    let p = decode(&profile);
    if p.sample_type.is_empty() {
        return Err("no sample types".into());
    }
    let mut labels = labels;
    labels.insert("from".into(), from.to_string());
    Ok((labels, profile))
}

async fn ingest(
    State(seen): State<Shared>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let mut seen = seen.lock().unwrap();
    seen.requests += 1;
    if seen.requests == 1 {
        return (StatusCode::SERVICE_UNAVAILABLE, "warming up".into());
    }
    match check(query.as_deref().unwrap_or(""), &headers, &body) {
        Ok(accepted) => {
            seen.accepted.push(accepted);
            (StatusCode::OK, String::new())
        }
        Err(reason) => {
            seen.refused.push(reason.clone());
            (StatusCode::BAD_REQUEST, reason)
        }
    }
}

/// Values of `sample_type` for samples whose stack names `function`.
fn site_value(profile: &[u8], function: &str, sample_type: &str) -> i64 {
    let p = decode(profile);
    let s = |i: i64| p.string_table[i as usize].as_str();
    let index = p
        .sample_type
        .iter()
        .position(|t| s(t.ty) == sample_type)
        .unwrap();
    let names: HashMap<u64, &str> = p.function.iter().map(|f| (f.id, s(f.name))).collect();
    let locations: HashMap<u64, Vec<&str>> = p
        .location
        .iter()
        .map(|l| (l.id, l.line.iter().map(|x| names[&x.function_id]).collect()))
        .collect();
    p.sample
        .iter()
        .filter(|sample| {
            sample
                .location_id
                .iter()
                .any(|id| locations[id].iter().any(|n| n.ends_with(function)))
        })
        .map(|sample| sample.value[index])
        .sum()
}

/// One test: the pusher reads the process-wide profiler.
#[test]
fn pushes_valid_pyroscope_ingest_requests_and_retries() {
    heapprof::set_sample_rate(64 * 1024);
    let seen: Shared = Arc::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/ingest", post(ingest))
        .with_state(Arc::clone(&seen));
    rt.spawn(async move { axum::serve(listener, app).await });

    let refused = PushConfig::new(format!("http://{addr}"), "bad name").start();
    assert!(refused.is_err(), "Pyroscope refuses spaces in app names");

    let guard = PushConfig::new(format!("http://{addr}"), "heapprof-push-test")
        .label("env", "test")
        .interval(Duration::from_secs(1))
        .bearer(TOKEN)
        .start()
        .unwrap();
    let kept = black_box(push_test_retain());

    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().accepted.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "fewer than 2 pushes accepted in 30 s: {:?}, refused {:?}",
            guard.stats(),
            seen.lock().unwrap().refused
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let stopping = Instant::now();
    let stats = guard.stop();
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        stopping.elapsed()
    );
    let seen = seen.lock().unwrap();
    assert!(seen.refused.is_empty(), "refused: {:?}", seen.refused);
    assert!(stats.pushed >= 2, "{stats:?}");
    assert!(stats.failed_attempts >= 1, "the 503 counts: {stats:?}");
    assert!(
        stats.last_error.as_deref().unwrap_or("").contains("503"),
        "{stats:?}"
    );

    let (labels, first) = &seen.accepted[0];
    assert_eq!(labels["__name__"], "heapprof-push-test");
    assert_eq!(labels["service_name"], "heapprof-push-test");
    assert_eq!(labels["env"], "test");
    let raw = pprof_raw("pushed", first);
    assert!(raw.contains("inuse_space/bytes"), "{raw}");
    assert!(raw.contains("push_test_retain"), "{raw}");
    // The first window saw the 4 MiB allocated; the next one allocated
    // nothing there, but the 4 MiB are still in use.
    let (_, second) = &seen.accepted[1];
    assert!(site_value(first, "push_test_retain", "alloc_space") >= 2 << 20);
    assert_eq!(site_value(second, "push_test_retain", "alloc_space"), 0);
    assert!(site_value(second, "push_test_retain", "inuse_space") >= 2 << 20);
    assert!(labels["from"].parse::<u64>().unwrap() > 0);
    drop(kept);
}
