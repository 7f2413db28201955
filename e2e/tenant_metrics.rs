//! Tenants' control planes scraped by the admin's Prometheus and no one else: the chart with
//! `metrics.tenants.enabled`, the manager as in attack_manager.rs (a local process with the
//! chart's ServiceAccount, so the chart's RBAC and its guard judge every write), and two tenants.
//!
//! On kwok nodes no packet flows, so the NetworkPolicies the manager really wrote are evaluated
//! as Kubernetes defines them (every policy of the namespace, not only the manager's) for a pod
//! of each kind of caller. With the real node (hack/real-node.sh), the same question is also
//! asked with real packets: a stand-in carrying the control plane pod's labels runs on the
//! node, and pods of the tenant's namespace, of another tenant's and of the admin's namespace
//! try to connect.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::attack_manager::{Cleanup, Platform, vc_yaml};
use crate::common::{self, unique};

const METRICS_PORT: u16 = 9095;
const API_PORT: u16 = 8443;

fn admin() -> std::path::PathBuf {
    common::env().host_kubeconfig
}

fn json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&common::kubectl_ok(&admin(), &all)).unwrap()
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect()
}

/// Whether a LabelSelector (as JSON) selects `labels`; an empty selector selects everything.
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let matched = labels_of(&selector["matchLabels"])
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions = selector["matchExpressions"].as_array().cloned();
    matched
        && expressions.into_iter().flatten().all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let have = labels.get(key).map(String::as_str);
            match e["operator"].as_str() {
                Some("In") => have.is_some_and(|h| values.contains(&h)),
                Some("NotIn") => have.is_none_or(|h| !values.contains(&h)),
                Some("Exists") => have.is_some(),
                Some("DoesNotExist") => have.is_none(),
                other => panic!("unknown selector operator {other:?}"),
            }
        })
}

/// A caller: its namespace, that namespace's labels, its pod's labels.
struct Caller {
    what: &'static str,
    namespace: String,
    namespace_labels: BTreeMap<String, String>,
    pod_labels: BTreeMap<String, String>,
}

/// Whether the NetworkPolicies of `namespace` let `from` connect to TCP `port` (named
/// `port_name` in the pod) of a pod labelled `target`. An ipBlock peer counts as admitting
/// (the callers here have no fixed address): this errs towards reporting a hole.
fn admits(
    policies: &[Value],
    namespace: &str,
    target: &BTreeMap<String, String>,
    port: u16,
    port_name: &str,
    from: &Caller,
) -> bool {
    let isolating: Vec<&Value> = policies
        .iter()
        .filter(|p| selects(&p["spec"]["podSelector"], target))
        .filter(|p| {
            p["spec"]["policyTypes"]
                .as_array()
                .is_none_or(|t| t.iter().any(|t| t == "Ingress"))
        })
        .collect();
    if isolating.is_empty() {
        return true;
    }
    let port_ok = |rule: &Value| match rule["ports"].as_array() {
        None => true,
        Some(ports) if ports.is_empty() => true,
        Some(ports) => ports.iter().any(|p| {
            let tcp = p["protocol"].as_str().is_none_or(|x| x == "TCP");
            let matches = match &p["port"] {
                Value::Null => true,
                Value::Number(n) => {
                    let first = n.as_u64().unwrap_or_default();
                    let last = p["endPort"].as_u64().unwrap_or(first);
                    (first..=last).contains(&u64::from(port))
                }
                Value::String(s) => s == port_name,
                _ => false,
            };
            tcp && matches
        }),
    };
    let peer_ok = |peer: &Value| {
        if !peer["ipBlock"].is_null() {
            return true;
        }
        let pods_ok =
            peer["podSelector"].is_null() || selects(&peer["podSelector"], &from.pod_labels);
        match peer["namespaceSelector"].is_null() {
            true => from.namespace == namespace && pods_ok,
            false => selects(&peer["namespaceSelector"], &from.namespace_labels) && pods_ok,
        }
    };
    isolating.iter().any(|p| {
        p["spec"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|rule| {
                port_ok(rule)
                    && match rule["from"].as_array() {
                        None => true,
                        Some(peers) if peers.is_empty() => true,
                        Some(peers) => peers.iter().any(peer_ok),
                    }
            })
    })
}

fn namespace_labels(ns: &str) -> BTreeMap<String, String> {
    labels_of(&json(&["get", "namespace", ns])["metadata"]["labels"])
}

struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = common::kubectl(
            &admin(),
            &["delete", "namespace", &self.0, "--wait=false"],
            None,
        );
    }
}

#[test]
fn a_tenants_metrics_port_is_open_to_the_admins_namespaces_alone() {
    let scrapers = Namespace(unique("scrapers"));
    let elsewhere = Namespace(unique("elsewhere"));
    for ns in [&scrapers.0, &elsewhere.0] {
        common::kubectl_ok(&admin(), &["create", "namespace", ns]);
    }
    let platform = Platform::start_with(&format!(
        "metrics:\n  allowedNamespaces: [{}]\n  tenants: {{enabled: true, port: {METRICS_PORT}}}\n",
        scrapers.0
    ));
    let (alice, bob) = (unique("mtr-a"), unique("mtr-b"));
    let _cleanup = (Cleanup(alice.clone()), Cleanup(bob.clone()));
    for name in [&alice, &bob] {
        let out = common::kubectl(
            &admin(),
            &["apply", "-f", "-"],
            Some(&vc_yaml(name, "someone")),
        );
        assert!(out.status.success(), "{out:?}");
    }
    let (ns_a, ns_b) = (format!("vkube-{alice}"), format!("vkube-{bob}"));
    // The manager wrote the control plane (its pod template: what the pod will carry) and the
    // policy, through the chart's RBAC and guard.
    let sts = common::eventually_blocking(
        "the control plane StatefulSet",
        Duration::from_secs(90),
        || {
            let out = common::kubectl(
                &admin(),
                &["get", "statefulset", "vkube", "-n", &ns_a, "-o", "json"],
                None,
            );
            out.status
                .success()
                .then(|| serde_json::from_slice::<Value>(&out.stdout).ok())
                .flatten()
        },
    );
    platform.wait_phase(&alice, "Starting");
    let template = &sts["spec"]["template"];
    let container = &template["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let bind = format!("0.0.0.0:{METRICS_PORT}");
    assert!(
        args.windows(2)
            .any(|w| w == ["--metrics-bind-address", bind.as_str()]),
        "{args:?}"
    );
    let port = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a port named metrics");
    assert_eq!(port["containerPort"], METRICS_PORT);
    let control_plane = labels_of(&template["metadata"]["labels"]);

    let policies_of = |ns: &str| -> Vec<Value> {
        json(&["get", "networkpolicies", "-n", ns])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    common::eventually_blocking("the metrics policy", Duration::from_secs(60), || {
        policies_of(&ns_a)
            .iter()
            .any(|p| p["metadata"]["name"] == "vkube-metrics")
            .then_some(())
    });
    common::eventually_blocking(
        "the other tenant's policies",
        Duration::from_secs(60),
        || {
            policies_of(&ns_b)
                .iter()
                .any(|p| p["metadata"]["name"] == "vkube-metrics")
                .then_some(())
        },
    );
    let policies = policies_of(&ns_a);
    let caller = |what, ns: &str, pod: &[(&str, &str)]| Caller {
        what,
        namespace: ns.to_string(),
        namespace_labels: namespace_labels(ns),
        pod_labels: pod
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let callers = [
        // A pod of the tenant's, as the syncer labels it on the host.
        (
            caller(
                "the tenant's own pod",
                &ns_a,
                &[
                    ("vkube.dev/managed-by", alice.as_str()),
                    ("vkube.dev/namespace", "default"),
                    ("app", "web"),
                ],
            ),
            false,
        ),
        (
            caller("any pod of the tenant's namespace", &ns_a, &[]),
            false,
        ),
        (
            caller(
                "another tenant's pod",
                &ns_b,
                &[
                    ("vkube.dev/managed-by", bob.as_str()),
                    ("vkube.dev/namespace", "default"),
                ],
            ),
            false,
        ),
        (
            caller(
                "another tenant's control plane",
                &ns_b,
                &[("app.kubernetes.io/component", "control-plane")],
            ),
            false,
        ),
        (
            caller("a pod of an unlisted namespace", &elsewhere.0, &[]),
            false,
        ),
        (
            caller(
                "the admin's Prometheus",
                &scrapers.0,
                &[("app", "prometheus")],
            ),
            true,
        ),
    ];
    for (from, want) in &callers {
        let metrics = admits(
            &policies,
            &ns_a,
            &control_plane,
            METRICS_PORT,
            "metrics",
            from,
        );
        assert_eq!(
            metrics,
            *want,
            "{} {} the metrics port; the namespace's policies:\n{}",
            from.what,
            if metrics { "reaches" } else { "does not reach" },
            serde_json::to_string_pretty(&policies).unwrap()
        );
        // Everyone still reaches the API port: the policies are read as Kubernetes reads them.
        assert!(
            admits(&policies, &ns_a, &control_plane, API_PORT, "https", from),
            "{}",
            from.what
        );
    }

    // The PodMonitor's selector finds exactly the control plane pods.
    let rendered = common::helm_template(&[
        "metrics.tenants.enabled=true",
        "metrics.tenants.podMonitor.enabled=true",
    ]);
    let monitor = rendered
        .iter()
        .find(|d| d["kind"] == "PodMonitor")
        .expect("the chart renders the PodMonitor");
    assert!(selects(&monitor["spec"]["selector"], &control_plane));
    for (from, _) in &callers {
        assert!(
            !selects(&monitor["spec"]["selector"], &from.pod_labels),
            "the PodMonitor selects {}",
            from.what
        );
    }

    if let Some(node) = crate::real_node::real_node(
        "a_tenants_metrics_port_is_open_to_the_admins_namespaces_alone (packets)",
    ) {
        packets(&node, &ns_a, &ns_b, &scrapers.0, &control_plane);
    }
    for name in [&alice, &bob] {
        common::kubectl_ok(&admin(), &["delete", "vc", name, "--wait=false"]);
    }
    platform.wait_gone(&alice);
    platform.wait_gone(&bob);
}

/// Real packets on the real node: a stand-in with the control plane pod's labels serves both
/// ports; callers in the tenant's namespace, another tenant's and the admin's connect.
fn packets(
    node: &crate::real_node::RealNode,
    ns_a: &str,
    ns_b: &str,
    scrapers: &str,
    control_plane: &BTreeMap<String, String>,
) {
    use crate::real_node::{apply, real_node_pod};
    let labels: Vec<String> = control_plane
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let server = format!(
        "  - name: main\n    image: IMAGE\n    imagePullPolicy: Never\n    command: [sh, -c, 'mkdir -p /www && echo ok > /www/index.html && httpd -p {METRICS_PORT} -h /www && exec httpd -f -p {API_PORT} -h /www']\n"
    );
    let client = "  - name: main\n    image: IMAGE\n    imagePullPolicy: Never\n    command: [sleep, \"3600\"]\n";
    apply(
        node,
        &real_node_pod(ns_a, "standin", &node.testbox, &labels.join(", "), &server),
    );
    let callers = [(ns_a, "caller"), (ns_b, "caller"), (scrapers, "caller")];
    for (ns, pod) in callers {
        apply(
            node,
            &real_node_pod(ns, pod, &node.testbox, "app: caller", client),
        );
    }
    let ready = |ns: &str, pod: &str| {
        let out = common::kubectl(
            &admin(),
            &[
                "wait",
                "-n",
                ns,
                "--for=condition=Ready",
                &format!("pod/{pod}"),
                "--timeout=120s",
            ],
            None,
        );
        assert!(out.status.success(), "{ns}/{pod} not Ready: {out:?}");
    };
    ready(ns_a, "standin");
    for (ns, pod) in callers {
        ready(ns, pod);
    }
    let ip = common::kubectl_ok(
        &admin(),
        &[
            "get",
            "pod",
            "standin",
            "-n",
            ns_a,
            "-o",
            "jsonpath={.status.podIP}",
        ],
    );
    let probe = |ns: &str, port: u16| -> bool {
        let script =
            format!("nc -w 3 {ip} {port} </dev/null >/dev/null 2>&1 && echo OPEN || echo CLOSED");
        let out = common::kubectl_ok(
            &admin(),
            &["exec", "-n", ns, "caller", "--", "sh", "-c", &script],
        );
        out.trim() == "OPEN"
    };
    for (ns, what, metrics_open) in [
        (ns_a, "a pod of the tenant's namespace", false),
        (ns_b, "a pod of another tenant's namespace", false),
        (scrapers, "a pod of the admin's namespace", true),
    ] {
        // kube-router applies policies within seconds of a pod starting: wait for the verdict.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (metrics, api) = (probe(ns, METRICS_PORT), probe(ns, API_PORT));
            if metrics == metrics_open && api {
                crate::real_node::report(&format!(
                    "tenant metrics, real packets: {what}: metrics port {}, API port open",
                    if metrics { "open" } else { "closed" }
                ));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: metrics port open={metrics} (want {metrics_open}), API port open={api}"
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

/// A tenant dresses a pod up as a control plane (the PodMonitor's labels, vkube's own label
/// key among them): the host copy keeps the harmless keys but never vkube's, so the PodMonitor
/// does not select it and the admin's Prometheus never scrapes a tenant's pod.
#[test]
fn a_tenant_pod_dressed_as_a_control_plane_is_not_scraped() {
    let t = common::Tenant::start("dressed");
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: fake-cp\n  namespace: default\n  labels: {{vkube.dev/virtual-cluster: {name}, app.kubernetes.io/component: control-plane, app.kubernetes.io/managed-by: vkube-manager}}\nspec:\n  containers: [{{name: app, image: registry.example/app:1, ports: [{{name: metrics, containerPort: 8080}}]}}]\n",
        name = t.name
    );
    let out = common::kubectl(&t.kubeconfig, &["apply", "-f", "-"], Some(&pod));
    assert!(out.status.success(), "{out:?}");
    let host_name = format!("fake-cp-x-default-x-{}", t.name);
    let host = common::eventually_blocking("the host copy", Duration::from_secs(60), || {
        let out = common::kubectl(
            &admin(),
            &["get", "pod", &host_name, "-n", &t.namespace, "-o", "json"],
            None,
        );
        out.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&out.stdout).ok())
            .flatten()
    });
    let labels = labels_of(&host["metadata"]["labels"]);
    assert_eq!(
        labels
            .get("app.kubernetes.io/component")
            .map(String::as_str),
        Some("control-plane")
    );
    assert!(
        !labels.contains_key("vkube.dev/virtual-cluster"),
        "{labels:?}"
    );
    let rendered = common::helm_template(&[
        "metrics.tenants.enabled=true",
        "metrics.tenants.podMonitor.enabled=true",
    ]);
    let monitor = rendered.iter().find(|d| d["kind"] == "PodMonitor").unwrap();
    assert!(
        !selects(&monitor["spec"]["selector"], &labels),
        "the PodMonitor selects the tenant's pod: {labels:?}"
    );
}
