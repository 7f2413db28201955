//! The admin listener: `/metrics`, `/healthz` and `/readyz` over plain HTTP on their own
//! address (`--metrics-bind-address`), never on the tenant-facing proxy port. It carries no
//! credentials, so it is off unless the admin names an address, and where it listens decides who
//! can scrape it (the chart binds the pod's address and lets in only the namespaces it names).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Component;

/// A check behind `/healthz` or `/readyz`: `Err` carries the reason shown in the body.
pub type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// What the listener answers.
#[derive(Clone)]
pub struct Endpoints {
    /// `None`: this listener serves no `/metrics` (health only).
    pub metrics: Option<Component>,
    pub healthz: Check,
    pub readyz: Check,
}

pub fn always_ok() -> Check {
    Arc::new(|| Ok(()))
}

/// Binds early, so a port in use fails the command at start.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// Serves until `shutdown` flips to true.
pub async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    mut shutdown: watch::Receiver<bool>,
) {
    let endpoints = Arc::new(endpoints);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let Ok((tcp, _)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, endpoints.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn text(code: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn check(c: &Check) -> Response<Full<Bytes>> {
    match c() {
        Ok(()) => text(StatusCode::OK, "text/plain", "ok\n".into()),
        Err(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("{why}\n"),
        ),
    }
}

async fn answer(
    req: Request<Incoming>,
    endpoints: Arc<Endpoints>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ));
    }
    Ok(match (req.uri().path(), endpoints.metrics) {
        ("/metrics", Some(component)) => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            super::get().render(component),
        ),
        ("/healthz" | "/livez", _) => check(&endpoints.healthz),
        ("/readyz", _) => check(&endpoints.readyz),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    })
}
