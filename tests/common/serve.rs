//! Running an example as a real service: spawn it with `--serve
//! 127.0.0.1:0`, learn its address from its `listening on` line, talk HTTP
//! to it, and kill it when the test ends, whatever happens.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running example; killed on drop.
pub struct Service {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Service {
    /// Starts example `name` with `args` (which must make it print
    /// `listening on http://ADDR`) and `env`.
    pub fn start(name: &str, args: &[&str], env: &[(&str, &str)]) -> Service {
        let mut cmd = Command::new(super::example(name));
        cmd.args(args).envs(env.iter().copied());
        Service::spawn(cmd, &format!("example {name}"))
    }

    /// Runs `cmd`, which must print `listening on http://ADDR`; `what`
    /// names it in panics.
    pub fn spawn(cmd: Command, what: &str) -> Service {
        Service::spawn_with(cmd, what, |_| {})
    }

    /// [`Service::spawn`], calling `started` with the process as soon as it
    /// runs, before it listens (its pid is known; what `cmd` piped besides
    /// stdout, e.g. stdin or stderr, is there to take).
    pub fn spawn_with(mut cmd: Command, what: &str, started: impl FnOnce(&mut Child)) -> Service {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        started(&mut child);
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.strip_prefix("listening on http://") {
                        break rest.trim().parse().expect("an address");
                    }
                }
                _ => {
                    let _ = child.kill();
                    let status = child.wait();
                    panic!("{what} exited before it listened: {status:?}");
                }
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Service { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// GET `path`; returns (status, body).
    pub fn get(&self, path: &str) -> (u16, Vec<u8>) {
        http_get(self.addr, path)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET (Connection: close); returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    http_get_with(addr, path, &[])
}

/// [`http_get`] with extra request headers.
pub fn http_get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.trim(), 16).unwrap_or(0);
        if size == 0 || data.len() < eol + 4 + size {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

/// heapprof-http on a loopback port of its own thread, without a discovery
/// file; returns its address.
pub fn spawn_endpoint() -> SocketAddr {
    heapprof_http::Config::new()
        .announce(false)
        .spawn("127.0.0.1:0")
        .unwrap()
        .detach()
}

/// Threads named `<name>-<i>`, each running `park` until released.
pub struct Parked {
    senders: Vec<std::sync::mpsc::Sender<()>>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Parked {
    /// Starts `n` threads with `stack_size` bytes of stack (the default
    /// when `None`), each calling `park` with the receiver that
    /// [`Parked::release`] sends to.
    pub fn start(
        n: usize,
        name: &str,
        stack_size: Option<usize>,
        park: fn(std::sync::mpsc::Receiver<()>),
    ) -> Parked {
        let mut parked = Parked {
            senders: Vec::new(),
            handles: Vec::new(),
        };
        for i in 0..n {
            let (tx, rx) = std::sync::mpsc::channel();
            parked.senders.push(tx);
            let mut builder = std::thread::Builder::new().name(format!("{name}-{i}"));
            if let Some(bytes) = stack_size {
                builder = builder.stack_size(bytes);
            }
            parked
                .handles
                .push(builder.spawn(move || park(rx)).unwrap());
        }
        parked
    }

    /// Lets every thread return and joins it.
    pub fn release(self) {
        for tx in self.senders {
            tx.send(()).unwrap();
        }
        for h in self.handles {
            h.join().unwrap();
        }
    }
}
