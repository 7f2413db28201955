//! ConfigMaps: copied with their data under the translated name.

use k8s_openapi::api::core::v1::ConfigMap;

use super::Tenant;

pub fn to_host(v: &ConfigMap, tenant: &Tenant) -> ConfigMap {
    let ns = v.metadata.namespace.clone().unwrap_or_default();
    let name = v.metadata.name.clone().unwrap_or_default();
    ConfigMap {
        metadata: tenant.host_meta(&v.metadata, tenant.subdomain_name(&ns, &name)),
        data: v.data.clone(),
        binary_data: v.binary_data.clone(),
        immutable: v.immutable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    #[test]
    fn data_is_copied_under_the_translated_name() {
        let t = Tenant::new("alice", "vkube-alice");
        let v = ConfigMap {
            metadata: ObjectMeta {
                name: Some("kube-root-ca.crt".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            data: Some([("ca.crt".to_string(), "PEM".to_string())].into()),
            ..Default::default()
        };
        let h = to_host(&v, &t);
        assert_eq!(
            h.metadata.name.as_deref(),
            Some("kube-root-ca.crt-x-default-x-alice")
        );
        assert_eq!(h.data, v.data);
    }
}
