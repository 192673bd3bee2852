//! Fetching from a heapprof endpoint: a minimal HTTP/1.1 GET over
//! `TcpStream` (`Connection: close`, `Content-Length` or chunked bodies),
//! enough for `/debug/pprof/heap` and `/metrics` on localhost.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use heapprof::sys::discovery;

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
    /// The answer was not a 200 or not HTTP.
    #[error("GET http://{addr}{path}: {status}")]
    Status {
        /// Endpoint address.
        addr: String,
        /// Request path.
        path: String,
        /// Status line or parse problem.
        status: String,
    },
    /// The pid has no endpoint.
    #[error(transparent)]
    Discovery(#[from] discovery::DiscoveryError),
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
            Source::Pid(pid) => Some(discovery::find(&discovery::dir(), *pid)?.addr),
            Source::Addr(a) => Some(a.clone()),
            Source::File(_) => None,
        })
    }

    /// The raw heap profile (as served or stored; maybe gzipped).
    pub fn heap_profile(&self, query: &str) -> Result<Vec<u8>, FetchError> {
        match (self, self.addr()?) {
            (_, Some(addr)) => get(&addr, &format!("/debug/pprof/heap{query}")),
            (Source::File(path), None) => std::fs::read(path).map_err(|source| FetchError::File {
                path: path.clone(),
                source,
            }),
            _ => unreachable!("pids and addresses have an address"),
        }
    }
}

/// `GET http://addr/path`; the body of a 200 answer.
pub fn get(addr: &str, path: &str) -> Result<Vec<u8>, FetchError> {
    let io = |source| FetchError::Io {
        addr: addr.to_string(),
        path: path.to_string(),
        source,
    };
    let mut stream = TcpStream::connect(addr).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: heapprof-cli\r\n\
         Accept-Encoding: identity\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    parse_response(&raw).map_err(|status| FetchError::Status {
        addr: addr.to_string(),
        path: path.to_string(),
        status,
    })
}

/// The body of a raw HTTP/1.1 response, or why it is not a 200.
pub fn parse_response(raw: &[u8]) -> Result<Vec<u8>, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("truncated HTTP answer")?;
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
        if body.len() < size + 2 {
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
    }
}
