//! Incident 5, "a list request that killed the control plane": an API
//! server whose list handler materializes the whole answer at once.
//!
//! `GET /api/v1/pods` renders 10,000 fake pods as one JSON document of
//! about 40 MB in `build_pod_list`: every pod is encoded on its own first
//! (about 40 MB of pieces), then the pieces are joined into the body
//! (another 40 MB), so one request holds about 80 MB at its peak and 40 MB
//! until the answer is sent. Nothing leaks: when the requests are done the
//! memory is gone. A burst of concurrent lists is what kills the process.
//!
//! ```text
//! list_spike --serve ADDR [--pods N]
//! ```
//! - `--serve ADDR`: the API and the heapprof endpoint (`/debug/pprof/*`)
//!   on one listener (port 0: any); prints `listening on http://ADDR`, then
//!   serves until killed.
//! - `--pods N`: pods in each list (default 10,000).
//! - `HEAPPROF_DUMP_DIR=DIR`: start heapprof's OOM guard, which writes the
//!   current and the peak heap profile to DIR when the memory cgroup's
//!   working set crosses 80%, 90% and 95% of its limit
//!   (`HEAPPROF_DUMP_LIMIT_BYTES` sets a limit where there is no cgroup one).
//!
//! What heapprof shows: after a burst of lists, `/debug/pprof/heap` (the
//! current heap) no longer holds anything of `build_pod_list`, but
//! `/debug/pprof/heap?peak=1` (the high-water mark) names `build_pod_list`
//! first; and the guard's dumps, written before the kernel kills the
//! process in a cgroup too small for the burst, name it too.

use std::fmt::Write as _;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use clap::Parser;

#[global_allocator]
static ALLOC: heapprof::Profiler<tikv_jemallocator::Jemalloc> =
    heapprof::Profiler::new(tikv_jemallocator::Jemalloc);

/// Room for one encoded pod (they are about 3.9 KiB each).
const POD_CAPACITY: usize = 4096;

/// Renders the list of `count` pods as one JSON document, all in memory:
/// the handler the peak profile must name.
#[inline(never)]
fn build_pod_list(count: usize) -> String {
    let mut items: Vec<String> = Vec::with_capacity(count);
    for i in 0..count {
        let mut pod = String::with_capacity(POD_CAPACITY);
        let node = i % 250;
        let ip = (10, (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
        let _ = write!(
            pod,
            r#"{{"metadata":{{"name":"web-{i:05}-7c9f8d6b5-x{i:04x}","namespace":"team-{ns}","uid":"{i:08x}-1f2e-4d3c-9b8a-{i:012x}","resourceVersion":"{rv}","creationTimestamp":"2024-05-01T12:00:00Z","labels":{{"app":"web","pod-template-hash":"7c9f8d6b5","team":"team-{ns}","tier":"frontend"}},"annotations":{{"kubectl.kubernetes.io/last-applied-configuration":"{{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{{\"annotations\":{{}},\"labels\":{{\"app\":\"web\",\"tier\":\"frontend\"}},\"name\":\"web-{i:05}\",\"namespace\":\"team-{ns}\"}},\"spec\":{{\"containers\":[{{\"image\":\"registry.example.com/team-{ns}/web:1.{ver}.0\",\"name\":\"web\",\"ports\":[{{\"containerPort\":8080,\"protocol\":\"TCP\"}}],\"resources\":{{\"limits\":{{\"cpu\":\"500m\",\"memory\":\"512Mi\"}},\"requests\":{{\"cpu\":\"250m\",\"memory\":\"256Mi\"}}}}}}]}}}}","prometheus.io/scrape":"true","prometheus.io/port":"9090"}},"ownerReferences":[{{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-{i:05}-7c9f8d6b5","uid":"{rv:08x}-aaaa-4bbb-8ccc-{i:012x}","controller":true,"blockOwnerDeletion":true}}]}},"spec":{{"volumes":[{{"name":"kube-api-access-{i:05x}","projected":{{"sources":[{{"serviceAccountToken":{{"expirationSeconds":3607,"path":"token"}}}},{{"configMap":{{"name":"kube-root-ca.crt","items":[{{"key":"ca.crt","path":"ca.crt"}}]}}}},{{"downwardAPI":{{"items":[{{"path":"namespace","fieldRef":{{"apiVersion":"v1","fieldPath":"metadata.namespace"}}}}]}}}}],"defaultMode":420}}}}],"containers":[{{"name":"web","image":"registry.example.com/team-{ns}/web:1.{ver}.0","ports":[{{"name":"http","containerPort":8080,"protocol":"TCP"}},{{"name":"metrics","containerPort":9090,"protocol":"TCP"}}],"env":[{{"name":"POD_NAME","valueFrom":{{"fieldRef":{{"apiVersion":"v1","fieldPath":"metadata.name"}}}}}},{{"name":"POD_IP","valueFrom":{{"fieldRef":{{"apiVersion":"v1","fieldPath":"status.podIP"}}}}}},{{"name":"JAVA_OPTS","value":"-Xms256m -Xmx384m -XX:+UseG1GC"}}],"resources":{{"limits":{{"cpu":"500m","memory":"512Mi"}},"requests":{{"cpu":"250m","memory":"256Mi"}}}},"volumeMounts":[{{"name":"kube-api-access-{i:05x}","readOnly":true,"mountPath":"/var/run/secrets/kubernetes.io/serviceaccount"}}],"livenessProbe":{{"httpGet":{{"path":"/healthz","port":8080,"scheme":"HTTP"}},"initialDelaySeconds":10,"timeoutSeconds":1,"periodSeconds":10,"successThreshold":1,"failureThreshold":3}},"readinessProbe":{{"httpGet":{{"path":"/ready","port":8080,"scheme":"HTTP"}},"timeoutSeconds":1,"periodSeconds":5,"successThreshold":1,"failureThreshold":3}},"terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File","imagePullPolicy":"IfNotPresent"}}],"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","serviceAccountName":"default","nodeName":"node-{node:03}.cluster.example.com","securityContext":{{}},"schedulerName":"default-scheduler","tolerations":[{{"key":"node.kubernetes.io/not-ready","operator":"Exists","effect":"NoExecute","tolerationSeconds":300}},{{"key":"node.kubernetes.io/unreachable","operator":"Exists","effect":"NoExecute","tolerationSeconds":300}}],"priority":0,"enableServiceLinks":true,"preemptionPolicy":"PreemptLowerPriority"}},"status":{{"phase":"Running","conditions":[{{"type":"Initialized","status":"True","lastTransitionTime":"2024-05-01T12:00:01Z"}},{{"type":"Ready","status":"True","lastTransitionTime":"2024-05-01T12:00:12Z"}},{{"type":"ContainersReady","status":"True","lastTransitionTime":"2024-05-01T12:00:12Z"}},{{"type":"PodScheduled","status":"True","lastTransitionTime":"2024-05-01T12:00:00Z"}}],"hostIP":"192.168.{hi}.{lo}","podIP":"{a}.{b}.{c}.{d}","podIPs":[{{"ip":"{a}.{b}.{c}.{d}"}}],"startTime":"2024-05-01T12:00:01Z","containerStatuses":[{{"name":"web","state":{{"running":{{"startedAt":"2024-05-01T12:00:05Z"}}}},"lastState":{{}},"ready":true,"restartCount":{restarts},"image":"registry.example.com/team-{ns}/web:1.{ver}.0","imageID":"registry.example.com/team-{ns}/web@sha256:{i:064x}","containerID":"containerd://{rv:064x}","started":true}}],"qosClass":"Burstable"}}}}"#,
            ns = i % 40,
            rv = 1_000_000 + i * 7,
            ver = i % 30,
            hi = node / 200,
            lo = node % 200 + 10,
            a = ip.0,
            b = ip.1,
            c = ip.2,
            d = ip.3,
            restarts = i % 3,
        );
        items.push(pod);
    }
    let total: usize = items.iter().map(|p| p.len() + 1).sum::<usize>() + 128;
    let mut body = String::with_capacity(total);
    body.push_str(
        r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1234567"},"items":["#,
    );
    for (i, pod) in items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(pod);
    }
    body.push_str("]}");
    body
}

/// `GET /api/v1/pods`: the whole list, built on a blocking thread so the
/// endpoint stays responsive while lists are being built.
async fn list_pods(State(count): State<usize>) -> impl IntoResponse {
    match tokio::task::spawn_blocking(move || build_pod_list(count)).await {
        Ok(body) => Ok(([(header::CONTENT_TYPE, "application/json")], body)),
        Err(e) => Err((
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("list failed: {e}"),
        )),
    }
}

/// Incident 5: a list request that builds a huge answer.
#[derive(Parser)]
struct Args {
    /// Serve the list route and heapprof on ADDR.
    #[arg(long, value_name = "ADDR")]
    serve: String,
    /// Pods in each list answer.
    #[arg(long, value_name = "N", default_value = "10000")]
    pods: usize,
}

fn main() {
    let args = Args::parse();
    let _guard = std::env::var_os("HEAPPROF_DUMP_DIR").and_then(|dir| {
        match heapprof::OomGuardConfig::from_env().and_then(heapprof::OomGuardConfig::start) {
            Ok(guard) => {
                eprintln!(
                    "list_spike: OOM guard on: profiles go to {} at 80/90/95% of {} bytes",
                    dir.to_string_lossy(),
                    guard.limit()
                );
                Some(guard)
            }
            Err(e) => {
                eprintln!("list_spike: no OOM guard: {e}");
                None
            }
        }
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("list_spike: cannot start the runtime: {e}");
            std::process::exit(1);
        });
    if let Err(e) = runtime.block_on(serve(&args.serve, args.pods)) {
        eprintln!("list_spike: {e}");
        std::process::exit(1);
    }
}

async fn serve(addr: &str, pods: usize) -> std::io::Result<()> {
    let app = Router::new()
        .route("/api/v1/pods", get(list_pods))
        .with_state(pods)
        .merge(heapprof_http::router());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let _announced = heapprof_http::announce(bound)
        .map_err(|e| eprintln!("list_spike: not announced for `heapprof ps`: {e}"))
        .ok();
    println!("listening on http://{bound}");
    axum::serve(listener, app).await
}
