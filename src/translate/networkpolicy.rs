//! NetworkPolicies on the host: vkube's default tenant policy and the tenant's own policies.
//!
//! NetworkPolicies only ever add allowances: a pod that any policy selects for a direction is
//! isolated in that direction and gets the union of what those policies allow. So a tenant's
//! "deny all" next to a default "allow the namespace" would deny nothing, and no single policy can
//! both be the default and let tenants narrow it. The host namespace therefore holds three kinds,
//! and none of them allows what the default closes:
//!
//! 1. The **base** ([`default_policies`]), applied by the manager (or by `vkube serve` itself):
//!    every tenant pod isolated both ways with nothing allowed, and the control plane pod
//!    reachable on the API port from anywhere and on the DNS port from the namespace.
//! 2. The **default allowances** ([`allowances`]), kept by the syncer: what a tenant pod may do
//!    when none of the tenant's own policies selects it: ingress from the host namespace's pods;
//!    egress to DNS and the API on the control plane, to the namespace's pods, and to the internet
//!    minus the closed ranges (private, loopback, link-local, the cluster's). Each selects exactly
//!    the pods no tenant policy of its direction selects (the complement of the tenant's
//!    selectors), so a tenant's deny-all really denies.
//! 3. The tenant's **own policies** ([`to_host`]), confined: selectors limited to the tenant and its
//!    virtual namespace, peers to the tenant's pods, ipBlocks clipped to the open ranges; a rule
//!    without peers allows what the default allows, never more. DNS and the API of the tenant's
//!    own control plane stay reachable under a tenant egress policy: vkube serves the tenant's DNS
//!    there, where the usual "allow kube-dns in kube-system" rule cannot point.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;

use super::endpoints::{Cidr, PRIVATE_RANGES};
use super::{MANAGED_BY, RESERVED_PREFIX, Tenant, VIRTUAL_NAMESPACE};

/// The base policy isolating every tenant pod (the manager's former single policy's name, so an
/// upgrade overwrites it).
pub const BASE_POLICY: &str = "vkube-tenant";
/// The control plane pod's ingress policy.
pub const CONTROL_PLANE_POLICY: &str = "vkube-control-plane";
/// Label on the syncer's default allowances (they have no virtual object); its value is the
/// direction.
pub const DEFAULT_ALLOWANCE: &str = "vkube.dev/default-allowance";
/// Ranges closed to tenant pods besides the private ones: link-local (cloud metadata at
/// 169.254.169.254) and loopback (host-local services a node may route to).
pub const CLOSED_RANGES: &[&str] = &["169.254.0.0/16", "127.0.0.0/8", "fe80::/10", "::1/128"];
/// More complement selectors than this for one virtual namespace and direction, and the
/// namespace's unselected pods get no default allowance (closed) instead.
pub const MAX_DEFAULT_TERMS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        }
    }
}

/// Where tenant pods reach their control plane (its API and DNS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlPlane {
    /// The control plane pod in the host namespace (the manager's StatefulSet), by its labels.
    Pod {
        selector: BTreeMap<String, String>,
        api_port: i32,
        dns_port: Option<i32>,
    },
    /// `vkube serve` running outside the pod network (`--advertise-address`).
    Address {
        ip: IpAddr,
        api_port: i32,
        dns_port: Option<i32>,
    },
}

impl ControlPlane {
    fn ports(&self) -> (i32, Option<i32>) {
        match self {
            ControlPlane::Pod {
                api_port, dns_port, ..
            }
            | ControlPlane::Address {
                api_port, dns_port, ..
            } => (*api_port, *dns_port),
        }
    }
}

/// The admin's egress ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Ranges tenant pods may reach although they are closed by default (a database subnet).
    pub allow: Vec<Cidr>,
    /// Ranges to close besides the default ones: the cluster's pod, service and node networks
    /// wherever they lie outside the private ranges.
    pub deny: Vec<Cidr>,
}

/// What tenant pods may reach by default, and where their control plane is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantNetwork {
    pub control_plane: Vec<ControlPlane>,
    pub egress: EgressPolicy,
}

impl TenantNetwork {
    /// The ranges closed to tenant pods, in both directions: private, loopback and link-local,
    /// the denied ones, less what the admin allows. Disjoint and sorted.
    fn closed(&self) -> Vec<Net> {
        let defaults = PRIVATE_RANGES
            .iter()
            .chain(CLOSED_RANGES)
            .filter_map(|r| Net::parse(r));
        let mut nets = minimal(defaults.chain(self.egress.deny.iter().map(Net::from_cidr)));
        for allowed in self.egress.allow.iter().map(Net::from_cidr) {
            nets = nets
                .into_iter()
                .flat_map(|n| subtract(n, allowed))
                .collect();
        }
        minimal(nets)
    }

    /// [`Self::closed`] as CIDR strings (for logs and documentation).
    pub fn closed_ranges(&self) -> Vec<String> {
        self.closed().iter().map(Net::to_string).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Address ranges

/// A CIDR normalised to its network address, as bits of either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Net {
    v6: bool,
    bits: u128,
    prefix: u8,
}

fn host_mask(width: u8, prefix: u8) -> u128 {
    let host_bits = u32::from(width.saturating_sub(prefix));
    if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    }
}

impl Net {
    fn width(self) -> u8 {
        if self.v6 { 128 } else { 32 }
    }

    fn new(ip: IpAddr, prefix: u8) -> Net {
        // An IPv4-mapped IPv6 range is the IPv4 range it carries, as the API server and policy
        // agents (Go's net package) read it: otherwise `::ffff:10.0.0.0/104` would pass as an
        // IPv6 range no closed IPv4 range overlaps, and reach the host as 10.0.0.0/8.
        if let IpAddr::V6(v6) = ip
            && prefix >= 96
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            return Net::new(IpAddr::V4(v4), prefix - 96);
        }
        let (v6, bits, width) = match ip {
            IpAddr::V4(a) => (false, u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (true, u128::from(a), 128),
        };
        let prefix = prefix.min(width);
        Net {
            v6,
            bits: bits & !host_mask(width, prefix),
            prefix,
        }
    }

    fn from_cidr(c: &Cidr) -> Net {
        Net::new(c.addr(), c.prefix())
    }

    fn parse(s: &str) -> Option<Net> {
        s.parse::<Cidr>().ok().map(|c| Net::from_cidr(&c))
    }

    fn everything(v6: bool) -> Net {
        Net {
            v6,
            bits: 0,
            prefix: 0,
        }
    }

    fn contains(self, other: Net) -> bool {
        self.v6 == other.v6
            && other.prefix >= self.prefix
            && other.bits & !host_mask(self.width(), self.prefix) == self.bits
    }

    fn contains_ip(self, ip: IpAddr) -> bool {
        let width = if ip.is_ipv4() { 32 } else { 128 };
        self.contains(Net::new(ip, width))
    }

    fn halves(self) -> Option<(Net, Net)> {
        if self.prefix >= self.width() {
            return None;
        }
        let prefix = self.prefix + 1;
        let high_bit = 1u128 << (self.width() - prefix);
        Some((
            Net { prefix, ..self },
            Net {
                prefix,
                bits: self.bits | high_bit,
                ..self
            },
        ))
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.v6 {
            write!(f, "{}/{}", Ipv6Addr::from(self.bits), self.prefix)
        } else {
            let v4 = u32::try_from(self.bits).unwrap_or_default();
            write!(f, "{}/{}", Ipv4Addr::from(v4), self.prefix)
        }
    }
}

/// `a` without `b`, as CIDRs (halving `a` down to `b`).
fn subtract(a: Net, b: Net) -> Vec<Net> {
    if b.contains(a) {
        return Vec::new();
    }
    if !a.contains(b) {
        return vec![a];
    }
    let Some((low, high)) = a.halves() else {
        return Vec::new();
    };
    if low.contains(b) {
        let mut out = subtract(low, b);
        out.push(high);
        out
    } else {
        let mut out = vec![low];
        out.extend(subtract(high, b));
        out
    }
}

/// Sorted, without duplicates and without ranges inside another.
fn minimal(nets: impl IntoIterator<Item = Net>) -> Vec<Net> {
    let mut all: Vec<Net> = nets.into_iter().collect();
    all.sort();
    all.dedup();
    let outer = all.clone();
    all.retain(|n| !outer.iter().any(|o| o != n && o.contains(*n)));
    all
}

/// An ipBlock peer after clipping.
enum Clipped {
    Kept {
        peer: NetworkPolicyPeer,
        /// Closed ranges added to `except`.
        added: Vec<Net>,
    },
    /// Entirely inside this closed range.
    Closed(Net),
    Invalid(String),
}

/// `block` with every closed range inside it added to `except`; nothing if it lies in one.
fn clip(block: &IPBlock, closed: &[Net]) -> Clipped {
    let Some(cidr) = Net::parse(&block.cidr) else {
        return Clipped::Invalid(block.cidr.clone());
    };
    if let Some(c) = closed.iter().find(|c| c.contains(cidr)) {
        return Clipped::Closed(*c);
    }
    let added: Vec<Net> = closed
        .iter()
        .filter(|c| cidr.contains(**c) && **c != cidr)
        .copied()
        .collect();
    // The tenant's own exceptions stay (only those that are valid and inside the block).
    let own = block
        .except
        .iter()
        .flatten()
        .filter_map(|e| Net::parse(e))
        .filter(|e| cidr.contains(*e) && *e != cidr);
    let except = minimal(own.chain(added.iter().copied()));
    Clipped::Kept {
        peer: ip_block(cidr, &except),
        added,
    }
}

fn ip_block(cidr: Net, except: &[Net]) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: cidr.to_string(),
            except: (!except.is_empty()).then(|| except.iter().map(Net::to_string).collect()),
        }),
        ..Default::default()
    }
}

/// Everything outside the closed ranges, both families.
fn internet(closed: &[Net]) -> Vec<NetworkPolicyPeer> {
    [false, true]
        .into_iter()
        .filter_map(|v6| {
            let all = Net::everything(v6);
            if closed.contains(&all) {
                return None;
            }
            let except: Vec<Net> = closed
                .iter()
                .filter(|c| all.contains(**c))
                .copied()
                .collect();
            Some(ip_block(all, &except))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Label selectors

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One requirement of a label selector (matchLabels `k: v` is `k In [v]`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Req {
    key: String,
    op: Op,
    values: Vec<String>,
}

impl Req {
    fn new(key: &str, op: Op, values: &[String]) -> Req {
        let mut values = values.to_vec();
        values.sort();
        values.dedup();
        Req {
            key: key.into(),
            op,
            values,
        }
    }

    fn negated(&self) -> Req {
        let op = match self.op {
            Op::In => Op::NotIn,
            Op::NotIn => Op::In,
            Op::Exists => Op::DoesNotExist,
            Op::DoesNotExist => Op::Exists,
        };
        Req { op, ..self.clone() }
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.op {
            Op::In => value.is_some_and(|v| self.values.contains(v)),
            Op::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
        }
    }

    fn to_k8s(&self) -> LabelSelectorRequirement {
        let op = match self.op {
            Op::In => "In",
            Op::NotIn => "NotIn",
            Op::Exists => "Exists",
            Op::DoesNotExist => "DoesNotExist",
        };
        LabelSelectorRequirement {
            key: self.key.clone(),
            operator: op.into(),
            values: matches!(self.op, Op::In | Op::NotIn).then(|| self.values.clone()),
        }
    }

    /// Whether both can hold for one set of labels (a cheap check: false only when certain).
    fn compatible(&self, other: &Req) -> bool {
        if self.key != other.key {
            return true;
        }
        let disjoint = |a: &[String], b: &[String]| !a.iter().any(|v| b.contains(v));
        let within = |a: &[String], b: &[String]| a.iter().all(|v| b.contains(v));
        match (self.op, other.op) {
            (Op::Exists | Op::In, Op::DoesNotExist) | (Op::DoesNotExist, Op::Exists | Op::In) => {
                false
            }
            (Op::In, Op::In) => !disjoint(&self.values, &other.values),
            (Op::In, Op::NotIn) => !within(&self.values, &other.values),
            (Op::NotIn, Op::In) => !within(&other.values, &self.values),
            _ => true,
        }
    }
}

/// A label selector as requirements; `None` when an operator is unknown (the API server
/// refuses such selectors; treated as selecting nothing).
fn requirements(sel: &LabelSelector) -> Option<Vec<Req>> {
    let mut reqs: Vec<Req> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| Req::new(k, Op::In, std::slice::from_ref(v)))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let op = match e.operator.as_str() {
            "In" => Op::In,
            "NotIn" => Op::NotIn,
            "Exists" => Op::Exists,
            "DoesNotExist" => Op::DoesNotExist,
            _ => return None,
        };
        reqs.push(Req::new(
            &e.key,
            op,
            e.values.as_deref().unwrap_or_default(),
        ));
    }
    reqs.sort();
    reqs.dedup();
    Some(reqs)
}

fn matches_all(reqs: &[Req], labels: &BTreeMap<String, String>) -> bool {
    reqs.iter().all(|r| r.matches(labels))
}

/// A tenant's pod selector for the host: requirements on vkube's own keys are left out (on the
/// host those keys say whose pod it is; the keys are reported back).
fn tenant_requirements(sel: Option<&LabelSelector>) -> Option<(Vec<Req>, Vec<String>)> {
    let reqs = requirements(sel.unwrap_or(&LabelSelector::default()))?;
    let (reserved, kept): (Vec<Req>, Vec<Req>) = reqs
        .into_iter()
        .partition(|r| r.key.starts_with(RESERVED_PREFIX));
    let mut dropped: Vec<String> = reserved.into_iter().map(|r| r.key).collect();
    dropped.dedup();
    Some((kept, dropped))
}

/// A host pod selector: the tenant's (and, given one, a virtual namespace's) pods, narrowed by
/// `reqs`. Written as pod.rs confines affinity selectors: vkube's ownership labels as matchLabels,
/// so no tenant requirement can widen them.
fn host_selector(tenant: &Tenant, namespace: Option<&str>, reqs: &[Req]) -> LabelSelector {
    let mut labels = match namespace {
        Some(ns) => tenant.ownership_labels(ns),
        None => BTreeMap::from([(MANAGED_BY.to_string(), tenant.name.clone())]),
    };
    let mut expressions = Vec::new();
    for r in reqs {
        // The tenant's keys as the host pods carry them (renamed unless the admin allows them);
        // vkube's own keys here were put in by this translation, never by the tenant.
        let mut r = r.clone();
        if !r.key.starts_with(RESERVED_PREFIX) {
            r.key = tenant.host_label_key(&r.key);
        }
        match (r.op, r.values.as_slice()) {
            (Op::In, [v]) if !labels.contains_key(&r.key) => {
                labels.insert(r.key.clone(), v.clone());
            }
            _ => expressions.push(r.to_k8s()),
        }
    }
    LabelSelector {
        match_labels: Some(labels),
        match_expressions: (!expressions.is_empty()).then_some(expressions),
    }
}

/// Selectors (as requirement lists) that together match exactly the label sets none of
/// `selectors` matches; `None` when more than [`MAX_DEFAULT_TERMS`] would be needed.
fn complement(selectors: &[Vec<Req>]) -> Option<Vec<Vec<Req>>> {
    // not (a1 and a2 ...) and not (b1 and ...) = (not a1 or not a2 ...) and (not b1 or ...):
    // expanded into a union of conjunctions, one negated requirement from each selector.
    let mut terms: Vec<Vec<Req>> = vec![Vec::new()];
    for sel in selectors {
        if sel.is_empty() {
            return Some(Vec::new());
        }
        let mut next: Vec<Vec<Req>> = Vec::new();
        for term in &terms {
            for r in sel {
                let n = r.negated();
                if term.iter().any(|t| !t.compatible(&n)) {
                    continue;
                }
                let mut t = term.clone();
                t.push(n);
                t.sort();
                t.dedup();
                next.push(t);
            }
        }
        next.sort();
        next.dedup();
        if next.len() > MAX_DEFAULT_TERMS {
            return None;
        }
        terms = next;
        if terms.is_empty() {
            break;
        }
    }
    Some(terms)
}

// ---------------------------------------------------------------------------------------------
// Peers and rules

fn pods(selector: LabelSelector) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(selector),
        ..Default::default()
    }
}

/// Every pod of the host namespace.
fn namespace_pods() -> NetworkPolicyPeer {
    pods(LabelSelector::default())
}

fn port(number: i32, protocol: &str) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(number)),
        protocol: Some(protocol.into()),
        end_port: None,
    }
}

fn control_plane_ports(cp: &ControlPlane) -> Vec<NetworkPolicyPort> {
    let (api, dns) = cp.ports();
    std::iter::once(port(api, "TCP"))
        .chain(dns.map(|d| port(d, "UDP")))
        .collect()
}

/// Egress to the tenant's control plane: its API and DNS ports, nothing else.
fn control_plane_rules(cps: &[ControlPlane]) -> Vec<NetworkPolicyEgressRule> {
    cps.iter()
        .map(|cp| {
            let peer = match cp {
                ControlPlane::Pod { selector, .. } => pods(LabelSelector {
                    match_labels: Some(selector.clone()),
                    match_expressions: None,
                }),
                ControlPlane::Address { ip, .. } => {
                    let width = if ip.is_ipv4() { 32 } else { 128 };
                    ip_block(Net::new(*ip, width), &[])
                }
            };
            NetworkPolicyEgressRule {
                to: Some(vec![peer]),
                ports: Some(control_plane_ports(cp)),
            }
        })
        .collect()
}

/// Where a tenant pod may send to when nothing narrows it (besides its control plane): the
/// host namespace's pods and the open internet.
fn open_destinations(closed: &[Net]) -> Vec<NetworkPolicyPeer> {
    std::iter::once(namespace_pods())
        .chain(internet(closed))
        .collect()
}

fn default_ingress_rules() -> Vec<NetworkPolicyIngressRule> {
    vec![NetworkPolicyIngressRule {
        from: Some(vec![namespace_pods()]),
        ports: None,
    }]
}

fn default_egress_rules(net: &TenantNetwork, closed: &[Net]) -> Vec<NetworkPolicyEgressRule> {
    let mut rules = control_plane_rules(&net.control_plane);
    rules.push(NetworkPolicyEgressRule {
        to: Some(open_destinations(closed)),
        ports: None,
    });
    rules
}

// ---------------------------------------------------------------------------------------------
// 1. The base

/// The policies the manager (or `vkube serve --default-network-policy on`) keeps in the host
/// namespace, by name: every tenant pod isolated, and the control plane pod (when it runs in
/// the namespace) open on its API port to anyone and on its DNS port to the namespace.
pub fn default_policies(control_plane: Option<&ControlPlane>) -> Vec<(String, NetworkPolicySpec)> {
    let mut out = vec![(
        BASE_POLICY.to_string(),
        NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![Req::new(MANAGED_BY, Op::Exists, &[]).to_k8s()]),
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: None,
            egress: None,
        },
    )];
    if let Some(ControlPlane::Pod {
        selector,
        api_port,
        dns_port,
    }) = control_plane
    {
        let mut ingress = vec![NetworkPolicyIngressRule {
            from: None,
            ports: Some(vec![port(*api_port, "TCP")]),
        }];
        if let Some(dns) = dns_port {
            ingress.push(NetworkPolicyIngressRule {
                from: Some(vec![namespace_pods()]),
                ports: Some(vec![port(*dns, "UDP")]),
            });
        }
        out.push((
            CONTROL_PLANE_POLICY.to_string(),
            NetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(selector.clone()),
                    match_expressions: None,
                }),
                policy_types: Some(vec!["Ingress".into()]),
                ingress: Some(ingress),
                egress: None,
            },
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// 2. The default allowances

/// The syncer's default allowances for the tenant, and the virtual namespaces whose own
/// policies are too many to complement (their unselected pods stay closed in that direction).
#[derive(Debug, Clone, PartialEq)]
pub struct Allowances {
    pub policies: Vec<NetworkPolicy>,
    pub too_complex: Vec<(String, Direction)>,
}

/// Whether a virtual policy restricts ingress and/or egress (the API server fills in
/// `policyTypes`; without it, as Kubernetes defaults it).
fn directions(spec: &NetworkPolicySpec) -> Vec<Direction> {
    match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => [Direction::Ingress, Direction::Egress]
            .into_iter()
            .filter(|d| types.iter().any(|t| t == d.as_str()))
            .collect(),
        _ => {
            let mut d = vec![Direction::Ingress];
            if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                d.push(Direction::Egress);
            }
            d
        }
    }
}

fn allowance_name(tenant: &Tenant, dir: Direction, ns_term: Option<(&str, usize)>) -> String {
    let dir = dir.as_str().to_lowercase();
    match ns_term {
        None => format!("vkube-allow-{dir}-{}", tenant.name),
        Some((ns, i)) => format!(
            "vkube-allow-{dir}-{}-{}-{i}",
            tenant.name,
            &super::hex_digest(ns)[..10]
        ),
    }
}

fn allowance(
    tenant: &Tenant,
    name: String,
    dir: Direction,
    selector: LabelSelector,
    net: &TenantNetwork,
    closed: &[Net],
) -> NetworkPolicy {
    let (ingress, egress) = match dir {
        Direction::Ingress => (Some(default_ingress_rules()), None),
        Direction::Egress => (None, Some(default_egress_rules(net, closed))),
    };
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(tenant.host_namespace.clone()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.to_string(), tenant.name.clone()),
                (DEFAULT_ALLOWANCE.to_string(), dir.as_str().to_lowercase()),
            ])),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector),
            policy_types: Some(vec![dir.as_str().into()]),
            ingress,
            egress,
        }),
    }
}

/// The default allowances given the tenant's virtual policies: one policy per direction for
/// the virtual namespaces without policies of that direction, and for each namespace with some,
/// the complement of their selectors.
pub fn allowances(
    tenant: &Tenant,
    net: &TenantNetwork,
    virtual_policies: &[&NetworkPolicy],
) -> Allowances {
    let closed = net.closed();
    let mut selected: BTreeMap<(Direction, String), Vec<Vec<Req>>> = BTreeMap::new();
    for p in virtual_policies {
        let spec = p.spec.clone().unwrap_or_default();
        // A selector the API server would refuse selects nothing: its namespace keeps the
        // default (the policy itself is not synced either).
        let Some((reqs, _)) = tenant_requirements(spec.pod_selector.as_ref()) else {
            continue;
        };
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        for dir in directions(&spec) {
            selected
                .entry((dir, ns.clone()))
                .or_default()
                .push(reqs.clone());
        }
    }
    let mut policies = Vec::new();
    let mut too_complex = Vec::new();
    for dir in [Direction::Ingress, Direction::Egress] {
        let with: Vec<String> = selected
            .keys()
            .filter(|(d, _)| *d == dir)
            .map(|(_, ns)| ns.clone())
            .collect();
        let rest: Vec<Req> = if with.is_empty() {
            Vec::new()
        } else {
            vec![Req::new(VIRTUAL_NAMESPACE, Op::NotIn, &with)]
        };
        policies.push(allowance(
            tenant,
            allowance_name(tenant, dir, None),
            dir,
            host_selector(tenant, None, &rest),
            net,
            &closed,
        ));
        for ns in &with {
            let selectors = &selected[&(dir, ns.clone())];
            match complement(selectors) {
                Some(terms) => {
                    for (i, term) in terms.iter().enumerate() {
                        policies.push(allowance(
                            tenant,
                            allowance_name(tenant, dir, Some((ns, i))),
                            dir,
                            host_selector(tenant, Some(ns), term),
                            net,
                            &closed,
                        ));
                    }
                }
                None => too_complex.push((ns.clone(), dir)),
            }
        }
    }
    Allowances {
        policies,
        too_complex,
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The tenant's own policies

/// Something of a tenant policy the host does not get as written: the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub field: String,
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostPolicy {
    pub policy: NetworkPolicy,
    /// Clippings and omissions to tell the tenant.
    pub notes: Vec<Note>,
}

/// What the translation of one policy needs to know.
struct Scope<'a> {
    tenant: &'a Tenant,
    namespace: &'a str,
    /// Virtual namespaces and their labels.
    namespaces: &'a NamespaceLabels,
    closed: &'a [Net],
}

const ALLOW_HINT: &str = "the admin can open a range with --egress-allow-cidr (chart value policy.network.egressAllowCIDRs)";

/// The host copy of a tenant's NetworkPolicy, confined to the tenant; `Err` when it cannot be
/// synced at all (a selector the API server would refuse).
pub fn to_host(
    vpol: &NetworkPolicy,
    tenant: &Tenant,
    namespaces: &NamespaceLabels,
    net: &TenantNetwork,
) -> Result<HostPolicy, Note> {
    let ns = vpol.metadata.namespace.clone().unwrap_or_default();
    let name = vpol.metadata.name.clone().unwrap_or_default();
    let spec = vpol.spec.clone().unwrap_or_default();
    let closed = net.closed();
    let scope = Scope {
        tenant,
        namespace: &ns,
        namespaces,
        closed: &closed,
    };
    let mut notes = Vec::new();
    let (reqs, dropped) = tenant_requirements(spec.pod_selector.as_ref()).ok_or_else(|| Note {
        field: "spec.podSelector".into(),
        message: "unknown operator in matchExpressions: use In, NotIn, Exists or DoesNotExist"
            .into(),
    })?;
    note_reserved(&mut notes, "spec.podSelector", &dropped);
    let dirs = directions(&spec);
    let ingress = dirs.contains(&Direction::Ingress).then(|| {
        spec.ingress
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, rule)| {
                let field = format!("spec.ingress[{i}].from");
                let from = match rule.from.as_deref() {
                    None | Some([]) => vec![namespace_pods()],
                    Some(peers) => {
                        let kept = translate_peers(&scope, &field, peers, &mut notes);
                        if kept.is_empty() {
                            return None;
                        }
                        kept
                    }
                };
                Some(NetworkPolicyIngressRule {
                    from: Some(from),
                    ports: rule.ports.clone(),
                })
            })
            .collect::<Vec<_>>()
    });
    let egress = dirs.contains(&Direction::Egress).then(|| {
        let mut rules: Vec<NetworkPolicyEgressRule> = spec
            .egress
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, rule)| {
                let field = format!("spec.egress[{i}].to");
                let to = match rule.to.as_deref() {
                    None | Some([]) => open_destinations(&closed),
                    Some(peers) => {
                        let kept = translate_peers(&scope, &field, peers, &mut notes);
                        if kept.is_empty() {
                            return None;
                        }
                        kept
                    }
                };
                Some(NetworkPolicyEgressRule {
                    to: Some(to),
                    ports: rule.ports.clone(),
                })
            })
            .collect();
        rules.extend(control_plane_rules(&net.control_plane));
        rules
    });
    let mut meta = tenant.host_meta(&vpol.metadata, tenant.subdomain_name(&ns, &name));
    meta.owner_references = None;
    Ok(HostPolicy {
        policy: NetworkPolicy {
            metadata: meta,
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(host_selector(tenant, Some(&ns), &reqs)),
                policy_types: Some(dirs.iter().map(|d| d.as_str().to_string()).collect()),
                ingress,
                egress,
            }),
        },
        notes,
    })
}

fn note_reserved(notes: &mut Vec<Note>, field: &str, keys: &[String]) {
    if !keys.is_empty() {
        notes.push(Note {
            field: field.into(),
            message: format!(
                "requirements on {} left out: keys under {RESERVED_PREFIX} are vkube's own on the host; use other label keys",
                keys.join(", ")
            ),
        });
    }
}

/// The peers confined to the tenant; peers that select nothing here are left out (a rule whose
/// peers are all left out allows nothing, and the caller drops it: an empty list would allow
/// everything).
fn translate_peers(
    scope: &Scope<'_>,
    field: &str,
    peers: &[NetworkPolicyPeer],
    notes: &mut Vec<Note>,
) -> Vec<NetworkPolicyPeer> {
    let mut out = Vec::new();
    for (j, peer) in peers.iter().enumerate() {
        let field = format!("{field}[{j}]");
        if let Some(block) = &peer.ip_block {
            match clip(block, scope.closed) {
                Clipped::Kept { peer, added } => {
                    if !added.is_empty() {
                        notes.push(Note {
                            field: format!("{field}.ipBlock"),
                            message: format!(
                                "{} added to except: closed to tenant pods (private, loopback, link-local or cluster ranges); {ALLOW_HINT}",
                                added.iter().map(Net::to_string).collect::<Vec<_>>().join(", ")
                            ),
                        });
                    }
                    out.push(peer);
                }
                Clipped::Closed(range) => notes.push(Note {
                    field: format!("{field}.ipBlock"),
                    message: format!(
                        "{} left out: it lies in {range}, which is closed to tenant pods; {ALLOW_HINT}",
                        block.cidr
                    ),
                }),
                Clipped::Invalid(cidr) => notes.push(Note {
                    field: format!("{field}.ipBlock.cidr"),
                    message: format!("{cidr:?} left out: not a CIDR such as 203.0.113.0/24"),
                }),
            }
            continue;
        }
        let Some((pod_reqs, dropped)) = tenant_requirements(peer.pod_selector.as_ref()) else {
            notes.push(Note {
                field: format!("{field}.podSelector"),
                message: "left out: unknown operator in matchExpressions".into(),
            });
            continue;
        };
        note_reserved(notes, &format!("{field}.podSelector"), &dropped);
        match &peer.namespace_selector {
            None if peer.pod_selector.is_none() => {}
            None => out.push(pods(host_selector(
                scope.tenant,
                Some(scope.namespace),
                &pod_reqs,
            ))),
            Some(ns_sel) => {
                let Some(ns_reqs) = requirements(ns_sel) else {
                    notes.push(Note {
                        field: format!("{field}.namespaceSelector"),
                        message: "left out: unknown operator in matchExpressions".into(),
                    });
                    continue;
                };
                let mut reqs = pod_reqs;
                if !ns_reqs.is_empty() {
                    // Namespace labels exist only in the virtual cluster: the namespaces they
                    // select now, by name (re-translated when namespaces change).
                    let matched: Vec<String> = scope
                        .namespaces
                        .iter()
                        .filter(|(_, labels)| matches_all(&ns_reqs, labels))
                        .map(|(name, _)| name.clone())
                        .collect();
                    if matched.is_empty() {
                        continue;
                    }
                    reqs.push(Req::new(VIRTUAL_NAMESPACE, Op::In, &matched));
                }
                out.push(pods(host_selector(scope.tenant, None, &reqs)));
            }
        }
    }
    out
}

/// Whether any peer of the policy uses a namespaceSelector (its translation depends on the
/// virtual namespaces' labels).
pub fn uses_namespace_labels(vpol: &NetworkPolicy) -> bool {
    let spec = vpol.spec.as_ref();
    let ingress = spec
        .and_then(|s| s.ingress.as_ref())
        .into_iter()
        .flatten()
        .flat_map(|r| r.from.iter().flatten());
    let egress = spec
        .and_then(|s| s.egress.as_ref())
        .into_iter()
        .flatten()
        .flat_map(|r| r.to.iter().flatten());
    ingress.chain(egress).any(|p| {
        p.namespace_selector
            .as_ref()
            .is_some_and(|s| requirements(s).is_none_or(|r| !r.is_empty()))
    })
}

/// Whether an address lies in a range closed to tenant pods (for tests and diagnostics).
pub fn is_closed(net: &TenantNetwork, ip: IpAddr) -> bool {
    net.closed().iter().any(|c| c.contains_ip(ip))
}

/// The labels of each virtual namespace, by name, for [`to_host`].
pub type NamespaceLabels = BTreeMap<String, BTreeMap<String, String>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::test_support::tenant;
    use proptest::prelude::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn policy(ns: &str, name: &str, spec: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns, "uid": "u-1"},
            "spec": spec,
        }))
        .unwrap()
    }

    /// The manager's control plane: the StatefulSet's pod labels, ports 8443 and 1053.
    fn in_pod() -> TenantNetwork {
        TenantNetwork {
            control_plane: vec![ControlPlane::Pod {
                selector: labels(&[("vkube.dev/virtual-cluster", "alice")]),
                api_port: 8443,
                dns_port: Some(1053),
            }],
            egress: EgressPolicy::default(),
        }
    }

    /// Whether an ipBlock peer admits `ip` (inside cidr, outside every except).
    fn admits(peer: &NetworkPolicyPeer, ip: IpAddr) -> bool {
        let Some(b) = &peer.ip_block else {
            return false;
        };
        Net::parse(&b.cidr).unwrap().contains_ip(ip)
            && !b
                .except
                .iter()
                .flatten()
                .any(|e| Net::parse(e).unwrap().contains_ip(ip))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn namespaces() -> NamespaceLabels {
        BTreeMap::from([
            (
                "shop".to_string(),
                labels(&[("kubernetes.io/metadata.name", "shop"), ("team", "a")]),
            ),
            (
                "billing".to_string(),
                labels(&[("kubernetes.io/metadata.name", "billing"), ("team", "a")]),
            ),
            (
                "other".to_string(),
                labels(&[("kubernetes.io/metadata.name", "other"), ("team", "b")]),
            ),
        ])
    }

    fn spec_of(p: &NetworkPolicy) -> NetworkPolicySpec {
        p.spec.clone().unwrap()
    }

    #[test]
    fn the_base_isolates_every_tenant_pod_and_opens_only_the_control_planes_ports() {
        let cp = in_pod().control_plane[0].clone();
        let policies = default_policies(Some(&cp));
        let names: Vec<&str> = policies.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [BASE_POLICY, CONTROL_PLANE_POLICY]);
        let base = serde_json::to_value(&policies[0].1).unwrap();
        assert_eq!(
            base,
            serde_json::json!({
                "podSelector": {"matchExpressions": [{"key": MANAGED_BY, "operator": "Exists"}]},
                "policyTypes": ["Ingress", "Egress"],
            }),
            "isolated both ways, nothing allowed"
        );
        let cp_policy = serde_json::to_value(&policies[1].1).unwrap();
        assert_eq!(
            cp_policy,
            serde_json::json!({
                "podSelector": {"matchLabels": {"vkube.dev/virtual-cluster": "alice"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {"ports": [{"port": 8443, "protocol": "TCP"}]},
                    {"from": [{"podSelector": {}}], "ports": [{"port": 1053, "protocol": "UDP"}]},
                ],
            })
        );
        // vkube serve outside the pod network has no control plane pod to open.
        let outside = ControlPlane::Address {
            ip: ip("10.86.0.1"),
            api_port: 40000,
            dns_port: Some(40001),
        };
        assert_eq!(default_policies(Some(&outside)).len(), 1);
        assert_eq!(default_policies(None).len(), 1);
    }

    #[test]
    fn closed_ranges_are_private_loopback_link_local_and_the_denied_less_the_allowed() {
        let mut net = TenantNetwork::default();
        assert_eq!(
            net.closed_ranges(),
            [
                "10.0.0.0/8",
                "100.64.0.0/10",
                "127.0.0.0/8",
                "169.254.0.0/16",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "::1/128",
                "fc00::/7",
                "fe80::/10",
            ]
        );
        for closed in [
            "169.254.169.254",
            "10.96.0.1",
            "127.0.0.1",
            "fe80::1",
            "fd00::1",
        ] {
            assert!(is_closed(&net, ip(closed)), "{closed}");
        }
        assert!(!is_closed(&net, ip("203.0.113.7")));
        // A public range the cluster uses, closed by the admin; a private database subnet opened.
        net.egress.deny = vec![cidr("198.51.100.0/24")];
        net.egress.allow = vec![cidr("10.20.0.0/16")];
        assert!(is_closed(&net, ip("198.51.100.9")));
        assert!(!is_closed(&net, ip("10.20.3.4")));
        assert!(is_closed(&net, ip("10.21.0.1")));
        assert!(is_closed(&net, ip("10.0.0.1")));
        // The rest of 10/8 is still closed, as CIDRs around the hole.
        let ranges = net.closed_ranges();
        assert!(ranges.contains(&"10.21.0.0/16".to_string()), "{ranges:?}");
        assert!(!ranges.contains(&"10.0.0.0/8".to_string()), "{ranges:?}");
    }

    #[test]
    fn ip_blocks_are_clipped_and_entirely_closed_ones_dropped() {
        let net = TenantNetwork::default();
        let closed = net.closed();
        let case = |c: &str, except: &[&str]| {
            clip(
                &IPBlock {
                    cidr: c.into(),
                    except: (!except.is_empty())
                        .then(|| except.iter().map(|e| e.to_string()).collect()),
                },
                &closed,
            )
        };
        // Public: unchanged.
        let Clipped::Kept { peer, added } = case("203.0.113.0/24", &["203.0.113.128/25"]) else {
            panic!("public range dropped")
        };
        assert!(added.is_empty());
        assert_eq!(
            peer.ip_block.unwrap(),
            IPBlock {
                cidr: "203.0.113.0/24".into(),
                except: Some(vec!["203.0.113.128/25".into()])
            }
        );
        // Everything: every closed range of the family becomes an exception.
        let Clipped::Kept { peer, added } = case("0.0.0.0/0", &[]) else {
            panic!()
        };
        assert_eq!(added.len(), 6, "{added:?}");
        for denied in ["169.254.169.254", "10.85.0.7", "192.168.1.1", "127.0.0.1"] {
            assert!(!admits(&peer, ip(denied)), "{denied}");
        }
        assert!(admits(&peer, ip("8.8.8.8")));
        // A wider range than a private one: the private part excepted. Written sloppily: the
        // network address is used.
        let Clipped::Kept { peer, .. } = case("10.0.0.9/7", &[]) else {
            panic!()
        };
        let block = peer.ip_block.unwrap();
        assert_eq!(block.cidr, "10.0.0.0/7");
        assert_eq!(block.except, Some(vec!["10.0.0.0/8".to_string()]));
        // Inside a closed range: nothing is left of it.
        for inside in [
            // IPv4-mapped: read as the IPv4 range it carries, as the host reads it.
            "::ffff:10.0.0.0/104",
            "::ffff:a9fe:a9fe/128",
            "10.96.0.1/32",
            "169.254.169.254/32",
            "fd00::/8",
            "10.0.0.0/8",
        ] {
            assert!(
                matches!(case(inside, &[]), Clipped::Closed(_)),
                "{inside} must be dropped"
            );
        }
        assert!(matches!(case("nonsense", &[]), Clipped::Invalid(_)));
    }

    #[test]
    fn host_copies_select_host_pods_by_the_keys_the_pod_translation_writes() {
        use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
        let vpod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("db-0".into()),
                namespace: Some("shop".into()),
                labels: Some(BTreeMap::from([
                    ("role".into(), "db".into()),
                    ("example.com/tier".into(), "gold".into()),
                ])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        };
        let hpod = crate::translate::pod::to_host(&vpod, &tenant(), &Default::default()).unwrap();
        let host_labels = hpod.pod.metadata.labels.unwrap();
        let p = policy(
            "shop",
            "db",
            serde_json::json!({
                "podSelector": {"matchLabels": {"role": "db"},
                                "matchExpressions": [{"key": "example.com/tier", "operator": "In", "values": ["gold"]}]},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "db"}}}]}],
            }),
        );
        let host = to_host(&p, &tenant(), &namespaces(), &in_pod()).unwrap();
        let spec = spec_of(&host.policy);
        let peer = spec.ingress.as_ref().unwrap()[0].from.as_ref().unwrap()[0]
            .pod_selector
            .clone()
            .unwrap();
        for sel in [spec.pod_selector.clone().unwrap_or_default(), peer] {
            let reqs = requirements(&sel).unwrap();
            assert!(
                matches_all(&reqs, &host_labels),
                "{reqs:?} must select {host_labels:?}"
            );
        }
    }

    #[test]
    fn a_tenant_policy_selects_only_its_own_pods_in_its_namespace() {
        let p = policy(
            "shop",
            "db",
            serde_json::json!({
                "podSelector": {
                    "matchLabels": {"app": "db", "vkube.dev/managed-by": "bob"},
                    "matchExpressions": [{"key": "vkube.dev/namespace", "operator": "In", "values": ["other"]},
                                         {"key": "tier", "operator": "NotIn", "values": ["cache"]}],
                },
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                             "ports": [{"port": "http", "protocol": "TCP"}]}],
            }),
        );
        let host = to_host(&p, &tenant(), &namespaces(), &in_pod()).unwrap();
        assert_eq!(
            host.policy.metadata.name.as_deref(),
            Some("db-x-shop-x-alice")
        );
        assert_eq!(
            host.policy.metadata.namespace.as_deref(),
            Some("vkube-alice")
        );
        assert!(tenant().owns(&host.policy.metadata));
        let spec = spec_of(&host.policy);
        assert_eq!(
            serde_json::to_value(&spec.pod_selector).unwrap(),
            serde_json::json!({
                "matchLabels": {"app": "db", MANAGED_BY: "alice", VIRTUAL_NAMESPACE: "shop"},
                // "tier" is not on the default allow-list: the host pods carry it renamed.
                "matchExpressions": [{"key": tenant().host_label_key("tier"), "operator": "NotIn", "values": ["cache"]}],
            }),
            "a forged ownership label cannot select another tenant's pods"
        );
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
        assert_eq!(spec.egress, None);
        // A podSelector peer: the same virtual namespace of the same tenant; named ports kept.
        assert_eq!(
            serde_json::to_value(&spec.ingress).unwrap(),
            serde_json::json!([{
                "from": [{"podSelector": {"matchLabels": {"app": "web", MANAGED_BY: "alice", VIRTUAL_NAMESPACE: "shop"}}}],
                "ports": [{"port": "http", "protocol": "TCP"}],
            }])
        );
        assert_eq!(host.notes.len(), 1, "{:?}", host.notes);
        assert_eq!(host.notes[0].field, "spec.podSelector");
        assert!(
            host.notes[0]
                .message
                .contains("vkube.dev/managed-by, vkube.dev/namespace"),
            "{}",
            host.notes[0]
        );
    }

    #[test]
    fn namespace_selectors_become_the_virtual_namespaces_they_match_now() {
        let p = policy(
            "shop",
            "from-team-a",
            serde_json::json!({
                "podSelector": {},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}},
                               "podSelector": {"matchLabels": {"app": "web"}}}]},
                    {"from": [{"namespaceSelector": {}}]},
                    {"from": [{"namespaceSelector": {"matchLabels": {"team": "nobody"}}}]},
                ],
            }),
        );
        let host = to_host(&p, &tenant(), &namespaces(), &in_pod()).unwrap();
        let ingress = serde_json::to_value(spec_of(&host.policy).ingress).unwrap();
        assert_eq!(
            ingress,
            serde_json::json!([
                {"from": [{"podSelector": {
                    "matchLabels": {"app": "web", MANAGED_BY: "alice"},
                    "matchExpressions": [{"key": VIRTUAL_NAMESPACE, "operator": "In", "values": ["billing", "shop"]}],
                }}]},
                // Every namespace: every pod of the tenant, and no other tenant's.
                {"from": [{"podSelector": {"matchLabels": {MANAGED_BY: "alice"}}}]},
                // The third rule selects no namespace: it allows nothing, so it is gone (an
                // empty `from` would allow everything).
            ])
        );
        assert!(uses_namespace_labels(&p));
        assert!(host.notes.is_empty(), "{:?}", host.notes);
        // A namespace labelled later is picked up by translating again.
        let mut ns = namespaces();
        ns.insert("new".into(), labels(&[("team", "nobody")]));
        let again = to_host(&p, &tenant(), &ns, &in_pod()).unwrap();
        assert_eq!(spec_of(&again.policy).ingress.unwrap().len(), 3);
    }

    #[test]
    fn rules_without_peers_allow_only_what_the_default_allows() {
        let p = policy(
            "shop",
            "open",
            serde_json::json!({
                "podSelector": {"matchLabels": {"app": "web"}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"ports": [{"port": 8080}]}],
                "egress": [{"ports": [{"port": 443, "protocol": "TCP"}]}],
            }),
        );
        let host = to_host(&p, &tenant(), &namespaces(), &in_pod()).unwrap();
        let spec = spec_of(&host.policy);
        let ingress = spec.ingress.unwrap();
        assert_eq!(
            ingress[0].from,
            Some(vec![namespace_pods()]),
            "from anywhere = from the host namespace's pods"
        );
        let egress = spec.egress.unwrap();
        assert_eq!(egress.len(), 2, "the rule, then the control plane's");
        let to = egress[0].to.clone().unwrap();
        assert_eq!(to[0], namespace_pods());
        for closed in ["10.86.0.1", "10.96.0.1", "169.254.169.254", "172.17.0.1"] {
            assert!(!to.iter().any(|p| admits(p, ip(closed))), "{closed}");
        }
        assert!(to.iter().any(|p| admits(p, ip("203.0.113.7"))));
        assert!(to.iter().any(|p| admits(p, ip("2001:db8::1"))));
        assert!(!to.iter().any(|p| admits(p, ip("fd00::1"))));
        assert_eq!(egress[0].ports, Some(vec![port(443, "TCP")]));
        // DNS and the API of the tenant's own control plane, on those ports only.
        assert_eq!(
            serde_json::to_value(&egress[1]).unwrap(),
            serde_json::json!({
                "to": [{"podSelector": {"matchLabels": {"vkube.dev/virtual-cluster": "alice"}}}],
                "ports": [{"port": 8443, "protocol": "TCP"}, {"port": 1053, "protocol": "UDP"}],
            })
        );
    }

    #[test]
    fn a_deny_all_egress_keeps_only_the_control_plane_and_ip_blocks_are_clipped() {
        let outside = TenantNetwork {
            control_plane: vec![ControlPlane::Address {
                ip: ip("10.86.0.1"),
                api_port: 40000,
                dns_port: Some(40001),
            }],
            egress: EgressPolicy::default(),
        };
        let deny = policy(
            "shop",
            "deny",
            serde_json::json!({"podSelector": {}, "policyTypes": ["Egress"]}),
        );
        let host = to_host(&deny, &tenant(), &namespaces(), &outside).unwrap();
        assert_eq!(
            serde_json::to_value(spec_of(&host.policy)).unwrap(),
            serde_json::json!({
                "podSelector": {"matchLabels": {MANAGED_BY: "alice", VIRTUAL_NAMESPACE: "shop"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": "10.86.0.1/32"}}],
                            "ports": [{"port": 40000, "protocol": "TCP"}, {"port": 40001, "protocol": "UDP"}]}],
            })
        );
        let blocks = policy(
            "shop",
            "blocks",
            serde_json::json!({
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [
                    {"to": [{"ipBlock": {"cidr": "169.254.169.254/32"}},
                            {"ipBlock": {"cidr": "10.0.0.0/8"}}]},
                    {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]},
                ],
            }),
        );
        let host = to_host(&blocks, &tenant(), &namespaces(), &outside).unwrap();
        let egress = spec_of(&host.policy).egress.unwrap();
        assert_eq!(
            egress.len(),
            2,
            "the first rule is gone, the second clipped, then the control plane's"
        );
        assert!(!admits(
            &egress[0].to.as_ref().unwrap()[0],
            ip("169.254.169.254")
        ));
        assert!(!admits(&egress[0].to.as_ref().unwrap()[0], ip("10.86.0.1")));
        let fields: Vec<&str> = host.notes.iter().map(|n| n.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.egress[0].to[0].ipBlock",
                "spec.egress[0].to[1].ipBlock",
                "spec.egress[1].to[0].ipBlock"
            ]
        );
        assert!(
            host.notes[0].message.contains("left out"),
            "{}",
            host.notes[0]
        );
        assert!(host.notes[0].message.contains("--egress-allow-cidr"));
        assert!(
            host.notes[2].message.contains("added to except"),
            "{}",
            host.notes[2]
        );
        // With the admin's allowance, the subnet is the tenant's to use.
        let mut opened = outside.clone();
        opened.egress.allow = vec![cidr("10.20.0.0/16")];
        let sub = policy(
            "shop",
            "sub",
            serde_json::json!({"podSelector": {}, "policyTypes": ["Egress"],
                               "egress": [{"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]}]}),
        );
        let host = to_host(&sub, &tenant(), &namespaces(), &opened).unwrap();
        assert!(host.notes.is_empty(), "{:?}", host.notes);
        assert!(admits(
            &spec_of(&host.policy).egress.unwrap()[0]
                .to
                .as_ref()
                .unwrap()[0],
            ip("10.20.1.1")
        ));
    }

    #[test]
    fn an_unknown_operator_is_refused() {
        let p = policy(
            "shop",
            "bad",
            serde_json::json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}),
        );
        let err = to_host(&p, &tenant(), &namespaces(), &in_pod()).unwrap_err();
        assert_eq!(err.field, "spec.podSelector");
    }

    #[test]
    fn default_allowances_cover_exactly_the_pods_no_tenant_policy_selects() {
        let net = in_pod();
        let none = allowances(&tenant(), &net, &[]);
        assert!(none.too_complex.is_empty());
        let names: Vec<String> = none
            .policies
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            ["vkube-allow-ingress-alice", "vkube-allow-egress-alice"]
        );
        let ingress = &none.policies[0];
        assert_eq!(
            serde_json::to_value(spec_of(ingress)).unwrap(),
            serde_json::json!({
                "podSelector": {"matchLabels": {MANAGED_BY: "alice"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {}}]}],
            })
        );
        assert_eq!(
            ingress.metadata.labels.as_ref().unwrap()[DEFAULT_ALLOWANCE],
            "ingress"
        );
        let egress = spec_of(&none.policies[1]).egress.unwrap();
        assert_eq!(
            egress[0].ports,
            Some(vec![port(8443, "TCP"), port(1053, "UDP")])
        );
        assert_eq!(egress[1].to.as_ref().unwrap()[0], namespace_pods());

        // A deny-all in `shop` and a policy for `app=db` in `billing`.
        let deny = policy(
            "shop",
            "deny",
            serde_json::json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        );
        let db = policy(
            "billing",
            "db",
            serde_json::json!({"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress", "Egress"]}),
        );
        let some = allowances(&tenant(), &net, &[&deny, &db]);
        let by_name: BTreeMap<String, &NetworkPolicy> = some
            .policies
            .iter()
            .map(|p| (p.metadata.name.clone().unwrap(), p))
            .collect();
        assert_eq!(by_name.len(), 4, "{:?}", by_name.keys());
        let rest = spec_of(by_name["vkube-allow-ingress-alice"])
            .pod_selector
            .unwrap();
        assert_eq!(
            serde_json::to_value(rest).unwrap(),
            serde_json::json!({"matchLabels": {MANAGED_BY: "alice"},
                               "matchExpressions": [{"key": VIRTUAL_NAMESPACE, "operator": "NotIn", "values": ["billing", "shop"]}]})
        );
        let billing = |dir: &str| {
            let name = format!(
                "vkube-allow-{dir}-alice-{}-0",
                &crate::translate::hex_digest("billing")[..10]
            );
            spec_of(by_name[&name]).pod_selector.unwrap()
        };
        for dir in ["ingress", "egress"] {
            assert_eq!(
                serde_json::to_value(billing(dir)).unwrap(),
                serde_json::json!({"matchLabels": {MANAGED_BY: "alice", VIRTUAL_NAMESPACE: "billing"},
                                   "matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]}]})
            );
        }
        let egress_rest = spec_of(by_name["vkube-allow-egress-alice"])
            .pod_selector
            .unwrap();
        assert_eq!(
            egress_rest.match_expressions.unwrap()[0].values,
            Some(vec!["billing".to_string()]),
            "shop's policy restricts ingress only: its pods keep the default egress"
        );
    }

    #[test]
    fn too_many_selectors_close_the_namespace_instead_of_opening_it() {
        let many: Vec<NetworkPolicy> = (0..6)
            .map(|i| {
                policy(
                    "shop",
                    &format!("p{i}"),
                    serde_json::json!({"podSelector": {"matchLabels": {format!("a{i}"): "x", format!("b{i}"): "y"}},
                                       "policyTypes": ["Ingress"]}),
                )
            })
            .collect();
        let refs: Vec<&NetworkPolicy> = many.iter().collect();
        let a = allowances(&tenant(), &in_pod(), &refs);
        assert_eq!(a.too_complex, [("shop".to_string(), Direction::Ingress)]);
        // No allowance selects shop's pods for ingress: the rest excludes the namespace.
        let rest = spec_of(&a.policies[0]).pod_selector.unwrap();
        assert_eq!(
            rest.match_expressions.unwrap()[0].values,
            Some(vec!["shop".to_string()])
        );
        assert!(a.policies.iter().all(|p| {
            !p.metadata
                .name
                .as_deref()
                .unwrap()
                .starts_with("vkube-allow-ingress-alice-")
        }));
    }

    fn req_strategy() -> impl Strategy<Value = Req> {
        let key = prop::sample::select(vec!["a", "b", "c"]);
        let values = prop::collection::vec(prop::sample::select(vec!["x", "y"]), 1..3);
        (key, 0..4u8, values).prop_map(|(k, op, v)| {
            let v: Vec<String> = v.into_iter().map(String::from).collect();
            match op {
                0 => Req::new(k, Op::In, &v),
                1 => Req::new(k, Op::NotIn, &v),
                2 => Req::new(k, Op::Exists, &[]),
                _ => Req::new(k, Op::DoesNotExist, &[]),
            }
        })
    }

    fn labels_strategy() -> impl Strategy<Value = BTreeMap<String, String>> {
        prop::collection::btree_map(
            prop::sample::select(vec!["a".to_string(), "b".to_string(), "c".to_string()]),
            prop::sample::select(vec!["x".to_string(), "y".to_string(), "z".to_string()]),
            0..3,
        )
    }

    fn net_strategy() -> impl Strategy<Value = Net> {
        prop_oneof![
            (any::<u32>(), 0..=32u8).prop_map(|(a, p)| Net::new(IpAddr::V4(Ipv4Addr::from(a)), p)),
            // Biased towards the private and link-local ranges.
            (
                prop::sample::select(vec![0x0a00_0000u32, 0xa9fe_0000, 0xc0a8_0000, 0xac10_0000]),
                any::<u16>(),
                0..=32u8
            )
                .prop_map(|(base, low, p)| Net::new(
                    IpAddr::V4(Ipv4Addr::from(base | u32::from(low))),
                    p
                )),
        ]
    }

    proptest! {
        /// Every label set is matched by the complement exactly when no selector matches it.
        #[test]
        fn the_complement_partitions_the_pods(
            selectors in prop::collection::vec(prop::collection::vec(req_strategy(), 0..3), 0..4),
            pods in prop::collection::vec(labels_strategy(), 1..20),
        ) {
            if let Some(terms) = complement(&selectors) {
                for l in &pods {
                    let selected = selectors.iter().any(|s| matches_all(s, l));
                    let defaulted = terms.iter().any(|t| matches_all(t, l));
                    prop_assert_eq!(selected, !defaulted, "{:?} {:?} {:?}", l, selectors, terms);
                }
            }
        }

        /// A clipped block never admits a closed address, and keeps every open one it had.
        #[test]
        fn clipping_never_opens_a_closed_range(block in net_strategy(), probe in any::<u32>(), allow in net_strategy()) {
            let net = TenantNetwork {
                control_plane: vec![],
                egress: EgressPolicy { allow: vec![allow.to_string().parse().unwrap()], deny: vec![] },
            };
            let closed = net.closed();
            // A probe inside the block (its host bits random).
            let host_bits = host_mask(32, block.prefix) & u128::from(probe);
            let inside = IpAddr::V4(Ipv4Addr::from(u32::try_from(block.bits | host_bits).unwrap()));
            let is_closed = closed.iter().any(|c| c.contains_ip(inside));
            match clip(&IPBlock { cidr: block.to_string(), except: None }, &closed) {
                Clipped::Kept { peer, .. } => prop_assert_eq!(admits(&peer, inside), !is_closed, "{} {}", block, inside),
                Clipped::Closed(_) => prop_assert!(is_closed),
                Clipped::Invalid(c) => prop_assert!(false, "{}", c),
            }
        }

        /// Whatever keys a tenant's selectors use (vkube's own included), every pod selector of
        /// the host copy requires this tenant's label and nothing can require another value.
        #[test]
        fn host_copies_select_only_the_tenants_pods(
            keys in prop::collection::vec(prop::sample::select(vec![MANAGED_BY, VIRTUAL_NAMESPACE, "vkube.dev/x", "app"]), 0..4),
            value in prop::sample::select(vec!["bob", "alice", "other"]),
            ns_selector in any::<bool>(),
        ) {
            let labels: serde_json::Map<String, serde_json::Value> =
                keys.iter().map(|k| (k.to_string(), value.into())).collect();
            let exprs: Vec<serde_json::Value> = keys.iter()
                .map(|k| serde_json::json!({"key": k, "operator": "NotIn", "values": ["alice"]}))
                .collect();
            let sel = serde_json::json!({"matchLabels": labels, "matchExpressions": exprs});
            let mut peer = serde_json::json!({"podSelector": sel});
            if ns_selector {
                peer["namespaceSelector"] = serde_json::json!({});
            }
            let p = policy("shop", "p", serde_json::json!({
                "podSelector": sel,
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [peer.clone()]}],
                "egress": [{"to": [peer]}],
            }));
            let host = to_host(&p, &tenant(), &namespaces(), &in_pod()).unwrap();
            let spec = spec_of(&host.policy);
            let mut selectors = vec![spec.pod_selector.clone().unwrap()];
            for r in spec.ingress.iter().flatten() {
                selectors.extend(r.from.iter().flatten().filter_map(|p| p.pod_selector.clone()));
            }
            for r in spec.egress.iter().flatten().take(1) {
                selectors.extend(r.to.iter().flatten().filter_map(|p| p.pod_selector.clone()));
            }
            prop_assert_eq!(selectors.len(), 3);
            for s in selectors {
                prop_assert_eq!(s.match_labels.as_ref().and_then(|l| l.get(MANAGED_BY)).map(String::as_str), Some("alice"));
                prop_assert!(s.match_expressions.iter().flatten().all(|e| !e.key.starts_with(RESERVED_PREFIX) || e.key == VIRTUAL_NAMESPACE && e.operator == "In"));
            }
        }

        #[test]
        fn subtraction_removes_exactly_the_subtrahend(a in net_strategy(), b in net_strategy(), probe in any::<u32>()) {
            let pieces = subtract(a, b);
            let host_bits = host_mask(32, a.prefix) & u128::from(probe);
            let inside = IpAddr::V4(Ipv4Addr::from(u32::try_from(a.bits | host_bits).unwrap()));
            let covered = pieces.iter().any(|p| p.contains_ip(inside));
            prop_assert_eq!(covered, !b.contains_ip(inside));
            prop_assert!(pieces.iter().all(|p| a.contains(*p)));
        }
    }
}
