//! Cross-tenant traffic, tried with real packets on the real node (hack/real-node.sh, where
//! kube-router enforces NetworkPolicies): two tenants of plain `vkube serve`, each with vkube's
//! default tenant policy, pods on the real node. Each tenant's pod reaches its own pods and its
//! own control plane, and nothing of the other tenant's nor the host's; a NetworkPolicy the tenant
//! writes in its virtual cluster really stops its own traffic, and cannot re-open what the default
//! closes.
//!
//! Targets are only addresses on this machine (pods on the node's bridge, the node's address, the
//! host API server's Service IP, which the node routes to loopback): nothing is ever sent off it,
//! so cloud metadata (169.254.169.254) is covered by the unit tests of the policy, not by packets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::{self, Tenant, eventually};
use crate::real_node::{RealNode, TestNamespace, real_node, report, required};

/// The host API server as a pod sees it: the `kubernetes` Service IP (hack/real-node.sh routes
/// it to the API server's loopback port).
const HOST_API: (&str, u16) = ("10.96.0.1", 443);
/// The kubelet of the real node.
const KUBELET_PORT: u16 = 10250;
const HTTP_PORT: u16 = 8080;

/// Tenants whose proxies the real node's pods reach at the node's address, as in
/// e2e/real_node.rs; started side by side.
fn tenants_on_the_node(prefixes: &[&str], node_ip: &str) -> Vec<Tenant> {
    let mut tenants: Vec<Tenant> = prefixes
        .iter()
        .map(|p| {
            let mut t = Tenant::new(p);
            t.listen_ip = "0.0.0.0".into();
            // The real node's taint is one the admin lets tenants tolerate (the chart's value).
            t.extra_args = [
                "--advertise-address",
                node_ip,
                "--allow-toleration",
                "vkube.dev/real-node:NoSchedule",
            ]
            .map(String::from)
            .to_vec();
            t.spawn();
            t
        })
        .collect();
    for t in &mut tenants {
        t.wait_ready();
    }
    tenants
}

fn pod_yaml(ns: &str, name: &str, app: &str, image: &str, command: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}
spec:
  nodeSelector: {{vkube.dev/node-type: real}}
  tolerations: [{{key: vkube.dev/real-node, operator: Exists, effect: NoSchedule}}]
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    imagePullPolicy: Never
    command: {command}
"#
    )
}

const SERVER: &str = r#"[sh, -c, 'mkdir -p /www && echo "hello from $(hostname)" > /www/index.html && exec httpd -f -p 8080 -h /www']"#;
const CLIENT: &str = r#"[sleep, "3600"]"#;

/// Creates the virtual pods (name, app label, command) and returns their pod IPs once Ready.
fn virtual_pods(t: &Tenant, node: &RealNode, pods: &[(&str, &str, &str)]) -> Vec<String> {
    let yaml: Vec<String> = pods
        .iter()
        .map(|(name, app, cmd)| pod_yaml("default", name, app, &node.testbox, cmd))
        .collect();
    let out = common::kubectl(
        &t.kubeconfig,
        &["apply", "-f", "-"],
        Some(&yaml.join("\n---\n")),
    );
    assert!(out.status.success(), "{out:?}");
    pods.iter()
        .map(|(name, _, _)| {
            let ready = t.kubectl(&[
                "wait",
                "--for=condition=Ready",
                &format!("pod/{name}"),
                "--timeout=90s",
            ]);
            assert!(
                ready.status.success(),
                "virtual pod {name} of {} not Ready: {}\n{}",
                t.name,
                String::from_utf8_lossy(&ready.stderr),
                t.log_tail()
            );
            t.kubectl_ok(&["get", "pod", name, "-o", "jsonpath={.status.podIP}"])
        })
        .collect()
}

/// A TCP connect from inside a pod to each target: `true` = connected. busybox `nc` exits 0 once
/// connected (stdin is empty), 1 when refused (kube-router REJECTs) or timed out.
fn probe(
    kubeconfig: &std::path::Path,
    namespace: &str,
    pod: &str,
    targets: &[(String, String, u16)],
) -> BTreeMap<String, bool> {
    let script: String = targets
        .iter()
        .map(|(label, ip, port)| {
            format!(
                "if nc -w 3 {ip} {port} </dev/null >/dev/null 2>&1; then echo '{label} OPEN'; else echo '{label} CLOSED'; fi\n"
            )
        })
        .collect();
    let out = common::kubectl(
        kubeconfig,
        &["exec", "-n", namespace, pod, "--", "sh", "-c", &script],
        None,
    );
    assert!(
        out.status.success(),
        "probing from {namespace}/{pod}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(label, state)| (label.to_string(), state == "OPEN"))
        .collect()
}

fn expect(targets: &[(String, String, u16)], open: &[&str]) -> BTreeMap<String, bool> {
    targets
        .iter()
        .map(|(label, _, _)| (label.clone(), open.contains(&label.as_str())))
        .collect()
}

fn target(label: &str, ip: &str, port: u16) -> (String, String, u16) {
    (label.to_string(), ip.to_string(), port)
}

/// Waits until probing from the pod shows `want` (kube-router programs a new pod's chains a
/// moment after it starts); panics with the last result otherwise.
async fn until_matrix(
    what: &str,
    kubeconfig: &std::path::Path,
    namespace: &str,
    pod: &str,
    targets: &[(String, String, u16)],
    want: &BTreeMap<String, bool>,
) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let mut first = true;
    loop {
        let got = probe(kubeconfig, namespace, pod, targets);
        if &got == want {
            return started.elapsed();
        }
        if std::mem::take(&mut first) {
            report(&format!(
                "network: {what}: first probe {got:?}, waiting for {want:?}"
            ));
        }
        assert!(
            Instant::now() < deadline,
            "{what}: from {namespace}/{pod}, after 60 s\n got: {got:?}\nwant: {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_tenants_reach_their_own_pods_and_control_plane_but_not_each_other_nor_the_host() {
    let test = "two_tenants_reach_their_own_pods_and_control_plane_but_not_each_other_nor_the_host";
    let Some(node) = real_node(test) else {
        return;
    };
    let node_ip = required("VKUBE_E2E_REAL_NODE_IP");
    let tenants = tenants_on_the_node(&["neta", "netb"], &node_ip);
    let (a, b) = (&tenants[0], &tenants[1]);
    // Pods on the node with no policy at all, to show every target is there and reachable
    // from the pod network when no policy stops it.
    let plain = TestNamespace::create(&node, "net-plain");
    crate::real_node::apply(
        &node,
        &pod_yaml(&plain.name, "control", "control", &node.testbox, CLIENT),
    );
    let ips_a = virtual_pods(
        a,
        &node,
        &[("server", "server", SERVER), ("client", "client", CLIENT)],
    );
    let ips_b = virtual_pods(
        b,
        &node,
        &[("server", "server", SERVER), ("client", "client", CLIENT)],
    );
    crate::real_node::running(
        &node,
        &kube::Api::namespaced(common::host_client().await, &plain.name),
        "control",
    )
    .await;

    let node_str = node_ip.as_str();
    let targets = vec![
        target("a-server", &ips_a[0], HTTP_PORT),
        target("b-server", &ips_b[0], HTTP_PORT),
        target("a-control-plane", node_str, a.port),
        target("b-control-plane", node_str, b.port),
        target("host-api", HOST_API.0, HOST_API.1),
        target("kubelet", node_str, KUBELET_PORT),
    ];
    // Without a policy every target answers, except the tenants' pods, which the default
    // policy of their namespaces closes to the rest of the cluster.
    until_matrix(
        "a pod outside any tenant",
        &node.kubeconfig,
        &plain.name,
        "control",
        &targets,
        &expect(
            &targets,
            &["a-control-plane", "b-control-plane", "host-api", "kubelet"],
        ),
    )
    .await;
    until_matrix(
        "tenant a's pod",
        &a.kubeconfig,
        "default",
        "client",
        &targets,
        &expect(&targets, &["a-server", "a-control-plane"]),
    )
    .await;
    until_matrix(
        "tenant b's pod",
        &b.kubeconfig,
        "default",
        "client",
        &targets,
        &expect(&targets, &["b-server", "b-control-plane"]),
    )
    .await;

    // Tenant a tries to open everything with a policy of its own: ipBlocks of the whole
    // internet both ways. Clipped, it opens nothing the default closes; it does take effect
    // (its ingress rule admits no pod address, so a's own client loses a's server).
    let reopen = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: reopen, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0}}]}]
  egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0}}, {ipBlock: {cidr: 10.0.0.0/8}}]}]
"#;
    let out = common::kubectl(&a.kubeconfig, &["apply", "-f", "-"], Some(reopen));
    assert!(out.status.success(), "{out:?}");
    until_matrix(
        "tenant a's pod under its own all-open policy",
        &a.kubeconfig,
        "default",
        "client",
        &targets,
        &expect(&targets, &["a-control-plane"]),
    )
    .await;
    // The tenant is told, naming the fields.
    let events = eventually(
        "a NetworkPolicyClipped event on the tenant's policy",
        Duration::from_secs(30),
        || {
            let out = a.kubectl(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=reopen,reason=NetworkPolicyClipped",
                "-o",
                "jsonpath={.items[*].message}",
            ]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            async move { (!text.is_empty()).then_some(text) }
        },
    )
    .await;
    assert!(
        events.contains("spec.ingress[0].from[0].ipBlock"),
        "{events}"
    );
    assert!(events.contains("spec.egress[0].to[0].ipBlock"), "{events}");
    assert!(
        events.contains("spec.egress[0].to[1].ipBlock: 10.0.0.0/8 left out"),
        "{events}"
    );
    // On the host, the copy keeps the closed ranges out.
    let host_copy = common::kubectl_ok(
        &node.kubeconfig,
        &[
            "get",
            "networkpolicy",
            "-n",
            &a.namespace,
            &format!("reopen-x-default-x-{}", a.name),
            "-o",
            "jsonpath={.spec.egress[0].to}",
        ],
    );
    assert!(
        host_copy.contains("10.0.0.0/8") && host_copy.contains("169.254.0.0/16"),
        "{host_copy}"
    );
    assert!(!host_copy.contains(r#""cidr":"10.0.0.0/8""#), "{host_copy}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_network_policy_stops_its_own_traffic_until_it_is_deleted() {
    let test = "a_tenant_network_policy_stops_its_own_traffic_until_it_is_deleted";
    let Some(node) = real_node(test) else {
        return;
    };
    let node_ip = required("VKUBE_E2E_REAL_NODE_IP");
    let tenants = tenants_on_the_node(&["netpol"], &node_ip);
    let t = &tenants[0];
    let ips = virtual_pods(
        t,
        &node,
        &[
            ("server", "server", SERVER),
            ("other", "other", SERVER),
            ("client", "client", CLIENT),
        ],
    );
    let targets = vec![
        target("server", &ips[0], HTTP_PORT),
        target("other", &ips[1], HTTP_PORT),
    ];
    let both = expect(&targets, &["server", "other"]);
    until_matrix(
        "before any policy",
        &t.kubeconfig,
        "default",
        "client",
        &targets,
        &both,
    )
    .await;

    // Deny all ingress to `server`, in the virtual cluster.
    let deny = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-server, namespace: default}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
"#;
    let out = common::kubectl(&t.kubeconfig, &["apply", "-f", "-"], Some(deny));
    assert!(out.status.success(), "{out:?}");
    // Only `server` is closed: `other`, which no policy selects, keeps the default.
    let applied = until_matrix(
        "the deny policy in effect",
        &t.kubeconfig,
        "default",
        "client",
        &targets,
        &expect(&targets, &["other"]),
    )
    .await;
    // The host copy selects only this tenant's pods of that virtual namespace.
    let selector = common::kubectl_ok(
        &node.kubeconfig,
        &[
            "get",
            "networkpolicy",
            "-n",
            &t.namespace,
            &format!("deny-server-x-default-x-{}", t.name),
            "-o",
            "jsonpath={.spec.podSelector.matchLabels}",
        ],
    );
    let selector: BTreeMap<String, String> = serde_json::from_str(&selector).unwrap();
    assert_eq!(
        selector,
        BTreeMap::from([
            ("app".to_string(), "server".to_string()),
            ("vkube.dev/managed-by".to_string(), t.name.clone()),
            ("vkube.dev/namespace".to_string(), "default".to_string()),
        ])
    );

    t.kubectl_ok(&["delete", "networkpolicy", "deny-server"]);
    let restored = until_matrix(
        "traffic back after the policy is deleted",
        &t.kubeconfig,
        "default",
        "client",
        &targets,
        &both,
    )
    .await;
    report(&format!(
        "network: tenant NetworkPolicy created -> traffic stopped on the real node in {} ms; deleted -> restored in {} ms (polled through kubectl exec, ~0.3 s granularity)",
        applied.as_millis(),
        restored.as_millis()
    ));
    // The host copy went with it.
    eventually(
        "the host copy is garbage-collected",
        Duration::from_secs(30),
        || {
            let out = common::kubectl(
                &node.kubeconfig,
                &[
                    "get",
                    "networkpolicy",
                    "-n",
                    &t.namespace,
                    &format!("deny-server-x-default-x-{}", t.name),
                ],
                None,
            );
            async move { (!out.status.success()).then_some(()) }
        },
    )
    .await;
}

/// The syncer's side, on any host cluster (no packets): the base policy and the default
/// allowances exist from the start; a tenant policy reaches the host confined, follows the
/// labels of the virtual namespaces it selects, narrows the allowances of its namespace, and is
/// garbage-collected with them put back when it goes.
#[tokio::test(flavor = "multi_thread")]
async fn tenant_network_policies_reach_the_host_confined_and_follow_namespace_labels() {
    let t = Tenant::start("netsync");
    let host = common::env().host_kubeconfig;
    let host_json = |name: &str, path: &str| -> Option<String> {
        let out = common::kubectl(
            &host,
            &[
                "get",
                "networkpolicy",
                "-n",
                &t.namespace,
                name,
                "-o",
                &format!("jsonpath={path}"),
            ],
            None,
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let allow_ingress = format!("vkube-allow-ingress-{}", t.name);
    let base = host_json("vkube-tenant", "{.spec.policyTypes}").expect("the base policy");
    assert_eq!(base, r#"["Ingress","Egress"]"#);
    let initial = eventually("the default allowances", Duration::from_secs(30), || {
        let got = host_json(&allow_ingress, "{.spec.podSelector}");
        async move { got }
    })
    .await;
    assert_eq!(
        initial,
        format!(
            r#"{{"matchLabels":{{"vkube.dev/managed-by":"{}"}}}}"#,
            t.name
        )
    );

    t.create_namespace("team-a");
    t.kubectl_ok(&["label", "namespace", "team-a", "team=a"]);
    let policy = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-team-a, namespace: default}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}}]}]
"#;
    let out = common::kubectl(&t.kubeconfig, &["apply", "-f", "-"], Some(policy));
    assert!(out.status.success(), "{out:?}");
    let copy = format!("from-team-a-x-default-x-{}", t.name);
    let namespaces = |want: &'static [&'static str]| {
        let host_json = &host_json;
        let copy = copy.clone();
        async move {
            eventually(
                &format!("the host copy's peer selects namespaces {want:?}"),
                Duration::from_secs(30),
                || {
                    let got = host_json(&copy, "{.spec.ingress[0].from[0].podSelector}")
                        .unwrap_or_default();
                    let ok = ["team-a", "team-b", "default"]
                        .iter()
                        .all(|ns| got.contains(&format!("\"{ns}\"")) == want.contains(ns));
                    async move { ok.then_some(()) }
                },
            )
            .await
        }
    };
    namespaces(&["team-a"]).await;
    assert_eq!(
        host_json(&copy, "{.spec.podSelector.matchLabels}").unwrap(),
        format!(
            r#"{{"app":"db","vkube.dev/managed-by":"{}","vkube.dev/namespace":"default"}}"#,
            t.name
        )
    );
    // A namespace labelled later joins.
    t.create_namespace("team-b");
    t.kubectl_ok(&["label", "namespace", "team-b", "team=a"]);
    namespaces(&["team-a", "team-b"]).await;
    // The default allowance no longer covers `default`; its complement does (app != db).
    eventually(
        "the allowances leave the policy's pods to it",
        Duration::from_secs(30),
        || {
            let rest = host_json(&allow_ingress, "{.spec.podSelector.matchExpressions}");
            async move { rest.filter(|r| r.contains(r#""operator":"NotIn","values":["default"]"#)) }
        },
    )
    .await;

    t.kubectl_ok(&["delete", "networkpolicy", "from-team-a"]);
    eventually(
        "the copy is collected and the allowance covers the namespace again",
        Duration::from_secs(30),
        || {
            let gone = host_json(&copy, "{.metadata.name}").is_none();
            let rest = host_json(&allow_ingress, "{.spec.podSelector}");
            let want = initial.clone();
            async move { (gone && rest.as_deref() == Some(want.as_str())).then_some(()) }
        },
    )
    .await;
}
