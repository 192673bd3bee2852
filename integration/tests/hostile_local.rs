//! Another local user against a victim's discovery and gops files, played
//! by two unprivileged users: an attacker uid
//! plants what it can in `/tmp` (a pre-created `/tmp/heapprof-<victim>`,
//! symlinks to the victim's private file, a FIFO, a link to /dev/zero, a
//! forged entry naming an address it controls), then the victim runs a
//! service (the root crate's quickstart with `--serve`) and the `heapprof`
//! command with its defaults.
//!
//! The victim loses nothing (its file keeps its content), leaks nothing
//! (it announces nothing where the attacker can read or replace it), and
//! stays up (one warning, serving on); `heapprof ps` and `top` neither
//! hang nor read without bound nor go where a forged entry points.
//!
//! Switching users needs root: otherwise each test fails saying so, unless
//! `HEAPPROF_SKIP_BPF=1` asks to skip tests that need root. Each test has
//! uids of its own, unused on the machine, so `/tmp/heapprof-<uid>` is
//! the test's alone.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::serve::Service;
use common::{FakeServer, Finished, TempDir, run_within, share_binaries};

const ATTACKER: u32 = 46_201;
const SECRET: &str = "the victim's private data\n";

/// `cmd` run as user and group `uid`, with no supplementary groups (std
/// drops them when root sets a uid), and no environment but `PATH`: the
/// discovery directory is the default, `/tmp/heapprof-<uid>`.
fn as_user(cmd: &mut Command, uid: u32) -> &mut Command {
    cmd.uid(uid)
        .gid(uid)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
}

/// Runs `script` with `sh` as the attacker.
fn attacker(script: &str) {
    let out = as_user(Command::new("/bin/sh").args(["-c", script]), ATTACKER)
        .output()
        .expect("run sh as the attacker");
    assert!(
        out.status.success(),
        "attacker's script failed: {script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The world of one test: binaries every user can run, a victim uid with a
/// private directory holding a private file, a sticky world-writable
/// directory like `/tmp` for the attacker, and the victim's default
/// discovery directory, removed before and after.
struct World {
    tmp: TempDir,
    victim: u32,
    quickstart: PathBuf,
    heapprof: PathBuf,
    secret: PathBuf,
    shared: PathBuf,
    discovery: PathBuf,
}

impl World {
    fn new(tag: &str, victim: u32) -> World {
        let tmp = TempDir::new(tag);
        let bins = share_binaries(
            &tmp,
            &[
                &common::example("quickstart"),
                Path::new(env!("CARGO_BIN_EXE_heapprof")),
            ],
        );
        let home = tmp.0.join("victim");
        std::fs::create_dir(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        let secret = home.join("secret");
        std::fs::write(&secret, SECRET).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        for path in [&home, &secret] {
            std::os::unix::fs::chown(path, Some(victim), Some(victim)).unwrap();
        }
        let shared = tmp.0.join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let discovery = PathBuf::from(format!("/tmp/heapprof-{victim}"));
        remove_any(&discovery);
        World {
            tmp,
            victim,
            quickstart: bins[0].clone(),
            heapprof: bins[1].clone(),
            secret,
            shared,
            discovery,
        }
    }

    /// The victim's service, started as `sh -c 'read go; exec quickstart
    /// ...'` so that `before_start` learns its pid before it runs (and
    /// plants what the attacker would); its stderr is collected.
    fn victim_service(
        &self,
        env: &[(&str, &Path)],
        before_start: impl FnOnce(u32),
    ) -> (Service, std::sync::Arc<std::sync::Mutex<String>>) {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "read go; exec \"$0\" \"$@\""])
            .arg(&self.quickstart)
            .arg(self.tmp.0.join("victim").join("start.pb.gz"))
            .args(["--scale", "0.0625", "--serve", "127.0.0.1:0", "--gops"]);
        as_user(&mut cmd, self.victim)
            .env("HEAPPROF_SAMPLE_RATE", "65536")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stderr(Stdio::piped());
        let mut stderr = None;
        let service = Service::spawn_with(cmd, "the victim's quickstart", |child| {
            stderr = Some(common::collect_stderr(child));
            before_start(child.id());
            let mut stdin = child.stdin.take().expect("stdin piped");
            stdin.write_all(b"go\n").expect("start the victim");
        });
        (service, stderr.expect("stderr collected"))
    }

    /// `heapprof ARGS` as the victim, within 20 s (a hang fails the test).
    fn heapprof(&self, args: &[&str]) -> Finished {
        let mut cmd = Command::new(&self.heapprof);
        as_user(cmd.args(args), self.victim);
        run_within(&mut cmd, Duration::from_secs(20))
    }

    /// Asserts the victim's private file is as it was.
    fn assert_secret_kept(&self) {
        assert_eq!(
            std::fs::read_to_string(&self.secret).unwrap(),
            SECRET,
            "the victim's file was overwritten"
        );
        let meta = std::fs::metadata(&self.secret).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (self.victim, 0o600));
    }
}

impl Drop for World {
    fn drop(&mut self) {
        remove_any(&self.discovery);
    }
}

fn remove_any(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).unwrap(),
        Ok(_) => std::fs::remove_file(path).unwrap(),
        Err(_) => {}
    }
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// A loopback server the attacker controls: it answers anything with a
/// profile-sized blob, and counts who comes.
fn attackers_server() -> FakeServer {
    FakeServer::start(|conn: &mut TcpStream| {
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfake");
    })
}

/// The attacker pre-creates
/// `/tmp/heapprof-<victim>` with mode 0777 and plants, for the victim's pid,
/// `.<pid>.json.tmp` and `<pid>.json` as symlinks to the victim's private
/// file (the same for the gops port file in a gops directory it created),
/// a FIFO `a.json`, a link to /dev/zero and a forged `1.json` naming its
/// own server. The victim's service writes through none of them, serves
/// on with one warning per refused directory and announces nothing; its
/// `heapprof ps` and `top` refuse the directory, saying why, and never
/// contact the attacker's server.
#[test]
fn planted_links_in_a_precreated_directory_cost_only_the_announcement() {
    if !common::root_or_skip("hostile_local", "to run processes as other users") {
        return;
    }
    let world = World::new("hostile-planted", 46_101);
    let fake = attackers_server();
    let (dir, secret) = (world.discovery.display(), world.secret.display());
    let gops = world.shared.join("gops");
    let (service, stderr) = world.victim_service(&[("GOPS_CONFIG_DIR", &gops)], |pid| {
        attacker(&format!(
            "set -e; mkdir {dir}; chmod 0777 {dir}; \
             ln -s {secret} {dir}/.{pid}.json.tmp; ln -s {secret} {dir}/{pid}.json; \
             mkfifo {dir}/a.json; ln -s /dev/zero {dir}/z.json; \
             printf '{{\"pid\":1,\"addr\":\"{fake}\"}}' > {dir}/1.json; \
             mkdir {gops}; chmod 0777 {gops}; \
             ln -s {secret} {gops}/.{pid}.tmp; ln -s {secret} {gops}/{pid}",
            fake = fake.addr,
            gops = gops.display(),
        ));
    });
    let pid = service.pid();

    // Serving; nothing lost, nothing announced.
    assert_eq!(common::serve::http_get(service.addr, "/metrics").0, 200);
    world.assert_secret_kept();
    for planted in [
        world.discovery.join(format!(".{pid}.json.tmp")),
        world.discovery.join(format!("{pid}.json")),
        gops.join(format!(".{pid}.tmp")),
        gops.join(pid.to_string()),
    ] {
        assert!(is_symlink(&planted), "{} was replaced", planted.display());
    }

    // One warning for each refused directory.
    let said = common::wait_for_text(&stderr, "gops agent off");
    let warnings: Vec<&str> = said.lines().collect();
    assert_eq!(warnings.len(), 2, "{said}");
    assert!(
        warnings[0].starts_with(&format!(
            "heapprof-http: serving on {} without a discovery file (`heapprof ps` will not list \
             this process): cannot write {dir}: refusing directory {dir}: owned by uid {ATTACKER}, \
             not {}",
            service.addr, world.victim
        )),
        "{said}"
    );
    assert!(
        warnings[1].starts_with("quickstart: gops agent off: cannot write ")
            && warnings[1].contains(&format!("owned by uid {ATTACKER}")),
        "{said}"
    );

    // The victim's command refuses the directory instead of trusting it.
    let ps = world.heapprof(&["ps"]);
    assert_eq!(ps.code, Some(0), "{ps:?}");
    assert!(
        ps.stderr.contains(&format!(
            "heapprof: skipped refusing directory {dir}: owned by uid {ATTACKER}"
        )),
        "{}",
        ps.stderr
    );
    assert_eq!(ps.stdout.lines().count(), 1, "a header, no process: {ps:?}");
    for target in ["1", &pid.to_string()] {
        let top = world.heapprof(&["top", target]);
        assert_eq!(top.code, Some(2), "{top:?}");
        assert!(
            top.stderr.contains(&format!("refusing directory {dir}")),
            "top {target}: {}",
            top.stderr
        );
    }
    assert_eq!(fake.connections(), 0, "the forged entry was followed");
}

/// A symlink in place of `/tmp/heapprof-<victim>` (which could make
/// `spawn()` fail and the service exit): the service serves on, with one
/// warning, and writes nothing where the link points.
#[test]
fn a_symlinked_discovery_directory_does_not_stop_the_service() {
    if !common::root_or_skip("hostile_local", "to run processes as other users") {
        return;
    }
    let world = World::new("hostile-symlinked", 46_102);
    let target = world.shared.join("attackers");
    attacker(&format!(
        "set -e; mkdir {t}; chmod 0777 {t}; ln -s {t} {d}",
        t = target.display(),
        d = world.discovery.display()
    ));
    let (service, stderr) = world.victim_service(&[], |_| {});
    assert_eq!(common::serve::http_get(service.addr, "/metrics").0, 200);
    let said = common::wait_for_text(&stderr, "symbolic link");
    assert_eq!(
        said.matches("without a discovery file").count(),
        1,
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "refusing directory {}: it is a symbolic link",
            world.discovery.display()
        )),
        "{said}"
    );
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "nothing written through the link"
    );
    let ps = world.heapprof(&["ps"]);
    assert_eq!(ps.code, Some(0), "{ps:?}");
    assert!(ps.stderr.contains("it is a symbolic link"), "{}", ps.stderr);
}

/// In a directory the victim owns (so only the file checks stand between
/// the reader and what is in it): a FIFO (which blocks a plain open
/// forever), a link to /dev/zero (endless), a 1 GiB file, a file another
/// user owns and an entry naming an address off this host. `ps` skips
/// each with its reason, within its time and a small memory, and lists
/// the one real service; `top` goes to that service only.
#[test]
fn ps_and_top_skip_entries_they_cannot_trust() {
    if !common::root_or_skip("hostile_local", "to run processes as other users") {
        return;
    }
    let world = World::new("hostile-entries", 46_103);
    let fake = attackers_server();
    let dir = &world.discovery;
    std::fs::create_dir(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(dir, Some(world.victim), Some(world.victim)).unwrap();
    // A live process of someone else's, and one for the remote entry.
    let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
    let (foreign, remote) = (std::process::id(), bystander.id());
    let victim_sh = |script: &str| {
        let out = as_user(Command::new("/bin/sh").args(["-c", script]), world.victim)
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {out:?}");
    };
    let d = dir.display();
    victim_sh(&format!(
        "set -e; mkfifo {d}/a.json; ln -s /dev/zero {d}/z.json; truncate -s 1G {d}/big.json; \
         printf '{{\"pid\":{remote},\"addr\":\"192.0.2.1:6060\"}}' > {d}/{remote}.json"
    ));
    let forged = dir.join(format!("{foreign}.json"));
    std::fs::write(
        &forged,
        format!(r#"{{"pid":{foreign},"addr":"{}"}}"#, fake.addr),
    )
    .unwrap();
    std::os::unix::fs::chown(&forged, Some(ATTACKER), Some(ATTACKER)).unwrap();

    let (service, _stderr) = world.victim_service(&[], |_| {});
    let pid = service.pid();
    let ps = world.heapprof(&["ps"]);
    eprintln!(
        "ps: {:?}, peak RSS {} MiB\n{}{}",
        ps.elapsed,
        ps.max_rss >> 20,
        ps.stdout,
        ps.stderr
    );
    assert_eq!(ps.code, Some(0), "{ps:?}");
    assert!(ps.max_rss < 64 << 20, "peak RSS {} MiB", ps.max_rss >> 20);
    for (file, reason) in [
        ("a.json".to_string(), "not a regular file".to_string()),
        ("z.json".into(), "it is a symbolic link".into()),
        (
            "big.json".into(),
            "1073741824 bytes, more than the 65536 expected".into(),
        ),
        (
            format!("{foreign}.json"),
            format!("owned by uid {ATTACKER}, not {} or root", world.victim),
        ),
    ] {
        let line = format!("heapprof: skipped refusing {d}/{file}: {reason}");
        assert!(ps.stderr.contains(&line), "no `{line}` in\n{}", ps.stderr);
    }
    let listed: Vec<&str> = ps.stdout.lines().skip(1).collect();
    assert_eq!(
        listed.len(),
        2,
        "the service and the remote entry: {listed:?}"
    );
    assert!(
        listed
            .iter()
            .any(|l| l.contains(&pid.to_string()) && l.contains(&service.addr.to_string())),
        "{listed:?}"
    );

    let top = world.heapprof(&["top", &foreign.to_string()]);
    assert_eq!(top.code, Some(2), "{top:?}");
    assert!(
        top.stderr.contains(&format!("owned by uid {ATTACKER}")),
        "{}",
        top.stderr
    );
    let top = world.heapprof(&["top", &remote.to_string()]);
    assert_eq!(top.code, Some(2), "{top:?}");
    assert!(
        top.stderr.contains(
            "announces 192.0.2.1:6060, which is not a loopback address; pass --allow-remote"
        ),
        "{}",
        top.stderr
    );
    let top = world.heapprof(&["top", &pid.to_string(), "-n", "3"]);
    assert_eq!(top.code, Some(0), "{top:?}");
    assert!(
        top.stdout.starts_with("inuse_space total "),
        "{}",
        top.stdout
    );
    assert_eq!(fake.connections(), 0, "a forged entry was followed");
    let _ = bystander.kill();
    let _ = bystander.wait();
}
