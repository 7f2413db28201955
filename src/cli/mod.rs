//! The command line: the only place that prints for humans and the only place `anyhow` appears.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

mod platform;

use vkube::controlplane::Binaries;
use vkube::host;
use vkube::serve::{self, ServeOptions};

#[derive(Parser, Debug)]
#[command(name = "vkube", version, about = "Virtual Kubernetes clusters", long_about = None)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "VKUBE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one virtual cluster's control plane (etcd, kube-apiserver, controller-manager) and
    /// its TLS API proxy.
    Serve(Box<ServeArgs>),
    /// Print the admin kubeconfig of a virtual cluster (read from its host namespace).
    Kubeconfig(platform::KubeconfigArgs),
    /// Create a virtual cluster, wait until it is ready and switch to its kubeconfig context.
    Create(platform::CreateArgs),
    /// Use a virtual cluster: write its context, port-forwarding when its API is not reachable.
    Connect(platform::ConnectArgs),
    /// List the virtual clusters you can see (admins: all; developers: their own).
    #[command(visible_alias = "ls")]
    List(platform::ListArgs),
    /// What each virtual cluster you can see uses on the host (admins: all; developers: their
    /// own): pods, CPU and memory requested and used, storage, and totals over time.
    #[command(visible_alias = "top")]
    Usage(platform::ListArgs),
    /// Delete a virtual cluster and everything of it on the host.
    Delete(platform::NameArgs),
    /// Scale a virtual cluster's control plane to zero and remove its pods; its state is kept.
    Pause(platform::NameArgs),
    /// Start a paused virtual cluster again.
    Resume(platform::NameArgs),
    /// Put a virtual cluster to sleep now: like pause, but the first request to its API wakes
    /// it again.
    Sleep(platform::NameArgs),
    /// Wake a sleeping virtual cluster now (its first request would too).
    Wake(platform::NameArgs),
    /// Revoke every credential of a virtual cluster issued until now (e.g. a leaked kubeconfig)
    /// and fetch the new admin kubeconfig.
    RotateCredentials(platform::RotateArgs),
    /// Print the VirtualCluster CustomResourceDefinition (YAML).
    Crd,
    /// Run the VirtualCluster controller (the platform's admin component; installed by the chart).
    Manager(ManagerArgs),
    /// Forward a local port to a virtual cluster's API (used by `vkube connect --background`).
    #[command(hide = true)]
    PortForward(platform::PortForwardArgs),
    /// Benchmarks (JSON and a short table).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print a shell completion script: `source <(vkube completion bash)`, or write it where
    /// your shell loads completions (zsh: a `_vkube` file on $fpath; fish:
    /// ~/.config/fish/completions/vkube.fish).
    Completion(CompletionArgs),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Pods through the syncer vs the same pods created directly in the host API.
    Sync(BenchSyncArgs),
    /// The same request mix straight to the virtual kube-apiserver and through vkube's proxy;
    /// port-forward through a virtual pod vs its host pod.
    Proxy(BenchProxyArgs),
    /// Sleep and wake on a real node with the platform installed (hack/bench-wake.sh): the first
    /// request to a sleeping cluster vs resume from pause; a sleeping tenant's footprint; density.
    Wake(BenchWakeArgs),
}

#[derive(clap::Args, Debug)]
struct BenchWakeArgs {
    /// The VirtualCluster (running on the real node).
    #[arg(long)]
    name: String,
    /// The real node (its kubelet's stats).
    #[arg(long)]
    node: String,
    /// Host kubeconfig (the admin's).
    #[arg(long, env = "VKUBE_HOST_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    #[arg(long, default_value_t = 20)]
    runs: usize,
    #[arg(long, default_value = "vkube-system")]
    manager_namespace: String,
    /// How many waker ports the chart gives (manager.waker).
    #[arg(long, default_value_t = 10_000)]
    waker_ports: usize,
    #[arg(long, default_value_t = 240)]
    timeout_seconds: u64,
    /// Write the JSON report here (it is always printed to stdout too).
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct BenchProxyArgs {
    /// Kubeconfig of the virtual cluster (through the proxy).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Name of the virtual cluster.
    #[arg(long)]
    name: String,
    /// Data directory of its `vkube serve`: the virtual kube-apiserver's own address is read
    /// from there (the direct baseline).
    #[arg(long)]
    data_dir: PathBuf,
    #[command(flatten)]
    host: HostArgs,
    /// GET requests per side (LIST and create counts derive from it).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Pods created for the LIST (and one of them for port-forward).
    #[arg(long, default_value_t = 500)]
    list_pods: usize,
    #[arg(long, default_value_t = 1000)]
    watch_events: usize,
    /// MiB echoed through port-forward per round; 0 skips it.
    #[arg(long, default_value_t = 100)]
    forward_mib: usize,
    /// Write the JSON report here (it is always printed to stdout too).
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct BenchSyncArgs {
    /// Kubeconfig of the virtual cluster.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Name of the virtual cluster.
    #[arg(long)]
    name: String,
    #[command(flatten)]
    host: HostArgs,
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// Creates in flight, for the baseline and the syncer phase alike.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Pods per second for the burst scenario (paced); default: as fast as --concurrency allows.
    #[arg(long)]
    rate: Option<f64>,
    /// Scenarios to run, in this order whatever the order given.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "burst,used,one,steady,deployment"
    )]
    scenarios: Vec<vkube::bench::Scenario>,
    /// Pods of the one-in-flight scenario.
    #[arg(long, default_value_t = 300)]
    one_pods: usize,
    /// The steady scenario's rate, as a fraction of the host's burst throughput in this run.
    #[arg(long, default_value_t = 0.5)]
    steady_fraction: f64,
    /// Replicas of the Deployment scenario.
    #[arg(long, default_value_t = 100)]
    deployment_replicas: usize,
    /// Also write the results as a Markdown table here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Pid of `vkube serve`, to report its CPU time and peak memory.
    #[arg(long)]
    serve_pid: Option<u32>,
    /// Skip the direct-to-host baseline.
    #[arg(long)]
    skip_baseline: bool,
    #[arg(long, default_value_t = 600)]
    timeout_seconds: u64,
    /// Write the JSON report here (it is always printed to stdout too).
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct HostArgs {
    /// Kubeconfig of the host cluster (default: in-cluster config, then $KUBECONFIG, then ~/.kube/config).
    #[arg(long, env = "VKUBE_HOST_KUBECONFIG")]
    host_kubeconfig: Option<PathBuf>,
    /// Host namespace of the virtual cluster (default: vkube-NAME).
    #[arg(long, env = "VKUBE_HOST_NAMESPACE")]
    host_namespace: Option<String>,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Name of the virtual cluster.
    #[arg(long, env = "VKUBE_NAME")]
    name: String,
    #[command(flatten)]
    host: HostArgs,
    /// Create the host namespace if it does not exist.
    #[arg(long)]
    create_namespace: bool,
    /// Address of the tenant-facing TLS listener.
    #[arg(long, env = "VKUBE_LISTEN", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Directory for the datastore and generated files (default: ./.vkube/NAME).
    #[arg(long, env = "VKUBE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Directory holding etcd, kube-apiserver and kube-controller-manager (default: $PATH).
    #[arg(long, env = "VKUBE_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// Kubernetes minor of the virtual control plane (1.34, 1.35 or 1.36). Its kube-apiserver
    /// and kube-controller-manager come from --versions-dir when given, else --bin-dir; binaries
    /// of another minor are refused. Default: whatever --bin-dir holds, if supported.
    #[arg(long, env = "VKUBE_KUBERNETES_VERSION", value_parser = vkube::controlplane::version::Minor::supported)]
    kubernetes_version: Option<vkube::controlplane::version::Minor>,
    /// Feature gates of the virtual API server and controller manager, as Kubernetes writes
    /// them (`GenericWorkload=true,...`): a feature inside this tenant only, never on the host.
    /// Pod fields such a gate allows that vkube does not know are refused, not synced.
    #[arg(long, env = "VKUBE_FEATURE_GATES", value_parser = vkube::controlplane::features::FeatureGates::parse)]
    feature_gates: Option<vkube::controlplane::features::FeatureGates>,
    /// API groups and versions to turn on or off in the virtual API server, as Kubernetes writes
    /// them (`scheduling.k8s.io/v1alpha2=true`): what an alpha feature gate's API needs.
    #[arg(long, env = "VKUBE_RUNTIME_CONFIG", value_parser = vkube::controlplane::features::RuntimeConfig::parse)]
    runtime_config: Option<vkube::controlplane::features::RuntimeConfig>,
    /// Directory with one `v1.MINOR.PATCH/bin` per Kubernetes version (the layout of
    /// hack/build-components.sh's cache, ~/.cache/vkube): --kubernetes-version picks from it
    /// (without --kubernetes-version it is not used).
    #[arg(long, env = "VKUBE_VERSIONS_DIR")]
    versions_dir: Option<PathBuf>,
    #[arg(long, env = "VKUBE_ETCD_BIN")]
    etcd_bin: Option<PathBuf>,
    #[arg(long, env = "VKUBE_KUBE_APISERVER_BIN")]
    kube_apiserver_bin: Option<PathBuf>,
    #[arg(long, env = "VKUBE_KUBE_CONTROLLER_MANAGER_BIN")]
    kube_controller_manager_bin: Option<PathBuf>,
    /// Service IP range of the virtual cluster.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: String,
    /// Host Service exposing the proxy, for the serving certificate (default: vkube-NAME).
    #[arg(long)]
    service_name: Option<String>,
    /// Address at which the host's pods reach this proxy, when vkube runs outside the host's pod
    /// network: the API Service (--service-name) then gets Endpoints there, and the tenant's pods
    /// reach the virtual API through it.
    #[arg(long, env = "VKUBE_ADVERTISE_ADDRESS")]
    advertise_address: Option<std::net::IpAddr>,
    /// Where the tenant's cluster DNS listens (default: the --listen IP, at the port the API
    /// Service's DNS port targets, or a free port with --advertise-address).
    #[arg(long, env = "VKUBE_DNS_LISTEN")]
    dns_listen: Option<SocketAddr>,
    /// The virtual cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Resolver for names outside the cluster domain (default: the first nameserver of
    /// /etc/resolv.conf).
    #[arg(long)]
    upstream_dns: Option<SocketAddr>,
    /// Extra DNS name or IP for the proxy's serving certificate (repeatable).
    #[arg(long = "extra-san")]
    extra_sans: Vec<String>,
    /// Also write the admin kubeconfig to this file.
    #[arg(long, env = "VKUBE_KUBECONFIG_OUT")]
    kubeconfig_out: Option<PathBuf>,
    /// Server URL written into the kubeconfig (default: https://LISTEN-ADDRESS).
    #[arg(long)]
    kubeconfig_server: Option<String>,
    /// Give up if the virtual API is not ready within this many seconds.
    #[arg(long, default_value_t = 120)]
    startup_timeout_seconds: u64,
    /// On SIGTERM, keep serving this many seconds before stopping (as kube-apiserver's
    /// --shutdown-delay-duration): clients already routed here are answered while the Service
    /// stops sending new ones (the manager sets it, so a request during a fall asleep is
    /// answered, not cut).
    #[arg(long, env = "VKUBE_SHUTDOWN_DELAY_SECONDS", default_value_t = 0)]
    shutdown_delay_seconds: u64,
    /// Revoke every client certificate issued before this time (RFC 3339, e.g. the time a
    /// kubeconfig leaked): the proxy refuses them and a new admin certificate is issued and
    /// published. Keep passing the same value on later starts.
    #[arg(long, env = "VKUBE_CREDENTIALS_NOT_BEFORE")]
    credentials_not_before: Option<String>,
    /// Run only the control plane; copy nothing to the host.
    #[arg(long)]
    no_sync: bool,
    /// Reconciles in flight per synced kind (host writes are bounded by this, not rate-limited).
    #[arg(long, env = "VKUBE_SYNC_CONCURRENCY", default_value_t = 32)]
    sync_concurrency: u16,
    /// Hold a pod create while this many pods wait for their host pod (at most 2 s), so creates
    /// go at the pace the host takes them and a new pod reaches the host within this queue;
    /// 0: never hold.
    #[arg(long, env = "VKUBE_POD_CREATE_PACE", default_value_t = vkube::syncer::backlog::DEFAULT_POD_CREATE_PACE)]
    pod_create_pace: usize,
    /// Copy every ConfigMap to the host, not only those pods reference.
    #[arg(long)]
    sync_all_configmaps: bool,
    /// Copy every Secret to the host, not only those pods reference.
    #[arg(long)]
    sync_all_secrets: bool,
    /// Let tenants create NodePort Services on the host (default: downgraded to ClusterIP).
    #[arg(long)]
    allow_node_port: bool,
    /// Let tenants create LoadBalancer Services on the host (default: downgraded to ClusterIP).
    #[arg(long)]
    allow_load_balancer: bool,
    /// Private range outside the cluster networks that hand-written Endpoints may lead to
    /// (repeatable; by default only public addresses and the tenant's own pods are allowed).
    #[arg(long = "endpoint-allow-cidr")]
    endpoint_allow_cidrs: Vec<vkube::translate::endpoints::Cidr>,
    /// Ingress class tenants may use (repeatable; default: any).
    #[arg(long = "ingress-class")]
    ingress_classes: Vec<String>,
    /// Ingress class given to tenant Ingresses that name none (default: the host's default).
    #[arg(long)]
    default_ingress_class: Option<String>,
    /// DNS suffix the tenant's Ingress hosts must be or end in (`{name}` stands for the
    /// tenant's name: `{name}.apps.example.com`). Without it no Ingress is published.
    #[arg(long, env = "VKUBE_INGRESS_HOST_SUFFIX")]
    ingress_host_suffix: Option<String>,
    /// Let tenants create ExternalName Services on the host (default: not synced, with a
    /// Warning Event; the tenant's pods resolve them through vkube's DNS either way).
    #[arg(long)]
    allow_external_name: bool,
    /// Pod Security level enforced before a pod reaches the host: baseline or restricted.
    #[arg(long, default_value = "baseline")]
    pod_security: vkube::translate::security::Level,
    /// Volume type tenants' pods may use besides configMap, secret, emptyDir, projected,
    /// downwardAPI, persistentVolumeClaim, ephemeral and image (repeatable; e.g. csi, nfs).
    #[arg(long = "allow-volume-type", value_name = "TYPE")]
    allow_volume_types: Vec<String>,
    /// CSI driver inline `csi` volumes may use (repeatable; needs --allow-volume-type csi).
    #[arg(long = "allow-csi-driver", value_name = "NAME")]
    allow_csi_drivers: Vec<String>,
    /// Node label every tenant pod must run on (repeatable; ANDed with the tenant's own
    /// selectors and affinity, a conflicting tenant value is refused).
    #[arg(long = "node-selector", value_name = "KEY=VALUE", value_parser = vkube::translate::placement::parse_selector_pair)]
    node_selectors: Vec<(String, String)>,
    /// Toleration a tenant pod may carry, `key[=value][:effect]` (repeatable; exact match, no
    /// wildcards). Others are left out with a Warning Event.
    #[arg(long = "allow-toleration", value_name = "SPEC")]
    allow_tolerations: Vec<vkube::translate::placement::TolerationSpec>,
    /// Toleration added to every tenant pod, `key[=value][:effect]` (repeatable).
    #[arg(long = "pod-toleration", value_name = "SPEC")]
    pod_tolerations: Vec<vkube::translate::placement::TolerationSpec>,
    /// runtimeClassName tenant pods may use (repeatable; default none: pods naming one are refused).
    #[arg(long = "allow-runtime-class", value_name = "NAME")]
    allow_runtime_classes: Vec<String>,
    /// Label key copied to the host unchanged, besides the defaults (repeatable; an exact key,
    /// `prefix/*` or `*`). Other keys are renamed to inert `vkube.dev/l-<hash>` keys.
    #[arg(long = "allow-label", value_name = "PATTERN")]
    allow_labels: Vec<vkube::translate::KeyPattern>,
    /// Annotation key copied to the host unchanged (repeatable; as --allow-label). Other keys
    /// are renamed to inert `vkube.dev/a-<hash>` keys.
    #[arg(long = "allow-annotation", value_name = "PATTERN")]
    allow_annotations: Vec<vkube::translate::KeyPattern>,
    /// Virtual nodes: `real` mirrors the host nodes that run the tenant's pods (labels, taints,
    /// addresses, capacity, conditions), `pseudo` hides the host (name, address, Ready). `real`
    /// needs the ClusterRole in manifests/serve-cluster-rbac.yaml; without it vkube logs one
    /// warning and shows pseudo-nodes.
    #[arg(long, env = "VKUBE_NODE_SYNC", default_value = "real")]
    node_sync: vkube::syncer::NodeSync,
    /// Host StorageClasses and PersistentVolumes shown read-only in the virtual cluster: `used`
    /// (those the tenant's claims use) or `off`. Needs the same ClusterRole; without it vkube
    /// logs one warning and shows none (claims keep working).
    #[arg(long, env = "VKUBE_STORAGE_SYNC", default_value = "used")]
    storage_sync: vkube::syncer::StorageSync,
    /// vkube's base NetworkPolicies in the host namespace: every tenant pod isolated, the
    /// control plane pod open on its API and DNS ports. `off` when whoever manages the
    /// namespace keeps them (the vkube manager does). The syncer's default allowances and the
    /// tenant's own policies are kept either way.
    #[arg(
        long,
        env = "VKUBE_DEFAULT_NETWORK_POLICY",
        value_enum,
        default_value = "on"
    )]
    default_network_policy: Switch,
    /// A range tenant pods may reach although it is closed by default (private, loopback and
    /// link-local ranges are; repeatable), e.g. a database subnet.
    #[arg(long = "egress-allow-cidr")]
    egress_allow_cidrs: Vec<vkube::translate::endpoints::Cidr>,
    /// Another range closed to tenant pods (repeatable): the host cluster's pod, service and
    /// node networks where they lie outside the private ranges.
    #[arg(long = "egress-deny-cidr")]
    egress_deny_cidrs: Vec<vkube::translate::endpoints::Cidr>,
    /// A namespaced custom resource kind synced to the host (repeatable):
    /// `GROUP/VERSION/KIND[:PATH=KIND,...]`, e.g.
    /// `cert-manager.io/v1/Certificate:spec.secretName=Secret,spec.issuerRef.name=Issuer.cert-manager.io`.
    /// Each PATH (dot-separated, `[]` after a list) holds a name of the same namespace: Secret,
    /// ConfigMap, Service, PersistentVolumeClaim or KIND.GROUP of another synced kind (translated
    /// to the tenant's copy; Secrets and ConfigMaps are synced with it), Selector (a label
    /// selector, confined to the namespace) or `-` (must be empty). The host must serve the
    /// kind and vkube's Role must allow it in the host namespace.
    #[arg(long = "sync-custom-resource", value_name = "SPEC")]
    sync_custom_resources: Vec<vkube::translate::custom::CustomKind>,
    /// A cluster-scoped host kind shown read-only in the virtual cluster, `GROUP/VERSION/KIND`
    /// (repeatable; e.g. networking.k8s.io/v1/IngressClass). Needs the ClusterRole of
    /// manifests/serve-cluster-rbac.yaml (with a rule for the kind).
    #[arg(long = "show-host-kind", value_name = "GROUP/VERSION/KIND")]
    show_host_kinds: Vec<vkube::translate::custom::HostKind>,
    /// Sync VolumeSnapshots (snapshot.storage.k8s.io/v1, the CSI snapshot CRDs must be on the
    /// host), show the host's VolumeSnapshotClasses read-only, and let claims be restored from
    /// the tenant's snapshots.
    #[arg(long)]
    sync_volume_snapshots: bool,
    /// Host PriorityClass tenant pods may use (repeatable); shown read-only in the virtual
    /// cluster. A pod naming another class gets --default-priority-class (or none).
    #[arg(long = "allow-priority-class", value_name = "NAME")]
    allow_priority_classes: Vec<String>,
    /// The class a pod naming a class not allowed gets instead (one of --allow-priority-class).
    #[arg(long, value_name = "NAME")]
    default_priority_class: Option<String>,
    /// What the virtual API server may connect to for the tenant (proxy subresources,
    /// webhooks, aggregated APIs, kubelets): `tenant` (its own host pods and Services, and
    /// --endpoint-allow-cidr ranges), `allow-public` (also public internet addresses, for
    /// webhooks hosted outside) or `unrestricted` (no guard; only where tenants are trusted).
    #[arg(long, env = "VKUBE_APISERVER_EGRESS", default_value = "tenant")]
    apiserver_egress: vkube::egress::EgressMode,
    /// Serve Prometheus `/metrics`, `/healthz` and `/readyz` (ready: the syncer caught up) on
    /// this address, plain HTTP without credentials: only where what can reach it may read it
    /// (default: off). Never the proxy's port.
    #[arg(long, env = "VKUBE_METRICS_BIND_ADDRESS", value_name = "IP:PORT")]
    metrics_bind_address: Option<SocketAddr>,
}

#[derive(clap::Args, Debug)]
struct ManagerArgs {
    /// The admin's policy (YAML; the chart mounts it from its values).
    #[arg(long, env = "VKUBE_POLICY", default_value = "/etc/vkube/policy.yaml")]
    policy: PathBuf,
    /// Namespace of the leader election Lease (default: the pod's namespace); also the
    /// manager's own namespace, which no virtual cluster's host namespace may be.
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Run without leader election (one replica only; for development).
    #[arg(long)]
    no_leader_election: bool,
    /// Host kubeconfig (default: in-cluster config, then $KUBECONFIG).
    #[arg(long, env = "VKUBE_HOST_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The manager pod's IP: sleeping clusters' API Services get an endpoint there (the
    /// waker), so their first request wakes them. Without it, a sleeping cluster refuses
    /// connections until `vkube wake`.
    #[arg(long, env = "POD_IP")]
    waker_address: Option<std::net::IpAddr>,
    /// Ports the waker may listen on, one per sleeping cluster (FIRST-LAST); the chart opens
    /// them in the manager's NetworkPolicy.
    #[arg(long, env = "VKUBE_WAKER_PORTS", default_value = "20000-29999", value_parser = parse_port_range)]
    waker_ports: std::ops::RangeInclusive<u16>,
    /// Serve Prometheus `/metrics` on this address, plain HTTP without credentials (default:
    /// off; the chart binds it and lets in only the namespaces it names).
    #[arg(long, env = "VKUBE_METRICS_BIND_ADDRESS", value_name = "IP:PORT")]
    metrics_bind_address: Option<SocketAddr>,
    /// Serve `/healthz` (the controller makes progress) and `/readyz` (and holds the lease) on
    /// this address, for the kubelet's probes (default: off).
    #[arg(long, env = "VKUBE_HEALTH_BIND_ADDRESS", value_name = "IP:PORT")]
    health_bind_address: Option<SocketAddr>,
    /// `/healthz` fails once the controller shows no progress for this long (a watch or
    /// reconcile hung).
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    stuck_after_seconds: u64,
    /// Seconds between two samples of every tenant's usage (status.usage).
    #[arg(long, env = "VKUBE_USAGE_EVERY", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    usage_every: u64,
}

fn parse_port_range(text: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let bad = || format!("{text:?} is not a port range FIRST-LAST (e.g. 20000-29999)");
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok(a..=b)
}

#[derive(clap::Args, Debug)]
struct CompletionArgs {
    shell: clap_complete::Shell,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    vkube::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve_command(args).await,
            Command::Kubeconfig(args) => platform::kubeconfig(args).await,
            Command::Create(args) => platform::create(args).await,
            Command::Connect(args) => platform::connect(args).await,
            Command::List(args) => platform::list(args).await,
            Command::Usage(args) => platform::usage(args).await,
            Command::Delete(args) => platform::delete(args).await,
            Command::Pause(args) => platform::pause(args, true).await,
            Command::Resume(args) => platform::pause(args, false).await,
            Command::Sleep(args) => platform::sleep(args).await,
            Command::Wake(args) => platform::wake(args).await,
            Command::RotateCredentials(args) => platform::rotate_credentials(args).await,
            Command::PortForward(args) => platform::port_forward(args).await,
            Command::Crd => {
                print!("{}", vkube::api::crd_yaml()?);
                Ok(())
            }
            Command::Manager(args) => manager_command(args).await,
            Command::Completion(args) => {
                use clap::CommandFactory;
                clap_complete::generate(
                    args.shell,
                    &mut Cli::command(),
                    "vkube",
                    &mut std::io::stdout(),
                );
                Ok(())
            }
            Command::Bench(BenchCommand::Sync(args)) => bench_sync_command(args).await,
            Command::Bench(BenchCommand::Proxy(args)) => bench_proxy_command(args).await,
            Command::Bench(BenchCommand::Wake(args)) => bench_wake_command(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the cause chain, most specific last.
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// kube-client logs every non-2xx answer at ERROR, including the 500s of /readyz polls while the
/// API server starts; vkube reports the errors it cannot handle itself.
const DEFAULT_LOG_FILTER: &str = "info,kube_client::client::builder=off";

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn find_binary(
    explicit: Option<PathBuf>,
    bin_dir: Option<&PathBuf>,
    name: &str,
) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    if let Some(dir) = bin_dir {
        return Ok(dir.join(name));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("{name} not found in $PATH: pass --bin-dir (hack/build-components.sh prints it) or --{name}-bin")
        })
}

async fn serve_command(args: Box<ServeArgs>) -> anyhow::Result<()> {
    // One template serves every tenant (the chart passes `{name}.apps.example.com`).
    let ingress_host_suffix = args
        .ingress_host_suffix
        .as_deref()
        .map(|t| vkube::translate::ingress::host_suffix_for(t, &args.name))
        .transpose()?;
    if let Some(suffix) = &ingress_host_suffix
        && !suffix.split('.').any(|label| label == args.name)
    {
        tracing::warn!(%suffix, "the ingress host suffix does not contain the tenant's name as a label: make sure no other tenant has the same or an enclosing suffix");
    }
    if let Some(d) = &args.default_priority_class
        && !args.allow_priority_classes.contains(d)
    {
        anyhow::bail!(
            "--default-priority-class {d} is not one of --allow-priority-class: allow it too"
        );
    }
    // etcd is the same for every version; the control plane's binaries follow the version.
    let control_plane_dir = match (&args.versions_dir, args.kubernetes_version) {
        (Some(dir), Some(minor)) => Some(vkube::controlplane::version::bin_dir_in(dir, minor)?),
        _ => args.bin_dir.clone(),
    };
    let binaries = Binaries {
        etcd: find_binary(args.etcd_bin, args.bin_dir.as_ref(), "etcd")?,
        kube_apiserver: find_binary(
            args.kube_apiserver_bin,
            control_plane_dir.as_ref(),
            "kube-apiserver",
        )?,
        kube_controller_manager: find_binary(
            args.kube_controller_manager_bin,
            control_plane_dir.as_ref(),
            "kube-controller-manager",
        )?,
    };
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| PathBuf::from(".vkube").join(&args.name));
    let opts = ServeOptions {
        name: args.name,
        host_kubeconfig: args.host.host_kubeconfig,
        host_namespace: args.host.host_namespace,
        create_namespace: args.create_namespace,
        listen: args.listen,
        data_dir,
        binaries,
        kubernetes_version: args.kubernetes_version,
        feature_gates: args.feature_gates.clone(),
        runtime_config: args.runtime_config.clone(),
        service_cidr: args.service_cidr,
        service_name: args.service_name,
        advertise_address: args.advertise_address,
        dns_listen: args.dns_listen,
        cluster_domain: args.cluster_domain,
        upstream_dns: args.upstream_dns,
        extra_sans: args.extra_sans,
        kubeconfig_out: args.kubeconfig_out,
        kubeconfig_server: args.kubeconfig_server,
        startup_timeout: Duration::from_secs(args.startup_timeout_seconds),
        shutdown_delay: Duration::from_secs(args.shutdown_delay_seconds),
        credentials_not_before: args.credentials_not_before,
        syncer: (!args.no_sync).then_some(serve::SyncerOptions {
            concurrency: args.sync_concurrency.max(1),
            pod_create_pace: args.pod_create_pace,
            sync_all_config_maps: args.sync_all_configmaps,
            sync_all_secrets: args.sync_all_secrets,
            service_policy: vkube::translate::service::ServicePolicy {
                allow_node_port: args.allow_node_port,
                allow_load_balancer: args.allow_load_balancer,
                allow_external_name: args.allow_external_name,
            },
            endpoint_policy: vkube::translate::endpoints::EndpointPolicy {
                allowed: args.endpoint_allow_cidrs,
            },
            ingress_policy: vkube::translate::ingress::IngressPolicy {
                allowed_classes: args.ingress_classes,
                default_class: args.default_ingress_class,
                host_suffix: ingress_host_suffix,
            },
            pod_security: args.pod_security,
            pod_policy: pod_policy(
                args.allow_volume_types,
                args.allow_csi_drivers,
                args.node_selectors,
                args.allow_tolerations,
                args.pod_tolerations,
                args.allow_runtime_classes,
            )
            .with_priority_classes(
                args.allow_priority_classes.into_iter().collect(),
                args.default_priority_class,
            ),
            custom_kinds: args.sync_custom_resources,
            host_kinds: args.show_host_kinds,
            volume_snapshots: args.sync_volume_snapshots,
            metadata: vkube::translate::MetadataPolicy::widened(
                args.allow_labels,
                args.allow_annotations,
            ),
            node_sync: args.node_sync,
            storage_sync: args.storage_sync,
            egress: vkube::translate::networkpolicy::EgressPolicy {
                allow: args.egress_allow_cidrs,
                deny: args.egress_deny_cidrs,
            },
        }),
        default_network_policy: args.default_network_policy == Switch::On,
        apiserver_egress: args.apiserver_egress,
        metrics_listen: args.metrics_bind_address,
    };
    serve::run(opts, shutdown_signal()).await?;
    Ok(())
}

/// The admin's pod policy from the serve flags: each widens (or, for the node selector and
/// enforced tolerations, adds to) the safe defaults.
fn pod_policy(
    volume_types: Vec<String>,
    csi_drivers: Vec<String>,
    node_selector: Vec<(String, String)>,
    allowed_tolerations: Vec<vkube::translate::placement::TolerationSpec>,
    tolerations: Vec<vkube::translate::placement::TolerationSpec>,
    runtime_classes: Vec<String>,
) -> vkube::translate::pod::PodPolicy {
    let mut placement = vkube::translate::placement::PlacementPolicy {
        node_selector: node_selector.into_iter().collect(),
        tolerations,
        runtime_classes: runtime_classes.into_iter().collect(),
        ..Default::default()
    };
    placement.allowed_tolerations.extend(allowed_tolerations);
    vkube::translate::pod::PodPolicy {
        volumes: vkube::translate::volumes::VolumePolicy::widened(volume_types, csi_drivers),
        placement,
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn manager_command(args: ManagerArgs) -> anyhow::Result<()> {
    let path = args.policy.display().to_string();
    let yaml = std::fs::read_to_string(&args.policy).with_context(|| {
        format!("reading the policy {path} (the chart mounts it; pass --policy)")
    })?;
    let policy = vkube::manager::policy::Policy::from_yaml(&yaml, &path)?;
    let (client, _) = host::host_client(args.kubeconfig.as_deref()).await?;
    let own_namespace = args.lease_namespace.clone();
    let lease = if args.no_leader_election {
        None
    } else {
        let namespace = args.lease_namespace.context(
            "leader election needs the Lease's namespace: set POD_NAMESPACE or pass --lease-namespace (or --no-leader-election)",
        )?;
        let identity = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| format!("vkube-manager-{}", std::process::id()));
        Some(vkube::manager::lease::LeaseConfig {
            namespace,
            name: "vkube-manager".into(),
            identity,
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        })
    };
    tracing::info!(versions = ?policy.allowed_versions(), "vkube manager starting");
    vkube::manager::run(
        client,
        vkube::manager::ManagerOptions {
            policy,
            lease,
            own_namespace,
            waker: args
                .waker_address
                .map(|address| vkube::manager::WakerOptions {
                    address,
                    ports: args.waker_ports.clone(),
                }),
            instance: std::env::var("POD_NAME").ok(),
            metrics_listen: args.metrics_bind_address,
            health_listen: args.health_bind_address,
            stuck_after: Duration::from_secs(args.stuck_after_seconds.max(1)),
            usage_every: std::time::Duration::from_secs(args.usage_every),
        },
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

async fn bench_wake_command(args: BenchWakeArgs) -> anyhow::Result<()> {
    let (host, _) = host::host_client(args.kubeconfig.as_deref()).await?;
    let bench = vkube::bench::wake::WakeBench {
        name: args.name,
        runs: args.runs,
        node: args.node,
        manager_namespace: args.manager_namespace,
        waker_ports: args.waker_ports,
        timeout: Duration::from_secs(args.timeout_seconds),
    };
    let report = vkube::bench::wake::run(host, &bench).await?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.output {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{json}");
    eprint!("{}", vkube::bench::wake::table(&report));
    Ok(())
}

async fn bench_sync_command(args: BenchSyncArgs) -> anyhow::Result<()> {
    let yaml = std::fs::read_to_string(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let virt = vkube::kubeconfig::client_from_yaml(&yaml).await?;
    let (host, _) = host::host_client(args.host.host_kubeconfig.as_deref()).await?;
    let bench = vkube::bench::SyncBench {
        pods: args.pods,
        concurrency: args.concurrency,
        rate: args.rate,
        scenarios: args.scenarios,
        one_pods: args.one_pods,
        steady_fraction: args.steady_fraction,
        deployment_replicas: args.deployment_replicas,
        host_namespace: args
            .host
            .host_namespace
            .unwrap_or_else(|| host::default_namespace(&args.name)),
        vcluster: args.name,
        serve_pid: args.serve_pid,
        // The host cluster's processes all name its directory (where the kubeconfig lives).
        host_marker: args
            .host
            .host_kubeconfig
            .as_deref()
            .and_then(|k| k.parent())
            .map(|d| d.display().to_string()),
        timeout: Duration::from_secs(args.timeout_seconds),
        skip_baseline: args.skip_baseline,
    };
    let report = vkube::bench::run(virt, host, &bench).await?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.output {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, vkube::bench::markdown(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{json}");
    eprint!("{}", vkube::bench::table(&report));
    Ok(())
}

async fn bench_proxy_command(args: BenchProxyArgs) -> anyhow::Result<()> {
    let yaml = std::fs::read_to_string(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let proxy = vkube::kubeconfig::client_from_yaml(&yaml).await?;
    // The controller manager's kubeconfig points straight at the virtual kube-apiserver.
    let kcm_path = args.data_dir.join("controller-manager.kubeconfig");
    let kcm = std::fs::read_to_string(&kcm_path).with_context(|| {
        format!(
            "reading {} (is --data-dir the directory of a running vkube serve?)",
            kcm_path.display()
        )
    })?;
    let direct_server = kube::config::Kubeconfig::from_yaml(&kcm)?
        .clusters
        .into_iter()
        .find_map(|c| c.cluster?.server)
        .with_context(|| format!("no server in {}", kcm_path.display()))?;
    let direct = vkube::kubeconfig::client_from_yaml(&vkube::kubeconfig::with_server(
        &yaml,
        &direct_server,
    )?)
    .await?;
    let (host, _) = host::host_client(args.host.host_kubeconfig.as_deref()).await?;
    let host_namespace = args
        .host
        .host_namespace
        .unwrap_or_else(|| host::default_namespace(&args.name));
    let tenant = vkube::translate::Tenant::new(args.name, host_namespace);
    let bench = vkube::bench::proxy::ProxyBench {
        proxy,
        direct,
        host: Some((host, tenant)),
        requests: args.requests,
        concurrency: args.concurrency,
        list_pods: args.list_pods,
        watch_events: args.watch_events,
        forward_mib: args.forward_mib,
    };
    let report = vkube::bench::proxy::run(&bench).await?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.output {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{json}");
    eprint!("{}", vkube::bench::proxy::table(&report));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn completion_scripts_name_the_subcommands_and_their_flags() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "vkube", &mut out);
            let script = String::from_utf8(out).unwrap();
            for word in ["serve", "manager", "completion", "metrics-bind-address"] {
                assert!(script.contains(word), "{shell}: no {word}");
            }
        }
    }
}
