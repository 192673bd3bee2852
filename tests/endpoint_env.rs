//! The endpoint's environment settings, through a real process's
//! environment (in-process tests cannot set it safely): `HEAPPROF_TOKEN`
//! requires a bearer token on every route, and `HEAPPROF_DIR` is where the
//! discovery file goes.

mod common;

use common::serve::{Service, http_get_with};

#[test]
fn token_and_discovery_dir_come_from_the_environment() {
    let dir = std::env::temp_dir().join(format!("heapprof-envdir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let service = Service::start(
        "quickstart",
        &["/dev/null", "--scale", "0.01", "--serve", "127.0.0.1:0"],
        &[
            ("HEAPPROF_TOKEN", "s3cret-token"),
            ("HEAPPROF_DIR", dir.to_str().unwrap()),
        ],
    );
    for path in ["/debug/pprof/heap", "/debug/pprof/", "/metrics"] {
        let (status, body) = service.get(path);
        assert_eq!(
            status,
            401,
            "{path} without a token: {}",
            String::from_utf8_lossy(&body)
        );
        let (status, _) = http_get_with(service.addr, path, &[("Authorization", "Bearer wrong")]);
        assert_eq!(status, 401, "{path} with a wrong token");
        let (status, _) = http_get_with(
            service.addr,
            path,
            &[("Authorization", "Bearer s3cret-token")],
        );
        assert_eq!(status, 200, "{path} with the token");
    }
    let announced = dir.join(format!("{}.json", service.pid()));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&announced).expect("discovery file in HEAPPROF_DIR"))
            .unwrap();
    assert_eq!(json["addr"], service.addr.to_string());
    drop(service);
    std::fs::remove_dir_all(&dir).ok();
}
