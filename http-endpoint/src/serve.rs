//! Serving without tokio: one background thread with its own small
//! current-thread runtime, plus the discovery announcement.

use std::fmt::Debug;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::config::Config;
use crate::discovery::{AnnounceGuard, announce_in};
use crate::error::{Error, Result};

/// Where [`spawn_from_env`] listens when `HEAPPROF_ADDR` is unset
/// (loopback, Go's customary pprof port).
pub const DEFAULT_ADDR: &str = "127.0.0.1:6060";

/// Blocking threads of the server's runtime (profile builds, symbolization,
/// CPU profiles); the build limit keeps most of them idle.
const BLOCKING_THREADS: usize = 8;

/// Serves [`crate::router`] (settings from [`Config::from_env`]) on `addr`
/// from a background thread for the rest of the process's life, and
/// announces it for discovery (when the discovery directory is
/// trusted; otherwise with one warning on stderr). Port 0 picks a free port; the bound
/// address is returned. [`cleanup`] removes the discovery file before a
/// clean exit.
pub fn spawn<A: ToSocketAddrs + Debug>(addr: A) -> Result<SocketAddr> {
    Ok(Config::from_env().spawn(addr)?.detach())
}

/// [`spawn`] on `$HEAPPROF_ADDR`, else [`DEFAULT_ADDR`].
pub fn spawn_from_env() -> Result<SocketAddr> {
    let addr = std::env::var("HEAPPROF_ADDR")
        .ok()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| DEFAULT_ADDR.to_owned());
    spawn(addr.as_str())
}

/// Removes this process's discovery files (from [`spawn`] and
/// [`Server::detach`]) and gops port files ([`crate::gops::listen`]).
/// Call it before a clean exit: Rust runs no destructors for statics. The
/// servers keep serving.
pub fn cleanup() {
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    for server in kept.iter_mut() {
        server.announce.take();
    }
    drop(kept);
    crate::gops::remove_port_files();
}

/// Servers detached for the life of the process.
static KEPT: Mutex<Vec<Kept>> = Mutex::new(Vec::new());

struct Kept {
    _shutdown: oneshot::Sender<()>,
    announce: Option<AnnounceGuard>,
}

/// A running endpoint. Dropping it (or [`Server::shutdown`]) stops
/// accepting, waits for the requests in progress, stops the thread and
/// removes the discovery file; [`Server::detach`] keeps it running.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    announce: Option<AnnounceGuard>,
}

impl Server {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The discovery file, if announced.
    pub fn discovery_file(&self) -> Option<&Path> {
        self.announce.as_ref().map(AnnounceGuard::path)
    }

    /// Stops the server (graceful) and waits for its thread.
    pub fn shutdown(self) {
        drop(self);
    }

    /// Keeps serving for the life of the process; returns the address.
    pub fn detach(mut self) -> SocketAddr {
        if let Some(shutdown) = self.shutdown.take() {
            KEPT.lock().unwrap_or_else(|e| e.into_inner()).push(Kept {
                _shutdown: shutdown,
                announce: self.announce.take(),
            });
        }
        self.thread.take();
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub(crate) fn spawn_with<A: ToSocketAddrs + Debug>(config: Config, addr: A) -> Result<Server> {
    let bind_failed = |e| Error::Bind {
        addr: format!("{addr:?}"),
        source: Arc::new(e),
    };
    let started = |e| Error::Start(Arc::new(e));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name("heapprof-http-worker")
        .build()
        .map_err(started)?;
    let listener = {
        let _context = runtime.enter();
        bind(&addr, config.limits.backlog).map_err(bind_failed)?
    };
    let bound = listener.local_addr().map_err(bind_failed)?;
    if !bound.ip().is_loopback() && config.token.is_none() {
        eprintln!(
            "heapprof-http: serving {bound}, which is not a loopback address, without a \
             token: anyone who can reach it gets heap profiles and the command line; set \
             HEAPPROF_TOKEN to require one"
        );
    }
    let router = config.router();
    let limits = config.limits;
    let (shutdown, stop) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("heapprof-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let stopped = async {
                    let _ = stop.await;
                };
                crate::listener::serve(listener, router, limits, stopped).await;
            });
            runtime.shutdown_timeout(Duration::from_secs(1));
        })
        .map_err(started)?;
    let announce = if config.announce {
        // Serving matters more than being listed: a directory another user
        // controls (or any failure to write) costs the announcement only.
        announce_in(&config.announce_dir(), bound)
            .map_err(|e| {
                eprintln!(
                    "heapprof-http: serving on {bound} without a discovery file \
                     (`heapprof ps` will not list this process): {e}"
                )
            })
            .ok()
    } else {
        None
    };
    Ok(Server {
        addr: bound,
        shutdown: Some(shutdown),
        thread: Some(thread),
        announce,
    })
}

/// Listens on the first address of `addr` that can be bound, with a listen
/// backlog of `backlog` (std's `TcpListener::bind` queues 128), and
/// `SO_REUSEADDR` as std sets it. Must run inside the server's runtime.
fn bind<A: ToSocketAddrs>(addr: &A, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        };
        let listening = socket.and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(a)?;
            s.listen(backlog)
        });
        match listening {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    }))
}
