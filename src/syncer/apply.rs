//! Writing a desired host object with the cheapest correct call: nothing when the cached copy
//! already carries the desired hash, a plain create for an object the host has never seen, and
//! server-side apply (field manager `vkube`) for a change. A same-named host object that is not
//! ours is never overwritten: that is a conflict for the caller to report.

use std::fmt::Debug;

use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::host::FIELD_MANAGER;
use crate::translate::{DESIRED_HASH, Tenant, desired_hash};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Created,
    Updated,
    Unchanged,
    /// A host object of that name exists and is not this tenant's.
    Conflict,
}

/// Stamps `desired` with the hash of its content.
pub fn stamp<K: Resource + Serialize>(desired: &mut K) -> String {
    let hash = desired_hash(desired);
    desired
        .meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(DESIRED_HASH.into(), hash.clone());
    hash
}

pub fn hash_of<K: Resource>(obj: &K) -> Option<&str> {
    obj.meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(DESIRED_HASH))
        .map(String::as_str)
}

/// `store` caches the host objects, possibly as a slimmer type than `K` (see `HostPod`).
pub async fn ensure<K, S>(
    api: &Api<K>,
    store: &Store<S>,
    tenant: &Tenant,
    desired: K,
) -> Result<(Applied, Option<K>), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
    S: Resource<DynamicType = ()> + Clone,
{
    let update = desired.clone();
    ensure_parts(api, store, tenant, desired, update).await
}

/// [`ensure`] for kinds of which only a part may change once created (pods): `desired` is
/// created whole, `update` is what an update applies, and the desired hash covers `update`
/// only, so a difference the host could not apply anyway never causes a write.
pub async fn ensure_parts<K, S>(
    api: &Api<K>,
    store: &Store<S>,
    tenant: &Tenant,
    desired: K,
    mut update: K,
) -> Result<(Applied, Option<K>), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
    S: Resource<DynamicType = ()> + Clone,
{
    let applied = write(api, store, tenant, desired, &mut update).await;
    match &applied {
        Ok((Applied::Created, _)) => crate::metrics::synced(crate::metrics::kind_of::<K>(), true),
        Ok((Applied::Updated, _)) => crate::metrics::synced(crate::metrics::kind_of::<K>(), false),
        _ => {}
    }
    applied
}

async fn write<K, S>(
    api: &Api<K>,
    store: &Store<S>,
    tenant: &Tenant,
    mut desired: K,
    update: &mut K,
) -> Result<(Applied, Option<K>), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
    S: Resource<DynamicType = ()> + Clone,
{
    let hash = stamp(update);
    let update: &K = update;
    desired
        .meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(DESIRED_HASH.into(), hash.clone());
    let name = desired.name_any();
    let cached = store.get(&ObjectRef::new(&name).within(&tenant.host_namespace));
    if let Some(existing) = cached {
        if hash_of(existing.as_ref()) == Some(hash.as_str()) {
            return Ok((Applied::Unchanged, None));
        }
        let updated = apply(api, &name, update, tenant).await?;
        return Ok((Applied::Updated, Some(updated)));
    }
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.create(&pp, &desired).await {
        Ok(created) => Ok((Applied::Created, Some(created))),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Either our cache lags behind our own create, or someone else owns the name.
            match api.get_opt(&name).await? {
                Some(existing) if tenant.owns(existing.meta()) => {
                    if hash_of(&existing) == Some(hash.as_str()) {
                        Ok((Applied::Unchanged, None))
                    } else {
                        let updated = apply(api, &name, update, tenant).await?;
                        Ok((Applied::Updated, Some(updated)))
                    }
                }
                Some(_) => Ok((Applied::Conflict, None)),
                // Deleted in between: the next reconcile creates it.
                None => Err(kube::Error::Api(s)),
            }
        }
        Err(e) => Err(e),
    }
}

async fn apply<K>(api: &Api<K>, name: &str, desired: &K, tenant: &Tenant) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let applied = server_side_apply(api, name, desired).await?;
    let stale = stale_keys(applied.meta(), desired.meta(), tenant);
    if stale.is_empty() {
        return Ok(applied);
    }
    // Created with a plain create, the host copy's first labels and annotations belong to that
    // create, not to vkube's applies, so an apply never removes them: a key vkube now renames
    // (or renames no more) is removed explicitly, once.
    let remove = |keys: &[String]| -> serde_json::Map<String, serde_json::Value> {
        keys.iter()
            .map(|k| (k.clone(), serde_json::Value::Null))
            .collect()
    };
    let patch = serde_json::json!({"metadata": {
        "labels": remove(&stale.labels),
        "annotations": remove(&stale.annotations),
    }});
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch(name, &pp, &Patch::Merge(&patch)).await
}

/// Label and annotation keys of a host copy that an earlier translation put there and the
/// current one replaces: a tenant key now renamed (its renamed form is desired), or a renamed
/// form no longer desired.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StaleKeys {
    pub labels: Vec<String>,
    pub annotations: Vec<String>,
}

impl StaleKeys {
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.annotations.is_empty()
    }
}

pub fn stale_keys(host: &ObjectMeta, desired: &ObjectMeta, tenant: &Tenant) -> StaleKeys {
    let stale = |have: &Option<std::collections::BTreeMap<String, String>>,
                 want: &Option<std::collections::BTreeMap<String, String>>,
                 host_key: &dyn Fn(&str) -> String| {
        let want = want.as_ref();
        have.iter()
            .flatten()
            .map(|(k, _)| k)
            .filter(|k| !want.is_some_and(|w| w.contains_key(*k)))
            .filter(|k| {
                crate::translate::is_renamed_key(k) || {
                    let renamed = host_key(k);
                    &renamed != *k && want.is_some_and(|w| w.contains_key(&renamed))
                }
            })
            .cloned()
            .collect::<Vec<_>>()
    };
    StaleKeys {
        labels: stale(&host.labels, &desired.labels, &|k| tenant.host_label_key(k)),
        annotations: stale(&host.annotations, &desired.annotations, &|k| {
            tenant.host_annotation_key(k)
        }),
    }
}

async fn server_side_apply<K>(api: &Api<K>, name: &str, desired: &K) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let mut body = serde_json::to_value(desired).map_err(kube::Error::SerdeError)?;
    // Server-side apply needs apiVersion and kind in the body.
    if let Some(obj) = body.as_object_mut() {
        obj.insert("apiVersion".into(), K::api_version(&()).into());
        obj.insert("kind".into(), K::kind(&()).into());
        if let Some(meta) = obj.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.remove("resourceVersion");
            meta.remove("uid");
            meta.remove("creationTimestamp");
        }
    }
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::translate::test_support::tenant;

    #[test]
    fn keys_an_earlier_translation_left_are_found_and_no_others() {
        let t = tenant();
        let virt = ObjectMeta {
            name: Some("web".into()),
            namespace: Some("default".into()),
            labels: Some(BTreeMap::from([
                ("app".into(), "web".into()),
                ("aadpodidbinding".into(), "admin".into()),
            ])),
            annotations: Some(BTreeMap::from([(
                "k8s.v1.cni.cncf.io/networks".into(),
                "host-net".into(),
            )])),
            ..Default::default()
        };
        let desired = t.host_meta(&virt, "web-x-default-x-alice".into());
        let mut host = desired.clone();
        // What vkube copied before keys were renamed, and what host components added.
        let labels = host.labels.get_or_insert_with(Default::default);
        labels.insert("aadpodidbinding".into(), "admin".into());
        labels.insert("added-by-host".into(), "x".into());
        labels.insert(t.host_label_key("no-longer-on-the-tenant"), "x".into());
        let annotations = host.annotations.get_or_insert_with(Default::default);
        annotations.insert("k8s.v1.cni.cncf.io/networks".into(), "host-net".into());
        annotations.insert("kubernetes.io/psp".into(), "x".into());
        let stale = stale_keys(&host, &desired, &t);
        let mut want_labels = vec![
            "aadpodidbinding".to_string(),
            t.host_label_key("no-longer-on-the-tenant"),
        ];
        want_labels.sort();
        assert_eq!(stale.labels, want_labels);
        assert_eq!(stale.annotations, ["k8s.v1.cni.cncf.io/networks"]);
        assert!(stale_keys(&desired, &desired, &t).is_empty());
    }
}
