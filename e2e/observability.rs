//! Seeing inside, against the real components: each admin endpoint is scraped and its numbers
//! must move with real work (a burst of pods through the syncer, requests and a watch through
//! the proxy), `vkube serve`'s readiness must wait for the syncer, the manager's `/healthz` must
//! fail while its controller is stuck, and no scrape may show a tenant's names.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::{self, Tenant, free_port, unique};

/// `GET path` on a plain HTTP admin listener: (status code, body).
pub(crate) fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

pub(crate) fn scrape(port: u16) -> String {
    match get(port, "/metrics") {
        Some((200, body)) => body,
        other => panic!("scraping :{port}/metrics: {other:?}"),
    }
}

/// The value of one sample (`name{labels}` exactly as exposed, or a bare name); 0 if absent.
pub(crate) fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            (s == series).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        match f() {
            None => return,
            Some(why) => last = Some(why),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("timed out after {timeout:?}: {what}; last: {last:?}");
}

fn pods_yaml(ns: &str, prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {prefix}-{i}, namespace: {ns}}}\nspec:\n  containers: [{{name: app, image: registry.example/app:1}}]\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

#[test]
fn serve_metrics_move_with_real_work_and_name_no_tenant_object() {
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let t = Tenant::start_with("obs", "127.0.0.1", &["--metrics-bind-address", &bind]);
    wait_for(
        "/readyz on the metrics port",
        Duration::from_secs(60),
        || match get(port, "/readyz") {
            Some((200, _)) => None,
            other => Some(format!("{other:?}")),
        },
    );
    assert_eq!(get(port, "/healthz").map(|r| r.0), Some(200));
    // The proxy's port serves the tenant's API, not vkube's metrics.
    let before = scrape(port);
    assert!(sample(&before, "process_resident_memory_bytes") > 0.0);
    assert!(sample(&before, "process_cpu_seconds_total") > 0.0);
    assert_eq!(sample(&before, "vkube_syncer_caches_synced"), 1.0);

    // Names a tenant chooses: none of them may appear in a scrape.
    let ns = unique("acme-payroll");
    let prefix = "secret-merger-plan";
    t.create_namespace(&ns);
    let pods = 12;
    let out = common::kubectl(
        &t.kubeconfig,
        &["apply", "-f", "-"],
        Some(&pods_yaml(&ns, prefix, pods)),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let created = "vkube_syncer_objects_synced_total{kind=\"Pod\",op=\"created\"}";
    let to_host = "vkube_syncer_create_to_host_seconds_count{kind=\"Pod\"}";
    let reconciles = "vkube_syncer_reconcile_duration_seconds_count{controller=\"Pod\"}";
    let status_up = "vkube_syncer_status_up_seconds_count{kind=\"Pod\"}";
    wait_for(
        "the syncer's counters move with the burst",
        Duration::from_secs(90),
        || {
            let now = scrape(port);
            let moved = |s: &str, by: f64| sample(&now, s) >= sample(&before, s) + by;
            if moved(created, pods as f64)
                && moved(to_host, pods as f64)
                && moved(reconciles, pods as f64)
                && moved(status_up, 1.0)
            {
                None
            } else {
                Some(
                    [created, to_host, reconciles, status_up]
                        .map(|s| format!("{s}={}", sample(&now, s)))
                        .join(" "),
                )
            }
        },
    );

    let list = "vkube_proxy_requests_total{verb=\"list\",resource=\"pods\",code=\"200\"}";
    let list_time = "vkube_proxy_request_duration_seconds_count{verb=\"list\",resource=\"pods\"}";
    let b = scrape(port);
    t.kubectl_ok(&["get", "pods", "-n", &ns]);
    let a = scrape(port);
    assert!(
        sample(&a, list) > sample(&b, list),
        "{list}: {}",
        sample(&a, list)
    );
    assert!(sample(&a, list_time) > sample(&b, list_time));

    // A watch is open while kubectl streams it, and closed after.
    let watches = "vkube_proxy_open_watches";
    let open_before = sample(&a, watches);
    let mut watch = Command::new(common::kubectl_bin())
        .arg("--kubeconfig")
        .arg(&t.kubeconfig)
        .args(["get", "pods", "-w", "-n", &ns])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("an open watch", Duration::from_secs(30), || {
        let v = sample(&scrape(port), watches);
        (v < open_before + 1.0).then(|| format!("{watches}={v}"))
    });
    let _ = watch.kill();
    let _ = watch.wait();
    wait_for("the watch closed", Duration::from_secs(30), || {
        let v = sample(&scrape(port), watches);
        (v > open_before).then(|| format!("{watches}={v}"))
    });

    let last = scrape(port);
    for name in [ns.as_str(), prefix, t.name.as_str()] {
        assert!(!last.contains(name), "the scrape shows {name:?}:\n{last}");
    }
}

/// Readiness means the syncer caught up: with one kind its host credentials cannot list, the
/// API answers but `/readyz` (proxy and metrics port) says why it is not ready, until the right
/// is back.
#[test]
fn serve_is_ready_only_once_the_syncer_listed_every_kind() {
    let port = free_port();
    let mut t = Tenant::new("obsready");
    t.extra_args = vec!["--metrics-bind-address".into(), format!("127.0.0.1:{port}")];
    let admin = common::env().host_kubeconfig;
    // Rule 5 of manifests/serve-rbac.yaml: poddisruptionbudgets.
    let rule = common::kubectl_ok(
        &admin,
        &[
            "get",
            "role",
            "vkube",
            "-n",
            &t.namespace,
            "-o",
            "jsonpath={.rules[5].resources[0]}",
        ],
    );
    assert_eq!(rule, "poddisruptionbudgets");
    common::kubectl_ok(
        &admin,
        &[
            "patch",
            "role",
            "vkube",
            "-n",
            &t.namespace,
            "--type",
            "json",
            "-p",
            r#"[{"op":"remove","path":"/rules/5"}]"#,
        ],
    );
    t.spawn();
    t.wait_ready();
    // The API answers...
    t.kubectl_ok(&["get", "namespaces"]);
    // ...but neither readiness does, for the whole time the list is refused.
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        let metrics = get(port, "/readyz");
        assert!(
            matches!(&metrics, Some((503, body)) if body.contains("initial sync")),
            "metrics /readyz: {metrics:?}"
        );
        let proxy = t.kubectl(&["get", "--raw", "/readyz"]);
        assert!(
            !proxy.status.success(),
            "the proxy's /readyz passed before the syncer caught up"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/serve-rbac.yaml"),
    )
    .unwrap()
    .replace("NAMESPACE", &t.namespace);
    let out = common::kubectl(&admin, &["apply", "-f", "-"], Some(&manifest));
    assert!(out.status.success());
    wait_for(
        "ready once the right is back",
        Duration::from_secs(120),
        || match get(port, "/readyz") {
            Some((200, _)) => None,
            other => Some(format!("{other:?}")),
        },
    );
    t.kubectl_ok(&["get", "--raw", "/readyz"]);
}

/// A TCP relay to the host API server that can freeze: bytes already read are held, nothing is
/// answered, connections stay open (a half-open connection or a wedged API server, as the
/// manager sees it).
struct Relay {
    port: u16,
    frozen: Arc<AtomicBool>,
}

impl Relay {
    fn start(upstream: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(down) = conn else { continue };
                let Ok(up) = TcpStream::connect(&upstream) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    let frozen = f.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            while frozen.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(50));
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Relay { port, frozen }
    }
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn manager_healthz_fails_while_its_controller_is_stuck() {
    let _serial = crate::attack_manager::SERIAL
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let policy = crate::attack_manager::install_chart(dir.path());
    let admin = common::env().host_kubeconfig;
    let token = common::kubectl_ok(
        &admin,
        &[
            "-n",
            "vkube-system",
            "create",
            "token",
            "vkube-manager",
            "--duration",
            "1h",
        ],
    );
    let kubeconfig = crate::attack_manager::token_kubeconfig(token.trim(), None);
    let server = kube::config::Kubeconfig::read_from(&admin)
        .unwrap()
        .clusters[0]
        .cluster
        .clone()
        .unwrap()
        .server
        .unwrap();
    let upstream = server.trim_start_matches("https://").to_string();
    let relay = Relay::start(upstream.clone());
    let kubeconfig = kubeconfig.replace(&server, &format!("https://127.0.0.1:{}", relay.port));
    let path = dir.path().join("manager.kubeconfig");
    std::fs::write(&path, kubeconfig).unwrap();
    let (health, metrics) = (free_port(), free_port());
    let log = dir.path().join("manager.log");
    let file = std::fs::File::create(&log).unwrap();
    let _manager = Process(
        Command::new(common::vkube_bin())
            .args(["manager", "--policy"])
            .arg(&policy)
            .arg("--kubeconfig")
            .arg(&path)
            .args(["--lease-namespace", "vkube-system", "--no-leader-election"])
            .args(["--health-bind-address", &format!("127.0.0.1:{health}")])
            .args(["--metrics-bind-address", &format!("127.0.0.1:{metrics}")])
            .args(["--stuck-after-seconds", "8"])
            .env("RUST_LOG", "info")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap(),
    );
    let log_tail = || std::fs::read_to_string(&log).unwrap_or_default();
    let status = |path: &str| get(health, path);
    wait_for(
        "the manager ready and healthy",
        Duration::from_secs(60),
        || match (status("/readyz"), status("/healthz")) {
            (Some((200, _)), Some((200, _))) => None,
            other => Some(format!("{other:?}\n{}", log_tail())),
        },
    );
    let m = scrape(metrics);
    assert_eq!(sample(&m, "vkube_manager_leader"), 1.0);
    assert!(m.contains("vkube_manager_virtual_clusters{phase=\"Ready\"}"));
    // Healthy stays healthy while idle: well past the limit with nothing to do.
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(status("/healthz").map(|r| r.0), Some(200), "{}", log_tail());

    relay.frozen.store(true, Ordering::SeqCst);
    let frozen_at = Instant::now();
    wait_for(
        "/healthz failing while the host API is silent",
        Duration::from_secs(60),
        || match status("/healthz") {
            Some((503, _)) => None,
            other => Some(format!("{other:?}")),
        },
    );
    let (_, why) = status("/healthz").unwrap();
    eprintln!(
        "manager /healthz failed {:?} after the freeze: {}",
        frozen_at.elapsed(),
        why.trim()
    );
    assert_eq!(status("/readyz").map(|r| r.0), Some(503));

    relay.frozen.store(false, Ordering::SeqCst);
    wait_for(
        "/healthz passing again",
        Duration::from_secs(90),
        || match status("/healthz") {
            Some((200, _)) => None,
            other => Some(format!("{other:?}")),
        },
    );
}

/// The chart as `helm template` renders it offline (no --kube-version): the manager's
/// credential-less metrics port is reachable only from the admin's namespaces, the probes'
/// port from anywhere, and the optional objects appear only when enabled.
#[test]
fn chart_keeps_the_manager_metrics_port_to_the_admins_namespaces() {
    let render = common::helm_template;
    let find = |docs: &[serde_json::Value], kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .cloned()
    };
    let ports_of = |rule: &serde_json::Value| -> Vec<String> {
        rule["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["port"].to_string())
            .collect()
    };

    let docs = render(&[]);
    let policy =
        find(&docs, "NetworkPolicy", "vkube-manager").expect("the manager's NetworkPolicy");
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    // Only the probes' port, from anywhere; nothing reaches the metrics port.
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(ports_of(&rules[0]), vec!["\"health\""]);
    assert!(find(&docs, "ServiceMonitor", "vkube-manager").is_none());
    assert!(find(&docs, "ConfigMap", "vkube-dashboard").is_none());
    let manager = find(&docs, "Deployment", "vkube-manager").unwrap();
    let container = &manager["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");

    let docs = render(&[
        "metrics.allowedNamespaces={monitoring}",
        "metrics.serviceMonitor.enabled=true",
        "metrics.dashboard.enabled=true",
    ]);
    let policy = find(&docs, "NetworkPolicy", "vkube-manager").unwrap();
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    let metrics_rule = rules
        .iter()
        .find(|r| ports_of(r) == vec!["\"metrics\""])
        .expect("a rule for the metrics port");
    assert_eq!(
        metrics_rule["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"],
        serde_json::json!(["monitoring"])
    );
    assert!(find(&docs, "ServiceMonitor", "vkube-manager").is_some());
    let dashboard = find(&docs, "ConfigMap", "vkube-dashboard").unwrap();
    let json: serde_json::Value =
        serde_json::from_str(dashboard["data"]["vkube.json"].as_str().unwrap()).unwrap();
    assert!(json["panels"].as_array().is_some_and(|p| p.len() >= 10));
}

/// One DNS query over UDP: the response code and how many answers came.
fn dns_query(
    server: std::net::SocketAddr,
    name: &str,
    qtype: hickory_proto::rr::RecordType,
) -> Option<(hickory_proto::op::ResponseCode, usize)> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::Name;
    let mut q = Message::query();
    q.metadata.id = 42;
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).ok()?, qtype));
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    socket.send_to(&q.to_vec().ok()?, server).ok()?;
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).ok()?;
    let answer = Message::from_vec(&buf[..n]).ok()?;
    Some((answer.metadata.response_code, answer.answers.len()))
}

/// An upstream resolver on the loopback that answers every query with an empty NOERROR (the
/// tenant's DNS relays names outside the cluster domain to it; nothing leaves the machine).
fn loopback_upstream() -> std::net::SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let Ok(query) = hickory_proto::op::Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut reply = query.clone();
            reply.metadata.message_type = hickory_proto::op::MessageType::Response;
            if let Ok(bytes) = reply.to_vec() {
                let _ = socket.send_to(&bytes, from);
            }
        }
    });
    addr
}

/// The tenant's cluster DNS, queried as its pods query it: each kind of answer moves its
/// counter, a relayed name the upstream histogram, and no queried name shows in the scrape.
#[test]
fn dns_metrics_move_with_queries_to_the_tenants_dns() {
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::RecordType;
    let (metrics, dns) = (free_port(), free_port());
    let upstream = loopback_upstream();
    let bind = format!("127.0.0.1:{metrics}");
    let up = upstream.to_string();
    let _t = crate::attack_ingress::start_with_dns(
        "obsdns",
        dns,
        &["--metrics-bind-address", &bind, "--upstream-dns", &up],
    );
    let server: std::net::SocketAddr = ([127, 0, 0, 1], dns).into();
    let before = scrape(metrics);
    // The API Service's name answers with its address once the catalog has it.
    wait_for(
        "kubernetes.default.svc answered",
        Duration::from_secs(60),
        || match dns_query(
            server,
            "kubernetes.default.svc.cluster.local.",
            RecordType::A,
        ) {
            Some((ResponseCode::NoError, n)) if n > 0 => None,
            other => Some(format!("{other:?}")),
        },
    );
    let secret_name = "acme-merger-db.default.svc.cluster.local.";
    assert_eq!(
        dns_query(server, secret_name, RecordType::A).map(|r| r.0),
        Some(ResponseCode::NXDomain)
    );
    assert_eq!(
        dns_query(server, "acme-merger.example.", RecordType::AAAA).map(|r| r.0),
        Some(ResponseCode::NoError),
        "relayed to the loopback upstream"
    );
    let after = scrape(metrics);
    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    for (series, at_least) in [
        ("vkube_dns_queries_total{qtype=\"A\"}", 2.0),
        ("vkube_dns_queries_total{qtype=\"AAAA\"}", 1.0),
        ("vkube_dns_answers_total{answer=\"addresses\"}", 1.0),
        ("vkube_dns_answers_total{answer=\"nxdomain\"}", 1.0),
        ("vkube_dns_answers_total{answer=\"forwarded\"}", 1.0),
        (
            "vkube_dns_upstream_duration_seconds_count{result=\"ok\"}",
            1.0,
        ),
    ] {
        assert!(
            moved(series) >= at_least,
            "{series} moved by {} (want at least {at_least})",
            moved(series)
        );
    }
    for name in ["acme-merger", "example"] {
        assert!(!after.contains(name), "the scrape shows {name:?}");
    }
}
