//! Pushing heap profiles to Grafana Pyroscope, for services nothing scrapes.
//!
//! ```no_run
//! # #[global_allocator]
//! # static ALLOC: heapprof::Profiler<std::alloc::System> =
//! #     heapprof::Profiler::new(std::alloc::System);
//! use std::time::Duration;
//! let _push = heapprof_http::push::PushConfig::new("http://pyroscope:4040", "checkout")
//!     .label("env", "prod")
//!     .interval(Duration::from_secs(15))
//!     .start()?;
//! // ... the service runs; dropping the guard stops pushing ...
//! # Ok::<(), heapprof_http::push::PushError>(())
//! ```
//!
//! # What is sent
//! Every interval, one `POST <url>/ingest` as Pyroscope's ingest API and
//! its Go SDK (pyroscope-go `upstream/remote`) define it:
//! - query `name=<app>{service_name=<app>,k=v,...}`, `from` and `until`
//!   (Unix seconds of the window) and `spyName=heapprof`. Pyroscope names
//!   the series after `service_name`; a `service_name` label given here
//!   replaces the app name there.
//! - body `multipart/form-data` with one part, `profile` (file name
//!   `profile.pprof`): the gzipped profile.proto. There is no `format`
//!   parameter: Pyroscope reads `format=pprof` as "the body *is* the
//!   profile" and only looks for the `profile` part when the format is
//!   absent and the content type is multipart, which is what the Go SDK
//!   sends.
//! - the heap profile with `inuse_*` as they are and `alloc_*` counted
//!   over the window only ([`heapprof::Snapshot::with_allocs_since`]):
//!   Pyroscope adds profiles up over time, so cumulative totals would be
//!   counted again in every push.
//!
//! Pyroscope checks the app name (`[A-Za-z0-9_./-]`, not empty) and label
//! names (`[A-Za-z0-9_.]`, not `__name__`); label values cannot hold `,`,
//! `{`, `}` or `=`, which the `name` syntax reserves. [`PushConfig::start`]
//! refuses what Pyroscope would.
//!
//! # Never in the service's way
//! One background thread (`heapprof-push`) does everything; the service's
//! threads never wait for it. At most one profile exists at a time (built,
//! sent, dropped), plus the snapshot the next window is measured from.
//! Each request has a timeout ([`PushConfig::timeout`], 10 s). A failed
//! push (connection error, timeout, 429 or 5xx) is retried
//! [`PushConfig::retries`] times with doubling backoff from 1 s; after
//! that the window is kept and the next push covers it too, so no
//! allocations go unreported. A 4xx other than 429 is not retried: the
//! request itself is wrong (the server's reason is in
//! [`PushStats::last_error`]).
//!
//! # HTTP client
//! `ureq` without default features: plain `http://`, four crates on top of
//! what axum already brings. The `https` feature adds rustls with the
//! webpki roots (`ring`, nine crates more).

use std::fmt::Write as _;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a push configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The server URL is not `http://host[:port][/path]` (or `https://`).
    #[error("push URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is expected instead.
        reason: String,
    },
    /// The app name or a label would be rejected by Pyroscope.
    #[error("push {what} {value:?}: {reason}")]
    BadName {
        /// `app name`, `label name` or `label value`.
        what: &'static str,
        /// The value as given.
        value: String,
        /// What Pyroscope accepts.
        reason: &'static str,
    },
    /// The push thread could not be started.
    #[error("cannot start the heapprof-push thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Credentials sent with every push.
#[derive(Clone)]
enum Auth {
    Basic { user: String, password: String },
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Basic { user, .. } => write!(f, "Basic({user}, <redacted>)"),
            Auth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// Where and how to push; [`PushConfig::start`] starts pushing.
#[derive(Clone, Debug)]
pub struct PushConfig {
    url: String,
    app_name: String,
    labels: Vec<(String, String)>,
    interval: Duration,
    timeout: Duration,
    retries: u32,
    auth: Option<Auth>,
    tenant_id: Option<String>,
}

impl PushConfig {
    /// Push to the Pyroscope server at `url` (e.g. `http://pyroscope:4040`;
    /// `/ingest` is appended) as `app_name`. Defaults: every 15 s, 10 s
    /// timeout, 3 retries, no labels, no credentials.
    pub fn new(url: impl Into<String>, app_name: impl Into<String>) -> Self {
        PushConfig {
            url: url.into(),
            app_name: app_name.into(),
            labels: Vec::new(),
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
            retries: 3,
            auth: None,
            tenant_id: None,
        }
    }

    /// Adds one label to every pushed profile.
    pub fn label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.push((name.into(), value.into()));
        self
    }

    /// Adds labels to every pushed profile.
    pub fn labels<K: Into<String>, V: Into<String>>(
        mut self,
        labels: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.labels
            .extend(labels.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// How often to push (at least 1 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_secs(1));
        self
    }

    /// How long one request may take, connection included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Retries of a failed push before its window is carried over.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// HTTP basic auth (Grafana Cloud: the stack's user id and a token).
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Some(Auth::Basic {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    /// `Authorization: Bearer <token>`.
    pub fn bearer(mut self, token: impl Into<String>) -> Self {
        self.auth = Some(Auth::Bearer(token.into()));
        self
    }

    /// `X-Scope-OrgID`, for multi-tenant Pyroscope.
    pub fn tenant_id(mut self, tenant: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant.into());
        self
    }

    /// Checks the configuration and starts the `heapprof-push` thread; the
    /// first push happens one interval from now and covers what was
    /// allocated from now on.
    pub fn start(self) -> Result<PushGuard, PushError> {
        let endpoint = ingest_url(&self.url)?;
        let name = series_name(&self.app_name, &self.labels)?;
        let shared = Arc::new(Shared::default());
        // Taken here, not on the thread: the first push covers exactly what
        // was allocated after start() returned.
        let base = heapprof::snapshot();
        let worker = Worker {
            agent: agent(self.timeout),
            endpoint,
            name,
            config: self,
            shared: Arc::clone(&shared),
        };
        let thread = std::thread::Builder::new()
            .name("heapprof-push".into())
            .spawn(move || worker.run(base))
            .map_err(PushError::Spawn)?;
        Ok(PushGuard {
            shared,
            thread: Some(thread),
        })
    }
}

/// What the pusher has done so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PushStats {
    /// Profiles the server accepted.
    pub pushed: u64,
    /// Requests that failed (each retry counts).
    pub failed_attempts: u64,
    /// The latest failure, if any.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<(bool, PushStats)>,
    wake: Condvar,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Sleeps `d` unless stopped first; returns whether stopped.
    fn sleep(&self, d: Duration) -> bool {
        let guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, d, |(stop, _)| !*stop)
            .unwrap_or_else(|e| e.into_inner());
        guard.0
    }

    fn record(&self, outcome: Result<(), String>) {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(()) => guard.1.pushed += 1,
            Err(e) => {
                guard.1.failed_attempts += 1;
                guard.1.last_error = Some(e);
            }
        }
    }
}

/// Pushing runs while this lives. Dropping it asks the thread to stop
/// without waiting (a request in flight ends within its timeout);
/// [`PushGuard::stop`] also waits for it.
pub struct PushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl PushGuard {
    /// Counters so far.
    pub fn stats(&self) -> PushStats {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// Stops pushing and waits for the thread to end (at most one request
    /// timeout).
    pub fn stop(mut self) -> PushStats {
        self.signal_stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.stats()
    }

    fn signal_stop(&self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0 = true;
        self.shared.wake.notify_all();
    }
}

impl Drop for PushGuard {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

impl std::fmt::Debug for PushGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushGuard")
            .field("stats", &self.stats())
            .finish()
    }
}

struct Worker {
    agent: ureq::Agent,
    endpoint: String,
    name: String,
    config: PushConfig,
    shared: Arc<Shared>,
}

impl Worker {
    fn run(self, mut base: heapprof::Snapshot) {
        let mut from = base.time();
        while !self.shared.sleep(self.config.interval) {
            // A push waits for room like any build: skipped now, its
            // window goes into the next one.
            let Ok(admission) = heapprof::admit(heapprof::BuildKind::Heap) else {
                continue;
            };
            let now = heapprof::snapshot();
            let until = SystemTime::now();
            let options = heapprof::PprofOptions::new().symbolize(admission.symbolize());
            let profile = now.with_allocs_since(&base).to_pprof_with(&options);
            drop(admission);
            if self.push_with_retries(&profile, from, until) {
                base = now;
                from = until;
            }
            // Otherwise the window grows: the next push covers this one.
        }
    }

    /// Whether the profile was accepted.
    fn push_with_retries(&self, profile: &[u8], from: SystemTime, until: SystemTime) -> bool {
        let mut backoff = Duration::from_secs(1);
        for attempt in 0..=self.config.retries {
            if attempt > 0 && self.shared.sleep(backoff) {
                return false;
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
            match self.push_once(profile, from, until) {
                Ok(()) => {
                    self.shared.record(Ok(()));
                    return true;
                }
                Err((message, retry)) => {
                    self.shared.record(Err(message));
                    if !retry || self.shared.stopped() {
                        return false;
                    }
                }
            }
        }
        false
    }

    /// One request; the error says whether retrying can help.
    fn push_once(
        &self,
        profile: &[u8],
        from: SystemTime,
        until: SystemTime,
    ) -> Result<(), (String, bool)> {
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let url = format!(
            "{}?name={}&from={}&until={}&spyName=heapprof",
            self.endpoint,
            percent_encode(&self.name),
            secs(from),
            secs(until).max(secs(from)),
        );
        let (content_type, body) = multipart(profile);
        let mut request = self.agent.post(&url).header("Content-Type", content_type);
        match &self.config.auth {
            Some(Auth::Basic { user, password }) => {
                request = request.header(
                    "Authorization",
                    format!("Basic {}", base64(format!("{user}:{password}").as_bytes())),
                );
            }
            Some(Auth::Bearer(token)) => {
                request = request.header("Authorization", format!("Bearer {token}"));
            }
            None => {}
        }
        if let Some(tenant) = &self.config.tenant_id {
            request = request.header("X-Scope-OrgID", tenant);
        }
        match request.send(&body[..]) {
            Ok(mut response) => {
                let status = response.status().as_u16();
                if status == 200 || status == 204 {
                    return Ok(());
                }
                let text = response
                    .body_mut()
                    .with_config()
                    .limit(4096)
                    .read_to_string()
                    .unwrap_or_default();
                let retry = status == 429 || status >= 500;
                Err((format!("{url}: HTTP {status}: {}", text.trim()), retry))
            }
            Err(e) => Err((format!("{url}: {e}"), true)),
        }
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        // Like pyroscope-go: a redirect would drop or leak the credentials.
        .max_redirects(0)
        .user_agent(concat!("heapprof-http/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// `<url>/ingest`, checked.
fn ingest_url(url: &str) -> Result<String, PushError> {
    let bad = |reason: &str| PushError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = if let Some(rest) = url.strip_prefix("http://") {
        rest
    } else if let Some(rest) = url.strip_prefix("https://") {
        if !cfg!(feature = "https") {
            return Err(bad(
                "https:// needs heapprof-http's `https` feature (rustls); or push over http://",
            ));
        }
        rest
    } else {
        return Err(bad("expected http://host[:port][/path]"));
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || rest.contains(['?', '#']) {
        return Err(bad(
            "expected http://host[:port][/path], without query or fragment",
        ));
    }
    Ok(format!("{}/ingest", url.trim_end_matches('/')))
}

/// `app{service_name=app,k=v}`, with the checks Pyroscope's label-set
/// parser applies (`api/model/labelset`).
fn series_name(app: &str, labels: &[(String, String)]) -> Result<String, PushError> {
    let bad = |what, value: &str, reason| PushError::BadName {
        what,
        value: value.to_owned(),
        reason,
    };
    let app_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/');
    if app.is_empty() || !app.chars().all(app_ok) {
        return Err(bad(
            "app name",
            app,
            "must be non-empty and use only A-Z a-z 0-9 _ . - /",
        ));
    }
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if !labels.iter().any(|(k, _)| k == "service_name") {
        pairs.push(("service_name", app));
    }
    for (k, v) in labels {
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'))
        {
            return Err(bad(
                "label name",
                k,
                "must be non-empty and use only A-Z a-z 0-9 _ .",
            ));
        }
        if k == "__name__" {
            return Err(bad("label name", k, "is reserved for the app name"));
        }
        if v.is_empty() || v.contains([',', '{', '}', '=']) {
            return Err(bad(
                "label value",
                v,
                "must be non-empty and cannot contain , { } or =",
            ));
        }
        pairs.push((k, v));
    }
    let mut name = format!("{app}{{");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            name.push(',');
        }
        let _ = write!(name, "{k}={v}");
    }
    name.push('}');
    Ok(name)
}

/// A `multipart/form-data` body with the profile as part `profile`.
fn multipart(profile: &[u8]) -> (String, Vec<u8>) {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()) << 32;
    let mut n = 0u64;
    let boundary = loop {
        let b = format!("heapprof{:016x}{n:04x}", seed.rotate_left(n as u32 * 7));
        if !profile.windows(b.len()).any(|w| w == b.as_bytes()) {
            break b;
        }
        n += 1;
    };
    let mut body = Vec::with_capacity(profile.len() + 256);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"profile\"; \
             filename=\"profile.pprof\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(profile);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Standard base64 with padding (RFC 4648), for basic auth.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_pyroscopes_label_set_rules() {
        assert_eq!(
            series_name("checkout", &[("env".into(), "prod".into())]).unwrap(),
            "checkout{service_name=checkout,env=prod}"
        );
        assert_eq!(
            series_name("ns/app", &[("service_name".into(), "svc".into())]).unwrap(),
            "ns/app{service_name=svc}"
        );
        for (app, labels) in [
            ("", vec![]),
            ("my app", vec![]),
            ("app", vec![("bad-name".to_owned(), "v".to_owned())]),
            ("app", vec![("__name__".to_owned(), "v".to_owned())]),
            ("app", vec![("k".to_owned(), "a,b".to_owned())]),
            ("app", vec![("k".to_owned(), "".to_owned())]),
        ] {
            assert!(series_name(app, &labels).is_err(), "{app} {labels:?}");
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            ingest_url("http://pyroscope:4040").unwrap(),
            "http://pyroscope:4040/ingest"
        );
        assert_eq!(
            ingest_url("http://h/prefix/").unwrap(),
            "http://h/prefix/ingest"
        );
        for bad in ["pyroscope:4040", "ftp://h", "http://", "http://h/?x=1"] {
            assert!(ingest_url(bad).is_err(), "{bad}");
        }
        assert_eq!(
            ingest_url("https://h").is_ok(),
            cfg!(feature = "https"),
            "https needs the feature"
        );
    }

    #[test]
    fn encodings() {
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b""), "");
        assert_eq!(
            percent_encode("app{service_name=app,k=v}"),
            "app%7Bservice_name%3Dapp%2Ck%3Dv%7D"
        );
        let (ct, body) = multipart(b"\x1f\x8bdata");
        let boundary = ct.strip_prefix("multipart/form-data; boundary=").unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with(&format!("--{boundary}\r\n")), "{text}");
        assert!(text.contains("name=\"profile\"; filename=\"profile.pprof\""));
        assert!(text.ends_with(&format!("\r\n--{boundary}--\r\n")));
    }
}
