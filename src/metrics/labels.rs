//! Pure mapping of what a request or error says to bounded label values. Whatever a tenant
//! chooses (namespaces, names, custom resources, webhook reasons) maps to a fixed set of
//! `&'static str`, so no scrape grows with, or shows, a tenant's naming.

/// Resources of the built-in API groups that get their own label value; every other one
/// (custom resources included) is `other`.
const RESOURCES: &[&str] = &[
    "bindings",
    "certificatesigningrequests",
    "clusterrolebindings",
    "clusterroles",
    "componentstatuses",
    "configmaps",
    "controllerrevisions",
    "cronjobs",
    "csidrivers",
    "csinodes",
    "csistoragecapacities",
    "customresourcedefinitions",
    "daemonsets",
    "deployments",
    "endpoints",
    "endpointslices",
    "events",
    "horizontalpodautoscalers",
    "ingressclasses",
    "ingresses",
    "jobs",
    "leases",
    "limitranges",
    "mutatingwebhookconfigurations",
    "namespaces",
    "networkpolicies",
    "nodes",
    "persistentvolumeclaims",
    "persistentvolumes",
    "poddisruptionbudgets",
    "pods",
    "podtemplates",
    "priorityclasses",
    "replicasets",
    "replicationcontrollers",
    "resourcequotas",
    "rolebindings",
    "roles",
    "runtimeclasses",
    "secrets",
    "selfsubjectaccessreviews",
    "selfsubjectreviews",
    "selfsubjectrulesreviews",
    "serviceaccounts",
    "services",
    "statefulsets",
    "storageclasses",
    "subjectaccessreviews",
    "tokenreviews",
    "validatingadmissionpolicies",
    "validatingadmissionpolicybindings",
    "validatingwebhookconfigurations",
    "volumeattachments",
];

/// Subresources that get their own label value (`pods/log`); others are `RESOURCE/other`
/// folded into the resource's `other` subresource.
const SUBRESOURCES: &[&str] = &[
    "attach",
    "binding",
    "eviction",
    "exec",
    "log",
    "portforward",
    "proxy",
    "scale",
    "status",
    "token",
];

/// The API groups whose resources are named (a tenant's CRD of the same plural in its own group
/// stays `other`).
const GROUPS: &[&str] = &[
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "apps",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "autoscaling",
    "batch",
    "certificates.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "events.k8s.io",
    "networking.k8s.io",
    "node.k8s.io",
    "policy",
    "rbac.authorization.k8s.io",
    "scheduling.k8s.io",
    "storage.k8s.io",
];

fn known(list: &'static [&'static str], s: &str) -> Option<&'static str> {
    list.iter().copied().find(|k| *k == s)
}

/// `(verb, resource)` of an API request, as Kubernetes' audit would name them, from fixed sets.
/// `resource` is `pods`, `pods/log`, `pods/other`, `other` (unknown or custom), or
/// `nonresource` (discovery, `/healthz`, `/version`, ...).
pub fn request(
    method: &http::Method,
    path: &str,
    query: Option<&str>,
) -> (&'static str, &'static str) {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // /api/v1/... or /apis/GROUP/VERSION/...
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => Some(("", rest)),
        ["apis", group, _version, rest @ ..] => Some((*group, rest)),
        _ => None,
    };
    let Some((group, rest)) = rest else {
        return (nonresource_verb(method), "nonresource");
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    let (resource, named, sub) = match rest {
        [] => return (nonresource_verb(method), "nonresource"),
        [resource] => (*resource, false, None),
        [resource, _name] => (*resource, true, None),
        [resource, _name, sub, ..] => (*resource, true, Some(*sub)),
    };
    let builtin = group.is_empty() || known(GROUPS, group).is_some();
    let resource_label = match (builtin.then(|| known(RESOURCES, resource)).flatten(), sub) {
        (None, _) => "other",
        (Some(r), None) => r,
        (Some(r), Some(s)) => subresource_label(r, s),
    };
    let watch = query.is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "watch=true" || kv == "watch=1" || kv == "watch")
    });
    let verb = match *method {
        http::Method::GET if watch => "watch",
        http::Method::GET if named => "get",
        http::Method::GET => "list",
        http::Method::POST if sub.is_some() => "create",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE if named => "delete",
        http::Method::DELETE => "deletecollection",
        http::Method::HEAD => "get",
        _ => "other",
    };
    (verb, resource_label)
}

/// Interned `resource/subresource` for the known pairs (only `pods`, `services`, `nodes` and the
/// `status`/`scale` of any named resource occur in practice).
fn subresource_label(resource: &'static str, sub: &str) -> &'static str {
    let Some(sub) = known(SUBRESOURCES, sub) else {
        return "other";
    };
    match (resource, sub) {
        ("pods", "log") => "pods/log",
        ("pods", "exec") => "pods/exec",
        ("pods", "attach") => "pods/attach",
        ("pods", "portforward") => "pods/portforward",
        ("pods", "proxy") => "pods/proxy",
        ("pods", "eviction") => "pods/eviction",
        ("pods", "binding") => "pods/binding",
        ("pods", "status") => "pods/status",
        ("services", "proxy") => "services/proxy",
        ("services", "status") => "services/status",
        ("nodes", "proxy") => "nodes/proxy",
        ("nodes", "status") => "nodes/status",
        ("serviceaccounts", "token") => "serviceaccounts/token",
        (_, "status") => "other/status",
        (_, "scale") => "other/scale",
        _ => "other",
    }
}

fn nonresource_verb(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET | http::Method::HEAD => "get",
        http::Method::POST => "post",
        http::Method::PUT => "put",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "other",
    }
}

/// Kubernetes `StatusReason`s (k8s.io/apimachinery metav1) that get their own label value. An
/// admission webhook of the tenant can put any text into `reason`: that is `Other`.
const REASONS: &[&str] = &[
    "AlreadyExists",
    "BadRequest",
    "Conflict",
    "Expired",
    "Forbidden",
    "Gone",
    "InternalError",
    "Invalid",
    "MethodNotAllowed",
    "NotAcceptable",
    "NotFound",
    "RequestEntityTooLarge",
    "ServerTimeout",
    "ServiceUnavailable",
    "Timeout",
    "TooManyRequests",
    "Unauthorized",
    "UnsupportedMediaType",
];

/// The reason of a kube client error: the API's status reason from [`REASONS`], `Other`, or
/// `Transport` when no answer came.
pub fn kube_reason(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) => known(REASONS, &s.reason).unwrap_or("Other"),
        kube::Error::HyperError(_) | kube::Error::Service(_) => "Transport",
        _ => "Other",
    }
}

/// The most custom kinds that get a label value of their own; more share `custom`.
pub const MAX_ADMIN_KINDS: usize = 32;

/// The label value of a custom kind's controller: its qualified kind
/// (`Certificate.cert-manager.io`) as the admin configured it (`--sync-custom-resource`,
/// `--sync-volume-snapshots`), never a name from inside the tenant. Interned once per kind so
/// values stay `&'static str`; past [`MAX_ADMIN_KINDS`] kinds they share `custom`.
pub fn admin_kind(qualified: &str) -> &'static str {
    static INTERNED: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let Ok(mut kinds) = INTERNED.lock() else {
        return "custom";
    };
    if let Some(k) = kinds.iter().find(|k| **k == qualified) {
        return k;
    }
    if kinds.len() >= MAX_ADMIN_KINDS {
        return "custom";
    }
    let k: &'static str = Box::leak(qualified.to_owned().into_boxed_str());
    kinds.push(k);
    k
}

/// A DNS query type as a label value.
pub fn dns_qtype(t: hickory_proto::rr::RecordType) -> &'static str {
    use hickory_proto::rr::RecordType as T;
    match t {
        T::A => "A",
        T::AAAA => "AAAA",
        T::CNAME => "CNAME",
        T::SRV => "SRV",
        T::PTR => "PTR",
        T::TXT => "TXT",
        T::MX => "MX",
        T::NS => "NS",
        T::SOA => "SOA",
        T::HTTPS => "HTTPS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn requests_map_to_audit_verbs_and_known_resources() {
        type Case<'a> = (Method, &'a str, Option<&'a str>, (&'a str, &'a str));
        let cases: &[Case] = &[
            (Method::GET, "/api/v1/pods", None, ("list", "pods")),
            (
                Method::GET,
                "/api/v1/namespaces/team-a/pods",
                Some("watch=true&resourceVersion=1"),
                ("watch", "pods"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/team-a/pods/web-1",
                None,
                ("get", "pods"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/team-a/pods/web-1/log",
                Some("follow=true"),
                ("get", "pods/log"),
            ),
            (
                Method::POST,
                "/api/v1/namespaces/team-a/pods/web-1/exec",
                Some("command=sh"),
                ("create", "pods/exec"),
            ),
            (
                Method::POST,
                "/api/v1/namespaces/team-a/configmaps",
                None,
                ("create", "configmaps"),
            ),
            (
                Method::PUT,
                "/apis/apps/v1/namespaces/x/deployments/d/scale",
                None,
                ("update", "other/scale"),
            ),
            (
                Method::PATCH,
                "/apis/apps/v1/namespaces/x/deployments/d",
                None,
                ("patch", "deployments"),
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/x/secrets/s",
                None,
                ("delete", "secrets"),
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/x/secrets",
                None,
                ("deletecollection", "secrets"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces/x",
                None,
                ("get", "namespaces"),
            ),
            (
                Method::GET,
                "/api/v1/namespaces",
                None,
                ("list", "namespaces"),
            ),
            (Method::GET, "/healthz", None, ("get", "nonresource")),
            (Method::GET, "/apis/apps/v1", None, ("get", "nonresource")),
            (Method::GET, "/openapi/v3", None, ("get", "nonresource")),
        ];
        for (method, path, query, want) in cases {
            assert_eq!(request(method, path, *query), *want, "{method} {path}");
        }
    }

    /// A tenant's names (custom groups and resources, namespaces, object names, subresources)
    /// never become label values: every value comes from the fixed lists.
    #[test]
    fn tenant_chosen_names_never_become_label_values() {
        let cases = [
            "/apis/secret-project.example.com/v1/namespaces/x/widgets",
            "/apis/secret-project.example.com/v1/pods",
            "/apis/evil.k8s.io/v1/namespaces/x/pods/p",
            "/api/v1/namespaces/customer-acme/widgets/w",
            "/api/v1/namespaces/x/pods/p/acme-subresource",
            "/apis/apps/v1/namespaces/x/acme/y",
        ];
        for path in cases {
            let (_, resource) = request(&Method::GET, path, None);
            assert_eq!(resource, "other", "{path}");
        }
        let (verb, _) = request(&Method::from_bytes(b"ACME").unwrap(), "/api/v1/pods", None);
        assert_eq!(verb, "other");
    }

    /// Each configured kind is one value, however often asked for; the number of values is
    /// bounded whatever the configuration.
    #[test]
    fn admin_kinds_are_interned_and_bounded() {
        let a = admin_kind("Widget.example.com");
        let b = admin_kind(&String::from("Widget.example.com"));
        assert_eq!(a, "Widget.example.com");
        assert!(std::ptr::eq(a, b), "interned once");
        let many: Vec<&str> = (0..MAX_ADMIN_KINDS + 5)
            .map(|i| admin_kind(&format!("Kind{i}.bounded.example.com")))
            .collect();
        assert_eq!(many.last().copied(), Some("custom"));
        let distinct: std::collections::BTreeSet<&str> = many.into_iter().collect();
        assert!(distinct.len() <= MAX_ADMIN_KINDS + 1, "{}", distinct.len());
    }

    #[test]
    fn only_kubernetes_reasons_are_kept() {
        let status = |reason: &str| {
            kube::Error::Api(
                kube::core::Status::failure("m", reason)
                    .with_code(400)
                    .boxed(),
            )
        };
        assert_eq!(kube_reason(&status("Conflict")), "Conflict");
        assert_eq!(kube_reason(&status("Forbidden")), "Forbidden");
        // What a tenant's admission webhook may write there.
        assert_eq!(kube_reason(&status("customer-acme-is-leaving")), "Other");
        assert_eq!(kube_reason(&status("")), "Other");
    }
}
