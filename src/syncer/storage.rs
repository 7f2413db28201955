//! StorageClasses and PersistentVolumes of the host, shown read-only in the virtual cluster as
//! far as the tenant's claims use them (`--storage-sync used`, needs the cluster-read grant):
//! the class of each host claim of this tenant, and the volume the host bound it to, with its
//! claim reference pointing at the virtual claim (whose `volumeName` then names it). Removed when
//! no claim uses them any more.
//!
//! Read-only: a ValidatingAdmissionPolicy that vkube keeps in the virtual API refuses changes and
//! deletions of the mirrors from anyone but vkube's own identity ([`MIRROR_WRITER`]), cluster
//! admins included. A tenant admin can still delete that policy, or impersonate vkube; every
//! changed field the watches see is then put back from the host's truth, and the policy
//! re-created.
//! Nothing here is ever written to the host.
//!
//! The whole set is recomputed from the stores on each change: it is small (one tenant's claims)
//! and a full pass is simpler to get right than per-object bookkeeping.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::{Context, SyncError, gc};
use crate::host::FIELD_MANAGER;
use crate::translate::{self, DESIRED_HASH, HOST_MIRROR, json_contains};

/// The user vkube writes the mirrors as (impersonated by its admin client, see
/// `kubeconfig::client_from_yaml_as`); the admission policy lets only this user change them.
pub const MIRROR_WRITER: &str = "vkube:syncer";
/// Name of the admission policy and of its binding.
pub const POLICY_NAME: &str = "vkube-read-only-host-mirrors";
/// Label selector of what vkube itself creates in the virtual API.
pub const POLICY_SELECTOR: &str = "app.kubernetes.io/managed-by=vkube";

pub async fn run(ctx: Arc<Context>, trigger: Arc<Notify>) {
    if ctx.wait_ready().await.is_err() {
        return;
    }
    loop {
        let wait = match pass(&ctx).await {
            Ok(()) => ctx.config.gc_interval,
            Err(e) => {
                tracing::warn!(error = %e, error_kind = e.kind(), "storage mirrors: sync failed; retrying");
                super::retry_after(&e)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = trigger.notified() => {
                // Let a burst of changes (a claim and its volume binding) settle into one pass.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Storage sync off: mirrors an earlier run left are removed (what is not kept current must not
/// be shown). One list of each kind by label, once at start.
pub async fn remove_all(ctx: Arc<Context>) {
    if ctx.wait_ready().await.is_err() {
        return;
    }
    let selector = ListParams::default().labels(&format!("{HOST_MIRROR}=true"));
    let classes: Api<StorageClass> = Api::all(ctx.mirror_writer.clone());
    let volumes: Api<PersistentVolume> = Api::all(ctx.mirror_writer.clone());
    match classes.list(&selector).await {
        Ok(list) => {
            for c in list {
                gc::delete(&classes, &c, "virtual storage class").await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not list storage class mirrors"),
    }
    match volumes.list(&selector).await {
        Ok(list) => {
            for v in list {
                if let Err(e) = remove_volume(&volumes, &v).await {
                    tracing::warn!(error = %e, "could not remove a volume mirror");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not list volume mirrors"),
    }
}

/// The pv-protection finalizer would hold a volume shown as Bound for ever: nothing in the
/// virtual cluster ever releases it. It is taken off first.
async fn remove_volume(api: &Api<PersistentVolume>, v: &PersistentVolume) -> Result<(), SyncError> {
    let unprotect = serde_json::json!({ "metadata": { "finalizers": null } });
    match api
        .patch(
            &v.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&unprotect),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(SyncError::Virtual(e)),
    }
    gc::delete(api, v, "virtual persistent volume").await;
    Ok(())
}

/// What the virtual cluster should show, from the stores.
struct Desired {
    classes: BTreeMap<String, StorageClass>,
    volumes: Vec<(PersistentVolume, Arc<PersistentVolumeClaim>)>,
}

fn desired(ctx: &Context) -> Desired {
    let stores = &ctx.stores;
    let mut out = Desired {
        classes: BTreeMap::new(),
        volumes: Vec::new(),
    };
    for hclaim in stores.host_claims.state() {
        let Some(origin) = translate::origin(&hclaim.metadata) else {
            continue;
        };
        let Some(vclaim) = stores
            .virtual_claims
            .get(&ObjectRef::new(&origin.name).within(&origin.namespace))
        else {
            continue;
        };
        if origin.uid.is_some() && origin.uid != vclaim.metadata.uid {
            // The host claim of an earlier virtual claim of that name.
            continue;
        }
        // The host claim's class is the truth: the host's default class fills in a missing one.
        if let Some(class) = hclaim
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref())
            .filter(|c| !c.is_empty())
            && let Some(host_class) = stores.host_classes.get(&ObjectRef::new(class))
        {
            out.classes.insert(
                class.to_string(),
                translate::storageclass::mirror(&host_class),
            );
        }
        if let Some(volume) = translate::pv::bound_volume(&hclaim)
            && let Some(host_volume) = stores.host_volumes.get(&ObjectRef::new(volume))
            && translate::pv::bound_to(&host_volume, &hclaim)
        {
            out.volumes
                .push((translate::pv::mirror(&host_volume, &vclaim), vclaim));
        }
    }
    out
}

async fn pass(ctx: &Context) -> Result<(), SyncError> {
    ensure_policy(ctx).await?;
    let want = desired(ctx);
    let classes: Api<StorageClass> = Api::all(ctx.mirror_writer.clone());
    for class in want.classes.values() {
        ensure_mirror(&classes, &ctx.stores.virtual_classes, class).await?;
    }
    let volumes: Api<PersistentVolume> = Api::all(ctx.mirror_writer.clone());
    for (volume, vclaim) in &want.volumes {
        if ensure_mirror(&volumes, &ctx.stores.virtual_volumes, volume).await? {
            point_claim_at(ctx, vclaim, &volume.name_any()).await?;
        }
    }

    let class_names: BTreeSet<&String> = want.classes.keys().collect();
    for c in ctx.stores.virtual_classes.state() {
        if is_mirror(c.as_ref()) && !class_names.contains(&c.name_any()) {
            gc::delete(&classes, c.as_ref(), "virtual storage class").await;
        }
    }
    let volume_names: BTreeSet<String> = want.volumes.iter().map(|(v, _)| v.name_any()).collect();
    for v in ctx.stores.virtual_volumes.state() {
        if is_mirror(v.as_ref()) && !volume_names.contains(&v.name_any()) {
            remove_volume(&volumes, v.as_ref()).await?;
        }
    }
    Ok(())
}

fn is_mirror<K: Resource>(obj: &K) -> bool {
    obj.meta()
        .labels
        .as_ref()
        .and_then(|l| l.get(HOST_MIRROR))
        .is_some_and(|v| v == "true")
}

/// Writes `want` unless the virtual object already shows it; returns whether the virtual
/// cluster now holds the mirror (false: a same-named object of the tenant's is in the way and is
/// left alone). Status, where there is one, is a subresource and written on its own.
async fn ensure_mirror<K>(api: &Api<K>, store: &Store<K>, want: &K) -> Result<bool, SyncError>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = want.name_any();
    let mut body =
        serde_json::to_value(want).map_err(|e| SyncError::Virtual(kube::Error::SerdeError(e)))?;
    let status = body.as_object_mut().and_then(|o| o.remove("status"));
    let have = store.get(&ObjectRef::new(&name));
    let have_json = match &have {
        Some(h) if !is_mirror(h.as_ref()) => {
            tracing::warn!(
                kind = %K::kind(&()),
                %name,
                "the virtual cluster has its own object of this name; the host's is not shown"
            );
            return Ok(false);
        }
        Some(h) => serde_json::to_value(h.as_ref())
            .map_err(|e| SyncError::Virtual(kube::Error::SerdeError(e)))?,
        None => serde_json::Value::Null,
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    // Server-side apply needs apiVersion and kind in the body.
    let typed = |mut v: serde_json::Value| {
        if let Some(o) = v.as_object_mut() {
            o.insert("apiVersion".into(), K::api_version(&()).into());
            o.insert("kind".into(), K::kind(&()).into());
        }
        v
    };
    if !json_contains(&have_json, &body) {
        api.patch(&name, &params, &Patch::Apply(&typed(body)))
            .await
            .map_err(SyncError::Virtual)?;
        tracing::info!(kind = %K::kind(&()), %name, "host mirror written");
    }
    if let Some(status) = status {
        let shown = have_json.get("status").cloned().unwrap_or_default();
        if have.is_none() || !json_contains(&shown, &status) {
            let patch =
                typed(serde_json::json!({ "metadata": { "name": name }, "status": status }));
            api.patch_status(&name, &params, &Patch::Apply(&patch))
                .await
                .map_err(SyncError::Virtual)?;
        }
    }
    Ok(true)
}

/// A claim's volumeName can be set once, while empty (as the binder would); one the tenant set
/// itself is left as it is (the host claim never uses it).
async fn point_claim_at(
    ctx: &Context,
    vclaim: &PersistentVolumeClaim,
    volume: &str,
) -> Result<(), SyncError> {
    let current = vclaim.spec.as_ref().and_then(|s| s.volume_name.as_deref());
    if current.is_some_and(|c| !c.is_empty()) {
        return Ok(());
    }
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.virt.clone(), &vclaim.namespace().unwrap_or_default());
    let patch = serde_json::json!({ "spec": { "volumeName": volume } });
    match api
        .patch(
            &vclaim.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Gone, or set meanwhile: the next pass sees it.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 || s.code == 422 => Ok(()),
        Err(e) => Err(SyncError::Virtual(e)),
    }
}

/// The admission policy that makes the mirrors read-only (pure). CEL runs in the virtual API
/// server, no webhook; it binds cluster admins too, which RBAC cannot.
/// `mirrored`: the (group, resource) of every other host kind shown (`--show-host-kind`, priority
/// and snapshot classes).
pub fn read_only_policy(mirrored: &[(String, String)]) -> serde_json::Value {
    let rule = |group: &str, resources: &[&str]| {
        serde_json::json!({
            "apiGroups": [group],
            "apiVersions": ["*"],
            "operations": ["UPDATE", "DELETE"],
            "resources": resources,
        })
    };
    let mut rules = vec![
        rule("", &["persistentvolumes", "persistentvolumes/status"]),
        rule("storage.k8s.io", &["storageclasses"]),
    ];
    for (group, resource) in mirrored {
        if !(group == "storage.k8s.io" && resource == "storageclasses") {
            rules.push(rule(group, &[resource.as_str()]));
        }
    }
    serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": { "name": POLICY_NAME, "labels": vkube_labels() },
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": { "resourceRules": rules },
            // Only the mirrors: the tenant's own classes and volumes are theirs to change.
            "matchConditions": [{
                "name": "host-mirror",
                "expression": format!(
                    "oldObject != null && has(oldObject.metadata.labels) && '{HOST_MIRROR}' in oldObject.metadata.labels"
                ),
            }],
            "validations": [{
                "expression": format!("request.userInfo.username == '{MIRROR_WRITER}'"),
                "message": "read-only: this object shows the host cluster's and is kept in step with it by vkube",
                "reason": "Forbidden",
            }],
        },
    })
}

pub fn read_only_policy_binding() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": { "name": POLICY_NAME, "labels": vkube_labels() },
        "spec": { "policyName": POLICY_NAME, "validationActions": ["Deny"] },
    })
}

fn vkube_labels() -> serde_json::Value {
    let (k, v) = POLICY_SELECTOR
        .split_once('=')
        .unwrap_or((POLICY_SELECTOR, ""));
    serde_json::json!({ k: v })
}

/// (Re-)creates the policy and its binding when missing or changed (a tenant admin may delete
/// them; their watches wake this loop).
pub(crate) async fn ensure_policy(ctx: &Context) -> Result<(), SyncError> {
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(ctx.mirror_writer.clone());
    let policy = read_only_policy(&ctx.custom.mirrored());
    ensure_stamped(&policies, &ctx.stores.virtual_policies, policy).await?;
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(ctx.mirror_writer.clone());
    ensure_stamped(
        &bindings,
        &ctx.stores.virtual_policy_bindings,
        read_only_policy_binding(),
    )
    .await
}

async fn ensure_stamped<K>(
    api: &Api<K>,
    store: &Store<K>,
    mut want: serde_json::Value,
) -> Result<(), SyncError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let hash = translate::desired_hash(&want);
    let cached = store.get(&ObjectRef::new(POLICY_NAME));
    if cached
        .as_ref()
        .and_then(|c| c.annotations().get(DESIRED_HASH))
        .is_some_and(|h| h == &hash)
    {
        return Ok(());
    }
    want["metadata"]["annotations"] = serde_json::json!({ DESIRED_HASH: hash });
    api.patch(
        POLICY_NAME,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&want),
    )
    .await
    .map_err(SyncError::Virtual)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_binds_only_the_mirrors_and_spares_only_vkube() {
        let p: ValidatingAdmissionPolicy = serde_json::from_value(read_only_policy(&[(
            "scheduling.k8s.io".into(),
            "priorityclasses".into(),
        )]))
        .unwrap();
        let spec = p.spec.unwrap();
        let cond = &spec.match_conditions.unwrap()[0].expression;
        assert!(cond.contains(HOST_MIRROR) && cond.contains("oldObject"));
        let rules = spec.match_constraints.unwrap().resource_rules.unwrap();
        let resources: Vec<String> = rules
            .iter()
            .flat_map(|r| r.resources.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            resources,
            [
                "persistentvolumes",
                "persistentvolumes/status",
                "storageclasses",
                "priorityclasses"
            ]
        );
        for r in &rules {
            assert_eq!(
                r.operations.clone().unwrap(),
                ["UPDATE", "DELETE"],
                "creating is not refused: a tenant's own objects are theirs"
            );
        }
        let v = &spec.validations.unwrap()[0];
        assert_eq!(
            v.expression,
            format!("request.userInfo.username == '{MIRROR_WRITER}'")
        );
        let b: ValidatingAdmissionPolicyBinding =
            serde_json::from_value(read_only_policy_binding()).unwrap();
        let bspec = b.spec.unwrap();
        assert_eq!(bspec.policy_name.as_deref(), Some(POLICY_NAME));
        assert_eq!(bspec.validation_actions.unwrap(), ["Deny"]);
        assert_eq!(
            b.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
            "vkube"
        );
    }
}
