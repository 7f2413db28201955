//! ConfigMaps: synced while a virtual pod references them (see `referenced`).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::reflector::Store;

use super::referenced::Referenced;
use super::{Stores, SyncerConfig};
use crate::translate::{self, Tenant, pod::References};

impl Referenced for ConfigMap {
    fn virtual_store(stores: &Stores) -> &Store<Self> {
        &stores.virtual_config_maps
    }
    fn host_store(stores: &Stores) -> &Store<Self> {
        &stores.host_config_maps
    }
    fn sync_all(config: &SyncerConfig) -> bool {
        config.sync_all_config_maps
    }
    fn names(refs: &References) -> &BTreeSet<String> {
        &refs.config_maps
    }
    fn from_custom(refs: translate::custom::CustomReferences) -> BTreeSet<String> {
        refs.config_maps
    }
    fn to_host(&self, tenant: &Tenant) -> Self {
        translate::configmap::to_host(self, tenant)
    }
}
