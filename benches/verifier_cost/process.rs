//! The processes of the verifier-cost bench: a tool attached to a target
//! (`heapprof verify`, `memleak-bpfcc`), and a target that serves heapprof
//! and churns on command.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A tool attached to the target: stdout collected whole, stderr line by
/// line (to see when it attached). Killed if dropped while running.
pub struct Tool {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Receiver<String>,
    stderr_seen: Vec<String>,
}

impl Tool {
    pub fn spawn(mut cmd: Command) -> Result<Tool, String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
        let mut out = child.stdout.take().expect("piped stdout");
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut out, &mut s);
            s
        });
        let err = child.stderr.take().expect("piped stderr");
        let (tx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Tool {
            child,
            stdout: Some(stdout),
            stderr,
            stderr_seen: Vec::new(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until stderr shows a line containing `needle`.
    pub fn wait_stderr(&mut self, needle: &str, timeout: Duration) -> Result<(), String> {
        let end = Instant::now() + timeout;
        loop {
            match self
                .stderr
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stderr_seen.push(line);
                    if found {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("no \"{needle}\" within {timeout:?}"));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "exited before \"{needle}\": {}",
                        self.stderr_tail()
                    ));
                }
            }
        }
    }

    /// Polls `ready` every 10 ms until it holds.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut(u32) -> bool,
    ) -> Result<(), String> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if ready(self.pid()) {
                return Ok(());
            }
            if self.exited() {
                self.drain_stderr();
                return Err(format!("exited before {what}: {}", self.stderr_tail()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!("not {what} within {timeout:?}"))
    }

    fn drain_stderr(&mut self) {
        // The reader thread ends at EOF, once the process has exited.
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(2)) {
            self.stderr_seen.push(line);
        }
    }

    /// What went wrong, from stderr: the first Python exception (bcc adds
    /// an unrelated one when it exits, see [`crate::ATTACH_ATTEMPTS`]) or
    /// heapprof's error, else the last line.
    fn stderr_tail(&self) -> String {
        self.stderr_seen
            .iter()
            .find(|l| l.starts_with("Exception") || l.starts_with("heapprof:"))
            .or(self.stderr_seen.last())
            .cloned()
            .unwrap_or_default()
    }

    /// Waits for the exit (killing it after `timeout`); returns the status
    /// (`None`: killed), stdout and the last lines of stderr.
    pub fn finish(mut self, timeout: Duration) -> (Option<ExitStatus>, String, String) {
        let end = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        self.drain_stderr();
        let out = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (status, out, self.stderr_tail())
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        if !self.exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A process of ours serving heapprof: quickstart (with `--commands`),
/// churn-system or stealth_leak. Killed when dropped.
pub struct Target {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// `frame_pointers=` from a line before the readiness line
    /// (quickstart's truth line, churn-system's first line).
    pub frame_pointers: Option<bool>,
}

impl Target {
    pub fn spawn(mut cmd: Command) -> Target {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut t = Target {
            child,
            stdin,
            stdout,
            frame_pointers: None,
        };
        loop {
            let line = t.line();
            if let Some(fp) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("frame_pointers="))
            {
                t.frame_pointers = Some(fp == "1");
            }
            if line.starts_with("listening on http://") {
                return t;
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).expect("read the target");
        assert!(n > 0, "the target exited");
        line
    }

    /// Has the target churn `bytes`; returns how long it took.
    pub fn churn(&mut self, bytes: u64) -> Duration {
        let start = Instant::now();
        let stdin = self.stdin.as_mut().expect("target stdin");
        writeln!(stdin, "churn {bytes}").expect("write to the target");
        stdin.flush().expect("write to the target");
        let answer = self.line();
        let elapsed = start.elapsed();
        assert_eq!(answer.trim(), format!("done {bytes}"), "unexpected answer");
        elapsed
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
