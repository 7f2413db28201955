//! Attacks through Ingresses and Services, against a real host cluster: claiming another
//! tenant's host name or every host, controller annotations with injection histories or
//! references outside the tenant, ExternalName Services as a confused deputy, and Service fields
//! that claim addresses. Each test tries the escape, asserts the refusal the tenant sees (an
//! Event naming the field) and that nothing reached the host.

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use crate::common::{self, Tenant, eventually};
use crate::syncer::{LONG, apply};

const SUFFIX_TEMPLATE: &str = "{name}.apps.example.com";

/// Events about `ns/name` of `kind` whose reason is `reason`.
pub(crate) async fn events(
    virt: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    reason: &str,
) -> Vec<String> {
    Api::<Event>::namespaced(virt.clone(), ns)
        .list(&ListParams::default().fields(&format!(
            "involvedObject.name={name},involvedObject.kind={kind}"
        )))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.message)
        .collect()
}

/// Waits for an Event `reason` on `ns/name` of `kind` whose message contains every `needle`.
pub(crate) async fn wait_event_saying(
    virt: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    reason: &str,
    needles: &[&str],
) -> String {
    eventually(
        &format!("{reason} on {kind} {ns}/{name} saying {needles:?}"),
        LONG,
        || async {
            events(virt, ns, kind, name, reason)
                .await
                .into_iter()
                .find(|m| needles.iter().all(|n| m.contains(n)))
        },
    )
    .await
}

fn ingress_yaml(name: &str, annotations: &str, rules_and_tls: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: default\n  annotations: {{{annotations}}}\nspec:\n{rules_and_tls}"
    )
}

fn rule(host: &str) -> String {
    format!(
        "  rules:\n  - host: \"{host}\"\n    http:\n      paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]\n"
    )
}

/// Names of this tenant's Ingresses on the host.
async fn host_ingresses(host: &Client, t: &Tenant) -> BTreeSet<String> {
    Api::<Ingress>::namespaced(host.clone(), &t.namespace)
        .list(&ListParams::default().labels(&format!("vkube.dev/managed-by={}", t.name)))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|i| i.name_any())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn ingress_hosts_are_confined_to_the_tenants_own_suffix() {
    let t = Tenant::start_with(
        "ing-host",
        "127.0.0.1",
        // The admin lets every annotation key through the general metadata policy: these
        // rules must hold whatever that policy allows.
        &[
            "--ingress-host-suffix",
            SUFFIX_TEMPLATE,
            "--allow-annotation",
            "*",
        ],
    );
    let unconfigured = Tenant::start("ing-nosuffix");
    let virt = t.client().await;
    let host = common::host_client().await;
    let own = format!("{}.apps.example.com", t.name);
    let victim = "shop.bob.apps.example.com";
    let passthrough = "nginx.ingress.kubernetes.io/ssl-passthrough: \"true\"";

    // The tenant's own hosts, ssl-passthrough included: published.
    apply(
        &t,
        &ingress_yaml(
            "mine",
            passthrough,
            &format!(
                "{}  tls: [{{hosts: [\"*.{own}\"], secretName: mine-tls}}]\n",
                rule(&format!("shop.{own}"))
            ),
        ),
    );
    // Another tenant's host (with ssl-passthrough, the raw TLS stream of that name), a
    // look-alike, a host above the suffix, every host, and a default backend: refused.
    // Many refused fields at once: the tenant still hears of it (a note over 1 KiB would be
    // refused by the API server, so it is cut).
    let many: String = (0..12)
        .map(|i| rule(&format!("host-{i}.bob.apps.example.com")).replacen("  rules:\n", "", 1))
        .collect();
    let attempts: [(&str, String, &str); 7] = [
        (
            "many",
            ingress_yaml("many", "", &format!("  rules:\n{many}")),
            "spec.rules[0].host",
        ),
        (
            "steal",
            ingress_yaml("steal", passthrough, &rule(victim)),
            "spec.rules[0].host",
        ),
        (
            "lookalike",
            ingress_yaml("lookalike", "", &rule(&format!("evil-{own}"))),
            "spec.rules[0].host",
        ),
        (
            "wildcard",
            ingress_yaml(
                "wildcard",
                "",
                &format!(
                    "{}  tls: [{{hosts: [\"*.apps.example.com\"]}}]\n",
                    rule(&format!("x.{own}"))
                ),
            ),
            "spec.tls[0].hosts[0]",
        ),
        (
            "catchall",
            ingress_yaml(
                "catchall",
                "",
                "  rules:\n  - http:\n      paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]\n",
            ),
            "spec.rules[0].host",
        ),
        (
            "fallback",
            ingress_yaml(
                "fallback",
                "",
                "  defaultBackend: {service: {name: web, port: {number: 80}}}\n",
            ),
            "spec.defaultBackend",
        ),
        // Half good, half another tenant's: nothing of it is published.
        (
            "half",
            ingress_yaml(
                "half",
                "",
                &format!(
                    "{}  - host: \"{victim}\"\n    http:\n      paths: [{{path: /admin, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]\n",
                    rule(&format!("ok.{own}"))
                ),
            ),
            "spec.rules[1].host",
        ),
    ];
    for (_, yaml, _) in &attempts {
        apply(&t, yaml);
    }
    for (name, _, field) in &attempts {
        let note = wait_event_saying(
            &virt,
            "default",
            "Ingress",
            name,
            "IngressNotAllowed",
            &[field],
        )
        .await;
        assert!(
            note.contains(&format!(".{own}")),
            "{name}: the allowed suffix is named: {note}"
        );
    }
    eventually("the tenant's own Ingress is on the host", LONG, || async {
        host_ingresses(&host, &t)
            .await
            .contains(&format!("mine-x-default-x-{}", t.name))
            .then_some(())
    })
    .await;
    let h = Api::<Ingress>::namespaced(host.clone(), &t.namespace)
        .get(&format!("mine-x-default-x-{}", t.name))
        .await
        .unwrap();
    assert_eq!(
        h.annotations()["nginx.ingress.kubernetes.io/ssl-passthrough"],
        "true"
    );
    // Nothing else reached the host (the refusals were seen, so they were reconciled).
    assert_eq!(
        host_ingresses(&host, &t).await,
        BTreeSet::from([format!("mine-x-default-x-{}", t.name)])
    );

    // A published Ingress edited to claim another tenant's host is taken off the host.
    apply(&t, &ingress_yaml("mine", passthrough, &rule(victim)));
    wait_event_saying(
        &virt,
        "default",
        "Ingress",
        "mine",
        "IngressNotAllowed",
        &[victim],
    )
    .await;
    eventually(
        "the edited Ingress is removed from the host",
        LONG,
        || async { host_ingresses(&host, &t).await.is_empty().then_some(()) },
    )
    .await;

    // Without a suffix configured, nothing is published at all, and the tenant is told why.
    let virt2 = unconfigured.client().await;
    apply(
        &unconfigured,
        &ingress_yaml(
            "any",
            "",
            &rule(&format!("shop.{}.apps.example.com", unconfigured.name)),
        ),
    );
    wait_event_saying(
        &virt2,
        "default",
        "Ingress",
        "any",
        "IngressNotAllowed",
        &["has not configured ingress hosts"],
    )
    .await;
    assert!(host_ingresses(&host, &unconfigured).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_annotations_that_reach_outside_the_ingress_never_reach_the_host() {
    let t = Tenant::start_with(
        "ing-annot",
        "127.0.0.1",
        // The admin lets every annotation key through the general metadata policy: these
        // rules must hold whatever that policy allows.
        &[
            "--ingress-host-suffix",
            SUFFIX_TEMPLATE,
            "--allow-annotation",
            "*",
        ],
    );
    let virt = t.client().await;
    let host = common::host_client().await;
    let own = format!("shop.{}.apps.example.com", t.name);
    let other_ns = format!("vkube-{}", common::unique("victim"));
    apply(
        &t,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: htpasswd, namespace: default}\nstringData: {auth: 'user:$apr1$x'}\n",
    );

    // Injection vectors and objects outside the Ingress: dropped, the rest published.
    let dropped = [
        (
            "nginx.ingress.kubernetes.io/configuration-snippet",
            "\"more_set_headers x;\"",
        ),
        (
            "nginx.ingress.kubernetes.io/server-snippet",
            "\"location /x { proxy_pass http://10.96.0.1; }\"",
        ),
        (
            "nginx.ingress.kubernetes.io/mirror-target",
            "\"http://10.96.0.1/steal\"",
        ),
        (
            "nginx.ingress.kubernetes.io/permanent-redirect",
            "\"https://x;}\"",
        ),
        (
            "nginx.ingress.kubernetes.io/upstream-vhost",
            "\"x;\\nssl_engine /proc/1/fd/3;\"",
        ),
        (
            "haproxy-ingress.github.io/config-backend",
            "\"http-request deny\"",
        ),
        ("alb.ingress.kubernetes.io/group.name", "shared"),
    ];
    let mut annotations: Vec<String> = dropped.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    annotations.push("nginx.ingress.kubernetes.io/rewrite-target: /".into());
    annotations.push("nginx.ingress.kubernetes.io/auth-type: basic".into());
    annotations.push("nginx.ingress.kubernetes.io/auth-secret: htpasswd".into());
    apply(
        &t,
        &ingress_yaml("loud", &annotations.join(", "), &rule(&own)),
    );

    // Access restrictions that cannot be kept as asked: the whole Ingress is refused.
    let refused = [
        (
            "authurl",
            "nginx.ingress.kubernetes.io/auth-url",
            "http://kubernetes.default.svc.cluster.local/".to_string(),
        ),
        (
            "matchcn",
            "nginx.ingress.kubernetes.io/auth-tls-match-cn",
            "\"CN=a #\\n}\"".to_string(),
        ),
        (
            "foreigntls",
            "nginx.ingress.kubernetes.io/auth-tls-secret",
            format!("{other_ns}/{other_ns}-certs"),
        ),
        (
            "foreignauth",
            "nginx.ingress.kubernetes.io/auth-secret",
            "kube-system/admin".to_string(),
        ),
        (
            "middleware",
            "traefik.ingress.kubernetes.io/router.middlewares",
            "kube-system-auth@kubernetescrd".to_string(),
        ),
    ];
    for (name, key, value) in &refused {
        apply(
            &t,
            &ingress_yaml(name, &format!("{key}: {value}"), &rule(&own)),
        );
    }

    let host_name = format!("loud-x-default-x-{}", t.name);
    let hing: Api<Ingress> = Api::namespaced(host.clone(), &t.namespace);
    let copy = eventually("the Ingress is published", LONG, || async {
        hing.get_opt(&host_name).await.ok().flatten()
    })
    .await;
    let a = copy.annotations();
    for (key, _) in &dropped {
        assert!(!a.contains_key(*key), "{key} reached the host: {a:?}");
    }
    assert_eq!(a["nginx.ingress.kubernetes.io/rewrite-target"], "/");
    // The Secret reference names the tenant's own synced copy, never a raw host Secret.
    let secret_copy = format!("htpasswd-x-default-x-{}", t.name);
    assert_eq!(a["nginx.ingress.kubernetes.io/auth-secret"], secret_copy);
    eventually("the referenced Secret is synced", LONG, || async {
        Api::<Secret>::namespaced(host.clone(), &t.namespace)
            .get_opt(&secret_copy)
            .await
            .ok()
            .flatten()
    })
    .await;
    let keys: Vec<&str> = dropped.iter().map(|(k, _)| *k).collect();
    wait_event_saying(
        &virt,
        "default",
        "Ingress",
        "loud",
        "IngressAnnotationDropped",
        &keys,
    )
    .await;

    for (name, key, _) in &refused {
        wait_event_saying(
            &virt,
            "default",
            "Ingress",
            name,
            "IngressNotAllowed",
            &[&format!("metadata.annotations[{key}]")],
        )
        .await;
    }
    assert_eq!(
        host_ingresses(&host, &t).await,
        BTreeSet::from([host_name]),
        "no refused Ingress reached the host"
    );
    // No Secret named by a refused reference was copied.
    let secrets: Vec<String> = Api::<Secret>::namespaced(host.clone(), &t.namespace)
        .list(&ListParams::default().labels(&format!("vkube.dev/managed-by={}", t.name)))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| s.name_any())
        .collect();
    assert_eq!(secrets, [secret_copy]);
}

/// A Service named like the tenant's API Service, as the manager makes it, with vkube's DNS at
/// `dns_port`: `vkube serve` then answers its pods' DNS there.
pub(crate) fn start_with_dns(prefix: &str, dns_port: u16, extra: &[&str]) -> Tenant {
    let mut t = Tenant::new(prefix);
    let manifest = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: vkube-{name}, namespace: {ns}}}\nspec:\n  ports:\n  - {{name: https, port: 443, protocol: TCP, targetPort: {https}}}\n  - {{name: dns, port: 53, protocol: UDP, targetPort: {dns_port}}}\n",
        name = t.name,
        ns = t.namespace,
        https = t.port,
    );
    let out = common::kubectl(
        &common::env().host_kubeconfig,
        &["apply", "-f", "-"],
        Some(&manifest),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.extra_args = extra.iter().map(|a| a.to_string()).collect();
    t.spawn();
    t.wait_ready();
    t
}

/// What vkube's DNS at `server` answers for `name` (type A): the CNAME target, if any.
fn cname_of(server: SocketAddr, name: &str) -> Option<String> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let mut q = Message::query();
    q.metadata.id = 7;
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    socket.send_to(&q.to_vec().ok()?, server).ok()?;
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).ok()?;
    let answer = Message::from_vec(&buf[..n]).ok()?;
    answer.answers.iter().find_map(|r| match &r.data {
        RData::CNAME(c) => Some(c.0.to_ascii()),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn external_names_stay_off_the_host_and_still_resolve_for_the_tenants_pods() {
    let dns_port = common::free_port();
    let t = start_with_dns("extname", dns_port, &[]);
    let allowing = Tenant::start_with("extname-ok", "127.0.0.1", &["--allow-external-name"]);
    let virt = t.client().await;
    let host = common::host_client().await;
    let external = "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: default}\nspec: {type: ExternalName, externalName: db.example.com}\n";
    apply(&t, external);
    wait_event_saying(
        &virt,
        "default",
        "Service",
        "db",
        "ServiceNotAllowed",
        &["ExternalName", "--allow-external-name"],
    )
    .await;
    let hsvc: Api<Service> = Api::namespaced(host.clone(), &t.namespace);
    let db_copy = format!("db-x-default-x-{}", t.name);
    assert!(hsvc.get_opt(&db_copy).await.unwrap().is_none());
    // The tenant's pods resolve it all the same: vkube's DNS answers from the virtual Service.
    let server: SocketAddr = ([127, 0, 0, 1], dns_port).into();
    let target = eventually("vkube's DNS answers the ExternalName", LONG, || async {
        cname_of(server, "db.default.svc.cluster.local.")
    })
    .await;
    assert_eq!(target, "db.example.com.");

    // A Service published as ClusterIP and then turned into an ExternalName leaves the host.
    apply(
        &t,
        "apiVersion: v1\nkind: Service\nmetadata: {name: turncoat, namespace: default}\nspec: {ports: [{port: 80}]}\n",
    );
    let turncoat = format!("turncoat-x-default-x-{}", t.name);
    eventually("the ClusterIP Service is on the host", LONG, || async {
        hsvc.get_opt(&turncoat).await.ok().flatten()
    })
    .await;
    // (Retried: the Service may be being re-created with the host's cluster IP just then.)
    eventually("the Service is turned into an ExternalName", LONG, || async {
        t.kubectl(&[
            "patch", "service", "turncoat", "--type=merge", "-p",
            r#"{"spec":{"type":"ExternalName","externalName":"kubernetes.default.svc.cluster.local","clusterIP":null,"clusterIPs":null,"ports":null}}"#,
        ])
        .status
        .success()
        .then_some(())
    })
    .await;
    eventually("the host copy is removed", LONG, || async {
        hsvc.get_opt(&turncoat).await.ok()?.is_none().then_some(())
    })
    .await;

    // The admin's opt-in: copied as is.
    apply(&allowing, external);
    let copy = eventually("the allowed ExternalName is on the host", LONG, || async {
        Api::<Service>::namespaced(host.clone(), &allowing.namespace)
            .get_opt(&format!("db-x-default-x-{}", allowing.name))
            .await
            .ok()
            .flatten()
    })
    .await;
    assert_eq!(
        copy.spec.unwrap().external_name.as_deref(),
        Some("db.example.com")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn service_fields_that_claim_addresses_never_reach_the_host() {
    let t = Tenant::start("svcaddr");
    let lb = Tenant::start_with("svcaddr-lb", "127.0.0.1", &["--allow-load-balancer"]);
    let host = common::host_client().await;
    // CVE-2020-8554: externalIPs make kube-proxy capture traffic for any address (the host API
    // server's Service IP here); loadBalancerIP and MetalLB's annotations claim addresses that
    // may be someone else's.
    let claim = |name: &str| {
        format!(
            r#"
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
  annotations: {{metallb.universe.tf/loadBalancerIPs: 192.0.2.10, metallb.universe.tf/allow-shared-ip: shared}}
spec:
  type: LoadBalancer
  selector: {{app: web}}
  externalIPs: [10.96.0.1, 203.0.113.7]
  loadBalancerIP: 192.0.2.10
  loadBalancerSourceRanges: [198.51.100.0/24]
  ports: [{{port: 443, targetPort: 8443}}]
"#
        )
    };
    for tenant in [&t, &lb] {
        apply(tenant, &claim("intercept"));
    }
    for (tenant, allowed) in [(&t, false), (&lb, true)] {
        let virt = tenant.client().await;
        wait_event_saying(
            &virt,
            "default",
            "Service",
            "intercept",
            "ServiceFieldNotAllowed",
            &[
                "spec.externalIPs",
                "spec.loadBalancerIP",
                "metallb.universe.tf/loadBalancerIPs",
                "CVE-2020-8554",
            ],
        )
        .await;
        let copy = eventually("the Service is on the host", LONG, || async {
            Api::<Service>::namespaced(host.clone(), &tenant.namespace)
                .get_opt(&format!("intercept-x-default-x-{}", tenant.name))
                .await
                .ok()
                .flatten()
        })
        .await;
        let spec = copy.spec.clone().unwrap();
        assert_eq!(spec.external_ips, None);
        assert_eq!(spec.load_balancer_ip, None);
        assert!(!copy.annotations().keys().any(|k| k.starts_with("metallb")));
        if allowed {
            // A load balancer the admin allows keeps its narrowing source ranges.
            assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
            assert_eq!(
                spec.load_balancer_source_ranges,
                Some(vec!["198.51.100.0/24".into()])
            );
        } else {
            assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
            assert_eq!(spec.load_balancer_source_ranges, None);
        }
    }
}
