//! Upgrading vkube: host objects written by the previous release (the golden files under
//! tests/golden/, which the unit test `translate::golden` holds the current mapping to) are
//! adopted by the current syncer without a pod being deleted, re-created or given a new image.
//!
//! The previous release is played faithfully: the virtual objects are made by the tenant's own
//! control plane (so their UIDs are real), and the host copies are written from the golden files
//! exactly as that release's syncer created them (its ownership labels and annotations, its
//! desired hash, vkube's field manager), with the real virtual UID where the golden file has the
//! placeholder. Then `vkube serve` restarts with the syncer on, as an upgrade does.
//!
//! Besides pods (the objects an upgrade must not restart), the host copies of the other kinds
//! the syncer writes are adopted, not re-created: ConfigMap, Secret and Services keep their host
//! UIDs; a selector-less Service with its Endpoints and a hand-written EndpointSlice, an Ingress,
//! a NetworkPolicy, a PodDisruptionBudget and a custom resource also get exactly the desired
//! hash of the golden object with the real UID (the syncer's desired object is the golden one,
//! field for field).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::common::{self, Tenant, eventually};

/// The tenant and virtual UID the golden files were made for (tests/golden/README.md).
const GOLDEN_TENANT: &str = "gold";
const GOLDEN_UID: &str = "00000000-0000-4000-8000-000000000000";
const LONG: Duration = Duration::from_secs(90);
/// The admin's settings the golden files were translated under (src/translate/golden.rs).
const GOLDEN_POLICY: &[&str] = &[
    "--ingress-host-suffix",
    "{name}.apps.example.com",
    "--ingress-class",
    "nginx",
    "--default-ingress-class",
    "nginx",
    "--allow-annotation",
    "nginx.ingress.kubernetes.io/*",
    "--endpoint-allow-cidr",
    "192.168.50.0/24",
    "--egress-allow-cidr",
    "192.168.50.0/24",
];
/// The custom kind of tests/golden/customresources/ as the admin configures it (CUSTOM_KIND in
/// src/translate/golden.rs).
const CUSTOM_KIND: &str = "e2e.vkube.dev/v1/Widget:spec.secretRef.name=Secret,spec.backend=Service,\
spec.configs[].name=ConfigMap,spec.claim=PersistentVolumeClaim,spec.gadget=Gadget.e2e.vkube.dev,\
spec.selector=Selector,spec.nodeName=-";

/// Events that would mean the syncer did not adopt an object as it was (a conflict, a refusal,
/// a copy it had to delete, or a translation that differs from the golden one).
const NOT_ADOPTED: &[&str] = &[
    "HostNameConflict",
    "HostPodDeleted",
    "HostRejected",
    "IngressNotAllowed",
    "IngressAnnotationDropped",
    "IngressBackendNotSupported",
    "NetworkPolicyNotSynced",
    "EndpointAddressRefused",
    "HostPolicyViolation",
];

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

/// A namespaced kind with golden cases: what creating it on both sides needs.
trait GoldenKind:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::Serialize
    + DeserializeOwned
{
}

impl<K> GoldenKind for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + DeserializeOwned
{
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
    K: GoldenKind,
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

/// The desired hash the current syncer stamps on a host copy whose desired object is exactly the
/// golden one with the real virtual UID (the golden file's own hash covers the placeholder).
fn golden_hash<K>(kind: &str, case: &str, field: Option<&str>, uid: &str) -> String
where
    K: DeserializeOwned + serde::Serialize + Resource,
{
    let mut h: K = golden_host(kind, case, field, uid);
    if let Some(a) = h.meta_mut().annotations.as_mut() {
        a.remove("vkube.dev/desired-hash");
    }
    vkube::translate::desired_hash(&h)
}

/// A golden case written by the previous release, with what adoption must look like.
struct Written {
    what: String,
    name: String,
    uid: Option<String>,
    hash: String,
}

/// [`previous_release`] for kinds the syncer writes whole (`apply::ensure`): remembers the host
/// UID and the hash an adopting syncer stamps.
async fn written<K>(
    virt: &Client,
    host: &Client,
    host_ns: &str,
    kind: &str,
    case: &str,
    field: Option<&str>,
) -> Written
where
    K: GoldenKind,
{
    let h: K = previous_release(virt, host, host_ns, kind, case, field).await;
    let vuid = h
        .annotations()
        .get("vkube.dev/uid")
        .cloned()
        .unwrap_or_default();
    Written {
        what: format!("{kind}/{case}"),
        name: h.name_any(),
        uid: h.uid(),
        hash: golden_hash::<K>(kind, case, field, &vuid),
    }
}

/// Adopted: the syncer stamped the hash of the golden object (it manages the copy, and its
/// desired object is the golden one), on the host object the previous release created.
async fn assert_adopted<K>(api: Api<K>, w: &Written)
where
    K: Resource + Clone + std::fmt::Debug + DeserializeOwned,
{
    let last = Arc::new(Mutex::new(None::<String>));
    let seen = last.clone();
    let adopted = tokio::time::timeout(LONG, async {
        loop {
            if let Ok(Some(h)) = api.get_opt(&w.name).await {
                let hash = h.annotations().get("vkube.dev/desired-hash").cloned();
                if hash.as_deref() == Some(w.hash.as_str()) {
                    return h;
                }
                *seen.lock().unwrap() = Some(format!("{hash:?}: {h:?}"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{}: the syncer never stamped the golden object's hash {} on host {} (its desired \
             object differs from the golden file, or it never took the copy over); last seen: {:?}",
            w.what,
            w.hash,
            w.name,
            last.lock().unwrap()
        )
    });
    assert_eq!(
        adopted.uid(),
        w.uid,
        "{}: host {} kept its UID (adopted, not re-created)",
        w.what,
        w.name
    );
    assert!(
        adopted.meta().deletion_timestamp.is_none(),
        "{} not deleted",
        w.what
    );
    assert_eq!(
        adopted
            .labels()
            .get("vkube.dev/managed-by")
            .map(String::as_str),
        Some(GOLDEN_TENANT),
        "{}: still the tenant's",
        w.what
    );
}

fn widgets() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(crate::custom_resources::GROUP, "v1", "Widget"),
        "widgets",
    )
}

/// [`written`] for the golden custom resource: the virtual Widget, and its host copy as the
/// previous release's custom-resource syncer wrote it.
async fn written_widget(virt: &Client, host: &Client, host_ns: &str, case: &str) -> Written {
    let kind = "customresources";
    let v: DynamicObject = golden_input(kind, case);
    let ns = v.metadata.namespace.clone().unwrap();
    let created = Api::<DynamicObject>::namespaced_with(virt.clone(), &ns, &widgets())
        .create(&PostParams::default(), &v)
        .await
        .unwrap_or_else(|e| panic!("virtual {kind}/{case}: {e}"));
    let vuid = created.uid().unwrap();
    let h: DynamicObject = golden_host(kind, case, Some("object"), &vuid);
    let pp = PostParams {
        field_manager: Some("vkube".into()),
        ..Default::default()
    };
    let h = Api::<DynamicObject>::namespaced_with(host.clone(), host_ns, &widgets())
        .create(&pp, &h)
        .await
        .unwrap_or_else(|e| panic!("host copy of {kind}/{case}: {e}"));
    let mut want: DynamicObject = golden_host(kind, case, Some("object"), &vuid);
    if let Some(a) = want.metadata.annotations.as_mut() {
        a.remove("vkube.dev/desired-hash");
    }
    Written {
        what: format!("{kind}/{case}"),
        name: h.name_any(),
        uid: h.uid(),
        hash: vkube::translate::desired_hash(&want),
    }
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
    t.extra_args
        .extend(GOLDEN_POLICY.iter().map(|a| a.to_string()));
    t.extra_args.extend([
        "--sync-custom-resource".to_string(),
        CUSTOM_KIND.to_string(),
    ]);
    // The host serves the custom kind and the admin let vkube manage it (as for
    // custom_resources::).
    crate::custom_resources::install_host_crds();
    crate::custom_resources::grant_custom_kinds(&t);
    t.spawn();
    t.wait_ready();
    let virt = t.client().await;
    let host = common::host_client().await;
    t.create_namespace("shop");
    t.create_namespace("team-a");
    // The previous release's syncer had installed the host's CRD in the virtual cluster.
    let crd = crate::custom_resources::crd("Widget", "widgets");
    let out = common::kubectl(&t.kubeconfig, &["apply", "-f", "-"], Some(&crd));
    assert!(out.status.success(), "virtual CRD: {out:?}");
    t.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        &format!("crd/widgets.{}", crate::custom_resources::GROUP),
    ]);
    // The golden namespaces' labels (a NetworkPolicy peer selects team-a by them).
    t.kubectl_ok(&["label", "namespace", "team-a", "team=a"]);

    let ns = t.namespace.clone();
    let cm: ConfigMap = previous_release(&virt, &host, &ns, "configmaps", "web-config", None).await;
    let secret: Secret = previous_release(&virt, &host, &ns, "secrets", "web-secret", None).await;
    let svc: Service = previous_release(&virt, &host, &ns, "services", "db", Some("service")).await;
    let claim: PersistentVolumeClaim =
        previous_release(&virt, &host, &ns, "pvcs", "data-db-0", Some("claim")).await;
    // Every other kind the syncer writes, from the golden files (the selector-less Service
    // first: its Endpoints and slices are synced only while it exists).
    let external_db = written::<Service>(
        &virt,
        &host,
        &ns,
        "services",
        "external-db",
        Some("service"),
    )
    .await;
    let endpoints = written::<Endpoints>(
        &virt,
        &host,
        &ns,
        "endpoints",
        "external-db",
        Some("endpoints"),
    )
    .await;
    let slice = written::<EndpointSlice>(
        &virt,
        &host,
        &ns,
        "endpointslices",
        "external-db-manual",
        Some("slice"),
    )
    .await;
    let ingress = written::<Ingress>(&virt, &host, &ns, "ingresses", "web", Some("ingress")).await;
    let policy = written::<NetworkPolicy>(
        &virt,
        &host,
        &ns,
        "networkpolicies",
        "web-ingress",
        Some("policy"),
    )
    .await;
    let budget = written::<PodDisruptionBudget>(&virt, &host, &ns, "pdbs", "web", None).await;
    let widget = written_widget(&virt, &host, &ns, "widget").await;
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
    t.extra_args.retain(|a| a != "--no-sync");
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

    assert_adopted::<Service>(Api::namespaced(host.clone(), &ns), &external_db).await;
    assert_adopted::<Endpoints>(Api::namespaced(host.clone(), &ns), &endpoints).await;
    assert_adopted::<EndpointSlice>(Api::namespaced(host.clone(), &ns), &slice).await;
    assert_adopted::<Ingress>(Api::namespaced(host.clone(), &ns), &ingress).await;
    assert_adopted::<NetworkPolicy>(Api::namespaced(host.clone(), &ns), &policy).await;
    assert_adopted::<PodDisruptionBudget>(Api::namespaced(host.clone(), &ns), &budget).await;
    assert_adopted(
        Api::<DynamicObject>::namespaced_with(host.clone(), &ns, &widgets()),
        &widget,
    )
    .await;

    // Adoption, not a conflict: the syncer recognised every object as its own.
    for vns in ["shop", "team-a"] {
        let conflicts: Vec<String> = Api::<Event>::namespaced(virt.clone(), vns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                e.reason
                    .as_deref()
                    .is_some_and(|r| NOT_ADOPTED.contains(&r))
            })
            .map(|e| format!("{:?}: {:?}", e.reason, e.message))
            .collect();
        assert!(conflicts.is_empty(), "{vns}: {conflicts:?}");
    }
}
