//! Networking objects of the syncer against a real host cluster: hand-written Endpoints of
//! selector-less Services, Ingresses, and the cluster IPs the virtual Services show.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use crate::common::{self, Tenant, eventually};
use crate::syncer::{LONG, apply, deployment, host_pods, wait_event, wait_replicas};

fn ips(eps: &Endpoints) -> BTreeSet<String> {
    eps.subsets
        .iter()
        .flatten()
        .flat_map(|s| s.addresses.iter().flatten())
        .map(|a| a.ip.clone())
        .collect()
}

/// Ready and not-ready addresses: a loaded host may mark a pod not ready for a while.
fn all_ips(eps: &Endpoints) -> BTreeSet<String> {
    eps.subsets
        .iter()
        .flatten()
        .flat_map(|s| {
            s.addresses
                .iter()
                .flatten()
                .chain(s.not_ready_addresses.iter().flatten())
        })
        .map(|a| a.ip.clone())
        .collect()
}

fn selectorless(name: &str, cluster_ip: Option<&str>) -> String {
    let ip = cluster_ip
        .map(|ip| format!(", clusterIP: {ip}"))
        .unwrap_or_default();
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec: {{ports: [{{name: pg, port: 5432}}]{ip}}}
"#
    )
}

fn endpoints(name: &str, addresses: &[&str]) -> String {
    let list: Vec<String> = addresses.iter().map(|a| format!("{{ip: {a}}}")).collect();
    format!(
        r#"
apiVersion: v1
kind: Endpoints
metadata: {{name: {name}, namespace: default}}
subsets: [{{addresses: [{}], ports: [{{name: pg, port: 5432}}]}}]
"#,
        list.join(", ")
    )
}

async fn host_endpoint_ips(host: &Client, t: &Tenant, name: &str) -> Option<BTreeSet<String>> {
    Api::<Endpoints>::namespaced(host.clone(), &t.namespace)
        .get_opt(&format!("{name}-x-default-x-{}", t.name))
        .await
        .ok()?
        .map(|e| ips(&e))
}

#[tokio::test(flavor = "multi_thread")]
async fn selectorless_services_get_their_hand_written_endpoints_on_the_host() {
    let t = Tenant::start("eps");
    let virt = t.client().await;
    let host = common::host_client().await;
    // A pod of the tenant: its IP is a private address endpoints may still lead to.
    apply(&t, &deployment("default", "db", 1, "registry.local/db:1"));
    t.kubectl_ok(&["expose", "deployment", "db", "--port=5432"]);
    wait_replicas(&host, &t, &virt, "default", 1).await;
    let pod_ip = host_pods(&host, &t, "default").await[0]
        .status
        .clone()
        .and_then(|s| s.pod_ip)
        .expect("the host pod has an IP");

    apply(&t, &selectorless("ext", None));
    // 10.96.0.1 is the host's API server Service: a tenant must not point at it.
    apply(&t, &endpoints("ext", &["192.0.2.10", &pod_ip, "10.96.0.1"]));
    let want = BTreeSet::from(["192.0.2.10".to_string(), pod_ip.clone()]);
    eventually(
        "host endpoints with the allowed addresses",
        LONG,
        || async { (host_endpoint_ips(&host, &t, "ext").await? == want).then_some(()) },
    )
    .await;
    let ev = wait_event(&virt, "default", "ext", "EndpointAddressRefused").await;
    let note = ev.message.unwrap_or_default();
    assert!(
        note.contains("10.96.0.1") && !note.contains("192.0.2.10"),
        "{note}"
    );

    // The host mirrors them into the EndpointSlices kube-proxy reads.
    let host_svc = format!("ext-x-default-x-{}", t.name);
    let slices: Api<EndpointSlice> = Api::namespaced(host.clone(), &t.namespace);
    eventually("host endpointslice mirrored", LONG, || async {
        let list = slices
            .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={host_svc}")))
            .await
            .ok()?;
        let got: BTreeSet<String> = list
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter().flat_map(|e| e.addresses.clone()))
            .collect();
        got.contains("192.0.2.10").then_some(())
    })
    .await;

    // EndpointSlices written by hand go to the host as they are, for the host Service.
    apply(&t, &selectorless("direct", None));
    apply(
        &t,
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: direct-1
  namespace: default
  labels: {kubernetes.io/service-name: direct}
addressType: IPv4
endpoints: [{addresses: [192.0.2.20]}, {addresses: [10.96.0.1]}]
ports: [{name: pg, port: 5432}]
"#,
    );
    let host_slice = format!("direct-1-x-default-x-{}", t.name);
    let slice = eventually("host copy of the hand-written slice", LONG, || async {
        slices.get_opt(&host_slice).await.ok().flatten()
    })
    .await;
    assert_eq!(
        slice.labels()["kubernetes.io/service-name"],
        format!("direct-x-default-x-{}", t.name)
    );
    let addresses: Vec<String> = slice
        .endpoints
        .iter()
        .flat_map(|e| e.addresses.clone())
        .collect();
    assert_eq!(addresses, ["192.0.2.20"]);
    wait_event(&virt, "default", "direct-1", "EndpointAddressRefused").await;
    // Slices the virtual controllers derived (mirrored from Endpoints) are not copied.
    let vslices: Api<EndpointSlice> = Api::namespaced(virt.clone(), "default");
    let mirrored = eventually("virtual mirrored slice of ext", LONG, || async {
        let l = vslices
            .list(&ListParams::default().labels("kubernetes.io/service-name=ext"))
            .await
            .ok()?;
        l.items.into_iter().next()
    })
    .await;
    assert!(
        slices
            .get_opt(&format!("{}-x-default-x-{}", mirrored.name_any(), t.name))
            .await
            .unwrap()
            .is_none()
    );
    vslices
        .delete("direct-1", &DeleteParams::default())
        .await
        .unwrap();
    eventually("host slice removed", LONG, || async {
        slices
            .get_opt(&host_slice)
            .await
            .ok()
            .and_then(|s| s.is_none().then_some(()))
    })
    .await;

    // An unmanaged host object of the same name is never overwritten.
    let hep: Api<Endpoints> = Api::namespaced(host.clone(), &t.namespace);
    let taken = format!("taken-x-default-x-{}", t.name);
    let foreign: Endpoints = serde_json::from_value(serde_json::json!({
        "metadata": {"name": taken},
        "subsets": [{"addresses": [{"ip": "203.0.113.1"}], "ports": [{"port": 1}]}]
    }))
    .unwrap();
    hep.create(&PostParams::default(), &foreign).await.unwrap();
    apply(&t, &selectorless("taken", None));
    apply(&t, &endpoints("taken", &["192.0.2.99"]));
    wait_event(&virt, "default", "taken", "HostNameConflict").await;
    assert_eq!(
        ips(&hep.get(&taken).await.unwrap()),
        BTreeSet::from(["203.0.113.1".to_string()])
    );

    // Deleting the virtual Endpoints removes the host copy; the host's own Endpoints of the
    // selector Service (which carry the tenant's labels) and the foreign object are kept.
    let db_name = format!("db-x-default-x-{}", t.name);
    let db_uid = eventually("host endpoints of the selector service", LONG, || async {
        hep.get_opt(&db_name).await.ok().flatten()
    })
    .await
    .metadata
    .uid;
    // Once its Service shows the host's cluster IP (the re-creation is over) and the guard's
    // window has passed: hand-written Endpoints deleted within ENDPOINTS_GUARD (10 s) of a
    // re-creation are put back once, as the endpoints controller may delete them that late
    // (it deleted them before the put-back in most runs, which ends the guard early; when it
    // did not, a delete 2 s after the re-creation was put back and this test failed).
    // Edits wait for the same window: within it the endpoints controller may delete the
    // Endpoints between kubectl's read and its patch (NotFound in CI), before they are put back.
    same_cluster_ip(&virt, &host, &t, "ext").await;
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    // Updates propagate.
    apply(&t, &endpoints("ext", &["198.51.100.7"]));
    eventually("host endpoints updated", LONG, || async {
        (host_endpoint_ips(&host, &t, "ext").await? == BTreeSet::from(["198.51.100.7".into()]))
            .then_some(())
    })
    .await;
    Api::<Endpoints>::namespaced(virt.clone(), "default")
        .delete("ext", &DeleteParams::default())
        .await
        .unwrap();
    eventually("host endpoints removed", LONG, || async {
        hep.get_opt(&host_svc)
            .await
            .ok()
            .and_then(|e| e.is_none().then_some(()))
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let db = hep
        .get_opt(&db_name)
        .await
        .unwrap()
        .expect("the host's endpoints of the selector service are kept");
    assert_eq!(db.metadata.uid, db_uid, "never deleted and re-made");
    assert!(hep.get_opt(&taken).await.unwrap().is_some());
}

const TLS_SECRET: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: shop-tls, namespace: default}
type: kubernetes.io/tls
stringData: {tls.crt: not-a-real-cert, tls.key: not-a-real-key}
"#;

const INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: shop
  namespace: default
  annotations:
    nginx.ingress.kubernetes.io/server-snippet: "location /admin { proxy_pass http://10.96.0.1; }"
    nginx.ingress.kubernetes.io/rewrite-target: /
spec:
  tls: [{hosts: [shop.example.com], secretName: shop-tls}]
  rules:
  - host: shop.example.com
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn ingresses_reach_translated_backends_with_their_tls_secret() {
    let mut t = Tenant::new("ing");
    // Controller annotations reach the host only where the admin allows them.
    t.extra_args = ["--ingress-class", "public", "--ingress-class", "internal"]
        .into_iter()
        .chain(["--default-ingress-class", "public"])
        .chain(["--ingress-host-suffix", "{name}.apps.example.com"])
        .chain(["--allow-annotation", "nginx.ingress.kubernetes.io/*"])
        .map(String::from)
        .collect();
    t.spawn();
    t.wait_ready();
    let virt = t.client().await;
    let host = common::host_client().await;
    let shop_host = format!("shop.{}.apps.example.com", t.name);
    apply(&t, TLS_SECRET);
    apply(&t, &INGRESS.replace("shop.example.com", &shop_host));

    let hing: Api<Ingress> = Api::namespaced(host.clone(), &t.namespace);
    let host_name = format!("shop-x-default-x-{}", t.name);
    let ing = eventually("host ingress", LONG, || async {
        hing.get_opt(&host_name).await.ok().flatten()
    })
    .await;
    let spec = ing.spec.clone().unwrap();
    assert_eq!(spec.ingress_class_name.as_deref(), Some("public"));
    let rule = &spec.rules.unwrap()[0];
    assert_eq!(rule.host.as_deref(), Some(shop_host.as_str()));
    let backend = rule.http.as_ref().unwrap().paths[0]
        .backend
        .service
        .clone()
        .unwrap();
    assert_eq!(backend.name, format!("web-x-default-x-{}", t.name));
    let secret_name = format!("shop-tls-x-default-x-{}", t.name);
    assert_eq!(
        spec.tls.unwrap()[0].secret_name.as_deref(),
        Some(secret_name.as_str())
    );
    let annotations = ing.annotations();
    assert!(!annotations.contains_key("nginx.ingress.kubernetes.io/server-snippet"));
    assert_eq!(
        annotations["nginx.ingress.kubernetes.io/rewrite-target"],
        "/"
    );
    wait_event(&virt, "default", "shop", "IngressAnnotationDropped").await;

    // The TLS Secret follows its Ingress.
    let hsecrets: Api<Secret> = Api::namespaced(host.clone(), &t.namespace);
    let secret = eventually("host TLS secret", LONG, || async {
        hsecrets.get_opt(&secret_name).await.ok().flatten()
    })
    .await;
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(
        secret.data.unwrap()["tls.key"].0,
        b"not-a-real-key".to_vec()
    );

    // What the host's ingress controller publishes shows in the virtual cluster.
    let status =
        serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}]}}});
    hing.patch_status(&host_name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let ving: Api<Ingress> = Api::namespaced(virt.clone(), "default");
    eventually("load-balancer status copied up", LONG, || async {
        let v = ving.get("shop").await.ok()?;
        let ip = v.status?.load_balancer?.ingress?.first()?.ip.clone()?;
        (ip == "203.0.113.5").then_some(())
    })
    .await;

    // A class the platform does not allow never reaches the host.
    apply(
        &t,
        r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: sneaky, namespace: default}
spec:
  ingressClassName: admin-only
  defaultBackend: {service: {name: web, port: {number: 80}}}
"#,
    );
    let ev = wait_event(&virt, "default", "sneaky", "IngressNotAllowed").await;
    assert!(ev.message.unwrap_or_default().contains("admin-only"));
    assert!(
        hing.get_opt(&format!("sneaky-x-default-x-{}", t.name))
            .await
            .unwrap()
            .is_none()
    );

    // Deleting the Ingress removes the host copy and the Secret no one references any more.
    ving.delete("shop", &DeleteParams::default()).await.unwrap();
    eventually("host ingress and TLS secret removed", LONG, || async {
        let ing = hing.get_opt(&host_name).await.ok()?;
        let sec = hsecrets.get_opt(&secret_name).await.ok()?;
        (ing.is_none() && sec.is_none()).then_some(())
    })
    .await;
}

fn cluster_ip(svc: &Service) -> String {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .unwrap_or_default()
}

/// Waits until the virtual Service `name` shows the cluster IP of its host copy; returns both.
async fn same_cluster_ip(
    virt: &Client,
    host: &Client,
    t: &Tenant,
    name: &str,
) -> (Service, Service) {
    let vsvc: Api<Service> = Api::namespaced(virt.clone(), "default");
    let hsvc: Api<Service> = Api::namespaced(host.clone(), &t.namespace);
    eventually(
        &format!("{name} shows the host's cluster IP"),
        LONG,
        || async {
            let v = vsvc.get_opt(name).await.ok()??;
            let h = hsvc
                .get_opt(&format!("{name}-x-default-x-{}", t.name))
                .await
                .ok()??;
            (cluster_ip(&v) == cluster_ip(&h) && !cluster_ip(&h).is_empty()).then_some((v, h))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn virtual_services_show_the_cluster_ip_that_routes() {
    let t = Tenant::start("cip");
    let virt = t.client().await;
    let host = common::host_client().await;
    apply(&t, &deployment("default", "api", 2, "registry.local/api:1"));
    // Outside the host's service range (10.96.0.0/16) but inside the virtual one: the host
    // cannot give this IP, so the virtual Service is re-created with the host's.
    apply(
        &t,
        r#"
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: default
  labels: {tier: backend}
  annotations: {team: payments}
spec:
  clusterIP: 10.100.0.50
  selector: {app: api}
  ports: [{port: 8080, targetPort: 80}]
"#,
    );
    wait_replicas(&host, &t, &virt, "default", 2).await;
    let (v, h) = same_cluster_ip(&virt, &host, &t, "api").await;
    assert!(cluster_ip(&h).starts_with("10.96."), "{}", cluster_ip(&h));
    // kubectl shows it too; labels, annotations and spec survived the re-creation.
    let shown = t.kubectl_ok(&["get", "svc", "api", "-o", "jsonpath={.spec.clusterIP}"]);
    assert_eq!(shown.trim(), cluster_ip(&h));
    assert_eq!(v.labels()["tier"], "backend");
    assert_eq!(v.annotations()["team"], "payments");
    assert_eq!(
        v.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
        8080
    );
    // The host copy now names the new virtual Service.
    eventually("host copy carries the new virtual uid", LONG, || async {
        let h = Api::<Service>::namespaced(host.clone(), &t.namespace)
            .get(&format!("api-x-default-x-{}", t.name))
            .await
            .ok()?;
        (h.annotations().get("vkube.dev/uid") == v.metadata.uid.as_ref()).then_some(())
    })
    .await;
    wait_event(&virt, "default", "api", "ClusterIPFromHost").await;

    // Endpoints are still true on both sides.
    let pod_ips: BTreeSet<String> = host_pods(&host, &t, "default")
        .await
        .iter()
        .filter_map(|p: &Pod| p.status.as_ref()?.pod_ip.clone())
        .collect();
    let vep: Api<Endpoints> = Api::namespaced(virt.clone(), "default");
    let hep: Api<Endpoints> = Api::namespaced(host.clone(), &t.namespace);
    let host_name = format!("api-x-default-x-{}", t.name);
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let v = vep.get_opt("api").await.unwrap().map(|e| all_ips(&e));
        let h = hep.get_opt(&host_name).await.unwrap().map(|e| all_ips(&e));
        if v.as_ref() == Some(&pod_ips) && h.as_ref() == Some(&pod_ips) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "endpoints do not list the pods {pod_ips:?}: virtual {v:?}, host {h:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // A free IP inside the host's range is kept as it is: no re-creation. (Picked per run: a
    // namespace of an earlier run may still hold its IP while it is being deleted.)
    let n = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        t.name.hash(&mut h);
        h.finish()
    };
    let free_ip = format!("10.96.{}.{}", 128 + n % 100, 2 + (n >> 8) % 250);
    apply(&t, &selectorless("db", Some(&free_ip)));
    let vsvc: Api<Service> = Api::namespaced(virt.clone(), "default");
    let before = vsvc.get("db").await.unwrap().metadata.uid;
    let (v, _) = same_cluster_ip(&virt, &host, &t, "db").await;
    assert_eq!(cluster_ip(&v), free_ip);
    assert_eq!(v.metadata.uid, before);

    // A selector-less Service keeps its hand-written Endpoints through the re-creation.
    apply(&t, &selectorless("ext", Some("10.100.0.51")));
    apply(&t, &endpoints("ext", &["192.0.2.10"]));
    same_cluster_ip(&virt, &host, &t, "ext").await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let v = vep
        .get_opt("ext")
        .await
        .unwrap()
        .expect("virtual endpoints kept");
    assert_eq!(ips(&v), BTreeSet::from(["192.0.2.10".to_string()]));
    eventually("host endpoints of ext", LONG, || async {
        (host_endpoint_ips(&host, &t, "ext").await? == BTreeSet::from(["192.0.2.10".into()]))
            .then_some(())
    })
    .await;

    // Headless stays headless.
    apply(
        &t,
        r#"
apiVersion: v1
kind: Service
metadata: {name: peers, namespace: default}
spec: {clusterIP: None, selector: {app: api}, ports: [{port: 80}]}
"#,
    );
    let hsvc: Api<Service> = Api::namespaced(host.clone(), &t.namespace);
    let peers = eventually("headless host copy", LONG, || async {
        hsvc.get_opt(&format!("peers-x-default-x-{}", t.name))
            .await
            .ok()
            .flatten()
    })
    .await;
    assert_eq!(cluster_ip(&peers), "None");
    assert_eq!(cluster_ip(&vsvc.get("peers").await.unwrap()), "None");
}

/// A re-creation interrupted between the delete and the create (vkube killed) is finished by
/// the next start, from the journal on the host copy; the host copy is not taken for an orphan.
/// A Service asking for 10.100.2.`host`: outside the host's service range, inside the virtual
/// one, so the syncer always re-creates it with the host's IP.
fn always_re_created(name: &str, host: u64) -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "clusterIP": format!("10.100.2.{host}"),
            "selector": {"app": name},
            "ports": [{"port": 80}],
        }
    }))
    .unwrap()
}

/// Re-creating a Service with the host's cluster IP deletes it for a moment; the proxy holds
/// the tenant's requests for it meanwhile, so a client reading it (or deleting it, as the
/// EndpointSlice conformance test does) never hears "not found".
#[tokio::test(flavor = "multi_thread")]
async fn a_service_being_re_created_is_never_missing_to_its_tenant() {
    let t = Tenant::start("hold");
    let virt = t.client().await;
    let services: Api<Service> = Api::namespaced(virt.clone(), "default");
    let mut readers = tokio::task::JoinSet::new();
    for i in 0..4 {
        let name = format!("held-{i}");
        let first = services
            .create(&PostParams::default(), &always_re_created(&name, 10 + i))
            .await
            .unwrap();
        let services = services.clone();
        // Reads it as fast as the API answers until it has its new identity.
        readers.spawn(async move {
            let deadline = std::time::Instant::now() + LONG;
            let mut reads = 0u32;
            loop {
                match services.get(&name).await {
                    Ok(now) if now.metadata.uid != first.metadata.uid => {
                        return Ok((name, cluster_ip(&now), reads));
                    }
                    Ok(_) => reads += 1,
                    Err(kube::Error::Api(s)) if s.code == 404 => {
                        return Err(format!("{name}: not found after {reads} reads"));
                    }
                    Err(e) => panic!("{name}: {e}"),
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{name} was not re-created with the host's cluster IP"
                );
            }
        });
    }
    while let Some(read) = readers.join_next().await {
        let (name, ip, reads) = read.unwrap().unwrap_or_else(|e| panic!("{e}"));
        assert!(ip.starts_with("10.96."), "{name}: {ip}");
        println!("{name}: read {reads} times before its re-creation, never missing");
    }
    // And a delete right after creation (the conformance case) succeeds whenever it lands.
    for i in 0..4 {
        let name = format!("gone-{i}");
        services
            .create(&PostParams::default(), &always_re_created(&name, 50 + i))
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50 * i)).await;
        services
            .delete(&name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("deleting {name}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_recreation_cut_short_is_finished_at_the_next_start() {
    let mut t = Tenant::start("journal");
    let host = common::host_client().await;
    apply(
        &t,
        r#"
apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: default
  labels: {tier: data}
spec:
  clusterIP: 10.100.0.60
  selector: {app: db}
  ports: [{port: 5432}]
"#,
    );
    let virt = t.client().await;
    let (v, h) = same_cluster_ip(&virt, &host, &t, "db").await;
    let host_uid = h.metadata.uid.clone();

    // The state a crash right after the delete leaves: journal written, virtual Service gone.
    // Made with the syncer off, so nothing acts on it before the restart.
    t.stop();
    t.extra_args = vec!["--no-sync".into()];
    t.spawn();
    t.wait_ready();
    let virt = t.client().await;
    let journal = serde_json::json!({
        "service": {
            "metadata": {"name": "db", "namespace": "default", "labels": {"tier": "data"}},
            "spec": v.spec,
        }
    });
    let hsvc: Api<Service> = Api::namespaced(host.clone(), &t.namespace);
    let host_name = format!("db-x-default-x-{}", t.name);
    let annotate = serde_json::json!({"metadata": {"annotations": {
        "vkube.dev/recreating": journal.to_string()
    }}});
    hsvc.patch(
        &host_name,
        &PatchParams::default(),
        &Patch::Merge(&annotate),
    )
    .await
    .unwrap();
    Api::<Service>::namespaced(virt.clone(), "default")
        .delete("db", &DeleteParams::default())
        .await
        .unwrap();

    t.stop();
    t.extra_args.clear();
    t.spawn();
    t.wait_ready();
    let virt = t.client().await;
    let vsvc: Api<Service> = Api::namespaced(virt.clone(), "default");
    let back = eventually("the virtual service is back", LONG, || async {
        vsvc.get_opt("db").await.ok().flatten()
    })
    .await;
    assert_eq!(cluster_ip(&back), cluster_ip(&h), "with the host's IP");
    assert_eq!(back.labels()["tier"], "data");
    eventually("the journal is cleared", LONG, || async {
        let h = hsvc.get(&host_name).await.ok()?;
        (!h.annotations().contains_key("vkube.dev/recreating")).then_some(())
    })
    .await;
    let kept = hsvc.get(&host_name).await.unwrap();
    assert_eq!(
        kept.metadata.uid, host_uid,
        "the host copy was never deleted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn host_ips_the_virtual_range_cannot_show_are_reported_not_chased() {
    let mut t = Tenant::new("cidr");
    // Disjoint from the host's 10.96.0.0/16.
    t.extra_args = vec!["--service-cidr".into(), "10.200.0.0/16".into()];
    t.spawn();
    t.wait_ready();
    let virt = t.client().await;
    let host = common::host_client().await;
    apply(&t, &selectorless("db", None));
    let vsvc: Api<Service> = Api::namespaced(virt.clone(), "default");
    let before = vsvc.get("db").await.unwrap();
    let hsvc: Api<Service> = Api::namespaced(host.clone(), &t.namespace);
    let h = eventually("host copy", LONG, || async {
        hsvc.get_opt(&format!("db-x-default-x-{}", t.name))
            .await
            .ok()
            .flatten()
            .filter(|h| !cluster_ip(h).is_empty())
    })
    .await;
    assert!(cluster_ip(&h).starts_with("10.96."), "{}", cluster_ip(&h));
    wait_event(&virt, "default", "db", "ClusterIPNotShown").await;
    // Never deleted and re-created in a loop: the same object, the same IP.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let after = vsvc.get("db").await.unwrap();
    assert_eq!(after.metadata.uid, before.metadata.uid);
    assert_eq!(cluster_ip(&after), cluster_ip(&before));
    assert!(cluster_ip(&after).starts_with("10.200."));
}
