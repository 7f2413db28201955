//! Writing a desired host object with the cheapest correct call: nothing when the cached copy
//! already carries the desired hash, a plain create for an object the host has never seen, and
//! server-side apply (field manager `vkube`) for a change. A same-named host object that is not
//! ours is never overwritten: that is a conflict for the caller to report.

use std::fmt::Debug;

use kube::api::{Api, Patch, PatchParams, PostParams};
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
    mut desired: K,
) -> Result<(Applied, Option<K>), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
    S: Resource<DynamicType = ()> + Clone,
{
    let hash = stamp(&mut desired);
    let name = desired.name_any();
    let cached = store.get(&ObjectRef::new(&name).within(&tenant.host_namespace));
    if let Some(existing) = cached {
        if hash_of(existing.as_ref()) == Some(hash.as_str()) {
            return Ok((Applied::Unchanged, None));
        }
        let updated = apply(api, &name, &desired).await?;
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
                        let updated = apply(api, &name, &desired).await?;
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

async fn apply<K>(api: &Api<K>, name: &str, desired: &K) -> Result<K, kube::Error>
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
