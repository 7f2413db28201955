//! Pod volumes on the host: an allow-list of volume types, not a deny-list. A volume reaches the
//! host only if every source field it sets is an allowed type (checked on the volume's JSON, so
//! a type a later Kubernetes adds is refused until someone decides about it), a `csi` volume only
//! with an allowed driver, and every Secret a volume names is the tenant's synced copy, never a
//! raw host Secret. `ephemeral` volumes become the claim the virtual cluster made for them.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, Volume};

use super::security::Violation;

/// Volume types every pod may use: they read the pod's own objects, scratch space, the
/// tenant's own claims, or a read-only image.
pub const DEFAULT_TYPES: &[&str] = &[
    "configMap",
    "secret",
    "emptyDir",
    "projected",
    "downwardAPI",
    "persistentVolumeClaim",
    "ephemeral",
    "image",
];

/// Sources of a projected volume vkube translates. `clusterTrustBundle` would show the host's
/// bundles and `podCertificate` would make the host's kubelet request a certificate naming the
/// host pod: neither is the tenant's.
const PROJECTION_SOURCES: &[&str] = &["configMap", "secret", "downwardAPI", "serviceAccountToken"];

/// What the admin lets tenants' volumes be (`--allow-volume-type`, `--allow-csi-driver`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePolicy {
    pub types: BTreeSet<String>,
    /// CSI drivers inline `csi` volumes may use (only if `csi` is an allowed type).
    pub csi_drivers: BTreeSet<String>,
}

impl Default for VolumePolicy {
    fn default() -> Self {
        VolumePolicy {
            types: DEFAULT_TYPES.iter().map(|t| t.to_string()).collect(),
            csi_drivers: BTreeSet::new(),
        }
    }
}

impl VolumePolicy {
    /// The defaults widened by the admin's types and drivers.
    pub fn widened(types: Vec<String>, csi_drivers: Vec<String>) -> Self {
        let mut policy = VolumePolicy::default();
        policy.types.extend(types);
        policy.csi_drivers.extend(csi_drivers);
        policy
    }
}

/// The source fields a volume sets (`hostPath`, `nfs`, ...): every field name but `name`, as
/// the volume's JSON has them.
pub fn source_types(v: &Volume) -> Vec<String> {
    super::fields::names(v)
        .into_iter()
        .filter(|k| k != "name")
        .collect()
}

/// The volume types among `types` (at `spec.volumes[index]`) that `policy` does not allow.
fn type_violations(index: usize, types: &[String], policy: &VolumePolicy) -> Vec<Violation> {
    types
        .iter()
        .filter(|t| !policy.types.contains(*t))
        .map(|t| Violation {
            field: format!("spec.volumes[{index}].{t}"),
            message: format!(
                "{t} volumes are not allowed on this host; use a PersistentVolumeClaim (or ask the admin to allow the type)"
            ),
        })
        .collect()
}

/// Why `v` (at `spec.volumes[index]`) may not reach the host, if it may not.
pub fn check(index: usize, v: &Volume, policy: &VolumePolicy) -> Vec<Violation> {
    let field = |t: &str| format!("spec.volumes[{index}].{t}");
    let mut out = type_violations(index, &source_types(v), policy);
    if let Some(csi) = &v.csi
        && policy.types.contains("csi")
        && !policy.csi_drivers.contains(&csi.driver)
    {
        out.push(Violation {
            field: field("csi.driver"),
            message: format!(
                "CSI driver {:?} is not allowed for inline volumes; use a PersistentVolumeClaim (or ask the admin to allow the driver)",
                csi.driver
            ),
        });
    }
    if let Some(p) = &v.projected {
        for (j, src) in p.sources.iter().flatten().enumerate() {
            for key in super::fields::names(src) {
                if !PROJECTION_SOURCES.contains(&key.as_str()) {
                    out.push(Violation {
                        field: format!("spec.volumes[{index}].projected.sources[{j}].{key}"),
                        message: format!("{key} projections are not supported by vkube; remove it"),
                    });
                }
            }
        }
    }
    out
}

/// Every Secret reference a volume's source may carry besides `secret` itself: driver
/// credentials of the types an admin can allow. They name Secrets of the pod's namespace, which
/// on the host would be any Secret of the tenant's host namespace (its CA keys among them).
fn secret_refs(v: &mut Volume) -> Vec<&mut String> {
    let local = [
        v.csi
            .as_mut()
            .and_then(|s| s.node_publish_secret_ref.as_mut()),
        v.flex_volume.as_mut().and_then(|s| s.secret_ref.as_mut()),
        v.cephfs.as_mut().and_then(|s| s.secret_ref.as_mut()),
        v.cinder.as_mut().and_then(|s| s.secret_ref.as_mut()),
        v.rbd.as_mut().and_then(|s| s.secret_ref.as_mut()),
        v.iscsi.as_mut().and_then(|s| s.secret_ref.as_mut()),
        v.scale_io.as_mut().map(|s| &mut s.secret_ref),
        v.storageos.as_mut().and_then(|s| s.secret_ref.as_mut()),
    ];
    local
        .into_iter()
        .flatten()
        .map(|r| &mut r.name)
        .chain(v.azure_file.as_mut().map(|a| &mut a.secret_name))
        .collect()
}

/// The Secrets (virtual names) a volume's driver credentials name.
pub fn referenced_secrets(v: &Volume) -> Vec<String> {
    let mut v = v.clone();
    secret_refs(&mut v)
        .into_iter()
        .map(|n| n.clone())
        .filter(|n| !n.is_empty())
        .collect()
}

/// Rewrites a volume's driver credential references to the tenant's synced Secrets.
pub fn translate_secret_refs(v: &mut Volume, secret: &impl Fn(&str) -> String) {
    for name in secret_refs(v) {
        if !name.is_empty() {
            *name = secret(name);
        }
    }
}

/// The claim the virtual cluster's ephemeral-volume controller creates for volume `volume` of
/// pod `pod` (Kubernetes names it `<pod>-<volume>`).
pub fn ephemeral_claim_name(pod: &str, volume: &str) -> String {
    format!("{pod}-{volume}")
}

/// An `ephemeral` volume as the host pod gets it: the synced copy of the claim the virtual
/// cluster made from the template (`claim` is its host name), so one volume is one host claim
/// and the template (volumeName, dataSource, selector) never reaches the host unchecked.
pub fn ephemeral_to_claim(v: &mut Volume, claim: String) {
    let read_only = v
        .ephemeral
        .as_ref()
        .and_then(|e| e.volume_claim_template.as_ref())
        .and_then(|t| t.spec.access_modes.as_ref())
        .is_some_and(|m| m.iter().all(|m| m == "ReadOnlyMany"));
    v.ephemeral = None;
    v.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
        claim_name: claim,
        read_only: read_only.then_some(true),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        CSIVolumeSource, EmptyDirVolumeSource, EphemeralVolumeSource, FlexVolumeSource,
        HostPathVolumeSource, ISCSIVolumeSource, LocalObjectReference, NFSVolumeSource,
        PersistentVolumeClaimTemplate, ProjectedVolumeSource, VolumeProjection,
    };

    fn vol(f: impl FnOnce(&mut Volume)) -> Volume {
        let mut v = Volume {
            name: "v".into(),
            ..Default::default()
        };
        f(&mut v);
        v
    }

    fn fields(v: &[Violation]) -> Vec<&str> {
        v.iter().map(|v| v.field.as_str()).collect()
    }

    #[test]
    fn only_allowed_volume_types_pass() {
        let p = VolumePolicy::default();
        let cases: Vec<(Volume, Vec<&str>)> = vec![
            (
                vol(|v| v.empty_dir = Some(EmptyDirVolumeSource::default())),
                vec![],
            ),
            (
                vol(|v| {
                    v.host_path = Some(HostPathVolumeSource {
                        path: "/".into(),
                        type_: None,
                    })
                }),
                vec!["spec.volumes[3].hostPath"],
            ),
            (
                vol(|v| {
                    v.nfs = Some(NFSVolumeSource {
                        server: "10.0.0.1".into(),
                        path: "/".into(),
                        read_only: None,
                    })
                }),
                vec!["spec.volumes[3].nfs"],
            ),
            (
                vol(|v| {
                    v.iscsi = Some(ISCSIVolumeSource {
                        target_portal: "10.0.0.1".into(),
                        iqn: "iqn.x".into(),
                        lun: 0,
                        ..Default::default()
                    })
                }),
                vec!["spec.volumes[3].iscsi"],
            ),
            (
                vol(|v| {
                    v.flex_volume = Some(FlexVolumeSource {
                        driver: "x/y".into(),
                        ..Default::default()
                    })
                }),
                vec!["spec.volumes[3].flexVolume"],
            ),
            (
                vol(|v| {
                    v.csi = Some(CSIVolumeSource {
                        driver: "x".into(),
                        ..Default::default()
                    })
                }),
                vec!["spec.volumes[3].csi"],
            ),
        ];
        for (v, want) in cases {
            assert_eq!(fields(&check(3, &v, &p)), want, "{v:?}");
        }
    }

    #[test]
    fn a_volume_type_vkube_does_not_know_is_refused() {
        // What a later Kubernetes (and k8s-openapi) may add: refused until allowed.
        let future = ["futureVolume".to_string()];
        let refused = type_violations(2, &future, &VolumePolicy::default());
        assert_eq!(fields(&refused), ["spec.volumes[2].futureVolume"]);
        let allowed = VolumePolicy::widened(vec!["futureVolume".into()], vec![]);
        assert!(type_violations(2, &future, &allowed).is_empty());
        // The types are the volume's JSON field names.
        let v = vol(|v| v.empty_dir = Some(EmptyDirVolumeSource::default()));
        assert_eq!(source_types(&v), ["emptyDir"]);
    }

    #[test]
    fn csi_needs_the_type_and_the_driver() {
        let v = vol(|v| {
            v.csi = Some(CSIVolumeSource {
                driver: "secrets.example.com".into(),
                ..Default::default()
            })
        });
        let typed = VolumePolicy::widened(vec!["csi".into()], vec![]);
        assert_eq!(
            fields(&check(0, &v, &typed)),
            ["spec.volumes[0].csi.driver"]
        );
        let both = VolumePolicy::widened(vec!["csi".into()], vec!["secrets.example.com".into()]);
        assert!(check(0, &v, &both).is_empty());
        let driver_only = VolumePolicy::widened(vec![], vec!["secrets.example.com".into()]);
        assert_eq!(fields(&check(0, &v, &driver_only)), ["spec.volumes[0].csi"]);
    }

    #[test]
    fn host_owned_projections_are_refused() {
        let v = vol(|v| {
            v.projected = Some(ProjectedVolumeSource {
                sources: Some(vec![
                    VolumeProjection {
                        cluster_trust_bundle: Some(Default::default()),
                        ..Default::default()
                    },
                    VolumeProjection {
                        pod_certificate: Some(Default::default()),
                        ..Default::default()
                    },
                ]),
                default_mode: None,
            })
        });
        assert_eq!(
            fields(&check(1, &v, &VolumePolicy::default())),
            [
                "spec.volumes[1].projected.sources[0].clusterTrustBundle",
                "spec.volumes[1].projected.sources[1].podCertificate"
            ]
        );
    }

    #[test]
    fn driver_credentials_are_the_tenants_secrets() {
        let mut v = vol(|v| {
            v.csi = Some(CSIVolumeSource {
                driver: "x".into(),
                node_publish_secret_ref: Some(LocalObjectReference {
                    name: "vkube-alice-certs".into(),
                }),
                ..Default::default()
            })
        });
        assert_eq!(referenced_secrets(&v), ["vkube-alice-certs"]);
        translate_secret_refs(&mut v, &|n| format!("{n}-x-ns-x-alice"));
        assert_eq!(
            v.csi.unwrap().node_publish_secret_ref.unwrap().name,
            "vkube-alice-certs-x-ns-x-alice"
        );
        let mut flex = vol(|v| {
            v.flex_volume = Some(FlexVolumeSource {
                driver: "x/y".into(),
                secret_ref: Some(LocalObjectReference { name: "s".into() }),
                ..Default::default()
            })
        });
        translate_secret_refs(&mut flex, &|n| format!("{n}-t"));
        assert_eq!(flex.flex_volume.unwrap().secret_ref.unwrap().name, "s-t");
    }

    #[test]
    fn an_ephemeral_volume_becomes_its_claim() {
        let mut v = vol(|v| {
            v.ephemeral = Some(EphemeralVolumeSource {
                volume_claim_template: Some(PersistentVolumeClaimTemplate {
                    metadata: None,
                    spec: k8s_openapi::api::core::v1::PersistentVolumeClaimSpec {
                        volume_name: Some("someone-elses-pv".into()),
                        ..Default::default()
                    },
                }),
            })
        });
        ephemeral_to_claim(&mut v, "web-0-scratch-x-ns-x-alice".into());
        assert!(v.ephemeral.is_none());
        assert_eq!(
            v.persistent_volume_claim.unwrap().claim_name,
            "web-0-scratch-x-ns-x-alice"
        );
        assert_eq!(ephemeral_claim_name("web-0", "scratch"), "web-0-scratch");
    }
}
