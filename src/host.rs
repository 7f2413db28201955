//! The tenant's state in its host namespace: the PKI Secret (generated once, reused on every
//! restart so issued kubeconfigs stay valid) and the kubeconfig Secret.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Namespace, Secret, Service,
    ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};

use crate::pki::{Pki, PkiError, PkiSpec};
pub use crate::translate::pod::ApiEndpoint;

pub const FIELD_MANAGER: &str = "vkube";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_VIRTUAL_CLUSTER: &str = "vkube.dev/virtual-cluster";
pub const KUBECONFIG_KEY: &str = "config";
/// Port of the tenant's API Service, as the `kubernetes` Service's.
pub const API_SERVICE_PORT: i32 = 443;
/// The same Service's DNS port (UDP), as the `kube-dns` Service's.
pub const DNS_SERVICE_PORT: i32 = 53;

/// Where this process serves, for the API Service's Endpoints (`--advertise-address`).
#[derive(Debug, Clone, Copy)]
pub struct Advertised {
    pub ip: std::net::IpAddr,
    pub https_port: u16,
    pub dns_port: Option<u16>,
}

/// The host Service in front of the proxy, as found.
#[derive(Debug, Clone)]
pub struct ApiService {
    pub endpoint: ApiEndpoint,
    /// The port vkube's DNS must listen on, when the Service has a DNS port (UDP 53).
    pub dns_target_port: Option<u16>,
    /// The pods behind the Service (the control plane pod, as the manager makes it); `None`
    /// for a selector-less Service (`--advertise-address`).
    pub selector: Option<BTreeMap<String, String>>,
    /// The port the API port targets on those pods, when it is a number.
    pub api_target_port: Option<u16>,
}

pub fn certs_secret_name(tenant: &str) -> String {
    format!("vkube-{tenant}-certs")
}

pub fn kubeconfig_secret_name(tenant: &str) -> String {
    format!("vkube-{tenant}-kubeconfig")
}

pub fn default_namespace(tenant: &str) -> String {
    format!("vkube-{tenant}")
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot reach the host API server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("host kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error(
        "host namespace {0:?} does not exist: create it (kubectl create namespace {0}) or pass --create-namespace"
    )]
    NamespaceMissing(String),
    #[error(
        "secret {namespace}/{name} is corrupt ({source}); delete it to generate new credentials (this invalidates kubeconfigs already handed out)"
    )]
    CorruptSecret {
        namespace: String,
        name: String,
        #[source]
        source: PkiError,
    },
    #[error("secret {namespace}/{name} not found: is the virtual cluster {tenant:?} running?")]
    KubeconfigMissing {
        namespace: String,
        name: String,
        tenant: String,
    },
    #[error("generating credentials: {0}")]
    Pki(#[from] PkiError),
    #[error("host API: {0}")]
    Api(#[source] kube::Error),
}

/// Host client configuration with a short connect timeout, so an unreachable host fails fast.
/// Returns the client and the server URL (for error messages).
pub async fn host_client(
    kubeconfig: Option<&std::path::Path>,
) -> Result<(kube::Client, String), HostError> {
    let config = host_config(kubeconfig).await?;
    let url = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).map_err(|e| HostError::Unreachable {
        url: url.clone(),
        reason: e.to_string(),
    })?;
    Ok((client, url))
}

/// The host client configuration: the kubeconfig given, else in-cluster, else $KUBECONFIG.
pub async fn host_config(kubeconfig: Option<&std::path::Path>) -> Result<kube::Config, HostError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let invalid = |e: &dyn std::error::Error| HostError::Kubeconfig {
                path: path.display().to_string(),
                reason: error_chain(e),
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| invalid(&e))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| invalid(&e))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| HostError::Unreachable {
                url: "(in-cluster or $KUBECONFIG)".into(),
                reason: e.to_string(),
            })?,
    };
    config.connect_timeout = Some(Duration::from_secs(5));
    Ok(config)
}

#[derive(Clone)]
pub struct HostStore {
    client: kube::Client,
    url: String,
    namespace: String,
    tenant: String,
}

fn labels(tenant: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), "vkube".to_string()),
        (LABEL_VIRTUAL_CLUSTER.to_string(), tenant.to_string()),
    ])
}

fn to_bytes(data: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, ByteString> {
    data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()
}

fn from_bytes(data: Option<BTreeMap<String, ByteString>>) -> BTreeMap<String, Vec<u8>> {
    data.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

impl HostStore {
    pub fn new(client: kube::Client, url: &str, namespace: &str, tenant: &str) -> Self {
        HostStore {
            client,
            url: url.into(),
            namespace: namespace.into(),
            tenant: tenant.into(),
        }
    }

    fn api_error(&self, e: kube::Error) -> HostError {
        match &e {
            kube::Error::Api(s) if s.code == 404 && s.message.contains("namespaces") => {
                HostError::NamespaceMissing(self.namespace.clone())
            }
            kube::Error::Api(_) => HostError::Api(e),
            _ => HostError::Unreachable {
                url: self.url.clone(),
                reason: error_chain(&e),
            },
        }
    }

    pub async fn create_namespace(&self) -> Result<(), HostError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(self.namespace.clone()),
                labels: Some(labels(&self.tenant)),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(self.api_error(e)),
        }
    }

    /// Loads the tenant's PKI, generating and storing it the first time. Leaves whose names or
    /// expiry no longer fit are re-issued and stored; CAs never change.
    pub async fn load_or_create_pki(&self, spec: &PkiSpec) -> Result<Pki, HostError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = certs_secret_name(&self.tenant);
        loop {
            let existing = api.get_opt(&name).await.map_err(|e| self.api_error(e))?;
            match existing {
                Some(secret) => {
                    let mut pki = Pki::from_secret_data(&from_bytes(secret.data.clone())).map_err(
                        |source| HostError::CorruptSecret {
                            namespace: self.namespace.clone(),
                            name: name.clone(),
                            source,
                        },
                    )?;
                    let reissued = pki.reconcile(spec)?;
                    if reissued.is_empty() {
                        return Ok(pki);
                    }
                    tracing::info!(
                        ?reissued,
                        "re-issuing certificates whose names or expiry changed"
                    );
                    let mut updated = secret;
                    updated.data = Some(to_bytes(pki.to_secret_data()));
                    match api.replace(&name, &PostParams::default(), &updated).await {
                        Ok(_) => return Ok(pki),
                        // Someone else updated it meanwhile: start over from their version.
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => return Err(self.api_error(e)),
                    }
                }
                None => {
                    let pki = Pki::generate(spec)?;
                    let secret = Secret {
                        metadata: ObjectMeta {
                            name: Some(name.clone()),
                            namespace: Some(self.namespace.clone()),
                            labels: Some(labels(&self.tenant)),
                            ..Default::default()
                        },
                        type_: Some("Opaque".into()),
                        data: Some(to_bytes(pki.to_secret_data())),
                        ..Default::default()
                    };
                    match api.create(&PostParams::default(), &secret).await {
                        Ok(_) => {
                            tracing::info!(secret = %name, "generated new tenant PKI");
                            return Ok(pki);
                        }
                        // Another replica won the race; use its credentials.
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => return Err(self.api_error(e)),
                    }
                }
            }
        }
    }

    pub async fn put_kubeconfig(&self, yaml: &str) -> Result<(), HostError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = kubeconfig_secret_name(&self.tenant);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels(&self.tenant)),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                KUBECONFIG_KEY.to_string(),
                ByteString(yaml.as_bytes().to_vec()),
            )])),
            ..Default::default()
        };
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(&name, &params, &Patch::Apply(&secret))
            .await
            .map_err(|e| self.api_error(e))?;
        Ok(())
    }

    /// The host Service through which the tenant's pods reach this virtual cluster's API proxy
    /// (their `KUBERNETES_SERVICE_HOST`). With `advertise` (vkube runs outside the host's pod
    /// network, as in the tests: the address host pods can reach this proxy at), the Service is
    /// created here without a selector, with Endpoints pointing at that address; otherwise it
    /// is whatever the deployment made (the vkube manager's Service in front of the control
    /// plane pod), if it exists. `None`: no such Service, pods then get no in-cluster API.
    pub async fn api_service(
        &self,
        name: &str,
        advertise: Option<Advertised>,
    ) -> Result<Option<ApiService>, HostError> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        if let Some(adv) = advertise {
            let meta = ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels(&self.tenant)),
                ..Default::default()
            };
            let service = Service {
                metadata: meta.clone(),
                spec: Some(ServiceSpec {
                    ports: Some(
                        std::iter::once(ServicePort {
                            name: Some("https".into()),
                            port: API_SERVICE_PORT,
                            target_port: Some(IntOrString::Int(i32::from(adv.https_port))),
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        })
                        .chain(adv.dns_port.map(|p| ServicePort {
                            name: Some("dns".into()),
                            port: DNS_SERVICE_PORT,
                            target_port: Some(IntOrString::Int(i32::from(p))),
                            protocol: Some("UDP".into()),
                            ..Default::default()
                        }))
                        .collect(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            };
            services
                .patch(name, &params, &Patch::Apply(&service))
                .await
                .map_err(|e| self.api_error(e))?;
            let endpoints = Endpoints {
                metadata: meta,
                subsets: Some(vec![EndpointSubset {
                    addresses: Some(vec![EndpointAddress {
                        ip: adv.ip.to_string(),
                        ..Default::default()
                    }]),
                    ports: Some(
                        std::iter::once(EndpointPort {
                            name: Some("https".into()),
                            port: i32::from(adv.https_port),
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        })
                        .chain(adv.dns_port.map(|p| EndpointPort {
                            name: Some("dns".into()),
                            port: i32::from(p),
                            protocol: Some("UDP".into()),
                            ..Default::default()
                        }))
                        .collect(),
                    ),
                    ..Default::default()
                }]),
            };
            let api: Api<Endpoints> = Api::namespaced(self.client.clone(), &self.namespace);
            api.patch(name, &params, &Patch::Apply(&endpoints))
                .await
                .map_err(|e| self.api_error(e))?;
        }
        let Some(service) = services
            .get_opt(name)
            .await
            .map_err(|e| self.api_error(e))?
        else {
            return Ok(None);
        };
        let spec = service.spec.unwrap_or_default();
        let Some(ip) = spec.cluster_ip.filter(|ip| !ip.is_empty() && ip != "None") else {
            return Ok(None);
        };
        let ports = spec.ports.unwrap_or_default();
        let Some(https) = ports
            .iter()
            .find(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        else {
            return Ok(None);
        };
        let dns_target_port = ports
            .iter()
            .find(|p| p.protocol.as_deref() == Some("UDP") && p.port == DNS_SERVICE_PORT)
            .and_then(|p| match &p.target_port {
                Some(IntOrString::Int(t)) => u16::try_from(*t).ok(),
                None => Some(DNS_SERVICE_PORT as u16),
                Some(IntOrString::String(_)) => None,
            });
        let api_target_port = match &https.target_port {
            Some(IntOrString::Int(t)) => u16::try_from(*t).ok(),
            None => u16::try_from(https.port).ok(),
            Some(IntOrString::String(_)) => None,
        };
        Ok(Some(ApiService {
            endpoint: ApiEndpoint {
                host: ip,
                port: https.port,
            },
            dns_target_port,
            selector: spec.selector.filter(|s| !s.is_empty()),
            api_target_port,
        }))
    }

    /// Applies vkube's base NetworkPolicies (`translate::networkpolicy::default_policies`) in
    /// the host namespace with server-side apply: every tenant pod isolated, the control plane
    /// pod open on its API and DNS ports.
    pub async fn apply_default_network_policies(
        &self,
        control_plane: Option<&crate::translate::networkpolicy::ControlPlane>,
    ) -> Result<(), HostError> {
        use k8s_openapi::api::networking::v1::NetworkPolicy;
        let api: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), &self.namespace);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        for (name, spec) in crate::translate::networkpolicy::default_policies(control_plane) {
            let policy = serde_json::json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": self.namespace, "labels": labels(&self.tenant)},
                "spec": spec,
            });
            api.patch(&name, &params, &Patch::Apply(&policy))
                .await
                .map_err(|e| self.api_error(e))?;
        }
        Ok(())
    }

    pub async fn get_kubeconfig(&self) -> Result<String, HostError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = kubeconfig_secret_name(&self.tenant);
        let secret = api
            .get_opt(&name)
            .await
            .map_err(|e| self.api_error(e))?
            .ok_or_else(|| HostError::KubeconfigMissing {
                namespace: self.namespace.clone(),
                name: name.clone(),
                tenant: self.tenant.clone(),
            })?;
        let bytes = from_bytes(secret.data)
            .remove(KUBECONFIG_KEY)
            .unwrap_or_default();
        String::from_utf8(bytes).map_err(|_| HostError::KubeconfigMissing {
            namespace: self.namespace.clone(),
            name,
            tenant: self.tenant.clone(),
        })
    }
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
