//! `vkube serve`: a real virtual API behind the TLS proxy.

use std::process::{Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};

use crate::common::{self, Tenant, eventually};

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: team-a}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: registry.local/web:1}]
"#;

fn configmap(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some([("k".to_string(), "v".to_string())].into()),
        ..Default::default()
    }
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_and_kube_rs_drive_the_virtual_api() {
    let t = Tenant::start("basic");
    t.create_namespace("team-a");
    t.kubectl_ok(&[
        "create",
        "configmap",
        "settings",
        "-n",
        "team-a",
        "--from-literal=color=blue",
    ]);
    let out = common::kubectl(&t.kubeconfig, &["apply", "-f", "-"], Some(DEPLOYMENT));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let client = t.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "team-a");
    let cm = cms.get("settings").await.unwrap();
    assert_eq!(cm.data.unwrap()["color"], "blue");
    cms.create(&PostParams::default(), &configmap("from-kube-rs"))
        .await
        .unwrap();
    assert!(
        t.kubectl_ok(&["get", "configmap", "-n", "team-a", "-o", "name"])
            .contains("configmap/from-kube-rs")
    );

    // The virtual controller-manager does its job: a ReplicaSet and two Pods.
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "team-a");
    eventually(
        "the deployment controller creates a ReplicaSet",
        Duration::from_secs(30),
        || async {
            let list = rss.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|rs| {
                    rs.metadata
                        .owner_references
                        .as_ref()
                        .is_some_and(|o| o.iter().any(|o| o.kind == "Deployment"))
                })
                .then_some(())
        },
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team-a");
    let items = eventually(
        "the replicaset controller creates 2 pods",
        Duration::from_secs(30),
        || async {
            let list = pods.list(&ListParams::default()).await.ok()?;
            (list.items.len() == 2).then_some(list.items)
        },
    )
    .await;
    assert_eq!(items.len(), 2);

    // `vkube kubeconfig` prints what serve published in the host namespace.
    let out = Command::new(common::vkube_bin())
        .args(["kubeconfig", &t.name, "--host-kubeconfig"])
        .arg(t.host_kubeconfig())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        std::fs::read_to_string(&t.kubeconfig).unwrap()
    );
    // The proxy's own health endpoints answer without credentials.
    let ready = t.kubectl_ok(&["get", "--raw", "/readyz"]);
    assert_eq!(ready.trim(), "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_streams_through_the_proxy_without_buffering() {
    let t = Tenant::start("watch");
    let mut watcher = Command::new(common::kubectl_bin())
        .arg("--kubeconfig")
        .arg(&t.kubeconfig)
        .args([
            "get",
            "configmaps",
            "-n",
            "default",
            "--watch-only",
            "-o",
            "name",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = common::line_reader(watcher.stdout.take().unwrap());
    // Give the watch a moment to be established before the first event.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cms: Api<ConfigMap> = Api::namespaced(t.client().await, "default");
    for name in ["first", "second", "third"] {
        let created = Instant::now();
        cms.create(&PostParams::default(), &configmap(name))
            .await
            .unwrap();
        let expected = format!("configmap/{name}");
        loop {
            match lines.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line == expected => break,
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("watch did not deliver {expected} within 10 s")
                }
                Err(RecvTimeoutError::Disconnected) => panic!("kubectl watch exited"),
            }
        }
        // Each event arrives while the stream stays open, promptly after the write.
        assert!(
            created.elapsed() < Duration::from_secs(5),
            "event for {name} took {:?}",
            created.elapsed()
        );
    }
    assert!(
        watcher.try_wait().unwrap().is_none(),
        "watch must still be open"
    );
    let _ = watcher.kill();
    let _ = watcher.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_without_valid_credentials_are_refused_and_tenants_are_isolated() {
    let a = Tenant::start("iso-a");
    let b = Tenant::start("iso-b");

    // No client certificate, no token: 401 with a Kubernetes Status body.
    let kc = kube::config::Kubeconfig::read_from(&a.kubeconfig).unwrap();
    let mut anonymous = kc.clone();
    for u in &mut anonymous.auth_infos {
        u.auth_info = Some(Default::default());
    }
    let config = kube::Config::from_custom_kubeconfig(anonymous, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let err = Api::<Namespace>::all(client)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    match &err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 401);
            assert_eq!(s.reason, "Unauthorized");
        }
        other => panic!("expected a 401 Status, got {other:?}"),
    }
    let out = common::kubectl(&a.kubeconfig, &["get", "ns", "--user", "nobody"], None);
    assert!(!out.status.success());

    // B's admin certificate, offered to A (trusting A's CA so the server is accepted): refused.
    let kc_b = kube::config::Kubeconfig::read_from(&b.kubeconfig).unwrap();
    let mut foreign = kc.clone();
    foreign.auth_infos = kc_b.auth_infos.clone();
    foreign.auth_infos[0].name = foreign.contexts[0]
        .context
        .as_ref()
        .unwrap()
        .user
        .clone()
        .unwrap();
    let config = kube::Config::from_custom_kubeconfig(foreign, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let result = Api::<Namespace>::all(client)
        .list(&ListParams::default())
        .await;
    assert!(
        result.is_err(),
        "a certificate of another tenant's CA must not be accepted"
    );

    // Objects of A are invisible in B, and the two host namespaces hold separate credentials.
    a.kubectl_ok(&["create", "namespace", "only-in-a"]);
    a.kubectl_ok(&["create", "configmap", "secret-plans", "-n", "default"]);
    let b_ns = b.kubectl_ok(&["get", "namespaces", "-o", "name"]);
    assert!(!b_ns.contains("only-in-a"), "{b_ns}");
    let out = b.kubectl(&["get", "configmap", "secret-plans", "-n", "default"]);
    assert!(!out.status.success());
    let host = common::host_client().await;
    let ca = |ns: &str, name: &str| {
        let api: Api<Secret> = Api::namespaced(host.clone(), ns);
        let name = format!("vkube-{name}-certs");
        async move { api.get(&name).await.unwrap().data.unwrap()["ca.crt"].clone() }
    };
    assert_ne!(
        ca(&a.namespace, &a.name).await,
        ca(&b.namespace, &b.name).await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_keeps_the_ca_the_kubeconfig_and_the_data() {
    let mut t = Tenant::new("restart");
    t.spawn();
    t.wait_ready();
    let old_kubeconfig = std::fs::read_to_string(&t.kubeconfig).unwrap();
    let saved = t.dir.join("old-kubeconfig");
    std::fs::write(&saved, &old_kubeconfig).unwrap();
    t.kubectl_ok(&["create", "configmap", "survivor", "--from-literal=a=1"]);

    let data_dir = t.data_dir().display().to_string();
    assert!(
        common::processes_mentioning(&data_dir).len() >= 3,
        "etcd, kube-apiserver and kube-controller-manager run"
    );
    let status = t.stop().unwrap();
    assert!(status.success(), "vkube serve exits 0 on SIGTERM: {status}");
    // No child outlives it.
    let left = common::processes_mentioning(&data_dir);
    assert!(left.is_empty(), "processes left behind: {left:?}");

    t.spawn();
    t.wait_ready();
    // The kubeconfig handed out before the restart still works, and the data is still there.
    let out = common::kubectl(
        &saved,
        &["get", "configmap", "survivor", "-o", "jsonpath={.data.a}"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1");
    let new_kubeconfig = std::fs::read_to_string(&t.kubeconfig).unwrap();
    assert_eq!(old_kubeconfig, new_kubeconfig, "same CA and credentials");
}

/// Ports are chosen by the kernel and released before the components bind them; another
/// process may take one meanwhile (seen in CI). That is a start on other ports, not a failure:
/// here the test itself takes the API server's port the moment vkube writes it down.
#[tokio::test(flavor = "multi_thread")]
async fn a_port_taken_before_the_api_server_binds_it_is_a_retry_not_a_failure() {
    #[derive(serde::Deserialize)]
    struct Ports {
        apiserver: u16,
    }
    let mut t = Tenant::new("portrace");
    let chosen = t.data_dir().join("ports.json");
    t.spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (thief, stolen) = loop {
        // Written before etcd starts; the API server binds only once etcd is ready.
        let written = std::fs::read(&chosen).ok();
        if let Some(ports) = written.and_then(|b| serde_json::from_slice::<Ports>(&b).ok()) {
            let thief = std::net::TcpListener::bind(("127.0.0.1", ports.apiserver))
                .unwrap_or_else(|e| panic!("taking port {}: {e}", ports.apiserver));
            break (thief, ports.apiserver);
        }
        assert!(Instant::now() < deadline, "vkube never chose its ports");
        std::thread::sleep(Duration::from_millis(1));
    };
    t.wait_ready();
    let log = std::fs::read_to_string(&t.log).unwrap();
    assert!(
        log.contains("a port was taken meanwhile"),
        "the API server was expected to lose port {stolen}:\n{log}"
    );
    let now: Ports = serde_json::from_slice(&std::fs::read(&chosen).unwrap()).unwrap();
    assert_ne!(now.apiserver, stolen, "started again on another port");
    t.kubectl_ok(&["create", "configmap", "after-the-race"]);
    drop(thief);
}

#[tokio::test(flavor = "multi_thread")]
async fn service_account_tokens_are_checked_by_token_review_and_virtual_rbac() {
    let t = Tenant::start("tokens");
    let client = t.client().await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    sas.create(
        &PostParams::default(),
        &ServiceAccount {
            metadata: ObjectMeta {
                name: Some("reader".into()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let token = sas
        .create_token_request(
            "reader",
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![],
                    expiration_seconds: Some(600),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token;

    let kc = kube::config::Kubeconfig::read_from(&t.kubeconfig).unwrap();
    let with_token = |token: String| {
        let mut kc = kc.clone();
        kc.auth_infos[0].auth_info = Some(kube::config::AuthInfo {
            token: Some(token.into()),
            ..Default::default()
        });
        async move {
            let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .unwrap();
            kube::Client::try_from(config).unwrap()
        }
    };
    let sa_client = with_token(token.clone()).await;

    // Who am I, as the virtual API server sees it — even with a forged identity header.
    let review = serde_json::to_vec(&SelfSubjectReview::default()).unwrap();
    let req = http::Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
        .header("Content-Type", "application/json")
        .header("X-Remote-User", "kubernetes-admin")
        .header("X-Remote-Group", "system:masters")
        .body(review)
        .unwrap();
    let me: SelfSubjectReview = sa_client.request(req).await.unwrap();
    let user = me.status.unwrap().user_info.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:default:reader")
    );
    assert!(
        !user
            .groups
            .unwrap_or_default()
            .contains(&"system:masters".to_string())
    );

    // Virtual RBAC decides: forbidden until a RoleBinding allows it.
    let pods: Api<Pod> = Api::namespaced(sa_client.clone(), "default");
    let err = pods.list(&ListParams::default()).await.unwrap_err();
    assert_eq!(api_code(&err), Some(403), "{err:?}");
    t.kubectl_ok(&[
        "create",
        "role",
        "pod-reader",
        "--verb=list",
        "--resource=pods",
    ]);
    t.kubectl_ok(&[
        "create",
        "rolebinding",
        "reader",
        "--role=pod-reader",
        "--serviceaccount=default:reader",
    ]);
    eventually("RBAC grants list pods", Duration::from_secs(10), || async {
        pods.list(&ListParams::default()).await.ok().map(|_| ())
    })
    .await;

    // A token that is not valid: 401.
    let bad = with_token(format!("{token}x")).await;
    let err = Api::<Pod>::namespaced(bad, "default")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some(401), "{err:?}");
}

/// The one-line error a failed `vkube serve` prints.
fn failure_line(args: Vec<String>) -> String {
    let (ok, stderr) = common::run_vkube(&args, Duration::from_secs(30));
    assert!(!ok, "vkube serve must fail: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let last = stderr.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("error: "), "last line: {last:?}\n{stderr}");
    last
}

fn replace_arg(args: &mut [String], flag: &str, value: &str) {
    let i = args.iter().position(|a| a == flag).unwrap();
    args[i + 1] = value.into();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_configuration_fails_fast_with_a_one_line_cause() {
    let t = Tenant::new("badcfg");

    let mut args = t.serve_args();
    args.extend(["--etcd-bin".into(), "/nonexistent/etcd".into()]);
    let line = failure_line(args);
    assert!(line.contains("/nonexistent/etcd"), "{line}");

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut args = t.serve_args();
    replace_arg(
        &mut args,
        "--listen",
        &busy.local_addr().unwrap().to_string(),
    );
    let line = failure_line(args);
    assert!(line.contains("in use"), "{line}");

    let unreachable = t.dir.join("unreachable.kubeconfig");
    let host = std::fs::read_to_string(t.host_kubeconfig()).unwrap();
    let server_line = host.lines().find(|l| l.contains("server:")).unwrap();
    std::fs::write(
        &unreachable,
        host.replace(server_line, "    server: https://127.0.0.1:1"),
    )
    .unwrap();
    let mut args = t.serve_args();
    replace_arg(
        &mut args,
        "--host-kubeconfig",
        &unreachable.display().to_string(),
    );
    let started = Instant::now();
    let line = failure_line(args);
    assert!(line.contains("cannot reach the host API server"), "{line}");
    assert!(started.elapsed() < Duration::from_secs(20));

    let mut args = t.serve_args();
    replace_arg(&mut args, "--name", "Bad_Name");
    let line = failure_line(args);
    assert!(line.contains("invalid virtual cluster name"), "{line}");

    // A corrupt credentials Secret is reported, never overwritten or half-used.
    let host = common::host_client().await;
    let secrets: Api<Secret> = Api::namespaced(host.clone(), &t.namespace);
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some(format!("vkube-{}-certs", t.name)),
                    ..Default::default()
                },
                string_data: Some([("ca.crt".to_string(), "not a certificate".to_string())].into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let line = failure_line(t.serve_args());
    assert!(line.contains("corrupt"), "{line}");
    let data_dir = t.data_dir().display().to_string();
    assert!(common::processes_mentioning(&data_dir).is_empty());
}
