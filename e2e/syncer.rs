//! The syncer, against a real host cluster with kwok nodes: virtual workloads become host pods
//! under translated names in the tenant's host namespace, and their truth flows back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Node, PersistentVolumeClaim, Pod, Secret, Service, ServicePort,
    ServiceSpec,
};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};

use crate::common::{self, Tenant, eventually};

pub(crate) const LONG: Duration = Duration::from_secs(60);

pub(crate) fn deployment(ns: &str, name: &str, replicas: u32, image: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers: [{{name: main, image: {image}, ports: [{{containerPort: 80}}]}}]
"#
    )
}

pub(crate) fn apply(t: &Tenant, yaml: &str) {
    let out = common::kubectl(&t.kubeconfig, &["apply", "-f", "-"], Some(yaml));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Host pods of tenant `t` that came from virtual namespace `ns`.
pub(crate) async fn host_pods(host: &Client, t: &Tenant, ns: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(host.clone(), &t.namespace)
        .list(&ListParams::default().labels(&format!(
            "vkube.dev/managed-by={},vkube.dev/namespace={ns}",
            t.name
        )))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

fn running_ready(p: &Pod) -> bool {
    let s = p.status.clone().unwrap_or_default();
    s.phase.as_deref() == Some("Running")
        && s.conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Waits until `n` pods of `ns` run on both sides and the virtual side tells the host's truth:
/// each virtual pod is Running, and Ready exactly when its host pod is (a loaded host may mark
/// pods not ready; the virtual status must follow, not hide it).
pub(crate) async fn wait_replicas(host: &Client, t: &Tenant, virt: &Client, ns: &str, n: usize) {
    wait_replicas_within(host, t, virt, ns, n, LONG).await
}

async fn wait_replicas_within(
    host: &Client,
    t: &Tenant,
    virt: &Client,
    ns: &str,
    n: usize,
    timeout: Duration,
) {
    let vpods: Api<Pod> = Api::namespaced(virt.clone(), ns);
    let phase = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.clone());
    eventually(
        &format!("{n} running pods on both sides of {ns}"),
        timeout,
        || async {
            let h: Vec<Pod> = host_pods(host, t, ns)
                .await
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let v = vpods.list(&ListParams::default()).await.ok()?.items;
            let host_ready: BTreeSet<String> = h
                .iter()
                .filter(|p| running_ready(p))
                .filter_map(|p| p.annotations().get("vkube.dev/name").cloned())
                .collect();
            let virtual_ready: BTreeSet<String> = v
                .iter()
                .filter(|p| running_ready(p))
                .map(|p| p.name_any())
                .collect();
            (h.len() == n
                && v.len() == n
                && h.iter()
                    .chain(&v)
                    .all(|p| phase(p).as_deref() == Some("Running"))
                && host_ready == virtual_ready)
                .then_some(())
        },
    )
    .await;
}

async fn events_for(virt: &Client, ns: &str, name: &str) -> Vec<Event> {
    Api::<Event>::namespaced(virt.clone(), ns)
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

pub(crate) async fn wait_event(virt: &Client, ns: &str, name: &str, reason: &str) -> Event {
    eventually(&format!("event {reason} on {ns}/{name}"), LONG, || async {
        events_for(virt, ns, name)
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some(reason))
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_runs_on_the_host_scales_and_rolls() {
    let t = Tenant::start("deploy");
    let virt = t.client().await;
    let host = common::host_client().await;
    t.create_namespace("shop");
    apply(&t, &deployment("shop", "web", 3, "registry.local/web:1"));
    wait_replicas(&host, &t, &virt, "shop", 3).await;

    // Names are translated, status is the host's truth, pods sit on virtual nodes.
    let vpods = Api::<Pod>::namespaced(virt.clone(), "shop")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let hpods = host_pods(&host, &t, "shop").await;
    for v in &vpods {
        let host_name = format!("{}-x-shop-x-{}", v.name_any(), t.name);
        let h = hpods
            .iter()
            .find(|h| h.name_any() == host_name)
            .unwrap_or_else(|| panic!("no host pod {host_name}"));
        let (vs, hs) = (v.status.clone().unwrap(), h.status.clone().unwrap());
        assert_eq!(vs.pod_ip, hs.pod_ip);
        assert!(vs.pod_ip.is_some());
        let node = v.spec.as_ref().unwrap().node_name.clone().unwrap();
        assert_eq!(Some(&node), h.spec.as_ref().unwrap().node_name.as_ref());
        Api::<Node>::all(virt.clone()).get(&node).await.unwrap();
        assert_eq!(
            h.annotations().get("vkube.dev/uid"),
            v.metadata.uid.as_ref()
        );
    }

    // What the host said about the pod (the scheduler's decision) shows on the virtual pod.
    let ev = wait_event(&virt, "shop", &vpods[0].name_any(), "Scheduled").await;
    let message = ev.message.unwrap_or_default();
    assert!(
        message.contains(&format!("assigned shop/{} to", vpods[0].name_any())),
        "host scheduling event copied in the tenant's names: {message}"
    );
    assert!(
        !message.contains(&t.namespace) && !message.contains("-x-"),
        "no host names in copied events: {message}"
    );

    t.kubectl_ok(&["scale", "-n", "shop", "deployment/web", "--replicas=5"]);
    wait_replicas(&host, &t, &virt, "shop", 5).await;

    // Rolling update: every host pod ends up with the new image.
    t.kubectl_ok(&[
        "set",
        "image",
        "-n",
        "shop",
        "deployment/web",
        "main=registry.local/web:2",
    ]);
    eventually("all host pods run image web:2", LONG, || async {
        let h = host_pods(&host, &t, "shop").await;
        let live: Vec<_> = h
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        (live.len() == 5
            && live.iter().all(|p| {
                p.spec.as_ref().unwrap().containers[0].image.as_deref()
                    == Some("registry.local/web:2")
            }))
        .then_some(())
    })
    .await;
    wait_replicas(&host, &t, &virt, "shop", 5).await;

    // Scale to zero: nothing left on either side, and the virtual nodes go too.
    t.kubectl_ok(&["scale", "-n", "shop", "deployment/web", "--replicas=0"]);
    wait_replicas(&host, &t, &virt, "shop", 0).await;
    eventually("unused virtual nodes are removed", LONG, || async {
        let nodes = Api::<Node>::all(virt.clone())
            .list(&ListParams::default())
            .await
            .ok()?;
        nodes.items.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn services_and_endpoints_are_true_on_both_sides() {
    let t = Tenant::start("svc");
    let virt = t.client().await;
    let host = common::host_client().await;
    apply(&t, &deployment("default", "api", 2, "registry.local/api:1"));
    t.kubectl_ok(&[
        "expose",
        "deployment",
        "api",
        "--port=8080",
        "--target-port=80",
    ]);
    wait_replicas(&host, &t, &virt, "default", 2).await;

    let host_svc_name = format!("api-x-default-x-{}", t.name);
    let hsvc: Api<Service> = Api::namespaced(host.clone(), &t.namespace);
    let svc = eventually("host service exists", LONG, || async {
        hsvc.get_opt(&host_svc_name).await.ok().flatten()
    })
    .await;
    let spec = svc.spec.unwrap();
    let selector = spec.selector.unwrap();
    assert_eq!(selector["app"], "api");
    assert_eq!(selector["vkube.dev/namespace"], "default");
    assert_eq!(selector["vkube.dev/managed-by"], t.name);
    assert_eq!(spec.ports.unwrap()[0].port, 8080);

    let pod_ips: BTreeSet<String> = host_pods(&host, &t, "default")
        .await
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    let endpoint_ips = |eps: Option<Endpoints>| -> BTreeSet<String> {
        eps.and_then(|e| e.subsets)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|s| s.addresses.unwrap_or_default())
            .map(|a| a.ip)
            .collect()
    };
    let hep: Api<Endpoints> = Api::namespaced(host.clone(), &t.namespace);
    let vep: Api<Endpoints> = Api::namespaced(virt.clone(), "default");
    eventually(
        "host and virtual endpoints list the pods' IPs",
        LONG,
        || async {
            let h = endpoint_ips(hep.get_opt(&host_svc_name).await.ok()?);
            let v = endpoint_ips(vep.get_opt("api").await.ok()?);
            (h == pod_ips && v == pod_ips).then_some(())
        },
    )
    .await;

    // NodePort is not allowed by default: ClusterIP on the host, and the tenant is told.
    let vsvc: Api<Service> = Api::namespaced(virt.clone(), "default");
    vsvc.create(
        &PostParams::default(),
        &Service {
            metadata: ObjectMeta {
                name: Some("public".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("NodePort".into()),
                selector: Some(BTreeMap::from([("app".into(), "api".into())])),
                ports: Some(vec![ServicePort {
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        },
    )
    .await
    .unwrap();
    wait_event(&virt, "default", "public", "ServiceTypeNotAllowed").await;
    let public = eventually("host copy of the NodePort service", LONG, || async {
        hsvc.get_opt(&format!("public-x-default-x-{}", t.name))
            .await
            .ok()
            .flatten()
    })
    .await;
    assert_eq!(public.spec.unwrap().type_.as_deref(), Some("ClusterIP"));

    // Deleting the virtual service removes the host copy.
    vsvc.delete("api", &DeleteParams::default()).await.unwrap();
    eventually("host service removed", LONG, || async {
        hsvc.get_opt(&host_svc_name)
            .await
            .ok()
            .and_then(|s| s.is_none().then_some(()))
    })
    .await;
}

const POD_WITH_REFERENCES: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: reader, namespace: default}
spec:
  containers:
  - name: main
    image: registry.local/reader:1
    env:
    - name: PASSWORD
      valueFrom: {secretKeyRef: {name: db, key: password}}
    volumeMounts: [{name: cfg, mountPath: /etc/cfg}, {name: data, mountPath: /data}]
  volumes:
  - name: cfg
    configMap: {name: settings}
  - name: data
    persistentVolumeClaim: {claimName: data}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn referenced_configmaps_and_secrets_follow_their_pods() {
    let t = Tenant::start("refs");
    let virt = t.client().await;
    let host = common::host_client().await;
    t.kubectl_ok(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=color=blue",
    ]);
    t.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=password=s3cret",
    ]);
    t.kubectl_ok(&["create", "configmap", "unused", "--from-literal=a=b"]);
    // A claim, and a host volume (made by the host admin) that it can bind to.
    let class = format!("e2e-{}", t.name);
    apply(
        &t,
        &format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: data, namespace: default}}\nspec: {{accessModes: [ReadWriteOnce], storageClassName: {class}, resources: {{requests: {{storage: 1Gi}}}}}}\n"
        ),
    );
    let pv = format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {class}}}\nspec: {{capacity: {{storage: 1Gi}}, accessModes: [ReadWriteOnce], storageClassName: {class}, persistentVolumeReclaimPolicy: Delete, hostPath: {{path: /tmp/{class}}}}}\n"
    );
    let out = common::kubectl(
        &common::env().host_kubeconfig,
        &["apply", "-f", "-"],
        Some(&pv),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    apply(&t, POD_WITH_REFERENCES);
    // The host binds the translated claim; the virtual claim shows it.
    let vclaims: Api<PersistentVolumeClaim> = Api::namespaced(virt.clone(), "default");
    eventually("the virtual claim is Bound", LONG, || async {
        let c = vclaims.get("data").await.ok()?;
        (c.status?.phase.as_deref() == Some("Bound")).then_some(())
    })
    .await;
    let hclaim = Api::<PersistentVolumeClaim>::namespaced(host.clone(), &t.namespace)
        .get(&format!("data-x-default-x-{}", t.name))
        .await
        .unwrap();
    assert_eq!(
        hclaim.spec.unwrap().volume_name.as_deref(),
        Some(class.as_str())
    );

    let hcm: Api<ConfigMap> = Api::namespaced(host.clone(), &t.namespace);
    let hsec: Api<Secret> = Api::namespaced(host.clone(), &t.namespace);
    let cm_name = format!("settings-x-default-x-{}", t.name);
    let secret_name = format!("db-x-default-x-{}", t.name);
    let cm = eventually("host configmap", LONG, || async {
        hcm.get_opt(&cm_name).await.ok().flatten()
    })
    .await;
    assert_eq!(cm.data.unwrap()["color"], "blue");
    let secret = eventually("host secret", LONG, || async {
        hsec.get_opt(&secret_name).await.ok().flatten()
    })
    .await;
    assert_eq!(secret.data.unwrap()["password"].0, b"s3cret");
    // Not referenced: not copied.
    assert!(
        hcm.get_opt(&format!("unused-x-default-x-{}", t.name))
            .await
            .unwrap()
            .is_none()
    );
    // The host pod uses the translated names.
    let hpod = eventually("host pod", LONG, || async {
        host_pods(&host, &t, "default").await.into_iter().next()
    })
    .await;
    let spec = hpod.spec.unwrap();
    assert_eq!(
        spec.volumes.unwrap()[0].config_map.as_ref().unwrap().name,
        cm_name
    );

    // Updates propagate.
    t.kubectl_ok(&[
        "patch",
        "configmap",
        "settings",
        "-p",
        r#"{"data":{"color":"red"}}"#,
    ]);
    eventually("configmap update reaches the host", LONG, || async {
        let cm = hcm.get_opt(&cm_name).await.ok()??;
        (cm.data?.get("color")? == "red").then_some(())
    })
    .await;

    // No longer referenced: removed from the host.
    t.kubectl_ok(&["delete", "pod", "reader", "--wait=false"]);
    eventually(
        "host copies removed with the last reference",
        LONG,
        || async {
            let cm = hcm.get_opt(&cm_name).await.ok()?;
            let s = hsec.get_opt(&secret_name).await.ok()?;
            (cm.is_none() && s.is_none()).then_some(())
        },
    )
    .await;
    // Deleting the virtual claim removes the host claim.
    vclaims
        .delete("data", &DeleteParams::default())
        .await
        .unwrap();
    eventually("host claim removed", LONG, || async {
        Api::<PersistentVolumeClaim>::namespaced(host.clone(), &t.namespace)
            .get_opt(&format!("data-x-default-x-{}", t.name))
            .await
            .ok()
            .and_then(|c| c.is_none().then_some(()))
    })
    .await;
    let _ = common::kubectl(
        &common::env().host_kubeconfig,
        &["delete", "pv", &class, "--wait=false"],
        None,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_names_never_collide_across_namespaces_or_tenants() {
    let a = Tenant::start("same-a");
    let b = Tenant::start("same-b");
    let host = common::host_client().await;
    for t in [&a, &b] {
        t.create_namespace("one");
        t.create_namespace("two");
        for ns in ["one", "two"] {
            t.kubectl_ok(&["run", "web", "-n", ns, "--image=registry.local/web:1"]);
        }
    }
    for t in [&a, &b] {
        let virt = t.client().await;
        for ns in ["one", "two"] {
            wait_replicas(&host, t, &virt, ns, 1).await;
            let pods = host_pods(&host, t, ns).await;
            assert_eq!(pods[0].name_any(), format!("web-x-{ns}-x-{}", t.name));
            assert_eq!(pods[0].namespace().as_deref(), Some(t.namespace.as_str()));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_virtual_namespace_removes_its_host_objects() {
    let t = Tenant::start("nsdel");
    let virt = t.client().await;
    let host = common::host_client().await;
    t.create_namespace("temp");
    apply(&t, &deployment("temp", "job", 2, "registry.local/job:1"));
    t.kubectl_ok(&["expose", "-n", "temp", "deployment", "job", "--port=80"]);
    wait_replicas(&host, &t, &virt, "temp", 2).await;
    t.kubectl_ok(&["delete", "namespace", "temp", "--wait=false"]);
    eventually(
        "host pods and services of the namespace are gone",
        LONG,
        || async {
            let pods = host_pods(&host, &t, "temp").await;
            let svcs = Api::<Service>::namespaced(host.clone(), &t.namespace)
                .list(&ListParams::default().labels("vkube.dev/namespace=temp"))
                .await
                .ok()?;
            (pods.is_empty() && svcs.items.is_empty()).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_pod_deleted_by_hand_is_reported_and_replaced() {
    let t = Tenant::start("byhand");
    let virt = t.client().await;
    let host = common::host_client().await;
    apply(&t, &deployment("default", "web", 1, "registry.local/web:1"));
    wait_replicas(&host, &t, &virt, "default", 1).await;
    let before = host_pods(&host, &t, "default").await[0].clone();
    let victim = before.annotations()["vkube.dev/name"].clone();
    Api::<Pod>::namespaced(host.clone(), &t.namespace)
        .delete(&before.name_any(), &DeleteParams::default())
        .await
        .unwrap();
    eventually("a replacement runs on the host", LONG, || async {
        let pods = host_pods(&host, &t, "default").await;
        (pods.len() == 1
            && pods[0].metadata.uid != before.metadata.uid
            && running_ready(&pods[0])
            && pods[0].annotations()["vkube.dev/name"] != victim)
            .then_some(())
    })
    .await;
    wait_replicas(&host, &t, &virt, "default", 1).await;
    assert!(
        Api::<Pod>::namespaced(virt.clone(), "default")
            .get_opt(&victim)
            .await
            .unwrap()
            .is_none(),
        "the virtual pod of the deleted host pod is gone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicts_and_policy_violations_become_events_and_nothing_foreign_is_touched() {
    let t = Tenant::start("conflict");
    let virt = t.client().await;
    let host = common::host_client().await;
    let hcm: Api<ConfigMap> = Api::namespaced(host.clone(), &t.namespace);
    let mk = |name: String, labels: Option<BTreeMap<String, String>>| ConfigMap {
        metadata: ObjectMeta {
            name: Some(name),
            labels,
            ..Default::default()
        },
        data: Some(BTreeMap::from([("owner".into(), "someone-else".into())])),
        ..Default::default()
    };
    // An unmanaged host object with exactly the name vkube would use.
    let taken = format!("taken-x-default-x-{}", t.name);
    hcm.create(&PostParams::default(), &mk(taken.clone(), None))
        .await
        .unwrap();
    // Another tenant's object and an unrelated one in the same host namespace.
    let foreign = mk(
        "other-tenant-object".into(),
        Some(BTreeMap::from([(
            "vkube.dev/managed-by".into(),
            "someone-else".into(),
        )])),
    );
    hcm.create(&PostParams::default(), &foreign).await.unwrap();
    hcm.create(&PostParams::default(), &mk("unmanaged".into(), None))
        .await
        .unwrap();

    t.kubectl_ok(&[
        "create",
        "configmap",
        "taken",
        "--from-literal=owner=tenant",
    ]);
    apply(
        &t,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: uses-taken, namespace: default}
spec:
  containers: [{name: main, image: registry.local/x:1, envFrom: [{configMapRef: {name: taken}}]}]
"#,
    );
    wait_event(&virt, "default", "taken", "HostNameConflict").await;
    let cm = hcm.get(&taken).await.unwrap();
    assert_eq!(
        cm.data.unwrap()["owner"],
        "someone-else",
        "never overwritten"
    );

    // A privileged pod never reaches the host; the tenant sees why.
    apply(
        &t,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: escape, namespace: default}
spec:
  hostNetwork: true
  containers: [{name: main, image: registry.local/x:1, securityContext: {privileged: true}}]
  volumes: [{name: root, hostPath: {path: /}}]
"#,
    );
    let ev = wait_event(&virt, "default", "escape", "HostPolicyViolation").await;
    let note = ev.message.unwrap_or_default();
    assert!(
        note.contains("hostNetwork") && note.contains("hostPath") && note.contains("privileged"),
        "{note}"
    );
    assert!(
        Api::<Pod>::namespaced(host.clone(), &t.namespace)
            .get_opt(&format!("escape-x-default-x-{}", t.name))
            .await
            .unwrap()
            .is_none()
    );

    // Let the garbage collector run over the namespace, then check nothing foreign was touched.
    t.kubectl_ok(&["delete", "pod", "uses-taken", "--wait=false"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for name in ["other-tenant-object", "unmanaged", taken.as_str()] {
        assert!(
            hcm.get_opt(name).await.unwrap().is_some(),
            "{name} was touched"
        );
    }
}

/// Creates pods `p-<i>` for each i in `range`, 16 at a time.
async fn create_pods(pods: &Api<Pod>, range: std::ops::Range<usize>) {
    use futures::StreamExt;
    futures::stream::iter(range)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let p: Pod = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("p-{i}")},
                    "spec": {"containers": [{"name": "main", "image": "registry.local/x:1"}]}
                }))
                .unwrap();
                pods.create(&PostParams::default(), &p).await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_in_the_middle_of_a_burst_loses_and_duplicates_nothing() {
    const N: usize = 200;
    let mut t = Tenant::start("burst");
    let host = common::host_client().await;
    t.create_namespace("burst");
    let virt = t.client().await;
    create_pods(&Api::namespaced(virt.clone(), "burst"), 0..N / 2).await;
    // Stop the syncer (and its control plane) while it works through the burst.
    assert!(t.stop().unwrap().success());
    t.spawn();
    t.wait_ready();
    let virt = t.client().await;
    create_pods(&Api::namespaced(virt.clone(), "burst"), N / 2..N).await;
    // A 200-pod burst shares two cores with every other test: allow it time.
    wait_replicas_within(&host, &t, &virt, "burst", N, Duration::from_secs(240)).await;
    let hpods = host_pods(&host, &t, "burst").await;
    let origins: BTreeSet<String> = hpods
        .iter()
        .map(|p| p.annotations()["vkube.dev/name"].clone())
        .collect();
    assert_eq!(origins.len(), N, "one host pod per virtual pod");
    assert_eq!(hpods.len(), N, "no duplicates, no orphans");
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_carry_a_token_of_their_virtual_service_account() {
    let t = Tenant::start("satoken");
    let virt = t.client().await;
    let host = common::host_client().await;
    t.kubectl_ok(&["run", "app", "--image=registry.local/app:1"]);
    wait_replicas(&host, &t, &virt, "default", 1).await;
    let host_pod = format!("app-x-default-x-{}", t.name);
    let secret_name = format!("{host_pod}-sa-token");
    let hsec: Api<Secret> = Api::namespaced(host.clone(), &t.namespace);
    let secret = eventually("the token secret exists on the host", LONG, || async {
        hsec.get_opt(&secret_name).await.ok().flatten()
    })
    .await;
    // The host pod mounts it where the projected token was, and owns it.
    let pod = Api::<Pod>::namespaced(host.clone(), &t.namespace)
        .get(&host_pod)
        .await
        .unwrap();
    let mounted = pod.spec.unwrap().volumes.unwrap().iter().any(|v| {
        v.projected.as_ref().is_some_and(|p| {
            p.sources
                .iter()
                .flatten()
                .any(|s| s.secret.as_ref().is_some_and(|s| s.name == secret_name))
        })
    });
    assert!(mounted, "host pod mounts the token secret");
    assert_eq!(
        secret.metadata.owner_references.unwrap()[0].uid,
        pod.metadata.uid.unwrap()
    );
    // The token is the virtual service account's, bound to the virtual pod.
    let token = String::from_utf8(secret.data.unwrap()["token"].0.clone()).unwrap();
    let mut kc = kube::config::Kubeconfig::read_from(&t.kubeconfig).unwrap();
    kc.auth_infos[0].auth_info = Some(kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    });
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let review =
        serde_json::to_vec(&k8s_openapi::api::authentication::v1::SelfSubjectReview::default())
            .unwrap();
    let req = http::Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
        .header("Content-Type", "application/json")
        .body(review)
        .unwrap();
    let me: k8s_openapi::api::authentication::v1::SelfSubjectReview =
        client.request(req).await.unwrap();
    let user = me.status.unwrap().user_info.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:default:default")
    );
    let pod_name = user
        .extra
        .unwrap_or_default()
        .get("authentication.kubernetes.io/pod-name")
        .cloned()
        .unwrap_or_default();
    assert_eq!(pod_name, vec!["app".to_string()]);
}
