//! The opt-in cluster-read grant (manifests/serve-cluster-rbac.yaml) against the real host with
//! kwok nodes: virtual nodes mirror host nodes (or stay pseudo-nodes by flag), the host's
//! StorageClasses and PersistentVolumes of the tenant's claims show read-only, and without the
//! grant everything else keeps working.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use crate::common::{self, Tenant, eventually};
use crate::syncer::{LONG, apply};

const VIRTUAL_NODE_LABEL: &str = "vkube.dev/virtual-node";
const HOST_MIRROR: &str = "vkube.dev/host-mirror";

fn host_kubectl(args: &[&str], stdin: Option<&str>) {
    let out = common::kubectl(&common::env().host_kubeconfig, args, stdin);
    assert!(
        out.status.success(),
        "host kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A kwok node of this test's own (kwok manages every node with the annotation), so changing
/// or deleting it disturbs no other test: tainted, so only the pod that tolerates it lands there.
fn add_host_node(name: &str) {
    host_kubectl(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  annotations: {{kwok.x-k8s.io/node: fake}}\n  labels: {{type: kwok, kubernetes.io/hostname: {name}, kubernetes.io/os: linux, e2e-mark: v1}}\nspec:\n  taints: [{{key: {OWN_NODE_TAINT}, value: {name}, effect: NoSchedule}}]\nstatus:\n  capacity: {{cpu: \"7\", memory: 9Gi, pods: \"110\"}}\n  allocatable: {{cpu: \"6\", memory: 8Gi, pods: \"110\"}}\n"
        )),
    );
}

const OWN_NODE_TAINT: &str = "e2e-own-node";

fn pod_on(name: &str, node_selector: Option<&str>) -> String {
    let selector = node_selector
        .map(|n| {
            format!(
                "  nodeSelector: {{kubernetes.io/hostname: {n}}}\n  tolerations: [{{key: {OWN_NODE_TAINT}, operator: Exists}}]\n"
            )
        })
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{selector}  containers: [{{name: main, image: busybox}}]\n"
    )
}

/// The virtual node the pod was bound to, once it is.
async fn node_of(virt: &Client, pod: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(virt.clone(), "default");
    eventually("the virtual pod is bound to a node", LONG, || async {
        pods.get(pod).await.ok()?.spec?.node_name
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn real_nodes_mirror_their_host_node_and_follow_it() {
    // The own node's taint is the one toleration this tenant's pods may carry.
    let t = Tenant::start_with_cluster_read("realnode", &["--allow-toleration", OWN_NODE_TAINT]);
    let virt = t.client().await;
    let host = common::host_client().await;
    let node_name = format!("kwok-{}", t.name);
    add_host_node(&node_name);
    apply(&t, &pod_on("pinned", Some(&node_name)));
    assert_eq!(node_of(&virt, "pinned").await, node_name);

    let hnodes: Api<Node> = Api::all(host.clone());
    let vnodes: Api<Node> = Api::all(virt.clone());
    let vnode = eventually("the virtual node mirrors its host node", LONG, || async {
        let h = hnodes.get(&node_name).await.ok()?;
        let v = vnodes.get(&node_name).await.ok()?;
        let (hs, vs) = (h.status?, v.status.clone()?);
        (v.labels().get("e2e-mark").map(String::as_str) == Some("v1")
            && hs.addresses.is_some()
            && vs.addresses == hs.addresses
            && vs.capacity == hs.capacity
            && vs.allocatable == hs.allocatable
            && vs.node_info == hs.node_info)
            .then_some(v)
    })
    .await;
    let labels = vnode.labels();
    assert_eq!(labels[VIRTUAL_NODE_LABEL], "true");
    assert_eq!(labels["type"], "kwok");
    let taints = vnode.spec.clone().unwrap().taints.unwrap();
    assert_eq!(
        (taints[0].key.as_str(), taints[0].value.as_deref()),
        (OWN_NODE_TAINT, Some(node_name.as_str()))
    );
    let status = vnode.status.unwrap();
    assert_eq!(status.capacity.unwrap()["cpu"].0, "7");
    assert_eq!(status.allocatable.unwrap()["memory"].0, "8Gi");
    let ready = status
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .expect("a Ready condition, from kwok");
    assert_eq!(ready.status, "True");
    assert_eq!(status.images, None, "other tenants' images are not shown");

    // A host change shows at once.
    let started = std::time::Instant::now();
    host_kubectl(
        &["label", "node", &node_name, "e2e-mark=v2", "--overwrite"],
        None,
    );
    eventually(
        "the host label change reaches the virtual node",
        LONG,
        || async {
            let v = vnodes.get(&node_name).await.ok()?;
            (v.labels().get("e2e-mark").map(String::as_str) == Some("v2")).then_some(())
        },
    )
    .await;
    let followed = started.elapsed();
    assert!(
        followed < Duration::from_secs(10),
        "took {followed:?} to follow a host label change"
    );
    // A label the host drops goes; one the tenant added stays.
    t.kubectl_ok(&["label", "node", &node_name, "team=a"]);
    host_kubectl(&["label", "node", &node_name, "type-"], None);
    eventually(
        "the dropped host label leaves the virtual node",
        LONG,
        || async {
            let v = vnodes.get(&node_name).await.ok()?;
            (!v.labels().contains_key("type")).then_some(v)
        },
    )
    .await;
    let v = vnodes.get(&node_name).await.unwrap();
    assert_eq!(v.labels().get("team").map(String::as_str), Some("a"));
    // A mirrored label the tenant changes is put back.
    t.kubectl_ok(&["label", "node", &node_name, "e2e-mark=mine", "--overwrite"]);
    eventually("the host's label value is put back", LONG, || async {
        let v = vnodes.get(&node_name).await.ok()?;
        (v.labels().get("e2e-mark").map(String::as_str) == Some("v2")).then_some(())
    })
    .await;
    println!("a host label change reached the virtual node in {followed:?}");

    // The host node goes: so does the virtual one.
    host_kubectl(&["delete", "node", &node_name, "--wait=false"], None);
    eventually(
        "the virtual node is removed with its host node",
        LONG,
        || async {
            vnodes
                .get_opt(&node_name)
                .await
                .ok()
                .and_then(|n| n.is_none().then_some(()))
        },
    )
    .await;
    let log = std::fs::read_to_string(&t.log).unwrap_or_default();
    assert!(
        !log.contains("showing pseudo-nodes instead"),
        "the grant was there: {}",
        t.log_tail()
    );
}

/// A pod that names its node itself (`nodeName`: pinned pods, and every pod of upstream's e2e
/// framework that picks a node) is never bound by the syncer, yet its node must appear: without
/// it the virtual cluster lists no node (the conformance suite refuses to start) and the virtual
/// PodGC deletes the pod as bound to a node that does not exist.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_naming_its_node_shows_that_node() {
    let t = Tenant::start_with_cluster_read("namednode", &["--allow-toleration", OWN_NODE_TAINT]);
    let virt = t.client().await;
    let node_name = format!("kwok-{}", t.name);
    add_host_node(&node_name);
    apply(
        &t,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: named, namespace: default}}\nspec:\n  nodeName: {node_name}\n  tolerations: [{{key: {OWN_NODE_TAINT}, operator: Exists}}]\n  containers: [{{name: main, image: busybox}}]\n"
        ),
    );
    let vnodes: Api<Node> = Api::all(virt.clone());
    let pods: Api<Pod> = Api::namespaced(virt.clone(), "default");
    eventually(
        "the node the pod names appears, mirrored, and the pod runs",
        LONG,
        || async {
            let v = vnodes.get_opt(&node_name).await.ok().flatten()?;
            let phase = pods.get("named").await.ok()?.status?.phase;
            (v.labels().get("type").map(String::as_str) == Some("kwok")
                && phase.as_deref() == Some("Running"))
            .then_some(())
        },
    )
    .await;
    host_kubectl(&["delete", "node", &node_name, "--wait=false"], None);
}

#[tokio::test(flavor = "multi_thread")]
async fn pseudo_nodes_by_flag_hide_the_host() {
    let t = Tenant::start_with_cluster_read("pseudonode", &["--node-sync", "pseudo"]);
    let virt = t.client().await;
    apply(&t, &pod_on("anywhere", None));
    let node = node_of(&virt, "anywhere").await;
    let vnodes: Api<Node> = Api::all(virt.clone());
    let v = eventually("a pseudo-node", LONG, || async {
        vnodes.get_opt(&node).await.ok().flatten()
    })
    .await;
    assert_eq!(v.labels()[VIRTUAL_NODE_LABEL], "true");
    assert!(
        !v.labels().contains_key("type"),
        "host labels are hidden: {:?}",
        v.labels()
    );
    let ready = &v.status.unwrap().conditions.unwrap()[0];
    assert_eq!(ready.reason.as_deref(), Some("HostNodeRunsTenantPods"));
}

/// Host objects for a claim of this tenant: a class and a volume it can bind to right away.
fn host_class_and_volume(class: &str) {
    host_kubectl(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {{name: {class}, labels: {{e2e: storage}}}}\nprovisioner: kubernetes.io/no-provisioner\nvolumeBindingMode: Immediate\nreclaimPolicy: Retain\n---\napiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {class}}}\nspec: {{capacity: {{storage: 1Gi}}, accessModes: [ReadWriteOnce], storageClassName: {class}, persistentVolumeReclaimPolicy: Retain, hostPath: {{path: /tmp/{class}}}}}\n"
        )),
    );
}

fn remove_host_class_and_volume(class: &str) {
    let _ = common::kubectl(
        &common::env().host_kubeconfig,
        &[
            "delete",
            "pv,storageclass",
            class,
            "--ignore-not-found",
            "--wait=false",
        ],
        None,
    );
}

fn claim(class: &str) -> String {
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: data, namespace: default}}\nspec: {{accessModes: [ReadWriteOnce], storageClassName: {class}, resources: {{requests: {{storage: 1Gi}}}}}}\n"
    )
}

async fn bound_claim(virt: &Client) -> PersistentVolumeClaim {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(virt.clone(), "default");
    eventually("the virtual claim is Bound", LONG, || async {
        let c = claims.get("data").await.ok()?;
        (c.status.as_ref()?.phase.as_deref() == Some("Bound")).then_some(c)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_classes_and_volumes_of_claims_are_shown_read_only() {
    let t = Tenant::start_with_cluster_read("storage", &[]);
    let virt = t.client().await;
    let class = format!("e2e-{}", t.name);
    host_class_and_volume(&class);
    apply(&t, &claim(&class));
    bound_claim(&virt).await;

    let vclasses: Api<StorageClass> = Api::all(virt.clone());
    let vvolumes: Api<PersistentVolume> = Api::all(virt.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(virt.clone(), "default");
    let sc = eventually("the virtual StorageClass", LONG, || async {
        vclasses.get_opt(&class).await.ok().flatten()
    })
    .await;
    assert_eq!(sc.provisioner, "kubernetes.io/no-provisioner");
    assert_eq!(sc.reclaim_policy.as_deref(), Some("Retain"));
    assert_eq!(sc.labels()[HOST_MIRROR], "true");
    assert_eq!(sc.labels()["e2e"], "storage");
    let pv = eventually("the virtual PersistentVolume, Bound", LONG, || async {
        let pv = vvolumes.get_opt(&class).await.ok().flatten()?;
        (pv.status.as_ref()?.phase.as_deref() == Some("Bound")).then_some(pv)
    })
    .await;
    let vclaim = eventually("the claim's volumeName names it", LONG, || async {
        let c = claims.get("data").await.ok()?;
        (c.spec.as_ref()?.volume_name.as_deref() == Some(class.as_str())).then_some(c)
    })
    .await;
    let spec = pv.spec.unwrap();
    let claim_ref = spec.claim_ref.unwrap();
    assert_eq!(
        (
            claim_ref.namespace.as_deref(),
            claim_ref.name.as_deref(),
            claim_ref.uid.as_deref()
        ),
        (
            Some("default"),
            Some("data"),
            vclaim.metadata.uid.as_deref()
        )
    );
    assert_eq!(spec.capacity.unwrap()["storage"].0, "1Gi");
    assert_eq!(spec.storage_class_name.as_deref(), Some(class.as_str()));

    // Read-only, even for the tenant's cluster-admin (the policy may take a moment to load).
    let refused = |args: &[&str]| {
        let out = t.kubectl(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (!out.status.success() && err.contains("read-only")).then_some(err)
    };
    eventually("deleting the virtual PV is refused", LONG, || async {
        refused(&["delete", "pv", &class, "--wait=false"])
    })
    .await;
    eventually(
        "changing the virtual StorageClass is refused",
        LONG,
        || async { refused(&["label", "storageclass", &class, "mine=yes"]) },
    )
    .await;
    assert!(vvolumes.get_opt(&class).await.unwrap().is_some());
    assert!(vclasses.get_opt(&class).await.unwrap().is_some());
    // The tenant's own classes are theirs to change.
    apply(
        &t,
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: tenants-own}\nprovisioner: example.com/none\n",
    );
    t.kubectl_ok(&["label", "storageclass", "tenants-own", "mine=yes"]);
    t.kubectl_ok(&["delete", "storageclass", "tenants-own"]);

    // No claim uses them any more: they go.
    t.kubectl_ok(&["delete", "pvc", "data", "--wait=false"]);
    eventually("the mirrors are removed with the claim", LONG, || async {
        let pv = vvolumes.get_opt(&class).await.ok()?;
        let sc = vclasses.get_opt(&class).await.ok()?;
        (pv.is_none() && sc.is_none()).then_some(())
    })
    .await;
    remove_host_class_and_volume(&class);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_cluster_role_nothing_breaks() {
    let t = Tenant::start("nogrant");
    let virt = t.client().await;
    let class = format!("e2e-{}", t.name);
    host_class_and_volume(&class);
    apply(&t, &claim(&class));
    apply(&t, &pod_on("plain", None));
    let node = node_of(&virt, "plain").await;
    bound_claim(&virt).await;
    let vnodes: Api<Node> = Api::all(virt.clone());
    let v = eventually("a pseudo-node", LONG, || async {
        vnodes.get_opt(&node).await.ok().flatten()
    })
    .await;
    assert_eq!(
        v.status.unwrap().conditions.unwrap()[0].reason.as_deref(),
        Some("HostNodeRunsTenantPods")
    );
    // Nothing is mirrored, and the log says once why, with the fix.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let vvolumes: Api<PersistentVolume> = Api::all(virt.clone());
    let vclasses: Api<StorageClass> = Api::all(virt.clone());
    assert!(
        vvolumes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(vclasses.get_opt(&class).await.unwrap().is_none());
    let log = std::fs::read_to_string(&t.log).unwrap_or_default();
    for warning in [
        "showing pseudo-nodes instead",
        "they are not shown in the virtual cluster (claims still work)",
    ] {
        assert_eq!(
            log.matches(warning).count(),
            1,
            "one warning {warning:?}:\n{}",
            t.log_tail()
        );
    }
    assert!(log.contains("manifests/serve-cluster-rbac.yaml"));
    remove_host_class_and_volume(&class);
}

#[tokio::test(flavor = "multi_thread")]
async fn switching_to_pseudo_and_off_hides_what_was_shown() {
    let mut t = Tenant::start_with_cluster_read("switchoff", &[]);
    let class = format!("e2e-{}", t.name);
    host_class_and_volume(&class);
    apply(&t, &claim(&class));
    apply(&t, &pod_on("shown", None));
    let virt = t.client().await;
    let node = node_of(&virt, "shown").await;
    let vnodes: Api<Node> = Api::all(virt.clone());
    let vvolumes: Api<PersistentVolume> = Api::all(virt.clone());
    eventually("a mirrored node and volume", LONG, || async {
        let n = vnodes.get_opt(&node).await.ok()??;
        let pv = vvolumes.get_opt(&class).await.ok()??;
        (n.labels().contains_key("type") && pv.labels().contains_key(HOST_MIRROR)).then_some(())
    })
    .await;

    t.stop();
    t.extra_args = ["--node-sync", "pseudo", "--storage-sync", "off"]
        .map(String::from)
        .to_vec();
    t.spawn();
    t.wait_ready();
    let virt = t.client().await;
    let vnodes: Api<Node> = Api::all(virt.clone());
    let vvolumes: Api<PersistentVolume> = Api::all(virt.clone());
    let vclasses: Api<StorageClass> = Api::all(virt.clone());
    eventually(
        "the node is a pseudo-node and the mirrors are gone",
        LONG,
        || async {
            let n = vnodes.get_opt(&node).await.ok()??;
            let reason = n.status.as_ref()?.conditions.as_ref()?[0].reason.clone();
            let hidden = !n.labels().contains_key("type")
                && reason.as_deref() == Some("HostNodeRunsTenantPods");
            let pv = vvolumes.get_opt(&class).await.ok()?;
            let sc = vclasses.get_opt(&class).await.ok()?;
            (hidden && pv.is_none() && sc.is_none()).then_some(())
        },
    )
    .await;
    // The claim itself is untouched and still shows the host's binding.
    bound_claim(&virt).await;
    remove_host_class_and_volume(&class);
}
