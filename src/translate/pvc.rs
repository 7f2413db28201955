//! PersistentVolumeClaims: the host claim requests the same storage; the tenant cannot pick a
//! host PersistentVolume (volumeName, selector), which would let it claim another tenant's data.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimSpec};

use super::Tenant;

pub fn to_host(v: &PersistentVolumeClaim, tenant: &Tenant) -> PersistentVolumeClaim {
    let ns = v.metadata.namespace.clone().unwrap_or_default();
    let name = v.metadata.name.clone().unwrap_or_default();
    let vspec = v.spec.clone().unwrap_or_default();
    let translate_ref = |kind: &str, n: &str| -> String {
        // Only objects that live in the same namespace and that vkube syncs can be referenced.
        if kind == "PersistentVolumeClaim" {
            tenant.subdomain_name(&ns, n)
        } else {
            n.to_string()
        }
    };
    let data_source = vspec.data_source.clone().map(|mut r| {
        r.name = translate_ref(&r.kind, &r.name);
        r
    });
    let data_source_ref = vspec.data_source_ref.clone().map(|mut r| {
        r.name = translate_ref(&r.kind, &r.name);
        r.namespace = None;
        r
    });
    PersistentVolumeClaim {
        metadata: tenant.host_meta(&v.metadata, tenant.subdomain_name(&ns, &name)),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: vspec.access_modes,
            resources: vspec.resources,
            storage_class_name: vspec.storage_class_name,
            volume_mode: vspec.volume_mode,
            volume_attributes_class_name: vspec.volume_attributes_class_name,
            data_source,
            data_source_ref,
            selector: None,
            volume_name: None,
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{TypedLocalObjectReference, VolumeResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::api::ObjectMeta;

    #[test]
    fn storage_is_requested_but_no_host_volume_can_be_chosen() {
        let t = Tenant {
            name: "alice".into(),
            host_namespace: "vkube-alice".into(),
        };
        let v = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                namespace: Some("db".into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some([("storage".to_string(), Quantity("1Gi".into()))].into()),
                    limits: None,
                }),
                storage_class_name: Some("fast".into()),
                volume_name: Some("someone-elses-pv".into()),
                data_source: Some(TypedLocalObjectReference {
                    api_group: None,
                    kind: "PersistentVolumeClaim".into(),
                    name: "seed".into(),
                }),
                ..Default::default()
            }),
            status: None,
        };
        let h = to_host(&v, &t);
        assert_eq!(h.metadata.name.as_deref(), Some("data-x-db-x-alice"));
        let spec = h.spec.unwrap();
        assert_eq!(spec.volume_name, None);
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(spec.data_source.unwrap().name, "seed-x-db-x-alice");
    }
}
