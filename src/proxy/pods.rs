//! Requests only the host can answer. A virtual pod has no kubelet: its containers run in the
//! translated host pod. pods/log, exec, attach and portforward are authorised for the caller
//! against the virtual API (SubjectAccessReview, so virtual RBAC decides), then sent to the host
//! API for the host pod with the syncer's namespace-scoped credentials. Upgrades (WebSocket and
//! SPDY) are tunnelled byte for byte: kubectl and the host's kubelet speak to each other.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

use super::identity::{self, Identity};
use super::{ProxyBody, full, spawn_tunnel, status_response, status_with_details};
use crate::translate::{Tenant, VIRTUAL_UID};

/// Request bodies of these subresources are empty (the streams follow the upgrade); anything
/// larger is refused rather than buffered.
const MAX_REQUEST_BODY: usize = 64 * 1024;
/// Error bodies from the host are rewritten (host names → virtual names); larger ones are not
/// errors kubectl would show.
const MAX_ERROR_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    Log,
    Exec,
    Attach,
    PortForward,
}

impl Subresource {
    fn from_segment(s: &str) -> Option<Subresource> {
        match s {
            "log" => Some(Subresource::Log),
            "exec" => Some(Subresource::Exec),
            "attach" => Some(Subresource::Attach),
            "portforward" => Some(Subresource::PortForward),
            _ => None,
        }
    }

    pub fn segment(self) -> &'static str {
        match self {
            Subresource::Log => "log",
            Subresource::Exec => "exec",
            Subresource::Attach => "attach",
            Subresource::PortForward => "portforward",
        }
    }

    /// The verb RBAC checks. Streams that write into a container need `create` whatever the
    /// HTTP method: since Kubernetes 1.31 a WebSocket GET to exec/attach/portforward is
    /// authorised as `create` too, and a tenant must not get around that through vkube.
    pub fn verb(self) -> &'static str {
        match self {
            Subresource::Log => "get",
            _ => "create",
        }
    }
}

/// A request for a pod subresource served from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTarget {
    pub namespace: String,
    pub name: String,
    pub subresource: Subresource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Not a host-served request: forward to the virtual API server.
    Virtual,
    Host(PodTarget),
    /// A path the proxy does not accept in any form: `.`/`..` segments or invalid escapes (which
    /// could otherwise make the proxy and the API server disagree about the target).
    Invalid,
}

/// Which way a request path goes. The path is percent-decoded first, as the API server decodes
/// it, so `/pods/x/%65xec` or `/pods/x%2Fexec` cannot slip past as something other than exec;
/// empty segments are ignored for the same reason.
pub fn route(path: &str) -> Route {
    let Some(decoded) = percent_decode(path) else {
        return Route::Invalid;
    };
    let segments: Vec<&str> = decoded.split('/').filter(|s| !s.is_empty()).collect();
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return Route::Invalid;
    }
    match segments.as_slice() {
        ["api", "v1", "namespaces", namespace, "pods", name, sub] => {
            match Subresource::from_segment(sub) {
                Some(subresource) => Route::Host(PodTarget {
                    namespace: (*namespace).to_string(),
                    name: (*name).to_string(),
                    subresource,
                }),
                None => Route::Virtual,
            }
        }
        _ => Route::Virtual,
    }
}

fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Headers sent to the host: the caller's credentials, identity and impersonation headers are
/// dropped; the host request carries the syncer's credentials only.
pub fn host_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut out = identity::forwarded_headers(incoming, None);
    let drop: Vec<_> = out
        .keys()
        .filter(|k| k.as_str().starts_with("impersonate-"))
        .cloned()
        .collect();
    for k in drop {
        out.remove(k);
    }
    out
}

/// What `Impersonate-*` headers ask for (`kubectl --as`, `--as-group`, `--as-uid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Impersonation {
    pub identity: Identity,
    /// What the caller must be allowed to `impersonate`, as (group, resource, subresource,
    /// namespace, name) — the checks the API server makes.
    pub checks: Vec<ImpersonationCheck>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImpersonationCheck {
    pub group: &'static str,
    pub resource: &'static str,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: String,
}

/// Reads the impersonation headers; `Ok(None)` when there are none.
pub fn impersonation(headers: &HeaderMap) -> Result<Option<Impersonation>, String> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    };
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in headers {
        if let Some(key) = k.as_str().strip_prefix("impersonate-extra-")
            && let Ok(v) = v.to_str()
        {
            let key = percent_decode(key).ok_or("invalid Impersonate-Extra- header name")?;
            extra.entry(key).or_default().push(v.to_string());
        }
    }
    let user = values("impersonate-user").into_iter().next();
    let groups = values("impersonate-group");
    let uid = values("impersonate-uid").into_iter().next();
    let Some(user) = user else {
        if groups.is_empty() && uid.is_none() && extra.is_empty() {
            return Ok(None);
        }
        return Err("Impersonate-User is required to impersonate groups, uid or extra".into());
    };
    let mut checks = Vec::new();
    let mut all_groups = groups.clone();
    match user
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    {
        Some((ns, name)) => {
            checks.push(ImpersonationCheck {
                group: "",
                resource: "serviceaccounts",
                subresource: None,
                namespace: Some(ns.to_string()),
                name: name.to_string(),
            });
            for g in [
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{ns}"),
            ] {
                if !all_groups.contains(&g) {
                    all_groups.push(g);
                }
            }
        }
        None => checks.push(ImpersonationCheck {
            group: "",
            resource: "users",
            subresource: None,
            namespace: None,
            name: user.clone(),
        }),
    }
    for g in &groups {
        checks.push(ImpersonationCheck {
            group: "",
            resource: "groups",
            subresource: None,
            namespace: None,
            name: g.clone(),
        });
    }
    if let Some(uid) = &uid {
        checks.push(ImpersonationCheck {
            group: "authentication.k8s.io",
            resource: "uids",
            subresource: None,
            namespace: None,
            name: uid.clone(),
        });
    }
    for (key, vals) in &extra {
        for v in vals {
            checks.push(ImpersonationCheck {
                group: "authentication.k8s.io",
                resource: "userextras",
                subresource: Some(key.clone()),
                namespace: None,
                name: v.clone(),
            });
        }
    }
    // As the API server does: every impersonated non-anonymous user is authenticated.
    if user != "system:anonymous" && !all_groups.iter().any(|g| g == "system:authenticated") {
        all_groups.push("system:authenticated".into());
    }
    Ok(Some(Impersonation {
        identity: Identity {
            user,
            uid,
            groups: all_groups,
            extra: extra.into_iter().collect(),
        },
        checks,
    }))
}

/// The host's error text, with the host pod and namespace names replaced by the virtual ones so
/// the tenant sees its own names (and learns nothing about the host's).
/// The apiserver's wording for a denied subresource request.
pub fn forbidden_message(user: &str, target: &PodTarget, reason: &str) -> String {
    let mut msg = format!(
        "pods \"{}\" is forbidden: User \"{}\" cannot {} resource \"pods/{}\" in API group \"\" \
         in the namespace \"{}\"",
        target.name,
        user,
        target.subresource.verb(),
        target.subresource.segment(),
        target.namespace
    );
    if !reason.is_empty() {
        msg.push_str(": ");
        msg.push_str(reason);
    }
    msg
}

fn review_failed(e: kube::Error) -> Response<ProxyBody> {
    tracing::warn!(error = %e, "subject access review failed");
    status_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        "could not check permissions in the virtual cluster; retry",
    )
}

fn pod_status(code: StatusCode, reason: &str, message: &str, name: &str) -> Response<ProxyBody> {
    let details = serde_json::json!({"name": name, "kind": "pods"});
    status_with_details(code, reason, message, Some(details))
}

/// Serves host-routed requests of one tenant.
pub struct PodRouter {
    /// Admin client of the virtual API (SubjectAccessReview, virtual pods).
    pub virt: kube::Client,
    /// The syncer's host client, limited by its Role to the host namespace.
    pub host: kube::Client,
    pub tenant: Tenant,
}

impl PodRouter {
    pub async fn serve(
        &self,
        mut req: Request<Incoming>,
        target: PodTarget,
        caller: &Identity,
        in_flight: Option<super::activity::InFlight>,
    ) -> Response<ProxyBody> {
        let impersonated = match impersonation(req.headers()) {
            Ok(i) => i,
            Err(msg) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", &msg),
        };
        let caller = match impersonated {
            None => caller.clone(),
            Some(imp) => {
                for check in &imp.checks {
                    match self.may_impersonate(caller, check).await {
                        Ok(true) => {}
                        Ok(false) => {
                            let msg = format!(
                                "{} \"{}\" is forbidden: User \"{}\" cannot impersonate \
                                 resource \"{}\" in API group \"{}\"",
                                check.resource,
                                check.name,
                                caller.user,
                                check.resource,
                                check.group
                            );
                            return status_response(StatusCode::FORBIDDEN, "Forbidden", &msg);
                        }
                        Err(e) => return review_failed(e),
                    }
                }
                imp.identity
            }
        };
        let caller = &caller;
        match self.authorize(caller, &target).await {
            Ok(None) => {}
            Ok(Some(reason)) => {
                return pod_status(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    &forbidden_message(&caller.user, &target, &reason),
                    &target.name,
                );
            }
            Err(e) => return review_failed(e),
        }
        let host_name = match self.host_pod(&target).await {
            Ok(name) => name,
            Err(resp) => return *resp,
        };

        let upgrade = identity::is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return status_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestEntityTooLarge",
                    "request body too large for a pod subresource",
                );
            }
        };
        let query = parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let path = format!(
            "/api/v1/namespaces/{}/pods/{}/{}{}",
            self.tenant.host_namespace,
            host_name,
            target.subresource.segment(),
            query
        );
        let mut host_req = Request::new(kube::client::Body::from(body));
        *host_req.method_mut() = parts.method;
        *host_req.uri_mut() = match path.parse() {
            Ok(u) => u,
            Err(_) => {
                return status_response(StatusCode::BAD_REQUEST, "BadRequest", "invalid query");
            }
        };
        *host_req.headers_mut() = host_headers(&parts.headers);

        let mut resp = match self.host.send(host_req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, pod = %host_name, "host API unreachable");
                return status_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "the host cluster's API is not reachable; retry in a few seconds",
                );
            }
        };
        let status = resp.status();
        if status == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            spawn_tunnel(client_upgrade, hyper::upgrade::on(&mut resp), in_flight);
        }
        let (mut parts, body) = resp.into_parts();
        identity::strip_hop_by_hop(
            &mut parts.headers,
            status == StatusCode::SWITCHING_PROTOCOLS,
        );
        if status.is_client_error() || status.is_server_error() {
            // Small, complete error documents: show them in the tenant's names.
            let bytes = match Limited::new(body, MAX_ERROR_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => Bytes::from_static(b"error from the host cluster"),
            };
            let text = String::from_utf8_lossy(&bytes);
            let rewritten = crate::translate::in_virtual_names(
                &text,
                (&host_name, &self.tenant.host_namespace),
                (&target.name, &target.namespace),
            );
            parts.headers.remove(header::CONTENT_LENGTH);
            return Response::from_parts(parts, full(rewritten));
        }
        Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
    }

    async fn may_impersonate(
        &self,
        caller: &Identity,
        check: &ImpersonationCheck,
    ) -> Result<bool, kube::Error> {
        let attributes = ResourceAttributes {
            namespace: check.namespace.clone(),
            verb: Some("impersonate".into()),
            group: Some(check.group.into()),
            resource: Some(check.resource.into()),
            subresource: check.subresource.clone(),
            name: Some(check.name.clone()),
            ..Default::default()
        };
        Ok(self.review(caller, attributes).await?.is_none())
    }

    /// `Ok(None)` when allowed, `Ok(Some(reason))` when denied.
    async fn authorize(
        &self,
        caller: &Identity,
        target: &PodTarget,
    ) -> Result<Option<String>, kube::Error> {
        let attributes = ResourceAttributes {
            namespace: Some(target.namespace.clone()),
            verb: Some(target.subresource.verb().into()),
            group: Some(String::new()),
            resource: Some("pods".into()),
            subresource: Some(target.subresource.segment().into()),
            name: Some(target.name.clone()),
            ..Default::default()
        };
        self.review(caller, attributes).await
    }

    /// A SubjectAccessReview in the virtual API: `Ok(None)` when allowed, else the reason.
    async fn review(
        &self,
        caller: &Identity,
        attributes: ResourceAttributes,
    ) -> Result<Option<String>, kube::Error> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(caller.user.clone()),
                uid: caller.uid.clone(),
                groups: Some(caller.groups.clone()),
                extra: (!caller.extra.is_empty())
                    .then(|| caller.extra.iter().cloned().collect::<BTreeMap<_, _>>()),
                resource_attributes: Some(attributes),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.virt.clone());
        let result = api.create(&PostParams::default(), &review).await?;
        let status = result.status.unwrap_or_default();
        Ok((!status.allowed).then(|| status.reason.unwrap_or_default()))
    }

    /// The host pod serving virtual pod `target`: it must exist, be this tenant's copy of this
    /// very virtual pod (same uid: not a leftover of an earlier pod of the same name) and be
    /// scheduled. Otherwise the error the API server would give for the virtual pod.
    async fn host_pod(&self, target: &PodTarget) -> Result<String, Box<Response<ProxyBody>>> {
        let unavailable = |e: kube::Error| {
            tracing::warn!(error = %e, "pod lookup failed");
            Box::new(status_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "could not look the pod up; retry",
            ))
        };
        let virt: Api<Pod> = Api::namespaced(self.virt.clone(), &target.namespace);
        let Some(vpod) = virt.get_opt(&target.name).await.map_err(unavailable)? else {
            return Err(Box::new(pod_status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("pods \"{}\" not found", target.name),
                &target.name,
            )));
        };
        let host_name = self.tenant.label_name(&target.namespace, &target.name);
        let host: Api<Pod> = Api::namespaced(self.host.clone(), &self.tenant.host_namespace);
        let hpod = host.get_opt(&host_name).await.map_err(unavailable)?;
        let synced = hpod.as_ref().is_some_and(|h| {
            self.tenant.owns(&h.metadata)
                && h.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(VIRTUAL_UID))
                    .is_some_and(|uid| Some(uid) == vpod.metadata.uid.as_ref())
                && h.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
        });
        if !synced {
            return Err(Box::new(pod_status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("pod {} does not have a host assigned", target.name),
                &target.name,
            )));
        }
        Ok(host_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(ns: &str, name: &str, sub: Subresource) -> Route {
        Route::Host(PodTarget {
            namespace: ns.into(),
            name: name.into(),
            subresource: sub,
        })
    }

    #[test]
    fn pod_subresources_go_to_the_host() {
        assert_eq!(
            route("/api/v1/namespaces/default/pods/web/log"),
            host("default", "web", Subresource::Log)
        );
        assert_eq!(
            route("/api/v1/namespaces/a/pods/b/exec"),
            host("a", "b", Subresource::Exec)
        );
        assert_eq!(
            route("/api/v1/namespaces/a/pods/b/attach"),
            host("a", "b", Subresource::Attach)
        );
        assert_eq!(
            route("/api/v1/namespaces/a/pods/b/portforward"),
            host("a", "b", Subresource::PortForward)
        );
    }

    #[test]
    fn everything_else_goes_to_the_virtual_api() {
        for p in [
            "/api/v1/namespaces/a/pods/b",
            "/api/v1/namespaces/a/pods/b/status",
            "/api/v1/namespaces/a/pods/b/binding",
            "/api/v1/namespaces/a/pods",
            "/api/v1/pods",
            "/apis/apps/v1/namespaces/a/deployments/b/scale",
            "/api/v1/namespaces/a/services/b/proxy",
            "/api/v1/nodes/n/proxy/logs",
            "/apis/example.com/v1/namespaces/a/pods/b/exec",
            "/",
        ] {
            assert_eq!(route(p), Route::Virtual, "{p}");
        }
    }

    #[test]
    fn encoded_or_dotted_paths_cannot_hide_a_subresource() {
        assert_eq!(
            route("/api/v1/namespaces/a/pods/b/%65xec"),
            host("a", "b", Subresource::Exec)
        );
        assert_eq!(
            route("/api//v1/namespaces/a/pods/b//exec/"),
            host("a", "b", Subresource::Exec)
        );
        assert_eq!(
            route("/api/v1/namespaces/a/pods/b/../b/exec"),
            Route::Invalid
        );
        assert_eq!(
            route("/api/v1/namespaces/a/pods/b%2Fexec"),
            host("a", "b", Subresource::Exec)
        );
        assert_eq!(route("/api/v1/namespaces/a/pods/b/ex%zzec"), Route::Invalid);
        assert_eq!(route("/api/v1/namespaces/a/pods/b/ex%e"), Route::Invalid);
    }

    #[test]
    fn writing_streams_need_create_and_logs_need_get() {
        assert_eq!(Subresource::Log.verb(), "get");
        for s in [
            Subresource::Exec,
            Subresource::Attach,
            Subresource::PortForward,
        ] {
            assert_eq!(s.verb(), "create");
        }
    }

    #[test]
    fn host_requests_carry_no_caller_identity() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer secret"),
            ("x-remote-user", "admin"),
            ("impersonate-user", "admin"),
            ("impersonate-group", "system:masters"),
            ("sec-websocket-protocol", "v5.channel.k8s.io"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ] {
            h.append(k, v.parse().unwrap());
        }
        let out = host_headers(&h);
        for k in [
            "authorization",
            "x-remote-user",
            "impersonate-user",
            "impersonate-group",
        ] {
            assert!(!out.contains_key(k), "{k} forwarded");
        }
        for k in [
            "sec-websocket-protocol",
            "x-stream-protocol-version",
            "upgrade",
        ] {
            assert!(out.contains_key(k), "{k} dropped");
        }
        assert_eq!(out["connection"], "Upgrade");
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn impersonation_lists_every_check_the_api_server_makes() {
        assert_eq!(impersonation(&headers(&[("accept", "*/*")])), Ok(None));
        assert!(impersonation(&headers(&[("impersonate-group", "devs")])).is_err());

        let imp = impersonation(&headers(&[
            ("impersonate-user", "jane"),
            ("impersonate-group", "devs"),
            ("impersonate-group", "ops"),
            ("impersonate-uid", "u-1"),
            ("impersonate-extra-scopes%2Fwide", "all"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(imp.identity.user, "jane");
        assert_eq!(imp.identity.groups, ["devs", "ops", "system:authenticated"]);
        assert_eq!(imp.identity.uid.as_deref(), Some("u-1"));
        assert_eq!(
            imp.identity.extra,
            vec![("scopes/wide".to_string(), vec!["all".to_string()])]
        );
        let resources: Vec<_> = imp
            .checks
            .iter()
            .map(|c| {
                (
                    c.group,
                    c.resource,
                    c.subresource.as_deref(),
                    c.name.as_str(),
                )
            })
            .collect();
        assert_eq!(
            resources,
            [
                ("", "users", None, "jane"),
                ("", "groups", None, "devs"),
                ("", "groups", None, "ops"),
                ("authentication.k8s.io", "uids", None, "u-1"),
                (
                    "authentication.k8s.io",
                    "userextras",
                    Some("scopes/wide"),
                    "all"
                ),
            ]
        );

        let sa = impersonation(&headers(&[(
            "impersonate-user",
            "system:serviceaccount:dev:ci",
        )]))
        .unwrap()
        .unwrap();
        assert_eq!(sa.checks[0].resource, "serviceaccounts");
        assert_eq!(sa.checks[0].namespace.as_deref(), Some("dev"));
        assert_eq!(sa.checks[0].name, "ci");
        assert!(
            sa.identity
                .groups
                .contains(&"system:serviceaccounts:dev".to_string())
        );
    }

    #[test]
    fn forbidden_reads_like_the_api_server() {
        let t = PodTarget {
            namespace: "dev".into(),
            name: "web".into(),
            subresource: Subresource::Exec,
        };
        assert_eq!(
            forbidden_message("system:serviceaccount:dev:ci", &t, ""),
            "pods \"web\" is forbidden: User \"system:serviceaccount:dev:ci\" cannot create \
             resource \"pods/exec\" in API group \"\" in the namespace \"dev\""
        );
    }
}
