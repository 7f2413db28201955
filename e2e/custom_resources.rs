//! Custom resources synced by configuration, and the built-in kinds that came with them
//! (PriorityClasses, PodDisruptionBudgets, VolumeSnapshots, ServiceAccounts' image pull
//! Secrets), against the real host of `hack/` with kwok nodes. The host's part that no
//! controller plays there (an operator's status, a snapshot controller's) is written by the test
//! as the host admin.

use std::time::Duration;

use serde_json::Value;

use crate::attack_ingress::wait_event_saying;
use crate::common::{self, Tenant, eventually};
use crate::syncer::{LONG, apply};

pub(crate) const GROUP: &str = "e2e.vkube.dev";

/// A namespaced sample CRD with a status subresource (the host must serve it).
pub(crate) fn crd(kind: &str, plural: &str) -> String {
    format!(
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: {plural}.{GROUP}}}
spec:
  group: {GROUP}
  scope: Namespaced
  names: {{plural: {plural}, singular: {singular}, kind: {kind}, listKind: {kind}List}}
  versions:
    - name: v1
      served: true
      storage: true
      subresources: {{status: {{}}}}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {{type: object, x-kubernetes-preserve-unknown-fields: true}}
            status: {{type: object, x-kubernetes-preserve-unknown-fields: true}}
"#,
        singular = kind.to_lowercase()
    )
}

pub(crate) fn host_kubectl(args: &[&str], stdin: Option<&str>) -> String {
    let out = common::kubectl(&common::env().host_kubeconfig, args, stdin);
    assert!(
        out.status.success(),
        "host kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl get -o json` on the host; None if it does not exist (or cannot be read).
pub(crate) fn host_get(args: &[&str]) -> Option<Value> {
    let mut all = vec!["get", "-o", "json"];
    all.extend_from_slice(args);
    let out = common::kubectl(&common::env().host_kubeconfig, &all, None);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

pub(crate) fn virtual_get(t: &Tenant, args: &[&str]) -> Option<Value> {
    let mut all = vec!["get", "-o", "json"];
    all.extend_from_slice(args);
    let out = t.kubectl(&all);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Installs the sample CRDs on the host (idempotent: every test shares the host; once per test
/// process, as two concurrent applies of a new object race to create it).
pub(crate) fn install_host_crds() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(install_host_crds_now);
}

fn install_host_crds_now() {
    for (kind, plural) in [("Widget", "widgets"), ("Gadget", "gadgets")] {
        host_kubectl(&["apply", "-f", "-"], Some(&crd(kind, plural)));
        host_kubectl(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{plural}.{GROUP}"),
            ],
            None,
        );
    }
}

/// What the admin adds to vkube's Role for the custom kinds it allows (the chart does it from
/// policy.customResources). Gadgets are allowed by RBAC too, so that only the syncer's
/// configuration keeps them off the host.
pub(crate) fn grant_custom_kinds(t: &Tenant) {
    let ns = &t.namespace;
    host_kubectl(
        &["apply", "-f", "-"],
        Some(&format!(
            r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: vkube-custom, namespace: {ns}}}
rules:
  - apiGroups: [{GROUP}]
    resources: [widgets, gadgets]
    verbs: [get, list, watch, create, patch, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: vkube-custom, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: vkube-custom}}
subjects: [{{kind: ServiceAccount, name: vkube, namespace: {ns}}}]
"#
        )),
    );
}

/// The widget kind as the admin configures it.
pub(crate) const WIDGET_SYNC: &str =
    "e2e.vkube.dev/v1/Widget:spec.secretRef.name=Secret,spec.backend=Service";

/// A tenant syncing widgets, with the cluster-read grant (the virtual CRD comes from the host's).
pub(crate) fn widget_tenant(prefix: &str) -> Tenant {
    widget_tenant_with(prefix, &[])
}

/// [`widget_tenant`] with more `vkube serve` arguments.
pub(crate) fn widget_tenant_with(prefix: &str, extra: &[&str]) -> Tenant {
    install_host_crds();
    let mut t = Tenant::new(prefix);
    grant_custom_kinds(&t);
    t.grant_cluster_read();
    t.extra_args = vec!["--sync-custom-resource".into(), WIDGET_SYNC.into()];
    t.extra_args.extend(extra.iter().map(|a| a.to_string()));
    t.spawn();
    t.wait_ready();
    // The CRD is installed from the host's once the syncer has resolved the kind.
    let crd = format!("widgets.{GROUP}");
    let deadline = std::time::Instant::now() + LONG;
    while t.kubectl(&["get", "crd", &crd]).status.code() != Some(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the virtual cluster never got the host's CRD {crd}: {}",
            t.log_tail()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    t
}

pub(crate) fn widget(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: {GROUP}/v1\nkind: Widget\nmetadata: {{name: {name}, namespace: default}}\nspec: {spec}\n"
    )
}

/// Host name of virtual `default/name` of tenant `t` (the plain form, short names only).
pub(crate) fn host_name(t: &Tenant, name: &str) -> String {
    format!("{name}-x-default-x-{}", t.name)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_custom_resource_goes_down_with_its_secret_and_its_status_comes_back() {
    let metrics = common::free_port();
    let bind = format!("127.0.0.1:{metrics}");
    let t = widget_tenant_with("crd", &["--metrics-bind-address", &bind]);
    let virt = t.client().await;
    apply(
        &t,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: creds, namespace: default}\nstringData: {token: s3cret}\n",
    );
    apply(
        &t,
        &widget(
            "w1",
            "{secretRef: {name: creds}, backend: web, size: 3, labels: {team: a}}",
        ),
    );
    // A kind the admin did not configure: the tenant installs its CRD itself, and RBAC would
    // even let vkube write it; it never reaches the host.
    apply(&t, &crd("Gadget", "gadgets"));
    t.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        &format!("crd/gadgets.{GROUP}"),
    ]);
    apply(
        &t,
        &format!(
            "apiVersion: {GROUP}/v1\nkind: Gadget\nmetadata: {{name: g1, namespace: default}}\nspec: {{secretRef: {{name: creds}}}}\n"
        ),
    );

    let host_widget = host_name(&t, "w1");
    let h = eventually("the widget reaches the host", LONG, || async {
        host_get(&["widgets.e2e.vkube.dev", "-n", &t.namespace, &host_widget])
    })
    .await;
    assert_eq!(h["spec"]["secretRef"]["name"], host_name(&t, "creds"));
    assert_eq!(h["spec"]["backend"], host_name(&t, "web"));
    assert_eq!(h["spec"]["size"], 3);
    assert_eq!(h["metadata"]["labels"]["vkube.dev/managed-by"], t.name);
    assert_eq!(h["metadata"]["annotations"]["vkube.dev/name"], "w1");
    let secret = eventually("the referenced Secret reaches the host", LONG, || async {
        host_get(&["secret", "-n", &t.namespace, &host_name(&t, "creds")])
    })
    .await;
    assert_eq!(secret["data"]["token"], "czNjcmV0");

    // The host's operator reports; the tenant sees it.
    host_kubectl(
        &[
            "patch",
            "widgets.e2e.vkube.dev",
            "-n",
            &t.namespace,
            &host_widget,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Ready","observedSize":3}}"#,
        ],
        None,
    );
    eventually("the host status flows back up", LONG, || async {
        let v = virtual_get(&t, &["widget", "w1", "-n", "default"])?;
        (v["status"]["phase"] == "Ready" && v["status"]["observedSize"] == 3).then_some(())
    })
    .await;

    // A spec change goes down too.
    apply(
        &t,
        &widget("w1", "{secretRef: {name: creds}, backend: web, size: 5}"),
    );
    eventually("the spec change reaches the host", LONG, || async {
        let h = host_get(&["widgets.e2e.vkube.dev", "-n", &t.namespace, &host_widget])?;
        (h["spec"]["size"] == 5).then_some(())
    })
    .await;

    // The kind's controller is measured as the typed ones are, under the admin's name for
    // it; the tenant's own kind never shows.
    use crate::observability::{sample, scrape};
    let m = scrape(metrics);
    let widget_series = |series: &str| sample(&m, &series.replace("KIND", "Widget.e2e.vkube.dev"));
    for (series, at_least) in [
        (
            "vkube_syncer_objects_synced_total{kind=\"KIND\",op=\"created\"}",
            1.0,
        ),
        (
            "vkube_syncer_objects_synced_total{kind=\"KIND\",op=\"updated\"}",
            1.0,
        ),
        (
            "vkube_syncer_reconcile_duration_seconds_count{controller=\"KIND\"}",
            3.0,
        ),
    ] {
        assert!(
            widget_series(series) >= at_least,
            "{series}: {}\n{m}",
            widget_series(series)
        );
    }
    assert!(m.contains("vkube_syncer_queue_depth{controller=\"Widget.e2e.vkube.dev\"}"));
    assert!(!m.contains("Gadget") && !m.contains("gadgets"), "{m}");

    let gadgets = host_get(&["gadgets.e2e.vkube.dev", "-n", &t.namespace]).unwrap();
    assert_eq!(
        gadgets["items"].as_array().map(Vec::len),
        Some(0),
        "a kind outside the configuration never reaches the host"
    );

    t.kubectl_ok(&["delete", "widget", "w1", "-n", "default"]);
    eventually(
        "deleting the widget removes the host copy",
        LONG,
        || async {
            host_get(&["widgets.e2e.vkube.dev", "-n", &t.namespace, &host_widget])
                .is_none()
                .then_some(())
        },
    )
    .await;
    eventually(
        "the Secret only the widget used is collected",
        LONG,
        || async {
            host_get(&["secret", "-n", &t.namespace, &host_name(&t, "creds")])
                .is_none()
                .then_some(())
        },
    )
    .await;
    let _ = virt;
}

/// Pods' priority classes: the host classes the admin lists are shown read-only and honoured;
/// any other class, a tenant's own with a huge value included, becomes the admin's default.
#[tokio::test(flavor = "multi_thread")]
async fn priority_classes_from_the_admins_list_reach_the_host_and_others_get_the_default() {
    for (name, value) in [("e2e-tenant-low", 1000), ("e2e-tenant-high", 2000)] {
        host_kubectl(
            &["apply", "-f", "-"],
            Some(&format!(
                "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {{name: {name}}}\nvalue: {value}\ndescription: e2e\n"
            )),
        );
    }
    let t = Tenant::start_with_cluster_read(
        "prio",
        &[
            "--allow-priority-class",
            "e2e-tenant-low",
            "--allow-priority-class",
            "e2e-tenant-high",
            "--default-priority-class",
            "e2e-tenant-low",
        ],
    );
    let virt = t.client().await;
    // The allowed host classes are shown, read-only.
    let mirror = eventually("the allowed classes are shown", LONG, || async {
        let v = virtual_get(&t, &["priorityclass", "e2e-tenant-high"])?;
        virtual_get(&t, &["priorityclass", "e2e-tenant-low"])?;
        Some(v)
    })
    .await;
    assert_eq!(mirror["value"], 2000);
    assert_eq!(
        mirror["metadata"]["labels"]["vkube.dev/host-mirror"],
        "true"
    );
    eventually("the mirror is read-only", LONG, || async {
        let out = t.kubectl(&["delete", "priorityclass", "e2e-tenant-high"]);
        String::from_utf8_lossy(&out.stderr)
            .contains("read-only")
            .then_some(())
    })
    .await;

    apply(
        &t,
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: mine}\nvalue: 1000000000\n",
    );
    for (pod, class) in [
        ("high", "e2e-tenant-high"),
        ("mine", "mine"),
        ("critical", "system-node-critical"),
    ] {
        apply(
            &t,
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: default}}\nspec:\n  priorityClassName: {class}\n  containers: [{{name: main, image: busybox}}]\n"
            ),
        );
    }
    for (pod, class, value) in [
        ("high", "e2e-tenant-high", 2000),
        ("mine", "e2e-tenant-low", 1000),
        ("critical", "e2e-tenant-low", 1000),
    ] {
        let h = eventually(&format!("host pod {pod}"), LONG, || async {
            host_get(&["pod", "-n", &t.namespace, &host_name(&t, pod)])
        })
        .await;
        assert_eq!(h["spec"]["priorityClassName"], class, "{pod}");
        assert_eq!(h["spec"]["priority"], value, "{pod}");
    }
    wait_event_saying(
        &virt,
        "default",
        "Pod",
        "mine",
        "HostPolicyAdjusted",
        &["spec.priorityClassName", "e2e-tenant-low"],
    )
    .await;
}

/// A PodDisruptionBudget protects the tenant's own pods from the host's evictions, and nothing
/// else in its host namespace (the control plane, a pod vkube did not create).
#[tokio::test(flavor = "multi_thread")]
async fn a_disruption_budget_protects_the_tenants_pods_and_nothing_else() {
    let t = Tenant::start("pdb");
    apply(
        &t,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: default, labels: {app: web}}\nspec:\n  containers: [{name: main, image: busybox}]\n",
    );
    // A pod of the host namespace that is not the tenant's, with the same label.
    host_kubectl(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: foreign, namespace: {}, labels: {{app: web}}}}\nspec:\n  containers: [{{name: main, image: busybox}}]\n",
            t.namespace
        )),
    );
    // The tenant's budget, and one that tries to reach beyond (forged ownership, everything).
    apply(
        &t,
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: web, namespace: default}\nspec:\n  minAvailable: 1\n  selector: {matchLabels: {app: web}}\n",
    );
    apply(
        &t,
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: grab, namespace: default}\nspec:\n  maxUnavailable: 0\n  selector: {matchLabels: {vkube.dev/managed-by: someone-else}}\n",
    );
    let hpdb = host_name(&t, "web");
    let status = eventually("the host budget counts the tenant's pod", LONG, || async {
        let h = host_get(&["pdb", "-n", &t.namespace, &hpdb])?;
        (h["status"]["currentHealthy"] == 1 && h["status"]["expectedPods"] == 1).then_some(h)
    })
    .await;
    assert_eq!(
        status["spec"]["selector"]["matchLabels"]["vkube.dev/managed-by"],
        t.name
    );
    eventually("the forged budget selects nothing", LONG, || async {
        let h = host_get(&["pdb", "-n", &t.namespace, &host_name(&t, "grab")])?;
        (h["status"]["expectedPods"] == 0 && h["status"]["observedGeneration"] == 1).then_some(())
    })
    .await;

    let evict = |pod: &str| {
        let body = format!(
            r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{pod}","namespace":"{}"}}}}"#,
            t.namespace
        );
        let path = format!("/api/v1/namespaces/{}/pods/{pod}/eviction", t.namespace);
        common::kubectl(
            &common::env().host_kubeconfig,
            &["create", "--raw", &path, "-f", "-"],
            Some(&body),
        )
    };
    let refused = evict(&host_name(&t, "web"));
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("disruption budget"),
        "the tenant's pod is protected: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let foreign = evict("foreign");
    assert!(
        foreign.status.success(),
        "the tenant's budgets never block another pod's eviction: {}",
        String::from_utf8_lossy(&foreign.stderr)
    );

    t.kubectl_ok(&["delete", "pdb", "web", "-n", "default"]);
    eventually("the host budget goes with it", LONG, || async {
        host_get(&["pdb", "-n", &t.namespace, &hpdb])
            .is_none()
            .then_some(())
    })
    .await;
}

/// VolumeSnapshots (CSI snapshot CRDs on the host, installed by hack/host-cluster.sh): the
/// source claim is the tenant's host claim, the class is the host's (shown read-only), the
/// snapshot controller's status flows back, and a claim restored from the snapshot names the
/// host copy.
#[tokio::test(flavor = "multi_thread")]
async fn volume_snapshots_go_down_with_their_claim_and_claims_restore_from_them() {
    host_kubectl(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotClass\nmetadata: {name: e2e-snap}\ndriver: csi.e2e.vkube.dev\ndeletionPolicy: Delete\n",
        ),
    );
    let t = Tenant::start_with_cluster_read("snap", &["--sync-volume-snapshots"]);
    let shown = eventually("the host's snapshot class is shown", LONG, || async {
        virtual_get(&t, &["volumesnapshotclass", "e2e-snap"])
    })
    .await;
    assert_eq!(shown["driver"], "csi.e2e.vkube.dev");
    apply(
        &t,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data, namespace: default}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    );
    apply(
        &t,
        "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata: {name: nightly, namespace: default}\nspec:\n  volumeSnapshotClassName: e2e-snap\n  source: {persistentVolumeClaimName: data}\n",
    );
    let hsnap = host_name(&t, "nightly");
    let h = eventually("the snapshot reaches the host", LONG, || async {
        host_get(&["volumesnapshot", "-n", &t.namespace, &hsnap])
    })
    .await;
    assert_eq!(
        h["spec"]["source"]["persistentVolumeClaimName"],
        host_name(&t, "data")
    );
    assert_eq!(h["spec"]["volumeSnapshotClassName"], "e2e-snap");
    host_kubectl(
        &[
            "patch",
            "volumesnapshot",
            "-n",
            &t.namespace,
            &hsnap,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"readyToUse":true,"restoreSize":"1Gi"}}"#,
        ],
        None,
    );
    eventually("the snapshot's status flows back", LONG, || async {
        let v = virtual_get(&t, &["volumesnapshot", "nightly", "-n", "default"])?;
        (v["status"]["readyToUse"] == true).then_some(())
    })
    .await;
    apply(
        &t,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: restored, namespace: default}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n  dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: nightly}\n",
    );
    let claim = eventually("the restored claim reaches the host", LONG, || async {
        host_get(&["pvc", "-n", &t.namespace, &host_name(&t, "restored")])
    })
    .await;
    assert_eq!(claim["spec"]["dataSource"]["name"], hsnap);
    assert_eq!(claim["spec"]["dataSource"]["kind"], "VolumeSnapshot");
}

/// Pods of a ServiceAccount with image pull Secrets get them on the host, translated, and the
/// Secrets are synced.
#[tokio::test(flavor = "multi_thread")]
async fn a_service_accounts_image_pull_secrets_reach_the_host_pod() {
    let t = Tenant::start("pullsa");
    apply(
        &t,
        r#"apiVersion: v1
kind: Secret
metadata: {name: regcred, namespace: default}
type: kubernetes.io/dockerconfigjson
stringData: {.dockerconfigjson: '{"auths":{"registry.example.com":{"auth":"dTpw"}}}'}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: builder, namespace: default}
imagePullSecrets: [{name: regcred}]
"#,
    );
    apply(
        &t,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: build, namespace: default}\nspec:\n  serviceAccountName: builder\n  containers: [{name: main, image: registry.example.com/builder:1}]\n",
    );
    let h = eventually("the host pod", LONG, || async {
        host_get(&["pod", "-n", &t.namespace, &host_name(&t, "build")])
    })
    .await;
    assert_eq!(
        h["spec"]["imagePullSecrets"][0]["name"],
        host_name(&t, "regcred")
    );
    eventually("the pull Secret reaches the host", LONG, || async {
        host_get(&["secret", "-n", &t.namespace, &host_name(&t, "regcred")])
    })
    .await;
}
