//! The tenant's control plane: etcd, the virtual kube-apiserver and kube-controller-manager as
//! supervised child processes on loopback. No scheduler: the host schedules the real pods.
//!
//! Flag sets are pure functions ([`etcd_args`], [`apiserver_args`], [`controller_manager_args`])
//! so what we run is reviewable and unit-tested; [`ControlPlane::start`] does the I/O and only
//! returns once the API server answers `/readyz`, or fails with the component's own last words.

pub mod supervisor;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::pki::{Authority, Leaf, PkiFiles};
pub mod features;
pub mod version;

use supervisor::{Backoff, ProcessSpec, ProcessState, Supervised, SupervisorError};

/// Controllers a virtual cluster does not need: there are no real nodes, routes, cloud load
/// balancers or volume attachments behind it (the host does all of that). Binding and
/// expanding volumes is the host's job too: the virtual claims show the host's binding, and the
/// volumes vkube mirrors must never be "reclaimed" (deleted or recycled) by a virtual binder.
pub const DISABLED_CONTROLLERS: &[&str] = &[
    "node-ipam-controller",
    "node-lifecycle-controller",
    "cloud-node-lifecycle-controller",
    "node-route-controller",
    "service-lb-controller",
    "persistentvolume-attach-detach-controller",
    "taint-eviction-controller",
    "ttl-controller",
    "bootstrap-signer-controller",
    "token-cleaner-controller",
    "persistentvolume-binder-controller",
    "persistentvolume-expander-controller",
];

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error(transparent)]
    Binary(#[from] SupervisorError),
    #[error("{component} exited during startup ({status}){}", last_line.as_ref().map(|l| format!(": {l}")).unwrap_or_default())]
    ExitedDuringStartup {
        component: String,
        status: String,
        last_line: Option<String>,
    },
    #[error("{component} did not become ready within {timeout:?}{}", last_line.as_ref().map(|l| format!("; last output: {l}")).unwrap_or_default())]
    Timeout {
        component: String,
        timeout: Duration,
        last_line: Option<String>,
    },
    #[error(transparent)]
    Version(#[from] version::VersionError),
    #[error("no free port on 127.0.0.1: {0}")]
    NoPort(std::io::Error),
    #[error("preparing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ControlPlaneError {
    /// A component could not listen because another process took its port between vkube
    /// choosing it and the component binding it (ports are chosen by the kernel, then released).
    pub fn port_taken(&self) -> bool {
        self.last_line()
            .is_some_and(|l| l.contains("address already in use"))
    }

    /// The port a component could not listen on (`listen tcp 127.0.0.1:PORT: bind: address
    /// already in use`), when that is why it exited.
    pub fn taken_port(&self) -> Option<u16> {
        let line = self.last_line().filter(|_| self.port_taken())?;
        let after = &line[line.find("127.0.0.1:")? + "127.0.0.1:".len()..];
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    /// The component's last telling log line, for the errors that carry one.
    fn last_line(&self) -> Option<&str> {
        match self {
            ControlPlaneError::ExitedDuringStartup { last_line, .. }
            | ControlPlaneError::Timeout { last_line, .. } => last_line.as_deref(),
            _ => None,
        }
    }
}

/// Starts after a lost port race before giving up (each with newly chosen ports).
const PORT_RACE_RETRIES: u32 = 3;

/// Where the binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
}

impl Binaries {
    pub fn check(&self) -> Result<(), SupervisorError> {
        supervisor::check_executable("etcd", &self.etcd)?;
        supervisor::check_executable("kube-apiserver", &self.kube_apiserver)?;
        supervisor::check_executable("kube-controller-manager", &self.kube_controller_manager)
    }
}

#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    pub binaries: Binaries,
    pub data_dir: PathBuf,
    pub service_cidr: String,
    pub startup_timeout: Duration,
    /// The Unix socket of vkube's egress guard (`crate::egress`): every connection the API
    /// server opens on a tenant's behalf goes through it. `None`: the API server dials directly.
    pub egress_socket: Option<PathBuf>,
    /// The minor the binaries must be (`--kubernetes-version`); `None`: any supported one.
    pub version: Option<version::Minor>,
    /// `--feature-gates` of the API server and the controller manager (`vkube serve
    /// --feature-gates`); `None`: the minor's defaults.
    pub feature_gates: Option<features::FeatureGates>,
    /// `--runtime-config` of the API server (`vkube serve --runtime-config`).
    pub runtime_config: Option<features::RuntimeConfig>,
}

/// Loopback ports of one control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ports {
    pub etcd_client: u16,
    pub etcd_peer: u16,
    pub apiserver: u16,
}

pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

pub fn etcd_args(pki: &PkiFiles, data_dir: &Path, ports: Ports) -> Vec<String> {
    let client = format!("https://127.0.0.1:{}", ports.etcd_client);
    let peer = format!("https://127.0.0.1:{}", ports.etcd_peer);
    let p = |p: PathBuf| p.display().to_string();
    vec![
        "--name=vkube".into(),
        format!("--data-dir={}", data_dir.display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=vkube={peer}"),
        format!("--cert-file={}", p(pki.cert(Leaf::EtcdServer))),
        format!("--key-file={}", p(pki.key(Leaf::EtcdServer))),
        format!("--trusted-ca-file={}", p(pki.ca_cert(Authority::Etcd))),
        "--client-cert-auth=true".into(),
        format!("--peer-cert-file={}", p(pki.cert(Leaf::EtcdServer))),
        format!("--peer-key-file={}", p(pki.key(Leaf::EtcdServer))),
        format!("--peer-trusted-ca-file={}", p(pki.ca_cert(Authority::Etcd))),
        "--peer-client-cert-auth=true".into(),
        "--log-level=warn".into(),
        // The API server compacts; etcd only needs to defragment what it frees.
        "--snapshot-count=10000".into(),
    ]
}

/// kube-apiserver's EgressSelectorConfiguration: `cluster` (proxy subresources, kubelets,
/// Service-based webhooks, aggregated APIs) and `controlplane` (URL-based webhooks, and the
/// authentication, authorization and audit webhooks vkube does not configure) through the
/// HTTP CONNECT proxy on `socket`. `etcd` is left out: it stays direct, on loopback.
pub fn egress_selector_config(socket: &Path) -> String {
    let selection = |name: &str| {
        serde_json::json!({
            "name": name,
            "connection": {
                "proxyProtocol": "HTTPConnect",
                "transport": {"uds": {"udsName": socket.display().to_string()}},
            },
        })
    };
    serde_json::json!({
        "apiVersion": "apiserver.k8s.io/v1beta1",
        "kind": "EgressSelectorConfiguration",
        "egressSelections": [selection("cluster"), selection("controlplane")],
    })
    .to_string()
}

pub fn apiserver_args(
    pki: &PkiFiles,
    ports: Ports,
    service_cidr: &str,
    egress_selector_config: Option<&Path>,
) -> Vec<String> {
    let p = |p: PathBuf| p.display().to_string();
    let mut args = vec![
        format!("--etcd-servers=https://127.0.0.1:{}", ports.etcd_client),
        format!("--etcd-cafile={}", p(pki.ca_cert(Authority::Etcd))),
        format!("--etcd-certfile={}", p(pki.cert(Leaf::ApiServerEtcdClient))),
        format!("--etcd-keyfile={}", p(pki.key(Leaf::ApiServerEtcdClient))),
        // Loopback only: tenants reach the virtual API through the proxy, never directly.
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={}", ports.apiserver),
        format!("--tls-cert-file={}", p(pki.cert(Leaf::ApiServer))),
        format!("--tls-private-key-file={}", p(pki.key(Leaf::ApiServer))),
        format!("--client-ca-file={}", p(pki.ca_cert(Authority::Tenant))),
        format!(
            "--requestheader-client-ca-file={}",
            p(pki.ca_cert(Authority::FrontProxy))
        ),
        format!(
            "--requestheader-allowed-names={}",
            crate::pki::FRONT_PROXY_CLIENT_NAME
        ),
        "--requestheader-username-headers=X-Remote-User".into(),
        "--requestheader-group-headers=X-Remote-Group".into(),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
        format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
        format!("--api-audiences={SERVICE_ACCOUNT_ISSUER}"),
        format!(
            "--service-account-key-file={}",
            p(pki.service_account_pub())
        ),
        format!(
            "--service-account-signing-key-file={}",
            p(pki.service_account_key())
        ),
        "--authorization-mode=RBAC".into(),
        format!("--service-cluster-ip-range={service_cidr}"),
        // The syncer decides what may reach the host (pod security is enforced there, with an
        // Event on the virtual object); refusing here would hide the reason from the tenant.
        "--allow-privileged=true".into(),
        // No kubelets and one API server: nothing to reconcile for the kubernetes endpoints.
        "--endpoint-reconciler-type=none".into(),
        // One tenant's traffic does not need fairness queues; they cost memory and latency.
        "--enable-priority-and-fairness=false".into(),
        "--profiling=false".into(),
    ];
    if let Some(config) = egress_selector_config {
        args.push(format!(
            "--egress-selector-config-file={}",
            config.display()
        ));
    }
    args
}

pub fn controller_manager_args(pki: &PkiFiles, kubeconfig: &Path) -> Vec<String> {
    let p = |p: PathBuf| p.display().to_string();
    let mut controllers = vec!["*".to_string()];
    controllers.extend(DISABLED_CONTROLLERS.iter().map(|c| format!("-{c}")));
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--authentication-kubeconfig={}", kubeconfig.display()),
        format!("--authorization-kubeconfig={}", kubeconfig.display()),
        "--bind-address=127.0.0.1".into(),
        // Its health endpoint is not exposed; the supervisor watches the process instead.
        "--secure-port=0".into(),
        "--leader-elect=false".into(),
        "--use-service-account-credentials=true".into(),
        format!(
            "--service-account-private-key-file={}",
            p(pki.service_account_key())
        ),
        format!("--root-ca-file={}", p(pki.ca_cert(Authority::Tenant))),
        // Tenants may sign client certificates for their own users through the CSR API.
        format!(
            "--cluster-signing-cert-file={}",
            p(pki.ca_cert(Authority::Tenant))
        ),
        format!(
            "--cluster-signing-key-file={}",
            p(pki.ca_key(Authority::Tenant))
        ),
        format!("--controllers={}", controllers.join(",")),
        "--profiling=false".into(),
    ]
}

/// Appends the admin's feature gates and (API server only) runtime config, if any: after the
/// minor's own flags, and vkube sets neither itself, so each flag appears once.
fn with_features(
    mut args: Vec<String>,
    gates: Option<&features::FeatureGates>,
    runtime_config: Option<&features::RuntimeConfig>,
) -> Vec<String> {
    args.extend(gates.map(features::FeatureGates::flag));
    args.extend(runtime_config.map(features::RuntimeConfig::flag));
    args
}

/// A free port on 127.0.0.1, chosen by the kernel.
pub fn free_port() -> Result<u16, ControlPlaneError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(ControlPlaneError::NoPort)?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(ControlPlaneError::NoPort)
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Ports from the last run are reused when free: etcd records its peer URL in its data. After a
/// lost port race the taken port is in `avoid`: a test bind can succeed on a port a component
/// then cannot listen on (seen in CI: etcd failed on the same port four starts in a row).
fn choose_ports(data_dir: &Path, avoid: &[u16]) -> Result<Ports, ControlPlaneError> {
    let path = data_dir.join("ports.json");
    let previous: Option<Ports> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let pick = |old: Option<u16>| -> Result<u16, ControlPlaneError> {
        match old {
            Some(p) if !avoid.contains(&p) && port_is_free(p) => Ok(p),
            _ => loop {
                let p = free_port()?;
                if !avoid.contains(&p) {
                    break Ok(p);
                }
            },
        }
    };
    let ports = Ports {
        etcd_client: pick(previous.map(|p| p.etcd_client))?,
        etcd_peer: pick(previous.map(|p| p.etcd_peer))?,
        apiserver: pick(previous.map(|p| p.apiserver))?,
    };
    let json = serde_json::to_vec(&ports).unwrap_or_default();
    std::fs::write(&path, json).map_err(|source| ControlPlaneError::Io { path, source })?;
    Ok(ports)
}

/// A running control plane. `stop` shuts it down in reverse order.
pub struct ControlPlane {
    pub ports: Ports,
    etcd: Supervised,
    apiserver: Supervised,
    controller_manager: Supervised,
}

impl ControlPlane {
    pub fn apiserver_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.ports.apiserver)
    }

    /// Starts etcd, then the API server, waits for `/readyz` (using `ready_check`), then starts
    /// the controller manager. On any failure every started child is stopped before returning.
    /// A port taken by another process meanwhile is a retry with new ports, not a failure.
    pub async fn start<F, Fut>(
        config: &ControlPlaneConfig,
        pki: &PkiFiles,
        controller_manager_kubeconfig: &Path,
        ready_check: F,
    ) -> Result<ControlPlane, ControlPlaneError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut lost_races = 0;
        let mut taken = Vec::new();
        loop {
            let started = Self::start_once(
                config,
                pki,
                controller_manager_kubeconfig,
                &ready_check,
                &taken,
            )
            .await;
            match started {
                Err(e) if e.port_taken() && lost_races < PORT_RACE_RETRIES => {
                    lost_races += 1;
                    taken.extend(e.taken_port());
                    tracing::warn!(error = %e, "a port was taken meanwhile; starting again on other ports");
                }
                other => return other,
            }
        }
    }

    async fn start_once<F, Fut>(
        config: &ControlPlaneConfig,
        pki: &PkiFiles,
        controller_manager_kubeconfig: &Path,
        ready_check: &F,
        taken_ports: &[u16],
    ) -> Result<ControlPlane, ControlPlaneError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        config.binaries.check()?;
        // Before anything starts: binaries of another minor than asked for (a wrong image, a
        // stale directory) would otherwise run silently, or fail on flags they do not know.
        let minor = version::check_binary(
            "kube-apiserver",
            &config.binaries.kube_apiserver,
            config.version,
        )?;
        version::check_binary(
            "kube-controller-manager",
            &config.binaries.kube_controller_manager,
            Some(minor),
        )?;
        tracing::info!(kubernetes = %minor, "virtual control plane version");
        let etcd_dir = config.data_dir.join("etcd");
        std::fs::create_dir_all(&etcd_dir).map_err(|source| ControlPlaneError::Io {
            path: etcd_dir.clone(),
            source,
        })?;
        let ports = choose_ports(&config.data_dir, taken_ports)?;
        let egress_config = match &config.egress_socket {
            Some(socket) => {
                let path = config.data_dir.join("egress-selector.json");
                std::fs::write(&path, egress_selector_config(socket)).map_err(|source| {
                    ControlPlaneError::Io {
                        path: path.clone(),
                        source,
                    }
                })?;
                Some(path)
            }
            None => None,
        };
        let deadline = Instant::now() + config.startup_timeout;
        let backoff = Backoff::default();

        let etcd = Supervised::start(
            ProcessSpec {
                name: "etcd".into(),
                program: config.binaries.etcd.clone(),
                args: etcd_args(pki, &etcd_dir, ports),
                env: vec![],
            },
            backoff,
        )?;
        let etcd_addr: SocketAddr = ([127, 0, 0, 1], ports.etcd_client).into();
        if let Err(e) = wait_until(&etcd, deadline, config.startup_timeout, || async {
            tokio::net::TcpStream::connect(etcd_addr).await.is_ok()
        })
        .await
        {
            etcd.stop().await;
            return Err(e);
        }

        let apiserver = match Supervised::start(
            ProcessSpec {
                name: "kube-apiserver".into(),
                program: config.binaries.kube_apiserver.clone(),
                args: with_features(
                    version::apiserver_flags(
                        minor,
                        apiserver_args(pki, ports, &config.service_cidr, egress_config.as_deref()),
                    ),
                    config.feature_gates.as_ref(),
                    config.runtime_config.as_ref(),
                ),
                // A smaller heap target: the virtual API server is mostly idle.
                env: vec![("GOGC".into(), "50".into())],
            },
            backoff,
        ) {
            Ok(a) => a,
            Err(e) => {
                etcd.stop().await;
                return Err(e.into());
            }
        };
        let url = format!("https://127.0.0.1:{}", ports.apiserver);
        if let Err(e) = wait_until(&apiserver, deadline, config.startup_timeout, || {
            ready_check(url.clone())
        })
        .await
        {
            apiserver.stop().await;
            etcd.stop().await;
            return Err(e);
        }

        let controller_manager = match Supervised::start(
            ProcessSpec {
                name: "kube-controller-manager".into(),
                program: config.binaries.kube_controller_manager.clone(),
                args: with_features(
                    version::controller_manager_flags(
                        minor,
                        controller_manager_args(pki, controller_manager_kubeconfig),
                    ),
                    config.feature_gates.as_ref(),
                    None,
                ),
                env: vec![("GOGC".into(), "50".into())],
            },
            backoff,
        ) {
            Ok(c) => c,
            Err(e) => {
                apiserver.stop().await;
                etcd.stop().await;
                return Err(e.into());
            }
        };
        Ok(ControlPlane {
            ports,
            etcd,
            apiserver,
            controller_manager,
        })
    }

    /// Pids of the running children, for memory reporting.
    pub fn pids(&self) -> Vec<(String, u32)> {
        [&self.etcd, &self.apiserver, &self.controller_manager]
            .iter()
            .filter_map(|p| match &*p.state().borrow() {
                ProcessState::Running { pid, .. } => Some((p.name().to_string(), *pid)),
                _ => None,
            })
            .collect()
    }

    pub async fn stop(self) {
        self.controller_manager.stop().await;
        self.apiserver.stop().await;
        self.etcd.stop().await;
    }
}

/// A start that failed because storage answered too slowly, not because anything is wrong:
/// kube-apiserver exits when a post-start hook (which writes to etcd) does not finish, and under
/// load its etcd times requests out (seen in CI with four tenants starting at once). It also
/// exits when it cannot reach etcd within its fixed 20 s dial timeout, logging only "context
/// deadline exceeded" (seen in CI with two cores shared by four tenants and a real node).
fn slow_storage(last_line: &str) -> bool {
    (last_line.contains("PostStartHook") && last_line.contains("failed"))
        || last_line.contains("etcdserver: request timed out")
        || last_line.contains("err=\"context deadline exceeded\"")
}

/// Polls `check` until it passes; fails early if the process cannot be spawned or exits, unless
/// it exited only because its storage was slow (see [`slow_storage`]).
async fn wait_until<F, Fut>(
    process: &Supervised,
    deadline: Instant,
    timeout: Duration,
    check: F,
) -> Result<(), ControlPlaneError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut state = process.state();
    let mut tolerated_exits = 0;
    loop {
        let exit = match &*state.borrow() {
            ProcessState::Exited { status, restarts } => Some((status.clone(), *restarts)),
            _ => None,
        };
        if let Some((status, restarts)) = exit {
            let last_line = process.last_error_line();
            if !last_line.as_deref().is_some_and(slow_storage) {
                return Err(ControlPlaneError::ExitedDuringStartup {
                    component: process.name().into(),
                    status,
                    last_line,
                });
            }
            // The supervisor starts it again; the deadline still bounds the wait.
            if restarts >= tolerated_exits {
                tolerated_exits = restarts + 1;
                tracing::warn!(component = %process.name(), last_line = %last_line.unwrap_or_default(), "gave up on its storage while starting (machine busy); waiting for its restart");
            }
        }
        if let ProcessState::SpawnFailed { error } = &*state.borrow() {
            return Err(ControlPlaneError::ExitedDuringStartup {
                component: process.name().into(),
                status: error.clone(),
                last_line: None,
            });
        }
        let ready = tokio::select! {
            ready = check() => Some(ready),
            // An exit is seen at once, not when the check gives up: a port another process
            // holds may accept the connection and never answer.
            Ok(()) = state.changed() => None,
        };
        if ready == Some(true) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ControlPlaneError::Timeout {
                component: process.name().into(),
                timeout,
                last_line: process.last_error_line(),
            });
        }
        if ready.is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> PkiFiles {
        PkiFiles { dir: "/pki".into() }
    }
    const PORTS: Ports = Ports {
        etcd_client: 2379,
        etcd_peer: 2380,
        apiserver: 6443,
    };

    #[test]
    fn apiserver_listens_on_loopback_only_and_trusts_the_front_proxy() {
        let args = apiserver_args(&files(), PORTS, "10.96.0.0/12", None);
        assert!(args.contains(&"--bind-address=127.0.0.1".to_string()));
        assert!(!args.iter().any(|a| a.starts_with("--egress-selector")));
        assert!(args.contains(&"--secure-port=6443".to_string()));
        assert!(
            args.contains(&"--requestheader-client-ca-file=/pki/front-proxy-ca.crt".to_string())
        );
        assert!(args.contains(&"--requestheader-allowed-names=front-proxy-client".to_string()));
        assert!(args.contains(&"--etcd-servers=https://127.0.0.1:2379".to_string()));
        assert!(args.contains(&"--authorization-mode=RBAC".to_string()));
    }

    #[test]
    fn the_admins_feature_gates_and_runtime_config_are_the_only_ones() {
        let gates = features::FeatureGates::parse("GenericWorkload=true").unwrap();
        let apis = features::RuntimeConfig::parse("scheduling.k8s.io/v1alpha2=true").unwrap();
        let count =
            |args: &[String], flag: &str| args.iter().filter(|a| a.starts_with(flag)).count();
        for base in [
            apiserver_args(&files(), PORTS, "10.96.0.0/12", None),
            controller_manager_args(&files(), Path::new("/kcm.kubeconfig")),
        ] {
            let plain = with_features(base.clone(), None, None);
            assert_eq!(count(&plain, "--feature-gates"), 0);
            assert_eq!(count(&plain, "--runtime-config"), 0);
            let with = with_features(base, Some(&gates), Some(&apis));
            assert_eq!(count(&with, "--feature-gates"), 1);
            assert_eq!(count(&with, "--runtime-config"), 1);
            assert_eq!(
                with[with.len() - 2..],
                [
                    "--feature-gates=GenericWorkload=true",
                    "--runtime-config=scheduling.k8s.io/v1alpha2=true"
                ]
            );
        }
    }

    #[test]
    fn the_apiserver_dials_the_cluster_and_webhook_urls_through_the_egress_guard() {
        let args = apiserver_args(
            &files(),
            PORTS,
            "10.96.0.0/12",
            Some(Path::new("/data/egress-selector.json")),
        );
        assert!(
            args.contains(&"--egress-selector-config-file=/data/egress-selector.json".to_string())
        );
        let config: serde_json::Value =
            serde_json::from_str(&egress_selector_config(Path::new("/data/egress/g.sock")))
                .unwrap();
        assert_eq!(config["apiVersion"], "apiserver.k8s.io/v1beta1");
        assert_eq!(config["kind"], "EgressSelectorConfiguration");
        let selections = config["egressSelections"].as_array().unwrap();
        let names: Vec<&str> = selections
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        // An egress left out is dialled directly: both tenant-reachable ones must be listed.
        assert_eq!(names, ["cluster", "controlplane"]);
        for s in selections {
            assert_eq!(s["connection"]["proxyProtocol"], "HTTPConnect");
            assert_eq!(
                s["connection"]["transport"]["uds"]["udsName"],
                "/data/egress/g.sock"
            );
            assert!(s["connection"]["transport"].get("tcp").is_none());
        }
    }

    #[test]
    fn etcd_serves_tls_with_client_auth() {
        let args = etcd_args(&files(), Path::new("/data/etcd"), PORTS);
        assert!(args.contains(&"--listen-client-urls=https://127.0.0.1:2379".to_string()));
        assert!(args.contains(&"--client-cert-auth=true".to_string()));
        assert!(args.contains(&"--initial-cluster=vkube=https://127.0.0.1:2380".to_string()));
    }

    #[test]
    fn controller_manager_runs_without_node_controllers() {
        let args = controller_manager_args(&files(), Path::new("/kcm.kubeconfig"));
        let controllers = args
            .iter()
            .find_map(|a| a.strip_prefix("--controllers="))
            .unwrap();
        assert!(controllers.starts_with("*,"));
        assert!(controllers.contains("-node-lifecycle-controller"));
        assert!(args.contains(&"--leader-elect=false".to_string()));
    }

    #[test]
    fn ports_are_remembered_across_runs() {
        let dir = tempfile::tempdir().unwrap();
        let first = choose_ports(dir.path(), &[]).unwrap();
        let second = choose_ports(dir.path(), &[]).unwrap();
        assert_eq!(first, second);
        // Another process took the API server's port: only that port changes.
        let _taken = std::net::TcpListener::bind(("127.0.0.1", first.apiserver)).unwrap();
        let third = choose_ports(dir.path(), &[]).unwrap();
        assert_ne!(third.apiserver, first.apiserver);
        assert_eq!(
            (third.etcd_client, third.etcd_peer),
            (first.etcd_client, first.etcd_peer)
        );
        // A port a component could not listen on changes even when a test bind succeeds.
        let fourth = choose_ports(dir.path(), &[third.etcd_peer]).unwrap();
        assert_ne!(fourth.etcd_peer, third.etcd_peer);
        assert_eq!(
            (fourth.etcd_client, fourth.apiserver),
            (third.etcd_client, third.apiserver)
        );
    }

    #[test]
    fn slow_storage_is_waited_out_and_nothing_else() {
        // kube-apiserver's last line when its etcd timed out under load (seen in CI).
        assert!(slow_storage(
            r#"F1201 17:19:52.978399   26043 hooks.go:204] PostStartHook "start-service-ip-repair-controllers" failed: unable to perform initial IP and Port allocation check"#
        ));
        assert!(slow_storage(
            r#"E1201 17:19:00.185423   26043 system_namespaces_controller.go:82] "Unhandled Error" err="unable to create required kubernetes system Namespace kube-system: etcdserver: request timed out""#
        ));
        assert!(slow_storage(
            r#"E1202 00:26:47.579366   27568 run.go:72] "command failed" err="context deadline exceeded""#
        ));
        assert!(!slow_storage("Error: unknown flag: --foo"));
        assert!(!slow_storage(
            r#"E1201 run.go:72] "command failed" err="failed to listen on 127.0.0.1:1: bind: address already in use""#
        ));
    }

    #[test]
    fn only_a_port_taken_meanwhile_is_a_reason_to_start_again() {
        // kube-apiserver's last line when another process bound its port first (seen in CI).
        let taken = ControlPlaneError::ExitedDuringStartup {
            component: "kube-apiserver".into(),
            status: "exit status: 1".into(),
            last_line: Some(r#"E1201 15:41:39.915051   21852 run.go:72] "command failed" err="failed to create listener: failed to listen on 127.0.0.1:41613: listen tcp 127.0.0.1:41613: bind: address already in use""#.into()),
        };
        assert!(taken.port_taken());
        assert_eq!(taken.taken_port(), Some(41613));
        // etcd's fatal line (JSON) when its port was taken (seen in CI, four starts in a row).
        let etcd_json = ControlPlaneError::ExitedDuringStartup {
            component: "etcd".into(),
            status: "exit status: 1".into(),
            last_line: Some(r#"{"level":"fatal","msg":"discovery failed","error":"listen tcp 127.0.0.1:32813: bind: address already in use"}"#.into()),
        };
        assert_eq!(etcd_json.taken_port(), Some(32813));
        let etcd = ControlPlaneError::Timeout {
            component: "etcd".into(),
            timeout: Duration::from_secs(60),
            last_line: Some("listen tcp 127.0.0.1:2379: bind: address already in use".into()),
        };
        assert!(etcd.port_taken());
        let other = ControlPlaneError::ExitedDuringStartup {
            component: "kube-apiserver".into(),
            status: "exit status: 1".into(),
            last_line: Some("unknown flag: --foo".into()),
        };
        assert!(!other.port_taken());
        assert_eq!(other.taken_port(), None);
        let silent = ControlPlaneError::Timeout {
            component: "etcd".into(),
            timeout: Duration::from_secs(60),
            last_line: None,
        };
        assert!(!silent.port_taken());
    }

    #[tokio::test]
    async fn an_exit_during_startup_is_seen_while_the_ready_check_still_waits() {
        // Its port held by a process that accepts and never answers: the ready check hangs.
        let spec = ProcessSpec {
            name: "kube-apiserver".into(),
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                r#"sleep 0.2; echo 'E1202 00:00:00.000000 1 run.go:72] "command failed" err="listen tcp 127.0.0.1:1: bind: address already in use"'; exit 1"#.into(),
            ],
            env: vec![],
        };
        let backoff = Backoff {
            initial: Duration::from_secs(30),
            ..Backoff::default()
        };
        let process = Supervised::start(spec, backoff).unwrap();
        let timeout = Duration::from_secs(60);
        let waited = tokio::time::timeout(
            Duration::from_secs(10),
            wait_until(&process, Instant::now() + timeout, timeout, || {
                std::future::pending::<bool>()
            }),
        )
        .await;
        process.stop().await;
        match waited {
            Ok(Err(e)) => assert!(e.port_taken(), "{e}"),
            other => panic!("the exit was not reported while the check waited: {other:?}"),
        }
    }
}
