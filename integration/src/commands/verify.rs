//! `heapprof verify`: the arguments into `verify::Options`, the report out
//! as text or JSON, and the exit code from its checks.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cli::VerifyArgs;
use crate::{format, verify};

pub(super) fn run(args: VerifyArgs) -> Result<ExitCode> {
    let target = match (args.pid, args.cgroup) {
        (_, Some(path)) => verify::Target::Cgroup(path),
        (Some(pid), None) => verify::Target::Pid(pid),
        (None, None) => bail!("verify needs a PID or --cgroup PATH"),
    };
    let opts = verify::Options {
        target,
        duration: Duration::try_from_secs_f64(args.duration.unwrap_or(5.0))
            .context("--duration")?,
        cgroup_window: args.duration.is_some(),
        uprobes: args.uprobes,
        kernel: args.kernel,
        tolerance: args.tolerance,
        top: args.top,
        claims: args.claims_url.zip(args.claims_key),
    };
    let report = verify::run(&opts, |line| eprintln!("{line}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", format::verify::render(&report));
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
