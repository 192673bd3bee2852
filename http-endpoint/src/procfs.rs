//! The process's resident memory and thread count, from
//! `/proc/self/status` (Linux; elsewhere these are absent).

/// What `/proc/self/status` says about this process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProcessStatus {
    /// Resident set size in bytes (`VmRSS`).
    pub rss_bytes: Option<u64>,
    /// Threads (`Threads`).
    pub threads: Option<u64>,
}

/// Reads `/proc/self/status`; fields it cannot read are `None`.
pub(crate) fn status() -> ProcessStatus {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| parse(&s))
        .unwrap_or_default()
}

fn parse(status: &str) -> ProcessStatus {
    let mut out = ProcessStatus::default();
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let mut words = value.split_whitespace();
        let number = words.next().and_then(|n| n.parse::<u64>().ok());
        match key {
            // The kernel writes "kB" and means KiB.
            "VmRSS" if words.next() == Some("kB") => out.rss_bytes = number.map(|n| n * 1024),
            "Threads" => out.threads = number,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rss_and_threads() {
        let s = "Name:\tx\nVmRSS:\t    2048 kB\nThreads:\t7\n";
        assert_eq!(
            parse(s),
            ProcessStatus {
                rss_bytes: Some(2 * 1024 * 1024),
                threads: Some(7)
            }
        );
        assert_eq!(parse("garbage"), ProcessStatus::default());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let s = status();
        assert!(s.rss_bytes.unwrap() > 0);
        assert!(s.threads.unwrap() >= 1);
    }
}
