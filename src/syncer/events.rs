//! Events: what the host says about a synced pod or service (scheduling failures, image pulls,
//! probes) appears on the virtual object, so `kubectl describe` in the virtual cluster tells the
//! whole story. Only events newer than the syncer's start are copied; the recorder folds
//! repeats into one series.

use std::sync::Arc;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Event, Service};
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

/// Events from before the syncer started were handled by an earlier run (or are stale). Event
/// timestamps have second precision, hence the margin.
fn is_new(ev: &Event, started: k8s_openapi::jiff::Timestamp) -> bool {
    let when = ev
        .last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or(ev.event_time.as_ref().map(|t| t.0))
        .or(ev.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let margin = k8s_openapi::jiff::SignedDuration::from_secs(2);
    // The syncer's own events are recorded in the virtual cluster already.
    ev.reporting_component.as_deref() != Some("vkube-syncer")
        && when.is_none_or(|w| w >= started - margin)
}

/// Copies one host event to its virtual object; false if that object is not known (yet).
async fn forward(ctx: &Context, ev: &Event) -> bool {
    let Some((kind, namespace, name)) = regarding(ctx, ev) else {
        return false;
    };
    let type_ = if ev.type_.as_deref() == Some("Warning") {
        EventType::Warning
    } else {
        EventType::Normal
    };
    let reason = ev.reason.clone().unwrap_or_else(|| "HostEvent".into());
    // "Successfully assigned vkube-alice/web-x-default-x-alice to node-1" reads as the tenant
    // would expect: "default/web".
    let note = crate::translate::in_virtual_names(
        ev.message.as_deref().unwrap_or_default(),
        (
            ev.involved_object.name.as_deref().unwrap_or_default(),
            &ctx.tenant().host_namespace,
        ),
        (&name, &namespace),
    );
    match kind.as_str() {
        "Pod" => {
            if let Some(p) = ctx
                .stores
                .virtual_pods
                .get(&ObjectRef::new(&name).within(&namespace))
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
    true
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
        // A host event can arrive before the watch on its object reports the object; such
        // events wait here (up to 30 s: watches lag under load) for the object to show up.
        let mut waiting: Vec<(Event, u8)> = Vec::new();
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tokio::select! {
                ev = events.next() => {
                    let Some(ev) = ev else { break };
                    let Ok(ev) = ev else { continue };
                    if !is_new(&ev, started) {
                        continue;
                    }
                    // Copied events are the least urgent writes: host creates go first.
                    ctx.backlog.drained_or(super::pods::REPORT_HOLD).await;
                    if !forward(&ctx, &ev).await {
                        waiting.push((ev, 0));
                    }
                }
                _ = tick.tick(), if !waiting.is_empty() => {
                    let mut still = Vec::new();
                    for (ev, tries) in std::mem::take(&mut waiting) {
                        if !forward(&ctx, &ev).await && tries < 60 {
                            still.push((ev, tries + 1));
                        }
                    }
                    waiting = still;
                }
            }
        }
    })
}
