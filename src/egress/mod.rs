//! Where the virtual API server may open connections. The tenant is cluster-admin of its virtual
//! cluster, and several API features make the API server itself dial an address the tenant
//! writes: `services/NAME/proxy` (an Endpoints address, backed by a pod status the tenant may
//! set), `pods/NAME/proxy` (the pod's status IP), `nodes/NAME/proxy` (a Node the tenant creates,
//! at any address and kubelet port), admission and conversion webhooks (a URL, or a Service's
//! cluster IP or ExternalName) and aggregated APIs (an APIService's Service). The API server runs
//! beside `vkube serve`, where no NetworkPolicy of the tenant's namespace applies: unguarded, it
//! reaches the host's API server, kubelets, node ports, other tenants' control planes and cloud
//! metadata on the tenant's behalf (a confused deputy: server-side request forgery).
//!
//! kube-apiserver's egress selector sends all of those connections through an HTTP CONNECT proxy
//! on a Unix socket (the `cluster` egress: proxy subresources, kubelets, Service-based webhooks
//! and aggregated APIs; `controlplane`: URL-based webhooks). `vkube serve` is that proxy
//! ([`server`]); [`decide`] lets a tunnel through only to the tenant's own host pods and Services,
//! to ranges the admin allowed and, if the admin says so, to public addresses.

pub mod server;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::LazyLock;

use futures::future::BoxFuture;

use crate::translate::endpoints::{Cidr, PRIVATE_RANGES};

/// What the virtual API server may dial (`--apiserver-egress`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EgressMode {
    /// The tenant's own pods and Services, and the ranges the admin allowed.
    #[default]
    Tenant,
    /// Also public internet addresses (webhooks hosted outside the cluster).
    AllowPublic,
    /// No guard: the API server dials whatever it is told, as Kubernetes does by default. Only
    /// where every tenant is trusted.
    Unrestricted,
}

impl FromStr for EgressMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tenant" => Ok(EgressMode::Tenant),
            "allow-public" => Ok(EgressMode::AllowPublic),
            "unrestricted" => Ok(EgressMode::Unrestricted),
            other => Err(format!(
                "unknown API server egress mode {other:?}: tenant, allow-public or unrestricted"
            )),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    pub mode: EgressMode,
    /// Private ranges outside the cluster networks that the tenant may lead traffic to (the
    /// admin's `--endpoint-allow-cidr`: what hand-written Endpoints may point at).
    pub allowed: Vec<Cidr>,
}

/// Which of the tenant's objects an address belongs to (virtual namespace and name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Pod { namespace: String, name: String },
    Service { namespace: String, name: String },
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Pod { namespace, name } => write!(f, "pod {namespace}/{name}"),
            Owner::Service { namespace, name } => write!(f, "service {namespace}/{name}"),
        }
    }
}

/// The tenant's addresses on the host, as `vkube serve` knows them right now.
pub trait TenantAddresses: Send + Sync {
    /// Resolves once the addresses are known (the syncer's caches are complete); false if they
    /// never will be.
    fn ready(&self) -> BoxFuture<'_, bool>;
    /// The tenant's pod at `ip`, or its Service with cluster IP `ip` and port `port`.
    fn owner(&self, ip: IpAddr, port: u16) -> Option<Owner>;
}

/// A tenant without a syncer (`--no-sync`) has nothing on the host.
pub struct NoAddresses;

impl TenantAddresses for NoAddresses {
    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }
    fn owner(&self, _: IpAddr, _: u16) -> Option<Owner> {
        None
    }
}

/// Why a destination may be dialled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    Own(Owner),
    AllowedRange(Cidr),
    Public,
    Unrestricted,
}

/// Why a destination may not be dialled. The text reaches the tenant inside the API server's
/// error (the CONNECT status line), so it is plain ASCII and names the way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Loopback, link-local (cloud metadata lives there), multicast, unspecified, broadcast.
    Special,
    /// A private or shared range, where pods, Services, nodes and API servers live.
    Private,
    /// Documentation, benchmarking, reserved and translation ranges: never the public internet.
    Reserved,
    /// A public address while the admin allows none.
    Public,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Special => {
                "a loopback, link-local, multicast or unspecified address is never dialled"
            }
            Refusal::Private => {
                "not a pod or Service of this virtual cluster (private ranges hold the host's nodes, pods and API servers)"
            }
            Refusal::Reserved => "a reserved address range, not the public internet",
            Refusal::Public => {
                "a public address: the platform admin allows those with --apiserver-egress allow-public"
            }
        })
    }
}

/// Ranges that are neither private nor the public internet.
const RESERVED_RANGES: &[&str] = &[
    "0.0.0.0/8",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "240.0.0.0/4",
    // IPv6: discard-only, IETF protocol assignments (Teredo), documentation, 6to4 and NAT64
    // (the last two carry an IPv4 address a gateway would reach), deprecated site-local.
    "100::/64",
    "2001::/23",
    "2001:db8::/32",
    "2002::/16",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "fec0::/10",
];

fn parsed(ranges: &[&str]) -> Vec<Cidr> {
    ranges.iter().filter_map(|r| r.parse().ok()).collect()
}

static PRIVATE: LazyLock<Vec<Cidr>> = LazyLock::new(|| parsed(PRIVATE_RANGES));
static RESERVED: LazyLock<Vec<Cidr>> = LazyLock::new(|| parsed(RESERVED_RANGES));

/// An IPv4-mapped IPv6 address is judged as the IPv4 address it carries.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn is_special(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_unspecified()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_multicast()
                || v6.is_unspecified()
                || v6.is_unicast_link_local()
        }
    }
}

/// Whether the virtual API server may dial `ip`, given whose address it is (`owner`, from
/// [`TenantAddresses::owner`]). Special addresses are refused even if a pod claims them.
pub fn decide(ip: IpAddr, owner: Option<Owner>, policy: &EgressPolicy) -> Result<Allowed, Refusal> {
    if policy.mode == EgressMode::Unrestricted {
        return Ok(Allowed::Unrestricted);
    }
    let ip = normalize(ip);
    if is_special(&ip) {
        return Err(Refusal::Special);
    }
    if let Some(owner) = owner {
        return Ok(Allowed::Own(owner));
    }
    if let Some(range) = policy.allowed.iter().find(|c| c.contains(&ip)) {
        return Ok(Allowed::AllowedRange(*range));
    }
    if PRIVATE.iter().any(|c| c.contains(&ip)) {
        return Err(Refusal::Private);
    }
    if RESERVED.iter().any(|c| c.contains(&ip)) {
        return Err(Refusal::Reserved);
    }
    match policy.mode {
        EgressMode::AllowPublic => Ok(Allowed::Public),
        _ => Err(Refusal::Public),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Option<Owner> {
        Some(Owner::Pod {
            namespace: "default".into(),
            name: "web".into(),
        })
    }

    fn policy(mode: EgressMode, allowed: &[&str]) -> EgressPolicy {
        EgressPolicy {
            mode,
            allowed: allowed.iter().map(|c| c.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn only_the_tenants_own_addresses_are_dialled_by_default() {
        use EgressMode::*;
        let tenant = policy(Tenant, &[]);
        let public = policy(AllowPublic, &[]);
        let db = policy(Tenant, &["10.200.0.0/16"]);
        type Case<'a> = (
            &'a str,
            Option<Owner>,
            &'a EgressPolicy,
            Result<(), Refusal>,
        );
        let cases: &[Case] = &[
            // The tenant's own pod or Service, wherever it is.
            ("10.244.1.7", pod(), &tenant, Ok(())),
            ("fd00:10:244::7", pod(), &tenant, Ok(())),
            // The host's API server, kubelets, other tenants' control planes: private.
            ("10.96.0.1", None, &tenant, Err(Refusal::Private)),
            ("10.86.0.1", None, &public, Err(Refusal::Private)),
            ("172.16.0.5", None, &public, Err(Refusal::Private)),
            ("192.168.1.1", None, &public, Err(Refusal::Private)),
            // Alibaba's metadata service and AWS's IPv6 one are in shared/private ranges.
            ("100.100.100.200", None, &public, Err(Refusal::Private)),
            ("fd00:ec2::254", None, &public, Err(Refusal::Private)),
            // Cloud metadata (link-local) and loopback: never, even when a pod claims them.
            ("169.254.169.254", None, &public, Err(Refusal::Special)),
            ("169.254.169.254", pod(), &tenant, Err(Refusal::Special)),
            ("127.0.0.1", pod(), &tenant, Err(Refusal::Special)),
            ("127.8.9.10", None, &public, Err(Refusal::Special)),
            ("::1", None, &public, Err(Refusal::Special)),
            ("fe80::1", None, &public, Err(Refusal::Special)),
            ("0.0.0.0", None, &public, Err(Refusal::Special)),
            ("::", None, &public, Err(Refusal::Special)),
            ("255.255.255.255", None, &public, Err(Refusal::Special)),
            ("224.0.0.1", None, &public, Err(Refusal::Special)),
            // An IPv4-mapped IPv6 address is its IPv4 address.
            ("::ffff:127.0.0.1", None, &public, Err(Refusal::Special)),
            ("::ffff:10.96.0.1", None, &public, Err(Refusal::Private)),
            ("::ffff:10.244.1.7", pod(), &tenant, Ok(())),
            // Addresses that only look public.
            ("0.1.2.3", None, &public, Err(Refusal::Reserved)),
            ("203.0.113.9", None, &public, Err(Refusal::Reserved)),
            ("198.18.0.1", None, &public, Err(Refusal::Reserved)),
            ("2002:a60:1::1", None, &public, Err(Refusal::Reserved)),
            ("64:ff9b::a00:1", None, &public, Err(Refusal::Reserved)),
            ("2001:db8::1", None, &public, Err(Refusal::Reserved)),
            // Public addresses: only when the admin allows them.
            ("93.184.215.14", None, &tenant, Err(Refusal::Public)),
            ("93.184.215.14", None, &public, Ok(())),
            ("2a00:1450:4001::1", None, &tenant, Err(Refusal::Public)),
            ("2a00:1450:4001::1", None, &public, Ok(())),
            // A private range the admin allowed (a database subnet), and nothing beside it.
            ("10.200.3.4", None, &db, Ok(())),
            ("10.201.3.4", None, &db, Err(Refusal::Private)),
        ];
        for (ip, owner, policy, want) in cases {
            let got = decide(ip.parse().unwrap(), owner.clone(), policy).map(|_| ());
            assert_eq!(&got, want, "{ip} owned by {owner:?} under {policy:?}");
        }
    }

    #[test]
    fn the_reason_names_the_owner_or_the_range() {
        let db = policy(EgressMode::Tenant, &["10.200.0.0/16"]);
        assert_eq!(
            decide("10.244.1.7".parse().unwrap(), pod(), &db),
            Ok(Allowed::Own(pod().unwrap()))
        );
        assert_eq!(
            decide("10.200.1.1".parse().unwrap(), None, &db),
            Ok(Allowed::AllowedRange("10.200.0.0/16".parse().unwrap()))
        );
    }

    #[test]
    fn unrestricted_dials_anything() {
        let open = policy(EgressMode::Unrestricted, &[]);
        for ip in ["127.0.0.1", "169.254.169.254", "10.96.0.1"] {
            assert_eq!(
                decide(ip.parse().unwrap(), None, &open),
                Ok(Allowed::Unrestricted)
            );
        }
    }

    #[test]
    fn refusals_fit_a_status_line() {
        for r in [
            Refusal::Special,
            Refusal::Private,
            Refusal::Reserved,
            Refusal::Public,
        ] {
            let text = r.to_string();
            assert!(
                text.bytes().all(|b| b == b' ' || b.is_ascii_graphic()),
                "{text}"
            );
        }
    }

    #[test]
    fn modes_parse() {
        assert_eq!("tenant".parse(), Ok(EgressMode::Tenant));
        assert_eq!("allow-public".parse(), Ok(EgressMode::AllowPublic));
        assert_eq!("unrestricted".parse(), Ok(EgressMode::Unrestricted));
        assert!("open".parse::<EgressMode>().is_err());
    }
}
