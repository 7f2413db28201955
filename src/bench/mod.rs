//! `vkube bench sync`: how fast and how cheaply the syncer moves pods, against a baseline
//! measured in the same run — the same pods created directly in the host API with the same
//! client concurrency — in the situations users meet (see [`Scenario`]): a burst, the same burst
//! in an already-used tenant, one create at a time, a steady load at a fraction of the host's
//! capacity, and a Deployment.
//!
//! Latencies are taken from watch events: "on host" is when a watch on the host namespace first
//! reports the translated pod, "running" when a watch on the virtual cluster reports the virtual
//! pod Running. Throughput is pods divided by the time from the first create to the last pod
//! seen, for the syncer and the baseline alike.

pub mod apicount;
pub mod procs;
pub mod proxy;
pub mod stats;
pub mod wake;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde::Serialize;

use crate::translate::{MANAGED_BY, VIRTUAL_NAME, VIRTUAL_NAMESPACE};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("virtual API: {0}")]
    Virtual(#[source] kube::Error),
    #[error("host API: {0}")]
    Host(#[source] kube::Error),
    #[error("timed out after {0:?} with {1} of {2} pods done")]
    Timeout(Duration, usize, usize),
}

/// The situations a user meets, each measured through the syncer and directly on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// `pods` pods with `concurrency` creates in flight (or paced at `rate`).
    Burst,
    /// The same burst again while the first burst's pods still exist on both sides: an
    /// already-used tenant rather than a fresh one.
    Used,
    /// One create in flight: far below capacity on the host, the latency a single user sees.
    One,
    /// Paced at a fraction of the host's burst throughput measured in this run.
    Steady,
    /// A Deployment of `replicas` pods: how long after its last pod runs it reports Ready.
    Deployment,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Burst => "burst",
            Scenario::Used => "used",
            Scenario::One => "one",
            Scenario::Steady => "steady",
            Scenario::Deployment => "deployment",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SyncBench {
    pub pods: usize,
    pub concurrency: usize,
    /// Creates per second for the burst scenario; `None` = as fast as the concurrency allows.
    pub rate: Option<f64>,
    pub scenarios: Vec<Scenario>,
    /// Pods of the one-in-flight scenario.
    pub one_pods: usize,
    /// The steady scenario's rate as a fraction of the host's burst throughput.
    pub steady_fraction: f64,
    pub deployment_replicas: usize,
    /// Virtual cluster name (for the host label selector) and its host namespace.
    pub vcluster: String,
    pub host_namespace: String,
    /// Pid of `vkube serve`, for its CPU time and peak memory.
    pub serve_pid: Option<u32>,
    /// A string in the command line of every host control-plane process (its directory), to
    /// account their CPU time.
    pub host_marker: Option<String>,
    pub timeout: Duration,
    pub skip_baseline: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub pods: usize,
    pub seconds: f64,
    pub pods_per_second: f64,
    pub create_call: stats::Summary,
    /// Virtual create → host pod seen (syncer) or create → pod seen (baseline).
    pub to_host: stats::Summary,
    /// Syncer phase: virtual create → the virtual API's watch reports it (the part of `to_host`
    /// before the syncer can act).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_virtual_watch: Option<stats::Summary>,
    /// Virtual create → virtual pod Running (syncer) or create → pod Running (baseline).
    pub to_running: stats::Summary,
    /// CPU seconds per component from the first create until every pod ran.
    pub cpu_seconds: Vec<ComponentCpu>,
    /// Writes per pod and pod watch events per pod, per API server, from their `/metrics`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub host_api_per_pod: Vec<apicount::PerPod>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub virtual_api_per_pod: Vec<apicount::PerPod>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentCpu {
    pub component: String,
    pub seconds: f64,
}

fn cpu_between(before: &procs::Snapshot, after: &procs::Snapshot) -> Vec<ComponentCpu> {
    procs::spent(before, after)
        .into_iter()
        .map(|(component, seconds)| ComponentCpu { component, seconds })
        .collect()
}

/// A Deployment scenario: create → all its pods Running (host pods, for the syncer) and
/// create → the Deployment reports every replica ready, in the cluster it was created in.
#[derive(Debug, Clone, Serialize)]
pub struct DeploymentPhase {
    pub replicas: usize,
    pub to_last_pod_running_ms: f64,
    pub to_ready_ms: f64,
    /// Ready reported this long after the last pod ran.
    pub ready_after_pods_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub scenario: Scenario,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub baseline: Option<Phase>,
    pub syncer: Option<Phase>,
    /// Syncer throughput divided by baseline throughput.
    pub throughput_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment_baseline: Option<DeploymentPhase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment_syncer: Option<DeploymentPhase>,
}

/// Whether each etcd syncs its writes to disk: a baseline whose etcd skips fsync while the
/// tenant's pays it compares unlike with unlike.
#[derive(Debug, Clone, Serialize)]
pub struct Fsync {
    pub host_etcd: Option<bool>,
    pub tenant_etcd: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub fsync: Fsync,
    pub scenarios: Vec<ScenarioReport>,
    pub serve_cpu_seconds: Option<f64>,
    pub serve_peak_rss_mib: Option<f64>,
    pub serve_rss_mib_after: Option<f64>,
}

fn pod(name: &str, labels: Option<(&str, &str)>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: labels.map(|(k, v)| [(k.to_string(), v.to_string())].into()),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::PodSpec {
            containers: vec![k8s_openapi::api::core::v1::Container {
                name: "main".into(),
                image: Some("registry.local/bench:1".into()),
                ..Default::default()
            }],
            automount_service_account_token: Some(false),
            ..Default::default()
        }),
        status: None,
    }
}

#[derive(Default)]
struct Marks {
    sent: HashMap<String, Instant>,
    created: HashMap<String, f64>,
    seen: HashMap<String, Instant>,
    /// Syncer phase: when the virtual API's watch reported the new pod (what the syncer waits
    /// for before it can act).
    in_virtual_watch: HashMap<String, Instant>,
    running: HashMap<String, Instant>,
    /// Running as the host reports it (the Deployment scenario's syncer side).
    running_on_host: HashMap<String, Instant>,
}

type SharedMarks = Arc<Mutex<Marks>>;

fn running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

#[derive(Clone, Copy)]
enum Side {
    Host,
    Virtual,
}

/// What a watch records: when a pod is first seen on its side, and (optionally) Running.
#[derive(Clone, Copy)]
enum Record {
    Seen,
    SeenAndRunning,
    HostRunning,
}

/// Watches `api` and records, per logical name, when it was first seen and first Running.
fn track(
    api: Api<Pod>,
    wc: watcher::Config,
    marks: SharedMarks,
    name_of: fn(&Pod) -> Option<String>,
    seen_on: Side,
    record: Record,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut stream = watcher(api, wc).default_backoff().applied_objects().boxed();
        while let Some(ev) = stream.next().await {
            let Ok(p) = ev else { continue };
            let Some(name) = name_of(&p) else { continue };
            let now = Instant::now();
            if let Ok(mut m) = marks.lock() {
                let seen = match seen_on {
                    Side::Host => &mut m.seen,
                    Side::Virtual => &mut m.in_virtual_watch,
                };
                seen.entry(name.clone()).or_insert(now);
                match record {
                    Record::SeenAndRunning if running(&p) => {
                        m.running.entry(name).or_insert(now);
                    }
                    Record::HostRunning if running(&p) => {
                        m.running_on_host.entry(name).or_insert(now);
                    }
                    _ => {}
                }
            }
        }
    })
}

async fn create_all(
    api: &Api<Pod>,
    names: &[String],
    labels: Option<(&str, &str)>,
    concurrency: usize,
    rate: Option<f64>,
    marks: &SharedMarks,
) -> Result<(), kube::Error> {
    let started = Instant::now();
    let results: Vec<Result<(), kube::Error>> = futures::stream::iter(names.iter().enumerate())
        .map(|(i, name)| {
            let api = api.clone();
            let marks = marks.clone();
            let body = pod(name, labels);
            async move {
                if let Some(r) = rate {
                    let due = started + Duration::from_secs_f64(i as f64 / r);
                    tokio::time::sleep_until(due.into()).await;
                }
                let t0 = Instant::now();
                if let Ok(mut m) = marks.lock() {
                    m.sent.insert(name.clone(), t0);
                }
                api.create(&PostParams::default(), &body).await?;
                if let Ok(mut m) = marks.lock() {
                    m.created
                        .insert(name.clone(), t0.elapsed().as_secs_f64() * 1e3);
                }
                Ok(())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

async fn wait_done(marks: &SharedMarks, n: usize, timeout: Duration) -> Result<(), BenchError> {
    let deadline = Instant::now() + timeout;
    loop {
        let (seen, run) = marks
            .lock()
            .map(|m| (m.seen.len(), m.running.len()))
            .unwrap_or((0, 0));
        if seen >= n && run >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout(timeout, seen.min(run), n));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn empty_phase(n: usize) -> Phase {
    Phase {
        pods: n,
        seconds: f64::NAN,
        pods_per_second: f64::NAN,
        create_call: stats::summarize(&[]),
        to_host: stats::summarize(&[]),
        to_virtual_watch: None,
        to_running: stats::summarize(&[]),
        cpu_seconds: Vec::new(),
        host_api_per_pod: Vec::new(),
        virtual_api_per_pod: Vec::new(),
    }
}

fn phase(marks: &SharedMarks, n: usize) -> Phase {
    let m = marks.lock().map(|m| {
        let first = m.sent.values().min().copied();
        let last = m.seen.values().chain(m.running.values()).max().copied();
        let lat = |to: &HashMap<String, Instant>| -> Vec<f64> {
            m.sent
                .iter()
                .filter_map(|(k, t0)| {
                    to.get(k)
                        .map(|t| t.saturating_duration_since(*t0).as_secs_f64() * 1e3)
                })
                .collect()
        };
        let seconds = match (first, last) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => f64::NAN,
        };
        // Throughput counts until the last pod reached the host, like the baseline.
        let last_seen = m.seen.values().max().copied();
        let to_host_seconds = match (first, last_seen) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => f64::NAN,
        };
        Phase {
            seconds: (seconds * 1000.0).round() / 1000.0,
            pods_per_second: ((n as f64 / to_host_seconds) * 10.0).round() / 10.0,
            create_call: stats::summarize(&m.created.values().copied().collect::<Vec<_>>()),
            to_host: stats::summarize(&lat(&m.seen)),
            to_virtual_watch: (!m.in_virtual_watch.is_empty())
                .then(|| stats::summarize(&lat(&m.in_virtual_watch))),
            to_running: stats::summarize(&lat(&m.running)),
            ..empty_phase(n)
        }
    });
    m.unwrap_or_else(|_| empty_phase(n))
}

/// CPU seconds (user + system) and peak/current RSS (MiB) of a process, from /proc.
pub fn process_usage(pid: u32) -> Option<(f64, f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14th and 15th overall.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<f64> {
        status
            .lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse::<f64>()
            .ok()
    };
    Some((
        (utime + stime) / ticks,
        kib("VmHWM:")? / 1024.0,
        kib("VmRSS:")? / 1024.0,
    ))
}

fn host_origin(p: &Pod) -> Option<String> {
    p.metadata.annotations.as_ref()?.get(VIRTUAL_NAME).cloned()
}

fn own_name(p: &Pod) -> Option<String> {
    p.metadata.name.clone()
}

const BENCH_NAMESPACE: &str = "vkube-bench";
const BASELINE_LABEL: &str = "vkube.dev/bench";
const DEPLOYMENT: &str = "vkube-bench";

fn scope(bench: &SyncBench) -> procs::Scope {
    procs::Scope {
        serve_pid: bench.serve_pid,
        host_marker: bench.host_marker.clone(),
    }
}

/// The namespace of a scenario: in the virtual cluster for the syncer, with `-baseline` on the
/// host for the baseline.
fn namespace(s: Scenario, baseline: bool) -> String {
    if baseline {
        format!("{BENCH_NAMESPACE}-{}-baseline", s.name())
    } else {
        format!("{BENCH_NAMESPACE}-{}", s.name())
    }
}

fn names(s: Scenario, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{}-{i}", s.name())).collect()
}

/// Creates the namespace and waits for its default ServiceAccount (pods are refused until then).
async fn ensure_namespace(client: &kube::Client, name: &str) -> Result<(), kube::Error> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e),
    }
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), name);
    for _ in 0..300 {
        if let Ok(Some(_)) = sas.get_opt("default").await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Deletes `namespace` through `client` and waits until `pods` lists none (at most 5 minutes),
/// so the next phase does not compete with the clean-up.
async fn delete_and_wait(client: &kube::Client, namespace: &str, pods: Api<Pod>, lp: ListParams) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(namespace, &DeleteParams::default()).await;
    for _ in 0..1500 {
        match pods.list(&lp.clone().limit(1)).await {
            Ok(l) if l.items.is_empty() => break,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    // The namespace itself (finalizers, the virtual side's own clean-up) goes on its own.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

fn host_selector(bench: &SyncBench, virtual_namespace: &str) -> String {
    format!(
        "{MANAGED_BY}={},{VIRTUAL_NAMESPACE}={virtual_namespace}",
        bench.vcluster
    )
}

async fn clean_baseline(host: &kube::Client, s: Scenario) {
    let ns = namespace(s, true);
    delete_and_wait(
        host,
        &ns,
        Api::namespaced(host.clone(), &ns),
        ListParams::default(),
    )
    .await;
}

async fn clean_syncer(virt: &kube::Client, host: &kube::Client, bench: &SyncBench, s: Scenario) {
    let ns = namespace(s, false);
    delete_and_wait(
        virt,
        &ns,
        Api::namespaced(host.clone(), &bench.host_namespace),
        ListParams::default().labels(&host_selector(bench, &ns)),
    )
    .await;
}

/// Creates `n` pods through `api` while `watches` record them into `marks`, and measures the
/// phase: CPU per component, and the requests of the host's API server (and of the virtual
/// one, when given).
#[allow(clippy::too_many_arguments)]
async fn measure(
    api: &Api<Pod>,
    labels: Option<(&str, &str)>,
    bench: &SyncBench,
    names: &[String],
    concurrency: usize,
    rate: Option<f64>,
    marks: SharedMarks,
    watches: Vec<tokio::task::JoinHandle<()>>,
    host: &kube::Client,
    virt: Option<&kube::Client>,
    api_error: fn(kube::Error) -> BenchError,
) -> Result<Phase, BenchError> {
    let n = names.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let scope = scope(bench);
    let scrape_virt = || async {
        match virt {
            Some(v) => apicount::scrape(v).await,
            None => None,
        }
    };
    let (host_before, virt_before) = (apicount::scrape(host).await, scrape_virt().await);
    let cpu_before = procs::snapshot(&scope);
    let done = match create_all(api, names, labels, concurrency, rate, &marks).await {
        Ok(()) => wait_done(&marks, n, bench.timeout).await,
        Err(e) => Err(api_error(e)),
    };
    let cpu_after = procs::snapshot(&scope);
    let (host_after, virt_after) = (apicount::scrape(host).await, scrape_virt().await);
    for w in watches {
        w.abort();
    }
    done?;
    let mut result = phase(&marks, n);
    result.cpu_seconds = cpu_between(&cpu_before, &cpu_after);
    if let (Some(b), Some(a)) = (host_before, host_after) {
        result.host_api_per_pod = apicount::per_pod(&b, &a, n);
    }
    if let (Some(b), Some(a)) = (virt_before, virt_after) {
        result.virtual_api_per_pod = apicount::per_pod(&b, &a, n);
    }
    Ok(result)
}

/// Pods created directly on the host.
async fn baseline_phase(
    host: &kube::Client,
    bench: &SyncBench,
    s: Scenario,
    n: usize,
    concurrency: usize,
    rate: Option<f64>,
) -> Result<Phase, BenchError> {
    let ns = namespace(s, true);
    ensure_namespace(host, &ns)
        .await
        .map_err(BenchError::Host)?;
    let api: Api<Pod> = Api::namespaced(host.clone(), &ns);
    let marks: SharedMarks = Default::default();
    let watch = track(
        api.clone(),
        watcher::Config::default().labels(&format!("{BASELINE_LABEL}=baseline")),
        marks.clone(),
        own_name,
        Side::Host,
        Record::SeenAndRunning,
    );
    let labels = Some((BASELINE_LABEL, "baseline"));
    measure(
        &api,
        labels,
        bench,
        &names(s, n),
        concurrency,
        rate,
        marks,
        vec![watch],
        host,
        None,
        BenchError::Host,
    )
    .await
}

/// Pods created in the virtual cluster, watched there and on the host.
async fn syncer_phase(
    virt: &kube::Client,
    host: &kube::Client,
    bench: &SyncBench,
    s: Scenario,
    n: usize,
    concurrency: usize,
    rate: Option<f64>,
) -> Result<Phase, BenchError> {
    let ns = namespace(s, false);
    ensure_namespace(virt, &ns)
        .await
        .map_err(BenchError::Virtual)?;
    let vpods: Api<Pod> = Api::namespaced(virt.clone(), &ns);
    let marks: SharedMarks = Default::default();
    let host_watch = track(
        Api::namespaced(host.clone(), &bench.host_namespace),
        watcher::Config::default().labels(&host_selector(bench, &ns)),
        marks.clone(),
        host_origin,
        Side::Host,
        Record::Seen,
    );
    let virt_watch = track(
        vpods.clone(),
        watcher::Config::default(),
        marks.clone(),
        own_name,
        Side::Virtual,
        Record::SeenAndRunning,
    );
    measure(
        &vpods,
        None,
        bench,
        &names(s, n),
        concurrency,
        rate,
        marks,
        vec![host_watch, virt_watch],
        host,
        Some(virt),
        BenchError::Virtual,
    )
    .await
}

fn deployment(replicas: usize) -> Deployment {
    let labels: std::collections::BTreeMap<String, String> =
        [("app".to_string(), DEPLOYMENT.to_string())].into();
    let mut template = pod("unused", Some(("app", DEPLOYMENT)));
    template.metadata.name = None;
    Deployment {
        metadata: ObjectMeta {
            name: Some(DEPLOYMENT.into()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas as i32),
            selector: LabelSelector {
                match_labels: Some(labels),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(template.metadata),
                spec: template.spec,
            },
            ..Default::default()
        }),
        status: None,
    }
}

fn deployment_ready(d: &Deployment, replicas: usize) -> bool {
    let Some(s) = &d.status else { return false };
    let at_least = |v: Option<i32>| v.is_some_and(|v| v as usize >= replicas);
    at_least(s.ready_replicas) && at_least(s.available_replicas) && at_least(s.updated_replicas)
}

/// A Deployment created through `deployments`; its pods are watched on the host (`pods`
/// filtered by `pods_selector`, named by `name_of`).
async fn deployment_phase(
    deployments: Api<Deployment>,
    pods: Api<Pod>,
    pods_selector: String,
    name_of: fn(&Pod) -> Option<String>,
    replicas: usize,
    timeout: Duration,
    api_error: fn(kube::Error) -> BenchError,
) -> Result<DeploymentPhase, BenchError> {
    let marks: SharedMarks = Default::default();
    let watch = track(
        pods,
        watcher::Config::default().labels(&pods_selector),
        marks.clone(),
        name_of,
        Side::Host,
        Record::HostRunning,
    );
    let ready_at: Arc<Mutex<Option<Instant>>> = Default::default();
    let ready_watch = {
        let ready_at = ready_at.clone();
        let api = deployments.clone();
        tokio::spawn(async move {
            let wc = watcher::Config::default().fields(&format!("metadata.name={DEPLOYMENT}"));
            let mut stream = watcher(api, wc).default_backoff().applied_objects().boxed();
            while let Some(ev) = stream.next().await {
                let Ok(d) = ev else { continue };
                if deployment_ready(&d, replicas)
                    && let Ok(mut r) = ready_at.lock()
                {
                    r.get_or_insert_with(Instant::now);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    let created = deployments
        .create(&PostParams::default(), &deployment(replicas))
        .await;
    let deadline = t0 + timeout;
    let mut created = created.map(|_| ()).map_err(api_error);
    let result = loop {
        if let Err(e) = std::mem::replace(&mut created, Ok(())) {
            break Err(e);
        }
        let ready = ready_at.lock().ok().and_then(|r| *r);
        let last_running = marks.lock().ok().and_then(|m| {
            (m.running_on_host.len() >= replicas)
                .then(|| m.running_on_host.values().max().copied())
                .flatten()
        });
        if let (Some(ready), Some(last)) = (ready, last_running) {
            let ms =
                |t: Instant| (t.saturating_duration_since(t0).as_secs_f64() * 1e4).round() / 10.0;
            break Ok(DeploymentPhase {
                replicas,
                to_last_pod_running_ms: ms(last),
                to_ready_ms: ms(ready),
                ready_after_pods_ms: ms(ready) - ms(last),
            });
        }
        if Instant::now() > deadline {
            let running = marks.lock().map(|m| m.running_on_host.len()).unwrap_or(0);
            break Err(BenchError::Timeout(timeout, running, replicas));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    watch.abort();
    ready_watch.abort();
    result
}

/// Runs the scenarios in a fixed order (burst, used, one, steady, deployment), each directly on
/// the host (unless skipped) and through the syncer, and returns the report.
pub async fn run(
    virt: kube::Client,
    host: kube::Client,
    bench: &SyncBench,
) -> Result<Report, BenchError> {
    let wanted = |s: Scenario| bench.scenarios.contains(&s);
    let before = bench.serve_pid.and_then(process_usage);
    let (host_etcd, tenant_etcd) = procs::etcd_fsync(&scope(bench));
    let mut reports = Vec::new();
    let mut host_burst_rate: Option<f64> = None;
    let with_baseline = !bench.skip_baseline;

    let pair = |s: Scenario, n: usize, concurrency: usize, rate: Option<f64>| {
        let (virt, host) = (virt.clone(), host.clone());
        async move {
            let baseline = if with_baseline {
                let b = baseline_phase(&host, bench, s, n, concurrency, rate).await;
                clean_baseline(&host, s).await;
                Some(b?)
            } else {
                None
            };
            let syncer = syncer_phase(&virt, &host, bench, s, n, concurrency, rate).await;
            Ok::<_, BenchError>((baseline, syncer))
        }
    };
    let report = |s: Scenario, concurrency, rate, baseline: Option<Phase>, syncer: Phase| {
        let throughput_ratio = baseline
            .as_ref()
            .map(|b| ((syncer.pods_per_second / b.pods_per_second) * 100.0).round() / 100.0);
        ScenarioReport {
            scenario: s,
            concurrency,
            rate,
            baseline,
            syncer: Some(syncer),
            throughput_ratio,
            deployment_baseline: None,
            deployment_syncer: None,
        }
    };

    if wanted(Scenario::Burst) || wanted(Scenario::Used) {
        let (baseline, syncer) =
            pair(Scenario::Burst, bench.pods, bench.concurrency, bench.rate).await?;
        let syncer = match syncer {
            Ok(s) => s,
            Err(e) => {
                clean_syncer(&virt, &host, bench, Scenario::Burst).await;
                return Err(e);
            }
        };
        if let Some(b) = &baseline {
            host_burst_rate = Some(b.pods_per_second);
        }
        if wanted(Scenario::Burst) {
            reports.push(report(
                Scenario::Burst,
                bench.concurrency,
                bench.rate,
                baseline,
                syncer,
            ));
        }
        // The burst's pods stay while the used tenant is measured.
        if wanted(Scenario::Used) {
            let used = pair(Scenario::Used, bench.pods, bench.concurrency, bench.rate).await;
            clean_syncer(&virt, &host, bench, Scenario::Used).await;
            clean_syncer(&virt, &host, bench, Scenario::Burst).await;
            let (baseline, syncer) = used?;
            reports.push(report(
                Scenario::Used,
                bench.concurrency,
                bench.rate,
                baseline,
                syncer?,
            ));
        } else {
            clean_syncer(&virt, &host, bench, Scenario::Burst).await;
        }
    }
    if wanted(Scenario::One) {
        let (baseline, syncer) = pair(Scenario::One, bench.one_pods, 1, None).await?;
        clean_syncer(&virt, &host, bench, Scenario::One).await;
        reports.push(report(Scenario::One, 1, None, baseline, syncer?));
    }
    if wanted(Scenario::Steady) {
        let rate = host_burst_rate
            .map(|r| (r * bench.steady_fraction * 10.0).round() / 10.0)
            .or(bench.rate);
        if let Some(rate) = rate.filter(|r| r.is_finite() && *r > 0.0) {
            let (baseline, syncer) =
                pair(Scenario::Steady, bench.pods, bench.concurrency, Some(rate)).await?;
            clean_syncer(&virt, &host, bench, Scenario::Steady).await;
            reports.push(report(
                Scenario::Steady,
                bench.concurrency,
                Some(rate),
                baseline,
                syncer?,
            ));
        } else {
            tracing::warn!("steady scenario skipped: it needs the burst baseline (or --rate)");
        }
    }
    if wanted(Scenario::Deployment) {
        let s = Scenario::Deployment;
        let deployment_baseline = if with_baseline {
            let ns = namespace(s, true);
            ensure_namespace(&host, &ns)
                .await
                .map_err(BenchError::Host)?;
            let d = deployment_phase(
                Api::namespaced(host.clone(), &ns),
                Api::namespaced(host.clone(), &ns),
                format!("app={DEPLOYMENT}"),
                own_name,
                bench.deployment_replicas,
                bench.timeout,
                BenchError::Host,
            )
            .await;
            clean_baseline(&host, s).await;
            Some(d?)
        } else {
            None
        };
        let ns = namespace(s, false);
        ensure_namespace(&virt, &ns)
            .await
            .map_err(BenchError::Virtual)?;
        let d = deployment_phase(
            Api::namespaced(virt.clone(), &ns),
            Api::namespaced(host.clone(), &bench.host_namespace),
            host_selector(bench, &ns),
            host_origin,
            bench.deployment_replicas,
            bench.timeout,
            BenchError::Virtual,
        )
        .await;
        clean_syncer(&virt, &host, bench, s).await;
        reports.push(ScenarioReport {
            scenario: s,
            concurrency: 1,
            rate: None,
            baseline: None,
            syncer: None,
            throughput_ratio: None,
            deployment_baseline,
            deployment_syncer: Some(d?),
        });
    }

    let after = bench.serve_pid.and_then(process_usage);
    Ok(Report {
        fsync: Fsync {
            host_etcd,
            tenant_etcd,
        },
        scenarios: reports,
        serve_cpu_seconds: match (before, after) {
            (Some(b), Some(a)) => Some(((a.0 - b.0) * 100.0).round() / 100.0),
            _ => None,
        },
        serve_peak_rss_mib: after.map(|a| a.1.round()),
        serve_rss_mib_after: after.map(|a| a.2.round()),
    })
}

fn row(name: &str, p: &Phase) -> String {
    format!(
        "  {:<9} {:>6} {:>8.2} {:>8.1}  {:>6.0}/{:>6.0}/{:>6.0} ms  {:>6.0}/{:>6.0}/{:>6.0} ms\n",
        name,
        p.pods,
        p.seconds,
        p.pods_per_second,
        p.to_host.p50_ms,
        p.to_host.p90_ms,
        p.to_host.p99_ms,
        p.to_running.p50_ms,
        p.to_running.p90_ms,
        p.to_running.p99_ms
    )
}

fn cpu_row(name: &str, p: &Phase) -> String {
    let parts: Vec<String> = p
        .cpu_seconds
        .iter()
        .map(|c| format!("{} {:.1}", c.component, c.seconds))
        .collect();
    let total: f64 = p.cpu_seconds.iter().map(|c| c.seconds).sum();
    format!(
        "  {name} CPU: {:.1} ms per pod = {}\n",
        total * 1000.0 / p.pods.max(1) as f64,
        parts.join(", ")
    )
}

fn api_row(side: &str, list: &[apicount::PerPod]) -> String {
    let parts: Vec<String> = list
        .iter()
        .map(|p| format!("{} {:.2}", p.series, p.per_pod))
        .collect();
    format!(
        "  {side} API per pod: {:.2} writes ({})\n",
        apicount::writes_per_pod(list),
        parts.join(", ")
    )
}

/// A short human-readable table of the report.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let on = |v: Option<bool>| match v {
        Some(true) => "on",
        Some(false) => "OFF",
        None => "unknown",
    };
    out.push_str(&format!(
        "etcd fsync: host {}, tenant {}\n",
        on(r.fsync.host_etcd),
        on(r.fsync.tenant_etcd)
    ));
    for s in &r.scenarios {
        let how = match (s.rate, s.concurrency) {
            (Some(rate), c) => format!("paced at {rate} pods/s, {c} in flight at most"),
            (None, c) => format!("{c} in flight"),
        };
        out.push_str(&format!("{} ({how})\n", s.scenario.name()));
        if let (Some(b), Some(d)) = (&s.deployment_baseline, &s.deployment_syncer) {
            out.push_str(&format!(
                "  {} replicas: Ready {:.0} ms after the last pod ran on the host (baseline: {:.0} ms); create → Ready {:.0} ms (baseline {:.0} ms)\n",
                d.replicas, d.ready_after_pods_ms, b.ready_after_pods_ms, d.to_ready_ms, b.to_ready_ms
            ));
        } else if let Some(d) = &s.deployment_syncer {
            out.push_str(&format!(
                "  {} replicas: Ready {:.0} ms after the last pod ran on the host; create → Ready {:.0} ms\n",
                d.replicas, d.ready_after_pods_ms, d.to_ready_ms
            ));
        }
        let Some(syncer) = &s.syncer else { continue };
        out.push_str(&format!(
            "  {:<9} {:>6} {:>8} {:>8}  {:>21}  {:>21}\n",
            "phase", "pods", "seconds", "pods/s", "to host p50/p90/p99", "to Running p50/p90/p99"
        ));
        if let Some(b) = &s.baseline {
            out.push_str(&row("baseline", b));
        }
        out.push_str(&row("syncer", syncer));
        if let Some(w) = &syncer.to_virtual_watch {
            out.push_str(&format!(
                "  syncer: virtual create → virtual watch event p50/p90/p99 {:.0}/{:.0}/{:.0} ms\n",
                w.p50_ms, w.p90_ms, w.p99_ms
            ));
        }
        if let Some(ratio) = s.throughput_ratio {
            out.push_str(&format!(
                "  throughput ratio (syncer / direct host creates): {ratio:.2}\n"
            ));
        }
        if let Some(b) = s.baseline.as_ref().filter(|b| !b.cpu_seconds.is_empty()) {
            out.push_str(&cpu_row("baseline", b));
        }
        if !syncer.cpu_seconds.is_empty() {
            out.push_str(&cpu_row("syncer", syncer));
        }
        if let Some(b) = s
            .baseline
            .as_ref()
            .filter(|b| !b.host_api_per_pod.is_empty())
        {
            out.push_str(&api_row("baseline host", &b.host_api_per_pod));
        }
        if !syncer.host_api_per_pod.is_empty() {
            out.push_str(&api_row("syncer host", &syncer.host_api_per_pod));
        }
        if !syncer.virtual_api_per_pod.is_empty() {
            out.push_str(&api_row("syncer virtual", &syncer.virtual_api_per_pod));
        }
    }
    if let (Some(cpu), Some(peak)) = (r.serve_cpu_seconds, r.serve_peak_rss_mib) {
        out.push_str(&format!(
            "vkube serve: {cpu:.2} CPU s over the whole run, peak RSS {peak:.0} MiB\n"
        ));
    }
    out
}

/// The report as the Markdown table docs/performance.md and the README show: one row per
/// scenario, the host baseline beside the syncer.
pub fn markdown(r: &Report) -> String {
    let on = |v: Option<bool>| match v {
        Some(true) => "on",
        Some(false) => "off",
        None => "?",
    };
    let mut out = String::from(
        "| scenario | host pods/s | vkube pods/s | ratio | host → host pod p50 / p99 | vkube create → host pod p50 / p99 | vkube create → virtual Running p50 / p99 |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let ms = |s: &stats::Summary| format!("{:.0} / {:.0} ms", s.p50_ms, s.p99_ms);
    for s in &r.scenarios {
        let name = match (s.scenario, s.rate) {
            (Scenario::Steady, Some(rate)) => format!("steady, {rate} pods/s"),
            (Scenario::One, _) => "one in flight".to_string(),
            (sc, _) => format!("{}, {} in flight", sc.name(), s.concurrency),
        };
        if let Some(d) = &s.deployment_syncer {
            let base = s
                .deployment_baseline
                .as_ref()
                .map(|b| format!("{:.0} ms", b.ready_after_pods_ms))
                .unwrap_or_else(|| "–".into());
            out.push_str(&format!(
                "| Deployment of {}: Ready after its last pod runs | {base} | {:.0} ms | | | | |\n",
                d.replicas, d.ready_after_pods_ms
            ));
            continue;
        }
        let Some(sy) = &s.syncer else { continue };
        let (bpps, bhost) = s
            .baseline
            .as_ref()
            .map(|b| (format!("{:.1}", b.pods_per_second), ms(&b.to_host)))
            .unwrap_or_else(|| ("–".into(), "–".into()));
        out.push_str(&format!(
            "| {name} | {bpps} | {:.1} | {} | {bhost} | {} | {} |\n",
            sy.pods_per_second,
            s.throughput_ratio
                .map(|r| format!("{r:.2}"))
                .unwrap_or_else(|| "–".into()),
            ms(&sy.to_host),
            ms(&sy.to_running)
        ));
    }
    if let Some(peak) = r.serve_peak_rss_mib {
        out.push_str(&format!("\n`vkube serve` peak RSS: {peak:.0} MiB. "));
    }
    out.push_str(&format!(
        "etcd fsync: host {}, tenant {}.\n",
        on(r.fsync.host_etcd),
        on(r.fsync.tenant_etcd)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase_with(pps: f64, p50: f64, p99: f64) -> Phase {
        let s = stats::Summary {
            count: 10,
            p50_ms: p50,
            p90_ms: p99,
            p99_ms: p99,
            max_ms: p99,
        };
        Phase {
            pods_per_second: pps,
            to_host: s.clone(),
            to_running: s,
            ..empty_phase(10)
        }
    }

    #[test]
    fn markdown_puts_host_and_syncer_side_by_side() {
        let report = Report {
            fsync: Fsync {
                host_etcd: Some(true),
                tenant_etcd: Some(true),
            },
            scenarios: vec![
                ScenarioReport {
                    scenario: Scenario::Steady,
                    concurrency: 16,
                    rate: Some(50.5),
                    baseline: Some(phase_with(50.0, 10.0, 40.0)),
                    syncer: Some(phase_with(49.0, 30.0, 90.0)),
                    throughput_ratio: Some(0.98),
                    deployment_baseline: None,
                    deployment_syncer: None,
                },
                ScenarioReport {
                    scenario: Scenario::Deployment,
                    concurrency: 1,
                    rate: None,
                    baseline: None,
                    syncer: None,
                    throughput_ratio: None,
                    deployment_baseline: Some(DeploymentPhase {
                        replicas: 100,
                        to_last_pod_running_ms: 1000.0,
                        to_ready_ms: 1200.0,
                        ready_after_pods_ms: 200.0,
                    }),
                    deployment_syncer: Some(DeploymentPhase {
                        replicas: 100,
                        to_last_pod_running_ms: 2000.0,
                        to_ready_ms: 2090.0,
                        ready_after_pods_ms: 90.0,
                    }),
                },
            ],
            serve_cpu_seconds: None,
            serve_peak_rss_mib: Some(51.0),
            serve_rss_mib_after: None,
        };
        let md = markdown(&report);
        assert!(
            md.contains("| steady, 50.5 pods/s | 50.0 | 49.0 | 0.98 | 10 / 40 ms | 30 / 90 ms | 30 / 90 ms |"),
            "{md}"
        );
        assert!(
            md.contains("| Deployment of 100: Ready after its last pod runs | 200 ms | 90 ms |"),
            "{md}"
        );
        assert!(md.contains("peak RSS: 51 MiB"), "{md}");
        assert!(md.contains("etcd fsync: host on, tenant on"), "{md}");
    }

    #[test]
    fn a_deployment_is_ready_only_when_every_replica_is() {
        let mut d = deployment(3);
        assert!(!deployment_ready(&d, 3));
        d.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
            ready_replicas: Some(3),
            available_replicas: Some(2),
            updated_replicas: Some(3),
            ..Default::default()
        });
        assert!(!deployment_ready(&d, 3));
        if let Some(s) = d.status.as_mut() {
            s.available_replicas = Some(3);
        }
        assert!(deployment_ready(&d, 3));
    }

    #[test]
    fn scenarios_never_share_a_namespace_or_pod_names() {
        let all = [
            Scenario::Burst,
            Scenario::Used,
            Scenario::One,
            Scenario::Steady,
            Scenario::Deployment,
        ];
        let mut seen = std::collections::HashSet::new();
        for s in all {
            assert!(seen.insert(namespace(s, false)));
            assert!(seen.insert(namespace(s, true)));
        }
        // The used scenario runs while the burst's pods still exist.
        assert!(
            names(Scenario::Burst, 2)
                .iter()
                .all(|n| !names(Scenario::Used, 2).contains(n))
        );
    }
}
