//! vkube's own metrics (Prometheus text format, `prometheus-client`) and the admin listener that
//! serves them with `/healthz` and `/readyz` (module [`server`]).
//!
//! Every metric is defined here, once; the rest of the code calls [`get`] and records with one
//! line. One process is one `vkube serve` (one tenant) or one `vkube manager`, so a process-wide
//! set needs no handle threaded through every layer.
//!
//! Label values are `&'static str` or numbers by construction: a name a tenant chooses (a
//! namespace, an object, a custom resource, an admission webhook's reason) can never become a
//! label value, so cardinality stays bounded and nothing of one tenant's naming shows up in a
//! scrape (see [`labels`]).

pub mod labels;
pub mod process;
pub mod server;

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latencies from 5 ms to about 80 s: API calls, reconciles, pods reaching the host.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// DNS relays: 0.5 ms to about 4 s.
fn dns_latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    /// `virtual_api`, `host_api` or `not_ready` (the layer that failed).
    pub api: &'static str,
    /// A Kubernetes status reason from a fixed list, or `Other` / `Transport`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncedLabels {
    pub kind: &'static str,
    /// `created` or `updated`.
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// The syncer, per controller (`Pod`, `PodStatus`, `ConfigMap`, ...).
pub struct Syncer {
    pub queue_depth: Family<ControllerLabel, Gauge>,
    pub reconcile_duration: HistogramFamily<ControllerLabel>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub objects_synced: Family<SyncedLabels, Counter>,
    /// From the watch reporting a new virtual object to its host copy being created.
    pub create_to_host: HistogramFamily<KindLabel>,
    /// From the host watch reporting a change to the virtual status written.
    pub status_up: HistogramFamily<KindLabel>,
    /// 1 once every watch of the syncer delivered its initial list.
    pub caches_synced: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: &'static str,
    pub resource: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub verb: &'static str,
    pub resource: &'static str,
}

/// The tenant-facing API proxy.
pub struct Proxy {
    pub requests: Family<RequestLabels, Counter>,
    /// Until the response head is sent (for a watch: until it is established).
    pub request_duration: HistogramFamily<RouteLabels>,
    pub open_watches: Gauge,
    /// Upgraded connections: exec, attach, port-forward.
    pub open_streams: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabel {
    pub qtype: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnswerLabel {
    /// `addresses`, `alias`, `nodata`, `nxdomain`, `forwarded`, `servfail`, `formerr`.
    pub answer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// vkube's cluster DNS.
pub struct Dns {
    pub queries: Family<QueryLabel, Counter>,
    pub answers: Family<AnswerLabel, Counter>,
    pub upstream_duration: HistogramFamily<ResultLabel>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// A VirtualCluster's name: validated by the manager (a DNS label of at most 40 characters),
/// and bounded by the number of clusters, unlike names chosen inside a tenant.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    pub tenant: String,
}

type TenantGauge = Family<TenantLabel, Gauge<f64, std::sync::atomic::AtomicU64>>;

/// Each tenant's metered usage (`manager::usage`), labelled by VirtualCluster. Only the manager
/// exposes these, on the port the admin's namespaces alone may reach.
#[derive(Default)]
pub struct TenantUsage {
    pub pods: TenantGauge,
    pub cpu_requested_cores: TenantGauge,
    pub memory_requested_bytes: TenantGauge,
    pub cpu_used_cores: TenantGauge,
    pub memory_used_bytes: TenantGauge,
    pub storage_claimed_bytes: TenantGauge,
    pub pod_seconds: TenantGauge,
    pub cpu_requested_core_seconds: TenantGauge,
    pub cpu_used_core_seconds: TenantGauge,
    /// The tenants with series now (the families cannot be listed).
    recorded: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl TenantUsage {
    fn families(&self) -> [(&'static str, &'static str, &TenantGauge); 9] {
        [
            (
                "pods",
                "The tenant's host pods holding resources",
                &self.pods,
            ),
            (
                "cpu_requested_cores",
                "CPU requested by those pods",
                &self.cpu_requested_cores,
            ),
            (
                "memory_requested_bytes",
                "Memory requested by those pods",
                &self.memory_requested_bytes,
            ),
            (
                "cpu_used_cores",
                "CPU those pods used, from the host's metrics API",
                &self.cpu_used_cores,
            ),
            (
                "memory_used_bytes",
                "Memory those pods used, from the host's metrics API",
                &self.memory_used_bytes,
            ),
            (
                "storage_claimed_bytes",
                "Storage requested by the tenant's claims",
                &self.storage_claimed_bytes,
            ),
            (
                "pod_seconds",
                "Pod-seconds since metering began (status.usage.since)",
                &self.pod_seconds,
            ),
            (
                "cpu_requested_core_seconds",
                "Core-seconds of CPU requested since metering began",
                &self.cpu_requested_core_seconds,
            ),
            (
                "cpu_used_core_seconds",
                "Core-seconds of CPU used since metering began",
                &self.cpu_used_core_seconds,
            ),
        ]
    }

    /// Publishes one tenant's latest sample and totals. Figures the host could not measure (no
    /// metrics API) are left out rather than shown as zero.
    pub fn record(
        &self,
        tenant: &str,
        sample: &crate::manager::usage::Sample,
        usage: &crate::api::Usage,
    ) {
        if let Ok(mut recorded) = self.recorded.lock() {
            recorded.insert(tenant.to_string());
        }
        let label = TenantLabel {
            tenant: tenant.to_string(),
        };
        let set = |family: &TenantGauge, value: f64| {
            family.get_or_create(&label).set(value);
        };
        set(&self.pods, f64::from(sample.pods));
        set(
            &self.cpu_requested_cores,
            sample.cpu_requested_milli as f64 / 1000.0,
        );
        set(
            &self.memory_requested_bytes,
            sample.memory_requested_bytes as f64,
        );
        set(&self.storage_claimed_bytes, sample.storage_bytes as f64);
        match sample.cpu_used_milli {
            Some(milli) => set(&self.cpu_used_cores, milli as f64 / 1000.0),
            None => {
                self.cpu_used_cores.remove(&label);
            }
        }
        match sample.memory_used_bytes {
            Some(bytes) => set(&self.memory_used_bytes, bytes as f64),
            None => {
                self.memory_used_bytes.remove(&label);
            }
        }
        set(&self.pod_seconds, usage.pod_seconds as f64);
        set(
            &self.cpu_requested_core_seconds,
            usage.cpu_requested_seconds,
        );
        set(&self.cpu_used_core_seconds, usage.cpu_used_seconds);
    }

    /// Drops the series of every tenant not in `metered` (deleted, refused, or no longer led
    /// by this replica when `metered` is empty).
    pub fn retain(&self, metered: &std::collections::BTreeSet<String>) {
        let Ok(mut recorded) = self.recorded.lock() else {
            return;
        };
        let stale: Vec<String> = recorded.difference(metered).cloned().collect();
        for tenant in stale {
            let label = TenantLabel { tenant };
            for (_, _, family) in self.families() {
                family.remove(&label);
            }
            recorded.remove(&label.tenant);
        }
    }
}

/// `vkube manager`. Tenant names appear only in `tenant_usage` (see [`TenantLabel`]).
pub struct Manager {
    pub virtual_clusters: Family<PhaseLabel, Gauge>,
    pub reconcile_duration: HistogramFamily<ResultLabel>,
    pub reconcile_errors: Family<ReasonLabel, Counter>,
    /// 1 while this replica holds the Lease (or runs without leader election).
    pub leader: Gauge,
    /// Seconds since the watchdog last saw the controller make progress.
    pub watchdog_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub tenant_usage: TenantUsage,
}

pub struct Metrics {
    pub syncer: Syncer,
    pub proxy: Proxy,
    pub dns: Dns,
    pub manager: Manager,
    serve: Registry,
    manager_registry: Registry,
}

/// Which process's metrics a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Serve,
    Manager,
}

impl Metrics {
    fn new() -> Metrics {
        let syncer = Syncer {
            queue_depth: Family::default(),
            reconcile_duration: Family::new_with_constructor(latency),
            reconcile_errors: Family::default(),
            objects_synced: Family::default(),
            create_to_host: Family::new_with_constructor(latency),
            status_up: Family::new_with_constructor(latency),
            caches_synced: Gauge::default(),
        };
        let proxy = Proxy {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency),
            open_watches: Gauge::default(),
            open_streams: Gauge::default(),
        };
        let dns = Dns {
            queries: Family::default(),
            answers: Family::default(),
            upstream_duration: Family::new_with_constructor(dns_latency),
        };
        let manager = Manager {
            virtual_clusters: Family::default(),
            reconcile_duration: Family::new_with_constructor(latency),
            reconcile_errors: Family::default(),
            leader: Gauge::default(),
            watchdog_age: Gauge::default(),
            tenant_usage: TenantUsage::default(),
        };

        let mut serve = Registry::default();
        {
            let s = serve.sub_registry_with_prefix("vkube_syncer");
            s.register(
                "queue_depth",
                "Objects triggered and waiting for a reconcile, per controller",
                syncer.queue_depth.clone(),
            );
            s.register(
                "reconcile_duration_seconds",
                "Time one reconcile took, per controller",
                syncer.reconcile_duration.clone(),
            );
            s.register(
                "reconcile_errors",
                "Failed reconciles, per controller, failing API and Kubernetes reason",
                syncer.reconcile_errors.clone(),
            );
            s.register(
                "objects_synced",
                "Host objects created or updated, per kind",
                syncer.objects_synced.clone(),
            );
            s.register(
                "create_to_host_seconds",
                "From the watch reporting a new virtual object to its host copy created",
                syncer.create_to_host.clone(),
            );
            s.register(
                "status_up_seconds",
                "From the host watch reporting a change to the virtual status written",
                syncer.status_up.clone(),
            );
            s.register(
                "caches_synced",
                "1 once every watch delivered its initial list (readiness)",
                syncer.caches_synced.clone(),
            );
        }
        {
            let p = serve.sub_registry_with_prefix("vkube_proxy");
            p.register(
                "requests",
                "Requests answered, by verb, resource and HTTP code",
                proxy.requests.clone(),
            );
            p.register(
                "request_duration_seconds",
                "Time to the response head, by verb and resource",
                proxy.request_duration.clone(),
            );
            p.register(
                "open_watches",
                "Watches being streamed now",
                proxy.open_watches.clone(),
            );
            p.register(
                "open_streams",
                "Upgraded connections (exec, attach, port-forward) open now",
                proxy.open_streams.clone(),
            );
        }
        {
            let d = serve.sub_registry_with_prefix("vkube_dns");
            d.register("queries", "DNS queries, by type", dns.queries.clone());
            d.register(
                "answers",
                "DNS answers, by what was answered",
                dns.answers.clone(),
            );
            d.register(
                "upstream_duration_seconds",
                "Time the upstream resolver took for relayed names",
                dns.upstream_duration.clone(),
            );
        }
        serve.register_collector(Box::new(process::ProcessCollector));

        let mut manager_registry = Registry::default();
        {
            let m = manager_registry.sub_registry_with_prefix("vkube_manager");
            m.register(
                "virtual_clusters",
                "VirtualClusters, by phase",
                manager.virtual_clusters.clone(),
            );
            m.register(
                "reconcile_duration_seconds",
                "Time one reconcile took, by result",
                manager.reconcile_duration.clone(),
            );
            m.register(
                "reconcile_errors",
                "Failed reconciles, by error",
                manager.reconcile_errors.clone(),
            );
            m.register(
                "leader",
                "1 while this replica is the one that reconciles",
                manager.leader.clone(),
            );
            m.register(
                "watchdog_age_seconds",
                "Seconds since the controller was last seen making progress",
                manager.watchdog_age.clone(),
            );
            let t = m.sub_registry_with_prefix("tenant");
            for (name, help, family) in manager.tenant_usage.families() {
                t.register(name, help, family.clone());
            }
        }
        manager_registry.register_collector(Box::new(process::ProcessCollector));

        Metrics {
            syncer,
            proxy,
            dns,
            manager,
            serve,
            manager_registry,
        }
    }

    /// The text exposition of one component's metrics.
    pub fn render(&self, component: Component) -> String {
        let registry = match component {
            Component::Serve => &self.serve,
            Component::Manager => &self.manager_registry,
        };
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, registry);
        out
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

pub fn get() -> &'static Metrics {
    &METRICS
}

/// Seconds as Prometheus wants them.
pub fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Decrements a gauge when dropped: an open watch or stream, however it ends.
pub struct OpenGuard(&'static Gauge);

impl OpenGuard {
    pub fn open(gauge: &'static Gauge) -> OpenGuard {
        gauge.inc();
        OpenGuard(gauge)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_component_renders_only_its_own_families() {
        let m = get();
        m.syncer
            .queue_depth
            .get_or_create(&ControllerLabel { controller: "Pod" })
            .set(3);
        let serve = m.render(Component::Serve);
        assert!(serve.contains("vkube_syncer_queue_depth{controller=\"Pod\"} 3"));
        assert!(serve.contains("process_resident_memory_bytes"));
        assert!(!serve.contains("vkube_manager_"));
        let manager = m.render(Component::Manager);
        assert!(manager.contains("vkube_manager_leader"));
        assert!(!manager.contains("vkube_syncer_"));
        assert!(manager.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn tenant_usage_is_published_per_tenant_and_dropped_when_no_longer_metered() {
        // A registry of its own: the global one is shared with the other tests.
        let usage = TenantUsage::default();
        let mut registry = Registry::default();
        let t = registry.sub_registry_with_prefix("vkube_manager_tenant");
        for (name, help, family) in usage.families() {
            t.register(name, help, family.clone());
        }
        let render = |r: &Registry| {
            let mut out = String::new();
            let _ = prometheus_client::encoding::text::encode(&mut out, r);
            out
        };
        let sample = crate::manager::usage::Sample {
            pods: 3,
            cpu_requested_milli: 1500,
            memory_requested_bytes: 512 * 1024 * 1024,
            cpu_used_milli: None,
            memory_used_bytes: Some(1000),
            storage_bytes: 0,
        };
        let totals = crate::api::Usage {
            pod_seconds: 90,
            cpu_requested_seconds: 45.0,
            ..Default::default()
        };
        usage.record("alice", &sample, &totals);
        usage.record("bob", &sample, &totals);
        let text = render(&registry);
        assert!(
            text.contains("vkube_manager_tenant_pods{tenant=\"alice\"} 3.0"),
            "{text}"
        );
        assert!(
            text.contains("vkube_manager_tenant_cpu_requested_cores{tenant=\"bob\"} 1.5"),
            "{text}"
        );
        assert!(
            text.contains("vkube_manager_tenant_pod_seconds{tenant=\"alice\"} 90.0"),
            "{text}"
        );
        assert!(
            text.contains("vkube_manager_tenant_memory_used_bytes{tenant=\"alice\"} 1000.0"),
            "{text}"
        );
        // Not measured: no series, rather than a zero that reads as idle.
        assert!(
            !text.contains("vkube_manager_tenant_cpu_used_cores{"),
            "{text}"
        );

        usage.retain(&["bob".to_string()].into());
        let text = render(&registry);
        assert!(!text.contains("tenant=\"alice\""), "{text}");
        assert!(
            text.contains("vkube_manager_tenant_pods{tenant=\"bob\"} 3.0"),
            "{text}"
        );
        usage.retain(&Default::default());
        assert!(!render(&registry).contains("tenant=\""));
    }
}

/// The objects one syncer controller was triggered for and has not started reconciling: the
/// controller's queue as its depth gauge shows it (a trigger for an object already waiting adds
/// nothing, as in the controller itself).
pub struct Queue {
    waiting: std::sync::Mutex<std::collections::HashSet<String>>,
    depth: Gauge,
}

impl Queue {
    pub fn new(controller: &'static str) -> Queue {
        Queue {
            waiting: Default::default(),
            depth: get()
                .syncer
                .queue_depth
                .get_or_create(&ControllerLabel { controller })
                .clone(),
        }
    }

    pub fn add(&self, key: &str) {
        if let Ok(mut w) = self.waiting.lock()
            && w.insert(key.to_string())
        {
            self.depth.set(w.len() as i64);
        }
    }

    pub fn remove(&self, key: &str) {
        if let Ok(mut w) = self.waiting.lock()
            && w.remove(key)
        {
            self.depth.set(w.len() as i64);
        }
    }
}

/// Runs one syncer reconcile, recording its duration and, if it fails, why.
pub async fn timed_reconcile<F>(
    controller: &'static str,
    run: F,
) -> Result<kube::runtime::controller::Action, crate::syncer::SyncError>
where
    F: std::future::Future<
            Output = Result<kube::runtime::controller::Action, crate::syncer::SyncError>,
        >,
{
    let started = std::time::Instant::now();
    let result = run.await;
    let m = &get().syncer;
    m.reconcile_duration
        .get_or_create(&ControllerLabel { controller })
        .observe(seconds(started.elapsed()));
    if let Err(e) = &result {
        let reason = match e {
            crate::syncer::SyncError::Virtual(k) | crate::syncer::SyncError::Host(k) => {
                labels::kube_reason(k)
            }
            crate::syncer::SyncError::NotReady => "NotReady",
        };
        m.reconcile_errors
            .get_or_create(&ErrorLabels {
                controller,
                api: e.kind(),
                reason,
            })
            .inc();
    }
    result
}

/// Counts a host object the syncer created or updated.
pub fn synced(kind: &'static str, created: bool) {
    get()
        .syncer
        .objects_synced
        .get_or_create(&SyncedLabels {
            kind,
            op: if created { "created" } else { "updated" },
        })
        .inc();
}

/// The kind of `K` as a label value (every built-in kind is a static name).
pub fn kind_of<K: kube::Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()) {
        std::borrow::Cow::Borrowed(k) => k,
        std::borrow::Cow::Owned(_) => "other",
    }
}

/// When a change was first seen for each key and not yet acted on: the start of a latency that
/// ends in another task (a host status change until the virtual status is written).
#[derive(Default)]
pub struct FirstSeen(std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>);

impl FirstSeen {
    pub fn seen(&self, key: String) {
        if let Ok(mut m) = self.0.lock() {
            m.entry(key).or_insert_with(std::time::Instant::now);
        }
    }

    /// Forgets `key`, returning how long ago it was first seen.
    pub fn take(&self, key: &str) -> Option<Duration> {
        self.0.lock().ok()?.remove(key).map(|t| t.elapsed())
    }
}
