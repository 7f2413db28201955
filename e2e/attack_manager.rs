//! Attacks on the self-service platform's manager, each tried for real: the chart as `helm
//! template` renders it, applied to the host cluster of hack/ (kwok nodes: control plane pods
//! never really run, which these vectors do not need), `vkube manager` as a local process with
//! the token of the chart's ServiceAccount (so the chart's RBAC and admission policies judge it
//! exactly as in a cluster), and developers who hold nothing but the chart's `vkube-developer`
//! role (ServiceAccounts of a developers' namespace, bound by `developers.groups`). Each test
//! asserts the refusal and that nothing reached what the attacker aimed at.
//!
//! The chart goes to `vkube-system`, as platform.rs installs it (hack/test.sh runs that test in
//! an earlier step; a manager Deployment it left is scaled to zero here). The tests that run a
//! manager take turns (one manager at a time), and the one that removes the admission binding
//! puts it back.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::common::{self, unique};

const RELEASE_NS: &str = "vkube-system";
const DEVS_NS: &str = "attack-devs";
const MANAGER_USER: &str = "system:serviceaccount:vkube-system:vkube-manager";
/// In the chart values' policy.reservedNames.
const RESERVED: &str = "attack-reserved";
/// The tenant quota's object counts in the chart values (the control plane's own come on top).
const QUOTA_SERVICES: usize = 3;
const QUOTA_SECRETS: usize = 2;

pub(crate) static SERIAL: Mutex<()> = Mutex::new(());

fn admin() -> PathBuf {
    common::env().host_kubeconfig
}

fn bin(name: &str) -> PathBuf {
    common::env().bin_dir.join(name)
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn kubectl(args: &[&str]) -> Output {
    common::kubectl(&admin(), args, None)
}

fn kubectl_in(args: &[&str], stdin: &str) -> Output {
    common::kubectl(&admin(), args, Some(stdin))
}

fn kubectl_ok(args: &[&str]) -> String {
    common::kubectl_ok(&admin(), args)
}

/// kubectl as the manager's ServiceAccount (impersonated by the admin).
fn as_manager(args: &[&str], stdin: Option<&str>) -> Output {
    let mut all = vec!["--as", MANAGER_USER];
    all.extend_from_slice(args);
    common::kubectl(&admin(), &all, stdin)
}

fn exists(args: &[&str]) -> bool {
    let mut all = args.to_vec();
    all.extend(["-o", "name", "--ignore-not-found"]);
    let out = kubectl(&all);
    out.status.success() && !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

fn jsonpath(args: &[&str], path: &str) -> String {
    let mut all = args.to_vec();
    let expr = format!("jsonpath={path}");
    all.extend(["-o", expr.as_str()]);
    let out = kubectl(&all);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn values(extra: &str) -> String {
    let base = format!(
        r#"
developers: {{groups: ["system:serviceaccounts:{DEVS_NS}"]}}
policy:
  maxClustersPerUser: 0
  reservedNames: [{RESERVED}]
  objectQuota:
    count/services: "{QUOTA_SERVICES}"
    count/secrets: "{QUOTA_SECRETS}"
    services.nodeports: "0"
"#
    );
    base + extra
}

/// Renders the chart with helm and applies it as the admin (the CRD too), except the manager's
/// Deployment; returns the policy file the Deployment would mount.
pub(crate) fn install_chart(dir: &Path) -> PathBuf {
    install_chart_with(dir, "")
}

/// [`install_chart`] with more top-level values (YAML) than this file's own.
pub(crate) fn install_chart_with(dir: &Path, extra_values: &str) -> PathBuf {
    let values_file = dir.join("values.yaml");
    std::fs::write(&values_file, values(extra_values)).unwrap();
    let version: serde_json::Value =
        serde_json::from_str(&kubectl_ok(&["version", "-o", "json"])).unwrap();
    let server_version = version["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/vkube");
    let out = Command::new(bin("helm"))
        .args(["template", "vkube"])
        .arg(&chart)
        .args(["--namespace", RELEASE_NS, "--kube-version", &server_version])
        .arg("-f")
        .arg(&values_file)
        .output()
        .expect("running helm (hack/build-components.sh builds it)");
    assert!(out.status.success(), "helm template: {}", text(&out));
    let rendered = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut policy = None;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&rendered) {
        let v: serde_json::Value = match serde::Deserialize::deserialize(doc) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if v.is_null() || v["kind"] == "Deployment" {
            continue;
        }
        if v["kind"] == "ConfigMap" && v["metadata"]["name"] == "vkube-policy" {
            policy = v["data"]["policy.yaml"].as_str().map(str::to_string);
        }
        docs.push(serde_yaml::to_string(&v).unwrap());
    }
    let _ = kubectl(&["create", "namespace", RELEASE_NS]);
    let crd = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/crd.yaml");
    let out = kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        crd.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "CRD: {}", text(&out));
    let out = kubectl_in(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        &docs.join("---\n"),
    );
    assert!(out.status.success(), "applying the chart: {}", text(&out));
    // A manager the platform test installed with helm would reconcile alongside ours.
    let _ = kubectl(&[
        "-n",
        RELEASE_NS,
        "scale",
        "deployment",
        "vkube-manager",
        "--replicas=0",
    ]);
    common::eventually_blocking(
        "no manager pod of an earlier helm install",
        Duration::from_secs(60),
        || {
            let pods = jsonpath(
                &[
                    "-n",
                    RELEASE_NS,
                    "get",
                    "pods",
                    "-l",
                    "app.kubernetes.io/component=manager",
                ],
                "{.items[*].metadata.name}",
            );
            pods.is_empty().then_some(())
        },
    );
    for sa in ["mallory", "bob"] {
        let _ = kubectl(&["create", "namespace", DEVS_NS]);
        let _ = kubectl(&["-n", DEVS_NS, "create", "serviceaccount", sa]);
    }
    // Admission policies take effect once the API server has loaded them: wait for both (at
    // most a while: a missing policy is for the tests to find, not for this wait).
    let loaded = |probe: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !probe() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    loaded(&|| {
        let out = as_manager(
            &["create", "namespace", "attack-probe", "--dry-run=server"],
            None,
        );
        String::from_utf8_lossy(&out.stderr).contains("vkube-manager-guard")
    });
    loaded(&|| {
        let out = kubectl_in(
            &["create", "--dry-run=server", "-f", "-"],
            &vc_version_probe(),
        );
        String::from_utf8_lossy(&out.stderr).contains("is not allowed")
    });
    let path = dir.join("policy.yaml");
    std::fs::write(
        &path,
        policy.expect("the chart renders the policy ConfigMap"),
    )
    .unwrap();
    path
}

/// A VirtualCluster the chart's admission policy refuses for its version alone.
fn vc_version_probe() -> String {
    "apiVersion: vkube.dev/v1alpha1\nkind: VirtualCluster\nmetadata: {name: attack-probe}\nspec: {kubernetesVersion: \"0.1\"}\n".into()
}

pub(crate) fn vc_yaml(name: &str, owner: &str) -> String {
    format!(
        "apiVersion: vkube.dev/v1alpha1\nkind: VirtualCluster\nmetadata: {{name: \"{name}\", annotations: {{vkube.dev/owner: \"{owner}\"}}}}\nspec: {{}}\n"
    )
}

/// `vkube manager` as a local process with the chart's ServiceAccount token.
struct Manager {
    child: Child,
    log: PathBuf,
    /// Its `/metrics` listener on the loopback.
    metrics_port: u16,
}

/// Where the local manager's waker says it is: a documentation address (TEST-NET-1), since
/// EndpointSlices refuse loopback and nothing routes to it here anyway (no kube-proxy on kwok
/// nodes): the tests connect to the waker's port on the loopback, as kube-proxy would deliver.
const WAKER_ADDRESS: &str = "192.0.2.10";

/// A range of ports around one the OS just handed out (the waker skips any in use).
fn waker_ports() -> (u16, u16) {
    let p = common::free_port();
    let first = p.saturating_sub(10).max(1025);
    (first, first.saturating_add(30))
}

impl Manager {
    fn start(dir: &Path, policy: &Path, (first, last): (u16, u16)) -> Manager {
        let token = kubectl_ok(&[
            "-n",
            RELEASE_NS,
            "create",
            "token",
            "vkube-manager",
            "--duration",
            "1h",
        ]);
        let kubeconfig = dir.join("manager.kubeconfig");
        std::fs::write(&kubeconfig, token_kubeconfig(token.trim(), None)).unwrap();
        let log = dir.join("manager.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let metrics_port = common::free_port();
        let mut cmd = Command::new(common::vkube_bin());
        cmd.args(["manager", "--policy"])
            .arg(policy)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            // Its namespace (reserved names) without a Lease: one manager at a time here.
            .args(["--lease-namespace", RELEASE_NS, "--no-leader-election"])
            .args(["--waker-address", WAKER_ADDRESS])
            .arg("--waker-ports")
            .arg(format!("{first}-{last}"))
            .arg("--metrics-bind-address")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .env("RUST_LOG", "info,kube_client::client::builder=off")
            .env("NO_COLOR", "1")
            // Usage sampled every 2 s (usage_is_metered_...), not every 30.
            .env("VKUBE_USAGE_EVERY", "2")
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        use std::os::unix::process::CommandExt;
        // Gone with the test's thread, even if the test binary is killed.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().expect("vkube manager starts");
        Manager {
            child,
            log,
            metrics_port,
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The chart installed and a manager running; other tests of this file wait their turn.
pub(crate) struct Platform {
    manager: Manager,
    policy: PathBuf,
    /// The waker's ports, the same across restarts (as the chart's values).
    waker_ports: (u16, u16),
    _dir: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

impl Platform {
    fn start() -> Platform {
        Platform::start_with("")
    }

    /// With more chart values (YAML) than this file's own.
    pub(crate) fn start_with(extra_values: &str) -> Platform {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let policy = install_chart_with(dir.path(), extra_values);
        let waker_ports = waker_ports();
        let manager = Manager::start(dir.path(), &policy, waker_ports);
        Platform {
            manager,
            policy,
            waker_ports,
            _dir: dir,
            _serial: serial,
        }
    }

    /// Stops the manager and starts a new one (a restart: nothing carried over in memory).
    fn restart_manager(&mut self) {
        let _ = self.manager.child.kill();
        let _ = self.manager.child.wait();
        self.manager = Manager::start(self._dir.path(), &self.policy, self.waker_ports);
    }

    /// Waits for a VirtualCluster's phase; returns its message.
    pub(crate) fn wait_phase(&self, name: &str, phase: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = jsonpath(&["get", "vc", name], "{.status.phase}|{.status.message}");
            if let Some((p, message)) = got.split_once('|')
                && p == phase
            {
                return message.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "virtual cluster {name} is not {phase} but {got:?}; manager log:\n{}",
                self.manager.log_tail()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub(crate) fn wait_gone(&self, name: &str) {
        common::eventually_blocking(
            &format!("virtual cluster {name} deleted"),
            Duration::from_secs(60),
            || (!exists(&["get", "vc", name])).then_some(()),
        );
    }
}

pub(crate) fn token_kubeconfig(token: &str, namespace: Option<&str>) -> String {
    let host = kube::config::Kubeconfig::read_from(admin()).unwrap();
    let cluster = host.clusters[0].cluster.clone().unwrap();
    let mut context = serde_json::json!({"cluster": "host", "user": "u"});
    if let Some(ns) = namespace {
        context["namespace"] = ns.into();
    }
    serde_yaml::to_string(&serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "host", "cluster": {
            "server": cluster.server,
            "certificate-authority-data": cluster.certificate_authority_data,
            "certificate-authority": cluster.certificate_authority,
        }}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "host", "context": context}],
        "current-context": "host",
    }))
    .unwrap()
}

/// A developer holding only the chart's vkube-developer role: a ServiceAccount of the
/// developers' namespace with its own kubeconfig and HOME.
struct Dev {
    user: String,
    home: tempfile::TempDir,
}

impl Dev {
    fn new(name: &str) -> Dev {
        let token = kubectl_ok(&["-n", DEVS_NS, "create", "token", name, "--duration", "1h"]);
        let home = tempfile::tempdir().unwrap();
        std::fs::write(
            home.path().join("config"),
            token_kubeconfig(token.trim(), None),
        )
        .unwrap();
        Dev {
            user: format!("system:serviceaccount:{DEVS_NS}:{name}"),
            home,
        }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.home.path().join("config")
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        common::kubectl(&self.kubeconfig(), args, stdin)
    }

    fn vkube(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(common::vkube_bin());
        cmd.args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.home.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        common::output_of(cmd, None)
    }

    /// Creates a VirtualCluster as this developer, with their own name as owner.
    fn create(&self, name: &str) -> Output {
        self.kubectl(&["create", "-f", "-"], Some(&vc_yaml(name, &self.user)))
    }

    fn create_ok(&self, name: &str) {
        let out = self.create(name);
        assert!(out.status.success(), "creating {name}: {}", text(&out));
    }

    /// `kubectl auth can-i` with this developer's own credentials.
    fn can_i(&self, args: &[&str]) -> bool {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        let out = self.kubectl(&all, None);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    }

    fn delete(&self, name: &str) {
        let out = self.kubectl(&["delete", "vc", name, "--wait=false"], None);
        assert!(out.status.success(), "deleting {name}: {}", text(&out));
    }
}

/// Deletes a VirtualCluster as the admin at the end, whatever happened (its finalizer too:
/// the manager may be gone by then).
pub(crate) struct Cleanup(pub(crate) String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = kubectl(&[
            "delete",
            "vc",
            &self.0,
            "--ignore-not-found",
            "--wait=false",
        ]);
        let _ = kubectl(&[
            "patch",
            "vc",
            &self.0,
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ]);
    }
}

/// A ConfigMap whose finalizer keeps its namespace terminating until released (or dropped).
struct Hold(String);

impl Hold {
    fn new(ns: &str) -> Hold {
        let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: hold, finalizers: [e2e.vkube.dev/hold]}\n";
        let out = kubectl_in(&["-n", ns, "create", "-f", "-"], yaml);
        assert!(out.status.success(), "{}", text(&out));
        Hold(ns.to_string())
    }

    fn release(&self) {
        let _ = kubectl(&[
            "-n",
            &self.0,
            "patch",
            "configmap",
            "hold",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ]);
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.release();
    }
}

/// What an attacker would change about a namespace: labels, owner references, deletion, and
/// the objects the manager makes (grants, quota, control plane).
fn namespace_fingerprint(ns: &str) -> String {
    let meta = jsonpath(
        &["get", "namespace", ns],
        "{.metadata.labels}|{.metadata.ownerReferences}|{.metadata.deletionTimestamp}|{.status.phase}",
    );
    let objects = jsonpath(
        &[
            "-n",
            ns,
            "get",
            "role,rolebinding,resourcequota,limitrange,networkpolicy,statefulset,service,serviceaccount",
        ],
        "{range .items[*]}{.kind}/{.metadata.name} {end}",
    );
    format!("{meta}\n{objects}")
}

fn assert_untouched(ns: &str, before: &str) {
    assert_eq!(
        namespace_fingerprint(ns),
        before,
        "namespace {ns} was changed"
    );
    for (kind, name) in [
        ("rolebinding", "vkube-owner"),
        ("rolebinding", "vkube-manager"),
        ("resourcequota", "vkube-tenant"),
        ("statefulset", "vkube"),
    ] {
        assert!(
            !exists(&["-n", ns, "get", kind, name]),
            "{kind} {name} appeared in {ns}"
        );
    }
}

/// Removes the chart's VirtualCluster admission binding for a while (as `admission.enabled:
/// false` would) and puts it back when dropped.
struct AdmissionOff(String);

impl AdmissionOff {
    fn new() -> AdmissionOff {
        let yaml = kubectl_ok(&[
            "get",
            "validatingadmissionpolicybinding",
            "vkube-virtualclusters",
            "-o",
            "yaml",
        ]);
        kubectl_ok(&[
            "delete",
            "validatingadmissionpolicybinding",
            "vkube-virtualclusters",
        ]);
        // Loaded into the API server's admission a moment later.
        common::eventually_blocking(
            "the VirtualCluster admission to be off",
            Duration::from_secs(30),
            || {
                let out = kubectl_in(
                    &["create", "--dry-run=server", "-f", "-"],
                    &vc_version_probe(),
                );
                out.status.success().then_some(())
            },
        );
        AdmissionOff(yaml)
    }
}

impl Drop for AdmissionOff {
    fn drop(&mut self) {
        let mut v: serde_json::Value = serde_yaml::from_str(&self.0).unwrap();
        for k in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
            "managedFields",
        ] {
            if let Some(m) = v["metadata"].as_object_mut() {
                m.remove(k);
            }
        }
        let _ = kubectl_in(&["apply", "-f", "-"], &serde_yaml::to_string(&v).unwrap());
    }
}

/// A developer names a cluster `system`: the chart's release namespace `vkube-system` would be
/// its host namespace. Refused at admission; with admission off, the manager refuses it itself,
/// and neither the namespace nor anything in it is touched, nor deleted with the cluster.
#[test]
fn a_cluster_named_system_never_touches_the_release_namespace() {
    let platform = Platform::start();
    let mallory = Dev::new("mallory");
    let before = namespace_fingerprint(RELEASE_NS);
    let out = mallory.create("system");
    assert!(!out.status.success(), "admission let `system` through");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the name system is reserved"),
        "{}",
        text(&out)
    );

    let _cleanup = Cleanup("system".into());
    {
        let _off = AdmissionOff::new();
        mallory.create_ok("system");
        let why = platform.wait_phase("system", "Refused");
        assert!(why.contains("\"system\" is reserved"), "{why}");
    }
    assert_untouched(RELEASE_NS, &before);
    // The owner got their own object, nothing in the namespace.
    assert!(mallory.can_i(&["get", "virtualclusters.vkube.dev/system"]));
    assert!(!mallory.can_i(&["get", "secrets", "-n", RELEASE_NS]));
    assert!(!mallory.can_i(&["create", "pods/portforward", "-n", RELEASE_NS]));

    mallory.delete("system");
    platform.wait_gone("system");
    assert_untouched(RELEASE_NS, &before);
    assert!(exists(&[
        "-n",
        RELEASE_NS,
        "get",
        "serviceaccount",
        "vkube-manager"
    ]));
}

/// A developer names a cluster after a tenant started with plain `vkube serve`, hoping for a
/// grant on its kubeconfig Secret (someone else's cluster-admin). Refused, no grant, nothing
/// changed, and that tenant survives the cluster's deletion.
#[test]
fn a_cluster_named_after_a_plain_serve_tenant_gets_no_grant_on_it() {
    let victim = common::Tenant::start("plain");
    let platform = Platform::start();
    let mallory = Dev::new("mallory");
    let ns = victim.namespace.clone();
    let secret = format!("secrets/vkube-{}-kubeconfig", victim.name);
    let before = namespace_fingerprint(&ns);
    let _cleanup = Cleanup(victim.name.clone());
    mallory.create_ok(&victim.name);
    let why = platform.wait_phase(&victim.name, "Refused");
    assert!(
        why.contains(&format!(
            "host namespace {ns} already exists and was not created for this virtual cluster"
        )),
        "{why}"
    );
    assert!(why.contains("choose another name"), "{why}");
    // Give a wrong grant every chance to appear: two more reconciles.
    kubectl_ok(&["annotate", "vc", &victim.name, "e2e.vkube.dev/poke=1"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !mallory.can_i(&["get", &secret, "-n", &ns]),
        "granted {secret}"
    );
    assert!(!mallory.can_i(&["create", "pods/portforward", "-n", &ns]));
    assert_untouched(&ns, &before);

    mallory.delete(&victim.name);
    platform.wait_gone(&victim.name);
    assert_untouched(&ns, &before);
    // The victim's cluster still works.
    victim.kubectl_ok(&["get", "namespaces"]);
}

/// Names refused at admission, with the reason: `system`, the admin's reserved names, and names
/// whose host namespace would not be a valid namespace name.
#[test]
fn reserved_and_invalid_names_are_refused_at_admission() {
    let _platform = Platform::start();
    let mallory = Dev::new("mallory");
    let long = "x".repeat(41);
    let _cleanup: Vec<Cleanup> = ["system", RESERVED, "a.b", long.as_str()]
        .iter()
        .map(|n| Cleanup(n.to_string()))
        .collect();
    for (name, says) in [
        ("system", "the name system is reserved"),
        (RESERVED, "is reserved"),
        ("a.b", "invalid virtual cluster name a.b"),
        (long.as_str(), "invalid virtual cluster name"),
    ] {
        let out = mallory.create(name);
        assert!(!out.status.success(), "{name} was admitted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{name}: {err}");
        assert!(!exists(&["get", "vc", name]), "{name}");
    }
    // The vkube CLI says so too (it validates before asking).
    let out = mallory.vkube(&["create", "a_b", "--wait", "1"]);
    assert!(!out.status.success());
}

/// The manager's own ServiceAccount, as a compromised manager would use it: no Secret or exec
/// outside tenant namespaces, and its bind and namespace rights stop at them (the chart's
/// admission policy vkube-manager-guard). Every write is a server-side dry run: admission and
/// RBAC decide, nothing is changed even if a defence were missing.
#[test]
fn the_managers_service_account_cannot_reach_beyond_tenant_namespaces() {
    let platform = Platform::start();
    let can = |args: &[&str]| {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        let out = as_manager(&all, None);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    for args in [
        &["get", "secrets", "-n", "kube-system"][..],
        &["list", "secrets", "--all-namespaces"],
        &["create", "pods/exec", "-n", "kube-system"],
        &["create", "pods", "-n", "kube-system"],
        &["get", "secrets", "-n", RELEASE_NS],
        &["create", "deployments", "-n", "kube-system"],
        &["impersonate", "users"],
        &["escalate", "clusterroles"],
    ] {
        assert!(!can(args), "the manager may {args:?}");
    }
    let refused = |args: &[&str], stdin: Option<&str>, says: &str| {
        let mut all = args.to_vec();
        all.push("--dry-run=server");
        let out = as_manager(&all, stdin);
        assert!(!out.status.success(), "the manager may {args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    };
    let guard = "vkube-manager-guard";
    // Its bind rights, used outside tenant namespaces.
    refused(
        &[
            "create",
            "rolebinding",
            "x",
            "-n",
            "kube-system",
            "--clusterrole",
            "vkube-serve",
            "--serviceaccount",
            "kube-system:default",
        ],
        None,
        guard,
    );
    refused(
        &[
            "create",
            "rolebinding",
            "x",
            "-n",
            "kube-system",
            "--clusterrole",
            "vkube-manager-tenant",
            "--serviceaccount",
            &format!("{RELEASE_NS}:vkube-manager"),
        ],
        None,
        guard,
    );
    refused(
        &[
            "create",
            "clusterrolebinding",
            "x",
            "--clusterrole",
            "vkube-manager-tenant",
            "--serviceaccount",
            &format!("{RELEASE_NS}:vkube-manager"),
        ],
        None,
        guard,
    );
    // Roles it may not bind at all.
    refused(
        &[
            "create",
            "rolebinding",
            "x",
            "-n",
            "kube-system",
            "--clusterrole",
            "cluster-admin",
            "--serviceaccount",
            "kube-system:default",
        ],
        None,
        "attempting to grant RBAC permissions not currently held",
    );
    // Namespaces: no other, no relabelling into a tenant, no deleting, no privileged tenant.
    refused(&["create", "namespace", "attack-victim"], None, guard);
    refused(
        &[
            "label",
            "namespace",
            "kube-system",
            "vkube.dev/virtual-cluster-uid=x",
        ],
        None,
        guard,
    );
    let victim = unique("attack-victim");
    kubectl_ok(&["create", "namespace", &victim]);
    refused(&["delete", "namespace", &victim], None, guard);
    kubectl_ok(&["delete", "namespace", &victim, "--wait=false"]);
    refused(
        &["create", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: vkube-attack, labels: {vkube.dev/virtual-cluster-uid: x, pod-security.kubernetes.io/enforce: privileged}}\n",
        ),
        guard,
    );
    // ClusterRoles and bindings: only the owner grants. (A role whose rules it holds, so that
    // RBAC's escalation check alone would let it through.)
    let target = unique("attack-target");
    kubectl_ok(&[
        "create",
        "clusterrole",
        &target,
        "--verb=get",
        "--resource=virtualclusters.vkube.dev",
    ]);
    refused(&["delete", "clusterrole", &target], None, guard);
    refused(
        &[
            "patch",
            "clusterrole",
            &target,
            "--type",
            "json",
            "-p",
            r#"[{"op":"add","path":"/rules/-","value":{"apiGroups":["vkube.dev"],"resources":["virtualclusters"],"verbs":["delete"]}}]"#,
        ],
        None,
        guard,
    );
    refused(
        &[
            "delete",
            "clusterrolebinding",
            "system:kube-controller-manager",
        ],
        None,
        guard,
    );
    kubectl_ok(&["delete", "clusterrole", &target]);
    refused(
        &[
            "create",
            "clusterrole",
            "vkube:owner:x",
            "--verb",
            "delete",
            "--resource",
            "virtualclusters.vkube.dev",
        ],
        None,
        guard,
    );

    // EndpointSlices: none outside tenant namespaces.
    refused(
        &["create", "-n", "kube-system", "-f", "-"],
        Some(&slice_yaml("vkube-waker", "kube-system", 1)),
        "forbidden",
    );

    // The same rights do work where they are meant to: in a tenant namespace it made.
    let mallory = Dev::new("mallory");
    let name = unique("fine");
    let _cleanup = Cleanup(name.clone());
    mallory.create_ok(&name);
    platform.wait_phase(&name, "Starting");
    let ns = format!("vkube-{name}");
    assert!(can(&["get", "secrets", "-n", &ns]));
    assert!(!can(&["create", "pods/exec", "-n", &ns]));
    // The waker's slice of the API Service, and nothing else: not another Service's (it would
    // take over a tenant's Service), not under another name, not with more ports.
    let waker_slice = |name: &str, service: &str, ports: usize| {
        let mut yaml = slice_yaml(name, service, ports);
        yaml = yaml.replace(
            "UID",
            &jsonpath(
                &["get", "ns", &ns],
                "{.metadata.labels.vkube\\.dev/virtual-cluster-uid}",
            ),
        );
        yaml
    };
    let out = as_manager(
        &["create", "-n", &ns, "--dry-run=server", "-f", "-"],
        Some(&waker_slice("vkube-waker", &ns, 1)),
    );
    assert!(out.status.success(), "the waker's slice: {}", text(&out));
    for (slice, service, ports) in [
        ("vkube-waker", "web-x-default-x-victim", 1),
        ("other", ns.as_str(), 1),
        ("vkube-waker", ns.as_str(), 2),
    ] {
        refused(
            &["create", "-n", &ns, "-f", "-"],
            Some(&waker_slice(slice, service, ports)),
            guard,
        );
    }
    // The activity Lease it reads, never writes (only vkube serve may).
    assert!(can(&["get", "leases/vkube-activity", "-n", &ns]));
    assert!(!can(&["update", "leases/vkube-activity", "-n", &ns]));
    let out = as_manager(
        &[
            "create",
            "rolebinding",
            "x",
            "-n",
            &ns,
            "--clusterrole",
            "vkube-serve",
            "--serviceaccount",
            &format!("{ns}:vkube"),
            "--dry-run=server",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    mallory.delete(&name);
    platform.wait_gone(&name);
}

/// An EndpointSlice as the waker's (labelled for `service`, managed by vkube-manager, the
/// cluster's UID as `UID`), with `ports` ports.
fn slice_yaml(name: &str, service: &str, ports: usize) -> String {
    let ports: Vec<String> = (0..ports)
        .map(|i| {
            let port_name = if i == 0 {
                "https".to_string()
            } else {
                format!("p{i}")
            };
            format!("{{name: {port_name}, port: {}, protocol: TCP}}", 20000 + i)
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, labels: {{kubernetes.io/service-name: {service}, endpointslice.kubernetes.io/managed-by: vkube-manager, vkube.dev/virtual-cluster-uid: UID}}}}\naddressType: IPv4\nendpoints: [{{addresses: [{WAKER_ADDRESS}], conditions: {{ready: true}}}}]\nports: [{}]\n",
        ports.join(", ")
    )
}

/// Sleep as the manager does it against the real host API (kwok nodes: the control plane
/// never really starts, which this needs not): another developer can neither put the cluster
/// to sleep nor wake it; `vkube sleep` stops it and gives its API Service the waker's endpoint,
/// the Service itself unchanged; a manager restarted while it sleeps finds the waker's port in
/// the EndpointSlice and listens there again; a port scan or a plain-text client wakes nothing;
/// a TLS client's connection (as kube-proxy would deliver it) is held and wakes the cluster; a
/// manager restarted mid-wake holds new connections on the same port and carries the wake on;
/// a paused cluster has no waker at all: held connections are closed, new ones refused, and it
/// stays paused.
#[test]
fn a_sleeping_cluster_leads_to_the_waker_and_a_paused_one_to_nothing() {
    use std::io::{Read, Write};
    let mut platform = Platform::start();
    let mallory = Dev::new("mallory");
    let bob = Dev::new("bob");
    let name = unique("nap");
    let _cleanup = Cleanup(name.clone());
    mallory.create_ok(&name);
    platform.wait_phase(&name, "Starting");
    let ns = format!("vkube-{name}");
    let service = format!("vkube-{name}");
    let service_before = jsonpath(
        &["get", "service", &service, "-n", &ns],
        "{.spec.clusterIP} {.spec.selector}",
    );
    // Another developer: neither `vkube sleep` nor `vkube wake` of mallory's cluster.
    for verb in ["sleep", "wake"] {
        let out = bob.vkube(&[verb, &name, "--wait", "5"]);
        assert!(!out.status.success(), "bob could {verb} it: {}", text(&out));
        assert!(text(&out).contains("is not yours"), "{}", text(&out));
    }
    let annotations = jsonpath(&["get", "vc", &name], "{.metadata.annotations}");
    assert!(
        !annotations.contains("sleep-requested") && !annotations.contains("wake-requested"),
        "{annotations}"
    );
    let sleep = mallory.vkube(&["sleep", &name, "--wait", "60"]);
    assert!(sleep.status.success(), "vkube sleep: {}", text(&sleep));
    let condition = |field: &str| {
        jsonpath(
            &["get", "vc", &name],
            &format!("{{.status.conditions[?(@.type==\"Sleeping\")].{field}}}"),
        )
    };
    assert_eq!(condition("status"), "True");
    assert_eq!(condition("reason"), "Manual");
    assert_eq!(
        jsonpath(
            &["get", "statefulset", "vkube", "-n", &ns],
            "{.spec.replicas}"
        ),
        "0"
    );
    assert_eq!(
        jsonpath(
            &["get", "service", &service, "-n", &ns],
            "{.spec.clusterIP} {.spec.selector}"
        ),
        service_before,
        "the Service itself does not change"
    );
    let waker_port = || {
        jsonpath(
            &["get", "endpointslice", "vkube-waker", "-n", &ns],
            "{.endpoints[0].addresses[0]} {.ports[0].name} {.ports[0].port} {.metadata.labels.kubernetes\\.io/service-name}",
        )
    };
    let slice = waker_port();
    let parts: Vec<&str> = slice.split(' ').collect();
    assert_eq!(parts.len(), 4, "{slice}");
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        (WAKER_ADDRESS, "https", service.as_str())
    );
    let port: u16 = parts[2].parse().unwrap();

    // The manager restarts while the cluster sleeps: it listens on the slice's port again.
    platform.restart_manager();
    let at = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let scan =
        common::eventually_blocking("the new manager's waker", Duration::from_secs(60), || {
            std::net::TcpStream::connect(at).ok()
        });
    assert_eq!(waker_port(), slice, "the same port, from the slice itself");
    // A port scan (connect, close) and a plain-text client wake nothing.
    drop(scan);
    let mut plain = std::net::TcpStream::connect(at).unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut byte = [0u8; 1];
    let n = plain.read(&mut byte);
    assert!(matches!(n, Ok(0) | Err(_)), "plain text is closed: {n:?}");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        jsonpath(
            &["get", "statefulset", "vkube", "-n", &ns],
            "{.spec.replicas}"
        ),
        "0",
        "no TLS client, no wake"
    );
    assert_eq!(condition("status"), "True");
    // A TLS client's connection (the first bytes of a ClientHello) is held (nothing
    // answered) and wakes the cluster.
    let mut held = std::net::TcpStream::connect(at).unwrap();
    held.write_all(&[0x16, 0x03, 0x01]).unwrap();
    common::eventually_blocking("woken by the held request", Duration::from_secs(30), || {
        (jsonpath(
            &["get", "statefulset", "vkube", "-n", &ns],
            "{.spec.replicas}",
        ) == "1")
            .then_some(())
    });
    let message = platform.wait_phase(&name, "Starting");
    assert!(message.contains("waiting"), "{message}");
    assert_eq!(condition("status"), "False");
    assert_eq!(condition("reason"), "Awake");
    held.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        held.read(&mut byte).is_err(),
        "a held connection is not answered while the control plane starts"
    );
    // The manager restarts mid-wake (the control plane not up yet, the slice still there):
    // the new one listens on the same port, holds what arrives, and the wake goes on.
    drop(held);
    platform.restart_manager();
    let mut held = common::eventually_blocking(
        "the waker after a restart mid-wake",
        Duration::from_secs(60),
        || std::net::TcpStream::connect(at).ok(),
    );
    held.write_all(&[0x16, 0x03, 0x01]).unwrap();
    assert_eq!(waker_port(), slice, "the same port mid-wake");
    common::eventually_blocking(
        "the held request counted again",
        Duration::from_secs(30),
        || {
            let message = platform.wait_phase(&name, "Starting");
            message.contains("1 requests waiting").then_some(())
        },
    );
    assert_eq!(condition("reason"), "Awake");
    held.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(held.read(&mut byte).is_err(), "held, not answered");
    let events = jsonpath(
        &[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            &format!("involvedObject.name={name}"),
        ],
        "{range .items[*]}{.reason} {end}",
    );
    assert!(
        events.contains("Sleeping") && events.contains("Waking"),
        "{events}"
    );

    // Paused: the waker goes, with what it holds; the port refuses; the cluster stays paused.
    let pause = mallory.vkube(&["pause", &name, "--wait", "60"]);
    assert!(pause.status.success(), "vkube pause: {}", text(&pause));
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = held.read(&mut byte);
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "the held connection is closed: {n:?}"
    );
    assert!(!exists(&["get", "endpointslice", "vkube-waker", "-n", &ns]));
    assert!(
        std::net::TcpStream::connect(at).is_err(),
        "nothing listens for a paused cluster"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(platform.wait_phase(&name, "Paused"), "paused by the owner");
    assert_eq!(
        jsonpath(
            &["get", "statefulset", "vkube", "-n", &ns],
            "{.spec.replicas}"
        ),
        "0"
    );
    mallory.delete(&name);
    platform.wait_gone(&name);
}

/// The tenant's syncer (its host ServiceAccount) creating Services and Secrets: the quota
/// admits what the admin allows on top of the control plane's own, and refuses the next one;
/// NodePorts are refused by default; containers get a default memory limit.
#[test]
fn the_tenant_quota_refuses_the_next_service_and_secret() {
    let platform = Platform::start();
    let mallory = Dev::new("mallory");
    let name = unique("quota");
    let _cleanup = Cleanup(name.clone());
    mallory.create_ok(&name);
    platform.wait_phase(&name, "Starting");
    let ns = format!("vkube-{name}");
    let syncer = format!("system:serviceaccount:{ns}:vkube");
    let as_syncer = |args: &[&str], stdin: Option<&str>| {
        let mut all = vec!["--as", syncer.as_str(), "-n", ns.as_str()];
        all.extend_from_slice(args);
        common::kubectl(&admin(), &all, stdin)
    };
    // The control plane's API Service exists; the tenant may add exactly QUOTA_SERVICES.
    for i in 0..QUOTA_SERVICES {
        let out = as_syncer(
            &[
                "create",
                "service",
                "clusterip",
                &format!("s{i}"),
                "--tcp=80",
            ],
            None,
        );
        assert!(out.status.success(), "service {i}: {}", text(&out));
    }
    let out = as_syncer(
        &["create", "service", "clusterip", "one-too-many", "--tcp=80"],
        None,
    );
    assert!(
        !out.status.success(),
        "the quota let an extra Service through"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exceeded quota"),
        "{}",
        text(&out)
    );
    // vkube serve's own two Secrets, then the tenant's QUOTA_SECRETS, then no more.
    for s in [
        format!("vkube-{name}-certs"),
        format!("vkube-{name}-kubeconfig"),
    ] {
        let out = as_syncer(
            &["create", "secret", "generic", &s, "--from-literal=k=v"],
            None,
        );
        assert!(out.status.success(), "{s}: {}", text(&out));
    }
    for i in 0..QUOTA_SECRETS {
        let out = as_syncer(
            &[
                "create",
                "secret",
                "generic",
                &format!("t{i}"),
                "--from-literal=k=v",
            ],
            None,
        );
        assert!(out.status.success(), "secret {i}: {}", text(&out));
    }
    let out = as_syncer(
        &[
            "create",
            "secret",
            "generic",
            "one-too-many",
            "--from-literal=k=v",
        ],
        None,
    );
    assert!(
        !out.status.success(),
        "the quota let an extra Secret through"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exceeded quota"),
        "{}",
        text(&out)
    );
    // A NodePort (the syncer passes them only when the admin allows them; the quota holds even
    // then unless services.nodeports is raised).
    let out = as_syncer(
        &[
            "create",
            "service",
            "nodeport",
            "np",
            "--tcp=80",
            "--dry-run=server",
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("services.nodeports"),
        "{}",
        text(&out)
    );
    // A pod that sets no memory limit gets the default one (limits.memory is counted).
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: registry.local/x:1}]}\n";
    let out = as_syncer(
        &[
            "create",
            "--dry-run=server",
            "-o",
            "jsonpath={.spec.containers[0].resources.limits.memory}",
            "-f",
            "-",
        ],
        Some(pod),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "256Mi");
    mallory.delete(&name);
    platform.wait_gone(&name);
}

/// An owner deletes their cluster, strips its finalizer so nothing is cleaned up, and someone
/// else creates a cluster of the same name while the old namespace is still terminating: the
/// old owner's grants do not reach the new cluster, and the new one waits for the old
/// namespace instead of adopting it.
#[test]
fn a_cluster_re_created_under_the_same_name_inherits_nothing() {
    let platform = Platform::start();
    let mallory = Dev::new("mallory");
    let bob = Dev::new("bob");
    let name = unique("again");
    let ns = format!("vkube-{name}");
    let _cleanup = Cleanup(name.clone());
    mallory.create_ok(&name);
    platform.wait_phase(&name, "Starting");
    let first_uid = jsonpath(&["get", "vc", &name], "{.metadata.uid}");
    // Something in the namespace keeps it terminating.
    let hold = Hold::new(&ns);
    mallory.delete(&name);
    let out = mallory.kubectl(
        &[
            "patch",
            "vc",
            &name,
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ],
        None,
    );
    assert!(
        out.status.success(),
        "the owner may remove the finalizer: {}",
        text(&out)
    );
    platform.wait_gone(&name);
    // The garbage collector takes the old grant away (owner reference with the old UID).
    common::eventually_blocking(
        "the old owner's grant to go",
        Duration::from_secs(30),
        || (!mallory.can_i(&["get", &format!("virtualclusters.vkube.dev/{name}")])).then_some(()),
    );
    common::eventually_blocking(
        "the old namespace to be terminating",
        Duration::from_secs(60),
        || {
            (!jsonpath(&["get", "namespace", &ns], "{.metadata.deletionTimestamp}").is_empty())
                .then_some(())
        },
    );

    bob.create_ok(&name);
    let why = platform.wait_phase(&name, "Provisioning");
    assert!(
        why.contains("earlier virtual cluster") || why.contains("being deleted"),
        "{why}"
    );
    let second_uid = jsonpath(&["get", "vc", &name], "{.metadata.uid}");
    assert_ne!(first_uid, second_uid);
    assert!(bob.can_i(&["get", &format!("virtualclusters.vkube.dev/{name}")]));
    assert!(!mallory.can_i(&["get", &format!("virtualclusters.vkube.dev/{name}")]));
    assert!(!mallory.can_i(&["delete", &format!("virtualclusters.vkube.dev/{name}")]));
    // Still the old namespace: nothing of bob's went into it.
    assert_eq!(
        jsonpath(
            &["get", "namespace", &ns],
            "{.metadata.labels.vkube\\.dev/virtual-cluster-uid}"
        ),
        first_uid
    );

    hold.release();
    platform.wait_phase(&name, "Starting");
    assert_eq!(
        jsonpath(
            &["get", "namespace", &ns],
            "{.metadata.labels.vkube\\.dev/virtual-cluster-uid}"
        ),
        second_uid
    );
    let owner_subject = jsonpath(
        &["-n", &ns, "get", "rolebinding", "vkube-owner"],
        "{.subjects[0].name}",
    );
    assert_eq!(owner_subject, bob.user);
    assert!(!mallory.can_i(&[
        "get",
        &format!("secrets/vkube-{name}-kubeconfig"),
        "-n",
        &ns
    ]));
    bob.delete(&name);
    platform.wait_gone(&name);
}

/// `vkube rotate-credentials` as the owner: the annotation is set (admission refuses a value
/// that is not a time) and the manager hands it to the control plane, which restarts with it.
/// (The control plane never runs on kwok nodes: the certificate itself is checked with a plain
/// `vkube serve` below and on the real node in platform.rs.)
#[test]
fn a_credential_rotation_reaches_the_control_plane() {
    let platform = Platform::start();
    let mallory = Dev::new("mallory");
    let name = unique("rot");
    let _cleanup = Cleanup(name.clone());
    mallory.create_ok(&name);
    platform.wait_phase(&name, "Starting");
    let out = mallory.kubectl(
        &[
            "annotate",
            "vc",
            &name,
            "vkube.dev/credentials-not-before=yesterday",
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("RFC 3339"),
        "{}",
        text(&out)
    );
    let out = mallory.vkube(&["rotate-credentials", &name, "--wait", "2"]);
    assert!(
        !out.status.success(),
        "no control plane runs here: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has not published a new kubeconfig"),
        "{}",
        text(&out)
    );
    let epoch = jsonpath(
        &["get", "vc", &name],
        "{.metadata.annotations.vkube\\.dev/credentials-not-before}",
    );
    assert!(epoch.ends_with('Z') && epoch.len() == 20, "{epoch}");
    common::eventually_blocking(
        "the control plane to get the epoch",
        Duration::from_secs(30),
        || {
            let args = jsonpath(
                &[
                    "-n",
                    &format!("vkube-{name}"),
                    "get",
                    "statefulset",
                    "vkube",
                ],
                "{.spec.template.spec.containers[0].args}",
            );
            args.contains(&epoch).then_some(())
        },
    );
    mallory.delete(&name);
    platform.wait_gone(&name);
}

fn now_rfc3339() -> String {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    k8s_openapi::jiff::Timestamp::from_second(now)
        .unwrap()
        .to_string()
}

fn decode(b64: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .unwrap()
}

/// A kubeconfig like `base` with another client certificate and key (PEM).
fn with_client_cert(base: &Path, cert_pem: &[u8], key_pem: &[u8], out: &Path) {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut kc = kube::config::Kubeconfig::read_from(base).unwrap();
    let auth = kc.auth_infos[0].auth_info.as_mut().unwrap();
    auth.client_certificate_data = Some(b64(cert_pem));
    auth.client_key_data = Some(b64(key_pem).into());
    std::fs::write(out, serde_yaml::to_string(&kc).unwrap()).unwrap();
}

async fn unauthorized_message(kubeconfig: &Path) -> String {
    let client = common::client_for(kubeconfig).await;
    let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
    match api.list(&Default::default()).await {
        Err(kube::Error::Api(s)) if s.code == 401 => s.message,
        other => panic!("expected 401 Unauthorized, got {other:?}"),
    }
}

/// A leaked admin kubeconfig of a plain `vkube serve` tenant is revoked with
/// `--credentials-not-before`: the proxy refuses the old certificate with the reason, the new
/// one (published again) works, the admin is cluster-admin through RBAC (a binding vkube puts
/// back if deleted), a system:masters certificate signed by the tenant CA is refused, and no
/// certificate or key is ever logged.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_admin_certificate_is_refused_and_the_new_one_works() {
    let mut t = common::Tenant::start("cred");
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.kubeconfig");
    std::fs::copy(&t.kubeconfig, &old).unwrap();
    let whoami = t.kubectl_ok(&["auth", "whoami", "-o", "jsonpath={.status.userInfo.groups}"]);
    assert!(whoami.contains("vkube:admins"), "{whoami}");
    assert!(!whoami.contains("system:masters"), "{whoami}");

    let epoch = now_rfc3339();
    t.stop();
    t.extra_args = vec!["--credentials-not-before".into(), epoch.clone()];
    t.spawn();
    t.wait_ready();
    t.kubectl_ok(&["get", "namespaces"]);
    let refused = unauthorized_message(&old).await;
    assert!(
        refused.contains("issued before the credentials"),
        "{refused}"
    );
    assert!(refused.contains(&epoch), "{refused}");
    assert!(
        refused.contains(&format!("vkube kubeconfig {}", t.name)),
        "{refused}"
    );
    // The published Secret has the new one (what `vkube kubeconfig` prints).
    let published = kubectl_ok(&[
        "-n",
        &t.namespace,
        "get",
        "secret",
        &format!("vkube-{}-kubeconfig", t.name),
        "-o",
        "jsonpath={.data.config}",
    ]);
    assert_eq!(decode(&published), std::fs::read(&t.kubeconfig).unwrap());
    assert_ne!(
        std::fs::read(&old).unwrap(),
        std::fs::read(&t.kubeconfig).unwrap()
    );

    // RBAC decides: without the binding the admin has no rights, and vkube puts it back.
    t.kubectl_ok(&["delete", "clusterrolebinding", "vkube:admins"]);
    common::eventually_blocking(
        "the admin binding to come back",
        Duration::from_secs(30),
        || {
            t.kubectl(&["get", "namespaces"])
                .status
                .success()
                .then_some(())
        },
    );

    // A certificate in system:masters, signed with the tenant's own CA (what older versions
    // handed out): refused too.
    let certs = kubectl_ok(&[
        "-n",
        &t.namespace,
        "get",
        "secret",
        &format!("vkube-{}-certs", t.name),
        "-o",
        "json",
    ]);
    let certs: serde_json::Value = serde_json::from_str(&certs).unwrap();
    let ca_crt = dir.path().join("ca.crt");
    let ca_key = dir.path().join("ca.key");
    std::fs::write(&ca_crt, decode(certs["data"]["ca.crt"].as_str().unwrap())).unwrap();
    std::fs::write(&ca_key, decode(certs["data"]["ca.key"].as_str().unwrap())).unwrap();
    let key = dir.path().join("masters.key");
    let csr = dir.path().join("masters.csr");
    let crt = dir.path().join("masters.crt");
    let ext = dir.path().join("ext.cnf");
    std::fs::write(&ext, "extendedKeyUsage=clientAuth\n").unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
    };
    let p = |p: &Path| p.to_str().unwrap().to_string();
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &p(&key),
    ]);
    openssl(&[
        "req",
        "-new",
        "-key",
        &p(&key),
        "-subj",
        "/O=system:masters/CN=mallory",
        "-out",
        &p(&csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&ca_crt),
        "-CAkey",
        &p(&ca_key),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &p(&ext),
        "-out",
        &p(&crt),
    ]);
    let masters = dir.path().join("masters.kubeconfig");
    with_client_cert(
        &t.kubeconfig,
        &std::fs::read(&crt).unwrap(),
        &std::fs::read(&key).unwrap(),
        &masters,
    );
    let refused = unauthorized_message(&masters).await;
    assert!(
        refused.contains("system:masters are not accepted"),
        "{refused}"
    );

    let log = std::fs::read_to_string(&t.log).unwrap();
    for secret in ["PRIVATE KEY", "BEGIN CERTIFICATE", "client-key-data"] {
        assert!(!log.contains(secret), "the log shows {secret}");
    }
}

/// A host pod of `tenant` as its syncer makes it (ownership label), or, without a tenant, as the
/// platform's own (the control plane); kwok reports `cpu_used` for each container.
fn host_pod(ns: &str, name: &str, tenant: Option<&str>, cpu: &str, cpu_used: &str) {
    let labels = tenant
        .map(|t| format!("labels: {{vkube.dev/managed-by: {t}, vkube.dev/namespace: default}}, "))
        .unwrap_or_default();
    let out = kubectl_in(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, {labels}annotations: {{kwok.x-k8s.io/usage-cpu: {cpu_used}}}}}\nspec:\n  containers:\n  - {{name: c, image: busybox, resources: {{requests: {{cpu: {cpu}, memory: 64Mi}}, limits: {{memory: 64Mi}}}}}}\n"
        ),
    );
    assert!(out.status.success(), "host pod {ns}/{name}: {}", text(&out));
}

fn usage_field(name: &str, field: &str) -> String {
    jsonpath(&["get", "vc", name], &format!("{{.status.usage.{field}}}"))
}

/// Per-tenant usage: metered by the manager from host objects only (the tenant's ownership
/// label; the platform's own pods do not count), measured CPU from the host's metrics-server,
/// totals that grow and survive a manager restart, a status the owner cannot write, and
/// `vkube usage` showing every tenant to the admin and each owner only their own.
#[test]
fn usage_is_metered_from_host_objects_and_each_owner_sees_only_their_own() {
    let mut platform = Platform::start();
    let mallory = Dev::new("mallory");
    let bob = Dev::new("bob");
    let (m, b) = (unique("use-m"), unique("use-b"));
    let _cleanup = (Cleanup(m.clone()), Cleanup(b.clone()));
    mallory.create_ok(&m);
    bob.create_ok(&b);
    platform.wait_phase(&m, "Starting");
    platform.wait_phase(&b, "Starting");
    let (mns, bns) = (format!("vkube-{m}"), format!("vkube-{b}"));
    host_pod(&mns, "web-1", Some(&m), "100m", "50m");
    host_pod(&mns, "web-2", Some(&m), "100m", "50m");
    // The platform's (no ownership label) and another tenant's label in m's namespace: not m's.
    host_pod(&mns, "platform", None, "200m", "500m");
    host_pod(&mns, "not-mine", Some(&b), "200m", "500m");
    host_pod(&bns, "job", Some(&b), "250m", "10m");
    let out = kubectl_in(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: data, namespace: {mns}, labels: {{vkube.dev/managed-by: {m}}}}}\nspec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}\n"
        ),
    );
    assert!(out.status.success(), "claim: {}", text(&out));

    common::eventually_blocking("m's requests metered", Duration::from_secs(60), || {
        (usage_field(&m, "pods") == "2"
            && usage_field(&m, "cpuRequested") == "200m"
            && usage_field(&m, "memoryRequested") == "128Mi"
            && usage_field(&m, "storageClaimed") == "1Gi")
            .then_some(())
    });
    // metrics-server needs two scrapes of each pod (15 s apart); until then m's pods have no
    // numbers and count as 0.
    common::eventually_blocking(
        "m's measured CPU: its two pods' 100m",
        Duration::from_secs(120),
        || {
            let used: u32 = usage_field(&m, "cpuUsed")
                .trim_end_matches('m')
                .parse()
                .unwrap_or(0);
            (80..=120).contains(&used).then_some(())
        },
    );
    common::eventually_blocking("b's requests metered", Duration::from_secs(60), || {
        (usage_field(&b, "pods") == "1" && usage_field(&b, "cpuRequested") == "250m").then_some(())
    });
    // The same figures as metrics labelled by tenant, for the admin's scraper.
    common::eventually_blocking(
        "usage on the manager's /metrics",
        Duration::from_secs(30),
        || {
            let (code, body) =
                crate::observability::get(platform.manager.metrics_port, "/metrics")?;
            (code == 200
                && body.contains(&format!("vkube_manager_tenant_pods{{tenant=\"{m}\"}} 2.0"))
                && body.contains(&format!("vkube_manager_tenant_pods{{tenant=\"{b}\"}} 1.0"))
                && body.contains(&format!(
                    "vkube_manager_tenant_cpu_requested_cores{{tenant=\"{m}\"}} 0.2"
                )))
            .then_some(())
        },
    );

    // Totals grow with time.
    let first: u64 = usage_field(&m, "podSeconds").parse().unwrap_or(0);
    let since = usage_field(&m, "since");
    common::eventually_blocking("pod-seconds growing", Duration::from_secs(30), || {
        let now: u64 = usage_field(&m, "podSeconds").parse().unwrap_or(0);
        (now >= first + 4).then_some(())
    });

    // The owner cannot write the status.
    let out = mallory.kubectl(
        &[
            "patch",
            "vc",
            &m,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"usage":{"podSeconds":0,"pods":0}}}"#,
        ],
        None,
    );
    assert!(
        !out.status.success(),
        "the owner wrote its usage: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("forbidden"),
        "{}",
        text(&out)
    );

    // A manager restart keeps the totals (they live in the status).
    let before: u64 = usage_field(&m, "podSeconds").parse().unwrap_or(0);
    platform.restart_manager();
    common::eventually_blocking(
        "pod-seconds growing after a restart",
        Duration::from_secs(60),
        || {
            let now: u64 = usage_field(&m, "podSeconds").parse().unwrap_or(0);
            (now > before).then_some(())
        },
    );
    assert_eq!(usage_field(&m, "since"), since, "metering started over");

    // vkube usage: each owner sees only their own, the admin everyone.
    let names = |out: &Output| -> Vec<String> {
        assert!(out.status.success(), "vkube usage: {}", text(out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["usage"].is_object())
            .map(|i| i["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let seen = names(&mallory.vkube(&["usage", "-o", "json"]));
    assert_eq!(seen, vec![m.clone()]);
    let seen = names(&bob.vkube(&["usage", "-o", "json"]));
    assert_eq!(seen, vec![b.clone()]);
    let mut cmd = Command::new(common::vkube_bin());
    cmd.args(["usage", "-o", "json", "--kubeconfig"])
        .arg(admin());
    let seen = names(&common::output_of(cmd, None));
    assert!(seen.contains(&m) && seen.contains(&b), "{seen:?}");
    let table = mallory.vkube(&["usage"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains(&m) && table.contains("200m") && !table.contains(&b),
        "{table}"
    );
}
