//! Test harness for e2e tests: a real host cluster (from hack/host-cluster.sh, found through
//! VKUBE_E2E_HOST_KUBECONFIG) and `vkube serve` started as the real binary, one per tenant.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Env {
    pub host_kubeconfig: PathBuf,
    pub bin_dir: PathBuf,
}

pub fn env() -> Env {
    let host_kubeconfig = std::env::var_os("VKUBE_E2E_HOST_KUBECONFIG")
        .map(PathBuf::from)
        .expect(
            "VKUBE_E2E_HOST_KUBECONFIG is not set: the e2e tests need a real host cluster. \
             Run them with hack/test.sh (or hack/host-cluster.sh up and export the printed path).",
        );
    let bin_dir = std::env::var_os("VKUBE_BIN_DIR")
        .map(PathBuf::from)
        .expect("VKUBE_BIN_DIR is not set: point it at the output of hack/build-components.sh");
    Env {
        host_kubeconfig,
        bin_dir,
    }
}

pub fn vkube_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vkube"))
}

pub fn kubectl_bin() -> PathBuf {
    env().bin_dir.join("kubectl")
}

/// A short random suffix so reruns against the same host cluster never collide.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!(
        "{prefix}-{:05x}",
        (nanos ^ std::process::id() ^ (n << 16)) & 0xfffff
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(kubectl_bin());
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    output_of(cmd, stdin)
}

/// Runs `cmd` to its end, feeding it `stdin` (then closed) if given; stdout and stderr captured.
pub fn output_of(mut cmd: Command, stdin: Option<&str>) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("the command runs");
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

/// kubectl that must succeed; returns stdout.
pub fn kubectl_ok(kubeconfig: &Path, args: &[&str]) -> String {
    let out = kubectl(kubeconfig, args, None);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm template` of the repository's chart with `--set` values, as JSON documents.
pub fn helm_template(sets: &[&str]) -> Vec<serde_json::Value> {
    let mut cmd = Command::new(env().bin_dir.join("helm"));
    cmd.args(["template", "vkube"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/vkube"))
        .args(["--namespace", "vkube-system"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&out.stdout))
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect()
}

/// [`eventually`] for blocking checks (kubectl, helm): `f` until it gives a value, every 250 ms.
pub fn eventually_blocking<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub async fn host_client() -> kube::Client {
    vkube::tls::install_crypto_provider();
    let yaml = std::fs::read_to_string(env().host_kubeconfig).unwrap();
    vkube::kubeconfig::client_from_yaml(&yaml).await.unwrap()
}

pub async fn client_for(kubeconfig: &Path) -> kube::Client {
    vkube::tls::install_crypto_provider();
    let yaml = std::fs::read_to_string(kubeconfig).unwrap();
    vkube::kubeconfig::client_from_yaml(&yaml).await.unwrap()
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One `vkube serve` process.
pub struct Tenant {
    pub name: String,
    pub namespace: String,
    pub dir: PathBuf,
    pub port: u16,
    pub kubeconfig: PathBuf,
    pub log: PathBuf,
    /// The proxy listens here (the port is `port`).
    pub listen_ip: String,
    /// Appended to the `vkube serve` arguments (policy and network flags).
    pub extra_args: Vec<String>,
    /// Whether the cluster-read ClusterRoleBinding was made (and must go with the tenant).
    cluster_read: bool,
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
}

impl Tenant {
    /// Starts a new tenant with a fresh data directory and waits until it is ready.
    pub fn start(prefix: &str) -> Tenant {
        let mut t = Tenant::new(prefix);
        t.spawn();
        t.wait_ready();
        t
    }

    /// Like `start`, listening on `listen_ip` and with extra `vkube serve` arguments.
    pub fn start_with(prefix: &str, listen_ip: &str, extra_args: &[&str]) -> Tenant {
        let mut t = Tenant::new(prefix);
        t.listen_ip = listen_ip.into();
        t.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        t.spawn();
        t.wait_ready();
        t
    }

    /// A tenant that is not started yet. Its host namespace exists, with the ServiceAccount and
    /// Role of manifests/serve-rbac.yaml: `vkube serve` runs with exactly those rights.
    pub fn new(prefix: &str) -> Tenant {
        Tenant::named(&unique(prefix))
    }

    /// [`Tenant::new`] under exactly `name` (tests of names fixed in golden files). A host
    /// namespace of that name left by an earlier run is waited out first.
    pub fn named(name: &str) -> Tenant {
        let namespace = format!("vkube-{name}");
        let deadline = Instant::now() + Duration::from_secs(120);
        while kubectl(
            &env().host_kubeconfig,
            &["get", "namespace", &namespace],
            None,
        )
        .status
        .success()
        {
            assert!(
                Instant::now() < deadline,
                "host namespace {namespace} of an earlier run is still there after 120 s"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let tmp = tempfile::tempdir().unwrap();
        let name = name.to_string();
        let t = Tenant {
            namespace: format!("vkube-{name}"),
            name,
            dir: tmp.path().to_path_buf(),
            port: free_port(),
            kubeconfig: tmp.path().join("kubeconfig"),
            log: tmp.path().join("serve.log"),
            listen_ip: "127.0.0.1".into(),
            extra_args: vec![],
            cluster_read: false,
            child: None,
            _tmp: Some(tmp),
        };
        t.prepare_host_namespace();
        t
    }

    /// Like `start_with` on 127.0.0.1, with the opt-in ClusterRole of
    /// manifests/serve-cluster-rbac.yaml bound to the tenant's ServiceAccount first.
    pub fn start_with_cluster_read(prefix: &str, extra_args: &[&str]) -> Tenant {
        let mut t = Tenant::new(prefix);
        t.grant_cluster_read();
        t.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        t.spawn();
        t.wait_ready();
        t
    }

    /// Binds the read-only ClusterRole (host nodes, classes, volumes) exactly as shipped.
    pub fn grant_cluster_read(&mut self) {
        let manifest = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/serve-cluster-rbac.yaml"),
        )
        .unwrap()
        .replace("NAMESPACE", &self.namespace);
        let out = kubectl(
            &env().host_kubeconfig,
            &["apply", "-f", "-"],
            Some(&manifest),
        );
        assert!(
            out.status.success(),
            "applying serve-cluster-rbac.yaml: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.cluster_read = true;
    }

    /// Path of the host kubeconfig `vkube serve` uses: the namespace-scoped ServiceAccount.
    pub fn host_kubeconfig(&self) -> PathBuf {
        self.dir.join("host-sa.kubeconfig")
    }

    fn prepare_host_namespace(&self) {
        let admin = env().host_kubeconfig;
        let manifest = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/serve-rbac.yaml"),
        )
        .unwrap()
        .replace("NAMESPACE", &self.namespace);
        kubectl_ok(&admin, &["create", "namespace", &self.namespace]);
        let out = kubectl(&admin, &["apply", "-f", "-"], Some(&manifest));
        assert!(
            out.status.success(),
            "applying serve-rbac.yaml: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = kubectl_ok(
            &admin,
            &[
                "create",
                "token",
                "vkube",
                "-n",
                &self.namespace,
                "--duration=6h",
            ],
        );
        let kc = kube::config::Kubeconfig::read_from(&admin).unwrap();
        let cluster = kc.clusters[0].cluster.clone().unwrap();
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: host\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: vkube\n  user:\n    token: {}\ncontexts:\n- name: host\n  context: {{cluster: host, user: vkube, namespace: {}}}\ncurrent-context: host\n",
            cluster.server.unwrap(),
            cluster.certificate_authority_data.unwrap(),
            token.trim(),
            self.namespace
        );
        std::fs::write(self.host_kubeconfig(), yaml).unwrap();
    }

    pub fn serve_args(&self) -> Vec<String> {
        let env = env();
        vec![
            "serve".into(),
            "--name".into(),
            self.name.clone(),
            "--host-kubeconfig".into(),
            self.host_kubeconfig().display().to_string(),
            "--bin-dir".into(),
            env.bin_dir.display().to_string(),
            "--data-dir".into(),
            self.data_dir().display().to_string(),
            "--listen".into(),
            format!("{}:{}", self.listen_ip, self.port),
            "--kubeconfig-out".into(),
            self.kubeconfig.display().to_string(),
        ]
        .into_iter()
        .chain(self.extra_args.iter().cloned())
        .collect()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(vkube_bin())
            .args(self.serve_args())
            .env("RUST_LOG", "info,kube_client::client::builder=off")
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("vkube serve starts");
        self.child = Some(child);
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Ready = the kubeconfig was published (serve writes it after /readyz passed).
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if self.kubeconfig.exists() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "vkube serve for {} exited ({status}) before ready:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "vkube serve for {} not ready in 120 s:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        kubectl(&self.kubeconfig, args, None)
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        kubectl_ok(&self.kubeconfig, args)
    }

    pub async fn client(&self) -> kube::Client {
        client_for(&self.kubeconfig).await
    }

    /// Creates a virtual namespace and waits for its default ServiceAccount (pods are refused
    /// until the virtual controller-manager has made it, as on any cluster).
    pub fn create_namespace(&self, ns: &str) {
        self.kubectl_ok(&["create", "namespace", ns]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .kubectl(&["get", "serviceaccount", "default", "-n", ns])
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "no default ServiceAccount in {ns}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for Tenant {
    fn drop(&mut self) {
        self.stop();
        if self.cluster_read {
            let _ = kubectl(
                &env().host_kubeconfig,
                &[
                    "delete",
                    "clusterrolebinding",
                    &format!("vkube-serve-cluster-read-{}", self.namespace),
                    "--ignore-not-found",
                ],
                None,
            );
        }
        // Free the host cluster's capacity for the other tests: the host namespace goes, and
        // with it every synced object.
        let _ = kubectl(
            &env().host_kubeconfig,
            &["delete", "namespace", &self.namespace, "--wait=false"],
            None,
        );
    }
}

/// Pids of live (non-zombie) processes whose command line mentions `needle`, and of zombie
/// children of `parent`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let mut cmdline = Vec::new();
        if let Ok(mut f) = std::fs::File::open(entry.path().join("cmdline")) {
            let _ = f.read_to_end(&mut cmdline);
        }
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Reads lines from a child's stdout on a thread, so tests can wait for each one with a timeout.
pub fn line_reader(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Runs `vkube` with `args`; returns (exit success, stderr). Fails if it takes longer than `limit`.
pub fn run_vkube(args: &[String], limit: Duration) -> (bool, String) {
    let mut child = Command::new(vkube_bin())
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.success(), err);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vkube {args:?} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
