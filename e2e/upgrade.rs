//! Upgrading vkube: host objects written by the previous release (the golden files under
//! tests/golden/, which the unit test `translate::golden` holds the current mapping to) are
//! adopted by the current syncer without a pod being deleted, re-created or given a new image.
//!
//! The previous release is played faithfully: the virtual objects are made by the tenant's own
//! control plane (so their UIDs are real), and the host copies are written from the golden files
//! exactly as that release's syncer created them (its ownership labels and annotations, its
//! desired hash, vkube's field manager), with the real virtual UID where the golden file has the
//! placeholder. Then `vkube serve` restarts with the syncer on, as an upgrade does.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Event, PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::common::{self, Tenant, eventually};

/// The tenant and virtual UID the golden files were made for (tests/golden/README.md).
const GOLDEN_TENANT: &str = "gold";
const GOLDEN_UID: &str = "00000000-0000-4000-8000-000000000000";
const LONG: Duration = Duration::from_secs(90);

fn golden(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The virtual object of a golden case, as the tenant creates it (the server assigns the UID).
fn golden_input<K: DeserializeOwned + Resource>(kind: &str, case: &str) -> K {
    let mut obj: K = serde_yaml::from_str(&golden(&format!("{kind}/{case}.yaml"))).unwrap();
    obj.meta_mut().uid = None;
    obj
}

/// The host object the previous release wrote for a golden case (`field` picks it out of the
/// golden output where that holds more), for the virtual object with UID `uid`.
fn golden_host<K: DeserializeOwned>(kind: &str, case: &str, field: Option<&str>, uid: &str) -> K {
    let out: serde_json::Value =
        serde_json::from_str(&golden(&format!("{kind}/{case}.host.json"))).unwrap();
    let obj = match field {
        Some(f) => out
            .get(f)
            .unwrap_or_else(|| panic!("{kind}/{case}.host.json has no {f}"))
            .clone(),
        None => out,
    };
    let text = serde_json::to_string(&obj).unwrap();
    assert!(
        text.contains(GOLDEN_UID),
        "{kind}/{case}.host.json carries the virtual UID"
    );
    serde_json::from_str(&text.replace(GOLDEN_UID, uid)).unwrap()
}

/// Creates the virtual object of a golden case and, as the previous release's syncer did, its
/// host copy; returns the host copy as created.
async fn previous_release<K>(
    virt: &Client,
    host: &Client,
    host_ns: &str,
    kind: &str,
    case: &str,
    field: Option<&str>,
) -> K
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + DeserializeOwned,
{
    let v: K = golden_input(kind, case);
    let ns = v.meta().namespace.clone().unwrap();
    let created = Api::<K>::namespaced(virt.clone(), &ns)
        .create(&PostParams::default(), &v)
        .await
        .unwrap_or_else(|e| panic!("virtual {kind}/{case}: {e}"));
    let h: K = golden_host(kind, case, field, &created.uid().unwrap());
    let pp = PostParams {
        field_manager: Some("vkube".into()),
        ..Default::default()
    };
    Api::<K>::namespaced(host.clone(), host_ns)
        .create(&pp, &h)
        .await
        .unwrap_or_else(|e| panic!("host copy of {kind}/{case}: {e}"))
}

fn images(p: &Pod) -> Vec<(String, Option<String>)> {
    let spec = p.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|c| (c.name.clone(), c.image.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn host_objects_of_the_previous_release_are_adopted_without_restarting_a_pod() {
    let mut t = Tenant::named(GOLDEN_TENANT);
    // The control plane only: the objects exist before any syncer of this release runs.
    t.extra_args = vec!["--no-sync".into()];
    t.spawn();
    t.wait_ready();
    let virt = t.client().await;
    let host = common::host_client().await;
    t.create_namespace("shop");
    t.create_namespace("team-a");

    let ns = t.namespace.clone();
    let cm: ConfigMap = previous_release(&virt, &host, &ns, "configmaps", "web-config", None).await;
    let secret: Secret = previous_release(&virt, &host, &ns, "secrets", "web-secret", None).await;
    let svc: Service = previous_release(&virt, &host, &ns, "services", "db", Some("service")).await;
    let claim: PersistentVolumeClaim =
        previous_release(&virt, &host, &ns, "pvcs", "data-db-0", Some("claim")).await;
    // web and long-name run (kwok); db-0 waits for its claim, which no host class binds.
    let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
    for case in ["web", "long-name", "db-0"] {
        let p: Pod = previous_release(&virt, &host, &ns, "pods", case, Some("pod")).await;
        pods.insert(p.name_any(), p);
    }
    let host_pods: Api<Pod> = Api::namespaced(host.clone(), &ns);
    let host_name_of = |vname: &str| -> String {
        pods.values()
            .find(|p| p.annotations().get("vkube.dev/name").map(String::as_str) == Some(vname))
            .map(|p| p.name_any())
            .unwrap_or_else(|| panic!("no golden host pod for {vname}"))
    };
    let running = [
        ("shop", "web-5d8f7c9b6-x2x7q"),
        (
            "team-a",
            "a-rather-long-pod-name-that-needs-hashing-on-the-host",
        ),
    ];
    for (_, vname) in running {
        let name = host_name_of(vname);
        eventually(&format!("host pod {name} running"), LONG, || async {
            let p = host_pods.get(&name).await.ok()?;
            (p.status?.phase.as_deref() == Some("Running")).then_some(())
        })
        .await;
    }

    // Everything that happens to the host pods from here on.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let original: BTreeMap<String, String> = pods
        .iter()
        .map(|(n, p)| (n.clone(), p.uid().unwrap()))
        .collect();
    let watch = {
        let (seen, original) = (seen.clone(), original.clone());
        let stream = watcher(host_pods.clone(), watcher::Config::default());
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                let mut seen = seen.lock().unwrap();
                match ev {
                    Ok(watcher::Event::Delete(p)) => seen.push(format!("deleted {}", p.name_any())),
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                        let fresh = original.get(&p.name_any()) != p.uid().as_ref();
                        let deleting = p.metadata.deletion_timestamp.is_some();
                        if (fresh && original.contains_key(&p.name_any())) || deleting {
                            seen.push(format!(
                                "{} {} uid {:?}",
                                if deleting { "deleting" } else { "re-created" },
                                p.name_any(),
                                p.uid()
                            ));
                        }
                    }
                    _ => {}
                }
            }
        })
    };

    // The upgrade: the same control plane, now with this release's syncer.
    t.stop();
    t.extra_args.clear();
    t.spawn();
    t.wait_ready();

    // Adopted: the host's truth reaches the virtual pods (node, IP, Running), and the syncer
    // took the host pods over (it writes its own desired hash: the golden one covers the
    // placeholder UID).
    let vpods = |ns: &str| Api::<Pod>::namespaced(virt.clone(), ns);
    for (vns, vname) in running {
        let hname = host_name_of(vname);
        let status = eventually(
            &format!("virtual pod {vns}/{vname} shows its host pod's status"),
            LONG,
            || async {
                let v = vpods(vns).get(vname).await.ok()?;
                let hp = host_pods.get(&hname).await.ok()?;
                let (vs, hs) = (v.status?, hp.status?);
                (vs.phase.as_deref() == Some("Running")
                    && vs.pod_ip.is_some()
                    && vs.pod_ip == hs.pod_ip)
                    .then_some(vs)
            },
        )
        .await;
        assert!(status.pod_ip.is_some());
    }
    for (name, before) in &pods {
        let golden_hash = before.annotations().get("vkube.dev/desired-hash").cloned();
        eventually(
            &format!("the syncer took host pod {name} over"),
            LONG,
            || async {
                let p = host_pods.get(name).await.ok()?;
                (p.annotations().get("vkube.dev/desired-hash") != golden_hash.as_ref())
                    .then_some(())
            },
        )
        .await;
    }
    // A garbage-collection sweep runs once the caches are ready: let one more pass by.
    tokio::time::sleep(Duration::from_secs(10)).await;

    for (name, before) in &pods {
        let now = host_pods.get(name).await.unwrap();
        assert_eq!(now.uid(), before.uid(), "host pod {name} kept its UID");
        assert!(
            now.metadata.deletion_timestamp.is_none(),
            "{name} not deleted"
        );
        assert_eq!(images(&now), images(before), "{name} runs the same images");
    }
    let events = seen.lock().unwrap().clone();
    assert!(
        events.is_empty(),
        "host pods were deleted or re-created: {events:?}"
    );
    watch.abort();

    let same_uid = |what: &str, before: Option<String>, now: Option<String>| {
        assert_eq!(
            now, before,
            "host {what} kept its UID (adopted, not re-created)"
        );
    };
    same_uid(
        "configmap",
        cm.uid(),
        Api::<ConfigMap>::namespaced(host.clone(), &ns)
            .get(&cm.name_any())
            .await
            .unwrap()
            .uid(),
    );
    same_uid(
        "secret",
        secret.uid(),
        Api::<Secret>::namespaced(host.clone(), &ns)
            .get(&secret.name_any())
            .await
            .unwrap()
            .uid(),
    );
    same_uid(
        "service",
        svc.uid(),
        Api::<Service>::namespaced(host.clone(), &ns)
            .get(&svc.name_any())
            .await
            .unwrap()
            .uid(),
    );
    same_uid(
        "claim",
        claim.uid(),
        Api::<PersistentVolumeClaim>::namespaced(host.clone(), &ns)
            .get(&claim.name_any())
            .await
            .unwrap()
            .uid(),
    );

    // Adoption, not a conflict: the syncer recognised every object as its own.
    for vns in ["shop", "team-a"] {
        let conflicts: Vec<String> = Api::<Event>::namespaced(virt.clone(), vns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                matches!(
                    e.reason.as_deref(),
                    Some("HostNameConflict" | "HostPodDeleted" | "HostRejected")
                )
            })
            .map(|e| format!("{:?}: {:?}", e.reason, e.message))
            .collect();
        assert!(conflicts.is_empty(), "{vns}: {conflicts:?}");
    }
}
