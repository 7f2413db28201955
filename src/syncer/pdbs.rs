//! PodDisruptionBudgets, virtual → host, selectors confined to the tenant's namespace
//! (`translate::pdb`): the host's evictions (drains, autoscaler) respect the tenant's budgets.
//! The virtual budget's status is the virtual disruption controller's (it counts the same pods,
//! whose readiness comes from the host), so nothing is copied back and the two never fight.

use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::apply::{self, Applied};
use super::{Context, SyncError};
use crate::translate;

pub fn controller(
    ctx: Arc<Context>,
    trigger: super::Trigger<PodDisruptionBudget>,
    requeue: super::Requeue<PodDisruptionBudget>,
) -> BoxFuture<'static, ()> {
    let reader = ctx.stores.virtual_budgets.clone();
    super::controller(ctx, reader, trigger, requeue, reconcile)
}

async fn reconcile(vpdb: Arc<PodDisruptionBudget>, ctx: Arc<Context>) -> Result<Action, SyncError> {
    ctx.wait_ready().await?;
    if vpdb.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let tenant = ctx.tenant();
    let desired = translate::pdb::to_host(&vpdb, tenant);
    let host_name = desired.name_any();
    let api: Api<PodDisruptionBudget> = ctx.host_api();
    match apply::ensure(&api, &ctx.stores.host_budgets, tenant, desired).await {
        Ok((Applied::Conflict, _)) => Ok(ctx.conflict(vpdb.as_ref(), &host_name).await),
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 413 => Ok(ctx
            .host_rejected(vpdb.as_ref(), &host_name, &s.message)
            .await),
        Err(e) => Err(SyncError::Host(e)),
    }
}

pub fn orphans(ctx: &Context) -> Vec<Arc<PodDisruptionBudget>> {
    super::orphans_of(&ctx.stores.host_budgets, &ctx.stores.virtual_budgets)
}
