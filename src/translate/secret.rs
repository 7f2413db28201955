//! Secrets: copied with their data under the translated name. Types the host would act on
//! (service-account tokens) become Opaque: the host must not treat a tenant's secret as one of
//! its own service-account tokens.

use k8s_openapi::api::core::v1::Secret;

use super::Tenant;

pub fn to_host(v: &Secret, tenant: &Tenant) -> Secret {
    let ns = v.metadata.namespace.clone().unwrap_or_default();
    let name = v.metadata.name.clone().unwrap_or_default();
    let type_ = match v.type_.as_deref() {
        Some("kubernetes.io/service-account-token") | None => Some("Opaque".to_string()),
        Some(other) => Some(other.to_string()),
    };
    Secret {
        metadata: tenant.host_meta(&v.metadata, tenant.subdomain_name(&ns, &name)),
        data: v.data.clone(),
        string_data: None,
        type_,
        immutable: v.immutable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;

    #[test]
    fn service_account_tokens_become_opaque() {
        let t = Tenant::new("alice", "vkube-alice");
        let v = Secret {
            metadata: ObjectMeta {
                name: Some("tok".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/service-account-token".into()),
            data: Some([("token".to_string(), ByteString(b"abc".to_vec()))].into()),
            ..Default::default()
        };
        let h = to_host(&v, &t);
        assert_eq!(h.type_.as_deref(), Some("Opaque"));
        assert_eq!(h.data, v.data);
        let mut docker = v.clone();
        docker.type_ = Some("kubernetes.io/dockerconfigjson".into());
        assert_eq!(
            to_host(&docker, &t).type_.as_deref(),
            Some("kubernetes.io/dockerconfigjson")
        );
    }
}
