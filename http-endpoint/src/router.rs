//! The routers: the full debug endpoint and `/metrics` alone.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::auth::require_token;
use crate::config::Config;
use crate::error::Error;
use crate::routes::{cmdline, empty, goroutine, heap, index, leaks, profile, sampling, symbol};
use crate::state::AppState;

/// Every route of the endpoint with [`Config::from_env`] settings
/// (`HEAPPROF_TOKEN` turns on bearer auth): `/debug/pprof/` (index),
/// `/debug/pprof/{heap,allocs,profile,goroutine,cmdline,symbol}`, the
/// always-empty `/debug/pprof/{block,mutex,threadcreate}` (so default
/// Parca and Alloy scrapes succeed) and `/metrics`.
///
/// Nestable; the state is inside, so the router is `Router<()>`. Build it
/// once: its limits (single flight, build slots) are per router.
pub fn router() -> Router {
    Config::from_env().router()
}

/// Only `GET /metrics` (Prometheus text), with [`Config::from_env`]
/// settings, for services that already serve the rest elsewhere.
pub fn metrics_router() -> Router {
    Config::from_env().metrics_router()
}

pub(crate) fn build(config: &Config) -> Router {
    let pprof = Router::new()
        .route("/debug/pprof", get(index::index))
        .route("/debug/pprof/", get(index::index))
        .route("/debug/pprof/heap", get(heap::heap))
        .route("/debug/pprof/allocs", get(heap::allocs))
        .route("/debug/pprof/profile", get(profile::profile))
        .route("/debug/pprof/cmdline", get(cmdline::cmdline))
        .route("/debug/pprof/goroutine", get(goroutine::goroutine))
        .route("/debug/pprof/block", get(empty::block))
        .route("/debug/pprof/mutex", get(empty::mutex))
        .route("/debug/pprof/threadcreate", get(empty::threadcreate))
        .route(
            "/debug/pprof/symbol",
            get(symbol::symbol).post(symbol::symbol),
        )
        .route("/debug/heapprof/leaks", get(leaks::leaks))
        .route("/debug/heapprof/sampling", get(sampling::sampling))
        .with_state(AppState::new(config));
    with_auth(pprof.merge(metrics_routes()), config)
}

pub(crate) fn build_metrics(config: &Config) -> Router {
    with_auth(metrics_routes(), config)
}

fn metrics_routes() -> Router {
    Router::new().route("/metrics", get(crate::metrics::handler))
}

fn with_auth(router: Router, config: &Config) -> Router {
    let router = match &config.token {
        Some(token) => {
            let token: Arc<str> = Arc::from(token.as_str());
            router.layer(axum::middleware::from_fn_with_state(token, require_token))
        }
        None => router,
    };
    // Outermost: refuse an oversized body before reading any of it.
    router
        .layer(DefaultBodyLimit::max(symbol::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(refuse_large_bodies))
}

/// Answers 413 at once to a request whose `Content-Length` is beyond the
/// largest body any route reads.
async fn refuse_large_bodies(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > symbol::MAX_BODY_BYTES as u64 => Error::TooLarge(format!(
            "a body of {n} bytes; at most {} are read",
            symbol::MAX_BODY_BYTES
        ))
        .into_response(),
        _ => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, to_bytes};
    use axum::http::{Request, StatusCode, header};
    use tower::ServiceExt;

    use super::*;

    async fn call(
        router: &Router,
        request: Request<Body>,
    ) -> (StatusCode, header::HeaderMap, Vec<u8>) {
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, headers, body.to_vec())
    }

    fn get(uri: &str) -> Request<Body> {
        Request::get(uri).body(Body::empty()).unwrap()
    }

    fn open() -> Router {
        Config::new().router()
    }

    #[tokio::test]
    async fn heap_is_gzipped_pprof_like_go() {
        let (status, headers, body) = call(&open(), get("/debug/pprof/heap")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "application/octet-stream");
        assert_eq!(
            headers[header::CONTENT_DISPOSITION],
            "attachment; filename=\"heap\""
        );
        assert_eq!(&body[..2], &[0x1f, 0x8b], "gzip magic");

        let (status, headers, _) = call(&open(), get("/debug/pprof/allocs?gc=1")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers[header::CONTENT_DISPOSITION],
            "attachment; filename=\"allocs\""
        );
    }

    #[tokio::test]
    async fn debug_1_is_go_text() {
        let (status, headers, body) = call(&open(), get("/debug/pprof/heap?debug=1")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with("heap profile: "), "{text}");
    }

    #[tokio::test]
    async fn bad_parameters_are_400_with_the_reason() {
        let router = open();
        for (uri, reason) in [
            (
                "/debug/pprof/heap?seconds=abc",
                "seconds=\"abc\": expected a whole number",
            ),
            ("/debug/pprof/heap?seconds=-1", "seconds=\"-1\""),
            ("/debug/pprof/heap?seconds=301", "from 1 to 300"),
            ("/debug/pprof/heap?debug=7", "debug=\"7\": expected 0 or 1"),
            ("/debug/pprof/heap?gc=x", "gc=\"x\": expected 0 or 1"),
            ("/debug/pprof/allocs?debug=2", "expected 0 or 1"),
            ("/debug/pprof/heap?seconds=1&debug=1", "cannot be combined"),
            ("/debug/pprof/profile?seconds=0", "from 1 to 300"),
            ("/debug/pprof/profile?debug=1", "protobuf only"),
        ] {
            let (status, _, body) = call(&router, get(uri)).await;
            let body = String::from_utf8(body).unwrap();
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
            assert!(body.contains(reason), "{uri}: {body}");
        }
    }

    #[tokio::test]
    async fn token_is_required_on_every_route() {
        let router = Config::new().token(Some("s3cret".into())).router();
        for uri in [
            "/debug/pprof/",
            "/debug/pprof/heap",
            "/debug/pprof/cmdline",
            "/metrics",
        ] {
            let (status, headers, body) = call(&router, get(uri)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
            assert!(headers.contains_key(header::WWW_AUTHENTICATE));
            assert!(
                String::from_utf8(body)
                    .unwrap()
                    .contains("Authorization: Bearer")
            );

            let wrong = Request::get(uri)
                .header(header::AUTHORIZATION, "Bearer s3creT")
                .body(Body::empty())
                .unwrap();
            assert_eq!(
                call(&router, wrong).await.0,
                StatusCode::UNAUTHORIZED,
                "{uri}"
            );

            let right = Request::get(uri)
                .header(header::AUTHORIZATION, "Bearer s3cret")
                .body(Body::empty())
                .unwrap();
            assert_eq!(call(&router, right).await.0, StatusCode::OK, "{uri}");
        }
        let metrics_only = Config::new().token(Some("s3cret".into())).metrics_router();
        assert_eq!(
            call(&metrics_only, get("/metrics")).await.0,
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn index_cmdline_symbol_metrics() {
        let router = open();
        let (status, _, body) = call(&router, get("/debug/pprof/")).await;
        assert_eq!(status, StatusCode::OK);
        let page = String::from_utf8(body).unwrap();
        for link in [
            "href='heap?debug=1'",
            "href='allocs?debug=1'",
            "href='profile'",
            "href='cmdline'",
            "href='symbol'",
            "href='goroutine?debug=1'",
            "href='goroutine?debug=2'",
            "href='block?debug=1'",
            "href='mutex?debug=1'",
            "href='threadcreate?debug=1'",
        ] {
            assert!(page.contains(link), "{link} missing:\n{page}");
        }

        let (status, _, body) = call(&router, get("/debug/pprof/cmdline")).await;
        assert_eq!(status, StatusCode::OK);
        let args: Vec<String> = std::env::args().collect();
        assert_eq!(body, args.join("\0").into_bytes());

        let (status, _, body) = call(&router, get("/debug/pprof/symbol")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, b"num_symbols: 1\n");

        let (status, headers, body) = call(&metrics_router(), get("/metrics")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], crate::metrics::CONTENT_TYPE);
        assert!(
            String::from_utf8(body)
                .unwrap()
                .contains("# TYPE heapprof_inuse_bytes gauge")
        );
    }

    #[tokio::test]
    async fn goroutine_block_mutex_threadcreate_answer_like_go() {
        let router = open();
        let (status, headers, body) = call(&router, get("/debug/pprof/goroutine")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers[header::CONTENT_DISPOSITION],
            "attachment; filename=\"goroutine\""
        );
        assert_eq!(&body[..2], &[0x1f, 0x8b], "gzip magic");
        let (status, _, body) = call(&router, get("/debug/pprof/goroutine?debug=1")).await;
        assert_eq!(status, StatusCode::OK);
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with("goroutine profile: total "), "{text}");
        let (status, _, body) = call(&router, get("/debug/pprof/goroutine?debug=2")).await;
        assert_eq!(status, StatusCode::OK);
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with("thread "), "{text}");
        for name in ["block", "mutex", "threadcreate"] {
            let (status, headers, body) = call(&router, get(&format!("/debug/pprof/{name}"))).await;
            assert_eq!(status, StatusCode::OK, "{name}");
            assert_eq!(headers[header::CONTENT_TYPE], "application/octet-stream");
            assert_eq!(&body[..2], &[0x1f, 0x8b], "gzip magic");
            let (status, _, body) =
                call(&router, get(&format!("/debug/pprof/{name}?debug=1"))).await;
            assert_eq!(status, StatusCode::OK, "{name}");
            assert!(String::from_utf8(body).unwrap().contains("heapprof: Rust"));
        }
        let (status, _, _) = call(&router, get("/debug/pprof/goroutine?seconds=5")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn builds_beyond_the_limit_get_429_with_retry_after() {
        use std::time::Duration;
        let config = Config::new()
            .max_builds(1)
            .max_delta_requests(1)
            .queue_wait(Duration::from_millis(50));
        let router = config.router();
        // One delta holds the only window for a second; a second delta is refused at once.
        let holder = tokio::spawn({
            let router = router.clone();
            async move { call(&router, get("/debug/pprof/heap?seconds=1")).await.0 }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, headers, body) = call(&router, get("/debug/pprof/heap?seconds=1")).await;
        assert_eq!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            headers[header::RETRY_AFTER]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                >= 1
        );
        assert_eq!(holder.await.unwrap(), StatusCode::OK);
    }
}
