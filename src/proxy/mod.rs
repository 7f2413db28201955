//! The tenant-facing TLS listener. Authenticates the caller (client certificate of the tenant CA,
//! or a bearer token checked by TokenReview), then forwards the request to the virtual API server
//! over a connection authenticated as the front proxy, with the caller's identity in requestheader
//! headers, so RBAC inside the virtual cluster decides. Bodies stream both ways (watch never
//! buffers) and protocol upgrades are tunnelled. Pod logs, exec, attach and port-forward are
//! served from the host pod (module `pods`).

pub mod activity;
pub mod auth;
pub mod identity;
pub mod pods;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::syncer::recreations::Recreations;
use auth::{CertRefusal, ClientCertPolicy, TokenAuthenticator};
use identity::Identity;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Not `Sync`: host responses come from kube's client body, which is `Send` only (all hyper
/// needs).
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
type Backend = Client<hyper_rustls::HttpsConnector<HttpConnector>, Limited<Incoming>>;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request body forwarded to the virtual API server. Bodies stream (never buffered
/// here); this bounds what a caller can make the API server read. Above the API server's own
/// 3 MiB, so a request it would accept is never refused here.
pub const MAX_REQUEST_BODY: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct ProxyConfig {
    pub tls: Arc<rustls::ServerConfig>,
    /// `https://127.0.0.1:PORT` of the virtual API server.
    pub backend_url: String,
    /// Trusts the API server's CA and presents the front-proxy client certificate.
    pub backend_tls: rustls::ClientConfig,
    pub tokens: TokenAuthenticator,
    /// Which verified client certificates are accepted (revocation epoch, no system:masters).
    pub client_certs: ClientCertPolicy,
    /// Serves pod logs/exec/attach/port-forward from the host; `None` leaves them to the
    /// virtual API server (which has no kubelet to ask).
    pub pods: Option<pods::PodRouter>,
    /// Where the tenant's use of its API is counted (for sleep); `None`: not counted.
    pub activity: Option<Arc<activity::Activity>>,
    /// Pod creates wait while the syncer's queue of pods waiting for their host pod is full
    /// (`syncer::backlog::PodCreatePace`); `None`: not paced (no syncer, or turned off).
    pub pod_pace: Option<crate::syncer::backlog::PodCreatePace>,
    /// Virtual Services the syncer is re-creating with the host's cluster IP: requests naming
    /// one wait until it exists again (`None`: no syncer).
    pub service_recreations: Option<Arc<Recreations>>,
}

/// A readiness condition beyond the API server's own (the syncer caught up).
pub type ReadinessGate = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

struct State {
    gate: Option<ReadinessGate>,
    backend: Backend,
    backend_url: String,
    tokens: TokenAuthenticator,
    client_certs: ClientCertPolicy,
    pods: Option<pods::PodRouter>,
    activity: Option<Arc<activity::Activity>>,
    pod_pace: Option<crate::syncer::backlog::PodCreatePace>,
    service_recreations: Option<Arc<Recreations>>,
    ready: AtomicBool,
}

/// A bound listener; `serve` runs until `shutdown` flips to true.
pub struct Proxy {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<State>,
}

/// Binds early so that a port in use fails `vkube serve` before any child process starts.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ProxyError::Bind { addr, source })
}

impl Proxy {
    pub fn new(listener: TcpListener, config: ProxyConfig) -> Proxy {
        // Small request/response exchanges on loopback: no Nagle delay on the backend side
        // either (the tenant side sets it per accepted socket).
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config.backend_tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let backend = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .build(connector);
        Proxy {
            listener,
            tls: config.tls,
            state: Arc::new(State {
                gate: None,
                backend,
                backend_url: config.backend_url.trim_end_matches('/').to_string(),
                tokens: config.tokens,
                client_certs: config.client_certs,
                pods: config.pods,
                activity: config.activity,
                pod_pace: config.pod_pace,
                service_recreations: config.service_recreations,
                ready: AtomicBool::new(false),
            }),
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// `/readyz` answers 503 with the gate's reason while it fails, even once the API server is
    /// ready (the syncer still listing). Other requests are not held back.
    pub fn with_readiness_gate(mut self, gate: ReadinessGate) -> Proxy {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.gate = Some(gate);
        }
        self
    }

    /// Readiness as reported on `/readyz`; requests other than health checks get 503 until set.
    pub fn set_ready(&self, ready: bool) {
        self.state.ready.store(ready, Ordering::SeqCst);
    }

    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = shutdown.changed() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let state = self.state.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let cert_identity = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|der| match crate::pki::cert_facts(der) {
                        Ok(facts) => state.client_certs.identity(&facts),
                        Err(_) => Err(CertRefusal::NoUser),
                    });
                let cert_identity = Arc::new(cert_identity);
                let service = hyper::service::service_fn(move |req| {
                    handle(req, cert_identity.clone(), state.clone())
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "connection ended with error");
                }
            });
        }
    }
}

pub(crate) fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A Kubernetes `Status` response, as the API server itself would send.
pub fn status_response(code: StatusCode, reason: &str, message: &str) -> Response<ProxyBody> {
    status_with_details(code, reason, message, None)
}

/// A `Status` naming the object it is about (`details`), as the API server sends for objects.
pub(crate) fn status_with_details(
    code: StatusCode,
    reason: &str,
    message: &str,
    details: Option<serde_json::Value>,
) -> Response<ProxyBody> {
    let mut body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    if let Some(d) = details {
        body["details"] = d;
    }
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn is_health_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/livez" | "/readyz")
        || path.starts_with("/healthz/")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/")
}

/// Answers one request, recording it in the proxy's metrics (verb, resource and code from fixed
/// sets: see `metrics::labels`).
async fn handle(
    req: Request<Incoming>,
    cert_identity: Arc<Option<Result<Identity, CertRefusal>>>,
    state: Arc<State>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = std::time::Instant::now();
    let (verb, resource) =
        crate::metrics::labels::request(req.method(), req.uri().path(), req.uri().query());
    let Ok(resp) = route(req, cert_identity, state).await;
    let m = &crate::metrics::get().proxy;
    let code = resp.status().as_u16();
    m.requests
        .get_or_create(&crate::metrics::RequestLabels {
            verb,
            resource,
            code,
        })
        .inc();
    m.request_duration
        .get_or_create(&crate::metrics::RouteLabels { verb, resource })
        .observe(started.elapsed().as_secs_f64());
    if verb == "watch" && resp.status().is_success() {
        // Open until the watch's body is dropped: ended by either side.
        let open = crate::metrics::OpenGuard::open(&m.open_watches);
        let (parts, body) = resp.into_parts();
        let body = body
            .map_frame(move |frame| {
                let _ = &open;
                frame
            })
            .boxed_unsync();
        return Ok(Response::from_parts(parts, body));
    }
    Ok(resp)
}

async fn route(
    req: Request<Incoming>,
    cert_identity: Arc<Option<Result<Identity, CertRefusal>>>,
    state: Arc<State>,
) -> Result<Response<ProxyBody>, Infallible> {
    let ready = state.ready.load(Ordering::SeqCst);
    let path = req.uri().path().to_string();
    if is_health_path(&path) {
        if !ready {
            if path.starts_with("/readyz") {
                let mut r = Response::new(full("virtual control plane is starting\n"));
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return Ok(r);
            }
            return Ok(Response::new(full("ok")));
        }
        if path.starts_with("/readyz")
            && let Some(Err(why)) = state.gate.as_ref().map(|g| g())
        {
            let mut r = Response::new(full(format!("{why}\n")));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return Ok(r);
        }
        // Health of the virtual API server itself, asked anonymously: RBAC lets anyone read it.
        // Never activity: the kubelet's and the manager's probes must not keep it awake.
        return Ok(forward(req, Some(&Identity::anonymous()), &state, None).await);
    }
    if !ready {
        return Ok(status_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the virtual control plane is starting; retry in a few seconds",
        ));
    }
    let identity = match cert_identity.as_ref() {
        Some(Ok(id)) => id.clone(),
        // A certificate of the tenant CA that is revoked: say why (never which certificate).
        Some(Err(refusal)) => {
            tracing::debug!(reason = %refusal, "client certificate refused");
            return Ok(status_response(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                &refusal.to_string(),
            ));
        }
        None => match identity::bearer_token(req.headers()) {
            Some(token) => match state.tokens.authenticate(token).await {
                Ok(Some(id)) => id,
                Ok(None) => return Ok(unauthorized()),
                Err(e) => {
                    tracing::warn!(error = %e, "token review failed");
                    return Ok(status_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "ServiceUnavailable",
                        "could not verify the bearer token; retry",
                    ));
                }
            },
            None => return Ok(unauthorized()),
        },
    };
    // In use from here until the response (stream, upgraded connection) ends.
    let in_flight = state
        .activity
        .as_ref()
        .filter(|_| activity::counts(&identity))
        .map(|a| a.begin());
    let resp = match (pods::route(&path), &state.pods) {
        (pods::Route::Host(target), Some(router)) => {
            tracing::debug!(user = %identity.user, %path, "serving from the host pod");
            router
                .serve(req, target, &identity, in_flight.clone())
                .await
        }
        (pods::Route::Invalid, _) => status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "invalid request path",
        ),
        _ => {
            tracing::trace!(user = %identity.user, method = %req.method(), %path, "forwarding");
            if let Some(pace) = &state.pod_pace
                && is_pod_create(req.method(), &path)
            {
                pace.wait().await;
            }
            if let Some(recreations) = &state.service_recreations
                && let Some((namespace, name)) = named_service(&path)
                && recreations.contains(namespace, name)
            {
                // Deleted and created again by the syncer this very moment: answering now
                // would say it does not exist (a delete or get would fail with NotFound).
                tracing::debug!(service = %format!("{namespace}/{name}"), "held while the service is re-created");
                if !recreations.wait(namespace, name, RECREATION_HOLD).await {
                    tracing::warn!(service = %format!("{namespace}/{name}"), "re-creation took longer than the hold; forwarding");
                }
            }
            forward(req, Some(&identity), &state, in_flight.clone()).await
        }
    };
    Ok(match in_flight {
        Some(held) => resp.map(|body| {
            body.map_frame(move |frame| {
                let _ = &held;
                frame
            })
            .boxed_unsync()
        }),
        None => resp,
    })
}

/// `POST /api/v1/namespaces/NS/pods`: a pod create (not a subresource, not another kind).
fn is_pod_create(method: &hyper::Method, path: &str) -> bool {
    if method != hyper::Method::POST {
        return false;
    }
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    matches!(
        segments.as_slice(),
        ["", "api", "v1", "namespaces", ns, "pods"] if !ns.is_empty()
    )
}

/// The Service a request addresses by name, `/api/v1/namespaces/NS/services/NAME[/...]`
/// (the object or its subresources).
fn named_service(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let mut segments = rest.split('/');
    let namespace = segments.next().filter(|s| !s.is_empty())?;
    (segments.next()? == "services").then_some(())?;
    let name = segments.next().filter(|s| !s.is_empty())?;
    Some((namespace, name))
}

/// How long a request waits for a Service's re-creation (normally milliseconds: a delete and
/// a create on the local API server); after it, it is forwarded anyway.
const RECREATION_HOLD: Duration = Duration::from_secs(10);

/// Buffer per direction of an upgraded stream. Port-forward and exec carry bulk data; tokio's
/// default 8 KiB means many small TLS records and syscalls (measured: 100 MiB port-forward
/// echo at 0.69 of the direct rate with 8 KiB).
const TUNNEL_BUFFER: usize = 64 * 1024;

/// Copies an upgraded (101) connection both ways until both sides are done. Each direction is
/// shut down on its own EOF: a half-close reaches the far end (stdin closed, `cat` ends) while
/// output still flows back. `in_flight` (the request's activity) lasts as long as the tunnel.
pub(crate) fn spawn_tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    in_flight: Option<activity::InFlight>,
) {
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let _open = crate::metrics::OpenGuard::open(&crate::metrics::get().proxy.open_streams);
        match tokio::try_join!(client, backend) {
            Ok((client, backend)) => {
                let mut client = TokioIo::new(client);
                let mut backend = TokioIo::new(backend);
                if let Err(e) = tokio::io::copy_bidirectional_with_sizes(
                    &mut client,
                    &mut backend,
                    TUNNEL_BUFFER,
                    TUNNEL_BUFFER,
                )
                .await
                {
                    tracing::debug!(error = %e, "upgraded stream ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
}

fn too_large() -> Response<ProxyBody> {
    status_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
        &format!(
            "the request body is larger than vkube's limit of {} MiB",
            MAX_REQUEST_BODY / (1024 * 1024)
        ),
    )
}

/// Whether a failed backend request failed because the caller's body passed the limit.
fn exceeded_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

fn unauthorized() -> Response<ProxyBody> {
    status_response(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
}

async fn forward(
    mut req: Request<Incoming>,
    identity: Option<&Identity>,
    state: &State,
    in_flight: Option<activity::InFlight>,
) -> Response<ProxyBody> {
    let upgrade = identity::is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri: http::Uri = match format!("{}{}", state.backend_url, path_and_query).parse() {
        Ok(u) => u,
        Err(_) => {
            return status_response(StatusCode::BAD_REQUEST, "BadRequest", "invalid request URI");
        }
    };
    // Declared too large: refused before the API server is asked. Bodies without a length
    // (chunked) are cut off by `Limited` once they pass the limit.
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REQUEST_BODY as u64) {
        return too_large();
    }
    let mut backend_req = Request::new(Limited::new(body, MAX_REQUEST_BODY));
    *backend_req.method_mut() = parts.method;
    *backend_req.uri_mut() = uri;
    *backend_req.version_mut() = Version::HTTP_11;
    *backend_req.headers_mut() = identity::forwarded_headers(&parts.headers, identity);

    let mut resp = match state.backend.request(backend_req).await {
        Ok(r) => r,
        Err(e) if exceeded_limit(&e) => return too_large(),
        Err(e) => {
            tracing::warn!(error = %e, "virtual API server unreachable");
            return status_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the virtual API server is not reachable; retry in a few seconds",
            );
        }
    };
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching && let Some(client_upgrade) = client_upgrade {
        spawn_tunnel(client_upgrade, hyper::upgrade::on(&mut resp), in_flight);
    }
    let (mut parts, body) = resp.into_parts();
    identity::strip_hop_by_hop(&mut parts.headers, switching);
    Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pod_creates_are_paced() {
        let post = hyper::Method::POST;
        assert!(is_pod_create(&post, "/api/v1/namespaces/default/pods"));
        assert!(is_pod_create(&post, "/api/v1/namespaces/default/pods/"));
        for path in [
            "/api/v1/namespaces/default/pods/web/eviction",
            "/api/v1/namespaces/default/pods/web/binding",
            "/api/v1/namespaces/default/services",
            "/api/v1/namespaces//pods",
            "/api/v1/pods",
            "/apis/apps/v1/namespaces/default/deployments",
        ] {
            assert!(!is_pod_create(&post, path), "{path}");
        }
        assert!(!is_pod_create(
            &hyper::Method::GET,
            "/api/v1/namespaces/default/pods"
        ));
    }

    #[test]
    fn only_requests_naming_one_service_wait_for_its_recreation() {
        assert_eq!(
            named_service("/api/v1/namespaces/default/services/api"),
            Some(("default", "api"))
        );
        assert_eq!(
            named_service("/api/v1/namespaces/default/services/api/status"),
            Some(("default", "api"))
        );
        for path in [
            "/api/v1/namespaces/default/services",
            "/api/v1/namespaces/default/services/",
            "/api/v1/services",
            "/api/v1/namespaces/default/pods/api",
            "/api/v1/namespaces//services/api",
            "/apis/example.com/v1/namespaces/a/services/b",
        ] {
            assert_eq!(named_service(path), None, "{path}");
        }
    }
}
