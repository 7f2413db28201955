//! PersistentVolumes mirrored read-only into the virtual cluster: for each claim of the tenant
//! that the host bound, the host's volume as it is, except that its claim reference names the
//! virtual claim (the host claim is an implementation detail the tenant never sees).

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim};
use kube::api::ObjectMeta;

use super::mirror_labels;

/// The only host annotation kept: who provisioned the volume (what `kubectl describe pv` shows).
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// The host volume a host claim is bound to, once the host says it is.
pub fn bound_volume(host_claim: &PersistentVolumeClaim) -> Option<&str> {
    let phase = host_claim.status.as_ref()?.phase.as_deref()?;
    let name = host_claim.spec.as_ref()?.volume_name.as_deref()?;
    (phase == "Bound" && !name.is_empty()).then_some(name)
}

/// Whether host volume `pv` is claimed by `host_claim` (namespace, name and, when recorded,
/// uid): a claim's volumeName alone does not prove the volume is its own.
pub fn bound_to(pv: &PersistentVolume, host_claim: &PersistentVolumeClaim) -> bool {
    let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    r.namespace.is_some()
        && r.namespace == host_claim.metadata.namespace
        && r.name.is_some()
        && r.name == host_claim.metadata.name
        && (r.uid.is_none() || r.uid == host_claim.metadata.uid)
}

/// Host volumes are watched cluster-wide, but only those claimed from `host_namespace` are
/// read: every other one is cached as its name alone (deletions must still reach the store).
pub fn trim_host_volume(pv: &mut PersistentVolume, host_namespace: &str) {
    pv.metadata.managed_fields = None;
    let ours = pv
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_some_and(|r| r.namespace.as_deref() == Some(host_namespace));
    if !ours {
        pv.metadata = ObjectMeta {
            name: pv.metadata.name.take(),
            uid: pv.metadata.uid.take(),
            resource_version: pv.metadata.resource_version.take(),
            ..Default::default()
        };
        pv.spec = None;
        pv.status = None;
    }
}

/// The virtual PersistentVolume for host volume `host`, bound to virtual claim `virtual_claim`
/// (pure).
pub fn mirror(host: &PersistentVolume, virtual_claim: &PersistentVolumeClaim) -> PersistentVolume {
    let annotations = host
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROVISIONED_BY))
        .map(|v| [(PROVISIONED_BY.to_string(), v.clone())].into());
    let spec = host.spec.clone().map(|mut s| {
        s.claim_ref = Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("PersistentVolumeClaim".into()),
            namespace: virtual_claim.metadata.namespace.clone(),
            name: virtual_claim.metadata.name.clone(),
            uid: virtual_claim.metadata.uid.clone(),
            ..Default::default()
        });
        s
    });
    PersistentVolume {
        metadata: ObjectMeta {
            name: host.metadata.name.clone(),
            labels: Some(mirror_labels(&host.metadata)),
            annotations,
            ..Default::default()
        },
        spec,
        status: host.status.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::HOST_MIRROR;
    use k8s_openapi::api::core::v1::{
        HostPathVolumeSource, PersistentVolumeClaimSpec, PersistentVolumeClaimStatus,
        PersistentVolumeSpec, PersistentVolumeStatus,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn claim(ns: &str, name: &str, uid: &str) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                volume_name: Some("pv-1".into()),
                ..Default::default()
            }),
            status: Some(PersistentVolumeClaimStatus {
                phase: Some("Bound".into()),
                ..Default::default()
            }),
        }
    }

    fn volume(claim_ns: &str, claim_name: &str, claim_uid: Option<&str>) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some("pv-1".into()),
                uid: Some("pv-uid".into()),
                labels: Some([("vkube.dev/virtual-node".to_string(), "true".to_string())].into()),
                annotations: Some(
                    [
                        (PROVISIONED_BY.to_string(), "csi.example.com".to_string()),
                        ("pv.kubernetes.io/bound-by-controller".into(), "yes".into()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                capacity: Some([("storage".to_string(), Quantity("1Gi".into()))].into()),
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: Some("fast".into()),
                host_path: Some(HostPathVolumeSource {
                    path: "/var/data/pv-1".into(),
                    type_: None,
                }),
                claim_ref: Some(ObjectReference {
                    kind: Some("PersistentVolumeClaim".into()),
                    namespace: Some(claim_ns.into()),
                    name: Some(claim_name.into()),
                    uid: claim_uid.map(Into::into),
                    resource_version: Some("77".into()),
                    ..Default::default()
                }),
                persistent_volume_reclaim_policy: Some("Delete".into()),
                ..Default::default()
            }),
            status: Some(PersistentVolumeStatus {
                phase: Some("Bound".into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_virtual_volume_is_claimed_by_the_virtual_claim() {
        let host = volume("vkube-alice", "data-x-db-x-alice", Some("host-uid"));
        let v = mirror(&host, &claim("db", "data", "virtual-uid"));
        assert_eq!(v.metadata.name.as_deref(), Some("pv-1"));
        assert_eq!(v.metadata.uid, None);
        let labels = v.metadata.labels.unwrap();
        assert_eq!(labels[HOST_MIRROR], "true");
        assert!(!labels.contains_key("vkube.dev/virtual-node"));
        assert_eq!(
            v.metadata.annotations.unwrap().keys().collect::<Vec<_>>(),
            vec![PROVISIONED_BY]
        );
        let spec = v.spec.unwrap();
        let r = spec.claim_ref.unwrap();
        assert_eq!(
            (r.namespace.as_deref(), r.name.as_deref(), r.uid.as_deref()),
            (Some("db"), Some("data"), Some("virtual-uid"))
        );
        assert_eq!(r.resource_version, None);
        assert_eq!(spec.capacity.unwrap()["storage"].0, "1Gi");
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Delete")
        );
        assert_eq!(v.status.unwrap().phase.as_deref(), Some("Bound"));
    }

    #[test]
    fn only_a_volume_claimed_by_the_host_claim_is_its_own() {
        let c = claim("vkube-alice", "data-x-db-x-alice", "host-uid");
        assert_eq!(bound_volume(&c), Some("pv-1"));
        assert!(bound_to(
            &volume("vkube-alice", "data-x-db-x-alice", Some("host-uid")),
            &c
        ));
        assert!(bound_to(
            &volume("vkube-alice", "data-x-db-x-alice", None),
            &c
        ));
        assert!(!bound_to(
            &volume("vkube-alice", "data-x-db-x-alice", Some("old")),
            &c
        ));
        assert!(!bound_to(
            &volume("vkube-bob", "data-x-db-x-alice", Some("host-uid")),
            &c
        ));
        let mut pending = c.clone();
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        assert_eq!(bound_volume(&pending), None);
    }

    #[test]
    fn other_namespaces_volumes_are_cached_as_names_only() {
        let mut other = volume("vkube-bob", "x", None);
        trim_host_volume(&mut other, "vkube-alice");
        assert_eq!(other.metadata.name.as_deref(), Some("pv-1"));
        assert_eq!(
            (other.spec, other.status, other.metadata.labels),
            (None, None, None)
        );
        let mut ours = volume("vkube-alice", "x", None);
        trim_host_volume(&mut ours, "vkube-alice");
        assert!(ours.spec.is_some());
    }
}
