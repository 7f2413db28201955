//! Attacks through custom resources synced by configuration: fields that name another
//! namespace or a host object, and names chosen to take over a host object. Each asserts the
//! refusal the tenant sees and that nothing reached the host. (PodDisruptionBudgets selecting
//! beyond the tenant and priority classes above the admin's are in `custom_resources`.)

use crate::attack_ingress::wait_event_saying;
use crate::common::eventually;
use crate::custom_resources::{GROUP, host_get, host_kubectl, host_name, widget, widget_tenant};
use crate::syncer::{LONG, apply};

#[tokio::test(flavor = "multi_thread")]
async fn custom_resources_never_reach_other_namespaces_or_host_objects() {
    let t = widget_tenant("crdatk");
    let virt = t.client().await;
    // A victim outside the tenant's namespace.
    let victim_ns = format!("e2e-victim-{}", t.name);
    host_kubectl(&["create", "namespace", &victim_ns], None);
    host_kubectl(
        &[
            "create",
            "secret",
            "generic",
            "victim",
            "-n",
            &victim_ns,
            "--from-literal=k=v",
        ],
        None,
    );
    apply(
        &t,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: victim, namespace: default}\nstringData: {k: mine}\n",
    );
    apply(
        &t,
        &widget(
            "steal",
            &format!("{{secretRef: {{name: victim, namespace: {victim_ns}}}}}"),
        ),
    );
    apply(
        &t,
        &widget(
            "everywhere",
            "{namespaceSelector: {any: true}, targets: [{watchNamespace: kube-system}]}",
        ),
    );
    // A Secret the tenant does not have, named like vkube's own credentials.
    let certs = format!("vkube-{}-certs", t.name);
    apply(
        &t,
        &widget("creds", &format!("{{secretRef: {{name: {certs}}}}}")),
    );
    // A host object at the exact translated name, made by someone else.
    let clash = host_name(&t, "clash");
    host_kubectl(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: {GROUP}/v1\nkind: Widget\nmetadata: {{name: {clash}, namespace: {}}}\nspec: {{owner: host-admin}}\n",
            t.namespace
        )),
    );
    apply(&t, &widget("clash", "{owner: tenant}"));

    wait_event_saying(
        &virt,
        "default",
        "Widget",
        "steal",
        "HostPolicyViolation",
        &["spec.secretRef.namespace", &victim_ns],
    )
    .await;
    wait_event_saying(
        &virt,
        "default",
        "Widget",
        "everywhere",
        "HostPolicyViolation",
        &["spec.namespaceSelector", "spec.targets[0].watchNamespace"],
    )
    .await;
    wait_event_saying(
        &virt,
        "default",
        "Widget",
        "clash",
        "HostNameConflict",
        &[&clash, "not managed by this virtual cluster"],
    )
    .await;
    let h = eventually("the credentials widget is synced", LONG, || async {
        host_get(&[
            "widgets.e2e.vkube.dev",
            "-n",
            &t.namespace,
            &host_name(&t, "creds"),
        ])
    })
    .await;
    assert_eq!(
        h["spec"]["secretRef"]["name"],
        host_name(&t, &certs),
        "a reference names the tenant's copy, never the host's Secret"
    );

    // Nothing of the refused objects reached the host; the foreign object is untouched.
    for name in ["steal", "everywhere"] {
        assert!(
            host_get(&[
                "widgets.e2e.vkube.dev",
                "-n",
                &t.namespace,
                &host_name(&t, name)
            ])
            .is_none(),
            "{name} must not reach the host"
        );
    }
    let foreign = host_get(&["widgets.e2e.vkube.dev", "-n", &t.namespace, &clash]).unwrap();
    assert_eq!(foreign["spec"]["owner"], "host-admin");
    assert!(foreign["metadata"]["labels"]["vkube.dev/managed-by"].is_null());
    let victim = host_get(&["secret", "victim", "-n", &victim_ns]).unwrap();
    assert_eq!(
        victim["data"]["k"], "dg==",
        "the victim Secret is unchanged"
    );
    assert!(
        host_get(&["secret", "-n", &t.namespace, &host_name(&t, &certs)]).is_none(),
        "no Secret the tenant does not have is copied"
    );

    // A synced object edited to reach beyond is taken off the host.
    apply(&t, &widget("turn", "{size: 1}"));
    let turn = host_name(&t, "turn");
    eventually("the harmless widget is synced", LONG, || async {
        host_get(&["widgets.e2e.vkube.dev", "-n", &t.namespace, &turn])
    })
    .await;
    apply(
        &t,
        &widget("turn", "{size: 1, targetNamespace: kube-system}"),
    );
    eventually("the edited widget leaves the host", LONG, || async {
        host_get(&["widgets.e2e.vkube.dev", "-n", &t.namespace, &turn])
            .is_none()
            .then_some(())
    })
    .await;
    host_kubectl(&["delete", "namespace", &victim_ns, "--wait=false"], None);
}
