//! PodDisruptionBudgets: the host copy protects the tenant's host pods during the host's
//! evictions (node drains, autoscaler scale-downs). Its selector is confined to the tenant and
//! the budget's virtual namespace, with label keys mapped as the pods' labels are
//! (`Tenant::confine_selector`), so a budget never counts, or blocks the eviction of, another
//! tenant's pods or the control plane, and renamed keys still match.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};

use super::Tenant;

/// The host copy of a virtual budget (pure). A budget without a selector selects no pod
/// (policy/v1), so it stays without one.
pub fn to_host(v: &PodDisruptionBudget, tenant: &Tenant) -> PodDisruptionBudget {
    let ns = v.metadata.namespace.clone().unwrap_or_default();
    let name = v.metadata.name.clone().unwrap_or_default();
    let vspec = v.spec.clone().unwrap_or_default();
    let selector = vspec.selector.map(|mut s| {
        tenant.confine_selector(&mut s, Some(&ns));
        s
    });
    PodDisruptionBudget {
        metadata: tenant.host_meta(&v.metadata, tenant.subdomain_name(&ns, &name)),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: vspec.min_available,
            max_unavailable: vspec.max_unavailable,
            unhealthy_pod_eviction_policy: vspec.unhealthy_pod_eviction_policy,
            selector,
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::test_support::tenant;
    use crate::translate::{MANAGED_BY, VIRTUAL_NAMESPACE};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use kube::api::ObjectMeta;

    fn pdb(selector: Option<LabelSelector>) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                min_available: Some(IntOrString::Int(1)),
                selector,
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn the_selector_is_confined_to_the_tenants_namespace_with_mapped_keys() {
        let t = tenant();
        let v = pdb(Some(LabelSelector {
            match_labels: Some(
                [
                    ("app".to_string(), "web".to_string()),
                    (MANAGED_BY.to_string(), "bob".to_string()),
                    (VIRTUAL_NAMESPACE.to_string(), "kube-system".to_string()),
                    ("tier".to_string(), "front".to_string()),
                ]
                .into(),
            ),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "track".into(),
                operator: "In".into(),
                values: Some(vec!["stable".into()]),
            }]),
        }));
        let h = to_host(&v, &t);
        assert_eq!(h.metadata.name.as_deref(), Some("web-x-shop-x-alice"));
        let spec = h.spec.unwrap();
        assert_eq!(spec.min_available, Some(IntOrString::Int(1)));
        let sel = spec.selector.unwrap();
        let labels = sel.match_labels.unwrap();
        // Another tenant's or namespace's pods cannot be selected: vkube's keys win.
        assert_eq!(labels[MANAGED_BY], "alice");
        assert_eq!(labels[VIRTUAL_NAMESPACE], "shop");
        assert_eq!(labels["app"], "web");
        assert_eq!(labels[&t.host_label_key("tier")], "front");
        assert_eq!(
            sel.match_expressions.unwrap()[0].key,
            t.host_label_key("track")
        );
    }

    #[test]
    fn an_empty_selector_means_the_tenants_namespace_and_none_stays_none() {
        let t = tenant();
        let all = to_host(&pdb(Some(LabelSelector::default())), &t);
        let labels = all.spec.unwrap().selector.unwrap().match_labels.unwrap();
        assert_eq!(labels.len(), 2, "{labels:?}");
        assert_eq!(to_host(&pdb(None), &t).spec.unwrap().selector, None);
    }
}
