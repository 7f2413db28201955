//! StorageClasses mirrored read-only into the virtual cluster: the host's class as it is, so a
//! tenant sees what its claims really get (provisioner, reclaim policy, binding mode).

use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::ObjectMeta;

use super::mirror_labels;

/// The only host annotation kept: which class the host gives claims that name none. The
/// virtual API then defaults new claims the same way the host would.
const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";

/// The virtual StorageClass for host class `host` (pure).
pub fn mirror(host: &StorageClass) -> StorageClass {
    let annotations = host
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEFAULT_CLASS))
        .map(|v| [(DEFAULT_CLASS.to_string(), v.clone())].into());
    StorageClass {
        metadata: ObjectMeta {
            name: host.metadata.name.clone(),
            labels: Some(mirror_labels(&host.metadata)),
            annotations,
            ..Default::default()
        },
        provisioner: host.provisioner.clone(),
        parameters: host.parameters.clone(),
        reclaim_policy: host.reclaim_policy.clone(),
        mount_options: host.mount_options.clone(),
        allow_volume_expansion: host.allow_volume_expansion,
        volume_binding_mode: host.volume_binding_mode.clone(),
        allowed_topologies: host.allowed_topologies.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::HOST_MIRROR;

    #[test]
    fn the_class_is_shown_as_the_host_has_it() {
        let host = StorageClass {
            metadata: ObjectMeta {
                name: Some("fast".into()),
                labels: Some([("vkube.dev/managed-by".to_string(), "x".to_string())].into()),
                annotations: Some(
                    [
                        (DEFAULT_CLASS.to_string(), "true".to_string()),
                        (
                            "kubectl.kubernetes.io/last-applied-configuration".into(),
                            "{}".into(),
                        ),
                    ]
                    .into(),
                ),
                uid: Some("host-uid".into()),
                ..Default::default()
            },
            provisioner: "csi.example.com".into(),
            reclaim_policy: Some("Retain".into()),
            volume_binding_mode: Some("WaitForFirstConsumer".into()),
            allow_volume_expansion: Some(true),
            ..Default::default()
        };
        let v = mirror(&host);
        assert_eq!(v.metadata.name.as_deref(), Some("fast"));
        assert_eq!(v.metadata.uid, None);
        let labels = v.metadata.labels.unwrap();
        assert_eq!(labels[HOST_MIRROR], "true");
        assert!(!labels.contains_key("vkube.dev/managed-by"));
        assert_eq!(v.metadata.annotations.unwrap().len(), 1);
        assert_eq!(v.provisioner, "csi.example.com");
        assert_eq!(v.reclaim_policy.as_deref(), Some("Retain"));
        assert_eq!(
            v.volume_binding_mode.as_deref(),
            Some("WaitForFirstConsumer")
        );
        assert_eq!(v.allow_volume_expansion, Some(true));
    }
}
