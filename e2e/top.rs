//! `kubectl top` and resource-metric HPAs inside virtual clusters, served from the host's
//! metrics-server (hack/host-cluster.sh up --metrics-server; kwok emulates the kubelets'
//! /metrics/resource, 1m CPU and 1Mi per container unless the host pod's annotation
//! kwok.x-k8s.io/usage-cpu says otherwise). Each tenant sees its own pods under their virtual
//! names and never another tenant's or a host-only pod; nodes only as it sees them.

use std::time::Duration;

use crate::common::{self, Tenant, eventually};

fn host_kubectl(args: &[&str], stdin: Option<&str>) -> String {
    let out = common::kubectl(&common::env().host_kubeconfig, args, stdin);
    assert!(
        out.status.success(),
        "host kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn require_host_metrics() {
    let out = common::kubectl(
        &common::env().host_kubeconfig,
        &["get", "--raw", "/apis/metrics.k8s.io/v1beta1"],
        None,
    );
    assert!(
        out.status.success(),
        "the host cluster has no metrics API: start it with hack/host-cluster.sh up --metrics-server ({})",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kubectl top ARGS` in a tenant, once it lists something (metrics-server needs two scrapes
/// of a new pod).
fn top(t: &Tenant, args: &[&str], want: impl Fn(&str) -> bool) -> String {
    let mut all = vec!["top"];
    all.extend_from_slice(args);
    all.push("--no-headers");
    tokio::task::block_in_place(|| {
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        loop {
            let out = t.kubectl(&all);
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && want(&stdout) {
                return stdout;
            }
            if std::time::Instant::now() > deadline {
                let pods = t.kubectl(&["get", "pods", "-A", "-o", "wide"]);
                let host = common::kubectl(
                    &common::env().host_kubeconfig,
                    &[
                        "get",
                        "pods",
                        "-n",
                        &t.namespace,
                        "-o",
                        "wide",
                        "--show-labels",
                    ],
                    None,
                );
                panic!(
                    "kubectl {all:?} in {}: {stdout}\n{}\nvirtual pods:\n{}\nhost pods:\n{}\nlog:\n{}",
                    t.name,
                    String::from_utf8_lossy(&out.stderr),
                    String::from_utf8_lossy(&pods.stdout),
                    String::from_utf8_lossy(&host.stdout),
                    t.log_tail()
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    })
}

fn pod_yaml(name: &str, ns: &str, app: &str, node: Option<&str>) -> String {
    // A selector, not nodeName: the virtual pod GC removes pods bound to nodes it has not seen.
    let node = node
        .map(|n| format!("  nodeSelector: {{kubernetes.io/hostname: {n}}}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\nspec:\n{node}  tolerations: [{{operator: Exists}}]\n  containers:\n  - name: c\n    image: busybox\n    resources: {{requests: {{cpu: 10m, memory: 16Mi}}}}\n"
    )
}

fn lines_starting(text: &str, prefix: &str) -> usize {
    text.lines().filter(|l| l.starts_with(prefix)).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_top_shows_the_tenants_own_pods_under_virtual_names_and_an_hpa_gets_its_value() {
    require_host_metrics();
    // a mirrors host nodes (cluster read: node metrics by get); b shows pseudo-nodes.
    let a = Tenant::start_with_cluster_read("top-a", &[]);
    let b = Tenant::start("top-b");
    a.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=2",
    ]);
    a.kubectl_ok(&[
        "set",
        "resources",
        "deployment",
        "web",
        "--requests=cpu=10m,memory=16Mi",
    ]);
    a.create_namespace("other");
    let out = common::kubectl(
        &a.kubeconfig,
        &["apply", "-f", "-"],
        Some(&pod_yaml("lonely", "other", "lonely", None)),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = common::kubectl(
        &b.kubeconfig,
        &["apply", "-f", "-"],
        Some(&pod_yaml("bpod", "default", "web", Some("kwok-node-2"))),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A host-only pod in a's namespace (no vkube labels), and a busy one beside b's pod: never
    // shown, and not counted in b's pseudo-node.
    host_kubectl(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: host-only, namespace: {}, annotations: {{kwok.x-k8s.io/usage-cpu: 500m}}}}\nspec:\n  nodeName: kwok-node-2\n  tolerations: [{{operator: Exists}}]\n  containers: [{{name: c, image: busybox}}]\n",
            a.namespace
        )),
    );

    // b sees its own pod and nothing of a's.
    let b_all = top(&b, &["pods", "-A"], |s| s.contains("bpod"));
    assert!(!b_all.contains("web-") && !b_all.contains("lonely") && !b_all.contains("host-only"));
    // Virtual names, only a's pods, per namespace and across namespaces.
    let default = top(&a, &["pods", "-n", "default"], |s| {
        lines_starting(s, "web-") == 2
    });
    assert!(!default.contains("-x-"), "host names shown: {default}");
    let all = top(&a, &["pods", "-A"], |s| {
        s.contains("lonely") && s.contains("web-")
    });
    assert!(!all.contains("bpod") && !all.contains("host-only"), "{all}");
    assert!(
        all.lines()
            .all(|l| l.starts_with("default") || l.starts_with("other")),
        "{all}"
    );
    // A label selector, translated to the host's keys.
    let selected = top(&a, &["pods", "-A", "-l", "app=lonely"], |s| {
        s.contains("lonely")
    });
    assert!(!selected.contains("web-"), "{selected}");
    // One pod by name.
    top(&a, &["pod", "lonely", "-n", "other"], |s| {
        s.starts_with("lonely")
    });

    // Nodes: only those running the tenant's pods. b's pseudo-node shows b's pod alone (1m),
    // not the host-only pod's 500m beside it.
    let b_nodes = top(&b, &["nodes"], |s| s.contains("kwok-node-2"));
    assert_eq!(b_nodes.lines().count(), 1, "{b_nodes}");
    let cpu = b_nodes
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let millis: u32 = cpu.trim_end_matches('m').parse().unwrap_or(u32::MAX);
    assert!(
        millis < 100,
        "b's pseudo-node shows more than b's pod: {b_nodes}"
    );
    let a_nodes = top(&a, &["nodes"], |s| !s.trim().is_empty());
    let virtual_nodes = a.kubectl_ok(&["get", "nodes", "-o", "name"]);
    for line in a_nodes.lines() {
        let node = line.split_whitespace().next().unwrap_or_default();
        assert!(
            virtual_nodes.contains(&format!("node/{node}")),
            "{node} is not a node of a: {virtual_nodes}"
        );
    }

    // Virtual RBAC decides: a ServiceAccount without rights is refused.
    a.kubectl_ok(&["create", "serviceaccount", "viewer"]);
    let out = a.kubectl(&[
        "top",
        "pods",
        "--as",
        "system:serviceaccount:default:viewer",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("forbidden"), "{err}");

    // A resource-metric HPA in the virtual cluster reads the API through the virtual
    // controller manager: it gets a current utilisation (kwok's 1m of 10m requested).
    a.kubectl_ok(&[
        "autoscale",
        "deployment",
        "web",
        "--cpu-percent=50",
        "--min=1",
        "--max=3",
    ]);
    let value = eventually(
        "the HPA's current CPU utilisation",
        Duration::from_secs(180),
        || async {
            let out = a.kubectl(&[
                "get",
                "hpa",
                "web",
                "-o",
                "jsonpath={.status.currentMetrics[0].resource.current.averageUtilization}",
            ]);
            let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (!v.is_empty()).then_some(v)
        },
    )
    .await;
    let value: u32 = value.parse().expect("a number");
    assert!(value > 0 && value < 100, "utilisation {value}%");
    let _ = common::kubectl(
        &common::env().host_kubeconfig,
        &[
            "delete",
            "pod",
            "host-only",
            "-n",
            &a.namespace,
            "--wait=false",
        ],
        None,
    );
}
