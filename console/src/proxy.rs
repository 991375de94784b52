//! The page's API calls, passed to the service that answers them: `/api/ci/<route>` to
//! ci-service and `/api/cd/<route>` to cd-service. Only the routes the page uses pass (reads,
//! and the actions cancel, retry, replay and promote); the method, query, body, `Authorization`,
//! `Accept` and `Content-Type` go through unchanged and the answer streams back as it comes
//! (build logs are Server-Sent Events). A service that does not answer is a `502` in the
//! services' error shape, never a blank page.

use std::{path::Path, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::{rejection::BytesRejection, Path as UrlPath, RawQuery, State},
    http::{header, HeaderMap, HeaderValue, Method},
    response::{IntoResponse, Response},
    routing::any,
    Router,
};
use conveyor_api::ApiError;
use futures::TryStreamExt;

/// Request bodies the page sends are small JSON objects.
const MAX_BODY: usize = 64 * 1024;

pub struct Upstreams {
    http: reqwest::Client,
    ci: String,
    cd: String,
}

impl Upstreams {
    pub fn new(ci: &str, cd: &str, ca_file: Option<&Path>) -> anyhow::Result<Self> {
        // No overall timeout: a log stream lasts as long as its build.
        let mut http = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read the CA file {}: {e}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
                http = http.add_root_certificate(cert);
            }
        }
        Ok(Upstreams { http: http.build()?, ci: ci.trim_end_matches('/').into(), cd: cd.trim_end_matches('/').into() })
    }
}

pub fn router(upstreams: Arc<Upstreams>) -> Router {
    Router::new().route("/api/{service}/{*route}", any(pass)).with_state(upstreams)
}

/// Whether the page may call `method route` of `service` through the console.
fn allowed(service: &str, method: &Method, route: &str) -> bool {
    let parts: Vec<&str> = route.split('/').collect();
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match (service, method.as_str(), parts.as_slice()) {
        ("ci", "GET", ["builds"]) => true,
        ("ci", "GET", ["builds", id]) | ("ci", "GET", ["builds", id, "logs"]) => number(id),
        ("ci", "POST", ["builds", id, "cancel" | "retry"]) => number(id),
        ("cd", "GET", ["environments" | "history" | "outcomes"]) => true,
        ("cd", "POST", ["replay" | "promote"]) => true,
        _ => false,
    }
}

async fn pass(
    State(up): State<Arc<Upstreams>>,
    UrlPath((service, route)): UrlPath<(String, String)>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let base = match service.as_str() {
        "ci" => &up.ci,
        "cd" => &up.cd,
        _ => {
            return ApiError::new(404, "not_found", format!("no service {service:?}: the console passes calls to `ci` and `cd`"))
                .into_response()
        }
    };
    if !allowed(&service, &method, &route) {
        return ApiError::new(404, "not_found", format!("the console does not pass {method} /{route} to {service}-service"))
            .into_response();
    }
    let body = match body {
        Ok(b) if b.len() <= MAX_BODY => b,
        Ok(_) => return ApiError::new(413, "body_too_large", format!("the body is larger than {MAX_BODY} bytes")).into_response(),
        Err(r) => return ApiError::new(r.status().as_u16(), "bad_request", r.body_text()).into_response(),
    };
    let mut url = format!("{base}/{route}");
    if let Some(q) = query {
        url.push('?');
        url.push_str(&q);
    }
    let mut req = up.http.request(method, &url).body(body);
    for name in [header::AUTHORIZATION, header::ACCEPT, header::CONTENT_TYPE] {
        if let Some(v) = headers.get(&name) {
            req = req.header(name, v);
        }
    }
    let answer = match req.send().await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(%url, error = %e, "service did not answer");
            return ApiError::new(502, "service_unavailable", format!("{service}-service did not answer: {e}")).into_response();
        }
    };
    let status = answer.status();
    let mut out = Response::builder().status(status.as_u16());
    for name in [header::CONTENT_TYPE, header::CACHE_CONTROL, header::LOCATION] {
        if let Some(v) = answer.headers().get(&name) {
            out = out.header(name, v);
        }
    }
    // Proxies between here and the browser must not buffer a log stream.
    out = out.header("x-accel-buffering", HeaderValue::from_static("no"));
    let stream = answer.bytes_stream().map_err(std::io::Error::other);
    out.body(Body::from_stream(stream)).unwrap_or_else(|e| ApiError::new(500, "internal", e.to_string()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_routes_the_page_uses_pass() {
        let (get, post, delete) = (Method::GET, Method::POST, Method::DELETE);
        for (service, method, route) in [
            ("ci", &get, "builds"),
            ("ci", &get, "builds/12"),
            ("ci", &get, "builds/12/logs"),
            ("ci", &post, "builds/12/cancel"),
            ("ci", &post, "builds/12/retry"),
            ("cd", &get, "environments"),
            ("cd", &get, "history"),
            ("cd", &get, "outcomes"),
            ("cd", &post, "replay"),
            ("cd", &post, "promote"),
        ] {
            assert!(allowed(service, method, route), "{service} {method} {route}");
        }
        for (service, method, route) in [
            ("ci", &get, "metrics"),
            ("ci", &post, "hooks/push"),
            ("ci", &post, "builds"),
            ("ci", &get, "builds/../metrics"),
            ("ci", &get, "builds/12/logs/x"),
            ("ci", &delete, "builds/12"),
            ("cd", &get, "metrics"),
            ("cd", &get, "replay"),
            ("cd", &post, "history"),
            ("cd", &get, "environments/x"),
            ("xx", &get, "builds"),
        ] {
            assert!(!allowed(service, method, route), "{service} {method} {route}");
        }
    }
}
