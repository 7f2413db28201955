//! Kubeconfig files for the virtual cluster: rendering (pure) and turning one into a client.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("rendering kubeconfig: {0}")]
    Render(String),
    #[error("parsing kubeconfig: {0}")]
    Parse(#[from] kube::config::KubeconfigError),
    #[error("building client: {0}")]
    Client(#[from] kube::Error),
}

/// Everything a client-certificate kubeconfig holds.
pub struct KubeconfigSpec<'a> {
    /// Used for the cluster, user and context names.
    pub context: &'a str,
    pub server: &'a str,
    pub ca_pem: &'a str,
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
    pub namespace: Option<&'a str>,
}

/// The conventional context name for a tenant.
pub fn context_name(tenant: &str) -> String {
    format!("vkube-{tenant}")
}

pub fn render(spec: &KubeconfigSpec<'_>) -> Result<String, KubeconfigError> {
    let mut context = serde_json::json!({ "cluster": spec.context, "user": spec.context });
    if let Some(ns) = spec.namespace {
        context["namespace"] = ns.into();
    }
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": spec.context,
            "cluster": {
                "server": spec.server,
                "certificate-authority-data": STANDARD.encode(spec.ca_pem),
            }
        }],
        "users": [{
            "name": spec.context,
            "user": {
                "client-certificate-data": STANDARD.encode(spec.cert_pem),
                "client-key-data": STANDARD.encode(spec.key_pem),
            }
        }],
        "contexts": [{ "name": spec.context, "context": context }],
        "current-context": spec.context,
    });
    serde_saphyr::to_string(&doc).map_err(|e| KubeconfigError::Render(e.to_string()))
}

/// Replaces the server URL of every cluster in a kubeconfig (e.g. for a port-forward).
pub fn with_server(yaml: &str, server: &str) -> Result<String, KubeconfigError> {
    let mut kc = kube::config::Kubeconfig::from_yaml(yaml)?;
    for c in &mut kc.clusters {
        if let Some(cluster) = c.cluster.as_mut() {
            cluster.server = Some(server.to_string());
        }
    }
    serde_saphyr::to_string(&kc).map_err(|e| KubeconfigError::Render(e.to_string()))
}

pub async fn client_from_yaml(yaml: &str) -> Result<kube::Client, KubeconfigError> {
    let kc = kube::config::Kubeconfig::from_yaml(yaml)?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

/// Like [`client_from_yaml`], acting as `user` in `groups` (impersonation: the kubeconfig's
/// own identity must be allowed to impersonate them).
pub async fn client_from_yaml_as(
    yaml: &str,
    user: &str,
    groups: &[&str],
) -> Result<kube::Client, KubeconfigError> {
    let mut kc = kube::config::Kubeconfig::from_yaml(yaml)?;
    for u in &mut kc.auth_infos {
        if let Some(auth) = u.auth_info.as_mut() {
            auth.impersonate = Some(user.to_string());
            auth.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
        }
    }
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_kubeconfig_kube_can_read() {
        let yaml = render(&KubeconfigSpec {
            context: "vkube-alice",
            server: "https://127.0.0.1:8443",
            ca_pem: "CA",
            cert_pem: "CERT",
            key_pem: "KEY",
            namespace: Some("default"),
        })
        .unwrap();
        let kc = kube::config::Kubeconfig::from_yaml(&yaml).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("vkube-alice"));
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:8443"));
        assert_eq!(
            cluster.certificate_authority_data.as_deref(),
            Some(STANDARD.encode("CA").as_str())
        );
        let moved = with_server(&yaml, "https://10.0.0.1:443").unwrap();
        let kc = kube::config::Kubeconfig::from_yaml(&moved).unwrap();
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://10.0.0.1:443"));
        let user = kc.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(
            user.client_certificate_data.as_deref(),
            Some(STANDARD.encode("CERT").as_str())
        );
    }
}
