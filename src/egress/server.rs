//! The HTTP CONNECT proxy the virtual API server dials through (its egress selector's
//! `HTTPConnect` over a Unix socket). One CONNECT per outbound connection: the destination is
//! resolved once, every address is judged by [`super::decide`], and only an allowed address is
//! dialled (the one that was judged, so a name cannot change its answer in between). A refusal is
//! a 403 whose status line says why; kube-apiserver puts that line into the error the tenant
//! sees ("proxy error from ... code 403: 403 vkube refused ..."). Only the API server (same
//! user, a socket file of mode 0600 in a directory of mode 0700) can connect.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpStream, UnixListener};
use tokio::sync::watch;

use super::{Allowed, EgressPolicy, Refusal, TenantAddresses, decide};

/// Longest a Unix socket path may be (`sun_path` holds 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Waiting for the request line, for the tenant's addresses to be known, for a name to
/// resolve, for the destination to answer: each bounded, so a stuck step fails one dial only.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const ADDRESSES_TIMEOUT: Duration = Duration::from_secs(10);
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error(
        "the API server egress socket path {path} is longer than {MAX_SOCKET_PATH} bytes: choose a shorter --data-dir"
    )]
    PathTooLong { path: PathBuf },
    #[error("{path} exists and is not a socket; remove it or choose another --data-dir")]
    NotASocket { path: PathBuf },
    #[error("preparing the API server egress socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the socket goes in the data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("egress").join("apiserver-egress.sock")
}

/// Counts, for the log lines.
#[derive(Default)]
struct Counters {
    allowed: AtomicU64,
    refused: AtomicU64,
}

/// A refusal is logged once a minute per destination: the aggregator probes a refused
/// APIService several times a second, and a tenant must not be able to flood vkube's log.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Destinations remembered for that; beyond it the memory starts over.
const LOGGED_MAX: usize = 1024;

#[derive(Default)]
struct RefusalLog(std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>);

impl RefusalLog {
    /// Whether a refusal of `destination` is to be logged now.
    fn due(&self, destination: &str) -> bool {
        let Ok(mut seen) = self.0.lock() else {
            return true;
        };
        let now = std::time::Instant::now();
        match seen.get(destination) {
            Some(last) if now.duration_since(*last) < LOG_EVERY => false,
            _ => {
                if seen.len() >= LOGGED_MAX {
                    seen.clear();
                }
                seen.insert(destination.to_string(), now);
                true
            }
        }
    }
}

struct State {
    policy: EgressPolicy,
    addresses: Arc<dyn TenantAddresses>,
    counters: Counters,
    logged: RefusalLog,
    local: Option<LocalBackend>,
}

/// A backend vkube serves in-process: a CONNECT to exactly `host:port` (a name that resolves
/// nowhere, e.g. under `.invalid`) is handed to `serve` instead of being dialled, whatever the
/// egress mode (see `crate::metrics_api`).
pub struct LocalBackend {
    pub host: String,
    pub port: u16,
    pub serve: Arc<
        dyn Fn(TokioIo<hyper::upgrade::Upgraded>) -> futures::future::BoxFuture<'static, ()>
            + Send
            + Sync,
    >,
}

/// A bound socket; [`EgressGuard::serve`] answers on it. The socket file is removed when the
/// guard is dropped, served or not.
pub struct EgressGuard {
    listener: UnixListener,
    socket: SocketFile,
    state: Arc<State>,
}

/// Removes the socket file when dropped.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl EgressGuard {
    /// Binds the socket before the API server starts (it refuses to start without it). A socket
    /// left by a run that died is replaced; any other file there is an error.
    pub fn bind(
        path: &Path,
        policy: EgressPolicy,
        addresses: Arc<dyn TenantAddresses>,
    ) -> Result<EgressGuard, EgressError> {
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(EgressError::PathTooLong { path: path.into() });
        }
        let io = |source| EgressError::Socket {
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(io)?,
            Ok(_) => return Err(EgressError::NotASocket { path: path.into() }),
            Err(_) => {}
        }
        let listener = UnixListener::bind(path).map_err(io)?;
        let socket = SocketFile(path.into());
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        Ok(EgressGuard {
            listener,
            socket,
            state: Arc::new(State {
                policy,
                addresses,
                counters: Counters::default(),
                logged: RefusalLog::default(),
                local: None,
            }),
        })
    }

    /// Serves CONNECTs to `backend`'s name in-process (before [`EgressGuard::serve`]).
    pub fn with_local(mut self, backend: LocalBackend) -> EgressGuard {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.local = Some(backend);
        }
        self
    }

    pub fn path(&self) -> &Path {
        &self.socket.0
    }

    /// Answers CONNECTs until `shutdown` flips, then removes the socket.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(socket = %self.socket.0.display(), mode = ?self.state.policy.mode, "API server egress guard listening");
        loop {
            let stream = tokio::select! {
                a = self.listener.accept() => match a {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "egress guard: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => break,
            };
            let state = self.state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| handle(req, state.clone()));
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "egress guard: connection ended with error");
                }
            });
        }
        let c = &self.state.counters;
        tracing::info!(
            allowed = c.allowed.load(Ordering::Relaxed),
            refused = c.refused.load(Ordering::Relaxed),
            "API server egress guard stopped"
        );
    }
}

type Body = Full<Bytes>;

/// A response whose status line carries `reason` (kube-apiserver shows the line, not the body).
fn answer(code: StatusCode, reason: &str) -> Response<Body> {
    let line: String = reason
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    let mut resp = Response::new(Full::new(Bytes::from(format!("{line}\n"))));
    *resp.status_mut() = code;
    if let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(line) {
        resp.extensions_mut().insert(phrase);
    }
    resp
}

/// The destination of a CONNECT: `host:port`, the host an IP (IPv6 in brackets) or a name.
fn destination(uri: &http::Uri) -> Option<(String, u16)> {
    let authority = uri.authority()?;
    let port = authority.port_u16().filter(|p| *p != 0)?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    (!host.is_empty() && host.len() <= 253).then(|| (host.to_string(), port))
}

async fn resolve(host: &str, port: u16) -> Result<Vec<IpAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => {
            let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            ips.dedup();
            if ips.is_empty() {
                Err(format!("{host} has no address"))
            } else {
                Ok(ips)
            }
        }
        Ok(Err(e)) => Err(format!("cannot resolve {host}: {e}")),
        Err(_) => Err(format!("resolving {host} timed out")),
    }
}

async fn handle(
    mut req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Body>, Infallible> {
    if req.method() != Method::CONNECT {
        return Ok(answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "vkube egress guard: only CONNECT",
        ));
    }
    let Some((host, port)) = destination(req.uri()) else {
        return Ok(answer(
            StatusCode::BAD_REQUEST,
            "vkube egress guard: CONNECT needs host:port",
        ));
    };
    if let Some(local) = &state.local
        && host.eq_ignore_ascii_case(&local.host)
        && port == local.port
    {
        let upgrade = hyper::upgrade::on(&mut req);
        let serve = local.serve.clone();
        tokio::spawn(async move {
            match upgrade.await {
                Ok(upgraded) => serve(TokioIo::new(upgraded)).await,
                Err(e) => tracing::debug!(error = %e, "egress: in-process backend not upgraded"),
            }
        });
        return Ok(Response::new(Full::new(Bytes::new())));
    }
    let ips = match resolve(&host, port).await {
        Ok(ips) => ips,
        Err(e) => {
            tracing::warn!(destination = %format!("{host}:{port}"), error = %e, "API server egress: destination not resolved");
            return Ok(answer(StatusCode::BAD_GATEWAY, &format!("vkube: {e}")));
        }
    };
    // Whose address it is matters only where an owner would change the verdict: loopback and
    // link-local are refused and allowed ranges let through without asking.
    let owner_matters = ips.iter().any(|ip| {
        matches!(
            decide(*ip, None, &state.policy),
            Err(Refusal::Private | Refusal::Reserved | Refusal::Public)
        )
    });
    if owner_matters {
        let ready = tokio::time::timeout(ADDRESSES_TIMEOUT, state.addresses.ready()).await;
        if !matches!(ready, Ok(true)) {
            return Ok(answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "vkube: this virtual cluster's pods and Services are not known yet; retry",
            ));
        }
    }
    let verdicts: Vec<(IpAddr, Result<Allowed, Refusal>)> = ips
        .iter()
        .map(|ip| {
            let owner = owner_matters
                .then(|| state.addresses.owner(super::normalize(*ip), port))
                .flatten();
            (*ip, decide(*ip, owner, &state.policy))
        })
        .collect();
    let allowed: Vec<(IpAddr, Allowed)> = verdicts
        .iter()
        .filter_map(|(ip, v)| v.clone().ok().map(|a| (*ip, a)))
        .collect();
    let first_refusal = verdicts
        .iter()
        .find_map(|(ip, v)| v.as_ref().err().map(|why| (*ip, *why)));
    if let (true, Some((ip, why))) = (allowed.is_empty(), first_refusal) {
        let refused = state.counters.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let destination = format!("{host}:{port}");
        if state.logged.due(&destination) {
            tracing::warn!(
                %destination,
                address = %ip,
                reason = %why,
                refused_total = refused,
                "API server egress refused: the virtual API server was asked to connect outside this virtual cluster (logged once a minute per destination)"
            );
        } else {
            tracing::debug!(%destination, address = %ip, reason = %why, refused_total = refused, "API server egress refused");
        }
        let shown = if host.parse::<IpAddr>().is_ok() {
            format!("{host}:{port}")
        } else {
            format!("{host}:{port} ({ip})")
        };
        return Ok(answer(
            StatusCode::FORBIDDEN,
            &format!("vkube refused {shown}: {why}"),
        ));
    }
    let mut last_error = String::new();
    for (ip, why) in allowed {
        let target = SocketAddr::new(ip, port);
        match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(target)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                state.counters.allowed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(destination = %format!("{host}:{port}"), %target, reason = ?why, "API server egress allowed");
                let upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(tunnel(upgrade, tcp));
                return Ok(Response::new(Full::new(Bytes::new())));
            }
            Ok(Err(e)) => last_error = format!("vkube: dialling {target}: {e}"),
            Err(_) => last_error = format!("vkube: dialling {target} timed out"),
        }
    }
    tracing::debug!(destination = %format!("{host}:{port}"), error = %last_error, "API server egress: allowed destination did not answer");
    Ok(answer(StatusCode::BAD_GATEWAY, &last_error))
}

/// Copies bytes both ways once the API server has the 200.
async fn tunnel(upgrade: hyper::upgrade::OnUpgrade, mut tcp: TcpStream) {
    match upgrade.await {
        Ok(upgraded) => {
            let mut upgraded = TokioIo::new(upgraded);
            if let Err(e) = tokio::io::copy_bidirectional(&mut upgraded, &mut tcp).await {
                tracing::debug!(error = %e, "egress tunnel ended");
            }
        }
        Err(e) => tracing::debug!(error = %e, "egress tunnel not upgraded"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::{EgressMode, NoAddresses};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn connect_through(path: &Path, target: &str) -> (String, tokio::net::UnixStream) {
        let mut s = tokio::net::UnixStream::connect(path).await.unwrap();
        s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
        (String::from_utf8_lossy(&head).into_owned(), s)
    }

    fn start(
        policy: EgressPolicy,
        addresses: Arc<dyn TenantAddresses>,
    ) -> (tempfile::TempDir, PathBuf, watch::Sender<bool>) {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        let guard = EgressGuard::bind(&path, policy, addresses).unwrap();
        let (tx, rx) = watch::channel(false);
        tokio::spawn(guard.serve(rx));
        (dir, path, tx)
    }

    #[tokio::test]
    async fn a_refusal_is_a_403_whose_status_line_says_why_and_nothing_is_dialled() {
        let victim = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = victim.local_addr().unwrap().to_string();
        let (_dir, path, _stop) = start(EgressPolicy::default(), Arc::new(NoAddresses));
        let (head, _) = connect_through(&path, &target).await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 403 vkube refused {target}: a loopback")),
            "{head}"
        );
        let (head, _) = connect_through(&path, "10.96.0.1:443").await;
        assert!(
            head.starts_with("HTTP/1.1 403 vkube refused 10.96.0.1:443: not a pod or Service"),
            "{head}"
        );
        let (head, _) = connect_through(&path, "localhost:6443").await;
        assert!(
            head.starts_with("HTTP/1.1 403 vkube refused localhost:6443 ("),
            "{head}"
        );
        let accepted = tokio::time::timeout(Duration::from_millis(200), victim.accept()).await;
        assert!(accepted.is_err(), "the victim was connected to");
    }

    #[tokio::test]
    async fn an_allowed_destination_gets_a_tunnel() {
        let victim = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = victim.local_addr().unwrap();
        // Loopback is refused whoever claims it, so the tunnel itself is shown with the guard
        // unrestricted (the e2e tests show a tenant pod's address tunnelled).
        let policy = EgressPolicy {
            mode: EgressMode::Unrestricted,
            allowed: vec![],
        };
        let (_dir, path, _stop) = start(policy, Arc::new(NoAddresses));
        let (head, mut conn) = connect_through(&path, &target.to_string()).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("content-length"),
            "{head}"
        );
        let (mut server, _) = victim.accept().await.unwrap();
        conn.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        server.write_all(b"pong").await.unwrap();
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }

    #[tokio::test]
    async fn only_the_in_process_backends_exact_name_and_port_are_served_in_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        let backend = LocalBackend {
            host: "metrics.vkube.invalid".into(),
            port: 443,
            serve: Arc::new(|mut io| {
                Box::pin(async move {
                    let _ = io.write_all(b"local").await;
                })
            }),
        };
        let guard = EgressGuard::bind(&path, EgressPolicy::default(), Arc::new(NoAddresses))
            .unwrap()
            .with_local(backend);
        let (_stop, rx) = watch::channel(false);
        tokio::spawn(guard.serve(rx));
        let (head, mut conn) = connect_through(&path, "METRICS.vkube.invalid:443").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"local");
        // Another port of the name, or another name: judged and dialled as any destination
        // (this one resolves nowhere).
        for other in ["metrics.vkube.invalid:444", "x.metrics.vkube.invalid:443"] {
            let (head, _) = connect_through(&path, other).await;
            assert!(!head.starts_with("HTTP/1.1 200"), "{other}: {head}");
        }
    }

    /// The syncer's caches never become ready.
    struct NeverReady;
    impl TenantAddresses for NeverReady {
        fn ready(&self) -> futures::future::BoxFuture<'_, bool> {
            Box::pin(std::future::pending())
        }
        fn owner(&self, _: IpAddr, _: u16) -> Option<crate::egress::Owner> {
            None
        }
    }

    #[tokio::test]
    async fn loopback_is_refused_at_once_even_before_the_tenants_addresses_are_known() {
        let (_dir, path, _stop) = start(EgressPolicy::default(), Arc::new(NeverReady));
        let started = std::time::Instant::now();
        let (head, _) = connect_through(&path, "127.0.0.1:2379").await;
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn refusals_are_logged_once_a_minute_per_destination() {
        let log = RefusalLog::default();
        assert!(log.due("10.96.0.1:443"));
        assert!(!log.due("10.96.0.1:443"));
        assert!(log.due("127.0.0.1:6443"));
        for i in 0..LOGGED_MAX {
            log.due(&format!("10.0.0.{i}:1"));
        }
        assert!(
            log.0.lock().unwrap().len() <= LOGGED_MAX,
            "the memory is bounded"
        );
    }

    #[test]
    fn the_destination_is_host_and_port() {
        let dest = |s: &str| destination(&s.parse().unwrap());
        assert_eq!(dest("10.96.0.1:443"), Some(("10.96.0.1".into(), 443)));
        assert_eq!(dest("[fd00::1]:443"), Some(("fd00::1".into(), 443)));
        assert_eq!(dest("localhost:6443"), Some(("localhost".into(), 6443)));
        assert_eq!(dest("10.96.0.1:0"), None);
        assert_eq!(dest("10.96.0.1"), None);
    }

    #[tokio::test]
    async fn only_connect_is_served() {
        let (_dir, path, _stop) = start(EgressPolicy::default(), Arc::new(NoAddresses));
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 405"));
    }

    #[tokio::test]
    async fn the_socket_is_private_replaces_a_stale_one_and_goes_with_the_guard() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        let first =
            EgressGuard::bind(&path, EgressPolicy::default(), Arc::new(NoAddresses)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // A socket left behind by a run that died (never unlinked) is replaced.
        std::mem::forget(first);
        let second =
            EgressGuard::bind(&path, EgressPolicy::default(), Arc::new(NoAddresses)).unwrap();
        let (tx, rx) = watch::channel(false);
        let served = tokio::spawn(second.serve(rx));
        tx.send(true).unwrap();
        served.await.unwrap();
        assert!(!path.exists(), "the socket outlived the guard");
        // Anything else at that path is not ours to remove.
        std::fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(
            EgressGuard::bind(&path, EgressPolicy::default(), Arc::new(NoAddresses)),
            Err(EgressError::NotASocket { .. })
        ));
        let long = dir.path().join("x".repeat(120));
        assert!(matches!(
            EgressGuard::bind(
                &socket_path(&long),
                EgressPolicy::default(),
                Arc::new(NoAddresses)
            ),
            Err(EgressError::PathTooLong { .. })
        ));
    }
}
