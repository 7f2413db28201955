//! The self-service platform as its users meet it, on the real node: the admin installs the
//! chart with helm; developers, each with nothing but the vkube-developer ClusterRole, use the
//! vkube CLI. One test walks the whole story in order (create → use → pause → resume → isolation
//! → policy → delete) and measures what the issue asks for.
//!
//! Needs the real node and the vkube image (hack/test.sh: hack/real-node.sh up
//! --with-vkube-image); otherwise it prints SKIPPED with the reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::{self, unique};

const NAMESPACE: &str = "vkube-system";
const STORAGE_CLASS: &str = "vkube-e2e-local";
const TENANT_METRICS_PORT: u16 = 8090;
const PLACEMENT: &str = r#"
    nodeSelector: {vkube.dev/node-type: real}
    tolerations: [{key: vkube.dev/real-node, operator: Exists, effect: NoSchedule}]"#;

fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn admin() -> PathBuf {
    common::env().host_kubeconfig
}

fn bin(name: &str) -> PathBuf {
    common::env().bin_dir.join(name)
}

fn helm(args: &[&str]) -> Output {
    Command::new(bin("helm"))
        .arg("--kubeconfig")
        .arg(admin())
        .args(args)
        .output()
        .expect("running helm (hack/build-components.sh builds it)")
}

/// A developer: a ServiceAccount of the developers' namespace (its token is the identity), with
/// its own HOME and KUBECONFIG, like a laptop.
struct Dev {
    user: String,
    dir: tempfile::TempDir,
}

impl Dev {
    fn new(devs_ns: &str, name: &str) -> Dev {
        common::kubectl_ok(&admin(), &["-n", devs_ns, "create", "serviceaccount", name]);
        let token = common::kubectl_ok(
            &admin(),
            &["-n", devs_ns, "create", "token", name, "--duration", "2h"],
        );
        let host = kube::config::Kubeconfig::read_from(admin()).unwrap();
        let cluster = host.clusters[0].cluster.clone().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "host", "cluster": {
                "server": cluster.server,
                "certificate-authority-data": cluster.certificate_authority_data,
                "certificate-authority": cluster.certificate_authority,
            }}],
            "users": [{"name": name, "user": {"token": token.trim()}}],
            "contexts": [{"name": "host", "context": {"cluster": "host", "user": name}}],
            "current-context": "host",
        });
        std::fs::write(
            dir.path().join("config"),
            serde_yaml::to_string(&kubeconfig).unwrap(),
        )
        .unwrap();
        Dev {
            user: format!("system:serviceaccount:{devs_ns}:{name}"),
            dir,
        }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    fn run(&self, program: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.dir.path());
        common::output_of(cmd, stdin)
    }

    fn vkube(&self, args: &[&str]) -> Output {
        self.run(&common::vkube_bin(), args, None)
    }

    fn vkube_ok(&self, args: &[&str]) -> String {
        let out = self.vkube(args);
        assert!(out.status.success(), "vkube {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
    }

    /// kubectl with this developer's kubeconfig and current context.
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.run(&bin("kubectl"), args, stdin)
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args, None);
        assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn current_context(&self) -> String {
        self.kubectl_ok(&["config", "current-context"])
            .trim()
            .to_string()
    }
}

/// A static volume pre-bound to the control plane's PVC of one cluster (the host has no
/// provisioner): a host directory the non-root control plane may write.
struct Volume {
    name: String,
    path: PathBuf,
}

impl Volume {
    fn for_cluster(cluster: &str) -> Volume {
        let name = format!("vkube-e2e-{cluster}");
        let path = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let yaml = format!(
            r#"
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {name}}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: {STORAGE_CLASS}
  claimRef: {{namespace: vkube-{cluster}, name: data-vkube-0}}
  hostPath: {{path: {path}, type: Directory}}
"#,
            path = path.display()
        );
        let out = common::kubectl(&admin(), &["apply", "-f", "-"], Some(&yaml));
        assert!(out.status.success(), "PV: {}", text(&out));
        Volume { name, path }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = common::kubectl(
            &admin(),
            &["delete", "pv", &self.name, "--wait=false"],
            None,
        );
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Deletes a virtual cluster as the admin when the test ends early, so a failed run leaves no
/// control plane behind on the shared real node.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = common::kubectl(
            &admin(),
            &[
                "delete",
                "vc",
                &self.0,
                "--ignore-not-found",
                "--wait=false",
            ],
            None,
        );
    }
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

fn install_chart(image: &str, devs_ns: &str) {
    let (repo, tag) = image.rsplit_once(':').expect("image reference with a tag");
    let values = format!(
        r#"
image: {{repository: {repo}, tag: {tag}, pullPolicy: Never}}
manager:{PLACEMENT}
developers: {{groups: ["system:serviceaccounts:{devs_ns}"]}}
policy:
  maxClustersPerUser: 1
  controlPlane: {{cpuRequest: 100m, memoryRequest: 256Mi, memoryLimit: 1Gi, storage: 1Gi,
                 storageClassName: {STORAGE_CLASS}}}
  placement:{PLACEMENT}
  tenantPods:
    # The tenants' workloads run on the real node, which is tainted for everyone else.
    allowedTolerations: ["vkube.dev/real-node:NoSchedule"]
# Each control plane serves its metrics (read below through a port-forward).
metrics:
  tenants: {{enabled: true, port: {TENANT_METRICS_PORT}}}
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values).unwrap();
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/vkube");
    let out = helm(&[
        "upgrade",
        "--install",
        "vkube",
        chart.to_str().unwrap(),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "-f",
        file.to_str().unwrap(),
        "--wait",
        "--timeout",
        "3m",
    ]);
    assert!(out.status.success(), "helm install: {}", text(&out));
    let notes = String::from_utf8_lossy(&out.stdout);
    assert!(notes.contains("vkube create NAME"), "NOTES: {notes}");
}

/// One scrape of the control plane's metrics port, through `kubectl port-forward` as the admin.
fn control_plane_metrics(ns: &str) -> String {
    let mut pf = Command::new(bin("kubectl"))
        .arg("--kubeconfig")
        .arg(admin())
        .args(["port-forward", "-n", ns, "pod/vkube-0"])
        .arg(format!(":{TENANT_METRICS_PORT}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lines = common::line_reader(pf.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let port = loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("kubectl port-forward did not report its local port");
        let line = lines.recv_timeout(left).unwrap();
        // "Forwarding from 127.0.0.1:PORT -> 8090"
        if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
            break rest.split(' ').next().unwrap().parse::<u16>().unwrap();
        }
    };
    let scraped = crate::observability::get(port, "/metrics");
    let _ = pf.kill();
    let _ = pf.wait();
    match scraped {
        Some((200, body)) => body,
        other => panic!("the control plane's /metrics through a port-forward: {other:?}"),
    }
}

fn host_pods(ns: &str) -> Vec<(String, String)> {
    let out = common::kubectl(
        &admin(),
        &[
            "get",
            "pods",
            "-n",
            ns,
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.phase}{\"\\n\"}{end}",
        ],
        None,
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn exists(args: &[&str]) -> bool {
    let out = common::kubectl(&admin(), args, None);
    out.status.success() && !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

/// How many pods of a host namespace the kubelet reports memory for, and the sum of their
/// working sets (kubelet summary API).
fn namespace_memory(node: &str, ns: &str) -> (usize, u64) {
    let raw = common::kubectl_ok(
        &admin(),
        &[
            "get",
            "--raw",
            &format!("/api/v1/nodes/{node}/proxy/stats/summary"),
        ],
    );
    let summary: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let sizes: Vec<u64> = summary["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["podRef"]["namespace"] == ns)
        .filter_map(|p| p["memory"]["workingSetBytes"].as_u64())
        .filter(|b| *b > 0)
        .collect();
    (sizes.len(), sizes.iter().sum())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

const WORKLOAD: &str = r#"
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
      - name: web
        image: IMAGE
        imagePullPolicy: Never
        command: [sh, -c, 'echo hello > /tmp/index.html; exec httpd -f -p 8080 -h /tmp']
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

#[test]
fn a_developer_creates_uses_pauses_resumes_and_deletes_a_virtual_cluster() {
    let test = "platform::a_developer_creates_uses_pauses_resumes_and_deletes_a_virtual_cluster";
    if std::env::var("VKUBE_E2E_REAL_NODE").as_deref() != Ok("1") {
        let why = std::env::var("VKUBE_E2E_REAL_NODE_SKIP")
            .unwrap_or_else(|_| "VKUBE_E2E_REAL_NODE is not 1: no real node was started".into());
        report(&format!("SKIPPED {test}: {why}"));
        return;
    }
    let Ok(image) = std::env::var("VKUBE_E2E_VKUBE_IMAGE") else {
        report(&format!(
            "SKIPPED {test}: the vkube image was not imported (hack/real-node.sh up --with-vkube-image)"
        ));
        return;
    };
    let node = std::env::var("VKUBE_E2E_REAL_NODE_NAME").unwrap();
    let testbox = std::env::var("VKUBE_E2E_TESTBOX_IMAGE").unwrap();
    let devs = Namespace(unique("devs"));
    common::kubectl_ok(&admin(), &["create", "namespace", &devs.0]);

    // The admin: helm install.
    install_chart(&image, &devs.0);
    let alice = Dev::new(&devs.0, "alice");
    let bob = Dev::new(&devs.0, "bob");

    // Before anything: an empty list, in words.
    assert!(alice.vkube_ok(&["list"]).contains("No virtual clusters"));

    // vkube create, timed to a working kubeconfig.
    let name = unique("alice");
    let _volume = Volume::for_cluster(&name);
    let _cleanup = Cleanup(name.clone());
    let started = Instant::now();
    let out = alice.vkube_ok(&["create", &name, "--wait", "240"]);
    let kubectl_works = alice.kubectl(&["get", "namespaces"], None);
    let create_time = started.elapsed();
    assert!(kubectl_works.status.success(), "{}", text(&kubectl_works));
    assert!(out.contains("Ready"), "{out}");
    assert!(
        out.contains(&format!("kubectl --context vkube-{name}")),
        "{out}"
    );
    assert_eq!(alice.current_context(), format!("vkube-{name}"));
    report(&format!(
        "MEASURE vkube create -> working kubeconfig: {:.1} s",
        create_time.as_secs_f64()
    ));
    let ns = format!("vkube-{name}");

    // Status on the object, from the manager: owner from the request identity, Ready condition.
    let vc: serde_json::Value = serde_json::from_str(&common::kubectl_ok(
        &admin(),
        &["get", "vc", &name, "-o", "json"],
    ))
    .unwrap();
    assert_eq!(vc["status"]["owner"], alice.user.as_str());
    assert_eq!(vc["status"]["phase"], "Ready");
    let conditions = vc["status"]["conditions"].as_array().unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    );

    // A workload inside, on the real node.
    let workload = WORKLOAD.replace("IMAGE", &testbox);
    let out = alice.kubectl(&["apply", "-f", "-"], Some(&workload));
    assert!(out.status.success(), "{}", text(&out));
    alice.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout", "120s"]);
    let uid_before =
        alice.kubectl_ok(&["get", "deployment", "web", "-o", "jsonpath={.metadata.uid}"]);
    let running = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !host_pods(&ns)
            .iter()
            .any(|(p, phase)| p != "vkube-0" && phase == "Running")
        {
            assert!(
                Instant::now() < deadline,
                "timed out: {what}: {:?}",
                host_pods(&ns)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    running("the tenant's pod Running on the host");
    // The control plane's own metrics (metrics.tenants.enabled), read as the admin through a
    // port-forward to its pod (the port's NetworkPolicy admits only the admin's namespaces):
    // one more pod inside moves the syncer's counter.
    let created = "vkube_syncer_objects_synced_total{kind=\"Pod\",op=\"created\"}";
    let before = crate::observability::sample(&control_plane_metrics(&ns), created);
    assert!(before >= 1.0, "{created} = {before} after a pod was synced");
    alice.kubectl_ok(&["scale", "deployment/web", "--replicas=2"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let now = crate::observability::sample(&control_plane_metrics(&ns), created);
        if now >= before + 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{created} stayed at {now}");
        std::thread::sleep(Duration::from_secs(2));
    }
    alice.kubectl_ok(&["scale", "deployment/web", "--replicas=1"]);
    // exec into it through the virtual cluster (served by the host pod).
    let out = alice.kubectl(
        &["exec", "deploy/web", "--", "cat", "/tmp/index.html"],
        None,
    );
    assert!(out.status.success(), "kubectl exec: {}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");
    // The pod's in-cluster API and cluster DNS are its virtual cluster's, served by the
    // control plane through its Service.
    let host_ip = |svc: &str| {
        common::kubectl_ok(
            &admin(),
            &[
                "get",
                "service",
                svc,
                "-n",
                &ns,
                "-o",
                "jsonpath={.spec.clusterIP}",
            ],
        )
    };
    let api_ip = host_ip(&format!("vkube-{name}"));
    let web_ip = host_ip(&format!("web-x-default-x-{name}"));
    let out = alice.kubectl(
        &[
            "exec",
            "deploy/web",
            "--",
            "sh",
            "-c",
            "echo api=$KUBERNETES_SERVICE_HOST; nslookup web.default.svc.cluster.local",
        ],
        None,
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains(&format!("api={api_ip}")), "{}", text(&out));
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("Address") && l.contains(&web_ip)),
        "nslookup should answer the host ClusterIP {web_ip}: {}",
        text(&out)
    );
    // Idle memory of the tenant on the host: the kubelet's stats of every pod in its namespace,
    // once both pods have been measured and the control plane has settled.
    std::thread::sleep(Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(60);
    let memory = loop {
        let (pods, bytes) = namespace_memory(&node, &ns);
        if pods >= 2 {
            break bytes;
        }
        assert!(
            Instant::now() < deadline,
            "the kubelet reports no memory for the tenant's pods"
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    report(&format!(
        "MEASURE host memory of one idle tenant (control plane + 1 busybox pod, working set): {} MiB",
        memory >> 20
    ));

    // Pause: no pods on the host at all; resume: the same objects, running again.
    alice.vkube_ok(&["pause", &name]);
    assert!(host_pods(&ns).is_empty(), "{:?}", host_pods(&ns));
    assert!(exists(&[
        "get",
        "pvc",
        "-n",
        &ns,
        "data-vkube-0",
        "-o",
        "name"
    ]));
    let started = Instant::now();
    alice.vkube_ok(&["resume", &name]);
    let resume_time = started.elapsed();
    report(&format!(
        "MEASURE vkube resume -> Ready: {:.1} s",
        resume_time.as_secs_f64()
    ));
    let uid_after =
        alice.kubectl_ok(&["get", "deployment", "web", "-o", "jsonpath={.metadata.uid}"]);
    assert_eq!(uid_before, uid_after, "the Deployment survived the pause");
    running("the tenant's pod Running again after resume");
    alice.kubectl_ok(&["get", "service", "web"]);

    // A leaked kubeconfig: rotating revokes it (the control plane restarts with the epoch) and
    // the new certificate lands in the owner's context.
    let before_rotation = alice.dir.path().join("before-rotation");
    std::fs::copy(alice.kubeconfig(), &before_rotation).unwrap();
    let started = Instant::now();
    let out = alice.vkube_ok(&["rotate-credentials", &name]);
    report(&format!(
        "MEASURE vkube rotate-credentials -> new kubeconfig: {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    assert!(out.contains("Credentials rotated"), "{out}");
    assert_eq!(alice.current_context(), format!("vkube-{name}"));
    let works = alice.kubectl(&["get", "namespaces"], None);
    assert!(works.status.success(), "new kubeconfig: {}", text(&works));
    let mut old = Command::new(bin("kubectl"));
    old.arg("--kubeconfig")
        .arg(&before_rotation)
        .args(["get", "namespaces"]);
    let refused = common::output_of(old, None);
    assert!(
        !refused.status.success(),
        "the revoked certificate still works"
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("Unauthorized") || err.contains("logged in"),
        "{}",
        text(&refused)
    );
    running("the tenant's pod Running after the rotation");

    // From a machine that cannot reach the endpoint: a port-forward through the host API.
    let out = alice.vkube(&[
        "connect",
        &name,
        "--port-forward",
        "--background",
        "--no-switch",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let through_forward = alice.kubectl(
        &[
            "--context",
            &format!("vkube-{name}"),
            "get",
            "service",
            "web",
        ],
        None,
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    assert!(
        through_forward.status.success(),
        "{}",
        text(&through_forward)
    );
    let server = alice.kubectl_ok(&[
        "config",
        "view",
        "--minify",
        "--context",
        &format!("vkube-{name}"),
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    assert!(server.starts_with("https://127.0.0.1:"), "{server}");

    // Another developer neither sees nor touches it.
    assert!(!bob.vkube_ok(&["list"]).contains(&name));
    let denied = bob.vkube(&["connect", &name]);
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("not yours"),
        "{}",
        text(&denied)
    );
    let denied = bob.vkube(&["delete", &name, "--wait", "5"]);
    assert!(!denied.status.success(), "{}", text(&denied));
    let secret = bob.kubectl(
        &[
            "-n",
            &ns,
            "get",
            "secret",
            &format!("vkube-{name}-kubeconfig"),
        ],
        None,
    );
    assert!(!secret.status.success());
    assert!(exists(&["get", "vc", &name, "-o", "name"]));

    // The owner cannot be faked: a create naming someone else as owner is refused at admission,
    // and developers cannot list every cluster.
    let spoof = format!(
        "apiVersion: vkube.dev/v1alpha1\nkind: VirtualCluster\nmetadata: {{name: {}, annotations: {{vkube.dev/owner: \"{}\"}}}}\nspec: {{}}\n",
        unique("spoof"),
        alice.user
    );
    let out = bob.kubectl(&["--context", "host", "create", "-f", "-"], Some(&spoof));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must be your user name"), "{err}");
    let out = bob.kubectl(&["--context", "host", "get", "virtualclusters"], None);
    assert!(!out.status.success(), "{}", text(&out));

    // Over policy: refused, with the reason.
    let refused = bob.vkube(&["create", &unique("bob"), "--kubernetes-version", "1.20"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("Kubernetes version 1.20 is not allowed (allowed: 1.35)"),
        "{err}"
    );
    let second = unique("alice2");
    let refused = alice.vkube(&["create", &second, "--no-switch", "--wait", "60"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("the most one user may have is 1"), "{err}");
    assert!(!exists(&[
        "get",
        "namespace",
        &format!("vkube-{second}"),
        "-o",
        "name",
        "--ignore-not-found"
    ]));

    // The owner's list and its machine-readable form.
    let listed = alice.vkube_ok(&["list"]);
    assert!(
        listed.contains(&name) && listed.contains("Ready"),
        "{listed}"
    );
    let json = alice.run(&common::vkube_bin(), &["list", "-o", "json"], None);
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(parsed["items"][0]["metadata"]["name"], name.as_str());

    // Delete: back to the previous context, nothing of the cluster left on the host.
    alice.vkube_ok(&["delete", &name]);
    assert_eq!(alice.current_context(), "host");
    assert!(!exists(&[
        "get",
        "namespace",
        &ns,
        "-o",
        "name",
        "--ignore-not-found"
    ]));
    assert!(!exists(&[
        "get",
        "vc",
        &name,
        "-o",
        "name",
        "--ignore-not-found"
    ]));
    assert!(!exists(&[
        "get",
        "clusterrole,clusterrolebinding",
        &format!("vkube:owner:{name}"),
        "-o",
        "name",
        "--ignore-not-found"
    ]));

    // Measure: create to a working kubeconfig, median of 5.
    let mut times = Vec::new();
    for _ in 0..5 {
        let name = unique("m");
        let _volume = Volume::for_cluster(&name);
        let _cleanup = Cleanup(name.clone());
        let started = Instant::now();
        alice.vkube_ok(&["create", &name, "--wait", "240"]);
        let out = alice.kubectl(&["get", "namespaces"], None);
        assert!(out.status.success(), "{}", text(&out));
        times.push(started.elapsed());
        alice.vkube_ok(&["delete", &name]);
    }
    let m = median(times.clone());
    report(&format!(
        "MEASURE vkube create -> working kubeconfig, median of 5: {:.1} s (all: {:?})",
        m.as_secs_f64(),
        times
            .iter()
            .map(|t| format!("{:.1}", t.as_secs_f64()))
            .collect::<Vec<_>>()
    ));
    assert!(m < Duration::from_secs(120), "median create {m:?}");
}

/// The ids of processes whose cgroup is one of these pods' (kubelet cgroups carry the pod UID).
fn processes_of_pods(uids: &[String]) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cgroup) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        if uids
            .iter()
            .any(|u| cgroup.contains(u.as_str()) || cgroup.contains(&u.replace('-', "_")))
        {
            let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .replace('\0', " ");
            found.push((pid, cmd));
        }
    }
    found
}

fn jsonpath_admin(args: &[&str], path: &str) -> String {
    let mut all = args.to_vec();
    let out_arg = format!("jsonpath={path}");
    all.extend(["-o", &out_arg]);
    let out = common::kubectl(&admin(), &all, None);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn phase_and_message(name: &str) -> (String, String) {
    let got = jsonpath_admin(&["get", "vc", name], "{.status.phase}|{.status.message}");
    let (p, m) = got.split_once('|').unwrap_or((&got, ""));
    (p.to_string(), m.to_string())
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn sleeping_condition(name: &str) -> (String, String, String) {
    let got = jsonpath_admin(
        &["get", "vc", name],
        r#"{.status.conditions[?(@.type=="Sleeping")].status}|{.status.conditions[?(@.type=="Sleeping")].reason}|{.status.conditions[?(@.type=="Sleeping")].lastTransitionTime}"#,
    );
    let parts: Vec<&str> = got.split('|').collect();
    (
        parts.first().unwrap_or(&"").to_string(),
        parts.get(1).unwrap_or(&"").to_string(),
        parts.get(2).unwrap_or(&"").to_string(),
    )
}

fn events_of(name: &str) -> String {
    jsonpath_admin(
        &[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            &format!("involvedObject.name={name}"),
        ],
        "{range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    )
}

/// An unauthenticated health probe through the API Service (as the kubelet's and the
/// manager's): vkube's own kind of traffic, which must never keep a cluster awake.
fn health_probe(cluster_ip: &str) -> bool {
    let mut cmd = Command::new(bin("kubectl"));
    cmd.env("KUBECONFIG", "/dev/null").args([
        "--server",
        &format!("https://{cluster_ip}:443"),
        "--insecure-skip-tls-verify=true",
        "--request-timeout",
        "5s",
        "get",
        "--raw",
        "/readyz",
    ]);
    common::output_of(cmd, None).status.success()
}

/// Sleep and wake as the issue's "done" describes it, on the real node: a tenant with a
/// Deployment and a Service, left alone for its sleepAfter while vkube's own traffic goes on
/// (syncer, controller-manager, kubelet and manager probes, and health probes through its
/// Service), falls asleep: no host pod, no process left of its pods; the user's plain
/// `kubectl get pods` with the kubeconfig they already have wakes it and succeeds; the
/// Deployment's pods run again, its objects the same (UIDs). Then the races: two requests at
/// once, requests while it falls asleep, the manager restarting mid-wake, and a paused
/// cluster that no request wakes.
#[test]
fn an_idle_cluster_sleeps_and_its_first_request_wakes_it() {
    let test = "platform::an_idle_cluster_sleeps_and_its_first_request_wakes_it";
    if std::env::var("VKUBE_E2E_REAL_NODE").as_deref() != Ok("1") {
        let why = std::env::var("VKUBE_E2E_REAL_NODE_SKIP")
            .unwrap_or_else(|_| "VKUBE_E2E_REAL_NODE is not 1: no real node was started".into());
        report(&format!("SKIPPED {test}: {why}"));
        return;
    }
    let Ok(image) = std::env::var("VKUBE_E2E_VKUBE_IMAGE") else {
        report(&format!(
            "SKIPPED {test}: the vkube image was not imported (hack/real-node.sh up --with-vkube-image)"
        ));
        return;
    };
    let node = std::env::var("VKUBE_E2E_REAL_NODE_NAME").unwrap();
    let testbox = std::env::var("VKUBE_E2E_TESTBOX_IMAGE").unwrap();
    let devs = Namespace(unique("devs"));
    common::kubectl_ok(&admin(), &["create", "namespace", &devs.0]);
    install_chart(&image, &devs.0);
    let carol = Dev::new(&devs.0, "carol");
    let name = unique("sleepy");
    let ns = format!("vkube-{name}");
    let _volume = Volume::for_cluster(&name);
    let _cleanup = Cleanup(name.clone());
    let values = carol.dir.path().join("values.yaml");
    std::fs::write(&values, "sleepAfter: 1m\n").unwrap();
    carol.vkube_ok(&[
        "create",
        &name,
        "-f",
        values.to_str().unwrap(),
        "--wait",
        "240",
    ]);
    let workload = WORKLOAD.replace("IMAGE", &testbox);
    let out = carol.kubectl(&["apply", "-f", "-"], Some(&workload));
    assert!(out.status.success(), "{}", text(&out));
    carol.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout", "120s"]);
    let uids = |carol: &Dev| {
        carol.kubectl_ok(&[
            "get",
            "deployment,replicaset,service",
            "-o",
            "jsonpath={range .items[*]}{.kind}/{.metadata.name}={.metadata.uid} {end}",
        ])
    };
    let uids_before = uids(&carol);
    let running = |what: &str| {
        wait_until(what, Duration::from_secs(120), || {
            host_pods(&ns)
                .iter()
                .any(|(p, phase)| p != "vkube-0" && phase == "Running")
        })
    };
    running("the tenant's pod Running on the host");
    let pod_uids: Vec<String> = jsonpath_admin(
        &["get", "pods", "-n", &ns],
        "{range .items[*]}{.metadata.uid} {end}",
    )
    .split_whitespace()
    .map(str::to_string)
    .collect();
    assert!(
        pod_uids.len() >= 2,
        "control plane and web pod: {pod_uids:?}"
    );
    assert!(
        !processes_of_pods(&pod_uids).is_empty(),
        "the pods' processes are found by their cgroups while they run"
    );
    let cluster_ip = jsonpath_admin(
        &["get", "service", &format!("vkube-{name}"), "-n", &ns],
        "{.spec.clusterIP}",
    );

    // Left alone: only vkube's own traffic from here on, and health probes through the
    // Service while it is up.
    let last_use = std::time::SystemTime::now();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let (phase, message) = phase_and_message(&name);
        if phase == "Sleeping" && message.starts_with("asleep") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not asleep after 240 s: {phase} {message}"
        );
        if phase == "Ready" {
            health_probe(&cluster_ip);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let (status, reason, since) = sleeping_condition(&name);
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Idle"));
    let since: k8s_openapi::jiff::Timestamp = since.parse().unwrap();
    let idle = since.as_second()
        - last_use
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
    report(&format!(
        "MEASURE fell asleep {idle} s after the last use (sleepAfter 1m; the manager looks at least every 30 s)"
    ));
    assert!(idle >= 59, "fell asleep after only {idle} s");
    assert!(host_pods(&ns).is_empty(), "{:?}", host_pods(&ns));
    // And it stays asleep: nothing of vkube's own wakes it (the manager never probes a
    // sleeping cluster through its Service, the activity published on the way out is old).
    std::thread::sleep(Duration::from_secs(10));
    let (phase, message) = phase_and_message(&name);
    assert!(
        phase == "Sleeping" && message.starts_with("asleep"),
        "woken by nobody: {phase} {message}"
    );
    wait_until(
        "no process of the tenant's pods left",
        Duration::from_secs(60),
        || processes_of_pods(&pod_uids).is_empty(),
    );
    let (pods, bytes) = namespace_memory(&node, &ns);
    report(&format!(
        "MEASURE sleeping tenant: {pods} pods, {} MiB working set, 0 processes",
        bytes >> 20
    ));
    assert_eq!((pods, bytes), (0, 0));
    // Its state stays: the volume, the Service with its ClusterIP, now also leading to the
    // waker in the manager's pod.
    assert!(exists(&[
        "get",
        "pvc",
        "-n",
        &ns,
        "data-vkube-0",
        "-o",
        "name"
    ]));
    let manager_ip = jsonpath_admin(
        &[
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-l",
            "app.kubernetes.io/component=manager",
        ],
        "{.items[0].status.podIP}",
    );
    let slice = jsonpath_admin(
        &["get", "endpointslice", "vkube-waker", "-n", &ns],
        "{.endpoints[0].addresses[0]}:{.ports[0].port}",
    );
    assert!(slice.starts_with(&format!("{manager_ip}:")), "{slice}");
    let listed = carol.vkube_ok(&["list"]);
    assert!(listed.contains("Sleeping (idle)"), "{listed}");
    assert!(events_of(&name).contains("Sleeping: falling asleep (no API request for 1m)"));

    // The user's plain kubectl, with the kubeconfig they have, wakes it.
    let started = Instant::now();
    let out = carol.kubectl(&["get", "pods"], None);
    let wake = started.elapsed();
    assert!(out.status.success(), "kubectl get pods: {}", text(&out));
    report(&format!(
        "MEASURE first request to a sleeping cluster -> its answer (kubectl get pods): {:.1} s",
        wake.as_secs_f64()
    ));
    assert_eq!(
        uids(&carol),
        uids_before,
        "the same objects after the sleep"
    );
    running("the Deployment's pod Running again after the wake");
    let (status, reason, _) = sleeping_condition(&name);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Awake"));
    wait_until(
        "the waker's endpoint removed",
        Duration::from_secs(30),
        || {
            !exists(&[
                "get",
                "endpointslice",
                "vkube-waker",
                "-n",
                &ns,
                "-o",
                "name",
                "--ignore-not-found",
            ])
        },
    );
    assert!(
        events_of(&name).contains("Waking: waking: a request to its API is waiting"),
        "{}",
        events_of(&name)
    );

    // Two requests at once on a sleeping cluster: both answered.
    carol.vkube_ok(&["sleep", &name]);
    assert!(host_pods(&ns).is_empty());
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| carol.kubectl(&["get", "deployment", "web"], None));
        let b = s.spawn(|| carol.kubectl(&["get", "service", "web"], None));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(a.status.success(), "first of two: {}", text(&a));
    assert!(b.status.success(), "second of two: {}", text(&b));

    // Requests while it falls asleep: each is answered (by the stopping control plane, or
    // held by the waker, which then wakes it again).
    wait_until("Ready again", Duration::from_secs(120), || {
        phase_and_message(&name).0 == "Ready"
    });
    let out = carol.kubectl(
        &[
            "--context",
            "host",
            "annotate",
            "--overwrite",
            "vc",
            &name,
            &format!("vkube.dev/sleep-requested={}", now_rfc3339()),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    // A request held while the old control plane is still stopping waits for that and a whole
    // start; when that takes longer than kubectl's fixed 10 s TLS handshake timeout (a busy
    // machine), kubectl gives up on a connection that was held, never refused, and its retry
    // is answered.
    let falling = Instant::now();
    let (mut answered, mut retried) = (0, 0);
    while falling.elapsed() < Duration::from_secs(15) {
        let mut out = carol.kubectl(&["get", "namespaces"], None);
        if !out.status.success() && text(&out).contains("TLS handshake timeout") {
            retried += 1;
            out = carol.kubectl(&["get", "namespaces"], None);
        }
        assert!(
            out.status.success(),
            "a request {:.1} s into the fall asleep: {}",
            falling.elapsed().as_secs_f64(),
            text(&out)
        );
        answered += 1;
    }
    report(&format!(
        "MEASURE {answered} requests during a fall asleep, all answered ({retried} after kubectl's handshake timeout)"
    ));

    // The manager restarts mid-wake: the new one finishes it, and requests work.
    carol.vkube_ok(&["sleep", &name]);
    let out = carol.kubectl(
        &[
            "--context",
            "host",
            "annotate",
            "--overwrite",
            "vc",
            &name,
            &format!("vkube.dev/wake-requested={}", now_rfc3339()),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    wait_until("waking", Duration::from_secs(30), || {
        phase_and_message(&name).0 == "Starting"
    });
    common::kubectl_ok(
        &admin(),
        &[
            "delete",
            "pod",
            "-n",
            NAMESPACE,
            "-l",
            "app.kubernetes.io/component=manager",
            "--wait=false",
        ],
    );
    wait_until(
        "a request answered after the manager's restart",
        Duration::from_secs(180),
        || carol.kubectl(&["get", "pods"], None).status.success(),
    );
    wait_until("Ready after the restart", Duration::from_secs(120), || {
        phase_and_message(&name).0 == "Ready"
    });
    wait_until(
        "no waker endpoint after the restart",
        Duration::from_secs(30),
        || {
            !exists(&[
                "get",
                "endpointslice",
                "vkube-waker",
                "-n",
                &ns,
                "-o",
                "name",
                "--ignore-not-found",
            ])
        },
    );

    // Another tenant's pod reaches neither a sleeping cluster's Service nor its waker port in
    // the manager's pod (it would wake it, and be spliced to its API): its egress policy
    // closes both. Its own API it reaches (the probe can tell). The probe sends the first
    // bytes of a TLS handshake, what the waker wakes a cluster for.
    let dave = Dev::new(&devs.0, "dave");
    let other = unique("other");
    let other_ns = format!("vkube-{other}");
    let _other_volume = Volume::for_cluster(&other);
    let _other_cleanup = Cleanup(other.clone());
    dave.vkube_ok(&["create", &other, "--no-switch", "--wait", "240"]);
    dave.vkube_ok(&["sleep", &other]);
    let other_ip = jsonpath_admin(
        &["get", "service", &format!("vkube-{other}"), "-n", &other_ns],
        "{.spec.clusterIP}",
    );
    let waker = jsonpath_admin(
        &["get", "endpointslice", "vkube-waker", "-n", &other_ns],
        "{.endpoints[0].addresses[0]} {.ports[0].port}",
    );
    let (waker_ip, waker_port) = waker.split_once(' ').expect("the waker's address and port");
    let connects = |host: &str, port: &str| {
        let out = carol.kubectl(
            &[
                "exec",
                "deploy/web",
                "--",
                "sh",
                "-c",
                &format!(
                    "printf '\\026\\003\\001' | nc -w 3 {host} {port} >/dev/null && echo CONNECTED || echo REFUSED"
                ),
            ],
            None,
        );
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            said.contains("CONNECTED") || said.contains("REFUSED"),
            "{}",
            text(&out)
        );
        said.contains("CONNECTED")
    };
    assert!(connects(&cluster_ip, "443"), "its own API");
    assert!(
        !connects(&other_ip, "443"),
        "another tenant's sleeping Service"
    );
    assert!(!connects(waker_ip, waker_port), "another tenant's waker");
    std::thread::sleep(Duration::from_secs(5));
    let (phase, message) = phase_and_message(&other);
    assert!(
        phase == "Sleeping" && message.starts_with("asleep"),
        "the other tenant was woken: {phase} {message}"
    );
    assert!(host_pods(&other_ns).is_empty());
    dave.vkube_ok(&["delete", &other]);

    // Paused: a sleep that no request ends.
    carol.vkube_ok(&["pause", &name]);
    let out = carol.kubectl(&["get", "pods", "--request-timeout", "5s"], None);
    assert!(!out.status.success(), "a paused cluster answered");
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(phase_and_message(&name).0, "Paused");
    assert_eq!(
        jsonpath_admin(
            &["get", "statefulset", "vkube", "-n", &ns],
            "{.spec.replicas}"
        ),
        "0"
    );
    assert!(host_pods(&ns).is_empty());
    carol.vkube_ok(&["resume", &name]);
    carol.kubectl_ok(&["get", "pods"]);
    carol.vkube_ok(&["delete", &name]);
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::from_second(k8s_openapi::jiff::Timestamp::now().as_second())
        .unwrap()
        .to_string()
}
