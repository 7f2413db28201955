//! The classic attacks on a shared Kubernetes API, tried against the real components: forged
//! identity headers and impersonation with a low-privilege identity, another tenant's host
//! namespace (through the proxy and through references the syncer copies), names crafted to
//! land on host objects vkube did not create, and objects and request bodies beyond the limits.
//!
//! Vectors proven by earlier tests are not repeated here (README, attack table): callers
//! without credentials or with another tenant's certificate (`serve.rs`), forged headers and
//! RBAC on exec (`pod_streams.rs`), equal names in different namespaces and tenants and an
//! unmanaged ConfigMap at the translated name (`syncer.rs`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};

use crate::attack_ingress::wait_event_saying;
use crate::common::{self, Tenant, eventually};
use crate::syncer::{LONG, apply};

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A client of the virtual API authenticated by `token`, sending `headers` on every request.
async fn token_client(t: &Tenant, token: &str, headers: &[(&'static str, &'static str)]) -> Client {
    let mut kc = kube::config::Kubeconfig::read_from(&t.kubeconfig).unwrap();
    kc.auth_infos[0].auth_info = Some(kube::config::AuthInfo {
        token: Some(token.to_string().into()),
        ..Default::default()
    });
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    config.headers = headers
        .iter()
        .map(|(k, v)| {
            (
                http::HeaderName::from_static(k),
                http::HeaderValue::from_static(v),
            )
        })
        .collect();
    Client::try_from(config).unwrap()
}

/// A kubeconfig file for `token` beside the tenant's.
fn token_kubeconfig(t: &Tenant, token: &str, file: &str) -> std::path::PathBuf {
    let mut kc = kube::config::Kubeconfig::read_from(&t.kubeconfig).unwrap();
    kc.auth_infos[0].auth_info = Some(kube::config::AuthInfo {
        token: Some(token.to_string().into()),
        ..Default::default()
    });
    let path = t.dir.join(file);
    std::fs::write(&path, serde_json::to_string(&kc).unwrap()).unwrap();
    path
}

async fn service_account_token(virt: &Client, ns: &str, name: &str) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(virt.clone(), ns);
    sas.create(
        &PostParams::default(),
        &ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    sas.create_token_request(name, &PostParams::default(), &TokenRequest::default())
        .await
        .unwrap()
        .status
        .unwrap()
        .token
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_identity_headers_and_impersonation_get_no_further_than_the_caller() {
    let t = Tenant::start("forge");
    let virt = t.client().await;
    t.create_namespace("team-a");
    t.create_namespace("team-b");
    t.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "crown",
        "-n",
        "kube-system",
        "--from-literal=k=v",
    ]);
    // A low-privilege identity: may list pods in team-a, nothing else.
    let token = service_account_token(&virt, "team-a", "viewer").await;
    t.kubectl_ok(&[
        "create",
        "role",
        "pods",
        "-n",
        "team-a",
        "--verb=get,list",
        "--resource=pods",
    ]);
    t.kubectl_ok(&[
        "create",
        "rolebinding",
        "viewer",
        "-n",
        "team-a",
        "--role=pods",
        "--serviceaccount=team-a:viewer",
    ]);
    // A powerful ServiceAccount of another virtual namespace, and a pod there.
    service_account_token(&virt, "team-b", "ops").await;
    t.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "ops",
        "--clusterrole=cluster-admin",
        "--serviceaccount=team-b:ops",
    ]);
    t.kubectl_ok(&["run", "web", "-n", "team-b", "--image=registry.local/web:1"]);
    let me = "system:serviceaccount:team-a:viewer";

    let plain = token_client(&t, &token, &[]).await;
    eventually("RBAC lets the viewer list its pods", LONG, || async {
        Api::<Pod>::namespaced(plain.clone(), "team-a")
            .list(&ListParams::default())
            .await
            .ok()
    })
    .await;

    // Requestheader identity sent by the caller: dropped by the proxy, still the viewer.
    let forged = token_client(
        &t,
        &token,
        &[
            ("x-remote-user", "kubernetes-admin"),
            ("x-remote-group", "system:masters"),
            ("x-remote-extra-scopes", "cluster-admin"),
            ("x-remote-uid", "0"),
        ],
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(forged.clone(), "kube-system");
    let s = api_error(secrets.get("crown").await.unwrap_err());
    assert_eq!(s.code, 403, "{s:?}");
    assert!(s.message.contains(me), "{s:?}");
    let cms: Api<ConfigMap> = Api::namespaced(forged.clone(), "kube-system");
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("planted".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let s = api_error(cms.create(&PostParams::default(), &cm).await.unwrap_err());
    assert_eq!(s.code, 403, "{s:?}");
    assert!(s.message.contains(me), "{s:?}");

    // Impersonation headers: checked against the viewer's own rights, which have none.
    for headers in [
        &[("impersonate-user", "kubernetes-admin")][..],
        &[
            ("impersonate-user", "system:serviceaccount:team-a:viewer"),
            ("impersonate-group", "system:masters"),
        ][..],
        &[("impersonate-user", "system:serviceaccount:team-b:ops")][..],
    ] {
        let c = token_client(&t, &token, headers).await;
        let s = api_error(
            Api::<Secret>::namespaced(c, "kube-system")
                .get("crown")
                .await
                .unwrap_err(),
        );
        assert_eq!(s.code, 403, "{headers:?}: {s:?}");
        assert!(
            s.message.contains("cannot impersonate"),
            "{headers:?}: {s:?}"
        );
    }
    // The same on pod subresources, which vkube's proxy serves from the host itself (kubectl
    // would stop at its own GET of the pod: sent raw, they reach the proxy's check).
    let host_served = |headers: &'static [(&'static str, &'static str)]| {
        let t = &t;
        let token = &token;
        async move {
            let c = token_client(t, token, headers).await;
            let mut refusals = Vec::new();
            for req in [
                http::Request::get("/api/v1/namespaces/team-b/pods/web/log"),
                http::Request::post(
                    "/api/v1/namespaces/team-b/pods/web/exec?command=id&stdout=true",
                ),
            ] {
                refusals.push(api_error(
                    c.request_text(req.body(Vec::new()).unwrap())
                        .await
                        .unwrap_err(),
                ));
            }
            refusals
        }
    };
    for headers in [
        &[("impersonate-user", "system:serviceaccount:team-b:ops")][..],
        &[
            ("impersonate-user", "system:serviceaccount:team-a:viewer"),
            ("impersonate-group", "system:masters"),
        ][..],
    ] {
        for s in host_served(headers).await {
            assert_eq!(s.code, 403, "{headers:?}: {s:?}");
            assert!(
                s.message.contains("cannot impersonate"),
                "{headers:?}: {s:?}"
            );
        }
    }
    let viewer_kc = token_kubeconfig(&t, &token, "viewer.kubeconfig");
    let as_ops = "--as=system:serviceaccount:team-b:ops";
    for args in [
        &["--as=system:admin", "get", "secrets", "-n", "kube-system"][..],
        &[
            "--as=kubernetes-admin",
            "--as-group=system:masters",
            "get",
            "secrets",
            "-A",
        ][..],
        &[as_ops, "get", "secret", "crown", "-n", "kube-system"][..],
        &[as_ops, "exec", "-n", "team-b", "web", "--", "id"][..],
        &[as_ops, "logs", "-n", "team-b", "web"][..],
    ] {
        let out = common::kubectl(&viewer_kc, args, None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains("cannot impersonate"), "{args:?}: {err}");
    }

    // Impersonation granted for one ServiceAccount of the viewer's namespace reaches that one,
    // and not another namespace's.
    t.kubectl_ok(&["create", "serviceaccount", "helper", "-n", "team-a"]);
    t.kubectl_ok(&[
        "create",
        "role",
        "become-helper",
        "-n",
        "team-a",
        "--verb=impersonate",
        "--resource=serviceaccounts",
        "--resource-name=helper",
    ]);
    t.kubectl_ok(&[
        "create",
        "rolebinding",
        "become-helper",
        "-n",
        "team-a",
        "--role=become-helper",
        "--serviceaccount=team-a:viewer",
    ]);
    let out = eventually("the narrow impersonation grant applies", LONG, || {
        let out = common::kubectl(
            &viewer_kc,
            &[
                "--as=system:serviceaccount:team-a:helper",
                "get",
                "pods",
                "-n",
                "team-a",
            ],
            None,
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        async move { (!err.contains("cannot impersonate")).then_some(err) }
    })
    .await;
    assert!(
        out.contains("system:serviceaccount:team-a:helper\" cannot list"),
        "{out}"
    );
    let out = common::kubectl(
        &viewer_kc,
        &[as_ops, "get", "secret", "crown", "-n", "kube-system"],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot impersonate"));
    for s in host_served(&[("impersonate-user", "system:serviceaccount:team-b:ops")]).await {
        assert_eq!(s.code, 403, "{s:?}");
        assert!(s.message.contains("cannot impersonate"), "{s:?}");
    }
}

/// name → resourceVersion of everything vkube could touch in a host namespace.
async fn snapshot(host: &Client, ns: &str) -> BTreeMap<String, String> {
    async fn kind<K>(host: &Client, ns: &str, out: &mut BTreeMap<String, String>)
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        for o in Api::<K>::namespaced(host.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
        {
            out.insert(
                format!("{}/{}", K::kind(&()), o.name_any()),
                o.resource_version().unwrap_or_default(),
            );
        }
    }
    let mut out = BTreeMap::new();
    kind::<ConfigMap>(host, ns, &mut out).await;
    kind::<Secret>(host, ns, &mut out).await;
    kind::<Service>(host, ns, &mut out).await;
    kind::<Endpoints>(host, ns, &mut out).await;
    kind::<Pod>(host, ns, &mut out).await;
    kind::<PersistentVolumeClaim>(host, ns, &mut out).await;
    kind::<k8s_openapi::api::networking::v1::Ingress>(host, ns, &mut out).await;
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn another_tenants_host_namespace_is_out_of_reach() {
    let a = Tenant::start("reach-a");
    let b = Tenant::start("reach-b");
    let host = common::host_client().await;
    let before = snapshot(&host, &b.namespace).await;
    let b_certs = format!("vkube-{}-certs", b.name);
    assert!(before.contains_key(&format!("Secret/{b_certs}")));

    // Through the proxy: the virtual API has no such namespace, whatever its name.
    let out = a.kubectl_ok(&["get", "secrets", "-n", &b.namespace, "-o", "name"]);
    assert!(out.trim().is_empty(), "{out}");
    let out = a.kubectl(&["get", "secret", &b_certs, "-n", &b.namespace]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound"),
        "{out:?}"
    );
    let out = a.kubectl(&["create", "configmap", "planted", "-n", &b.namespace]);
    assert!(!out.status.success());

    // Through the syncer: a virtual namespace named like B's host namespace, holding objects
    // named like B's and references that name B's namespace.
    a.create_namespace(&b.namespace);
    let ns = &b.namespace;
    apply(
        &a,
        &format!(
            r#"
apiVersion: v1
kind: Secret
metadata: {{name: {b_certs}, namespace: {ns}}}
stringData: {{ca.key: planted}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: {ns}, labels: {{app: web}}}}
spec:
  containers: [{{name: main, image: registry.local/web:1, envFrom: [{{secretRef: {{name: {b_certs}}}}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: vkube-{b_name}, namespace: {ns}}}
spec: {{ports: [{{port: 443}}]}}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: vkube-{b_name}, namespace: {ns}}}
subsets:
- addresses: [{{ip: 203.0.113.20, targetRef: {{kind: Pod, name: web-x-default-x-{b_name}, namespace: {ns}}}}}]
  ports: [{{port: 443}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: handmade
  namespace: {ns}
  labels: {{kubernetes.io/service-name: vkube-{b_name}}}
addressType: IPv4
endpoints: [{{addresses: [203.0.113.21], targetRef: {{kind: Pod, name: victim, namespace: {ns}}}}}]
ports: [{{port: 443}}]
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: clone, namespace: {ns}}}
spec:
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 1Gi}}}}
  dataSourceRef: {{kind: PersistentVolumeClaim, name: data-vkube-0, namespace: {ns}}}
"#,
            b_name = b.name,
        ),
    );
    // Every copy lands in A's own host namespace, under A's names.
    let in_a = |name: &str| format!("{name}-x-{ns}-x-{}", a.name);
    let hsecrets: Api<Secret> = Api::namespaced(host.clone(), &a.namespace);
    let copy = eventually("A's Secret is synced into A's namespace", LONG, || async {
        hsecrets.get_opt(&in_a(&b_certs)).await.ok().flatten()
    })
    .await;
    assert_eq!(copy.namespace().as_deref(), Some(a.namespace.as_str()));
    let heps: Api<Endpoints> = Api::namespaced(host.clone(), &a.namespace);
    let eps = eventually("A's Endpoints are synced", LONG, || async {
        heps.get_opt(&in_a(&format!("vkube-{}", b.name)))
            .await
            .ok()
            .flatten()
    })
    .await;
    for address in eps
        .subsets
        .iter()
        .flatten()
        .flat_map(|s| s.addresses.iter().flatten())
    {
        assert_eq!(
            address.target_ref, None,
            "a reference into another namespace was copied"
        );
    }
    let slices = eventually("A's EndpointSlice is synced", LONG, || async {
        let l = Api::<EndpointSlice>::namespaced(host.clone(), &a.namespace)
            .list(&ListParams::default().labels(&format!(
                "vkube.dev/managed-by={},vkube.dev/namespace={ns}",
                a.name
            )))
            .await
            .ok()?;
        (!l.items.is_empty()).then_some(l.items)
    })
    .await;
    for e in slices.iter().flat_map(|s| s.endpoints.iter()) {
        assert_eq!(
            e.target_ref, None,
            "a reference into another namespace was copied"
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for claim in Api::<PersistentVolumeClaim>::namespaced(host.clone(), &a.namespace)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
    {
        let spec = claim.spec.unwrap_or_default();
        let namespaces = [spec.data_source_ref.and_then(|r| r.namespace)];
        assert_eq!(
            namespaces,
            [None],
            "a claim on the host names another namespace"
        );
    }
    // And B's host namespace is exactly as it was.
    assert_eq!(snapshot(&host, &b.namespace).await, before);
}

/// Creates host objects as someone other than this tenant's syncer would (the manager, `vkube
/// serve` itself, another tenant sharing the namespace, an admin by hand).
fn host_apply(yaml: &str) {
    let out = common::kubectl(
        &common::env().host_kubeconfig,
        &["apply", "-f", "-"],
        Some(yaml),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn virtual_names_never_take_over_host_objects_vkube_did_not_create() {
    let mut t = Tenant::new("names");
    let (tn, hns) = (t.name.clone(), t.namespace.clone());
    // What the manager makes beside `vkube serve`: the API Service and the datastore claim.
    host_apply(&format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: vkube-{tn}, namespace: {hns}, labels: {{app.kubernetes.io/managed-by: vkube-manager, vkube.dev/virtual-cluster: {tn}}}}}
spec: {{ports: [{{name: https, port: 443, targetPort: {port}}}]}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data-vkube-0, namespace: {hns}, labels: {{app.kubernetes.io/managed-by: vkube-manager, vkube.dev/virtual-cluster: {tn}}}}}
spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}
"#,
        port = t.port
    ));
    t.spawn();
    t.wait_ready();
    let virt = t.client().await;
    let host = common::host_client().await;
    // Objects at names this tenant's objects would translate to, made by others: labelled as
    // `vkube serve`'s own Secrets are, and as another tenant sharing the namespace.
    host_apply(&format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: stolen-x-default-x-{tn}, namespace: {hns}, labels: {{app.kubernetes.io/managed-by: vkube, vkube.dev/virtual-cluster: {tn}}}}}
stringData: {{owner: vkube-serve}}
---
apiVersion: v1
kind: Service
metadata: {{name: other-x-default-x-{tn}, namespace: {hns}, labels: {{vkube.dev/managed-by: someone-else, vkube.dev/namespace: default}}, annotations: {{vkube.dev/name: other}}}}
spec: {{ports: [{{port: 80}}]}}
"#
    ));
    let guarded = [
        ("Secret", format!("vkube-{tn}-certs")),
        ("Secret", format!("vkube-{tn}-kubeconfig")),
        ("Secret", format!("stolen-x-default-x-{tn}")),
        ("Service", format!("vkube-{tn}")),
        ("Service", format!("other-x-default-x-{tn}")),
        ("PersistentVolumeClaim", "data-vkube-0".to_string()),
    ];
    let before = snapshot(&host, &hns).await;
    for (kind, name) in &guarded {
        assert!(
            before.contains_key(&format!("{kind}/{name}")),
            "{kind}/{name} missing"
        );
    }

    // Virtual objects named like them, in `default` and in a namespace named like the host's.
    t.create_namespace(&hns);
    let long = format!("vkube-{tn}-certs-{}", "x".repeat(253 - tn.len() - 18));
    for ns in ["default", hns.as_str()] {
        apply(
            &t,
            &format!(
                r#"
apiVersion: v1
kind: Secret
metadata: {{name: vkube-{tn}-certs, namespace: {ns}}}
stringData: {{ca.key: tenant}}
---
apiVersion: v1
kind: Secret
metadata: {{name: vkube-{tn}-kubeconfig, namespace: {ns}}}
stringData: {{kubeconfig: tenant}}
---
apiVersion: v1
kind: Secret
metadata: {{name: {long}, namespace: {ns}}}
stringData: {{k: v}}
---
apiVersion: v1
kind: Service
metadata: {{name: vkube-{tn}, namespace: {ns}}}
spec: {{ports: [{{port: 443}}]}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data-vkube-0, namespace: {ns}}}
spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: uses-them, namespace: {ns}}}
spec:
  containers:
  - name: main
    image: registry.local/x:1
    envFrom: [{{secretRef: {{name: vkube-{tn}-certs}}}}, {{secretRef: {{name: vkube-{tn}-kubeconfig}}}}, {{secretRef: {{name: {long}}}}}]
"#
            ),
        );
    }
    // The exact translated names, taken by others: refused, with the Event.
    apply(
        &t,
        r#"
apiVersion: v1
kind: Secret
metadata: {name: stolen, namespace: default}
stringData: {owner: tenant}
---
apiVersion: v1
kind: Pod
metadata: {name: uses-stolen, namespace: default}
spec:
  containers: [{name: main, image: registry.local/x:1, envFrom: [{secretRef: {name: stolen}}]}]
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: default}
spec: {ports: [{port: 8080}]}
"#,
    );
    for (kind, name) in [("Secret", "stolen"), ("Service", "other")] {
        wait_event_saying(
            &virt,
            "default",
            kind,
            name,
            "HostNameConflict",
            &["not managed by this virtual cluster"],
        )
        .await;
    }
    // The tenant's look-alikes were synced, under names of their own.
    let hsecrets: Api<Secret> = Api::namespaced(host.clone(), &hns);
    for ns in ["default", hns.as_str()] {
        for name in [
            format!("vkube-{tn}-certs"),
            format!("vkube-{tn}-kubeconfig"),
        ] {
            let copy = format!("{name}-x-{ns}-x-{tn}");
            eventually(&format!("{copy} synced"), LONG, || async {
                hsecrets.get_opt(&copy).await.ok().flatten()
            })
            .await;
        }
        let hashed = eventually("the long name is synced, shortened", LONG, || async {
            hsecrets
                .list(&ListParams::default().labels(&format!(
                    "vkube.dev/managed-by={tn},vkube.dev/namespace={ns}"
                )))
                .await
                .ok()?
                .items
                .into_iter()
                .find(|s| s.annotations().get("vkube.dev/name") == Some(&long))
        })
        .await;
        assert!(hashed.name_any().len() <= 253 && hashed.name_any() != long);
    }
    // Let the garbage collector sweep too, then: nothing of the others' was touched.
    t.kubectl_ok(&["delete", "pod", "uses-stolen", "--wait=false"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = snapshot(&host, &hns).await;
    for (kind, name) in &guarded {
        let key = format!("{kind}/{name}");
        assert_eq!(after.get(&key), before.get(&key), "{key} was touched");
    }
    let stolen = hsecrets
        .get(&format!("stolen-x-default-x-{tn}"))
        .await
        .unwrap();
    assert_eq!(stolen.data.unwrap()["owner"].0, b"vkube-serve");

    // Names that blur the separator, and dotted names: distinct host objects, each knowing
    // where it came from.
    t.create_namespace("c");
    t.create_namespace("b-x-c");
    for (ns, name) in [
        ("c", "a-x-b"),
        ("b-x-c", "a"),
        ("c", "web.config"),
        ("c", "web-config"),
    ] {
        apply(
            &t,
            &format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\nstringData: {{k: v}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: uses-{}, namespace: {ns}}}\nspec:\n  containers: [{{name: main, image: registry.local/x:1, envFrom: [{{secretRef: {{name: {name}}}}}]}}]\n",
                name.replace('.', "-dot-")
            ),
        );
    }
    let copies = eventually("the four Secrets are synced", LONG, || async {
        let l = hsecrets
            .list(&ListParams::default().labels(&format!("vkube.dev/managed-by={tn}")))
            .await
            .ok()?;
        let found: BTreeMap<String, (String, String)> = l
            .items
            .into_iter()
            .filter_map(|s| {
                let o = (
                    s.labels().get("vkube.dev/namespace")?.clone(),
                    s.annotations().get("vkube.dev/name")?.clone(),
                );
                // (Pods' token Secrets are synced too; only the four are looked at.)
                ["a-x-b", "a", "web.config", "web-config"]
                    .contains(&o.1.as_str())
                    .then(|| (s.name_any(), o))
            })
            .collect();
        (found.len() == 4).then_some(found)
    })
    .await;
    let origins: std::collections::BTreeSet<_> = copies.values().cloned().collect();
    assert_eq!(origins.len(), 4, "{copies:?}");

    // Names the virtual API itself refuses never reach the syncer.
    for bad in ["Upper", "ünïcode", "dot.", &"a".repeat(254)] {
        let out = t.kubectl(&["create", "configmap", bad]);
        assert!(!out.status.success(), "{bad:?} accepted");
    }
}

/// Resident memory and CPU time (user + system, in clock ticks) of a process.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

#[tokio::test(flavor = "multi_thread")]
async fn oversize_objects_are_reported_and_hold_up_nothing_else() {
    let t = Tenant::start("oversize");
    let virt = t.client().await;
    let host = common::host_client().await;
    let pid = t.pid().unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(virt.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(virt.clone(), "default");
    let big = |n: usize| "x".repeat(n);
    let configmap = |name: &str, data: usize, annotations: usize| ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: (annotations > 0)
                .then(|| BTreeMap::from([("note".to_string(), big(annotations))])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("blob".to_string(), big(data))])),
        ..Default::default()
    };
    let pod = |name: &str, configmap: Option<&str>, annotations: usize| -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "annotations": if annotations > 0 { serde_json::json!({"note": big(annotations)}) } else { serde_json::json!({}) }},
            "spec": {"containers": [{"name": "main", "image": "registry.local/x:1",
                "envFrom": configmap.map(|c| vec![serde_json::json!({"configMapRef": {"name": c}})]).unwrap_or_default()}]}
        }))
        .unwrap()
    };
    // Just below the 1 MiB the API allows: synced like any other.
    cms.create(
        &PostParams::default(),
        &configmap("near", 1024 * 1024 - 64, 0),
    )
    .await
    .unwrap();
    // Within the virtual API's limits, beyond the host's once vkube adds its own annotations:
    // annotations are limited to 256 KiB in all.
    cms.create(
        &PostParams::default(),
        &configmap("over", 1024 * 1024 - 64, 256 * 1024 - 40),
    )
    .await
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(virt.clone(), "default");
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("near-secret".into()),
                    ..Default::default()
                },
                string_data: Some(BTreeMap::from([(
                    "blob".to_string(),
                    big(1024 * 1024 - 64),
                )])),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for (name, cm, annotations) in [
        ("uses-near", Some("near"), 0),
        ("uses-over", Some("over"), 0),
        ("fat", None, 256 * 1024 - 40),
    ] {
        pods.create(&PostParams::default(), &pod(name, cm, annotations))
            .await
            .unwrap();
    }
    apply(
        &t,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: uses-secret, namespace: default}\nspec:\n  containers: [{name: main, image: registry.local/x:1, envFrom: [{secretRef: {name: near-secret}}]}]\n",
    );

    // The tenant hears why, on the object itself.
    wait_event_saying(
        &virt,
        "default",
        "ConfigMap",
        "over",
        "HostRejected",
        &["annotations"],
    )
    .await;
    wait_event_saying(
        &virt,
        "default",
        "Pod",
        "fat",
        "HostRejected",
        &["annotations"],
    )
    .await;
    let hcms: Api<ConfigMap> = Api::namespaced(host.clone(), &t.namespace);
    let near = eventually("the large ConfigMap is synced", LONG, || async {
        hcms.get_opt(&format!("near-x-default-x-{}", t.name))
            .await
            .ok()
            .flatten()
    })
    .await;
    assert_eq!(near.data.unwrap()["blob"].len(), 1024 * 1024 - 64);
    eventually("the large Secret is synced", LONG, || async {
        Api::<Secret>::namespaced(host.clone(), &t.namespace)
            .get_opt(&format!("near-secret-x-default-x-{}", t.name))
            .await
            .ok()
            .flatten()
    })
    .await;
    assert!(
        hcms.get_opt(&format!("over-x-default-x-{}", t.name))
            .await
            .unwrap()
            .is_none()
    );

    // Nothing else waits behind them, and they do not keep vkube busy.
    let started = Instant::now();
    t.kubectl_ok(&["run", "after", "--image=registry.local/x:1"]);
    let hpods: Api<Pod> = Api::namespaced(host.clone(), &t.namespace);
    eventually("a pod created afterwards is synced", LONG, || async {
        hpods
            .get_opt(&format!("after-x-default-x-{}", t.name))
            .await
            .ok()
            .flatten()
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let ticks = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let busy = cpu_ticks(pid) - ticks;
    // Clock ticks are 1/100 s: under 2 s of CPU in 20 s is idle work (watches, the collector).
    assert!(
        busy < 200,
        "vkube serve used {busy} ticks in 20 s with refused objects pending"
    );
    assert!(
        hpods
            .get_opt(&format!("fat-x-default-x-{}", t.name))
            .await
            .unwrap()
            .is_none()
    );
}

/// Sends a request with a body of `len` bytes (chunked, or with a Content-Length) to the
/// tenant's proxy as its admin, and returns the response status, what arrived of the response,
/// and how many body bytes the proxy took before it answered or closed.
async fn send_large_body(
    t: &Tenant,
    path: &str,
    len: u64,
    chunked: bool,
) -> (Option<u16>, String, u64) {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    vkube::tls::install_crypto_provider();
    let kc = kube::config::Kubeconfig::read_from(&t.kubeconfig).unwrap();
    let decode = |b64: &str| {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        )
        .unwrap()
    };
    let cluster = kc.clusters[0].cluster.clone().unwrap();
    let user = kc.auth_infos[0].auth_info.clone().unwrap();
    let key = {
        use secrecy::ExposeSecret;
        user.client_key_data.unwrap().expose_secret().to_string()
    };
    let config = vkube::tls::client_config(
        &decode(&cluster.certificate_authority_data.unwrap()),
        &decode(&user.client_certificate_data.unwrap()),
        &decode(&key),
    )
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", t.port))
        .await
        .unwrap();
    let name =
        rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let length = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {len}")
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{length}\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        let mut sent = 0u64;
        if wr.write_all(head.as_bytes()).await.is_err() {
            return sent;
        }
        let chunk = vec![b' '; 1024 * 1024];
        while sent < len {
            let n = chunk.len().min((len - sent) as usize);
            let framed = if chunked {
                let mut f = format!("{n:x}\r\n").into_bytes();
                f.extend_from_slice(&chunk[..n]);
                f.extend_from_slice(b"\r\n");
                f
            } else {
                chunk[..n].to_vec()
            };
            if wr.write_all(&framed).await.is_err() {
                break;
            }
            sent += n as u64;
        }
        if chunked {
            let _ = wr.write_all(b"0\r\n\r\n").await;
        }
        let _ = wr.flush().await;
        sent
    });
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(60), rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                response.extend_from_slice(&buf[..n]);
                // Head and a Status body: enough to tell who refused.
                if String::from_utf8_lossy(&response).contains("\"code\"") {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    // The proxy has answered: whatever the client still tries to send goes nowhere.
    let sent = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(u64::MAX);
    (status, text, sent)
}

#[tokio::test(flavor = "multi_thread")]
async fn request_bodies_beyond_the_limit_are_refused_without_buffering() {
    let t = Tenant::start("bigbody");
    let pid = t.pid().unwrap();
    let path = "/api/v1/namespaces/default/configmaps";
    // Warm up the connection pools, then measure.
    t.kubectl_ok(&["get", "configmaps"]);
    let before = rss_kib(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    const GIB: u64 = 1024 * 1024 * 1024;
    let mut results = Vec::new();
    for (len, chunked) in [(GIB, true), (4 * GIB, false)] {
        let started = Instant::now();
        let (status, text, sent) = send_large_body(&t, path, len, chunked).await;
        results.push((len, chunked, status, sent, started.elapsed(), text));
    }
    sampler.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "vkube serve RSS before {before} KiB, peak {peak} KiB; requests (length, chunked, status, bytes taken, time, response): {results:?}"
    );
    for (len, chunked, status, sent, took, text) in &results {
        assert_eq!(*status, Some(413), "{len} bytes, chunked {chunked}: {text}");
        if !chunked {
            // A declared length beyond the limit is refused at the edge: the virtual API server
            // never reads any of it.
            assert!(text.contains("vkube's limit"), "{text}");
        }
        assert!(
            *sent < 64 * 1024 * 1024,
            "{len} bytes, chunked {chunked}: {sent} bytes taken before the refusal"
        );
        assert!(*took < Duration::from_secs(30), "{took:?}");
    }
    assert!(
        peak.saturating_sub(before) < 32 * 1024,
        "RSS grew from {before} KiB to {peak} KiB"
    );
    // The proxy still serves.
    t.kubectl_ok(&["create", "configmap", "after", "--from-literal=k=v"]);
}
