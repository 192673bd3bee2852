//! Property tests of the discovery reader (`heapprof::sys::discovery`),
//! which reads a directory other processes write: whatever the names,
//! contents and kinds of its entries (bytes, JSON that lies about its pid
//! or address, files at the size bound, FIFOs, symlinks, directories,
//! files of another user), `read` and `list` never panic, and accept
//! exactly the regular files of this user (or root) of at most
//! `MAX_FILE_BYTES` whose JSON names the pid of the file's name and a
//! `HOST:PORT`. 256 cases each (CI-sized; `PROPTEST_CASES` does not change
//! it).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use heapprof::sys::discovery::{self, Announcement, MAX_FILE_BYTES};
use heapprof::sys::files;
use proptest::prelude::*;

const CASES: u32 = 256;

/// A fresh private directory (0700) for one case, removed on drop.
struct CaseDir(PathBuf);

impl CaseDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "heapprof-discovery-props-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        files::create_private_dir(&dir).unwrap();
        CaseDir(dir)
    }
}

impl Drop for CaseDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What an entry is.
#[derive(Clone, Debug)]
enum Kind {
    /// A regular file of this user with these bytes.
    File(Vec<u8>),
    /// A regular file owned by another user (tested when running as root).
    Foreign(Vec<u8>),
    Fifo,
    /// A symlink to a regular file holding these bytes.
    Link(Vec<u8>),
    Dir,
}

/// Addresses, good and bad.
fn addr() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u16..).prop_map(|p| format!("127.0.0.1:{p}")),
        (1u16..).prop_map(|p| format!("[::1]:{p}")),
        "localhost:[0-9]{1,6}",
        "[a-z.]{0,10}:?[0-9]{0,6}",
        "\\PC{0,20}",
    ]
}

/// A discovery announcement as JSON, for `pid`, sometimes with fields of
/// the wrong type or missing, padded with trailing spaces to `pad` bytes
/// (to land near the size bound).
fn announcement_json(pid: u32) -> impl Strategy<Value = Vec<u8>> {
    let pid = prop_oneof![3 => Just(pid), 1 => any::<u32>()];
    let cmdline = prop::collection::vec("\\PC{0,12}", 0..4);
    let pad = prop_oneof![
        3 => Just(0u64),
        1 => (MAX_FILE_BYTES - 64)..(MAX_FILE_BYTES + 64),
    ];
    (pid, addr(), "[0-9.]{0,8}", cmdline, 0u8..6, pad).prop_map(
        |(pid, addr, version, cmdline, shape, pad)| {
            let mut value = serde_json::json!({
                "pid": pid, "addr": addr, "version": version, "cmdline": cmdline,
            });
            match shape {
                0 => value["pid"] = serde_json::json!(pid.to_string()),
                1 => value["addr"] = serde_json::json!(7),
                2 => drop(value.as_object_mut().unwrap().remove("addr")),
                3 => value["extra"] = serde_json::json!({"nested": [1, 2]}),
                _ => {}
            }
            let mut bytes = serde_json::to_vec(&value).unwrap();
            while (bytes.len() as u64) < pad {
                bytes.push(b' ');
            }
            bytes
        },
    )
}

/// A name and an entry: names that are pids (often this process's, which
/// is alive), and names that are not.
fn entry() -> impl Strategy<Value = (String, Kind)> {
    let me = std::process::id();
    let pid = prop_oneof![2 => Just(me), 1 => any::<u32>(), 1 => 1u32..64];
    pid.prop_flat_map(|pid| {
        let name = prop_oneof![
            4 => Just(format!("{pid}.json")),
            1 => Just(format!("0{pid}.json")),
            1 => Just(pid.to_string()),
            1 => "[a-z0-9.]{1,10}(\\.json)?",
        ];
        let bytes = prop_oneof![
            4 => announcement_json(pid),
            1 => prop::collection::vec(any::<u8>(), 0..256),
        ];
        let kind = prop_oneof![
            6 => bytes.clone().prop_map(Kind::File),
            1 => bytes.clone().prop_map(Kind::Foreign),
            1 => bytes.prop_map(Kind::Link),
            1 => Just(Kind::Fifo),
            1 => Just(Kind::Dir),
        ];
        (name, kind)
    })
}

/// Creates `name` as `kind` in `dir`; false if it cannot (a name taken, a
/// foreign owner without root).
fn create(dir: &Path, name: &str, kind: &Kind) -> bool {
    let path = dir.join(name);
    if std::fs::symlink_metadata(&path).is_ok() {
        return false;
    }
    match kind {
        Kind::File(bytes) => std::fs::write(&path, bytes).unwrap(),
        Kind::Foreign(bytes) => {
            if files::euid() != 0 {
                return false;
            }
            std::fs::write(&path, bytes).unwrap();
            std::os::unix::fs::chown(&path, Some(4242), Some(4242)).unwrap();
        }
        Kind::Link(bytes) => {
            let target = dir.with_extension(format!("target-{name}"));
            std::fs::write(&target, bytes).unwrap();
            std::os::unix::fs::symlink(&target, &path).unwrap();
        }
        Kind::Fifo => {
            let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        }
        Kind::Dir => std::fs::create_dir(&path).unwrap(),
    }
    true
}

fn remove_link_targets(dir: &Path, entries: &[(String, Kind)]) {
    for (name, _) in entries {
        let _ = std::fs::remove_file(dir.with_extension(format!("target-{name}")));
    }
}

/// What the reader must answer for `name` holding `kind`, from the rules
/// alone: `Some` announcement exactly when it is a regular file of this
/// user (or root), at most the bound, holding JSON with a numeric `pid`
/// equal to the number the name's stem spells and an `addr` that is
/// `HOST:PORT`.
fn expected(name: &str, kind: &Kind) -> Option<Announcement> {
    let Kind::File(bytes) = kind else {
        return None;
    };
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return None;
    }
    let a: Announcement = serde_json::from_slice(bytes).ok()?;
    let stem = Path::new(name).file_stem()?.to_str()?.parse::<u32>().ok()?;
    let host_port = a.addr.parse::<SocketAddr>().is_ok()
        || a.addr
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.parse::<u16>().is_ok());
    (stem == a.pid && host_port).then_some(a)
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// One entry: `read` answers exactly what the rules say, and what it
    /// accepts is self-consistent and within the bound.
    #[test]
    fn read_accepts_exactly_the_trusted_well_formed_entries((name, kind) in entry()) {
        let dir = CaseDir::new();
        prop_assume!(create(&dir.0, &name, &kind));
        let path = dir.0.join(&name);
        let got = discovery::read(&path, files::euid());
        remove_link_targets(&dir.0, &[(name.clone(), kind.clone())]);
        let want = expected(&name, &kind);
        match (&got, &want) {
            (Ok(a), Some(w)) => {
                prop_assert_eq!(a, w);
                prop_assert!(std::fs::metadata(&path).unwrap().len() <= MAX_FILE_BYTES);
            }
            (Err(_), None) => {}
            _ => prop_assert!(false, "{name} {kind:?}: got {got:?}, want {want:?}"),
        }
    }

    /// A directory of entries: `list` never panics, lists exactly the
    /// accepted entries of live processes (sorted by pid) and gives a
    /// reason for each `.json` entry it skips.
    #[test]
    fn list_lists_exactly_the_live_trusted_entries(
        entries in prop::collection::vec(entry(), 0..8),
    ) {
        let dir = CaseDir::new();
        let made: Vec<(String, Kind)> = entries
            .into_iter()
            .filter(|(name, kind)| create(&dir.0, name, kind))
            .collect();
        let (found, skipped) = discovery::list(&dir.0);
        remove_link_targets(&dir.0, &made);
        let json = made.iter().filter(|(n, _)| n.ends_with(".json") && n.len() > 5);
        let accepted: Vec<Announcement> = json.clone().filter_map(|(n, k)| expected(n, k)).collect();
        let mut want: Vec<Announcement> =
            accepted.iter().filter(|a| alive(a.pid)).cloned().collect();
        want.sort_by_key(|a| a.pid);
        let key = |v: &[Announcement]| {
            let mut k: Vec<String> = v.iter().map(|a| format!("{a:?}")).collect();
            k.sort();
            k
        };
        prop_assert_eq!(key(&found), key(&want));
        prop_assert!(found.windows(2).all(|w| w[0].pid <= w[1].pid));
        prop_assert_eq!(skipped.len(), json.count() - accepted.len(), "{:?}", skipped);
    }
}

/// The directory itself: one another user could write to yields nothing
/// but its reason, whatever is in it.
#[test]
fn an_insecure_directory_lists_nothing() {
    let dir = CaseDir::new();
    let me = std::process::id();
    std::fs::write(
        dir.0.join(format!("{me}.json")),
        format!(r#"{{"pid":{me},"addr":"127.0.0.1:1"}}"#),
    )
    .unwrap();
    assert_eq!(discovery::list(&dir.0).0.len(), 1);
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (found, skipped) = discovery::list(&dir.0);
    assert!(found.is_empty());
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0].contains("refusing directory"), "{skipped:?}");
}
