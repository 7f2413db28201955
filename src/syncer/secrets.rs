//! Secrets: synced while a virtual pod or Ingress (TLS, controller annotations) references them
//! (see `referenced`). Secret data is never logged.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::Store;

use super::referenced::Referenced;
use super::{Stores, SyncerConfig};
use crate::translate::{self, Tenant, pod::References};

impl Referenced for Secret {
    fn virtual_store(stores: &Stores) -> &Store<Self> {
        &stores.virtual_secrets
    }
    fn host_store(stores: &Stores) -> &Store<Self> {
        &stores.host_secrets
    }
    fn sync_all(config: &SyncerConfig) -> bool {
        config.sync_all_secrets
    }
    fn names(refs: &References) -> &BTreeSet<String> {
        &refs.secrets
    }
    /// Ingresses terminate TLS with (or authenticate by) Secrets of their namespace.
    fn referenced_elsewhere(stores: &Stores, namespace: &str, name: &str) -> bool {
        stores.virtual_ingresses.state().iter().any(|i| {
            i.metadata.namespace.as_deref() == Some(namespace)
                && translate::ingress::referenced_secrets(i).contains(name)
        })
    }
    fn from_custom(refs: translate::custom::CustomReferences) -> BTreeSet<String> {
        refs.secrets
    }
    fn to_host(&self, tenant: &Tenant) -> Self {
        translate::secret::to_host(self, tenant)
    }
}
