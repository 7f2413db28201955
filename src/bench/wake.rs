//! `vkube bench wake`: what sleep saves and what waking costs, on a real node, with the platform
//! installed (hack/bench-wake.sh sets it up), against baselines measured in the same run:
//!
//! - wake: a tenant asleep (`vkube sleep`), then one request through its Service with a fresh
//!   client (as a new `kubectl get pods` makes): the time until that request is answered;
//! - baseline: the same tenant paused, then resumed: the time from the resume until a request
//!   is answered (polled every 100 ms), and until the manager reports Ready (what `vkube
//!   resume` waits for); wake and resume runs alternate, so both see the same machine;
//! - the footprint of the tenant asleep (its pods on the node, their working set, processes
//!   left in their cgroups) against the same tenant awake and idle;
//! - density: how many tenants fit, from those per-tenant costs (node memory over an idle
//!   tenant's working set and over its memory request; sleeping tenants cost no node memory,
//!   only host objects and the manager's waker, measured here too).

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, LimitRange, Node, PersistentVolumeClaim, Pod, ResourceQuota, Secret,
    Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde::Serialize;

use super::stats::{self, Summary};
use crate::api::{Phase, SLEEP_REQUESTED_ANNOTATION, VirtualCluster};

#[derive(Debug, thiserror::Error)]
pub enum WakeBenchError {
    #[error("host API: {0}")]
    Host(#[from] kube::Error),
    #[error("{0}")]
    Tenant(String),
    #[error("timed out after {0:?}: {1}")]
    Timeout(Duration, String),
}

#[derive(Debug, Clone)]
pub struct WakeBench {
    /// The VirtualCluster (created by the platform, on the real node).
    pub name: String,
    pub runs: usize,
    /// The real node (its kubelet's stats).
    pub node: String,
    /// The manager's namespace (its pod's memory).
    pub manager_namespace: String,
    /// The waker's port range size (how many clusters may sleep at once).
    pub waker_ports: usize,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Footprint {
    /// Pods of the tenant's namespace the kubelet reports.
    pub pods: usize,
    pub working_set_bytes: u64,
    /// Processes in the cgroups of the tenant's pods (as they were awake).
    pub processes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostObjects {
    pub count: usize,
    /// Their JSON size: what the host API server and etcd keep for the tenant (etcd stores
    /// protobuf, a little less).
    pub bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Density {
    pub node_allocatable_memory_bytes: u64,
    pub machine_memory_bytes: u64,
    pub control_plane_memory_request_bytes: u64,
    /// Idle tenants the node's allocatable memory admits by their control plane's request
    /// (the scheduler's view), and by their measured working set.
    pub idle_by_request: u64,
    pub idle_by_working_set: u64,
    /// Sleeping tenants: no node memory; bounded by the waker's ports and by what each costs
    /// the host API (objects) and the manager (its waker), measured.
    pub sleeping_by_waker_ports: u64,
    pub sleeping_by_machine_memory: u64,
    pub sleeping_cost_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub runs: usize,
    /// Asleep → first request answered.
    pub wake_first_request: Summary,
    /// Baseline: resume → first request answered (polled every 100 ms).
    pub resume_first_request: Summary,
    /// Baseline: resume → the manager reports Ready.
    pub resume_ready: Summary,
    pub wake_vs_resume_p50: f64,
    pub wake_vs_resume_p99: f64,
    pub wakes_over_target: usize,
    pub asleep: Footprint,
    pub idle: Footprint,
    pub host_objects: HostObjects,
    pub manager_rss_awake_bytes: u64,
    pub manager_rss_asleep_bytes: u64,
    pub density: Density,
}

async fn vc(api: &Api<VirtualCluster>, name: &str) -> Result<VirtualCluster, WakeBenchError> {
    Ok(api.get(name).await?)
}

fn phase_message(vc: &VirtualCluster) -> (Option<Phase>, String) {
    let s = vc.status.clone().unwrap_or_default();
    (s.phase, s.message.unwrap_or_default())
}

async fn wait_for<F>(
    api: &Api<VirtualCluster>,
    name: &str,
    what: &str,
    timeout: Duration,
    done: F,
) -> Result<(), WakeBenchError>
where
    F: Fn(Option<Phase>, &str) -> bool,
{
    let deadline = Instant::now() + timeout;
    loop {
        let (phase, message) = phase_message(&vc(api, name).await?);
        if done(phase, &message) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(WakeBenchError::Timeout(
                timeout,
                format!("{what}; it is {phase:?}: {message}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One request as a new `kubectl get pods` makes it: a fresh client (new connection).
async fn request(kubeconfig: &str, limit: Duration) -> Result<(), String> {
    let client = crate::kubeconfig::client_from_yaml(kubeconfig)
        .await
        .map_err(|e| e.to_string())?;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    match tokio::time::timeout(limit, pods.list(&ListParams::default().limit(1))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

async fn tenant_kubeconfig(host: &kube::Client, name: &str) -> Result<String, WakeBenchError> {
    let ns = crate::host::default_namespace(name);
    let secret = Api::<Secret>::namespaced(host.clone(), &ns)
        .get(&crate::host::kubeconfig_secret_name(name))
        .await?;
    secret
        .data
        .and_then(|mut d| d.remove(crate::host::KUBECONFIG_KEY))
        .and_then(|b| String::from_utf8(b.0).ok())
        .ok_or_else(|| WakeBenchError::Tenant("the kubeconfig Secret has no config".into()))
}

/// Pods, working set (kubelet summary) of a namespace on a node.
async fn kubelet_namespace(
    host: &kube::Client,
    node: &str,
    ns: &str,
) -> Result<(usize, u64), WakeBenchError> {
    let req = http::Request::get(format!("/api/v1/nodes/{node}/proxy/stats/summary"))
        .body(Vec::new())
        .map_err(|e| WakeBenchError::Tenant(e.to_string()))?;
    let text = host.request_text(req).await?;
    let summary: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| WakeBenchError::Tenant(e.to_string()))?;
    let sizes: Vec<u64> = summary["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["podRef"]["namespace"] == ns)
        .map(|p| p["memory"]["workingSetBytes"].as_u64().unwrap_or(0))
        .collect();
    Ok((sizes.len(), sizes.iter().sum()))
}

/// Processes (pid, resident bytes) whose cgroup belongs to one of these pods.
pub fn processes_of_pods(uids: &[String]) -> Vec<(u32, u64)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cgroup) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        if uids
            .iter()
            .any(|u| cgroup.contains(u.as_str()) || cgroup.contains(&u.replace('-', "_")))
        {
            let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|kib| kib.parse::<u64>().ok())
                })
                .unwrap_or(0);
            found.push((pid, rss * 1024));
        }
    }
    found
}

async fn pod_uids(host: &kube::Client, ns: &str, selector: Option<&str>) -> Vec<String> {
    let mut lp = ListParams::default();
    if let Some(s) = selector {
        lp = lp.labels(s);
    }
    Api::<Pod>::namespaced(host.clone(), ns)
        .list(&lp)
        .await
        .map(|l| l.items.into_iter().filter_map(|p| p.metadata.uid).collect())
        .unwrap_or_default()
}

async fn host_objects(host: &kube::Client, ns: &str) -> HostObjects {
    async fn add<K>(host: &kube::Client, ns: &str, total: &mut HostObjects)
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + Serialize
            + std::fmt::Debug,
    {
        if let Ok(list) = Api::<K>::namespaced(host.clone(), ns)
            .list(&ListParams::default())
            .await
        {
            for o in list.items {
                total.count += 1;
                total.bytes += serde_json::to_vec(&o).map(|v| v.len()).unwrap_or(0);
            }
        }
    }
    let mut t = HostObjects { count: 0, bytes: 0 };
    add::<Secret>(host, ns, &mut t).await;
    add::<ConfigMap>(host, ns, &mut t).await;
    add::<Service>(host, ns, &mut t).await;
    add::<Endpoints>(host, ns, &mut t).await;
    add::<EndpointSlice>(host, ns, &mut t).await;
    add::<PersistentVolumeClaim>(host, ns, &mut t).await;
    add::<StatefulSet>(host, ns, &mut t).await;
    add::<ServiceAccount>(host, ns, &mut t).await;
    add::<Role>(host, ns, &mut t).await;
    add::<RoleBinding>(host, ns, &mut t).await;
    add::<ResourceQuota>(host, ns, &mut t).await;
    add::<LimitRange>(host, ns, &mut t).await;
    add::<NetworkPolicy>(host, ns, &mut t).await;
    add::<Lease>(host, ns, &mut t).await;
    // The namespace itself.
    t.count += 1;
    t.bytes += 1024;
    t
}

async fn manager_rss(host: &kube::Client, ns: &str) -> u64 {
    let uids = pod_uids(host, ns, Some("app.kubernetes.io/component=manager")).await;
    processes_of_pods(&uids).iter().map(|(_, rss)| rss).sum()
}

async fn put_to_sleep(
    host: &kube::Client,
    api: &Api<VirtualCluster>,
    b: &WakeBench,
) -> Result<(), WakeBenchError> {
    let patch = serde_json::json!({"metadata": {"annotations": {
        SLEEP_REQUESTED_ANNOTATION: k8s_openapi::jiff::Timestamp::now().to_string()}}});
    api.patch(&b.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_for(api, &b.name, "asleep", b.timeout, |p, m| {
        p == Some(Phase::Sleeping) && m.starts_with(crate::manager::ASLEEP)
    })
    .await?;
    // kube-proxy has had the waker's endpoint since the fall asleep began; give the last pod's
    // deletion a moment to settle, as an idle cluster would have had.
    let ns = crate::host::default_namespace(&b.name);
    let deadline = Instant::now() + b.timeout;
    while !Api::<Pod>::namespaced(host.clone(), &ns)
        .list(&ListParams::default())
        .await?
        .items
        .is_empty()
    {
        if Instant::now() > deadline {
            return Err(WakeBenchError::Timeout(b.timeout, "host pods gone".into()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

async fn set_paused(
    api: &Api<VirtualCluster>,
    name: &str,
    paused: bool,
) -> Result<(), WakeBenchError> {
    let patch = serde_json::json!({"spec": {"paused": paused}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// The target for a wake: p50 3 s, p99 6 s (a TLS handshake is given up after 10 s).
pub const WAKE_TARGET_P99: Duration = Duration::from_secs(6);

pub async fn run(host: kube::Client, b: &WakeBench) -> Result<Report, WakeBenchError> {
    let api: Api<VirtualCluster> = Api::all(host.clone());
    let ns = crate::host::default_namespace(&b.name);
    let kubeconfig = tenant_kubeconfig(&host, &b.name).await?;
    request(&kubeconfig, Duration::from_secs(10))
        .await
        .map_err(|e| WakeBenchError::Tenant(format!("the tenant does not answer: {e}")))?;

    // Awake and idle first: its footprint, and the manager's.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let awake_uids = pod_uids(&host, &ns, None).await;
    let (idle_pods, idle_bytes) = kubelet_namespace(&host, &b.node, &ns).await?;
    let idle = Footprint {
        pods: idle_pods,
        working_set_bytes: idle_bytes,
        processes: processes_of_pods(&awake_uids).len(),
    };
    let manager_rss_awake_bytes = manager_rss(&host, &b.manager_namespace).await;

    let mut wake_ms = Vec::new();
    let mut resume_first_ms = Vec::new();
    let mut resume_ready_ms = Vec::new();
    let mut asleep = None;
    let mut manager_rss_asleep_bytes = 0;
    for run in 0..b.runs {
        // Wake: asleep, then one request with a fresh client.
        let uids = pod_uids(&host, &ns, None).await;
        put_to_sleep(&host, &api, b).await?;
        if asleep.is_none() {
            let (pods, bytes) = kubelet_namespace(&host, &b.node, &ns).await?;
            asleep = Some(Footprint {
                pods,
                working_set_bytes: bytes,
                processes: processes_of_pods(&uids).len(),
            });
            manager_rss_asleep_bytes = manager_rss(&host, &b.manager_namespace).await;
        }
        let started = Instant::now();
        request(&kubeconfig, Duration::from_secs(60))
            .await
            .map_err(|e| WakeBenchError::Tenant(format!("the waking request failed: {e}")))?;
        let wake = started.elapsed();
        wake_ms.push(wake.as_secs_f64() * 1000.0);
        wait_for(&api, &b.name, "Ready after the wake", b.timeout, |p, _| {
            p == Some(Phase::Ready)
        })
        .await?;

        // Baseline: paused, resumed; the first request answered, and Ready.
        set_paused(&api, &b.name, true).await?;
        wait_for(&api, &b.name, "paused", b.timeout, |p, m| {
            p == Some(Phase::Paused) && m == "paused by the owner"
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        set_paused(&api, &b.name, false).await?;
        let started = Instant::now();
        let (mut first, mut ready) = (None, None);
        while first.is_none() || ready.is_none() {
            if started.elapsed() > b.timeout {
                return Err(WakeBenchError::Timeout(b.timeout, "resumed".into()));
            }
            if ready.is_none() && phase_message(&vc(&api, &b.name).await?).0 == Some(Phase::Ready) {
                ready = Some(started.elapsed());
            }
            if first.is_none() && request(&kubeconfig, Duration::from_secs(1)).await.is_ok() {
                first = Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (first, ready) = (first.unwrap_or_default(), ready.unwrap_or_default());
        resume_first_ms.push(first.as_secs_f64() * 1000.0);
        resume_ready_ms.push(ready.as_secs_f64() * 1000.0);
        tracing::info!(
            run,
            wake_ms = wake.as_millis() as u64,
            resume_first_ms = first.as_millis() as u64,
            resume_ready_ms = ready.as_millis() as u64,
            "run done"
        );
        eprintln!(
            "run {:>2}: wake {:>6.0} ms   resume: first answer {:>6.0} ms, Ready {:>6.0} ms",
            run + 1,
            wake.as_secs_f64() * 1000.0,
            first.as_secs_f64() * 1000.0,
            ready.as_secs_f64() * 1000.0
        );
    }
    let wake_first_request = stats::summarize(&wake_ms);
    let resume_first_request = stats::summarize(&resume_first_ms);
    let resume_ready = stats::summarize(&resume_ready_ms);
    let host_objects = host_objects(&host, &ns).await;

    // Density from the per-tenant costs measured above.
    let node: Node = Api::<Node>::all(host.clone()).get(&b.node).await?;
    let quantity = |q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
        q.and_then(|q| {
            crate::manager::policy::parse_quantity(
                &q.0,
                crate::manager::policy::QuantityKind::Bytes,
            )
            .ok()
        })
        .map(|v| v as u64)
        .unwrap_or(0)
    };
    let allocatable = quantity(
        node.status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get("memory")),
    );
    let sts: StatefulSet = Api::namespaced(host.clone(), &ns).get("vkube").await?;
    let request_bytes = quantity(
        sts.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.first())
            .and_then(|c| c.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("memory")),
    );
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    let waker_cost = manager_rss_asleep_bytes.saturating_sub(manager_rss_awake_bytes);
    let sleeping_cost = host_objects.bytes as u64 + waker_cost;
    let density = Density {
        node_allocatable_memory_bytes: allocatable,
        machine_memory_bytes: machine,
        control_plane_memory_request_bytes: request_bytes,
        idle_by_request: allocatable.checked_div(request_bytes).unwrap_or(0),
        idle_by_working_set: allocatable.checked_div(idle.working_set_bytes).unwrap_or(0),
        sleeping_by_waker_ports: b.waker_ports as u64,
        sleeping_by_machine_memory: machine.checked_div(sleeping_cost).unwrap_or(0),
        sleeping_cost_bytes: sleeping_cost,
    };
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            (a / b * 100.0).round() / 100.0
        } else {
            f64::NAN
        }
    };
    Ok(Report {
        runs: b.runs,
        wake_vs_resume_p50: ratio(wake_first_request.p50_ms, resume_first_request.p50_ms),
        wake_vs_resume_p99: ratio(wake_first_request.p99_ms, resume_first_request.p99_ms),
        wakes_over_target: wake_ms
            .iter()
            .filter(|ms| **ms > WAKE_TARGET_P99.as_secs_f64() * 1000.0)
            .count(),
        wake_first_request,
        resume_first_request,
        resume_ready,
        asleep: asleep.unwrap_or(Footprint {
            pods: 0,
            working_set_bytes: 0,
            processes: 0,
        }),
        idle,
        host_objects,
        manager_rss_awake_bytes,
        manager_rss_asleep_bytes,
        density,
    })
}

pub fn table(r: &Report) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut rows: Vec<String> = Vec::new();
    let mut row = |line: String| rows.push(line);
    row(format!(
        "wake (asleep -> first request answered), {} runs: p50 {:.0} ms, p99 {:.0} ms",
        r.runs, r.wake_first_request.p50_ms, r.wake_first_request.p99_ms
    ));
    row(format!(
        "baseline resume -> first request answered:       p50 {:.0} ms, p99 {:.0} ms (Ready: p50 {:.0} ms, p99 {:.0} ms)",
        r.resume_first_request.p50_ms,
        r.resume_first_request.p99_ms,
        r.resume_ready.p50_ms,
        r.resume_ready.p99_ms
    ));
    row(format!(
        "wake / resume: p50 {:.2}, p99 {:.2}",
        r.wake_vs_resume_p50, r.wake_vs_resume_p99
    ));
    row(format!(
        "asleep: {} pods, {:.1} MiB, {} processes   idle awake: {} pods, {:.1} MiB, {} processes",
        r.asleep.pods,
        mib(r.asleep.working_set_bytes),
        r.asleep.processes,
        r.idle.pods,
        mib(r.idle.working_set_bytes),
        r.idle.processes
    ));
    row(format!(
        "host objects kept: {} ({:.1} KiB); manager RSS awake {:.1} MiB, asleep {:.1} MiB",
        r.host_objects.count,
        r.host_objects.bytes as f64 / 1024.0,
        mib(r.manager_rss_awake_bytes),
        mib(r.manager_rss_asleep_bytes)
    ));
    row(format!(
        "density: idle {} by request / {} by working set (node allocatable {:.0} MiB); sleeping {} (waker ports) / {} (machine memory at {:.1} KiB each)",
        r.density.idle_by_request,
        r.density.idle_by_working_set,
        mib(r.density.node_allocatable_memory_bytes),
        r.density.sleeping_by_waker_ports,
        r.density.sleeping_by_machine_memory,
        r.density.sleeping_cost_bytes as f64 / 1024.0
    ));
    rows.into_iter().map(|l| l + "\n").collect()
}
