//! The virtual API server as a confused deputy (server-side request forgery). A tenant is
//! cluster-admin of its virtual cluster and can make the API server itself connect to an address
//! of its choosing: `services/NAME/proxy` (hand-written Endpoints backed by a pod status the
//! tenant writes), `pods/NAME/proxy`, `nodes/NAME/proxy` (a Node it creates), URL- and
//! Service-based admission webhooks, CRD conversion webhooks and APIServices. The API server
//! runs beside `vkube serve`, outside every NetworkPolicy of the tenant, so each of these would
//! reach the host's loopback and private addresses (the host API server, kubelets, node ports,
//! other tenants' control planes, cloud metadata).
//!
//! Victims are listeners of the test on the host's loopback and on a private address the test
//! puts on a bridge device of its own (the proxy subresources refuse loopback themselves, as
//! kube-apiserver does, so a private address is what they would reach; the real node of hack/
//! does the same for its node address). Each test asserts the egress guard's refusal as the
//! tenant sees it and that no victim was ever connected to; and that the tenant's own pods are
//! still reached (their kwok pod IPs are put on the bridge, with a listener behind them).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use crate::common::{Tenant, eventually};
use crate::syncer::{LONG, apply};

/// A listener that records every connection and answers HTTP with `reached LABEL`.
struct Listener {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Listener {
    /// Listens at `ip:port` (port 0: any).
    fn start(ip: IpAddr, port: u16, label: &str) -> Listener {
        let listener = TcpListener::bind((ip, port)).expect("the listener binds");
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped, label) = (connections.clone(), stop.clone(), label.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let label = label.clone();
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 1024];
                    let n = conn.read(&mut buf).unwrap_or(0);
                    if buf[..n].starts_with(b"GET ") {
                        let body = format!("reached {label}");
                        let _ = write!(
                            conn,
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                });
            }
        });
        Listener {
            addr,
            connections,
            stop,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag (not counted: the flag is set first).
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// A bridge device of the test's own holding /32 addresses, so that private addresses are
/// listeners on this machine and nothing leaves it. Removed with everything on it when dropped.
struct LocalAddresses {
    device: String,
}

fn ip_command(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2's `ip` runs (the e2e tests run as root, as hack/real-node.sh does)");
    assert!(
        out.status.success(),
        "ip {args:?}: {} (these tests put private addresses on a bridge of their own: they need root)",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl LocalAddresses {
    fn new() -> LocalAddresses {
        let device = crate::common::unique("vkegr").replace('-', "");
        ip_command(&["link", "add", &device, "type", "bridge"]);
        ip_command(&["link", "set", &device, "up"]);
        LocalAddresses { device }
    }

    fn add(&self, ip: IpAddr) {
        ip_command(&["addr", "add", &format!("{ip}/32"), "dev", &self.device]);
    }

    /// A fresh address in 10.87.0.0/16, clear of the harness's pods (10.85, kwok's 10.244), node
    /// (10.86) and services (10.96).
    fn private_victim(&self) -> IpAddr {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ std::process::id();
        let ip: IpAddr = format!("10.87.{}.{}", 1 + n % 250, 1 + (n >> 8) % 250)
            .parse()
            .unwrap();
        self.add(ip);
        ip
    }
}

impl Drop for LocalAddresses {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.device])
            .output();
    }
}

/// `kubectl get --raw PATH`: (succeeded, stdout and stderr).
fn raw_get(t: &Tenant, path: &str) -> (bool, String) {
    let out = t.kubectl(&["get", "--raw", path]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The refusal as the tenant sees it through kube-apiserver's error: the guard's status line.
fn refused(what: &str, text: &str, destination: &str) {
    assert!(
        text.contains(&format!("vkube refused {destination}")),
        "{what}: expected the egress guard's refusal of {destination}, got: {text}"
    );
}

/// The IP the host gave the tenant's pod (copied up by the syncer).
async fn pod_ip(t: &Tenant, ns: &str, name: &str) -> IpAddr {
    let pods: Api<Pod> = Api::namespaced(t.client().await, ns);
    eventually(&format!("pod {ns}/{name} has an IP"), LONG, || async {
        pods.get(name)
            .await
            .ok()?
            .status?
            .pod_ip?
            .parse::<IpAddr>()
            .ok()
    })
    .await
}

/// A refused log line is written per refusal, with a running count.
fn assert_logged(t: &Tenant, destination: &str) {
    let log = std::fs::read_to_string(&t.log).unwrap_or_default();
    assert!(
        log.lines().any(|l| l.contains("API server egress refused")
            && l.contains(&format!("destination={destination}"))
            && l.contains("refused_total=")),
        "no refusal of {destination} in the log:\n{}",
        t.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_subresources_reach_only_the_tenants_own_pods() {
    let t = Tenant::start("egress-proxy");
    let net = LocalAddresses::new();
    let victim_ip = net.private_victim();
    let victim = Listener::start(victim_ip, 0, "victim");
    let kubelet = Listener::start(victim_ip, 0, "kubelet");
    let (vport, kport) = (victim.addr.port(), kubelet.addr.port());
    let ns = "egress";
    let node = format!("evil-{}", t.name);
    t.create_namespace(ns);

    // A pod the host never runs (privileged: refused by pod security), so its status is the
    // tenant's to write: it claims the victim's address. Endpoints backed by it pass the API
    // server's own check that a proxied endpoint is a pod of the namespace.
    apply(
        &t,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: decoy, namespace: {ns}}}
spec:
  containers: [{{name: main, image: registry.local/x:1, ports: [{{containerPort: {vport}}}], securityContext: {{privileged: true}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: victim, namespace: {ns}}}
spec:
  ports: [{{name: http, port: {vport}}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: victim, namespace: {ns}}}
subsets:
- addresses: [{{ip: "{victim_ip}", targetRef: {{kind: Pod, namespace: {ns}, name: decoy}}}}]
  ports: [{{name: http, port: {vport}}}]
---
apiVersion: v1
kind: Node
metadata: {{name: {node}}}
status:
  addresses: [{{type: InternalIP, address: "{victim_ip}"}}]
  daemonEndpoints: {{kubeletEndpoint: {{Port: {kport}}}}}
"#,
        ),
    );
    t.kubectl_ok(&[
        "patch",
        "pod",
        "decoy",
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(r#"{{"status":{{"podIP":"{victim_ip}","podIPs":[{{"ip":"{victim_ip}"}}]}}}}"#),
    ]);

    let attempts = [
        (
            "services/proxy to hand-written Endpoints",
            format!("/api/v1/namespaces/{ns}/services/victim:{vport}/proxy/"),
            format!("{victim_ip}:{vport}"),
        ),
        (
            "pods/proxy to a pod's forged status IP",
            format!("/api/v1/namespaces/{ns}/pods/decoy:{vport}/proxy/"),
            format!("{victim_ip}:{vport}"),
        ),
        (
            "nodes/proxy to a tenant-made Node's kubelet",
            format!("/api/v1/nodes/{node}/proxy/pods"),
            format!("{victim_ip}:{kport}"),
        ),
        (
            "nodes/proxy to another port of that Node",
            format!("/api/v1/nodes/{node}:{vport}/proxy/"),
            format!("{victim_ip}:{vport}"),
        ),
    ];
    for (what, path, destination) in &attempts {
        let (ok, text) = raw_get(&t, path);
        assert!(!ok, "{what} succeeded: {text}");
        refused(what, &text, destination);
    }
    assert_logged(&t, &format!("{victim_ip}:{kport}"));

    // The tenant's own pod, through its Service and directly: reached. kwok gives it an
    // address and no process; the test's listener stands behind that address.
    apply(
        &t,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: {ns}, labels: {{app: web}}}}
spec:
  containers: [{{name: main, image: registry.local/web:1, ports: [{{containerPort: 8080}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 8080}}]
"#
        ),
    );
    let web_ip = pod_ip(&t, ns, "web").await;
    net.add(web_ip);
    let web = Listener::start(web_ip, 8080, "web");
    for path in [
        format!("/api/v1/namespaces/{ns}/pods/web:8080/proxy/"),
        format!("/api/v1/namespaces/{ns}/services/web:8080/proxy/"),
    ] {
        // The Service's endpoints appear once the pod is Ready in the virtual cluster.
        let text = eventually(
            &format!("{path} reaches the tenant's pod"),
            LONG,
            || async {
                let (ok, text) = raw_get(&t, &path);
                ok.then_some(text)
            },
        )
        .await;
        assert_eq!(text.trim(), "reached web");
    }
    assert!(web.connections() >= 2);

    assert_eq!(
        victim.connections(),
        0,
        "the private victim was connected to"
    );
    assert_eq!(
        kubelet.connections(),
        0,
        "the fake kubelet was connected to"
    );
}

/// A ValidatingWebhookConfiguration calling `client_config` (YAML flow mapping) for ConfigMaps
/// labelled `egress-test: LABEL` in namespace `ns`.
fn webhook_yaml(name: &str, ns: &str, label: &str, client_config: &str, policy: &str) -> String {
    format!(
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {{name: {name}}}
webhooks:
- name: {label}.egress.vkube.dev
  clientConfig: {client_config}
  rules: [{{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [configmaps]}}]
  namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {ns}}}}}
  objectSelector: {{matchLabels: {{egress-test: {label}}}}}
  failurePolicy: {policy}
  sideEffects: None
  admissionReviewVersions: [v1]
  timeoutSeconds: 5
"#
    )
}

/// Creates ConfigMaps labelled `egress-test: LABEL` until the webhook is in force (the API
/// server picks up a new configuration within a second or so) and returns its refusal.
async fn webhook_refusal(t: &Tenant, ns: &str, label: &str) -> String {
    eventually(&format!("webhook {label} is called"), LONG, || async {
        let out = crate::common::kubectl(
            &t.kubeconfig,
            &["create", "-f", "-"],
            Some(&format!(
                "{{apiVersion: v1, kind: ConfigMap, metadata: {{generateName: {label}-, namespace: {ns}, labels: {{egress-test: {label}}}}}}}"
            )),
        );
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        (!out.status.success() && text.contains("webhook")).then_some(text)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_and_aggregated_apis_reach_only_the_tenants_own_pods() {
    let t = Tenant::start("egress-hooks");
    let net = LocalAddresses::new();
    let private_ip = net.private_victim();
    let loopback = Listener::start("127.0.0.1".parse().unwrap(), 0, "loopback");
    let private = Listener::start(private_ip, 0, "private");
    let (lport, pport) = (loopback.addr.port(), private.addr.port());
    let ns = "hooked";
    t.create_namespace(ns);

    // Services the tenant points webhooks and APIServices at: ExternalName, which the API
    // server's service resolver turns into https://NAME:PORT (a name, or an IPv4 address
    // written as one).
    apply(
        &t,
        &format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: loopback-name, namespace: {ns}}}
spec: {{type: ExternalName, externalName: localhost}}
---
apiVersion: v1
kind: Service
metadata: {{name: private-name, namespace: {ns}}}
spec: {{type: ExternalName, externalName: "{private_ip}"}}
"#
        ),
    );
    let hooks = [
        (
            "url-loopback",
            format!("{{url: \"https://127.0.0.1:{lport}/\"}}"),
            format!("127.0.0.1:{lport}"),
        ),
        (
            "url-private",
            format!("{{url: \"https://{private_ip}:{pport}/\"}}"),
            format!("{private_ip}:{pport}"),
        ),
        (
            "svc-loopback",
            format!("{{service: {{namespace: {ns}, name: loopback-name, port: {lport}}}}}"),
            format!("localhost:{lport}"),
        ),
        (
            "svc-private",
            format!("{{service: {{namespace: {ns}, name: private-name, port: {pport}}}}}"),
            format!("{private_ip}:{pport}"),
        ),
    ];
    for (label, client_config, _) in &hooks {
        apply(
            &t,
            &webhook_yaml(&format!("egress-{label}"), ns, label, client_config, "Fail"),
        );
    }
    for (label, _, destination) in &hooks {
        let text = webhook_refusal(&t, ns, label).await;
        refused(&format!("webhook {label}"), &text, destination);
    }
    assert_logged(&t, &format!("127.0.0.1:{lport}"));

    // A CRD conversion webhook (called by the API extensions server when a version other than
    // the stored one is read).
    apply(
        &t,
        &format!(
            r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: widgets.egress.vkube.dev}}
spec:
  group: egress.vkube.dev
  names: {{kind: Widget, plural: widgets, singular: widget}}
  scope: Namespaced
  versions:
  - {{name: v1, served: true, storage: true, schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}}}
  - {{name: v2, served: true, storage: false, schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}}}
  conversion:
    strategy: Webhook
    webhook:
      conversionReviewVersions: [v1]
      clientConfig: {{url: "https://{private_ip}:{pport}/convert"}}
"#
        ),
    );
    let text = eventually("the conversion webhook is called", LONG, || async {
        let _ = crate::common::kubectl(
            &t.kubeconfig,
            &["apply", "-f", "-"],
            Some(&format!(
                "{{apiVersion: egress.vkube.dev/v1, kind: Widget, metadata: {{name: w, namespace: {ns}}}}}"
            )),
        );
        let (ok, text) = raw_get(
            &t,
            &format!("/apis/egress.vkube.dev/v2/namespaces/{ns}/widgets/w"),
        );
        (!ok && text.contains("conversion webhook")).then_some(text)
    })
    .await;
    refused(
        "conversion webhook",
        &text,
        &format!("{private_ip}:{pport}"),
    );

    // APIServices: the aggregator probes them on its own (no tenant request needed) and
    // proxies every request for their group.
    for (name, service, port, destination) in [
        (
            "v1.loopback.egress.vkube.dev",
            "loopback-name",
            lport,
            format!("localhost:{lport}"),
        ),
        (
            "v1.private.egress.vkube.dev",
            "private-name",
            pport,
            format!("{private_ip}:{pport}"),
        ),
    ] {
        let group = name.trim_start_matches("v1.");
        apply(
            &t,
            &format!(
                r#"
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {{name: {name}}}
spec:
  group: {group}
  version: v1
  service: {{namespace: {ns}, name: {service}, port: {port}}}
  insecureSkipTLSVerify: true
  groupPriorityMinimum: 1000
  versionPriority: 15
"#
            ),
        );
        let message = eventually(&format!("APIService {name} is judged"), LONG, || async {
            let out = t.kubectl(&[
                "get",
                "apiservice",
                name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Available\")].message}",
            ]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("vkube").then_some(text)
        })
        .await;
        refused(&format!("APIService {name}"), &message, &destination);
        let (ok, text) = raw_get(&t, &format!("/apis/{group}/v1"));
        assert!(!ok, "a request for {group} was answered: {text}");
    }

    // A webhook served by the tenant's own pod: its address is let through (kwok runs no
    // process; the test's listener stands behind the pod's address, and TLS with it fails,
    // which the Ignore policy lets pass).
    apply(
        &t,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: hook, namespace: {ns}}}
spec:
  containers: [{{name: main, image: registry.local/hook:1, ports: [{{containerPort: 8443}}]}}]
"#
        ),
    );
    let hook_ip = pod_ip(&t, ns, "hook").await;
    net.add(hook_ip);
    let own = Listener::start(hook_ip, 8443, "hook");
    apply(
        &t,
        &webhook_yaml(
            "egress-own",
            ns,
            "own",
            &format!("{{url: \"https://{hook_ip}:8443/\"}}"),
            "Ignore",
        ),
    );
    let deadline = Instant::now() + LONG;
    while own.connections() == 0 {
        assert!(
            Instant::now() < deadline,
            "the tenant's own webhook pod was never called:\n{}",
            t.log_tail()
        );
        let _ = crate::common::kubectl(
            &t.kubeconfig,
            &["create", "-f", "-"],
            Some(&format!(
                "{{apiVersion: v1, kind: ConfigMap, metadata: {{generateName: own-, namespace: {ns}, labels: {{egress-test: own}}}}}}"
            )),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    assert_eq!(
        loopback.connections(),
        0,
        "the loopback victim was connected to"
    );
    assert_eq!(
        private.connections(),
        0,
        "the private victim was connected to"
    );
}
