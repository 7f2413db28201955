//! PersistentVolumeClaims: the host claim requests the same storage; the tenant cannot pick a
//! host PersistentVolume (volumeName, selector), which would let it claim another tenant's data,
//! and a data source must be one of the tenant's own synced claims: any other kind (a
//! VolumeSnapshot, a populator's object) would name a host object of that name in the host
//! namespace, which is not the tenant's (the control plane's own volume, say).

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimSpec};

use super::Tenant;
use super::security::Violation;

/// A host claim, and what was left out of it that the tenant should hear about.
#[derive(Debug, Clone)]
pub struct HostClaim {
    pub claim: PersistentVolumeClaim,
    pub dropped: Vec<Violation>,
}

/// Whether a data source of this API group and kind is something vkube syncs: a claim, and a
/// VolumeSnapshot when snapshots are synced (`--sync-volume-snapshots`): then the tenant's
/// snapshot has a host copy of the translated name, like a claim.
fn synced_kind(api_group: Option<&str>, kind: &str, snapshots: bool) -> bool {
    match api_group.unwrap_or("") {
        "" => kind == "PersistentVolumeClaim",
        super::custom::SNAPSHOT_GROUP => snapshots && kind == "VolumeSnapshot",
        _ => false,
    }
}

fn refused_source(field: &str, group: Option<&str>, kind: &str, name: &str) -> Violation {
    let what = match group.filter(|g| !g.is_empty()) {
        Some(g) => format!("{kind}.{g}"),
        None => kind.to_string(),
    };
    Violation {
        field: field.into(),
        message: format!(
            "{what} {name:?} is not synced to the host; only a PersistentVolumeClaim of the same namespace can be a data source: remove it"
        ),
    }
}

pub fn to_host(v: &PersistentVolumeClaim, tenant: &Tenant) -> Result<HostClaim, Vec<Violation>> {
    to_host_with(v, tenant, false)
}

/// [`to_host`], with VolumeSnapshots of the same namespace allowed as data sources when
/// `snapshots` (they are synced then).
pub fn to_host_with(
    v: &PersistentVolumeClaim,
    tenant: &Tenant,
    snapshots: bool,
) -> Result<HostClaim, Vec<Violation>> {
    let ns = v.metadata.namespace.clone().unwrap_or_default();
    let name = v.metadata.name.clone().unwrap_or_default();
    let vspec = v.spec.clone().unwrap_or_default();
    let mut refused = Vec::new();
    if let Some(r) = &vspec.data_source
        && !synced_kind(r.api_group.as_deref(), &r.kind, snapshots)
    {
        refused.push(refused_source(
            "spec.dataSource",
            r.api_group.as_deref(),
            &r.kind,
            &r.name,
        ));
    }
    if let Some(r) = &vspec.data_source_ref {
        if !synced_kind(r.api_group.as_deref(), &r.kind, snapshots) {
            refused.push(refused_source(
                "spec.dataSourceRef",
                r.api_group.as_deref(),
                &r.kind,
                &r.name,
            ));
        } else if r
            .namespace
            .as_deref()
            .is_some_and(|n| !n.is_empty() && n != ns)
        {
            refused.push(Violation {
                field: "spec.dataSourceRef.namespace".into(),
                message:
                    "a data source in another namespace is not synced to the host; remove namespace"
                        .into(),
            });
        }
    }
    if !refused.is_empty() {
        return Err(refused);
    }
    let mut dropped = Vec::new();
    if let Some(pv) = vspec.volume_name.as_deref().filter(|n| !n.is_empty()) {
        dropped.push(Violation {
            field: "spec.volumeName".into(),
            message: format!(
                "the host chooses the volume; {pv:?} left out (volumes are not the tenant's to pick)"
            ),
        });
    }
    if vspec.selector.is_some() {
        dropped.push(Violation {
            field: "spec.selector".into(),
            message: "the host chooses the volume; the selector was left out".into(),
        });
    }
    let data_source = vspec.data_source.clone().map(|mut r| {
        r.name = tenant.subdomain_name(&ns, &r.name);
        r
    });
    let data_source_ref = vspec.data_source_ref.clone().map(|mut r| {
        r.name = tenant.subdomain_name(&ns, &r.name);
        r.namespace = None;
        r
    });
    Ok(HostClaim {
        claim: PersistentVolumeClaim {
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
        },
        dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_source_names_the_tenants_synced_snapshot_only_when_snapshots_are_synced() {
        let t = Tenant::new("alice", "vkube-alice");
        let v = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("restored".into()),
                namespace: Some("db".into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                data_source: Some(TypedLocalObjectReference {
                    api_group: Some("snapshot.storage.k8s.io".into()),
                    kind: "VolumeSnapshot".into(),
                    name: "nightly".into(),
                }),
                ..Default::default()
            }),
            status: None,
        };
        assert!(
            to_host(&v, &t).is_err(),
            "refused unless snapshots are synced"
        );
        let h = to_host_with(&v, &t, true).unwrap().claim;
        let source = h.spec.unwrap().data_source.unwrap();
        assert_eq!(source.name, "nightly-x-db-x-alice");
        assert_eq!(source.kind, "VolumeSnapshot");
        let mut other = v.clone();
        other
            .spec
            .as_mut()
            .unwrap()
            .data_source
            .as_mut()
            .unwrap()
            .kind = "VolumeSnapshotContent".into();
        assert!(to_host_with(&other, &t, true).is_err());
    }
    use k8s_openapi::api::core::v1::{
        TypedLocalObjectReference, TypedObjectReference, VolumeResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::api::ObjectMeta;

    #[test]
    fn storage_is_requested_but_no_host_volume_can_be_chosen() {
        let t = Tenant::new("alice", "vkube-alice");
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
        let h = to_host(&v, &t).unwrap();
        assert_eq!(h.claim.metadata.name.as_deref(), Some("data-x-db-x-alice"));
        let spec = h.claim.spec.unwrap();
        assert_eq!(spec.volume_name, None);
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(spec.data_source.unwrap().name, "seed-x-db-x-alice");
        assert_eq!(h.dropped[0].field, "spec.volumeName");
    }

    #[test]
    fn data_sources_vkube_does_not_sync_are_refused() {
        let t = Tenant::new("alice", "vkube-alice");
        let claim = |source: Option<TypedLocalObjectReference>,
                     source_ref: Option<TypedObjectReference>| {
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("clone".into()),
                    namespace: Some("db".into()),
                    ..Default::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    data_source: source,
                    data_source_ref: source_ref,
                    ..Default::default()
                }),
                status: None,
            }
        };
        let snapshot = TypedLocalObjectReference {
            api_group: Some("snapshot.storage.k8s.io".into()),
            kind: "VolumeSnapshot".into(),
            name: "data-vkube-0".into(),
        };
        let cases = [
            (claim(Some(snapshot.clone()), None), vec!["spec.dataSource"]),
            (
                claim(
                    None,
                    Some(TypedObjectReference {
                        api_group: Some("snapshot.storage.k8s.io".into()),
                        kind: "VolumeSnapshot".into(),
                        name: "data-vkube-0".into(),
                        namespace: None,
                    }),
                ),
                vec!["spec.dataSourceRef"],
            ),
            (
                claim(
                    None,
                    Some(TypedObjectReference {
                        api_group: None,
                        kind: "PersistentVolumeClaim".into(),
                        name: "data".into(),
                        namespace: Some("other".into()),
                    }),
                ),
                vec!["spec.dataSourceRef.namespace"],
            ),
            (
                claim(
                    Some(TypedLocalObjectReference {
                        api_group: Some("example.com".into()),
                        kind: "PersistentVolumeClaim".into(),
                        name: "x".into(),
                    }),
                    None,
                ),
                vec!["spec.dataSource"],
            ),
        ];
        for (c, want) in cases {
            let refused = to_host(&c, &t).unwrap_err();
            let fields: Vec<_> = refused.iter().map(|r| r.field.as_str()).collect();
            assert_eq!(fields, want);
        }
    }
}
