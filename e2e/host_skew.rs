//! A host one minor newer than vkube's Kubernetes types (k8s-openapi `v1_35`): status fields the
//! newer host writes and the types do not know reach the virtual pod when its API server knows
//! them, and an older virtual API server drops them as it would its own kubelet's. hack/test.sh
//! runs this on a 1.36 host (`hack/host-cluster.sh up --kubernetes-version v1.36.3`); on a host
//! of the types' own minor or older there is no such field and the test says so and passes.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};

use crate::common::{self, Tenant, eventually};
use crate::versions::versions_dir;

const LONG: Duration = Duration::from_secs(90);
/// The minor of vkube's Kubernetes types (the `v1_35` feature of k8s-openapi).
const TYPES_MINOR: u32 = 35;
/// `status.containerStatuses[].allocatedResourcesStatus[].resources[].message`: new in 1.36
/// (feature gate ResourceHealthStatusMessage, beta and on by default there), unknown to
/// k8s-openapi `v1_35`'s `ResourceHealth`. No kubelet writes it here (kwok nodes, no device
/// plugin), so the test writes it into the host pod's status as a 1.36 kubelet would.
const MESSAGE: &str = "ECC errors on dev-0 (vkube e2e)";

fn pod() -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app"},
        "spec": {"containers": [{"name": "main", "image": "registry.local/app:1",
                                 "resources": {"requests": {"cpu": "100m"}}}]},
    }))
    .unwrap()
}

/// The pod's status as its API server returns it, every field included.
async fn raw_status(client: &kube::Client, ns: &str, name: &str) -> Option<serde_json::Value> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<Pod>(&()));
    api.get(name).await.ok()?.data.get("status").cloned()
}

fn container_status(status: &serde_json::Value) -> Option<&serde_json::Value> {
    status["containerStatuses"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == "main")
}

fn health_message(status: &serde_json::Value) -> Option<&str> {
    container_status(status)?["allocatedResourcesStatus"][0]["resources"][0]["message"].as_str()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_fields_of_a_newer_host_unknown_to_vkubes_types_reach_the_virtual_pod() {
    let host = common::host_client().await;
    let info = host.apiserver_version().await.unwrap();
    let host_minor: u32 = info.minor.trim_end_matches('+').parse().unwrap();
    if host_minor <= TYPES_MINOR {
        eprintln!(
            "SKIPPED: the host runs {} (no status field newer than vkube's 1.{TYPES_MINOR} types); \
             hack/test.sh runs this test on a 1.36 host",
            info.git_version
        );
        return;
    }
    let dir = versions_dir().display().to_string();
    // The virtual API server of the host's minor knows the field; the pinned 1.35 one does not.
    let mut newer = Tenant::new("skewnew");
    newer.extra_args = vec![
        "--kubernetes-version".into(),
        format!("1.{host_minor}"),
        "--versions-dir".into(),
        dir,
    ];
    let mut older = Tenant::new("skewold");
    newer.spawn();
    older.spawn();
    newer.wait_ready();
    older.wait_ready();

    let mut host_names = vec![];
    for t in [&newer, &older] {
        let virt = t.client().await;
        Api::<Pod>::namespaced(virt, "default")
            .create(&PostParams::default(), &pod())
            .await
            .unwrap();
        let host_name = format!("app-x-default-x-{}", t.name);
        let hpods: Api<Pod> = Api::namespaced(host.clone(), &t.namespace);
        eventually(
            &format!("the host pod of {} runs", t.name),
            LONG,
            || async {
                let h = hpods.get(&host_name).await.ok()?;
                (h.status?.phase.as_deref() == Some("Running")).then_some(())
            },
        )
        .await;
        host_names.push((t, host_name));
    }

    // What the 1.36 kubelet of a node with an unhealthy device reports. restartCount, a field
    // every version knows, changes with it: the older tenant's sync shows when to look.
    for (t, host_name) in &host_names {
        let patch = serde_json::json!([
            {"op": "add", "path": "/status/containerStatuses/0/allocatedResourcesStatus",
             "value": [{"name": "cpu", "resources": [
                 {"resourceID": "dev-0", "health": "Unhealthy", "message": MESSAGE}]}]},
            {"op": "replace", "path": "/status/containerStatuses/0/restartCount", "value": 1},
        ]);
        common::kubectl_ok(
            &common::env().host_kubeconfig,
            &[
                "patch",
                "pod",
                host_name,
                "-n",
                &t.namespace,
                "--subresource",
                "status",
                "--type",
                "json",
                "-p",
                &patch.to_string(),
            ],
        );
        let hstatus = raw_status(&host, &t.namespace, host_name).await.unwrap();
        assert_eq!(
            health_message(&hstatus),
            Some(MESSAGE),
            "the {} host keeps the field: {hstatus}",
            info.git_version
        );
        // The field is one vkube's types cannot carry: a round trip through them loses it, so
        // only the syncer's raw status path can bring it up.
        let typed: k8s_openapi::api::core::v1::PodStatus =
            serde_json::from_value(hstatus.clone()).unwrap();
        let through_types = serde_json::to_value(typed).unwrap();
        assert_eq!(health_message(&through_types), None);
        assert!(container_status(&through_types).unwrap()["allocatedResourcesStatus"].is_array());
    }

    let virt = newer.client().await;
    let status = eventually(
        "the health message written by the newer host reaches the virtual pod of the same minor",
        LONG,
        || async {
            let s = raw_status(&virt, "default", "app").await?;
            (health_message(&s) == Some(MESSAGE)).then_some(s)
        },
    )
    .await;
    let main = container_status(&status).unwrap();
    assert_eq!(main["restartCount"], 1, "{status}");
    assert_eq!(
        main["allocatedResourcesStatus"][0]["resources"][0]["health"],
        "Unhealthy"
    );

    // The 1.35 virtual API server has the whole allocatedResourcesStatus behind a feature gate
    // that is off (ResourceHealthStatus, alpha in 1.35) and drops it, as it would from its own
    // kubelet; the rest of the status still comes up.
    let virt = older.client().await;
    let status = eventually(
        "the older tenant's pod shows the host's restart count",
        LONG,
        || async {
            let s = raw_status(&virt, "default", "app").await?;
            (container_status(&s)?["restartCount"] == 1).then_some(s)
        },
    )
    .await;
    assert_eq!(status["phase"], "Running", "{status}");
    assert!(
        container_status(&status).unwrap()["allocatedResourcesStatus"].is_null(),
        "a 1.35 virtual API server drops the field: {status}"
    );
    // The syncer keeps seeing a difference there (the field is one its types know), but the
    // patch changes nothing, so no watch event brings it back: no write loop.
    let pods: Api<Pod> = Api::namespaced(virt, "default");
    let before = pods.get("app").await.unwrap().metadata.resource_version;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = pods.get("app").await.unwrap().metadata.resource_version;
    assert_eq!(before, after, "the older tenant's pod is not rewritten");
}
