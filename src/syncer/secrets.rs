//! Secrets: those referenced by a virtual pod (or all, by flag) are copied down; updates
//! propagate; the garbage collector removes copies no longer referenced. Secret data is never
//! logged.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use super::apply::{self, Applied};
use super::{Context, SyncError, retry_after};
use crate::translate::{self, origin};

pub fn controller(
    ctx: Arc<Context>,
    trigger: super::Trigger<Secret>,
    requeue: super::Requeue<Secret>,
) -> BoxFuture<'static, ()> {
    let reader = ctx.stores.virtual_secrets.clone();
    let concurrency = ctx.config.concurrency;
    Box::pin(
        Controller::for_stream(trigger, reader)
            .reconcile_on(requeue)
            .with_config(controller::Config::default().concurrency(concurrency))
            .run(reconcile, error_policy, ctx)
            .for_each(|_| futures::future::ready(())),
    )
}

fn error_policy(s: Arc<Secret>, error: &SyncError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(secret = %s.name_any(), %error, "secret sync failed; retrying");
    Action::requeue(retry_after(error))
}

pub fn referenced(ctx: &Context, namespace: &str, name: &str) -> bool {
    ctx.stores.virtual_pods.state().iter().any(|p| {
        p.metadata.namespace.as_deref() == Some(namespace)
            && translate::pod::references(p).secrets.contains(name)
    })
}

async fn reconcile(vsecret: Arc<Secret>, ctx: Arc<Context>) -> Result<Action, SyncError> {
    ctx.wait_ready().await?;
    let tenant = ctx.tenant();
    let ns = vsecret.namespace().unwrap_or_default();
    let name = vsecret.name_any();
    let desired = translate::secret::to_host(&vsecret, tenant);
    let on_host = ctx
        .stores
        .host_secrets
        .get(&ObjectRef::new(&desired.name_any()).within(&tenant.host_namespace))
        .is_some();
    if vsecret.metadata.deletion_timestamp.is_some()
        || !(on_host || ctx.config.sync_all_secrets || referenced(&ctx, &ns, &name))
    {
        return Ok(Action::await_change());
    }
    let api: Api<Secret> = ctx.host_api();
    match apply::ensure(&api, &ctx.stores.host_secrets, tenant, desired)
        .await
        .map_err(SyncError::Host)?
    {
        (Applied::Conflict, _) => {
            ctx.event(
                vsecret.as_ref(),
                EventType::Warning,
                "HostNameConflict",
                format!(
                    "a secret of the same host name exists in host namespace {} and is not managed by this virtual cluster; not touching it",
                    tenant.host_namespace
                ),
            )
            .await;
            Ok(Action::requeue(Duration::from_secs(60)))
        }
        _ => Ok(Action::await_change()),
    }
}

pub fn orphans(ctx: &Context, referenced: &HashSet<(String, String)>) -> Vec<Arc<Secret>> {
    ctx.stores
        .host_secrets
        .state()
        .into_iter()
        .filter(|h| match origin(&h.metadata) {
            Some(o) => {
                let exists = ctx
                    .stores
                    .virtual_secrets
                    .get(&ObjectRef::new(&o.name).within(&o.namespace))
                    .is_some();
                !exists
                    || !(ctx.config.sync_all_secrets || referenced.contains(&(o.namespace, o.name)))
            }
            None => true,
        })
        .collect()
}
