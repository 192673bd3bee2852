//! The gops agent protocol, so `gops stack|memstats|pprof-heap|stats|version <pid>`
//! works against a Rust process.
//!
//! The protocol (google/gops `signal`, `agent`, `internal`): the agent
//! listens on loopback TCP and writes its port, as decimal text, to
//! `<config dir>/<pid>`; the config dir is `$GOPS_CONFIG_DIR`, else
//! `$XDG_CONFIG_HOME/gops`, else `$HOME/.config/gops`. A client connects,
//! sends one signal byte, reads the answer until the agent closes.
//!
//! Answered here: 0x1 StackTrace (every OS thread's stack, as
//! `/debug/pprof/goroutine?debug=2` writes it), 0x2 GC (purges jemalloc,
//! answers `ok`), 0x3 MemStats, 0x4 Version, 0x5 HeapProfile (gzipped
//! pprof), 0x6 CPUProfile (30 s, gzipped pprof), 0x7 Stats, and, only when
//! enabled ([`Agent::binary_dump`]), 0x9 BinaryDump (`/proc/self/exe`).
//! Others get a one-line explanation. Connections are served one at a time
//! on one thread, so the agent runs at most one profile build at once, and
//! each build is admitted against the memory left like the endpoint's.
//!
//! # Access
//! The protocol has no authentication: any local user who can connect to
//! the port gets the answers. With `HEAPPROF_TOKEN` set (the endpoint then
//! requires it), the agent therefore stays off unless
//! [`Agent::allow_unauthenticated`] says otherwise.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};

/// Signal bytes of the gops protocol.
mod signal {
    pub const STACK_TRACE: u8 = 0x1;
    pub const GC: u8 = 0x2;
    pub const MEM_STATS: u8 = 0x3;
    pub const VERSION: u8 = 0x4;
    pub const HEAP_PROFILE: u8 = 0x5;
    pub const CPU_PROFILE: u8 = 0x6;
    pub const STATS: u8 = 0x7;
    pub const BINARY_DUMP: u8 = 0x9;
}

/// gops' CPU profile window.
const CPU_WINDOW: Duration = Duration::from_secs(30);

/// Port files written by this process, removed by [`crate::cleanup`].
static PORT_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Starts the agent with the default config dir ([`config_dir`]); returns
/// the loopback address it listens on.
pub fn listen() -> Result<SocketAddr> {
    Agent::new().listen()
}

/// gops' config dir: `$GOPS_CONFIG_DIR`, else `$XDG_CONFIG_HOME/gops`, else
/// `$HOME/.config/gops`; `None` without any of them.
pub fn config_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    var("GOPS_CONFIG_DIR")
        .map(PathBuf::from)
        .or_else(|| var("XDG_CONFIG_HOME").map(|d| PathBuf::from(d).join("gops")))
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".config").join("gops")))
}

/// A gops agent to start; [`listen`] is `Agent::new().listen()`.
#[derive(Clone, Debug, Default)]
pub struct Agent {
    config_dir: Option<PathBuf>,
    allow_unauthenticated: bool,
    binary_dump: bool,
}

impl Agent {
    /// An agent writing its port file to [`config_dir`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Write the port file to `dir` instead.
    pub fn config_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config_dir = Some(dir.into());
        self
    }

    /// Start even though `HEAPPROF_TOKEN` is set (default no): every local
    /// user who can connect gets heap profiles and statistics.
    pub fn allow_unauthenticated(mut self, yes: bool) -> Self {
        self.allow_unauthenticated = yes;
        self
    }

    /// Answer gops' BinaryDump with the executable (default no: a local
    /// user gets a copy of the binary).
    pub fn binary_dump(mut self, yes: bool) -> Self {
        self.binary_dump = yes;
        self
    }

    /// Listens on `127.0.0.1:0`, writes the port file `<dir>/<pid>` and
    /// serves connections from a background thread for the life of the
    /// process. Returns the bound address.
    ///
    /// Refuses ([`Error::Insecure`]) when `HEAPPROF_TOKEN` is set, unless
    /// [`Agent::allow_unauthenticated`].
    pub fn listen(self) -> Result<SocketAddr> {
        if crate::Config::from_env().token.is_some() && !self.allow_unauthenticated {
            return Err(Error::Insecure(
                "HEAPPROF_TOKEN is set, and the gops protocol has no authentication: the \
                 agent stays off (Agent::allow_unauthenticated(true) starts it anyway)"
                    .into(),
            ));
        }
        let binary_dump = self.binary_dump;
        let dir = self
            .config_dir
            .or_else(config_dir)
            .ok_or_else(|| Error::Write {
                path: PathBuf::from("$HOME/.config/gops"),
                source: Arc::new(std::io::Error::other(
                    "no gops config dir: set GOPS_CONFIG_DIR, XDG_CONFIG_HOME or HOME",
                )),
            })?;
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::Bind {
            addr: "127.0.0.1:0".into(),
            source: Arc::new(e),
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Start(Arc::new(e)))?;
        let port_file = write_port_file(&dir, addr.port())?;
        std::thread::Builder::new()
            .name("heapprof-gops".into())
            .spawn(move || serve(listener, binary_dump))
            .map_err(|e| {
                let _ = std::fs::remove_file(&port_file);
                Error::Start(Arc::new(e))
            })?;
        Ok(addr)
    }
}

/// Writes `<dir>/<pid>` privately, without following symlinks
/// (`heapprof::sys::files`).
fn write_port_file(dir: &Path, port: u16) -> Result<PathBuf> {
    use heapprof::sys::files;
    let failed = |e: files::FileError| Error::Write {
        path: dir.to_owned(),
        source: Arc::new(std::io::Error::other(e)),
    };
    files::create_private_dir(dir).map_err(failed)?;
    let path = files::write_atomically(
        dir,
        &std::process::id().to_string(),
        port.to_string().as_bytes(),
    )
    .map_err(failed)?;
    PORT_FILES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(path.clone());
    Ok(path)
}

pub(crate) fn remove_port_files() {
    for path in PORT_FILES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(..)
    {
        let _ = std::fs::remove_file(path);
    }
}

fn serve(listener: TcpListener, binary_dump: bool) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        // A client that connects and says nothing must not wedge the agent.
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(30)));
        let mut signal = [0u8; 1];
        if conn.read_exact(&mut signal).is_err() {
            continue;
        }
        if let Err(e) = answer(&mut conn, signal[0], binary_dump) {
            eprintln!(
                "heapprof gops agent: answering signal {:#x}: {e}",
                signal[0]
            );
        }
    }
}

fn answer(conn: &mut TcpStream, signal: u8, binary_dump: bool) -> std::io::Result<()> {
    match signal {
        signal::GC => {
            #[cfg(feature = "jemalloc")]
            crate::jemalloc::purge();
            conn.write_all(b"ok")
        }
        signal::MEM_STATS => conn.write_all(mem_stats().as_bytes()),
        signal::VERSION => conn.write_all(version().as_bytes()),
        signal::HEAP_PROFILE => match heapprof::admit(heapprof::BuildKind::Heap) {
            Ok(admission) => {
                let options = heapprof::PprofOptions::new().symbolize(admission.symbolize());
                conn.write_all(&heapprof::snapshot().to_pprof_with(&options))
            }
            Err(e) => conn.write_all(format!("heapprof: {e}\n").as_bytes()),
        },
        signal::CPU_PROFILE => match crate::cpu::profile(CPU_WINDOW) {
            Ok(profile) => conn.write_all(&profile),
            Err(e) => conn.write_all(format!("{e}\n").as_bytes()),
        },
        signal::STATS => conn.write_all(stats().as_bytes()),
        signal::BINARY_DUMP if binary_dump => {
            let mut exe = std::fs::File::open("/proc/self/exe")?;
            std::io::copy(&mut exe, conn).map(drop)
        }
        signal::BINARY_DUMP => conn.write_all(
            b"heapprof: BinaryDump is off (heapprof_http::gops::Agent::binary_dump(true) turns it on)\n",
        ),
        signal::STACK_TRACE => match heapprof::admit(heapprof::BuildKind::Threads) {
            Ok(_admission) => {
                conn.write_all(heapprof::thread_dump().to_text_per_thread().as_bytes())
            }
            Err(e) => conn.write_all(format!("heapprof: {e}\n").as_bytes()),
        },
        other => conn.write_all(
            format!("heapprof: gops signal {other:#x} is not supported by this agent\n").as_bytes(),
        ),
    }
}

/// heapprof-http's version, a line.
pub(crate) fn version() -> String {
    format!("heapprof-http {} (Rust)\n", env!("CARGO_PKG_VERSION"))
}

/// gops' `memstats`, in its `name: value bytes` layout, with heapprof's
/// estimates and (feature `jemalloc`) jemalloc's counters.
pub(crate) fn mem_stats() -> String {
    let snapshot = heapprof::snapshot();
    let totals = snapshot.totals();
    let stats = snapshot.stats();
    let mut lines = vec![
        format!("heapprof-inuse: {} bytes", totals.inuse_bytes),
        format!("heapprof-inuse-objects: {}", totals.inuse_objects),
        format!("heapprof-total-alloc: {} bytes", totals.alloc_bytes),
        format!("heapprof-total-alloc-objects: {}", totals.alloc_objects),
        format!("heapprof-sample-rate: {} bytes", stats.sample_rate),
        format!("heapprof-own-memory: {} bytes", stats.own_memory_bytes),
        format!("heapprof-unwinder: {}", stats.unwinder.as_str()),
    ];
    #[cfg(feature = "jemalloc")]
    if let Some(j) = crate::jemalloc::stats() {
        lines.extend([
            format!("jemalloc-allocated: {} bytes", j.allocated),
            format!("jemalloc-active: {} bytes", j.active),
            format!("jemalloc-resident: {} bytes", j.resident),
            format!("jemalloc-mapped: {} bytes", j.mapped),
            format!("jemalloc-retained: {} bytes", j.retained),
            format!("jemalloc-metadata: {} bytes", j.metadata),
        ]);
    }
    let rss = heapprof::sys::procfs::self_status().vm_rss;
    if rss > 0 {
        lines.push(format!("rss: {rss} bytes"));
    }
    lines.join("\n") + "\n"
}

/// gops' `stats`: threads and CPUs, plus the profiler's bounds.
pub(crate) fn stats() -> String {
    let stats = heapprof::stats();
    let threads = heapprof::sys::procfs::self_status().threads;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "OS threads: {threads}\nnum CPU: {cpus}\nheapprof sites: {} of {}\n\
         heapprof live samples: {} of {}\nheapprof dropped samples: {}\n",
        stats.sites,
        stats.max_sites,
        stats.live_samples,
        stats.live_capacity,
        stats.dropped_samples
    )
}
