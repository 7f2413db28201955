//! `vkube bench proxy`: what vkube's API proxy costs. The same request mix goes straight to the
//! virtual kube-apiserver and through the proxy — same client code, same identity (the admin
//! client certificate is accepted by both), same concurrency, same run, alternating rounds so
//! drift in a noisy machine hits both sides alike. Port-forward: bytes echoed through a virtual
//! pod (client → proxy → host API → kubelet) against the same bytes through its host pod
//! directly (client → host API → kubelet).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::stats::{self, Summary};
use crate::translate::Tenant;

#[derive(Debug, thiserror::Error)]
pub enum ProxyBenchError {
    #[error("{0}: {1}")]
    Api(&'static str, #[source] kube::Error),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("port-forward: {0}")]
    Forward(String),
}

fn api_error(what: &'static str) -> impl Fn(kube::Error) -> ProxyBenchError {
    move |e| ProxyBenchError::Api(what, e)
}

pub struct ProxyBench {
    /// The virtual cluster through vkube's proxy.
    pub proxy: kube::Client,
    /// The virtual kube-apiserver itself, same credentials.
    pub direct: kube::Client,
    /// The host cluster and the tenant, for the direct port-forward baseline.
    pub host: Option<(kube::Client, Tenant)>,
    pub requests: usize,
    pub concurrency: usize,
    pub list_pods: usize,
    pub watch_events: usize,
    pub forward_mib: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Side {
    pub latency: Summary,
    pub per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub operation: String,
    pub direct: Side,
    pub proxy: Side,
    pub added_p50_ms: f64,
    pub added_p99_ms: f64,
    /// Proxy throughput / direct throughput.
    pub throughput_ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Forward {
    pub mib: usize,
    pub direct_mib_per_second: f64,
    pub proxy_mib_per_second: f64,
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub concurrency: usize,
    pub operations: Vec<Comparison>,
    pub port_forward: Option<Forward>,
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// Samples of one side: per-operation latencies (ms) and the wall time they took.
#[derive(Default)]
struct Samples {
    latencies_ms: Vec<f64>,
    operations: usize,
    wall: Duration,
}

impl Samples {
    fn side(&self) -> Side {
        Side {
            latency: stats::summarize(&self.latencies_ms),
            per_second: round(self.operations as f64 / self.wall.as_secs_f64(), 1),
        }
    }
}

fn compare(operation: &str, direct: &Samples, proxy: &Samples) -> Comparison {
    let (d, p) = (direct.side(), proxy.side());
    Comparison {
        operation: operation.to_string(),
        added_p50_ms: round(p.latency.p50_ms - d.latency.p50_ms, 2),
        added_p99_ms: round(p.latency.p99_ms - d.latency.p99_ms, 2),
        throughput_ratio: round(p.per_second / d.per_second, 3),
        direct: d,
        proxy: p,
    }
}

/// Runs `n` calls of `op` with `concurrency` in flight; adds latencies and wall time to `into`.
async fn timed<F, Fut>(
    n: usize,
    concurrency: usize,
    op: F,
    into: &mut Samples,
) -> Result<(), ProxyBenchError>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), ProxyBenchError>>,
{
    let started = Instant::now();
    let op = &op;
    let latencies: Vec<f64> = stream::iter(0..n)
        .map(|i| async move {
            let t = Instant::now();
            op(i).await?;
            Ok::<_, ProxyBenchError>(t.elapsed().as_secs_f64() * 1e3)
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    into.wall += started.elapsed();
    into.operations += n;
    into.latencies_ms.extend(latencies);
    Ok(())
}

const ROUNDS: usize = 2;

pub async fn run(b: &ProxyBench) -> Result<Report, ProxyBenchError> {
    let ns_name = format!("bench-proxy-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(b.proxy.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(ns_name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .map_err(api_error("create namespace"))?;
    let result = run_in(b, &ns_name).await;
    let _ = namespaces.delete(&ns_name, &DeleteParams::default()).await;
    result
}

async fn run_in(b: &ProxyBench, ns: &str) -> Result<Report, ProxyBenchError> {
    let clients = [("direct", b.direct.clone()), ("proxy", b.proxy.clone())];
    let pods: Api<Pod> = Api::namespaced(b.proxy.clone(), ns);
    wait_for_default_service_account(&b.proxy, ns).await?;
    tracing::info!(
        pods = b.list_pods,
        "creating pods for LIST and port-forward"
    );
    timed(
        b.list_pods,
        b.concurrency,
        |i| {
            let pods = pods.clone();
            async move {
                pods.create(&PostParams::default(), &bench_pod(i))
                    .await
                    .map(|_| ())
                    .map_err(api_error("create pod"))
            }
        },
        &mut Samples::default(),
    )
    .await?;
    // Let the syncer finish before measuring: the machine should be quiet.
    wait_running(&pods, b.list_pods).await?;

    let mut operations = Vec::new();
    let mut run_op = |name: &str, results: [Samples; 2]| {
        operations.push(compare(name, &results[0], &results[1]));
    };

    // GET one pod.
    let mut get = [Samples::default(), Samples::default()];
    for _ in 0..ROUNDS {
        for (i, (_, client)) in clients.iter().enumerate() {
            let api: Api<Pod> = Api::namespaced(client.clone(), ns);
            timed(
                b.requests / ROUNDS,
                b.concurrency,
                |_| {
                    let api = api.clone();
                    async move {
                        api.get("bench-0")
                            .await
                            .map(|_| ())
                            .map_err(api_error("get"))
                    }
                },
                &mut get[i],
            )
            .await?;
        }
    }
    run_op("GET pod", get);

    // LIST all pods of the namespace.
    let mut list = [Samples::default(), Samples::default()];
    let lists = (b.requests / 20).max(ROUNDS * 5);
    for _ in 0..ROUNDS {
        for (i, (_, client)) in clients.iter().enumerate() {
            let api: Api<Pod> = Api::namespaced(client.clone(), ns);
            timed(
                lists / ROUNDS,
                b.concurrency.min(4),
                |_| {
                    let api = api.clone();
                    async move {
                        let l = api.list(&ListParams::default()).await;
                        l.map(|_| ()).map_err(api_error("list"))
                    }
                },
                &mut list[i],
            )
            .await?;
        }
    }
    run_op(&format!("LIST {} pods", b.list_pods), list);

    // Small creates.
    let mut create = [Samples::default(), Samples::default()];
    let creates = b.requests / 4;
    for round in 0..ROUNDS {
        for (i, (side, client)) in clients.iter().enumerate() {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            timed(
                creates / ROUNDS,
                b.concurrency,
                |n| {
                    let api = api.clone();
                    let name = format!("small-{side}-{round}-{n}");
                    async move {
                        api.create(&PostParams::default(), &small_configmap(&name, "small"))
                            .await
                            .map(|_| ())
                            .map_err(api_error("create"))
                    }
                },
                &mut create[i],
            )
            .await?;
        }
    }
    run_op("create ConfigMap", create);

    // A WATCH replaying `watch_events` events: from a resourceVersion before they were created.
    let cms: Api<ConfigMap> = Api::namespaced(b.proxy.clone(), ns);
    let from = cms
        .list_metadata(&ListParams::default().limit(1))
        .await
        .map_err(api_error("list"))?
        .metadata
        .resource_version
        .unwrap_or_default();
    timed(
        b.watch_events,
        b.concurrency,
        |n| {
            let cms = cms.clone();
            async move {
                cms.create(
                    &PostParams::default(),
                    &small_configmap(&format!("watched-{n}"), "watched"),
                )
                .await
                .map(|_| ())
                .map_err(api_error("create"))
            }
        },
        &mut Samples::default(),
    )
    .await?;
    let mut watch = [Samples::default(), Samples::default()];
    for _ in 0..ROUNDS * 2 {
        for (i, (_, client)) in clients.iter().enumerate() {
            let watched: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            let started = Instant::now();
            let params = WatchParams::default().labels("bench=watched");
            let mut events = watched
                .watch(&params, &from)
                .await
                .map_err(api_error("watch"))?
                .boxed();
            let mut seen = 0;
            let deadline = tokio::time::sleep(Duration::from_secs(120));
            tokio::pin!(deadline);
            while seen < b.watch_events {
                tokio::select! {
                    e = events.next() => match e {
                        Some(Ok(WatchEvent::Added(_))) => seen += 1,
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(ProxyBenchError::Api("watch", e)),
                        None => return Err(ProxyBenchError::Timeout("the watch ended early")),
                    },
                    _ = &mut deadline => return Err(ProxyBenchError::Timeout("watch events")),
                }
            }
            let elapsed = started.elapsed();
            watch[i].wall += elapsed;
            watch[i].operations += seen;
            watch[i].latencies_ms.push(elapsed.as_secs_f64() * 1e3);
        }
    }
    run_op(
        &format!("WATCH {} events (whole stream)", b.watch_events),
        watch,
    );

    let port_forward = match &b.host {
        Some((host, tenant)) if b.forward_mib > 0 => {
            Some(forward_comparison(b, host, tenant, ns).await?)
        }
        _ => None,
    };
    Ok(Report {
        concurrency: b.concurrency,
        operations,
        port_forward,
    })
}

async fn wait_for_default_service_account(
    client: &kube::Client,
    ns: &str,
) -> Result<(), ProxyBenchError> {
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), ns);
    for _ in 0..300 {
        if sas
            .get_opt("default")
            .await
            .map_err(api_error("get serviceaccount"))?
            .is_some()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(ProxyBenchError::Timeout("the default ServiceAccount"))
}

async fn wait_running(pods: &Api<Pod>, n: usize) -> Result<(), ProxyBenchError> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        let list = pods
            .list(&ListParams::default())
            .await
            .map_err(api_error("list"))?;
        let running = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        if running >= n {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(ProxyBenchError::Timeout("pods Running"))
}

fn bench_pod(i: usize) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("bench-{i}"), "labels": {"bench": "proxy"}},
        "spec": {"containers": [{"name": "main", "image": "busybox",
                                 "ports": [{"containerPort": 8080}]}]}
    }))
    .unwrap_or_default()
}

fn small_configmap(name: &str, label: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some([("bench".to_string(), label.to_string())].into()),
            ..Default::default()
        },
        data: Some([("key".to_string(), "value".to_string())].into()),
        ..Default::default()
    }
}

/// `mib` MiB written into a port-forward to port 8080 and read back (the pod echoes), timed.
async fn echo_through(api: &Api<Pod>, pod: &str, mib: usize) -> Result<Duration, ProxyBenchError> {
    let mut pf = api
        .portforward(pod, &[8080])
        .await
        .map_err(api_error("portforward"))?;
    let stream = pf
        .take_stream(8080)
        .ok_or_else(|| ProxyBenchError::Forward("no stream for port 8080".into()))?;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let total = mib * 1024 * 1024;
    let chunk = Arc::new(vec![0x5au8; 64 * 1024]);
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            wr.write_all(&chunk[..n]).await?;
            sent += n;
        }
        wr.flush().await?;
        Ok::<_, std::io::Error>(wr)
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0;
    let read = async {
        while received < total {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            received += n;
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(300), read)
        .await
        .map_err(|_| ProxyBenchError::Timeout("port-forward echo"))?
        .map_err(|e| ProxyBenchError::Forward(e.to_string()))?;
    let elapsed = started.elapsed();
    let _wr = writer
        .await
        .map_err(|e| ProxyBenchError::Forward(e.to_string()))?
        .map_err(|e| ProxyBenchError::Forward(e.to_string()))?;
    pf.abort();
    if received < total {
        return Err(ProxyBenchError::Forward(format!(
            "echoed {received} of {total} bytes"
        )));
    }
    Ok(elapsed)
}

async fn forward_comparison(
    b: &ProxyBench,
    host: &kube::Client,
    tenant: &Tenant,
    ns: &str,
) -> Result<Forward, ProxyBenchError> {
    let virtual_pods: Api<Pod> = Api::namespaced(b.proxy.clone(), ns);
    let host_pods: Api<Pod> = Api::namespaced(host.clone(), &tenant.host_namespace);
    let host_name = tenant.label_name(ns, "bench-0");
    let (mut direct, mut proxy) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..ROUNDS {
        direct += echo_through(&host_pods, &host_name, b.forward_mib).await?;
        proxy += echo_through(&virtual_pods, "bench-0", b.forward_mib).await?;
    }
    // Bytes travel both ways: count the echo once, as a port-forward's payload rate.
    let rate = |d: Duration| (b.forward_mib * ROUNDS) as f64 / d.as_secs_f64();
    Ok(Forward {
        mib: b.forward_mib,
        direct_mib_per_second: round(rate(direct), 1),
        proxy_mib_per_second: round(rate(proxy), 1),
        ratio: round(rate(proxy) / rate(direct), 3),
    })
}

pub fn table(r: &Report) -> String {
    let mut out = format!(
        "{:<34} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}\n",
        "operation (concurrency)",
        "direct p50",
        "proxy p50",
        "added p50",
        "direct p99",
        "proxy p99",
        "added p99",
        "tput"
    );
    for c in &r.operations {
        out.push_str(&format!(
            "{:<34} {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>7.3}\n",
            format!("{} ({})", c.operation, r.concurrency),
            c.direct.latency.p50_ms,
            c.proxy.latency.p50_ms,
            c.added_p50_ms,
            c.direct.latency.p99_ms,
            c.proxy.latency.p99_ms,
            c.added_p99_ms,
            c.throughput_ratio
        ));
    }
    if let Some(f) = &r.port_forward {
        out.push_str(&format!(
            "port-forward echo {} MiB: direct to the host pod {:.1} MiB/s, through vkube {:.1} \
             MiB/s, ratio {:.3}\n",
            f.mib, f.direct_mib_per_second, f.proxy_mib_per_second, f.ratio
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_is_proxy_minus_direct_and_a_throughput_ratio() {
        let direct = Samples {
            latencies_ms: vec![1.0, 2.0, 3.0],
            operations: 3,
            wall: Duration::from_secs(1),
        };
        let proxy = Samples {
            latencies_ms: vec![1.5, 2.5, 3.5],
            operations: 3,
            wall: Duration::from_secs(2),
        };
        let c = compare("GET", &direct, &proxy);
        assert_eq!(c.added_p50_ms, 0.5);
        assert_eq!(c.added_p99_ms, 0.5);
        assert_eq!(c.throughput_ratio, 0.5);
        assert!(
            table(&Report {
                concurrency: 1,
                operations: vec![c],
                port_forward: None
            })
            .contains("GET (1)")
        );
    }
}
