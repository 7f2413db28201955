//! Several Kubernetes versions on one host: a tenant of every supported minor
//! (`vkube serve --kubernetes-version`, binaries from hack/build-components.sh --control-plane),
//! side by side, each syncing a pod down and its status up; binaries of another minor than
//! asked for are refused before anything starts; a pod field a tenant's API server keeps but
//! vkube's types cannot read is refused, not dropped.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use vkube::controlplane::version::SUPPORTED;

use crate::common::{self, Tenant, eventually};

const LONG: Duration = Duration::from_secs(90);

/// Where each version's binaries are: VKUBE_VERSIONS_DIR, else the cache VKUBE_BIN_DIR is in
/// (hack/ builds every version under ~/.cache/vkube/v1.MINOR.PATCH/bin).
pub(crate) fn versions_dir() -> PathBuf {
    std::env::var_os("VKUBE_VERSIONS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let bin = common::env().bin_dir;
            bin.parent()
                .and_then(|v| v.parent())
                .map(PathBuf::from)
                .unwrap_or(bin)
        })
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": [{"name": "main", "image": "registry.local/app:1"}]},
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_of_every_supported_minor_sync_side_by_side() {
    let dir = versions_dir().display().to_string();
    let mut tenants: Vec<(String, Tenant)> = SUPPORTED
        .iter()
        .map(|minor| {
            let mut t = Tenant::new(&format!("v1{}", minor.0));
            t.extra_args = vec![
                "--kubernetes-version".into(),
                minor.to_string(),
                "--versions-dir".into(),
                dir.clone(),
            ];
            t.spawn();
            (minor.to_string(), t)
        })
        .collect();
    for (_, t) in &mut tenants {
        t.wait_ready();
    }
    let host = common::host_client().await;
    for (minor, t) in &tenants {
        let virt = t.client().await;
        let info = virt.apiserver_version().await.unwrap();
        assert_eq!(
            format!("{}.{}", info.major, info.minor.trim_end_matches('+')),
            *minor,
            "{} runs the minor it asked for ({})",
            t.name,
            info.git_version
        );
        Api::<Pod>::namespaced(virt.clone(), "default")
            .create(&PostParams::default(), &pod("app"))
            .await
            .unwrap_or_else(|e| panic!("pod in {minor}: {e}"));
    }
    for (minor, t) in &tenants {
        let virt = t.client().await;
        let vpods: Api<Pod> = Api::namespaced(virt.clone(), "default");
        let hpods: Api<Pod> = Api::namespaced(host.clone(), &t.namespace);
        let host_name = format!("app-x-default-x-{}", t.name);
        eventually(
            &format!("the pod of {minor} runs on the host and shows it"),
            LONG,
            || async {
                let h = hpods.get(&host_name).await.ok()?;
                let v = vpods.get("app").await.ok()?;
                let (hs, vs) = (h.status?, v.status?);
                let ready = |s: &k8s_openapi::api::core::v1::PodStatus| {
                    s.container_statuses
                        .iter()
                        .flatten()
                        .any(|c| c.name == "main" && c.ready)
                };
                (hs.phase.as_deref() == Some("Running")
                    && vs.phase == hs.phase
                    && vs.pod_ip.is_some()
                    && vs.pod_ip == hs.pod_ip
                    && vs.pod_ips == hs.pod_ips
                    && vs.host_ip == hs.host_ip
                    && ready(&hs)
                    && ready(&vs)
                    && v.spec.as_ref()?.node_name.is_some())
                .then_some(())
            },
        )
        .await;
        let h = hpods.get(&host_name).await.unwrap();
        assert_eq!(
            h.annotations().get("vkube.dev/uid"),
            vpods.get("app").await.unwrap().metadata.uid.as_ref()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn binaries_of_another_minor_are_refused_before_anything_starts() {
    // A directory that claims to hold 1.34 but holds the pinned 1.35 binaries (a stale cache,
    // a wrongly built image): asking for 1.34 must fail at once.
    let mut t = Tenant::new("wrongver");
    let fake = t.dir.join("versions");
    let bin = fake.join("v1.34.9/bin");
    std::fs::create_dir_all(&bin).unwrap();
    for b in ["kube-apiserver", "kube-controller-manager"] {
        std::os::unix::fs::symlink(common::env().bin_dir.join(b), bin.join(b)).unwrap();
    }
    t.extra_args = vec![
        "--kubernetes-version".into(),
        "1.34".into(),
        "--versions-dir".into(),
        fake.display().to_string(),
    ];
    let (ok, err) = common::run_vkube(&t.serve_args(), Duration::from_secs(60));
    assert!(!ok, "serve refused binaries of another minor");
    assert!(
        err.contains("but 1.34 was asked for"),
        "the error names the versions: {err}"
    );
    assert!(
        common::processes_mentioning(&t.data_dir().display().to_string()).is_empty(),
        "nothing was started"
    );
    // An unsupported minor is refused by the flag itself.
    t.extra_args = vec!["--kubernetes-version".into(), "1.20".into()];
    let (ok, err) = common::run_vkube(&t.serve_args(), Duration::from_secs(60));
    assert!(!ok && err.contains("not supported"), "{err}");
}

/// A feature gate turned on inside one tenant (`vkube serve --feature-gates`, with its API through
/// `--runtime-config`) lets its 1.36 API
/// server keep `spec.schedulingGroup`, which vkube's 1.35 types do not know. Parsed through the
/// types the field would vanish and the pod start on the host without it; instead the pod is
/// refused with an Event naming the field, while a pod without it runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_field_beyond_vkubes_types_is_refused_not_dropped() {
    let mut t = Tenant::new("gates");
    t.extra_args = vec![
        "--kubernetes-version".into(),
        "1.36".into(),
        "--versions-dir".into(),
        versions_dir().display().to_string(),
        "--feature-gates".into(),
        "GenericWorkload=true".into(),
        // The gate's admission waits for its API (Workload, PodGroup) to be served.
        "--runtime-config".into(),
        "scheduling.k8s.io/v1alpha2=true".into(),
    ];
    t.spawn();
    t.wait_ready();
    let virt = t.client().await;
    let raw: Api<DynamicObject> =
        Api::namespaced_with(virt.clone(), "default", &ApiResource::erase::<Pod>(&()));
    let grouped: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "grouped"},
        "spec": {"containers": [{"name": "main", "image": "registry.local/app:1"}],
                 "schedulingGroup": {"podGroupName": "training"}},
    }))
    .unwrap();
    let kept = raw.create(&PostParams::default(), &grouped).await.unwrap();
    assert_eq!(
        kept.data["spec"]["schedulingGroup"]["podGroupName"], "training",
        "the tenant's API server keeps the field (feature gate on): {:?}",
        kept.data["spec"]
    );
    let ev = crate::syncer::wait_event(&virt, "default", "grouped", "HostPolicyViolation").await;
    let message = ev.message.unwrap_or_default();
    assert!(
        message.contains("spec.schedulingGroup") && message.contains("not known"),
        "the event names the field: {message}"
    );

    // The syncer is alive and well: an ordinary pod of the same tenant runs.
    Api::<Pod>::namespaced(virt, "default")
        .create(&PostParams::default(), &pod("plain"))
        .await
        .unwrap();
    let host = common::host_client().await;
    let hpods: Api<Pod> = Api::namespaced(host, &t.namespace);
    let plain = format!("plain-x-default-x-{}", t.name);
    eventually("the ordinary pod is on the host", LONG, || async {
        hpods.get(&plain).await.ok().map(|_| ())
    })
    .await;
    let grouped_host = format!("grouped-x-default-x-{}", t.name);
    assert!(
        hpods.get_opt(&grouped_host).await.unwrap().is_none(),
        "the pod with a field vkube cannot read never reaches the host"
    );
}
