//! Fetching from a heapprof endpoint: a minimal HTTP/1.1 GET over
//! `TcpStream` (`Connection: close`, `Content-Length` or chunked bodies),
//! enough for `/debug/pprof/heap` and `/metrics`.
//!
//! Every request is bounded, because the other end may be anything a
//! discovery file or a command line named: connecting takes at most
//! [`CONNECT_TIMEOUT`], the whole exchange at most [`Settings::timeout`]
//! (plus the window a `seconds=N` request asks for), and an answer at
//! most [`Settings::max_bytes`]; a server that trickles bytes, stalls or
//! sends too much gets a one-line error. A pid is resolved through its
//! discovery file, which must name a loopback address unless
//! [`Settings::allow_remote`].

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use heapprof::sys::discovery;

/// Longest wait for a TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response head (status line and headers), bytes.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How every request of this run is made (`heapprof --token ...`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Deadline of one whole exchange, beyond any window it asks for.
    pub timeout: Duration,
    /// Largest body accepted, bytes.
    pub max_bytes: u64,
    /// Accept a discovery file that names a non-loopback address.
    pub allow_remote: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            token: None,
            timeout: Duration::from_secs(60),
            max_bytes: 256 << 20,
            allow_remote: false,
        }
    }
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Sets this run's settings; the first call wins.
pub fn configure(settings: Settings) {
    let _ = SETTINGS.set(settings);
}

/// This run's settings.
pub(crate) fn settings() -> &'static Settings {
    SETTINGS.get_or_init(Settings::default)
}

/// Errors of fetching.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Connecting, sending or receiving failed.
    #[error("GET http://{addr}{path}: {source}")]
    Io {
        /// Endpoint address.
        addr: String,
        /// Request path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The answer was not a 200, not HTTP, too large or too slow.
    #[error("GET http://{addr}{path}: {status}")]
    Status {
        /// Endpoint address.
        addr: String,
        /// Request path.
        path: String,
        /// Status line or the problem.
        status: String,
    },
    /// The pid has no endpoint.
    #[error(transparent)]
    Discovery(#[from] discovery::DiscoveryError),
    /// The pid's discovery file names an address off this host.
    #[error(
        "process {pid} announces {addr}, which is not a loopback address; \
         pass --allow-remote to connect to it anyway"
    )]
    Remote {
        /// The process.
        pid: u32,
        /// What its discovery file says.
        addr: String,
    },
    /// A URL that is not `http://HOST:PORT/PATH`.
    #[error("{0}: expected http://HOST:PORT/PATH")]
    Url(String),
    /// A file named on the command line could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What the user named: a pid, an address or a profile file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A process with a discovery file.
    Pid(u32),
    /// `HOST:PORT`.
    Addr(String),
    /// A profile on disk.
    File(String),
}

impl Source {
    /// Digits are a pid, an existing path is a file, `x:port` an address.
    pub fn parse(s: &str) -> Self {
        if let Ok(pid) = s.parse() {
            Source::Pid(pid)
        } else if Path::new(s).exists() {
            Source::File(s.to_string())
        } else if let Some(rest) = s.strip_prefix("http://") {
            Source::Addr(rest.trim_end_matches('/').to_string())
        } else if s
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            Source::Addr(s.to_string())
        } else {
            Source::File(s.to_string())
        }
    }

    /// The endpoint address, for pids and addresses.
    pub fn addr(&self) -> Result<Option<String>, FetchError> {
        Ok(match self {
            Source::Pid(pid) => Some(endpoint_of(*pid)?),
            Source::Addr(a) => Some(a.clone()),
            Source::File(_) => None,
        })
    }

    /// The raw heap profile (as served or stored; maybe gzipped), at most
    /// [`Settings::max_bytes`].
    pub fn heap_profile(&self, query: &str) -> Result<Vec<u8>, FetchError> {
        match (self, self.addr()?) {
            (_, Some(addr)) => get(&addr, &format!("/debug/pprof/heap{query}")),
            (Source::File(path), None) => read_file(path),
            _ => unreachable!("pids and addresses have an address"),
        }
    }
}

/// The address process `pid` announces, if it is one this run may use.
pub fn endpoint_of(pid: u32) -> Result<String, FetchError> {
    let a = discovery::find(&discovery::dir(), pid)?;
    if !a.is_loopback() && !settings().allow_remote {
        return Err(FetchError::Remote { pid, addr: a.addr });
    }
    Ok(a.addr)
}

fn read_file(path: &str) -> Result<Vec<u8>, FetchError> {
    let failed = |source| FetchError::File {
        path: path.to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(failed)?;
    let max = settings().max_bytes;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).map_err(failed)?;
    if bytes.len() as u64 > max {
        return Err(failed(std::io::Error::other(format!(
            "larger than {} MiB (raise with --max-bytes)",
            max >> 20
        ))));
    }
    Ok(bytes)
}

/// `GET http://addr/path`; the body of a 200 answer. A `seconds=N` query
/// extends the deadline by N seconds.
pub fn get(addr: &str, path: &str) -> Result<Vec<u8>, FetchError> {
    let s = settings();
    let deadline = Instant::now() + s.timeout + window_of(path);
    let io = |source| FetchError::Io {
        addr: addr.to_string(),
        path: path.to_string(),
        source,
    };
    let status = |status: String| FetchError::Status {
        addr: addr.to_string(),
        path: path.to_string(),
        status,
    };
    let mut stream = connect(addr).map_err(io)?;
    let auth = s
        .token
        .as_deref()
        .map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: heapprof-cli\r\n\
         Accept-Encoding: identity\r\n{auth}Connection: close\r\n\r\n"
    );
    stream
        .set_write_timeout(Some(CONNECT_TIMEOUT))
        .map_err(io)?;
    stream.write_all(request.as_bytes()).map_err(io)?;
    let limit = s.max_bytes + MAX_HEAD_BYTES as u64;
    let raw = read_until(&mut stream, deadline, limit, s.timeout + window_of(path)).map_err(
        |e| match e {
            ReadError::Io(e) => io(e),
            ReadError::Limit(n) => status(format!(
                "answer larger than {} MiB (raise with --max-bytes)",
                n >> 20
            )),
            ReadError::Deadline(d) => status(format!(
                "no complete answer within {} s (raise with --timeout)",
                d.as_secs()
            )),
        },
    )?;
    parse_response(&raw).map_err(status)
}

/// The `seconds=N` of a request path: the server answers after N seconds.
fn window_of(path: &str) -> Duration {
    let query = path.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("seconds="))
        .and_then(|n| n.parse::<u64>().ok())
        .map_or(Duration::ZERO, |n| Duration::from_secs(n.min(3600)))
}

fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address")))
}

enum ReadError {
    Io(std::io::Error),
    Limit(u64),
    Deadline(Duration),
}

/// Reads to EOF, failing past `deadline` or beyond `limit` bytes.
fn read_until(
    stream: &mut TcpStream,
    deadline: Instant,
    limit: u64,
    allowed: Duration,
) -> Result<Vec<u8>, ReadError> {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Deadline(allowed));
        }
        stream
            .set_read_timeout(Some(left.min(Duration::from_secs(5))))
            .map_err(ReadError::Io)?;
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(raw),
            Ok(n) => {
                if (raw.len() + n) as u64 > limit {
                    return Err(ReadError::Limit(limit));
                }
                raw.extend_from_slice(&chunk[..n]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

/// The body of a raw HTTP/1.1 response, or why it is not a 200.
pub fn parse_response(raw: &[u8]) -> Result<Vec<u8>, String> {
    let split = raw
        .windows(4)
        .take(MAX_HEAD_BYTES)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("truncated or oversized HTTP answer head")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        let reason = String::from_utf8_lossy(&body[..body.len().min(200)]);
        return Err(format!("{status}: {}", reason.trim()));
    }
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return dechunk(body);
    }
    match header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        Some(n) if n <= body.len() => Ok(body[..n].to_vec()),
        Some(n) => Err(format!("body truncated: {} of {n} bytes", body.len())),
        None => Ok(body.to_vec()),
    }
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk header")?;
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size.saturating_add(2) {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(Source::parse("1234"), Source::Pid(1234));
        assert_eq!(
            Source::parse("127.0.0.1:6060"),
            Source::Addr("127.0.0.1:6060".into())
        );
        assert_eq!(
            Source::parse("http://localhost:6060/"),
            Source::Addr("localhost:6060".into())
        );
        assert_eq!(
            Source::parse("heap.pb.gz"),
            Source::File("heap.pb.gz".into())
        );
    }

    #[test]
    fn responses() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_response(ok).unwrap(), b"hello");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), b"hello world");
        let bad = b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope";
        assert!(parse_response(bad).unwrap_err().contains("404"));
        assert!(parse_response(b"garbage").is_err());
        let huge_chunk =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nx";
        assert!(parse_response(huge_chunk).is_err());
    }

    #[test]
    fn windows_extend_the_deadline() {
        assert_eq!(window_of("/debug/pprof/heap"), Duration::ZERO);
        assert_eq!(
            window_of("/debug/pprof/heap?gc=1&seconds=10"),
            Duration::from_secs(10)
        );
        assert_eq!(window_of("/x?seconds=99999"), Duration::from_secs(3600));
    }
}
