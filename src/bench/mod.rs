//! `vkube bench sync`: how fast and how cheaply the syncer moves pods, against a baseline
//! measured in the same run — the same pods created directly in the host API with the same
//! client concurrency.
//!
//! Latencies are taken from watch events: "on host" is when a watch on the host namespace first
//! reports the translated pod, "running" when a watch on the virtual cluster reports the virtual
//! pod Running. Throughput is pods divided by the time from the first create to the last pod
//! seen, for the syncer and the baseline alike.

pub mod procs;
pub mod proxy;
pub mod stats;
pub mod wake;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
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

#[derive(Debug, Clone)]
pub struct SyncBench {
    pub pods: usize,
    pub concurrency: usize,
    /// Creates per second; `None` = as fast as the concurrency allows (a burst).
    pub rate: Option<f64>,
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

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: String,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub baseline: Option<Phase>,
    pub syncer: Phase,
    /// Syncer throughput divided by baseline throughput.
    pub throughput_ratio: Option<f64>,
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

/// Watches `api` and records, per logical name, when it was first seen and first Running.
fn track(
    api: Api<Pod>,
    wc: watcher::Config,
    marks: SharedMarks,
    name_of: fn(&Pod) -> Option<String>,
    seen_on: Side,
    record_running: bool,
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
                if record_running && running(&p) {
                    m.running.entry(name).or_insert(now);
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
            pods: n,
            seconds: (seconds * 1000.0).round() / 1000.0,
            pods_per_second: ((n as f64 / to_host_seconds) * 10.0).round() / 10.0,
            create_call: stats::summarize(&m.created.values().copied().collect::<Vec<_>>()),
            to_host: stats::summarize(&lat(&m.seen)),
            to_virtual_watch: (!m.in_virtual_watch.is_empty())
                .then(|| stats::summarize(&lat(&m.in_virtual_watch))),
            to_running: stats::summarize(&lat(&m.running)),
            cpu_seconds: Vec::new(),
        }
    });
    m.unwrap_or_else(|_| Phase {
        pods: n,
        seconds: f64::NAN,
        pods_per_second: f64::NAN,
        create_call: stats::summarize(&[]),
        to_host: stats::summarize(&[]),
        to_virtual_watch: None,
        to_running: stats::summarize(&[]),
        cpu_seconds: Vec::new(),
    })
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

fn scope(bench: &SyncBench) -> procs::Scope {
    procs::Scope {
        serve_pid: bench.serve_pid,
        host_marker: bench.host_marker.clone(),
    }
}

/// Runs the baseline (if enabled) and the syncer phase and returns the report.
pub async fn run(
    virt: kube::Client,
    host: kube::Client,
    bench: &SyncBench,
) -> Result<Report, BenchError> {
    let names: Vec<String> = (0..bench.pods).map(|i| format!("bench-{i}")).collect();
    let baseline = if bench.skip_baseline {
        None
    } else {
        Some(baseline(&host, bench, &names).await?)
    };

    // The syncer phase: pods created in the virtual namespace, watched on both sides.
    let vns: Api<Namespace> = Api::all(virt.clone());
    let _ = vns
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(BENCH_NAMESPACE.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await;
    let vpods: Api<Pod> = Api::namespaced(virt.clone(), BENCH_NAMESPACE);
    // Pods are refused until the namespace's default ServiceAccount exists.
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(virt.clone(), BENCH_NAMESPACE);
    for _ in 0..300 {
        if let Ok(Some(_)) = sas.get_opt("default").await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = bench.serve_pid.and_then(process_usage);
    let marks: SharedMarks = Default::default();
    let host_wc = watcher::Config::default().labels(&format!(
        "{MANAGED_BY}={},{VIRTUAL_NAMESPACE}={BENCH_NAMESPACE}",
        bench.vcluster
    ));
    let host_watch = track(
        Api::namespaced(host.clone(), &bench.host_namespace),
        host_wc,
        marks.clone(),
        host_origin,
        Side::Host,
        false,
    );
    let virt_watch = track(
        vpods.clone(),
        watcher::Config::default(),
        marks.clone(),
        own_name,
        Side::Virtual,
        true,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let scope = scope(bench);
    let cpu_before = procs::snapshot(&scope);
    create_all(&vpods, &names, None, bench.concurrency, bench.rate, &marks)
        .await
        .map_err(BenchError::Virtual)?;
    let done = wait_done(&marks, bench.pods, bench.timeout).await;
    let cpu_after = procs::snapshot(&scope);
    host_watch.abort();
    virt_watch.abort();
    let mut syncer = phase(&marks, bench.pods);
    syncer.cpu_seconds = cpu_between(&cpu_before, &cpu_after);
    let after = bench.serve_pid.and_then(process_usage);
    // Clean up: deleting the namespace removes the pods on both sides.
    let _ = vns.delete(BENCH_NAMESPACE, &DeleteParams::default()).await;
    done?;

    let throughput_ratio = baseline
        .as_ref()
        .map(|b| ((syncer.pods_per_second / b.pods_per_second) * 100.0).round() / 100.0);
    Ok(Report {
        mode: if bench.rate.is_some() {
            "paced"
        } else {
            "burst"
        }
        .into(),
        concurrency: bench.concurrency,
        rate: bench.rate,
        baseline,
        syncer,
        throughput_ratio,
        serve_cpu_seconds: match (before, after) {
            (Some(b), Some(a)) => Some(((a.0 - b.0) * 100.0).round() / 100.0),
            _ => None,
        },
        serve_peak_rss_mib: after.map(|a| a.1.round()),
        serve_rss_mib_after: after.map(|a| a.2.round()),
    })
}

async fn baseline(
    host: &kube::Client,
    bench: &SyncBench,
    names: &[String],
) -> Result<Phase, BenchError> {
    let namespaces: Api<Namespace> = Api::all(host.clone());
    let ns = format!("{BENCH_NAMESPACE}-baseline");
    let _ = namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await;
    let api: Api<Pod> = Api::namespaced(host.clone(), &ns);
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(host.clone(), &ns);
    for _ in 0..300 {
        if let Ok(Some(_)) = sas.get_opt("default").await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let marks: SharedMarks = Default::default();
    let watch = track(
        api.clone(),
        watcher::Config::default().labels(&format!("{BASELINE_LABEL}=baseline")),
        marks.clone(),
        own_name,
        Side::Host,
        true,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let scope = scope(bench);
    let cpu_before = procs::snapshot(&scope);
    create_all(
        &api,
        names,
        Some((BASELINE_LABEL, "baseline")),
        bench.concurrency,
        bench.rate,
        &marks,
    )
    .await
    .map_err(BenchError::Host)?;
    let done = wait_done(&marks, names.len(), bench.timeout).await;
    let cpu_after = procs::snapshot(&scope);
    watch.abort();
    let mut result = phase(&marks, names.len());
    result.cpu_seconds = cpu_between(&cpu_before, &cpu_after);
    // Delete and wait, so the syncer phase does not compete with the cleanup.
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    for _ in 0..600 {
        match api.list(&ListParams::default().limit(1)).await {
            Ok(l) if l.items.is_empty() => break,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    done?;
    Ok(result)
}

/// A short human-readable table of the report.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<10} {:>6} {:>8} {:>9}  {:>21}  {:>21}\n",
        "phase", "pods", "seconds", "pods/s", "to host p50/p90/p99", "to Running p50/p90/p99"
    ));
    let row = |name: &str, p: &Phase| {
        format!(
            "{:<10} {:>6} {:>8.2} {:>9.1}  {:>6.0}/{:>6.0}/{:>6.0} ms  {:>6.0}/{:>6.0}/{:>6.0} ms\n",
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
    };
    if let Some(b) = &r.baseline {
        out.push_str(&row("baseline", b));
    }
    out.push_str(&row("syncer", &r.syncer));
    if let Some(w) = &r.syncer.to_virtual_watch {
        out.push_str(&format!(
            "syncer: virtual create → virtual watch event p50/p90/p99 {:.0}/{:.0}/{:.0} ms\n",
            w.p50_ms, w.p90_ms, w.p99_ms
        ));
    }
    if let Some(ratio) = r.throughput_ratio {
        out.push_str(&format!(
            "throughput ratio (syncer / direct host creates): {ratio:.2}\n"
        ));
    }
    let cpu_row = |name: &str, p: &Phase| {
        let parts: Vec<String> = p
            .cpu_seconds
            .iter()
            .map(|c| format!("{} {:.1}", c.component, c.seconds))
            .collect();
        let total: f64 = p.cpu_seconds.iter().map(|c| c.seconds).sum();
        format!("{name} CPU s: {total:.1} = {}\n", parts.join(", "))
    };
    if let Some(b) = r.baseline.as_ref().filter(|b| !b.cpu_seconds.is_empty()) {
        out.push_str(&cpu_row("baseline", b));
    }
    if !r.syncer.cpu_seconds.is_empty() {
        out.push_str(&cpu_row("syncer", &r.syncer));
    }
    if let (Some(cpu), Some(peak)) = (r.serve_cpu_seconds, r.serve_peak_rss_mib) {
        out.push_str(&format!(
            "vkube serve: {cpu:.2} CPU s ({:.2} ms per pod), peak RSS {peak:.0} MiB\n",
            cpu * 1000.0 / r.syncer.pods as f64
        ));
    }
    out
}
