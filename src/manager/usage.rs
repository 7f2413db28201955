//! Per-tenant usage, metered into `status.usage` of each VirtualCluster: pods, CPU and memory
//! requested and (from the host's metrics API, where there is one) used, storage claimed, and
//! pod-seconds and CPU-seconds accumulated over time.
//!
//! Only host objects count: the tenant's host pods and claims are the ones carrying its
//! ownership label, which only `vkube serve` writes (a tenant's own labels reach the host
//! renamed, never under vkube's prefix), and the measured numbers come from the host's
//! metrics-server. The tenant cannot write the status (its owner grant has no
//! `virtualclusters/status`), and the totals live in that status, so they survive manager
//! restarts and fail-overs. The sampling and accumulation are pure functions, tested below.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, ResourceRequirements};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::Context;
use crate::api::{Phase, Usage, VirtualCluster};
use crate::translate::MANAGED_BY;
use crate::translate::metrics::{MetricsList, PodMetrics, nanos};

/// The longest gap between two samples that is metered (see `Usage`).
pub const MAX_GAP_SECONDS: f64 = 300.0;

/// One sample's figures, in exact units: millicores and bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    pub pods: u32,
    pub cpu_requested_milli: u128,
    pub memory_requested_bytes: u128,
    pub cpu_used_milli: Option<u128>,
    pub memory_used_bytes: Option<u128>,
    pub storage_bytes: u128,
}

fn requests(r: Option<&ResourceRequirements>, resource: &str) -> u128 {
    r.and_then(|r| r.requests.as_ref())
        .and_then(|q| q.get(resource))
        .and_then(|q| nanos(&q.0))
        .unwrap_or(0)
}

/// What a pod requests of `resource` in nano-units, as the scheduler counts it: the larger of
/// its containers' sum and its largest init container, plus the pod overhead.
fn pod_request(pod: &Pod, resource: &str) -> u128 {
    let Some(spec) = pod.spec.as_ref() else {
        return 0;
    };
    let containers: u128 = spec
        .containers
        .iter()
        .map(|c| requests(c.resources.as_ref(), resource))
        .sum();
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| requests(c.resources.as_ref(), resource))
        .max()
        .unwrap_or(0);
    let overhead = spec
        .overhead
        .as_ref()
        .and_then(|o| o.get(resource))
        .and_then(|q| nanos(&q.0))
        .unwrap_or(0);
    containers.max(init) + overhead
}

fn is_tenants(meta: &kube::api::ObjectMeta, tenant: &str) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY))
        .is_some_and(|v| v == tenant)
}

/// The figures of one sample (pure): the tenant's pods that hold resources, their requests,
/// their measured usage (only of those pods, and only if the host gave metrics), and the
/// storage its claims request. Pods and claims without the tenant's ownership label (the
/// control plane, its datastore claim) are the platform's, not the tenant's.
pub fn sample(
    tenant: &str,
    pods: &[Pod],
    claims: &[PersistentVolumeClaim],
    metrics: Option<&[PodMetrics]>,
) -> Sample {
    let counted: Vec<&Pod> = pods
        .iter()
        .filter(|p| is_tenants(&p.metadata, tenant))
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .collect();
    let names: BTreeSet<&str> = counted.iter().map(|p| p.name_any_ref()).collect();
    let used = metrics.map(|items| {
        let mut cpu = 0u128;
        let mut memory = 0u128;
        for m in items.iter().filter(|m| {
            m.metadata
                .name
                .as_deref()
                .is_some_and(|n| names.contains(n))
        }) {
            for c in &m.containers {
                cpu += c.usage.get("cpu").and_then(|q| nanos(&q.0)).unwrap_or(0);
                memory += c.usage.get("memory").and_then(|q| nanos(&q.0)).unwrap_or(0);
            }
        }
        (cpu, memory)
    });
    let storage: u128 = claims
        .iter()
        .filter(|c| is_tenants(&c.metadata, tenant))
        .map(|c| {
            c.spec
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .and_then(|q| nanos(&q.0))
                .unwrap_or(0)
        })
        .sum();
    Sample {
        pods: u32::try_from(counted.len()).unwrap_or(u32::MAX),
        cpu_requested_milli: counted.iter().map(|p| pod_request(p, "cpu")).sum::<u128>()
            / 1_000_000,
        memory_requested_bytes: counted
            .iter()
            .map(|p| pod_request(p, "memory"))
            .sum::<u128>()
            / 1_000_000_000,
        cpu_used_milli: used.map(|(cpu, _)| cpu / 1_000_000),
        memory_used_bytes: used.map(|(_, memory)| memory / 1_000_000_000),
        storage_bytes: storage / 1_000_000_000,
    }
}

trait NameRef {
    fn name_any_ref(&self) -> &str;
}

impl NameRef for Pod {
    fn name_any_ref(&self) -> &str {
        self.meta().name.as_deref().unwrap_or("")
    }
}

pub fn format_cpu(milli: u128) -> String {
    if milli.is_multiple_of(1000) {
        format!("{}", milli / 1000)
    } else {
        format!("{milli}m")
    }
}

pub fn format_bytes(bytes: u128) -> String {
    for (suffix, unit) in [
        ("Ti", 1u128 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    if bytes >= 1 << 20 {
        // Working sets are rarely a whole number of MiB: Ki keeps them exact enough.
        return format!("{}Ki", bytes / 1024);
    }
    bytes.to_string()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The new usage from the old one and a sample taken at `now` (pure): the totals grow by the
/// OLD figures times the seconds since the old sample (capped at [`MAX_GAP_SECONDS`]; a clock
/// going backwards adds nothing), then the figures become the sample's.
pub fn accumulate(old: Option<&Usage>, sample: &Sample, now: Timestamp) -> Usage {
    let now_text = now.to_string();
    // The sample's own figures; the totals start at zero and grow below when there is an old one.
    let fresh = Usage {
        pods: sample.pods,
        cpu_requested: format_cpu(sample.cpu_requested_milli),
        memory_requested: format_bytes(sample.memory_requested_bytes),
        cpu_used: sample.cpu_used_milli.map(format_cpu),
        memory_used: sample.memory_used_bytes.map(format_bytes),
        storage_claimed: format_bytes(sample.storage_bytes),
        pod_seconds: 0,
        cpu_requested_seconds: 0.0,
        cpu_used_seconds: 0.0,
        since: now_text.clone(),
        sampled_at: now_text,
    };
    let Some(old) = old else {
        return fresh;
    };
    let elapsed = old
        .sampled_at
        .parse::<Timestamp>()
        .ok()
        .map(|t| (now.as_millisecond() - t.as_millisecond()) as f64 / 1000.0)
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(0.0)
        .min(MAX_GAP_SECONDS);
    let cores =
        |q: Option<&str>| -> f64 { q.and_then(nanos).map(|n| n as f64 / 1e9).unwrap_or(0.0) };
    Usage {
        pod_seconds: old
            .pod_seconds
            .saturating_add((f64::from(old.pods) * elapsed).round() as u64),
        cpu_requested_seconds: round3(
            sanitize(old.cpu_requested_seconds) + cores(Some(&old.cpu_requested)) * elapsed,
        ),
        cpu_used_seconds: round3(
            sanitize(old.cpu_used_seconds) + cores(old.cpu_used.as_deref()) * elapsed,
        ),
        since: if old.since.parse::<Timestamp>().is_ok() {
            old.since.clone()
        } else {
            fresh.since.clone()
        },
        ..fresh
    }
}

/// A total read back from the status: NaN, infinite or negative counts as zero.
fn sanitize(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 { x } else { 0.0 }
}

/// Whether a cluster is metered: its namespace is verified as its own (the manager set
/// `status.hostNamespace` after that check) and it is not being deleted or refused.
fn metered(vc: &VirtualCluster) -> Option<String> {
    if vc.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = vc.status.as_ref()?;
    if !matches!(
        status.phase,
        Some(Phase::Ready | Phase::Starting | Phase::Paused)
    ) {
        return None;
    }
    let want = super::objects::host_namespace(vc.metadata.name.as_deref()?);
    (status.host_namespace.as_deref() == Some(want.as_str())).then_some(want)
}

/// The host's pod metrics of `namespace`, or `None` when the host has no metrics API (or
/// does not let the manager read it): usage then shows requests only.
async fn pod_metrics(client: &kube::Client, namespace: &str) -> Option<Vec<PodMetrics>> {
    let req = http::Request::get(format!(
        "/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods"
    ))
    .body(Vec::new())
    .ok()?;
    match tokio::time::timeout(
        Duration::from_secs(10),
        client.request::<MetricsList<PodMetrics>>(req),
    )
    .await
    {
        Ok(Ok(list)) => Some(list.items),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, namespace, "no pod metrics from the host");
            None
        }
        Err(_) => None,
    }
}

/// Meters one cluster into its status, then publishes the same figures as metrics.
async fn meter(ctx: &Context, vc: &VirtualCluster, namespace: &str) -> Result<(), kube::Error> {
    let name = vc.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = ListParams::default().labels(&format!("{MANAGED_BY}={name}"));
    let pods = pods.list(&selector).await?.items;
    let claims = claims.list(&selector).await?.items;
    let metrics = pod_metrics(&ctx.client, namespace).await;
    let s = sample(&name, &pods, &claims, metrics.as_deref());
    let old = vc.status.as_ref().and_then(|s| s.usage.as_ref());
    let usage = accumulate(old, &s, Timestamp::now());
    let api: Api<VirtualCluster> = Api::all(ctx.client.clone());
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"usage": usage}})),
    )
    .await?;
    crate::metrics::get()
        .manager
        .tenant_usage
        .record(&name, &s, &usage);
    Ok(())
}

/// Samples every metered cluster each `every` until the task is dropped (the manager runs it
/// while it leads).
pub async fn run(ctx: Arc<Context>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut metered_now = BTreeSet::new();
        for vc in ctx.store.state() {
            let Some(namespace) = metered(&vc) else {
                continue;
            };
            metered_now.insert(vc.name_any());
            if let Err(e) = meter(&ctx, &vc, &namespace).await {
                tracing::warn!(vcluster = %vc.name_any(), error = %e, "metering usage failed");
            }
        }
        crate::metrics::get()
            .manager
            .tenant_usage
            .retain(&metered_now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::metrics::ContainerMetrics;
    use k8s_openapi::api::core::v1::{
        Container, PersistentVolumeClaimSpec, PodSpec, PodStatus, VolumeResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::api::ObjectMeta;
    use std::collections::BTreeMap;

    fn meta(name: &str, owner: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            labels: owner.map(|o| BTreeMap::from([(MANAGED_BY.to_string(), o.to_string())])),
            ..Default::default()
        }
    }

    fn res(cpu: &str, memory: &str) -> Option<ResourceRequirements> {
        Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity(cpu.into())),
                ("memory".to_string(), Quantity(memory.into())),
            ])),
            ..Default::default()
        })
    }

    fn pod(name: &str, owner: Option<&str>, phase: &str, containers: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: meta(name, owner),
            spec: Some(PodSpec {
                containers: containers
                    .iter()
                    .map(|(c, m)| Container {
                        name: "c".into(),
                        resources: res(c, m),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        }
    }

    fn claim(owner: Option<&str>, size: &str) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: meta("c", owner),
            spec: Some(PersistentVolumeClaimSpec {
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".into(), Quantity(size.into()))])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn metrics(name: &str, cpu: &str, memory: &str) -> PodMetrics {
        PodMetrics {
            metadata: meta(name, None),
            containers: vec![ContainerMetrics {
                name: "c".into(),
                usage: BTreeMap::from([
                    ("cpu".into(), Quantity(cpu.into())),
                    ("memory".into(), Quantity(memory.into())),
                ]),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn only_the_tenants_live_host_objects_count() {
        let mut with_init = pod("init", Some("alice"), "Pending", &[("100m", "64Mi")]);
        with_init.spec.as_mut().unwrap().init_containers = Some(vec![Container {
            name: "i".into(),
            resources: res("1", "32Mi"),
            ..Default::default()
        }]);
        let pods = [
            pod(
                "a",
                Some("alice"),
                "Running",
                &[("250m", "128Mi"), ("250m", "128Mi")],
            ),
            with_init,
            // Done: holds nothing any more.
            pod("done", Some("alice"), "Succeeded", &[("8", "8Gi")]),
            // The control plane (no ownership label) and another tenant's: not alice's.
            pod("control-plane", None, "Running", &[("4", "4Gi")]),
            pod("b", Some("bob"), "Running", &[("4", "4Gi")]),
        ];
        let claims = [
            claim(Some("alice"), "1Gi"),
            claim(None, "10Gi"),
            claim(Some("bob"), "5Gi"),
        ];
        let m = [
            metrics("a", "12m", "10Mi"),
            metrics("init", "3m", "1Mi"),
            // Numbers of pods that are not counted are not added.
            metrics("control-plane", "900m", "1Gi"),
            metrics("done", "900m", "1Gi"),
        ];
        let s = sample("alice", &pods, &claims, Some(&m));
        assert_eq!(
            s,
            Sample {
                pods: 2,
                // a: 500m; init: max(100m, 1) = 1000m.
                cpu_requested_milli: 1500,
                memory_requested_bytes: 320 << 20,
                cpu_used_milli: Some(15),
                memory_used_bytes: Some(11 << 20),
                storage_bytes: 1 << 30,
            }
        );
        // Without a metrics API: requests only.
        assert_eq!(sample("alice", &pods, &claims, None).cpu_used_milli, None);
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).unwrap()
    }

    #[test]
    fn totals_grow_by_the_previous_figures_over_the_elapsed_time() {
        let first = Sample {
            pods: 2,
            cpu_requested_milli: 500,
            memory_requested_bytes: 1 << 30,
            cpu_used_milli: Some(100),
            memory_used_bytes: Some(1 << 20),
            storage_bytes: 0,
        };
        let u0 = accumulate(None, &first, at(0));
        assert_eq!((u0.pod_seconds, u0.cpu_requested_seconds), (0, 0.0));
        assert_eq!(u0.cpu_requested, "500m");
        assert_eq!(u0.memory_requested, "1Gi");
        assert_eq!(u0.since, at(0).to_string());
        let second = Sample {
            pods: 5,
            cpu_requested_milli: 2000,
            ..Default::default()
        };
        let u1 = accumulate(Some(&u0), &second, at(30));
        // 2 pods × 30 s, 0.5 cores × 30 s, 0.1 cores used × 30 s: the OLD figures.
        assert_eq!(u1.pod_seconds, 60);
        assert_eq!(u1.cpu_requested_seconds, 15.0);
        assert_eq!(u1.cpu_used_seconds, 3.0);
        assert_eq!(u1.pods, 5);
        assert_eq!(u1.cpu_requested, "2");
        assert_eq!(u1.cpu_used, None);
        assert_eq!(u1.since, u0.since);
        // The manager was away for an hour: only MAX_GAP_SECONDS are metered.
        let u2 = accumulate(Some(&u1), &second, at(30 + 3600));
        assert_eq!(u2.pod_seconds, 60 + 5 * 300);
        assert_eq!(u2.cpu_requested_seconds, 15.0 + 2.0 * 300.0);
        // A clock going backwards, or a garbled time, adds nothing.
        let u3 = accumulate(Some(&u2), &second, at(0));
        assert_eq!(u3.pod_seconds, u2.pod_seconds);
        let mut garbled = u2.clone();
        garbled.sampled_at = "yesterday".into();
        garbled.cpu_requested_seconds = f64::NAN;
        let u4 = accumulate(Some(&garbled), &second, at(10_000));
        assert_eq!(u4.pod_seconds, u2.pod_seconds);
        assert_eq!(u4.cpu_requested_seconds, 0.0);
    }

    #[test]
    fn quantities_are_shown_the_way_kubectl_writes_them() {
        assert_eq!(format_cpu(0), "0");
        assert_eq!(format_cpu(1500), "1500m");
        assert_eq!(format_cpu(3000), "3");
        assert_eq!(format_bytes(0), "0");
        assert_eq!(format_bytes(512 << 20), "512Mi");
        assert_eq!(format_bytes(3 << 30), "3Gi");
        assert_eq!(format_bytes((5 << 20) + 4096), "5124Ki");
        assert_eq!(format_bytes(1000), "1000");
    }

    #[test]
    fn only_clusters_in_their_verified_namespace_are_metered() {
        let mut vc = VirtualCluster::new("alice", Default::default());
        assert_eq!(metered(&vc), None);
        vc.status = Some(crate::api::VirtualClusterStatus {
            phase: Some(Phase::Ready),
            host_namespace: Some("vkube-alice".into()),
            ..Default::default()
        });
        assert_eq!(metered(&vc).as_deref(), Some("vkube-alice"));
        // Refused (e.g. a namespace that is not its own): never metered.
        vc.status.as_mut().unwrap().phase = Some(Phase::Refused);
        assert_eq!(metered(&vc), None);
        vc.status.as_mut().unwrap().phase = Some(Phase::Ready);
        vc.status.as_mut().unwrap().host_namespace = Some("kube-system".into());
        assert_eq!(metered(&vc), None);
    }
}
