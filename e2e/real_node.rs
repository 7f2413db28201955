//! The real node of the test harness (hack/real-node.sh: containerd, kubelet, kube-proxy and
//! CoreDNS beside the kwok nodes), tested against the host cluster: real containers, logs and
//! exec through the host API server, a ClusterIP Service and its DNS name.
//!
//! hack/test.sh sets VKUBE_E2E_REAL_NODE=1 (and the node's name and images) when the node is up.
//! Otherwise each test prints `SKIPPED` with the reason and passes: a machine that cannot run
//! containers still runs the rest of the suite, and says so.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};

use crate::common::{self, eventually, unique};

/// What hack/real-node.sh reported through hack/test.sh.
pub(crate) struct RealNode {
    pub(crate) name: String,
    pub(crate) testbox: String,
    pub(crate) kubeconfig: PathBuf,
}

/// A line on the test process's stderr that shows even when libtest captures output (it captures
/// only the print macros): a skip or a measurement must never pass unseen.
pub(crate) fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

pub(crate) fn required(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("VKUBE_E2E_REAL_NODE=1 but {var} is not set: source the env file hack/real-node.sh up prints")
    })
}

/// The real node, or None after printing why the calling test is skipped.
pub(crate) fn real_node(test: &str) -> Option<RealNode> {
    if std::env::var("VKUBE_E2E_REAL_NODE").as_deref() != Ok("1") {
        let why = std::env::var("VKUBE_E2E_REAL_NODE_SKIP").unwrap_or_else(|_| {
            "VKUBE_E2E_REAL_NODE is not 1: no real node was started \
             (hack/test.sh starts one with hack/real-node.sh up)"
                .into()
        });
        report(&format!("SKIPPED {test}: {why}"));
        return None;
    }
    Some(RealNode {
        name: required("VKUBE_E2E_REAL_NODE_NAME"),
        testbox: required("VKUBE_E2E_TESTBOX_IMAGE"),
        kubeconfig: common::env().host_kubeconfig,
    })
}

/// A host namespace for one test, deleted when the test ends (pass or fail).
pub(crate) struct TestNamespace {
    pub(crate) name: String,
    kubeconfig: PathBuf,
}

impl TestNamespace {
    pub(crate) fn create(node: &RealNode, prefix: &str) -> TestNamespace {
        let name = unique(prefix);
        common::kubectl_ok(&node.kubeconfig, &["create", "namespace", &name]);
        TestNamespace {
            name,
            kubeconfig: node.kubeconfig.clone(),
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = common::kubectl(
            &self.kubeconfig,
            &["delete", "namespace", &self.name, "--wait=false"],
            None,
        );
    }
}

/// A pod for the real node: it tolerates the node's taint and selects it by label. Pods stop
/// at once on delete (the test processes run as PID 1 and ignore SIGTERM).
pub(crate) fn real_node_pod(
    ns: &str,
    name: &str,
    image: &str,
    labels: &str,
    containers: &str,
) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}
spec:
  nodeSelector: {{vkube.dev/node-type: real}}
  tolerations: [{{key: vkube.dev/real-node, operator: Exists, effect: NoSchedule}}]
  terminationGracePeriodSeconds: 1
  containers:
{containers}"#,
        containers = containers.replace("IMAGE", image)
    )
}

pub(crate) fn apply(node: &RealNode, yaml: &str) {
    let out = common::kubectl(&node.kubeconfig, &["apply", "-f", "-"], Some(yaml));
    assert!(
        out.status.success(),
        "kubectl apply failed: {}\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits for the pod to be Running and returns it; on timeout, shows what the kubelet said.
pub(crate) async fn running(node: &RealNode, pods: &Api<Pod>, name: &str) -> Pod {
    let wait = await_condition(pods.clone(), name, conditions::is_pod_running());
    match tokio::time::timeout(Duration::from_secs(90), wait).await {
        Ok(Ok(Some(pod))) => pod,
        other => {
            let ns = pods.namespace().unwrap_or("default").to_string();
            let describe = common::kubectl(
                &node.kubeconfig,
                &["describe", "pod", "-n", &ns, name],
                None,
            );
            panic!(
                "pod {ns}/{name} not Running within 90 s ({other:?}):\n{}",
                String::from_utf8_lossy(&describe.stdout)
            )
        }
    }
}

/// `kubectl exec` in a pod; returns (exit code, stdout, stderr).
fn exec(
    node: &RealNode,
    ns: &str,
    pod: &str,
    stdin: Option<&str>,
    cmd: &[&str],
) -> (i32, String, String) {
    let mut args = vec!["exec", "-n", ns, pod];
    if stdin.is_some() {
        args.push("-i");
    }
    args.push("--");
    args.extend_from_slice(cmd);
    let out = common::kubectl(&node.kubeconfig, &args, stdin);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_tolerating_the_taint_runs_a_real_container_with_logs_and_exec() {
    let Some(node) =
        real_node("a_pod_tolerating_the_taint_runs_a_real_container_with_logs_and_exec")
    else {
        return;
    };
    let ns = TestNamespace::create(&node, "rn-basic");
    apply(
        &node,
        &real_node_pod(
            &ns.name,
            "hello",
            &node.testbox,
            "app: hello",
            r#"  - name: main
    image: IMAGE
    imagePullPolicy: Never
    command: [sh, -c, 'echo "hello from $(hostname) as uid $(id -u)"; exec sleep 3600']"#,
        ),
    );
    let client = common::host_client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod = running(&node, &pods, "hello").await;

    // On the real node, in a container that containerd runs (kwok pods have no container ID).
    let spec = pod.spec.unwrap();
    assert_eq!(spec.node_name.as_deref(), Some(node.name.as_str()));
    let status = pod.status.unwrap();
    let cs = &status.container_statuses.unwrap()[0];
    let id = cs.container_id.as_deref().unwrap_or_default();
    assert!(id.starts_with("containerd://"), "container ID {id:?}");
    assert!(cs.state.as_ref().unwrap().running.is_some());
    let node_obj = Api::<Node>::all(client).get(&node.name).await.unwrap();
    let internal_ip = node_obj
        .status
        .unwrap()
        .addresses
        .unwrap()
        .into_iter()
        .find(|a| a.type_ == "InternalIP")
        .unwrap()
        .address;
    assert_eq!(status.host_ip.as_deref(), Some(internal_ip.as_str()));
    let pod_ip = status.pod_ip.unwrap_or_default();
    assert!(
        !pod_ip.is_empty() && pod_ip != internal_ip,
        "the pod has an address of its own on the CNI bridge: {pod_ip:?}"
    );

    // Logs: the host API server fetches them from the kubelet.
    let logs = eventually(
        "kubectl logs shows the output",
        Duration::from_secs(20),
        || {
            let out = common::kubectl(&node.kubeconfig, &["logs", "-n", &ns.name, "hello"], None);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            async move { text.contains("hello from").then_some(text) }
        },
    )
    .await;
    assert_eq!(logs.trim(), "hello from hello as uid 0");

    // Exec: a command in the pod's namespaces, stdin streamed in, the exit code carried back.
    let (code, out, err) = exec(&node, &ns.name, "hello", None, &["hostname"]);
    assert_eq!((code, out.trim()), (0, "hello"), "stderr: {err}");
    let input = "through the host API server\nand the kubelet\n";
    let (code, out, err) = exec(&node, &ns.name, "hello", Some(input), &["cat"]);
    assert_eq!((code, out.as_str()), (0, input), "stderr: {err}");
    let (code, _, _) = exec(&node, &ns.name, "hello", None, &["sh", "-c", "exit 7"]);
    assert_eq!(code, 7, "the container's exit code reaches kubectl");
    let (code, out, _) = exec(&node, &ns.name, "hello", None, &["cat", "/proc/1/cmdline"]);
    assert_eq!(
        (code, out.replace('\0', " ").trim()),
        (0, "sleep 3600"),
        "PID 1 of the container is its own process"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_taint_keeps_other_pods_off_the_real_node() {
    let Some(node) = real_node("the_taint_keeps_other_pods_off_the_real_node") else {
        return;
    };
    let ns = TestNamespace::create(&node, "rn-taint");
    let no_toleration = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: wants-real, namespace: {ns}}}
spec:
  nodeSelector: {{vkube.dev/node-type: real}}
  containers: [{{name: main, image: {image}, imagePullPolicy: Never, command: [sleep, "3600"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: anywhere, namespace: {ns}}}
spec:
  containers: [{{name: main, image: {image}, imagePullPolicy: Never, command: [sleep, "3600"]}}]
"#,
        ns = ns.name,
        image = node.testbox
    );
    apply(&node, &no_toleration);
    let pods: Api<Pod> = Api::namespaced(common::host_client().await, &ns.name);

    // Selecting the real node without tolerating its taint: unschedulable, because of the taint.
    let message = eventually(
        "the scheduler reports the untolerated taint",
        Duration::from_secs(30),
        || async {
            let pod = pods.get("wants-real").await.ok()?;
            let cond = pod
                .status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "PodScheduled")?;
            (cond.status == "False" && cond.reason.as_deref() == Some("Unschedulable"))
                .then(|| cond.message.unwrap_or_default())
        },
    )
    .await;
    assert!(
        message.contains("1 node(s) had untolerated taint"),
        "{message}"
    );
    // That one node is the real node, with exactly our taint; the kwok nodes have none.
    for n in Api::<Node>::all(pods.clone().into_client())
        .list(&Default::default())
        .await
        .unwrap()
    {
        let name = n.metadata.name.unwrap_or_default();
        let taints: Vec<String> = (n.spec.and_then(|s| s.taints).unwrap_or_default())
            .into_iter()
            .map(|t| format!("{}={}:{}", t.key, t.value.unwrap_or_default(), t.effect))
            .collect();
        if name == node.name {
            assert_eq!(taints, ["vkube.dev/real-node=true:NoSchedule"], "{name}");
        } else {
            assert!(taints.is_empty(), "{name} is tainted: {taints:?}");
        }
    }
    // An ordinary pod goes to a kwok node, never to the real one.
    let node_name = eventually(
        "the plain pod is scheduled",
        Duration::from_secs(30),
        || {
            let pods = pods.clone();
            async move { pods.get("anywhere").await.ok()?.spec?.node_name }
        },
    )
    .await;
    assert!(
        node_name.starts_with("kwok-node-"),
        "scheduled to {node_name}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_ip_service_routes_to_pods_and_its_dns_name_resolves() {
    let Some(node) = real_node("a_cluster_ip_service_routes_to_pods_and_its_dns_name_resolves")
    else {
        return;
    };
    let ns = TestNamespace::create(&node, "rn-svc");
    let web = real_node_pod(
        &ns.name,
        "web",
        &node.testbox,
        "app: web",
        r#"  - name: http
    image: IMAGE
    imagePullPolicy: Never
    command: [sh, -c, 'mkdir -p /www && echo "hello from $(hostname)" > /www/index.html && exec httpd -f -p 8080 -h /www']
  - name: echo
    image: IMAGE
    imagePullPolicy: Never
    command: [nc, -ll, -p, "7007", -e, cat]"#,
    );
    let client_pod = real_node_pod(
        &ns.name,
        "client",
        &node.testbox,
        "app: client",
        r#"  - name: main
    image: IMAGE
    imagePullPolicy: Never
    command: [sleep, "3600"]"#,
    );
    let service = format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: 8080}}
  - {{name: echo, port: 7, targetPort: 7007}}
"#,
        ns = ns.name
    );
    apply(&node, &format!("{web}\n---\n{client_pod}\n---\n{service}"));
    let client = common::host_client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    running(&node, &pods, "web").await;
    running(&node, &pods, "client").await;
    let cluster_ip = Api::<Service>::namespaced(client, &ns.name)
        .get("web")
        .await
        .unwrap()
        .spec
        .unwrap()
        .cluster_ip
        .unwrap();

    // The Service's DNS name resolves to its ClusterIP (CoreDNS, reached through the kube-dns
    // Service that the pod's resolv.conf names).
    let fqdn = format!("web.{}.svc.cluster.local", ns.name);
    let answer = eventually("cluster DNS answers", Duration::from_secs(30), || {
        let (code, out, _) = exec(&node, &ns.name, "client", None, &["nslookup", &fqdn]);
        async move { (code == 0).then_some(out) }
    })
    .await;
    assert!(
        answer
            .lines()
            .any(|l| l.trim() == format!("Address: {cluster_ip}")),
        "nslookup {fqdn} should answer {cluster_ip}:\n{answer}"
    );

    // HTTP through the ClusterIP, by name (kube-proxy's rules pick it up asynchronously).
    let url = format!("http://{fqdn}");
    let body = eventually("HTTP through the Service", Duration::from_secs(30), || {
        let (code, out, _) = exec(
            &node,
            &ns.name,
            "client",
            None,
            &["timeout", "10", "wget", "-qO-", &url],
        );
        async move { (code == 0).then_some(out) }
    })
    .await;
    assert_eq!(body.trim(), "hello from web");
    // The short name, through the pod's DNS search path, and a TCP echo on the second port.
    let (code, out, err) = exec(
        &node,
        &ns.name,
        "client",
        None,
        &["timeout", "10", "wget", "-qO-", "http://web"],
    );
    assert_eq!((code, out.trim()), (0, "hello from web"), "stderr: {err}");
    let (code, out, err) = exec(
        &node,
        &ns.name,
        "client",
        Some("ping over tcp\n"),
        &["timeout", "10", "nc", &fqdn, "7"],
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "ping over tcp\n"),
        "stderr: {err}"
    );
    // A name outside the cluster is not looked up anywhere (nothing leaves the machine).
    let (code, _, _) = exec(
        &node,
        &ns.name,
        "client",
        None,
        &["nslookup", "example.com"],
    );
    assert_ne!(code, 0, "example.com must not resolve from a test pod");
}

/// How long a pod takes from create to Running on the real node: median of 5, printed for the
/// notes; bounded so a regression (e.g. a pull attempt or a CNI timeout) fails the suite.
#[tokio::test(flavor = "multi_thread")]
async fn pods_start_on_the_real_node_within_seconds() {
    let Some(node) = real_node("pods_start_on_the_real_node_within_seconds") else {
        return;
    };
    let ns = TestNamespace::create(&node, "rn-latency");
    let pods: Api<Pod> = Api::namespaced(common::host_client().await, &ns.name);
    let mut times = Vec::new();
    for i in 0..5 {
        let name = format!("p{i}");
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"app": "latency"}},
            "spec": {
                "nodeSelector": {"vkube.dev/node-type": "real"},
                "tolerations": [{"key": "vkube.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}],
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "main", "image": node.testbox, "imagePullPolicy": "Never",
                    "command": ["sleep", "3600"]
                }]
            }
        }))
        .unwrap();
        let started = Instant::now();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        running(&node, &pods, &name).await;
        times.push(started.elapsed());
        pods.delete(&name, &DeleteParams::default()).await.unwrap();
    }
    let mut sorted = times.clone();
    sorted.sort();
    let median = sorted[2];
    report(&format!(
        "real node: pod created -> Running, median of 5: {} ms (each: {:?} ms)",
        median.as_millis(),
        times.iter().map(|t| t.as_millis()).collect::<Vec<_>>()
    ));
    assert!(
        median < Duration::from_secs(15),
        "median pod start {median:?} on the real node"
    );
}

/// The vkube image (hack/images.sh from hack/image-contents.txt) runs on the real node as its
/// non-root user, with every binary it ships able to start.
#[tokio::test(flavor = "multi_thread")]
async fn the_vkube_image_runs_as_non_root_on_the_real_node() {
    let Some(node) = real_node("the_vkube_image_runs_as_non_root_on_the_real_node") else {
        return;
    };
    let Ok(image) = std::env::var("VKUBE_E2E_VKUBE_IMAGE") else {
        report(
            "SKIPPED the_vkube_image_runs_as_non_root_on_the_real_node: the vkube image was not \
             imported (hack/test.sh does it unless VKUBE_E2E_SKIP_VKUBE_IMAGE=1)",
        );
        return;
    };
    let ns = TestNamespace::create(&node, "rn-image");
    // The kubelet refuses to start a runAsNonRoot container whose image user is root.
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: vkube, namespace: {ns}}}
spec:
  nodeSelector: {{vkube.dev/node-type: real}}
  tolerations: [{{key: vkube.dev/real-node, operator: Exists, effect: NoSchedule}}]
  restartPolicy: Never
  securityContext: {{runAsNonRoot: true}}
  initContainers:
  - {{name: etcd, image: {image}, imagePullPolicy: Never, command: [etcd, --version]}}
  - {{name: apiserver, image: {image}, imagePullPolicy: Never, command: [kube-apiserver, --version]}}
  - {{name: controller-manager, image: {image}, imagePullPolicy: Never, command: [kube-controller-manager, --version]}}
  containers:
  - {{name: vkube, image: {image}, imagePullPolicy: Never, args: [--version]}}
"#,
        ns = ns.name
    );
    apply(&node, &yaml);
    let pods: Api<Pod> = Api::namespaced(common::host_client().await, &ns.name);
    let completed = |pod: Option<&Pod>| {
        let phase = pod.and_then(|p| p.status.as_ref()?.phase.as_deref());
        matches!(phase, Some("Succeeded" | "Failed"))
    };
    let done = await_condition(pods.clone(), "vkube", completed);
    let pod = tokio::time::timeout(Duration::from_secs(90), done)
        .await
        .expect("the vkube image pod completes within 90 s")
        .unwrap()
        .unwrap();
    let logs = |container: &str| {
        common::kubectl_ok(
            &node.kubeconfig,
            &["logs", "-n", &ns.name, "vkube", "-c", container],
        )
    };
    assert_eq!(
        pod.status.as_ref().unwrap().phase.as_deref(),
        Some("Succeeded"),
        "vkube: {}",
        logs("vkube")
    );
    assert!(logs("vkube").starts_with("vkube "), "{}", logs("vkube"));
    assert!(logs("etcd").contains("etcd Version"), "{}", logs("etcd"));
    assert!(logs("apiserver").contains("Kubernetes v1."));
    assert!(logs("controller-manager").contains("Kubernetes v1."));
}

/// A tenant whose proxy the real node's pods can reach: listening on all addresses, its API
/// Service's Endpoints at the node's bridge address (vkube runs as a process here, outside the
/// pod network, as `--advertise-address` is for).
#[tokio::test(flavor = "multi_thread")]
async fn a_virtual_pod_on_the_real_node_uses_the_virtual_api_and_dns_and_serves_logs_and_exec() {
    let test =
        "a_virtual_pod_on_the_real_node_uses_the_virtual_api_and_dns_and_serves_logs_and_exec";
    let Some(node) = real_node(test) else {
        return;
    };
    let node_ip = required("VKUBE_E2E_REAL_NODE_IP");
    // The real node's taint is one the admin lets tenants tolerate (the chart's value).
    let t = common::Tenant::start_with(
        "inpod",
        "0.0.0.0",
        &[
            "--advertise-address",
            &node_ip,
            "--allow-toleration",
            "vkube.dev/real-node:NoSchedule",
        ],
    );
    // Virtual RBAC: the pod's service account may list pods, nothing else.
    t.kubectl_ok(&["create", "serviceaccount", "lister"]);
    t.kubectl_ok(&[
        "create",
        "role",
        "pod-lister",
        "--verb=list",
        "--resource=pods",
    ]);
    t.kubectl_ok(&[
        "create",
        "rolebinding",
        "lister",
        "--role=pod-lister",
        "--serviceaccount=default:lister",
    ]);
    // kubectl's in-cluster config, as any workload's client: KUBERNETES_SERVICE_HOST/PORT, the
    // mounted token and CA (the proxy's certificate must name the Service IP and
    // kubernetes.default.svc). Then vkube's cluster DNS: the virtual Service `web` by its short
    // name (search path of the pod's virtual namespace) and by its full name.
    let script = r#"
export HOME=/tmp
echo "api https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"
kubectl get pods -n default -o name && echo LIST-OK
kubectl get secrets -n default 2>&1 | grep -q Forbidden && echo SECRETS-DENIED
KUBERNETES_SERVICE_HOST=kubernetes.default.svc kubectl get pods -n default -o name >/tmp/k 2>&1 && echo KUBERNETES-DNS-OK || sed 's/^/KUBERNETES-DNS-FAILED /' /tmp/k
for i in $(seq 1 60); do
  if out=$(timeout 3 wget -q -O- http://web/); then echo "WEB-SHORT $out"; break; fi
  sleep 1
done
nslookup web.default.svc.cluster.local | sed 's/^/NSLOOKUP /'
timeout 3 wget -q -O- http://web.default.svc.cluster.local/ | sed 's/^/WEB-FULL /'
echo DNS-DONE
exec sleep 3600
"#;
    let web = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeSelector: {vkube.dev/node-type: real}
      tolerations: [{key: vkube.dev/real-node, operator: Exists, effect: NoSchedule}]
      terminationGracePeriodSeconds: 1
      containers:
      - name: http
        image: IMAGE
        imagePullPolicy: Never
        command: [sh, -c, 'mkdir -p /www && echo "hello from $(hostname)" > /www/index.html && exec httpd -f -p 8080 -h /www']
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
"#
    .replace("IMAGE", &node.testbox);
    let out = common::kubectl(&t.kubeconfig, &["apply", "-f", "-"], Some(&web));
    assert!(out.status.success(), "{out:?}");
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: inpod, namespace: default}}
spec:
  serviceAccountName: lister
  nodeSelector: {{vkube.dev/node-type: real}}
  tolerations: [{{key: vkube.dev/real-node, operator: Exists, effect: NoSchedule}}]
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    imagePullPolicy: Never
    command: [sh, -c, {script:?}]
"#,
        image = node.testbox,
    );
    let out = common::kubectl(&t.kubeconfig, &["apply", "-f", "-"], Some(&yaml));
    assert!(out.status.success(), "{out:?}");
    t.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/inpod",
        "--timeout=90s",
    ]);

    // kubectl logs through vkube, from the real kubelet.
    let logs = eventually(
        "the pod's API and DNS calls in its logs",
        Duration::from_secs(120),
        || {
            let out = t.kubectl(&["logs", "inpod"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            async move { text.contains("DNS-DONE").then_some(text) }
        },
    )
    .await;
    assert!(logs.contains("SECRETS-DENIED"), "{logs}");
    assert!(
        logs.contains("WEB-SHORT hello from web-"),
        "{logs}\n{}",
        t.log_tail()
    );
    assert!(logs.contains("WEB-FULL hello from web-"), "{logs}");
    let web_ip = common::kubectl_ok(
        &node.kubeconfig,
        &[
            "get",
            "service",
            &format!("web-x-default-x-{}", t.name),
            "-n",
            &t.namespace,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    );
    assert!(
        logs.lines()
            .any(|l| l.starts_with("NSLOOKUP") && l.contains(&web_ip)),
        "nslookup did not answer the host ClusterIP {web_ip}: {logs}"
    );
    assert!(logs.contains("LIST-OK"), "{logs}\n{}", t.log_tail());
    assert!(logs.contains("pod/inpod"), "{logs}");

    // The API Service is the one host Service the pod was pointed at.
    let host_svc = common::kubectl_ok(
        &node.kubeconfig,
        &[
            "get",
            "service",
            &format!("vkube-{}", t.name),
            "-n",
            &t.namespace,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    );
    assert!(
        logs.contains(&format!("api https://{host_svc}:443")),
        "{logs}"
    );
    assert!(logs.contains("KUBERNETES-DNS-OK"), "{logs}");
    // The virtual `kubernetes` Service shows that same address.
    eventually(
        "the virtual kubernetes Service shows the API Service's IP",
        Duration::from_secs(30),
        || {
            let ip = t.kubectl_ok(&[
                "get",
                "service",
                "kubernetes",
                "-o",
                "jsonpath={.spec.clusterIP}",
            ]);
            let want = host_svc.clone();
            async move { (ip == want).then_some(()) }
        },
    )
    .await;

    // exec into a real container, with stdin and its end (half-close) over both protocols.
    for env in [
        &[][..],
        &[("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")][..],
    ] {
        let mut cmd = std::process::Command::new(common::kubectl_bin());
        cmd.arg("--kubeconfig")
            .arg(&t.kubeconfig)
            .args([
                "exec",
                "-i",
                "inpod",
                "--",
                "sh",
                "-c",
                "cat; echo eof-seen",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(b"hello from stdin\n").unwrap();
        }
        let out = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
                .await
                .unwrap()
        })
        .await
        .expect("kubectl exec -i ends once stdin ends");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{env:?}: {out:?}");
        assert_eq!(stdout, "hello from stdin\neof-seen\n", "{env:?}");
    }
    let out = t.kubectl(&["exec", "inpod", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
}
