//! `heapprof`: the command-line face of heapprof-cli.

mod cli;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use heapprof_cli::fetch::Source;
use heapprof_cli::report::bytes;
use heapprof_cli::{discovery, procfs, profile, verify};

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("heapprof: {}", heapprof_cli::bpf::error_chain(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Ps { json } => ps(json)?,
        Command::PprofHeap { target, output } => pprof_heap(&target, output)?,
        Command::Top {
            source,
            count,
            sample,
        } => top(&source, count, &sample)?,
        Command::Diff {
            old,
            new,
            count,
            sample,
        } => diff(&old, &new, count, &sample)?,
        Command::Leaks {
            target,
            json,
            count,
        } => leaks(&target, json, count)?,
        Command::Verify {
            pid,
            cgroup,
            duration,
            uprobes,
            kernel,
            json,
            tolerance,
            top,
            claims_url,
            claims_key,
        } => {
            let flags = Flags {
                uprobes,
                kernel,
                json,
            };
            let claims = claims_url.zip(claims_key);
            return verify_cmd(pid, cgroup, duration, flags, tolerance, top, claims);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn ps(json: bool) -> Result<()> {
    let dir = discovery::dir();
    let found = discovery::list(&dir);
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(());
    }
    println!("{:>8}  {:<22}  {:>10}  COMMAND", "PID", "ADDRESS", "RSS");
    for e in &found {
        let rss = std::fs::read_to_string(format!("/proc/{}/status", e.pid))
            .map(|s| bytes(procfs::parse_status(&s).vm_rss as f64))
            .unwrap_or_else(|_| "?".into());
        println!(
            "{:>8}  {:<22}  {:>10}  {}",
            e.pid,
            e.addr,
            rss,
            e.cmdline.join(" ")
        );
    }
    if found.is_empty() {
        eprintln!("no process serves heapprof (looked in {})", dir.display());
    }
    Ok(())
}

fn pprof_heap(target: &str, output: Option<std::path::PathBuf>) -> Result<()> {
    let body = Source::parse(target).heap_profile("")?;
    if let Some(path) = output {
        std::fs::write(&path, &body).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {} bytes to {}", body.len(), path.display());
        return Ok(());
    }
    let path = std::env::temp_dir().join(format!(
        "heapprof-{}-{}.pb.gz",
        target.replace(['/', ':'], "_"),
        std::process::id()
    ));
    std::fs::write(&path, &body).with_context(|| format!("writing {}", path.display()))?;
    let go = std::process::Command::new("go")
        .args(["tool", "pprof"])
        .arg(&path)
        .status();
    match go {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!(
            "go tool pprof exited with {status}; profile kept at {}",
            path.display()
        ),
        Err(_) => println!(
            "profile saved to {} (install Go for `go tool pprof`, or use `heapprof top`)",
            path.display()
        ),
    }
    Ok(())
}

fn leaks(target: &str, json: bool, n: usize) -> Result<()> {
    let (addr, leaks) = heapprof_cli::leaks::fetch(target)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&leaks)?);
    } else {
        print!("{}", heapprof_cli::leaks::render(&addr, &leaks, n));
    }
    Ok(())
}

fn load(source: &str) -> Result<profile::HeapProfile> {
    load_with(source, "")
}

/// Loads a profile; `query` is sent to live targets (ignored for files).
fn load_with(source: &str, query: &str) -> Result<profile::HeapProfile> {
    let body = Source::parse(source).heap_profile(query)?;
    profile::decode(&body).with_context(|| format!("reading {source}"))
}

/// Milliseconds as a short age: 850ms, 12.5s, 3.2m, 1.5h.
fn age(ms: i64) -> String {
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1e3)
    } else if ms < 3_600_000 {
        format!("{:.1}m", ms as f64 / 6e4)
    } else {
        format!("{:.1}h", ms as f64 / 3.6e6)
    }
}

fn value(sample: &str, v: i64) -> String {
    if sample.ends_with("_space") {
        bytes(v as f64)
    } else {
        v.to_string()
    }
}

fn top(source: &str, n: usize, sample: &str) -> Result<()> {
    // Live targets are asked for ages (oldest and median live sample).
    let p = load_with(source, "?ages=1")?;
    let (rows, total) = profile::top(&p, sample, n)?;
    let with_ages = rows.iter().any(|r| r.oldest_age_ms.is_some());
    let mut out = std::io::stdout().lock();
    writeln!(out, "{sample} total {}", value(sample, total))?;
    let age_header = if with_ages {
        format!("{:>8} {:>8} ", "OLDEST", "MEDIAN")
    } else {
        String::new()
    };
    writeln!(
        out,
        "{:>12} {:>6} {:>12} {:>6} {age_header} FUNCTION / HEAVIEST STACK",
        "FLAT", "FLAT%", "CUM", "CUM%"
    )?;
    let pct = |v: i64| {
        if total == 0 {
            0.0
        } else {
            v as f64 * 100.0 / total as f64
        }
    };
    for r in rows {
        let ages = if with_ages {
            let show = |a: Option<i64>| a.map_or_else(|| "-".to_owned(), age);
            format!("{:>8} {:>8} ", show(r.oldest_age_ms), show(r.median_age_ms))
        } else {
            String::new()
        };
        writeln!(
            out,
            "{:>12} {:>5.1}% {:>12} {:>5.1}% {ages} {}",
            value(sample, r.flat),
            pct(r.flat),
            value(sample, r.cum),
            pct(r.cum),
            r.function
        )?;
        if r.stack.len() > 1 {
            let indent = 42 + ages.len();
            writeln!(out, "{:indent$}{}", "", profile::stack_line(&r.stack, 6))?;
        }
    }
    Ok(())
}

fn diff(old: &str, new: &str, n: usize, sample: &str) -> Result<()> {
    let rows = profile::diff(&load(old)?, &load(new)?, sample)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:>12} {:>12} {:>12}  SITE ({sample})",
        "DELTA", "OLD", "NEW"
    )?;
    for r in rows.iter().take(n) {
        let sign = if r.delta > 0 { "+" } else { "" };
        writeln!(
            out,
            "{:>12} {:>12} {:>12}  {}",
            format!("{sign}{}", value(sample, r.delta)),
            value(sample, r.old),
            value(sample, r.new),
            profile::stack_line(&r.stack, 6)
        )?;
    }
    Ok(())
}

/// The on/off switches of `verify`.
struct Flags {
    uprobes: bool,
    kernel: bool,
    json: bool,
}

fn verify_cmd(
    pid: Option<u32>,
    cgroup: Option<String>,
    duration: Option<f64>,
    flags: Flags,
    tolerance: f64,
    top: usize,
    claims: Option<(String, String)>,
) -> Result<ExitCode> {
    let Flags {
        uprobes,
        kernel,
        json,
    } = flags;
    let target = match (pid, cgroup) {
        (_, Some(path)) => verify::Target::Cgroup(path),
        (Some(pid), None) => verify::Target::Pid(pid),
        (None, None) => anyhow::bail!("verify needs a PID or --cgroup PATH"),
    };
    let opts = verify::Options {
        target,
        duration: Duration::try_from_secs_f64(duration.unwrap_or(5.0)).context("--duration")?,
        cgroup_window: duration.is_some(),
        uprobes,
        kernel,
        tolerance,
        top,
        claims,
    };
    let report = verify::run(&opts, |line| eprintln!("{line}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", heapprof_cli::report::render(&report));
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
