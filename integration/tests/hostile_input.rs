//! The `heapprof` command against hostile input: a profile that
//! inflates to 1 GiB, a sample with fewer values than sample types, values
//! near `i64::MAX`, and servers that answer too much or too slowly. The
//! command must end with one clear line, within its deadline and its
//! `--max-bytes`, never with a panic or a wrapped total.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::{FakeServer, Finished, TempDir, run_within};
use pprof::protos::{Function, Line, Location, Message, Profile, Sample, ValueType};

/// The inflated size of [`gzip_bomb`].
const BOMB_BYTES: u64 = 1 << 30;

/// A gzip stream of [`BOMB_BYTES`] zero bytes (about 6.8 MB): one deflate
/// block with the fixed Huffman code, a literal zero, then copies of 258
/// bytes at distance 1 (13 bits each). Built by hand because compressing
/// 1 GiB in a debug build takes minutes.
fn gzip_bomb() -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }
    impl Bits {
        /// `len` bits of `value`, least significant first (deflate's
        /// order for headers and extra bits).
        fn put(&mut self, value: u64, len: u32) {
            self.acc |= value << self.n;
            self.n += len;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        /// A Huffman code, most significant bit first.
        fn code(&mut self, code: u32, len: u32) {
            self.put(u64::from(code.reverse_bits() >> (32 - len)), len);
        }
    }
    const LITERAL_ZERO: (u32, u32) = (0x30, 8);
    const LENGTH_258: (u32, u32) = (0xc5, 8); // symbol 285
    const DISTANCE_1: (u32, u32) = (0, 5);
    const END_OF_BLOCK: (u32, u32) = (0, 7); // symbol 256
    let copies = (BOMB_BYTES - 1) / 258;
    let literals = BOMB_BYTES - copies * 258;

    let mut bits = Bits {
        out: vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3],
        acc: 0,
        n: 0,
    };
    bits.put(1, 1); // last block
    bits.put(1, 2); // fixed Huffman codes
    for _ in 0..literals {
        bits.code(LITERAL_ZERO.0, LITERAL_ZERO.1);
    }
    for _ in 0..copies {
        bits.code(LENGTH_258.0, LENGTH_258.1);
        bits.code(DISTANCE_1.0, DISTANCE_1.1);
    }
    bits.code(END_OF_BLOCK.0, END_OF_BLOCK.1);
    bits.put(0, 7); // pad to a byte
    let mut out = bits.out;
    let mut crc = flate2::Crc::new();
    let mut mib = flate2::Crc::new();
    mib.update(&vec![0u8; 1 << 20]);
    for _ in 0..BOMB_BYTES >> 20 {
        crc.combine(&mib);
    }
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(BOMB_BYTES as u32).to_le_bytes());
    out
}

/// A profile with sample types `types` (all in bytes) and one function
/// `f` per sample, whose values are `values`.
fn profile(types: &[&str], samples: &[(&str, Vec<i64>)]) -> Vec<u8> {
    let mut strings = vec![String::new(), "bytes".into()];
    let mut intern = |s: &str| {
        strings.iter().position(|t| t == s).unwrap_or_else(|| {
            strings.push(s.into());
            strings.len() - 1
        }) as i64
    };
    let sample_type = types
        .iter()
        .map(|t| ValueType {
            ty: intern(t),
            unit: 1,
        })
        .collect();
    let mut p = Profile {
        sample_type,
        ..Profile::default()
    };
    for (i, (name, values)) in samples.iter().enumerate() {
        let id = i as u64 + 1;
        p.function.push(Function {
            id,
            name: intern(name),
            ..Default::default()
        });
        p.location.push(Location {
            id,
            line: vec![Line {
                function_id: id,
                line: 0,
            }],
            ..Default::default()
        });
        p.sample.push(Sample {
            location_id: vec![id],
            value: values.clone(),
            label: vec![],
        });
    }
    p.string_table = strings;
    p.encode_to_vec()
}

fn heapprof(args: &[&str], limit: Duration) -> Finished {
    run_within(common::heapprof().args(args), limit)
}

fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> String {
    let path = dir.0.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

/// An HTTP server answering every request with `body` at once.
fn serving(body: Vec<u8>) -> FakeServer {
    FakeServer::start(move |conn: &mut TcpStream| {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(head.as_bytes());
        let _ = conn.write_all(&body);
    })
}

/// A profile that inflates to 1 GiB, as a file or as a server's answer,
/// is refused at `--max-bytes` (128 MiB by default) with a line that names
/// the flag, and the command's peak memory stays near that bound (not the
/// 1 GiB it would take to inflate it); an answer beyond `--max-bytes` is
/// refused before it is decoded.
#[test]
fn a_gzip_bomb_is_refused_at_max_bytes() {
    let dir = TempDir::new("hostile-bomb");
    let bomb = gzip_bomb();
    assert!(bomb.len() < 8 << 20, "{} bytes", bomb.len());
    let mut raw = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(flate2::read::GzDecoder::new(bomb.as_slice()), 4096),
        &mut raw,
    )
    .unwrap();
    assert_eq!(raw, vec![0u8; 4096], "the bomb is a valid gzip stream");
    let file = write(&dir, "bomb.pb.gz", &bomb);
    let server = serving(bomb);
    let addr = server.addr.to_string();

    for (target, max_bytes, rss_bound) in [
        (file.as_str(), None, 256u64 << 20),
        (addr.as_str(), None, 256 << 20),
        (file.as_str(), Some("16777216"), 64 << 20),
    ] {
        let mut args = vec!["top", target];
        if let Some(m) = max_bytes {
            args.extend(["--max-bytes", m]);
        }
        let out = heapprof(&args, Duration::from_secs(120));
        eprintln!(
            "heapprof {args:?}: exit {:?} in {:?}, peak RSS {} MiB: {}",
            out.code,
            out.elapsed,
            out.max_rss >> 20,
            out.stderr.trim()
        );
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        let limit_mib = max_bytes.map_or(128, |m| m.parse::<u64>().unwrap() >> 20);
        assert!(
            out.stderr.contains(&format!(
                "inflates to more than {limit_mib} MiB (raise with --max-bytes)"
            )),
            "{args:?}: {}",
            out.stderr
        );
        assert!(
            out.max_rss < rss_bound,
            "{args:?}: peak RSS {} MiB, bound {} MiB",
            out.max_rss >> 20,
            rss_bound >> 20
        );
    }

    // The answer itself is bounded too: 6.8 MB is more than 1 MiB.
    let out = heapprof(
        &["top", &addr, "--max-bytes", "1048576"],
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains("answer larger than 1 MiB (raise with --max-bytes)"),
        "{}",
        out.stderr
    );
}

/// A sample with fewer values than there are sample types (an index out of
/// bounds for a careless reader, exit 101) is refused as `go tool pprof`
/// refuses it, with exit status 2 and the reason, by every command that
/// reads profiles.
#[test]
fn a_sample_with_too_few_values_is_refused_not_a_panic() {
    let dir = TempDir::new("hostile-short-sample");
    let short = write(
        &dir,
        "short.pb",
        &profile(
            &["alloc_space", "inuse_space"],
            &[("ok", vec![1, 2]), ("short", vec![7])],
        ),
    );
    let good = write(
        &dir,
        "good.pb",
        &profile(&["alloc_space", "inuse_space"], &[("ok", vec![1, 2])]),
    );
    for args in [
        vec!["top", short.as_str()],
        vec!["diff", good.as_str(), short.as_str()],
        vec!["diff", short.as_str(), good.as_str()],
    ] {
        let out = heapprof(&args, Duration::from_secs(60));
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert!(
            out.stderr
                .contains("malformed profile: sample 1 has 1 values for 2 sample types"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
}

/// Values near `i64::MAX` (which wrap to totals like "-2 B" and to wrong
/// diffs in plain arithmetic): totals, flat and cumulative values and
/// deltas saturate, never negative from positive values, never wrapped.
#[test]
fn totals_near_i64_max_saturate_instead_of_wrapping() {
    let dir = TempDir::new("hostile-overflow");
    let big = i64::MAX - 1;
    let huge = write(
        &dir,
        "huge.pb",
        &profile(
            &["inuse_space"],
            &[("a", vec![big]), ("b", vec![big]), ("c", vec![3])],
        ),
    );
    let negative = write(
        &dir,
        "negative.pb",
        &profile(&["inuse_space"], &[("a", vec![-big]), ("b", vec![-big])]),
    );
    let out = heapprof(&["top", &huge], Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out:?}");
    let total_line = out.stdout.lines().next().unwrap_or_default();
    let saturated = format!("{:.1} GiB", i64::MAX as f64 / (1u64 << 30) as f64);
    assert_eq!(
        total_line,
        format!("inuse_space total {saturated}"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(" -"), "{}", out.stdout);

    // From -MAX to +MAX per site: the deltas saturate at +MAX.
    let out = heapprof(&["diff", &negative, &huge], Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out:?}");
    let rows: Vec<&str> = out.stdout.lines().skip(1).collect();
    assert!(rows.len() >= 2, "{}", out.stdout);
    for row in &rows[..2] {
        assert!(row.contains(&format!("+{saturated}")), "{}", out.stdout);
    }
    let out = heapprof(&["diff", &huge, &negative], Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        !out.stdout.lines().skip(1).any(|l| l.contains('+')),
        "shrinking sites never show growth:\n{}",
        out.stdout
    );

    let load = |path: &str| heapprof_cli::profile::decode(&std::fs::read(path).unwrap()).unwrap();
    let (h, n) = (load(&huge), load(&negative));
    assert_eq!(h.total("inuse_space").unwrap(), i64::MAX);
    assert_eq!(n.total("inuse_space").unwrap(), i64::MIN);
    let rows = heapprof_cli::profile::diff(&n, &h, "inuse_space").unwrap();
    assert!(rows.iter().all(|r| r.delta > 0), "{rows:?}");
}

/// A server that sends one byte every 2 s (which never trips a per-read
/// timeout): `heapprof top --timeout 5` gives up after about 5 s with a
/// line that names the flag.
#[test]
fn the_cli_gives_up_on_a_trickling_server_at_its_deadline() {
    let server = FakeServer::start(|conn: &mut TcpStream| {
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
        for byte in answer.iter().chain(std::iter::repeat(&0u8)).take(60) {
            if conn.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    });
    let addr = server.addr.to_string();
    let out = heapprof(&["top", &addr, "--timeout", "5"], Duration::from_secs(30));
    eprintln!("gave up after {:?}: {}", out.elapsed, out.stderr.trim());
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains("no complete answer within 5 s (raise with --timeout)"),
        "{}",
        out.stderr
    );
    assert!(
        out.elapsed >= Duration::from_millis(4500) && out.elapsed < Duration::from_secs(8),
        "{:?}",
        out.elapsed
    );
    assert_eq!(server.connections(), 1);
}
