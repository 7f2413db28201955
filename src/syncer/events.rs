//! Events: what the host says about a synced pod or service (scheduling failures, image pulls,
//! probes) appears on the virtual object, so `kubectl describe` in the virtual cluster tells the
//! whole story. Only events newer than the syncer's start are copied; the recorder folds
//! repeats into one series.

use std::sync::Arc;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Event, Pod, Service};
use kube::api::Api;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};

use super::Context;
use crate::translate::origin;

/// The virtual object a host event is about, as (kind, namespace, name).
fn regarding(ctx: &Context, ev: &Event) -> Option<(String, String, String)> {
    let obj = &ev.involved_object;
    let name = obj.name.as_deref()?;
    let ns = &ctx.tenant().host_namespace;
    let meta = match obj.kind.as_deref()? {
        "Pod" => ctx
            .stores
            .host_pods
            .get(&ObjectRef::new(name).within(ns))
            .map(|p| p.metadata.clone()),
        "Service" => ctx
            .stores
            .host_services
            .get(&ObjectRef::new(name).within(ns))
            .map(|s| s.metadata.clone()),
        _ => None,
    }?;
    let o = origin(&meta)?;
    Some((obj.kind.clone()?, o.namespace, o.name))
}

pub fn forwarder(ctx: Arc<Context>) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        if ctx.wait_ready().await.is_err() {
            return;
        }
        let started = k8s_openapi::jiff::Timestamp::now();
        let api: Api<Event> = ctx.host_api();
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(ev) = events.next().await {
            let Ok(ev) = ev else { continue };
            let when = ev
                .last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or(ev.event_time.as_ref().map(|t| t.0))
                .or(ev.metadata.creation_timestamp.as_ref().map(|t| t.0));
            if when.is_some_and(|w| w < started) {
                continue;
            }
            // The syncer's own events are recorded in the virtual cluster already.
            if ev.reporting_component.as_deref() == Some("vkube-syncer") {
                continue;
            }
            let Some((kind, namespace, name)) = regarding(&ctx, &ev) else {
                continue;
            };
            let type_ = if ev.type_.as_deref() == Some("Warning") {
                EventType::Warning
            } else {
                EventType::Normal
            };
            let reason = ev.reason.clone().unwrap_or_else(|| "HostEvent".into());
            let note = ev.message.clone().unwrap_or_default();
            match kind.as_str() {
                "Pod" => {
                    if let Some(p) = ctx
                        .stores
                        .virtual_pods
                        .get(&ObjectRef::<Pod>::new(&name).within(&namespace))
                    {
                        ctx.event(p.as_ref(), type_, &reason, note).await;
                    }
                }
                "Service" => {
                    if let Some(s) = ctx
                        .stores
                        .virtual_services
                        .get(&ObjectRef::<Service>::new(&name).within(&namespace))
                    {
                        ctx.event(s.as_ref(), type_, &reason, note).await;
                    }
                }
                _ => {}
            }
        }
    })
}
