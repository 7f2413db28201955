//! The `metrics.k8s.io` API inside a virtual cluster, so `kubectl top` and resource-metric
//! HorizontalPodAutoscalers work there. It is served from the host's metrics API
//! (metrics-server) for the tenant's host namespace only, translated by `translate::metrics`.
//!
//! How requests get here: `vkube serve` registers the APIService `v1beta1.metrics.k8s.io` in the
//! virtual API, backed by the ExternalName Service `kube-system/vkube-metrics` whose name is
//! [`BACKEND_HOST`] (under `.invalid`, a name that resolves nowhere). The virtual API server's
//! aggregator dials it through the egress guard (`crate::egress`), which serves a CONNECT to that
//! name in-process ([`MetricsApi::serve_connection`]) instead of dialling out. So kubectl (through
//! the proxy) and the virtual controller manager (straight to the API server) take the same path,
//! and discovery lists the group as on any cluster. The virtual API server authorises every
//! request (virtual RBAC on `pods`/`nodes` of `metrics.k8s.io`) before its aggregator proxies
//! it here, and only the virtual API server reaches the egress socket, so nothing here judges
//! the caller again: what is served is already confined to this tenant.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::syncer::NodeSync;
use crate::syncer::addresses::SharedStores;
use crate::translate::Tenant;
use crate::translate::metrics::{
    self as tm, GROUP, GROUP_VERSION, MetricsList, NodeMetrics, PodMetrics, Requirement,
};

/// The virtual Service the APIService names, and the name it points at.
pub const SERVICE_NAMESPACE: &str = "kube-system";
pub const SERVICE_NAME: &str = "vkube-metrics";
pub const BACKEND_HOST: &str = "metrics.vkube.invalid";
pub const BACKEND_PORT: u16 = 443;
pub const API_SERVICE_NAME: &str = "v1beta1.metrics.k8s.io";
const FIELD_MANAGER: &str = "vkube-metrics";
/// How often the registration is put back (a tenant may delete or change it; it only hurts
/// themselves, but `kubectl top` should heal).
const REGISTER_EVERY: Duration = Duration::from_secs(30);
const HOST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum MetricsApiError {
    #[error("generating the metrics API's serving certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("the metrics API's TLS configuration: {0}")]
    Tls(String),
}

/// The served API: the tenant, the host client and the syncer's caches.
pub struct MetricsApi {
    tenant: Tenant,
    host: kube::Client,
    stores: SharedStores,
    node_sync: NodeSync,
    tls: tokio_rustls::TlsAcceptor,
    ca_bundle: String,
}

type Body = Full<Bytes>;

impl MetricsApi {
    /// A fresh self-signed serving certificate each start (its PEM is the APIService's
    /// `caBundle`, written at registration): nothing to persist, and nothing else trusts it.
    pub fn new(
        tenant: Tenant,
        host: kube::Client,
        stores: SharedStores,
        node_sync: NodeSync,
    ) -> Result<MetricsApi, MetricsApiError> {
        let dns = format!("{SERVICE_NAME}.{SERVICE_NAMESPACE}.svc");
        let key = rcgen::KeyPair::generate()?;
        let params = rcgen::CertificateParams::new(vec![dns])?;
        let cert = params.self_signed(&key)?;
        let tls_err = |e: &dyn std::fmt::Display| MetricsApiError::Tls(e.to_string());
        let certs =
            crate::tls::certs(&cert.pem(), "metrics API certificate").map_err(|e| tls_err(&e))?;
        let private =
            crate::tls::key(&key.serialize_pem(), "metrics API key").map_err(|e| tls_err(&e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(&e))?
            .with_no_client_auth()
            .with_single_cert(certs, private)
            .map_err(|e| tls_err(&e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(MetricsApi {
            tenant,
            host,
            stores,
            node_sync,
            tls: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            ca_bundle: cert.pem(),
        })
    }

    pub fn ca_bundle(&self) -> &str {
        &self.ca_bundle
    }

    /// Serves one connection the aggregator opened through the egress guard.
    pub async fn serve_connection<IO>(self: Arc<Self>, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let tls = match tokio::time::timeout(HOST_TIMEOUT, self.tls.accept(io)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "metrics API: TLS handshake failed");
                return;
            }
            Err(_) => return,
        };
        let api = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(req).await) }
        });
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tls), service)
            .await
        {
            tracing::debug!(error = %e, "metrics API connection ended with error");
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        if req.method() != Method::GET {
            return status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "the metrics API is read-only (get, list)",
            );
        }
        let query = req.uri().query().unwrap_or("");
        let route = match route(req.uri().path(), query) {
            Ok(r) => r,
            Err(resp) => return *resp,
        };
        match route {
            Route::Discovery => json(StatusCode::OK, &discovery()),
            Route::Pods {
                namespace,
                name,
                selector,
            } => {
                self.pods(namespace.as_deref(), name.as_deref(), &selector)
                    .await
            }
            Route::Nodes { name, selector } => self.nodes(name.as_deref(), &selector).await,
        }
    }

    /// The host's pod metrics of this tenant's namespace, selected on the host by the
    /// translated selector, then checked one by one against the syncer's caches.
    async fn host_pod_metrics(
        &self,
        namespace: Option<&str>,
        selector: &[Requirement],
    ) -> Result<Vec<PodMetrics>, Box<Response<Body>>> {
        let host_selector = tm::host_selector(&self.tenant, selector, namespace);
        let path = format!(
            "/apis/{GROUP_VERSION}/namespaces/{}/pods?labelSelector={}",
            self.tenant.host_namespace,
            encode(&host_selector)
        );
        let list: MetricsList<PodMetrics> = self.host_get(&path).await?;
        Ok(list.items)
    }

    async fn host_get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, Box<Response<Body>>> {
        let unavailable = |why: String| {
            Box::new(status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                &why,
            ))
        };
        let req = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| unavailable(e.to_string()))?;
        match tokio::time::timeout(HOST_TIMEOUT, self.host.request::<T>(req)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => Err(unavailable(
                "the host cluster serves no metrics API (metrics.k8s.io): the platform needs metrics-server".into(),
            )),
            Ok(Err(kube::Error::Api(s))) if s.code == 403 => Err(unavailable(format!(
                "vkube may not read the host's metrics ({}): the platform's vkube-serve role needs metrics.k8s.io pods get/list",
                s.message
            ))),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, path, "host metrics request failed");
                Err(unavailable(format!("the host's metrics API: {e}")))
            }
            Err(_) => Err(unavailable("the host's metrics API did not answer".into())),
        }
    }

    /// Host pod metrics in the tenant's names, each checked against the host pod (this tenant's
    /// copy of that very virtual pod) and matched against the tenant's selector on the virtual
    /// labels. Returned with the host node each pod runs on.
    fn to_virtual(
        &self,
        host: &[PodMetrics],
        selector: &[Requirement],
    ) -> Option<Vec<(PodMetrics, Option<String>)>> {
        let stores = self.stores.current()?;
        let mut out = Vec::new();
        for m in host {
            let Some(name) = m.metadata.name.as_deref() else {
                continue;
            };
            let key = ObjectRef::new(name).within(&self.tenant.host_namespace);
            let Some(host_pod) = stores.host_pods.get(&key) else {
                continue;
            };
            let Some(origin) = crate::translate::origin(&host_pod.metadata) else {
                continue;
            };
            let vkey = ObjectRef::new(&origin.name).within(&origin.namespace);
            let Some(vpod) = stores.virtual_pods.get(&vkey) else {
                continue;
            };
            let Some(v) = tm::pod_to_virtual(m, &self.tenant, &host_pod.metadata, &vpod.metadata)
            else {
                continue;
            };
            let labels = v.metadata.labels.clone().unwrap_or_default();
            if tm::matches_all(selector, &labels) {
                out.push((v, host_pod.node_name().map(str::to_string)));
            }
        }
        out.sort_by(|a, b| {
            (&a.0.metadata.namespace, &a.0.metadata.name)
                .cmp(&(&b.0.metadata.namespace, &b.0.metadata.name))
        });
        Some(out)
    }

    async fn pods(
        &self,
        namespace: Option<&str>,
        name: Option<&str>,
        selector: &[Requirement],
    ) -> Response<Body> {
        let host = match self.host_pod_metrics(namespace, selector).await {
            Ok(h) => h,
            Err(resp) => return *resp,
        };
        let Some(pods) = self.to_virtual(&host, selector) else {
            return not_synced();
        };
        let mut items: Vec<PodMetrics> = pods.into_iter().map(|(p, _)| p).collect();
        if let Some(name) = name {
            return match items
                .into_iter()
                .find(|p| p.metadata.name.as_deref() == Some(name))
            {
                Some(p) => json(StatusCode::OK, &p),
                None => not_found("pods", name),
            };
        }
        items.retain(|p| namespace.is_none_or(|ns| p.metadata.namespace.as_deref() == Some(ns)));
        json(StatusCode::OK, &tm::list_json("PodMetricsList", &items))
    }

    async fn nodes(&self, name: Option<&str>, selector: &[Requirement]) -> Response<Body> {
        let Some(stores) = self.stores.current() else {
            return not_synced();
        };
        let host_pods = stores.host_pods.state();
        let virtual_nodes = stores.virtual_nodes.state();
        let visible = tm::visible_nodes(
            &self.tenant,
            host_pods.iter().map(|p| (&p.metadata, p.node_name())),
            virtual_nodes.iter().map(|n| &n.metadata),
        );
        let labels_of = |n: &str| -> Option<BTreeMap<String, String>> {
            stores
                .virtual_nodes
                .get(&ObjectRef::<Node>::new(n))
                .and_then(|v| v.metadata.labels.clone())
        };
        let wanted: Vec<String> = visible
            .into_iter()
            .filter(|n| name.is_none_or(|want| want == n))
            .filter(|n| tm::matches_all(selector, &labels_of(n).unwrap_or_default()))
            .collect();
        // A mirrored node (`--node-sync real` with the grant) shows the host node's numbers;
        // a pseudo-node hides the host, so it shows the sum of the tenant's own pods there.
        // The annotation is only believed when this run mirrors nodes: a tenant annotating a
        // pseudo-node gets nothing more.
        let mirrored = |n: &str| {
            self.node_sync == NodeSync::Real
                && stores
                    .virtual_nodes
                    .get(&ObjectRef::<Node>::new(n))
                    .and_then(|v| v.metadata.annotations.clone())
                    .is_some_and(|a| a.contains_key(crate::translate::node::MIRRORED_LABELS))
        };
        let mut pods_by_node: Option<Vec<(PodMetrics, Option<String>)>> = None;
        let mut items = Vec::new();
        for n in &wanted {
            if mirrored(n) {
                // One get per node the tenant sees: the host grant is `get` on node metrics,
                // never `list` (which would return every node's numbers).
                let path = format!("/apis/{GROUP_VERSION}/nodes/{n}");
                // Without the grant (or the host's number yet), the sum below.
                if let Ok(m) = self.host_get::<NodeMetrics>(&path).await {
                    items.push(tm::node_to_virtual(&m, labels_of(n).as_ref()));
                    continue;
                }
            }
            if pods_by_node.is_none() {
                let host = match self.host_pod_metrics(None, &[]).await {
                    Ok(h) => h,
                    Err(resp) => return *resp,
                };
                match self.to_virtual(&host, &[]) {
                    Some(p) => pods_by_node = Some(p),
                    None => return not_synced(),
                }
            }
            let on: Vec<&PodMetrics> = pods_by_node
                .iter()
                .flatten()
                .filter(|(_, node)| node.as_deref() == Some(n.as_str()))
                .map(|(p, _)| p)
                .collect();
            items.push(tm::pseudo_node_metrics(n, labels_of(n).as_ref(), &on));
        }
        if let Some(name) = name {
            return match items.into_iter().next() {
                Some(m) => json(StatusCode::OK, &m),
                None => not_found("nodes", name),
            };
        }
        json(StatusCode::OK, &tm::list_json("NodeMetricsList", &items))
    }
}

#[derive(Debug, PartialEq)]
enum Route {
    Discovery,
    Pods {
        namespace: Option<String>,
        name: Option<String>,
        selector: Vec<Requirement>,
    },
    Nodes {
        name: Option<String>,
        selector: Vec<Requirement>,
    },
}

/// The request's route (pure). Everything outside the API's paths is a 404, so the aggregator
/// falls back to the group-version discovery for `/apis`.
fn route(path: &str, query: &str) -> Result<Route, Box<Response<Body>>> {
    let nf = || {
        Box::new(status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        ))
    };
    let rest = path
        .strip_prefix("/apis/metrics.k8s.io/v1beta1")
        .ok_or_else(nf)?;
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    // Names are DNS labels/subdomains: nothing to decode, and anything else cannot exist.
    let name_ok = |s: &str| crate::translate::is_dns_subdomain(s);
    if segments.iter().any(|s| !name_ok(s)) {
        return Err(nf());
    }
    let mut selector_text = String::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "labelSelector" => selector_text = decode(v),
            "watch" if v == "true" || v == "1" => {
                return Err(Box::new(status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "watch is not supported by the metrics API",
                )));
            }
            _ => {}
        }
    }
    let selector = tm::parse_selector(&selector_text).map_err(|e| {
        Box::new(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &e.to_string(),
        ))
    })?;
    let own = |s: &str| Some(s.to_string());
    Ok(match segments.as_slice() {
        [] => Route::Discovery,
        ["pods"] => Route::Pods {
            namespace: None,
            name: None,
            selector,
        },
        ["namespaces", ns, "pods"] => Route::Pods {
            namespace: own(ns),
            name: None,
            selector,
        },
        ["namespaces", ns, "pods", name] => Route::Pods {
            namespace: own(ns),
            name: own(name),
            selector,
        },
        ["nodes"] => Route::Nodes {
            name: None,
            selector,
        },
        ["nodes", name] => Route::Nodes {
            name: own(name),
            selector,
        },
        _ => return Err(nf()),
    })
}

fn discovery() -> serde_json::Value {
    let resource = |name: &str, kind: &str, namespaced: bool| {
        serde_json::json!({
            "name": name, "singularName": "", "namespaced": namespaced, "kind": kind,
            "verbs": ["get", "list"],
        })
    };
    serde_json::json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": [resource("nodes", "NodeMetrics", false), resource("pods", "PodMetrics", true)],
    })
}

fn json<T: serde::Serialize>(code: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json(
        code,
        &serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        }),
    )
}

fn not_found(resource: &str, name: &str) -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{resource}.{GROUP} \"{name}\" not found"),
    )
}

fn not_synced() -> Response<Body> {
    status(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        "the virtual cluster's pods are not known yet; retry",
    )
}

/// Percent-decoding of a query value (`+` is a space, as in forms).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encoding of a query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The Service and APIService that route the virtual API server's metrics requests here.
fn registration(ca_bundle: &str) -> (Service, serde_json::Value) {
    let service: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": SERVICE_NAME,
            "namespace": SERVICE_NAMESPACE,
            "labels": {"app.kubernetes.io/managed-by": "vkube"},
        },
        "spec": {"type": "ExternalName", "externalName": BACKEND_HOST},
    }))
    .unwrap_or_default();
    let api_service = serde_json::json!({
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {
            "name": API_SERVICE_NAME,
            "labels": {"app.kubernetes.io/managed-by": "vkube"},
        },
        "spec": {
            "group": GROUP,
            "version": tm::VERSION,
            "groupPriorityMinimum": 100,
            "versionPriority": 100,
            "service": {"namespace": SERVICE_NAMESPACE, "name": SERVICE_NAME, "port": BACKEND_PORT},
            "caBundle": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ca_bundle),
        },
    });
    (service, api_service)
}

/// Registers the API in the virtual API server and puts the registration back every
/// [`REGISTER_EVERY`] (server-side apply: no write when nothing changed) until `stop` flips.
pub async fn keep_registered(
    virt: kube::Client,
    ca_bundle: String,
    mut stop: watch::Receiver<bool>,
) {
    let (service, api_service) = registration(&ca_bundle);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let services: Api<Service> = Api::namespaced(virt.clone(), SERVICE_NAMESPACE);
    let ar = kube::api::ApiResource {
        group: "apiregistration.k8s.io".into(),
        version: "v1".into(),
        api_version: "apiregistration.k8s.io/v1".into(),
        kind: "APIService".into(),
        plural: "apiservices".into(),
    };
    let api_services: Api<kube::api::DynamicObject> = Api::all_with(virt, &ar);
    loop {
        let result = async {
            services
                .patch(SERVICE_NAME, &params, &Patch::Apply(&service))
                .await?;
            api_services
                .patch(API_SERVICE_NAME, &params, &Patch::Apply(&api_service))
                .await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "registering the metrics API in the virtual cluster");
        }
        tokio::select! {
            _ = tokio::time::sleep(REGISTER_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_cover_the_api_and_nothing_else() {
        let ok = |p: &str, q: &str| route(p, q).unwrap();
        assert_eq!(ok("/apis/metrics.k8s.io/v1beta1", ""), Route::Discovery);
        assert_eq!(
            ok(
                "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/web",
                ""
            ),
            Route::Pods {
                namespace: Some("default".into()),
                name: Some("web".into()),
                selector: vec![]
            }
        );
        let Route::Pods { selector, .. } = ok(
            "/apis/metrics.k8s.io/v1beta1/pods",
            "labelSelector=app%3Dweb%2Ctier+in+%28a%2Cb%29&limit=5",
        ) else {
            panic!("not pods")
        };
        assert_eq!(selector.len(), 2);
        assert!(matches!(
            ok("/apis/metrics.k8s.io/v1beta1/nodes/kwok-node-0", ""),
            Route::Nodes { name: Some(n), .. } if n == "kwok-node-0"
        ));
        for (p, q, code) in [
            ("/apis", "", 404),
            ("/apis/metrics.k8s.io", "", 404),
            ("/api/v1/pods", "", 404),
            ("/apis/metrics.k8s.io/v1beta1/secrets", "", 404),
            (
                "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/web/x",
                "",
                404,
            ),
            ("/apis/metrics.k8s.io/v1beta1/namespaces/../pods", "", 404),
            (
                "/apis/metrics.k8s.io/v1beta1/namespaces/a%2Fb/pods",
                "",
                404,
            ),
            (
                "/apis/metrics.k8s.io/v1beta1/pods",
                "labelSelector=a%20b",
                400,
            ),
            ("/apis/metrics.k8s.io/v1beta1/pods", "watch=true", 405),
        ] {
            let got = route(p, q).err().map(|r| r.status().as_u16());
            assert_eq!(got, Some(code), "{p}?{q}");
        }
    }

    #[test]
    fn query_values_round_trip() {
        let s = "vkube.dev/l-abc in (a,b),!x";
        assert_eq!(decode(&encode(s)), s);
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
    }

    #[test]
    fn the_registration_points_at_the_in_process_backend() {
        let (svc, api) = registration("PEM");
        let spec = svc.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ExternalName"));
        assert_eq!(spec.external_name.as_deref(), Some(BACKEND_HOST));
        assert_eq!(api["spec"]["service"]["name"], SERVICE_NAME);
        assert_eq!(api["spec"]["caBundle"], "UEVN");
    }
}
