//! `heapprof leaks`: the leak suspects of a live process, from its growth
//! recorder (`GET /debug/heapprof/leaks`, served by heapprof-http).

use anyhow::{Context, Result, anyhow};
use heapprof::wire::LeaksDocument;

use crate::fetch::{self, Source};
use crate::format;

pub(super) fn run(target: &str, json: bool, n: usize) -> Result<()> {
    let addr = Source::parse(target).addr()?.ok_or_else(|| {
        anyhow!("{target} is not a process or HOST:PORT: leak suspects come from a live process")
    })?;
    let body = fetch::get(&addr, "/debug/heapprof/leaks")?;
    let leaks: LeaksDocument = serde_json::from_slice(&body)
        .with_context(|| format!("GET http://{addr}/debug/heapprof/leaks: not a leaks document"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&leaks)?);
    } else {
        print!("{}", format::leaks::render(&addr, &leaks, n));
    }
    Ok(())
}
