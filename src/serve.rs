//! `vkube serve`: one tenant's control plane. Order matters for failing fast and cleanly:
//! validate flags and binaries, bind the listener, load or create credentials on the host, start
//! etcd → kube-apiserver (wait for /readyz) → controller-manager, then open the proxy and publish
//! the kubeconfig. Any failure before "ready" stops whatever was started.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::controlplane::{Binaries, ControlPlane, ControlPlaneConfig, ControlPlaneError};
use crate::host::{HostError, HostStore};
use crate::kubeconfig::{self, KubeconfigError, KubeconfigSpec};
use crate::names::{InvalidName, validate_tenant_name};
use crate::pki::{Authority, Leaf, PkiError, PkiSpec};
use crate::proxy::{Proxy, ProxyConfig, ProxyError, auth::TokenAuthenticator};
use crate::syncer::{self, SyncError, SyncerConfig};
use crate::tls::{self, TlsError};
use crate::translate::Tenant;
use crate::translate::endpoints::EndpointPolicy;
use crate::translate::ingress::IngressPolicy;
use crate::translate::networkpolicy::{self as netpol, EgressPolicy, TenantNetwork};
use crate::translate::security::Level;
use crate::translate::service::ServicePolicy;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Name(#[from] InvalidName),
    #[error(transparent)]
    ControlPlane(#[from] ControlPlaneError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error(transparent)]
    Dns(#[from] crate::dns::server::DnsError),
    #[error(
        "applying the default tenant NetworkPolicies in host namespace {namespace}: {source}; the Role in manifests/serve-rbac.yaml grants networkpolicies, or pass --default-network-policy off where the namespace's policies are kept by someone else (the vkube manager)"
    )]
    DefaultNetworkPolicy {
        namespace: String,
        #[source]
        source: Box<HostError>,
    },
    #[error(transparent)]
    Credentials(#[from] crate::credentials::CredentialsError),
    #[error("the admin ClusterRoleBinding in the virtual API: {0}")]
    AdminBinding(#[source] kube::Error),
    #[error(transparent)]
    Egress(#[from] crate::egress::server::EgressError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::server::BindError),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub name: String,
    pub host_kubeconfig: Option<PathBuf>,
    pub host_namespace: Option<String>,
    pub create_namespace: bool,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub binaries: Binaries,
    /// The minor the control plane's binaries must be (`--kubernetes-version`).
    pub kubernetes_version: Option<crate::controlplane::version::Minor>,
    /// Feature gates of the virtual API server and controller manager (`--feature-gates`).
    pub feature_gates: Option<crate::controlplane::features::FeatureGates>,
    /// API groups and versions of the virtual API server (`--runtime-config`).
    pub runtime_config: Option<crate::controlplane::features::RuntimeConfig>,
    pub service_cidr: String,
    /// Host Service that exposes the proxy (its DNS names go into the serving certificate).
    pub service_name: Option<String>,
    /// Where host pods reach this process's proxy when it runs outside the host's pod network
    /// (tests, `--driver process`): the API Service then gets Endpoints at this address.
    pub advertise_address: Option<std::net::IpAddr>,
    /// Where vkube's cluster DNS listens (default: the proxy's IP, at the port the API Service
    /// names, or any free port with `advertise_address`).
    pub dns_listen: Option<SocketAddr>,
    pub cluster_domain: String,
    /// Resolver for names outside the cluster domain (default: /etc/resolv.conf's first).
    pub upstream_dns: Option<SocketAddr>,
    pub extra_sans: Vec<String>,
    pub kubeconfig_out: Option<PathBuf>,
    pub kubeconfig_server: Option<String>,
    pub startup_timeout: Duration,
    /// How long to keep serving after the shutdown signal before stopping.
    pub shutdown_delay: Duration,
    /// Client certificates issued before this are revoked (`--credentials-not-before`, RFC 3339);
    /// the admin certificate is re-issued after it.
    pub credentials_not_before: Option<String>,
    /// Syncer settings; `None` runs the control plane without syncing anything to the host.
    pub syncer: Option<SyncerOptions>,
    /// Apply vkube's base NetworkPolicies in the host namespace (off where the manager does).
    pub default_network_policy: bool,
    /// What the virtual API server may connect to on the tenant's behalf (`crate::egress`).
    pub apiserver_egress: crate::egress::EgressMode,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (plain HTTP, no credentials);
    /// `None`: nowhere.
    pub metrics_listen: Option<SocketAddr>,
}

/// What the syncer copies and allows; the tenant and host namespace come from the serve options.
#[derive(Debug, Clone)]
pub struct SyncerOptions {
    pub concurrency: u16,
    /// Pod creates through the proxy wait while this many pods wait for their host pod
    /// (`syncer::backlog::PodCreatePace`); 0: not paced.
    pub pod_create_pace: usize,
    pub sync_all_config_maps: bool,
    pub sync_all_secrets: bool,
    pub service_policy: ServicePolicy,
    pub endpoint_policy: EndpointPolicy,
    pub ingress_policy: IngressPolicy,
    pub pod_security: Level,
    /// Volume types, CSI drivers and placement for tenants' pods.
    pub pod_policy: crate::translate::pod::PodPolicy,
    /// Label and annotation keys copied to the host unchanged.
    pub metadata: crate::translate::MetadataPolicy,
    pub node_sync: syncer::NodeSync,
    pub storage_sync: syncer::StorageSync,
    /// The admin's egress ranges for tenant pods.
    pub egress: EgressPolicy,
    /// Custom kinds synced down, host kinds shown read-only, VolumeSnapshots.
    pub custom_kinds: Vec<crate::translate::custom::CustomKind>,
    pub host_kinds: Vec<crate::translate::custom::HostKind>,
    pub volume_snapshots: bool,
}

/// Runs until `shutdown` resolves, then stops everything in order.
pub async fn run(
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let started = Instant::now();
    validate_tenant_name(&opts.name)?;
    let credentials_not_before = opts
        .credentials_not_before
        .as_deref()
        .map(|t| crate::credentials::parse_not_before(t, time::OffsetDateTime::now_utc()))
        .transpose()?;
    opts.binaries.check().map_err(ControlPlaneError::from)?;
    let namespace = opts
        .host_namespace
        .clone()
        .unwrap_or_else(|| crate::host::default_namespace(&opts.name));
    let listener = crate::proxy::bind(opts.listen).await?;
    let metrics_listener = match opts.metrics_listen {
        Some(addr) => Some(crate::metrics::server::bind(addr).await?),
        None => None,
    };
    let listen_addr = listener.local_addr().unwrap_or(opts.listen);

    let (host, host_url) = crate::host::host_client(opts.host_kubeconfig.as_deref()).await?;
    let store = HostStore::new(host.clone(), &host_url, &namespace, &opts.name);
    if opts.create_namespace {
        store.create_namespace().await?;
    }
    let service = opts
        .service_name
        .clone()
        .unwrap_or_else(|| format!("vkube-{}", opts.name));
    let mut extra_sans = opts.extra_sans.clone();
    if !listen_addr.ip().is_unspecified() {
        extra_sans.push(listen_addr.ip().to_string());
    }
    // Pods reach the virtual API (and vkube's DNS) at the API Service's ClusterIP: in-cluster
    // clients verify the serving certificate against that IP. With --advertise-address the
    // Service is ours to make, so the DNS socket is bound first (its port goes into it);
    // otherwise the Service says which port DNS must listen on.
    let dns_at = |port: u16| {
        opts.dns_listen
            .unwrap_or_else(|| SocketAddr::new(listen_addr.ip(), port))
    };
    let mut dns_socket = None;
    let advertised = match opts.advertise_address {
        Some(ip) => {
            // A UDP socket on 0.0.0.0 answers from whichever address routes back to the pod,
            // which kube-proxy's reverse NAT does not recognise: bind the advertised one.
            let addr = match opts.dns_listen {
                Some(a) => a,
                None if listen_addr.ip().is_unspecified() => SocketAddr::new(ip, 0),
                None => dns_at(0),
            };
            let socket = crate::dns::server::bind_std(addr)?;
            let dns_port = socket.local_addr().map(|a| a.port()).ok();
            dns_socket = Some(socket);
            Some(crate::host::Advertised {
                ip,
                https_port: listen_addr.port(),
                dns_port,
            })
        }
        None => None,
    };
    let api_service = store.api_service(&service, advertised).await?;
    if dns_socket.is_none()
        && let Some(port) = api_service.as_ref().and_then(|s| s.dns_target_port)
    {
        dns_socket = Some(crate::dns::server::bind_std(dns_at(port))?);
    }
    // Where the tenant's pods reach this control plane, for the network policies: the advertised
    // address, or the pods behind the API Service (the manager's StatefulSet).
    let tenant_control_plane = match (&advertised, &api_service) {
        (Some(a), _) => Some(netpol::ControlPlane::Address {
            ip: a.ip,
            api_port: i32::from(a.https_port),
            dns_port: a.dns_port.map(i32::from),
        }),
        (None, Some(s)) => s
            .selector
            .clone()
            .zip(s.api_target_port)
            .map(|(selector, port)| netpol::ControlPlane::Pod {
                selector,
                api_port: i32::from(port),
                dns_port: s.dns_target_port.map(i32::from),
            }),
        (None, None) => None,
    };
    if opts.default_network_policy {
        store
            .apply_default_network_policies(tenant_control_plane.as_ref())
            .await
            .map_err(|source| ServeError::DefaultNetworkPolicy {
                namespace: namespace.clone(),
                source: Box::new(source),
            })?;
    }
    let api_endpoint = api_service.map(|s| s.endpoint);
    if let Some(ep) = &api_endpoint {
        extra_sans.push(ep.host.clone());
    }
    if let Some(a) = &advertised {
        extra_sans.push(a.ip.to_string());
    }
    let cluster_dns = match (&api_endpoint, &dns_socket) {
        (Some(ep), Some(_)) => Some(crate::translate::pod::ClusterDns {
            nameserver: ep.host.clone(),
            domain: opts.cluster_domain.clone(),
        }),
        _ => None,
    };
    let spec = PkiSpec::new(&opts.name, &service, &namespace, &extra_sans)
        .with_credentials_not_before(credentials_not_before);
    let pki = store.load_or_create_pki(&spec).await?;

    std::fs::create_dir_all(&opts.data_dir).map_err(|source| ServeError::Write {
        path: opts.data_dir.clone(),
        source,
    })?;
    let files = pki.write_files(&opts.data_dir.join("pki"))?;

    // The API server's outbound connections go through the egress guard from its first
    // moment (the aggregator probes APIServices at start): bound before it starts, judged
    // against the syncer's caches once they are complete.
    let shared_stores = syncer::addresses::SharedStores::default();
    // The virtual cluster's metrics.k8s.io API, served through the egress guard once the
    // virtual API and the syncer exist (`crate::metrics_api`).
    let metrics_api: MetricsCell = Default::default();
    let egress_guard = match opts.apiserver_egress {
        crate::egress::EgressMode::Unrestricted => {
            tracing::warn!(
                "--apiserver-egress unrestricted: the virtual API server connects wherever a tenant points it (webhooks, proxy subresources, aggregated APIs)"
            );
            None
        }
        mode => {
            let addresses: std::sync::Arc<dyn crate::egress::TenantAddresses> = match &opts.syncer {
                Some(_) => std::sync::Arc::new(shared_stores.clone()),
                None => std::sync::Arc::new(crate::egress::NoAddresses),
            };
            let policy = crate::egress::EgressPolicy {
                mode,
                allowed: opts
                    .syncer
                    .as_ref()
                    .map(|s| s.endpoint_policy.allowed.clone())
                    .unwrap_or_default(),
            };
            let guard = crate::egress::server::EgressGuard::bind(
                &crate::egress::server::socket_path(&opts.data_dir),
                policy,
                addresses,
            )?;
            Some(match &opts.syncer {
                Some(_) => guard.with_local(metrics_backend(metrics_api.clone())),
                None => guard,
            })
        }
    };
    let egress_socket = egress_guard.as_ref().map(|g| g.path().to_path_buf());
    let (egress_stop, egress_stopped) = watch::channel(false);
    let egress_task = egress_guard.map(|g| tokio::spawn(g.serve(egress_stopped)));

    // Kubeconfig for the controller manager: straight to the loopback API server. The port is
    // only known after the control plane picks it, so the file is written by the ready check.
    let kcm_kubeconfig = opts.data_dir.join("controller-manager.kubeconfig");
    // Built by the first ready check against an API server URL; a start on other ports (after a
    // lost port race) has another URL, so the client is kept with the URL it was built for.
    let internal_client: std::sync::Arc<std::sync::Mutex<Option<(String, kube::Client)>>> =
        Default::default();

    let cp_config = ControlPlaneConfig {
        binaries: opts.binaries.clone(),
        data_dir: opts.data_dir.clone(),
        service_cidr: opts.service_cidr.clone(),
        startup_timeout: opts.startup_timeout,
        egress_socket,
        version: opts.kubernetes_version,
        feature_gates: opts.feature_gates.clone(),
        runtime_config: opts.runtime_config.clone(),
    };
    // vkube's own client identity: never the certificate handed out in the kubeconfig.
    let internal = pki.leaf(Leaf::Internal).clone();
    let kcm = pki.leaf(Leaf::ControllerManager).clone();
    let ca_pem = pki.ca(Authority::Tenant).cert_pem.clone();
    let control_plane = ControlPlane::start(&cp_config, &files, &kcm_kubeconfig, |url| {
        let ca_pem = ca_pem.clone();
        let own = internal.clone();
        let kcm = kcm.clone();
        let kcm_kubeconfig = kcm_kubeconfig.clone();
        let internal_client = internal_client.clone();
        async move {
            let cached = internal_client.lock().ok().and_then(|c| {
                c.as_ref()
                    .filter(|(u, _)| *u == url)
                    .map(|(_, c)| c.clone())
            });
            let client = match cached {
                Some(c) => c,
                None => {
                    let Ok(yaml) = kubeconfig::render(&KubeconfigSpec {
                        context: "vkube-internal",
                        server: &url,
                        ca_pem: &ca_pem,
                        cert_pem: &own.cert_pem,
                        key_pem: &own.key_pem,
                        namespace: None,
                    }) else {
                        return false;
                    };
                    let Ok(client) = kubeconfig::client_from_yaml(&yaml).await else {
                        return false;
                    };
                    let Ok(kcm_yaml) = kubeconfig::render(&KubeconfigSpec {
                        context: "kube-controller-manager",
                        server: &url,
                        ca_pem: &ca_pem,
                        cert_pem: &kcm.cert_pem,
                        key_pem: &kcm.key_pem,
                        namespace: None,
                    }) else {
                        return false;
                    };
                    if write_private(&kcm_kubeconfig, kcm_yaml.as_bytes()).is_err() {
                        return false;
                    }
                    if let Ok(mut c) = internal_client.lock() {
                        *c = Some((url.clone(), client.clone()));
                    }
                    client
                }
            };
            api_ready(&client).await
        }
    })
    .await?;
    let internal = internal_client
        .lock()
        .ok()
        .and_then(|c| c.as_ref().map(|(_, c)| c.clone()));
    let Some(internal) = internal else {
        control_plane.stop().await;
        return Err(ControlPlaneError::Timeout {
            component: "kube-apiserver".into(),
            timeout: opts.startup_timeout,
            last_line: None,
        }
        .into());
    };

    let virt_client = internal.clone();
    // Ready means a tenant can create pods right away: that needs the default ServiceAccount,
    // which the controller manager creates a moment after it starts.
    if !default_service_account(&virt_client, opts.startup_timeout).await {
        control_plane.stop().await;
        return Err(ControlPlaneError::Timeout {
            component: "kube-controller-manager (default ServiceAccount)".into(),
            timeout: opts.startup_timeout,
            last_line: None,
        }
        .into());
    }
    // The handed-out admin is cluster-admin through RBAC: the binding exists before any
    // kubeconfig is published, and is put back if the tenant removes it.
    if let Err(e) = crate::credentials::ensure_admin_binding(&virt_client).await {
        control_plane.stop().await;
        return Err(ServeError::AdminBinding(e));
    }
    let mut tenant = Tenant::new(opts.name.clone(), namespace.clone());
    if let Some(o) = &opts.syncer {
        tenant.metadata = std::sync::Arc::new(o.metadata.clone());
    }
    let pod_router = crate::proxy::pods::PodRouter {
        virt: virt_client.clone(),
        host: host.clone(),
        tenant: tenant.clone(),
    };
    let client_certs = crate::proxy::auth::ClientCertPolicy {
        tenant: opts.name.clone(),
        not_before: spec.credentials_not_before,
    };
    let activity = crate::proxy::activity::Activity::new();
    let pod_backlog = std::sync::Arc::new(syncer::backlog::Backlog::default());
    let service_recreations = std::sync::Arc::new(syncer::recreations::Recreations::default());
    let proxy_config = match proxy_config(&pki, &control_plane, internal, pod_router, client_certs)
    {
        Ok(c) => ProxyConfig {
            activity: Some(activity.clone()),
            pod_pace: opts
                .syncer
                .as_ref()
                .filter(|s| s.pod_create_pace > 0)
                .map(|s| syncer::backlog::PodCreatePace {
                    backlog: pod_backlog.clone(),
                    limit: s.pod_create_pace,
                }),
            service_recreations: opts.syncer.as_ref().map(|_| service_recreations.clone()),
            ..c
        },
        Err(e) => {
            control_plane.stop().await;
            return Err(e);
        }
    };
    // Ready means the syncer is caught up too: every watch delivered its initial list, so what
    // the tenant creates now is acted on at once.
    let syncer_caught_up: crate::proxy::ReadinessGate = {
        let stores = shared_stores.clone();
        let syncing = opts.syncer.is_some();
        std::sync::Arc::new(move || {
            if !syncing || stores.is_published() {
                Ok(())
            } else {
                Err("the syncer is listing the virtual and host objects (initial sync)".into())
            }
        })
    };
    let proxy = Proxy::new(listener, proxy_config).with_readiness_gate(syncer_caught_up.clone());
    proxy.set_ready(true);
    let (stop_tx, stop_rx) = watch::channel(false);
    let proxy_task = tokio::spawn(proxy.serve(stop_rx));
    let prometheus_task = metrics_listener.map(|l| {
        tracing::info!(listen = ?l.local_addr().ok(), "metrics, /healthz and /readyz serving");
        tokio::spawn(crate::metrics::server::serve(
            l,
            crate::metrics::server::Endpoints {
                metrics: Some(crate::metrics::Component::Serve),
                healthz: crate::metrics::server::always_ok(),
                readyz: syncer_caught_up,
            },
            stop_tx.subscribe(),
        ))
    });

    let server = opts.kubeconfig_server.clone().unwrap_or_else(|| {
        let host = if listen_addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            listen_addr.ip().to_string()
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        format!("https://{host}:{}", listen_addr.port())
    });
    let published = publish_kubeconfig(&opts, &pki, &server, &store).await;
    if let Err(e) = published {
        let _ = stop_tx.send(true);
        let _ = proxy_task.await;
        control_plane.stop().await;
        return Err(e);
    }
    let activity_task = tokio::spawn(publish_activity(
        host.clone(),
        namespace.clone(),
        opts.name.clone(),
        activity,
        stop_tx.subscribe(),
    ));
    let binding_task = tokio::spawn(crate::credentials::keep_admin_binding(
        virt_client.clone(),
        stop_tx.subscribe(),
    ));
    let renew_task = {
        let (opts, server, store) = (opts.clone(), server.clone(), store.clone());
        let publisher = store.clone();
        tokio::spawn(crate::credentials::keep_admin_certificate(
            store,
            spec.clone(),
            pki.leaf(Leaf::Admin).clone(),
            move |pki| {
                let (opts, server, store) = (opts.clone(), server.clone(), publisher.clone());
                async move {
                    publish_kubeconfig(&opts, &pki, &server, &store)
                        .await
                        .map_err(|e| e.to_string())
                }
            },
            stop_tx.subscribe(),
        ))
    };
    // vkube's own identity towards the virtual API for the read-only mirrors: vkube's internal
    // identity impersonating a user no tenant kubeconfig carries (see `syncer::storage`).
    let mirror_writer = match mirror_writer_client(&pki, &control_plane.apiserver_url()).await {
        Ok(c) => c,
        Err(e) => {
            let _ = stop_tx.send(true);
            let _ = proxy_task.await;
            control_plane.stop().await;
            return Err(e);
        }
    };
    let (syncer_stop, syncer_stopped) = tokio::sync::oneshot::channel::<()>();
    let syncer_task = opts.syncer.clone().map(|o| {
        let config = SyncerConfig {
            concurrency: o.concurrency,
            sync_all_config_maps: o.sync_all_config_maps,
            sync_all_secrets: o.sync_all_secrets,
            service_policy: o.service_policy,
            virtual_service_ranges: opts
                .service_cidr
                .split(',')
                .filter_map(|c| c.trim().parse().ok())
                .collect(),
            endpoint_policy: o.endpoint_policy,
            ingress_policy: o.ingress_policy,
            pod_security: o.pod_security,
            pod_policy: std::sync::Arc::new(o.pod_policy),
            api_endpoint: api_endpoint.clone(),
            cluster_dns: cluster_dns.clone(),
            node_sync: o.node_sync,
            storage_sync: o.storage_sync,
            network: TenantNetwork {
                control_plane: tenant_control_plane.clone().into_iter().collect(),
                egress: EgressPolicy {
                    allow: o.egress.allow.clone(),
                    // The virtual service range holds the host's service IPs (see --service-cidr).
                    deny: o
                        .egress
                        .deny
                        .iter()
                        .copied()
                        .chain(
                            opts.service_cidr
                                .split(',')
                                .filter_map(|c| c.trim().parse().ok()),
                        )
                        .collect(),
                },
            },
            shared_stores: shared_stores.clone(),
            pod_backlog: pod_backlog.clone(),
            service_recreations: service_recreations.clone(),
            custom_kinds: o.custom_kinds.clone(),
            host_kinds: o.host_kinds.clone(),
            volume_snapshots: o.volume_snapshots,
            ..SyncerConfig::new(tenant.clone())
        };
        let virt = virt_client.clone();
        let writer = mirror_writer.clone();
        tokio::spawn(syncer::run(
            virt,
            writer,
            host.clone(),
            config,
            async move {
                let _ = syncer_stopped.await;
            },
        ))
    });
    let metrics_api_task = match &opts.syncer {
        Some(o) => match crate::metrics_api::MetricsApi::new(
            tenant.clone(),
            host.clone(),
            shared_stores.clone(),
            o.node_sync,
        ) {
            Ok(api) => {
                let ca = api.ca_bundle().to_string();
                let _ = metrics_api.set(std::sync::Arc::new(api));
                Some(tokio::spawn(crate::metrics_api::keep_registered(
                    virt_client.clone(),
                    ca,
                    stop_tx.subscribe(),
                )))
            }
            Err(e) => {
                tracing::warn!(error = %e, "the virtual cluster's metrics API is not served");
                None
            }
        },
        None => None,
    };
    let dns_task = match dns_socket {
        Some(socket) => {
            let (catalog, drivers) = crate::dns::catalog::StoreCatalog::new(
                virt_client.clone(),
                host.clone(),
                tenant,
                api_endpoint.as_ref().and_then(|ep| ep.host.parse().ok()),
            );
            let upstream = opts.upstream_dns.or_else(|| {
                std::fs::read_to_string("/etc/resolv.conf")
                    .ok()
                    .and_then(|t| crate::dns::server::upstream_from_resolv_conf(&t))
            });
            match crate::dns::server::DnsServer::from_std(
                socket,
                std::sync::Arc::new(catalog),
                &opts.cluster_domain,
                upstream,
            ) {
                Ok(server) => {
                    tracing::info!(listen = ?server.local_addr().ok(), ?upstream, "cluster DNS serving");
                    let stop = stop_tx.subscribe();
                    Some(tokio::spawn(async move {
                        let watches = futures::future::join_all(drivers);
                        tokio::select! {
                            _ = watches => {}
                            _ = server.serve(stop) => {}
                        }
                    }))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster DNS not started");
                    None
                }
            }
        }
        None => None,
    };
    let pids = control_plane.pids();
    tracing::info!(
        vcluster = %opts.name,
        listen = %listen_addr,
        %server,
        elapsed_ms = started.elapsed().as_millis() as u64,
        ?pids,
        "virtual cluster ready"
    );

    shutdown.await;
    if !opts.shutdown_delay.is_zero() {
        // Endpoints drop a terminating pod at once, kube-proxy a moment later: requests that
        // still come here meanwhile are answered.
        tracing::info!(vcluster = %opts.name, delay = ?opts.shutdown_delay, "shutting down after the delay");
        tokio::time::sleep(opts.shutdown_delay).await;
    }
    tracing::info!(vcluster = %opts.name, "shutting down");
    let _ = syncer_stop.send(());
    if let Some(task) = syncer_task {
        match task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "syncer ended with an error"),
            Err(e) => tracing::warn!(error = %e, "syncer task failed"),
            Ok(Ok(())) => {}
        }
    }
    let _ = stop_tx.send(true);
    let _ = proxy_task.await;
    if let Some(task) = prometheus_task {
        let _ = task.await;
    }
    if let Some(task) = dns_task {
        let _ = task.await;
    }
    // The last use is written once more on the way out: a request that came in while the
    // manager was putting the cluster to sleep wakes it again (see `manager::sleep`).
    let _ = activity_task.await;
    let _ = binding_task.await;
    let _ = renew_task.await;
    if let Some(task) = metrics_api_task {
        let _ = task.await;
    }
    control_plane.stop().await;
    let _ = egress_stop.send(true);
    if let Some(task) = egress_task {
        let _ = task.await;
    }
    tracing::info!(vcluster = %opts.name, "stopped");
    Ok(())
}

/// Publishes the cluster's last use (`proxy::activity`) as the `renewTime` of the Lease
/// [`crate::proxy::activity::LEASE`] in the host namespace (and when the latest request
/// started as its `acquireTime`), for the manager's sleep decision:
/// at once after a quiet spell, then at most every 30 s while the cluster is used, nothing while
/// it is idle, and once more when `stop` flips (shutdown). Failures are logged and retried.
async fn publish_activity(
    host: kube::Client,
    namespace: String,
    tenant: String,
    activity: std::sync::Arc<crate::proxy::activity::Activity>,
    mut stop: watch::Receiver<bool>,
) {
    use crate::proxy::activity::{LEASE, PUBLISH_EVERY};
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    let api: kube::Api<Lease> = kube::Api::namespaced(host, &namespace);
    let mut published: Option<k8s_openapi::jiff::Timestamp> = None;
    let mut written_at: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        let Some(last) = activity.last() else {
            if stopping {
                return;
            }
            continue;
        };
        let due = written_at.is_none_or(|w| w.elapsed() >= PUBLISH_EVERY);
        if published.is_none_or(|p| last > p) && (due || stopping) {
            let lease = Lease {
                metadata: kube::api::ObjectMeta {
                    name: Some(LEASE.into()),
                    namespace: Some(namespace.clone()),
                    labels: Some(
                        [
                            (
                                crate::host::LABEL_MANAGED_BY.to_string(),
                                "vkube".to_string(),
                            ),
                            (
                                crate::host::LABEL_VIRTUAL_CLUSTER.to_string(),
                                tenant.clone(),
                            ),
                        ]
                        .into(),
                    ),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(format!("vkube serve {tenant}")),
                    renew_time: Some(MicroTime(last)),
                    acquire_time: activity.last_start().map(MicroTime),
                    ..Default::default()
                }),
            };
            let params = kube::api::PatchParams::apply(crate::host::FIELD_MANAGER).force();
            match api
                .patch(LEASE, &params, &kube::api::Patch::Apply(&lease))
                .await
            {
                Ok(_) => {
                    published = Some(last);
                    written_at = Some(Instant::now());
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    lease = LEASE,
                    "publishing the last use of the cluster failed (the Role in manifests/serve-rbac.yaml grants leases); retrying"
                ),
            }
        }
        if stopping {
            return;
        }
    }
}

type MetricsCell =
    std::sync::Arc<std::sync::OnceLock<std::sync::Arc<crate::metrics_api::MetricsApi>>>;

/// The egress guard's in-process backend for the metrics API: a connection that arrives before
/// the API exists is closed (the aggregator retries).
fn metrics_backend(cell: MetricsCell) -> crate::egress::server::LocalBackend {
    crate::egress::server::LocalBackend {
        host: crate::metrics_api::BACKEND_HOST.into(),
        port: crate::metrics_api::BACKEND_PORT,
        serve: std::sync::Arc::new(move |io| {
            let api = cell.get().cloned();
            Box::pin(async move {
                if let Some(api) = api {
                    api.serve_connection(io).await;
                }
            })
        }),
    }
}

async fn default_service_account(client: &kube::Client, timeout: Duration) -> bool {
    let api: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
        kube::Api::namespaced(client.clone(), "default");
    // The controller manager's service-account controller needs a few seconds after start to
    // sync its informers; creating the object ourselves makes a new tenant usable at once (the
    // controller adopts it as is).
    let sa = k8s_openapi::api::core::v1::ServiceAccount {
        metadata: kube::api::ObjectMeta {
            name: Some("default".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let _ = api.create(&kube::api::PostParams::default(), &sa).await;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = api.get_opt("default").await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn api_ready(client: &kube::Client) -> bool {
    let Ok(req) = http::Request::get("/readyz").body(Vec::new()) else {
        return false;
    };
    matches!(client.request_text(req).await, Ok(body) if body.trim() == "ok")
}

fn proxy_config(
    pki: &crate::pki::Pki,
    control_plane: &ControlPlane,
    internal: kube::Client,
    pods: crate::proxy::pods::PodRouter,
    client_certs: crate::proxy::auth::ClientCertPolicy,
) -> Result<ProxyConfig, ServeError> {
    let proxy_leaf = pki.leaf(Leaf::Proxy);
    let tenant_ca = &pki.ca(Authority::Tenant).cert_pem;
    let front = pki.leaf(Leaf::FrontProxyClient);
    Ok(ProxyConfig {
        tls: tls::server_config(&proxy_leaf.cert_pem, &proxy_leaf.key_pem, tenant_ca)?,
        backend_url: control_plane.apiserver_url(),
        backend_tls: tls::client_config(tenant_ca, &front.cert_pem, &front.key_pem)?,
        tokens: TokenAuthenticator::new(internal),
        client_certs,
        pods: Some(pods),
        activity: None,
        pod_pace: None,
        service_recreations: None,
    })
}

async fn publish_kubeconfig(
    opts: &ServeOptions,
    pki: &crate::pki::Pki,
    server: &str,
    store: &HostStore,
) -> Result<(), ServeError> {
    let admin = pki.leaf(Leaf::Admin);
    let context = kubeconfig::context_name(&opts.name);
    let yaml = kubeconfig::render(&KubeconfigSpec {
        context: &context,
        server,
        ca_pem: &pki.ca(Authority::Tenant).cert_pem,
        cert_pem: &admin.cert_pem,
        key_pem: &admin.key_pem,
        namespace: None,
    })?;
    if let Some(path) = &opts.kubeconfig_out {
        write_private(path, yaml.as_bytes())?;
    }
    store.put_kubeconfig(&yaml).await?;
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ServeError> {
    crate::private_file::write(path, bytes).map_err(|source| ServeError::Write {
        path: path.into(),
        source,
    })
}

/// A client of the virtual API server (loopback) acting as [`syncer::storage::MIRROR_WRITER`].
async fn mirror_writer_client(
    pki: &crate::pki::Pki,
    url: &str,
) -> Result<kube::Client, ServeError> {
    let internal = pki.leaf(Leaf::Internal);
    let yaml = kubeconfig::render(&KubeconfigSpec {
        context: "vkube-mirror-writer",
        server: url,
        ca_pem: &pki.ca(Authority::Tenant).cert_pem,
        cert_pem: &internal.cert_pem,
        key_pem: &internal.key_pem,
        namespace: None,
    })?;
    Ok(kubeconfig::client_from_yaml_as(
        &yaml,
        syncer::storage::MIRROR_WRITER,
        &[crate::pki::INTERNAL_GROUP],
    )
    .await?)
}
