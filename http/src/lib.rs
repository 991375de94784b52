//! The HTTP edge both services share: the server loop (hyper, HTTP/1 and HTTP/2, graceful
//! shutdown) and the request limits every route gets, and the stop signal both binaries wait for. hyper itself answers a request with too
//! many or too large headers with a bare `431`; here its own limits sit well above ours, so that
//! the router answers first, in the documented `{error, message}` shape (`conveyor_api::ApiError`). It never looks into
//! bodies or routes: those are the services' own.

use std::{future::Future, io, time::Duration};

use axum::{
    extract::Request,
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
    Router,
};
use conveyor_api::ApiError;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;

/// Header fields a request may have.
pub const MAX_HEADERS: usize = 100;
/// Bytes of header names and values a request may have.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// What hyper reads at most before it answers by itself (a bare `431`): far above ours.
const TRANSPORT_MAX_HEADERS: usize = 1024;
const TRANSPORT_MAX_BUF: usize = 1 << 20;

/// Resolves on SIGTERM (how an orchestrator stops a container) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Refuses a request over [`MAX_HEADERS`] or [`MAX_HEADER_BYTES`] with `431 headers_too_large`.
pub async fn limit_headers(req: Request, next: Next) -> Response {
    let headers = req.headers();
    let bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE.as_u16(),
            "headers_too_large",
            format!(
                "{} header fields of {bytes} bytes: at most {MAX_HEADERS} fields and {MAX_HEADER_BYTES} bytes are accepted",
                headers.len()
            ),
        )
        .into_response();
    }
    next.run(req).await
}

/// Serves `router` (with [`limit_headers`] in front) on `listener` until `shutdown` resolves,
/// then stops accepting and waits for the open connections to finish.
pub async fn serve(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
    let router = router.layer(axum::middleware::from_fn(limit_headers));
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().max_headers(TRANSPORT_MAX_HEADERS).max_buf_size(TRANSPORT_MAX_BUF);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn too_many_or_too_large_headers_get_a_json_431_and_the_server_goes_on() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router, async move {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();
        let url = format!("http://{addr}/");

        let mut many = client.get(&url);
        for i in 0..150 {
            many = many.header(format!("x-h{i}"), "v");
        }
        let big = client.get(&url).header("x-big", "a".repeat(200 * 1024));
        for req in [many, big] {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 431);
            let body: conveyor_api::ErrorBody = resp.json().await.unwrap();
            assert_eq!(body.error, "headers_too_large", "{body:?}");
            assert!(body.message.contains("at most 100 fields"), "{body:?}");
        }
        assert_eq!(client.get(&url).send().await.unwrap().text().await.unwrap(), "ok", "still serving");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
