//! Attacks through what a tenant's pod (and any synced object's metadata) can make the host do,
//! against a real host cluster with kwok nodes: each hostile object is created through the
//! tenant's kubeconfig, and each test asserts both what the tenant is told (an Event naming the
//! field) and what the host holds (read with the host admin client): nothing, or a neutralised
//! copy. Several vectors share a tenant to keep the run short; each has its own assertion.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};

use crate::common::{self, Tenant, eventually};
use crate::syncer::{LONG, apply, wait_event};

/// The host pod of virtual pod `default/name`, if any.
async fn host_pod(host: &Client, t: &Tenant, name: &str) -> Option<Pod> {
    Api::<Pod>::namespaced(host.clone(), &t.namespace)
        .get_opt(&format!("{name}-x-default-x-{}", t.name))
        .await
        .unwrap()
}

/// Waits for the host pod of `default/name`.
async fn wait_host_pod(host: &Client, t: &Tenant, name: &str) -> Pod {
    eventually(&format!("host pod of {name}"), LONG, || async {
        host_pod(host, t, name).await
    })
    .await
}

fn pod_yaml(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{spec}"
    )
}

const MAIN: &str = "  containers: [{name: main, image: registry.local/x:1}]\n";

/// Creates `yaml` in the tenant, waits for the refusal Event on pod `name` and checks that it
/// names `field`, and that no host pod exists.
async fn refused(t: &Tenant, virt: &Client, host: &Client, name: &str, yaml: &str, field: &str) {
    apply(t, yaml);
    let ev = wait_event(virt, "default", name, "HostPolicyViolation").await;
    let note = ev.message.unwrap_or_default();
    assert!(
        note.contains(field),
        "{name}: the Event names {field}: {note}"
    );
    assert!(
        host_pod(host, t, name).await.is_none(),
        "{name}: nothing reached the host"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_security_escapes_never_reach_the_host() {
    let t = Tenant::start("atk-psa");
    let virt = t.client().await;
    let host = common::host_client().await;
    let cases: [(&str, String, &str); 9] = [
        (
            "hostpath",
            format!("{MAIN}  volumes: [{{name: root, hostPath: {{path: /}}}}]\n"),
            "spec.volumes[0].hostPath",
        ),
        (
            "hostnet",
            format!("  hostNetwork: true\n{MAIN}"),
            "spec.hostNetwork",
        ),
        ("hostpid", format!("  hostPID: true\n{MAIN}"), "spec.hostPID"),
        (
            "privileged",
            "  containers: [{name: main, image: registry.local/x:1, securityContext: {privileged: true}}]\n".into(),
            "spec.containers[0].securityContext.privileged",
        ),
        (
            "caps",
            "  containers: [{name: main, image: registry.local/x:1, securityContext: {capabilities: {add: [SYS_ADMIN]}}}]\n".into(),
            "spec.containers[0].securityContext.capabilities.add",
        ),
        (
            "apparmor-field",
            "  securityContext: {appArmorProfile: {type: Unconfined}}\n  containers: [{name: main, image: registry.local/x:1}]\n".into(),
            "spec.securityContext.appArmorProfile.type",
        ),
        (
            "probe-host",
            "  containers: [{name: main, image: registry.local/x:1, livenessProbe: {httpGet: {host: 169.254.169.254, port: 80, path: /latest/meta-data/}}}]\n".into(),
            "spec.containers[0].livenessProbe.httpGet.host",
        ),
        (
            "hook-host",
            "  containers: [{name: main, image: registry.local/x:1, lifecycle: {preStop: {httpGet: {host: 10.96.0.1, port: 443, path: /}}}}]\n".into(),
            "spec.containers[0].lifecycle.preStop.httpGet.host",
        ),
        (
            "init-privileged",
            format!("  initContainers: [{{name: init, image: registry.local/x:1, securityContext: {{privileged: true}}}}]\n{MAIN}"),
            "spec.initContainers[0].securityContext.privileged",
        ),
    ];
    for (name, spec, field) in &cases {
        refused(&t, &virt, &host, name, &pod_yaml(name, spec), field).await;
    }
    // The annotation form of AppArmor (the virtual API server also copies it into the field).
    let annotated = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: apparmor-annotation\n  namespace: default\n  annotations: {{container.apparmor.security.beta.kubernetes.io/main: unconfined}}\nspec:\n{MAIN}"
    );
    refused(
        &t,
        &virt,
        &host,
        "apparmor-annotation",
        &annotated,
        "metadata.annotations[container.apparmor.security.beta.kubernetes.io/main]",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn inline_host_storage_volumes_are_refused() {
    let t = Tenant::start("atk-vol");
    let virt = t.client().await;
    let host = common::host_client().await;
    let cases = [
        (
            "nfs",
            "nfs: {server: 10.0.0.1, path: /exports}",
            "spec.volumes[0].nfs",
        ),
        (
            "iscsi",
            "iscsi: {targetPortal: '10.0.0.1:3260', iqn: 'iqn.2001-04.com.example:storage', lun: 0}",
            "spec.volumes[0].iscsi",
        ),
        (
            "csi",
            "csi: {driver: secrets-store.csi.k8s.io, nodePublishSecretRef: {name: vkube-certs}}",
            "spec.volumes[0].csi",
        ),
        (
            "flex",
            "flexVolume: {driver: example.com/lvm, secretRef: {name: vkube-certs}}",
            "spec.volumes[0].flexVolume",
        ),
    ];
    for (name, source, field) in cases {
        let spec = format!("{MAIN}  volumes: [{{name: v, {source}}}]\n");
        refused(&t, &virt, &host, name, &pod_yaml(name, &spec), field).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_csi_volume_gets_the_tenants_secret_never_the_hosts() {
    let driver = "secrets-store.csi.k8s.io";
    let t = Tenant::start_with(
        "atk-csi",
        "127.0.0.1",
        &["--allow-volume-type", "csi", "--allow-csi-driver", driver],
    );
    let virt = t.client().await;
    let host = common::host_client().await;
    // The tenant's own credentials Secret on the host: what the reference would have named.
    let certs = format!("vkube-{}-certs", t.name);
    let hsecrets: Api<Secret> = Api::namespaced(host.clone(), &t.namespace);
    assert!(hsecrets.get_opt(&certs).await.unwrap().is_some());
    t.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        &certs,
        "--from-literal=tenant=own",
    ]);
    let spec = format!(
        "{MAIN}  volumes: [{{name: v, csi: {{driver: {driver}, nodePublishSecretRef: {{name: {certs}}}}}}}]\n"
    );
    apply(&t, &pod_yaml("csi", &spec));
    let pod = wait_host_pod(&host, &t, "csi").await;
    let vol = &pod.spec.unwrap().volumes.unwrap()[0];
    let csi = vol.csi.as_ref().unwrap();
    assert_eq!(csi.driver, driver);
    let synced = format!("{certs}-x-default-x-{}", t.name);
    assert_eq!(
        csi.node_publish_secret_ref.as_ref().unwrap().name,
        synced,
        "the reference names the tenant's synced Secret, not the host's {certs}"
    );
    let copy = eventually("the referenced Secret is synced", LONG, || async {
        hsecrets.get_opt(&synced).await.ok().flatten()
    })
    .await;
    let data = copy.data.unwrap();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["tenant"],
        "the tenant's own data, no CA keys"
    );
    // Another driver is still refused.
    let other = format!("{MAIN}  volumes: [{{name: v, csi: {{driver: other.example.com}}}}]\n");
    refused(
        &t,
        &virt,
        &host,
        "csi-other",
        &pod_yaml("csi-other", &other),
        "spec.volumes[0].csi.driver",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ephemeral_volume_is_one_host_claim_without_the_templates_choices() {
    let t = Tenant::start("atk-eph");
    let virt = t.client().await;
    let host = common::host_client().await;
    // The template tries to claim any Available volume and to clone the control plane's.
    let spec = format!(
        "{MAIN}  volumes:\n  - name: scratch\n    ephemeral:\n      volumeClaimTemplate:\n        spec:\n          accessModes: [ReadWriteOnce]\n          resources: {{requests: {{storage: 1Gi}}}}\n          volumeName: someone-elses-pv\n          dataSource: {{kind: PersistentVolumeClaim, name: data-vkube-0}}\n"
    );
    apply(&t, &pod_yaml("eph", &spec));
    let pod = wait_host_pod(&host, &t, "eph").await;
    let claim_name = format!("eph-scratch-x-default-x-{}", t.name);
    let vol = &pod.spec.unwrap().volumes.unwrap()[0];
    assert!(vol.ephemeral.is_none(), "no template reaches the host");
    assert_eq!(
        vol.persistent_volume_claim.as_ref().unwrap().claim_name,
        claim_name,
        "the host pod uses the synced claim of the virtual ephemeral controller"
    );
    let hclaims: Api<PersistentVolumeClaim> = Api::namespaced(host.clone(), &t.namespace);
    let claim = eventually("the ephemeral claim on the host", LONG, || async {
        hclaims.get_opt(&claim_name).await.ok().flatten()
    })
    .await;
    let spec = claim.spec.unwrap();
    assert_eq!(
        spec.volume_name, None,
        "no host volume chosen by the tenant"
    );
    assert_eq!(
        spec.data_source.unwrap().name,
        format!("data-vkube-0-x-default-x-{}", t.name),
        "the data source is the tenant's own claim of that name, not the control plane's"
    );
    wait_event(&virt, "default", "eph-scratch", "HostPolicyAdjusted").await;
    // One volume, one host claim.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = hclaims
        .list(&ListParams::default().labels(&format!("vkube.dev/managed-by={}", t.name)))
        .await
        .unwrap()
        .items;
    assert_eq!(
        all.iter().map(|c| c.name_any()).collect::<Vec<_>>(),
        [claim_name],
        "exactly one host claim"
    );

    // A snapshot (or any kind vkube does not sync) as data source is refused.
    apply(
        &t,
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: from-snapshot, namespace: default}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
  dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: data-vkube-0}
"#,
    );
    let ev = wait_event(&virt, "default", "from-snapshot", "HostPolicyViolation").await;
    assert!(
        ev.message.unwrap_or_default().contains("spec.dataSource"),
        "the Event names the data source"
    );
    assert!(
        hclaims
            .get_opt(&format!("from-snapshot-x-default-x-{}", t.name))
            .await
            .unwrap()
            .is_none(),
        "no host claim for a snapshot source"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn placement_stays_within_the_admins_bounds() {
    let host = common::host_client().await;
    let nodes: Api<Node> = Api::all(host.clone());
    let names: Vec<String> = nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    assert!(names.len() >= 2, "needs two host nodes: {names:?}");
    // A label only this test uses marks the node tenants are kept to.
    let pool = common::unique("e2e-pool");
    let (allowed, reserved) = (&names[0], &names[1]);
    common::kubectl_ok(
        &common::env().host_kubeconfig,
        &["label", "node", allowed, &format!("{pool}=tenants")],
    );
    let t = Tenant::start_with(
        "atk-place",
        "127.0.0.1",
        &["--node-selector", &format!("{pool}=tenants")],
    );
    let virt = t.client().await;

    // A plain pod lands on the allowed node.
    apply(&t, &pod_yaml("plain", MAIN));
    let placed = eventually("plain pod scheduled", LONG, || async {
        host_pod(&host, &t, "plain")
            .await
            .and_then(|p| p.spec?.node_name)
    })
    .await;
    assert_eq!(&placed, allowed, "the admin's node selector holds");

    // nodeName: the host scheduler still decides, so a reserved node stays out of reach.
    apply(
        &t,
        &pod_yaml("pinned", &format!("  nodeName: {reserved}\n{MAIN}")),
    );
    let pinned = wait_host_pod(&host, &t, "pinned").await;
    let spec = pinned.spec.unwrap();
    assert_eq!(spec.node_name, None, "nodeName never reaches the host");
    assert_eq!(
        spec.node_selector.unwrap()[&pool],
        "tenants",
        "the enforced selector is ANDed in"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = host_pod(&host, &t, "pinned").await.unwrap();
    assert_eq!(
        still.spec.unwrap().node_name,
        None,
        "not scheduled onto the reserved node"
    );

    // A toleration the admin did not allow is left out, with a Warning.
    let tolerating = format!(
        "  tolerations: [{{key: dedicated, operator: Equal, value: infra, effect: NoSchedule}}, {{operator: Exists}}]\n{MAIN}"
    );
    apply(&t, &pod_yaml("tolerating", &tolerating));
    let pod = wait_host_pod(&host, &t, "tolerating").await;
    let kept: Vec<Option<String>> = pod
        .spec
        .unwrap()
        .tolerations
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.key)
        .collect();
    assert!(
        kept.iter().all(|k| k
            .as_deref()
            .is_some_and(|k| k.starts_with("node.kubernetes.io/"))),
        "only the virtual API's default tolerations are kept: {kept:?}"
    );
    let ev = wait_event(&virt, "default", "tolerating", "HostPolicyAdjusted").await;
    assert!(
        ev.message
            .unwrap_or_default()
            .contains("spec.tolerations[0]"),
        "the Event names the dropped toleration"
    );

    // A node selector against the enforced one, and a runtime class nobody allowed: refused.
    refused(
        &t,
        &virt,
        &host,
        "conflict",
        &pod_yaml(
            "conflict",
            &format!("  nodeSelector: {{{pool}: infra}}\n{MAIN}"),
        ),
        &format!("spec.nodeSelector[{pool}]"),
    )
    .await;
    // The class exists in the virtual cluster (its admission insists), not on the host's list.
    apply(
        &t,
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: kata}\nhandler: kata\n",
    );
    refused(
        &t,
        &virt,
        &host,
        "runtime",
        &pod_yaml("runtime", &format!("  runtimeClassName: kata\n{MAIN}")),
        "spec.runtimeClassName",
    )
    .await;
    common::kubectl_ok(
        &common::env().host_kubeconfig,
        &["label", "node", allowed, &format!("{pool}-")],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn host_acting_labels_and_annotations_are_renamed_and_selectors_still_match() {
    let t = Tenant::start("atk-meta");
    let host = common::host_client().await;
    let host_labels = [
        ("aadpodidbinding", "cluster-admin-identity"),
        ("azure.workload.identity/use", "true"),
        ("sidecar.istio.io/inject", "false"),
    ];
    let host_annotations = [
        ("k8s.v1.cni.cncf.io/networks", "host-device"),
        ("cni.projectcalico.org/ipv4pools", "[\"infra-pool\"]"),
        ("vault.hashicorp.com/agent-inject", "true"),
        ("linkerd.io/inject", "disabled"),
        ("cluster-autoscaler.kubernetes.io/safe-to-evict", "false"),
    ];
    let labels: String = host_labels
        .iter()
        .map(|(k, v)| format!("{k}: {v:?}, "))
        .collect();
    let annotations: String = host_annotations
        .iter()
        .map(|(k, v)| format!("{k}: {v:?}, "))
        .collect();
    apply(
        &t,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: default
  labels: {{app: web, {labels}}}
  annotations: {{{annotations}kubectl.kubernetes.io/default-container: main}}
spec:
{MAIN}---
apiVersion: v1
kind: Service
metadata:
  name: by-identity
  namespace: default
  annotations: {{external-dns.alpha.kubernetes.io/hostname: bank.example.com}}
spec:
  selector: {{aadpodidbinding: cluster-admin-identity}}
  ports: [{{port: 80}}]
---
apiVersion: v1
kind: Secret
metadata:
  name: stolen
  namespace: default
  annotations: {{replicator.v1.mittwald.de/replicate-from: kube-system/admin-token}}
stringData: {{x: "v"}}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg
  namespace: default
  labels: {{aadpodidbinding: cluster-admin-identity}}
data: {{x: "v"}}
"#
        ),
    );
    // Referenced, so the Secret and ConfigMap are synced.
    apply(
        &t,
        &pod_yaml(
            "uses",
            "  containers: [{name: main, image: registry.local/x:1, envFrom: [{secretRef: {name: stolen}}, {configMapRef: {name: cfg}}]}]\n",
        ),
    );
    let pod = eventually("web is running on the host", LONG, || async {
        host_pod(&host, &t, "web")
            .await
            .filter(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())
    })
    .await;
    let l = pod.labels();
    let a = pod.annotations();
    for (k, v) in host_labels {
        assert!(
            !l.contains_key(k),
            "label {k} does not reach the host as is"
        );
        assert!(
            l.iter()
                .any(|(hk, hv)| hk.starts_with("vkube.dev/l-") && hv == v),
            "label {k}'s value is kept under vkube's inert key"
        );
    }
    for (k, _) in host_annotations {
        assert!(
            !a.contains_key(k),
            "annotation {k} does not reach the host as is"
        );
    }
    assert_eq!(l["app"], "web", "harmless labels stay");
    assert_eq!(a["kubectl.kubernetes.io/default-container"], "main");

    // The host Service selects on the renamed key, and so still finds the pod.
    let svc_name = format!("by-identity-x-default-x-{}", t.name);
    let svc = eventually("the host Service", LONG, || async {
        Api::<Service>::namespaced(host.clone(), &t.namespace)
            .get_opt(&svc_name)
            .await
            .ok()
            .flatten()
    })
    .await;
    let selector = svc.spec.unwrap().selector.unwrap();
    assert!(!selector.contains_key("aadpodidbinding"));
    assert!(
        !svc.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("external-dns.alpha.kubernetes.io/hostname"),
        "external-dns does not see the tenant's hostname"
    );
    let pod_ip = pod.status.unwrap().pod_ip.unwrap();
    eventually("the host's endpoints list the pod", LONG, || async {
        let slices = Api::<EndpointSlice>::namespaced(host.clone(), &t.namespace)
            .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc_name}")))
            .await
            .ok()?
            .items;
        slices
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .any(|e| e.addresses.contains(&pod_ip))
            .then_some(())
    })
    .await;

    let secret = eventually("the referenced Secret on the host", LONG, || async {
        Api::<Secret>::namespaced(host.clone(), &t.namespace)
            .get_opt(&format!("stolen-x-default-x-{}", t.name))
            .await
            .ok()
            .flatten()
    })
    .await;
    assert!(
        !secret
            .annotations()
            .contains_key("replicator.v1.mittwald.de/replicate-from"),
        "the replicator does not act on the tenant's Secret"
    );
    let cm = eventually("the referenced ConfigMap on the host", LONG, || async {
        Api::<ConfigMap>::namespaced(host.clone(), &t.namespace)
            .get_opt(&format!("cfg-x-default-x-{}", t.name))
            .await
            .ok()
            .flatten()
    })
    .await;
    assert!(!cm.labels().contains_key("aadpodidbinding"));
}

/// The JSON payload of a JWT (not verified: the test reads what was issued).
fn jwt_claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

#[tokio::test(flavor = "multi_thread")]
async fn each_projected_token_has_its_own_audience() {
    let t = Tenant::start("atk-token");
    let virt = t.client().await;
    let host = common::host_client().await;
    // The usual API token (added by the virtual API server) and one for a third party.
    apply(
        &t,
        &pod_yaml(
            "two-tokens",
            r#"  containers: [{name: main, image: registry.local/x:1, volumeMounts: [{name: vault, mountPath: /var/run/vault}]}]
  volumes:
  - name: vault
    projected:
      sources: [{serviceAccountToken: {audience: vault.example.com, expirationSeconds: 900, path: token}}]
"#,
        ),
    );
    let host_pod_name = format!("two-tokens-x-default-x-{}", t.name);
    let secret_name = format!("{host_pod_name}-sa-token");
    let hsecrets: Api<Secret> = Api::namespaced(host.clone(), &t.namespace);
    let secret = eventually("the token Secret holds both tokens", LONG, || async {
        hsecrets
            .get_opt(&secret_name)
            .await
            .ok()
            .flatten()
            .filter(|s| s.data.as_ref().is_some_and(|d| d.len() == 2))
    })
    .await;
    let data: BTreeMap<String, String> = secret
        .data
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
        .collect();
    let api_token = &data["token"];
    let (vault_key, vault_token) = data
        .iter()
        .find(|(k, _)| k.as_str() != "token")
        .expect("a second token");
    let aud = |token: &str| jwt_claims(token)["aud"].clone();
    assert_eq!(
        aud(api_token),
        serde_json::json!(["https://kubernetes.default.svc.cluster.local"]),
        "the API token is for the virtual API"
    );
    assert_eq!(
        aud(vault_token),
        serde_json::json!(["vault.example.com"]),
        "the third party's token is for the third party only"
    );
    let review = |token: &str| TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_string()),
            audiences: None,
        },
        ..Default::default()
    };
    let reviews: Api<TokenReview> = Api::all(virt.clone());
    let vault_review = reviews
        .create(&PostParams::default(), &review(vault_token))
        .await
        .unwrap();
    assert_ne!(
        vault_review.status.unwrap().authenticated,
        Some(true),
        "a token for vault.example.com is not accepted by the virtual API"
    );
    let api_review = reviews
        .create(&PostParams::default(), &review(api_token))
        .await
        .unwrap();
    assert_eq!(api_review.status.unwrap().authenticated, Some(true));

    // Each projection mounts its own key.
    let pod = wait_host_pod(&host, &t, "two-tokens").await;
    let mounted: Vec<String> = pod
        .spec
        .unwrap()
        .volumes
        .unwrap()
        .iter()
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.secret.as_ref())
        .filter(|s| s.name == secret_name)
        .flat_map(|s| s.items.iter().flatten().map(|i| i.key.clone()))
        .collect();
    assert!(mounted.contains(&"token".to_string()), "{mounted:?}");
    assert!(mounted.contains(vault_key), "{mounted:?}");
}
