//! Objects pods refer to (ConfigMaps, Secrets): copied to the host while a virtual pod
//! references them (or always, by flag); updates propagate; the garbage collector removes copies
//! no longer referenced. The per-kind modules say only what differs.

use std::collections::{BTreeSet, HashSet};
use std::fmt::Debug;
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::NamespaceResourceScope;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::apply::{self, Applied};
use super::{Context, Requeue, Stores, SyncError, SyncerConfig, Trigger};
use crate::translate::pod::References;
use crate::translate::{Tenant, origin};

pub trait Referenced:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    fn virtual_store(stores: &Stores) -> &Store<Self>;
    fn host_store(stores: &Stores) -> &Store<Self>;
    fn sync_all(config: &SyncerConfig) -> bool;
    fn names(refs: &References) -> &BTreeSet<String>;
    /// Whether an object other than a pod (an Ingress, for a Secret) refers to `namespace/name`.
    fn referenced_elsewhere(_stores: &Stores, _namespace: &str, _name: &str) -> bool {
        false
    }
    fn to_host(&self, tenant: &Tenant) -> Self;
    /// Of what custom objects refer to, the names of this kind.
    fn from_custom(refs: crate::translate::custom::CustomReferences) -> BTreeSet<String>;
}

pub fn controller<K: Referenced>(
    ctx: Arc<Context>,
    trigger: Trigger<K>,
    requeue: Requeue<K>,
) -> BoxFuture<'static, ()> {
    let reader = K::virtual_store(&ctx.stores).clone();
    super::controller(ctx, reader, trigger, requeue, reconcile::<K>)
}

/// Whether any virtual pod (or other referring object) in `namespace` references `name`.
fn referenced<K: Referenced>(ctx: &Context, namespace: &str, name: &str) -> bool {
    ctx.stores.virtual_pods.state().iter().any(|p| {
        p.metadata.namespace.as_deref() == Some(namespace)
            && K::names(p.references()).contains(name)
    }) || K::referenced_elsewhere(&ctx.stores, namespace, name)
        || ctx
            .custom
            .references()
            .into_iter()
            .any(|(ns, refs)| ns == namespace && K::from_custom(refs).contains(name))
}

async fn reconcile<K: Referenced>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, SyncError> {
    ctx.wait_ready().await?;
    let tenant = ctx.tenant();
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let desired = obj.to_host(tenant);
    let host_name = desired.name_any();
    // A copy on the host means it was wanted; updating it is cheaper than checking the pods.
    let on_host = K::host_store(&ctx.stores)
        .get(&ObjectRef::new(&host_name).within(&tenant.host_namespace))
        .is_some();
    if obj.meta().deletion_timestamp.is_some()
        || !(on_host || K::sync_all(&ctx.config) || referenced::<K>(&ctx, &ns, &name))
    {
        return Ok(Action::await_change());
    }
    let api: Api<K> = ctx.host_api();
    match apply::ensure(&api, K::host_store(&ctx.stores), tenant, desired).await {
        Ok((Applied::Conflict, _)) => Ok(ctx.conflict(obj.as_ref(), &host_name).await),
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 413 => {
            // Too large once vkube's own annotations are added, say: retrying cannot help
            // until the object changes, and the tenant must hear why.
            Ok(ctx
                .host_rejected(obj.as_ref(), &host_name, &s.message)
                .await)
        }
        Err(e) => Err(SyncError::Host(e)),
    }
}

/// Host copies whose virtual object is gone or no longer wanted. `referenced` holds the
/// (namespace, name) pairs all virtual pods refer to.
pub fn orphans<K: Referenced>(
    ctx: &Context,
    referenced: &HashSet<(String, String)>,
) -> Vec<Arc<K>> {
    let gone = super::orphans_of(K::host_store(&ctx.stores), K::virtual_store(&ctx.stores));
    K::host_store(&ctx.stores)
        .state()
        .into_iter()
        // Token Secrets belong to their host pod (owner reference), not to a virtual Secret.
        .filter(|h| !h.labels().contains_key(super::tokens::TOKEN_LABEL))
        .filter(|h| {
            let unwanted = origin(h.meta()).is_none_or(|o| {
                !(K::sync_all(&ctx.config) || referenced.contains(&(o.namespace, o.name)))
            });
            unwanted || gone.iter().any(|g| g.meta().uid == h.meta().uid)
        })
        .collect()
}
