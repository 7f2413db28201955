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
