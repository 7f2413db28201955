//! The tenant's public-key infrastructure: three CAs, the leaf certificates every control-plane
//! component needs, and the service-account signing key. Pure (no I/O except `write_files`), so
//! generation, persistence round-trips and renewal are unit-tested without a cluster.
//!
//! Only the CAs and the service-account key must never change: kubeconfigs and service-account
//! tokens already handed out depend on them. Leaf certificates are re-issued by [`Pki::reconcile`]
//! when their names change (new SANs), they near expiry, or (the admin certificate) they were
//! issued before the credentials' "not before" epoch.
//!
//! Two identities are kept apart: the admin certificate handed out in the kubeconfig (an ordinary
//! user in [`ADMIN_GROUP`], which `vkube serve` binds to `cluster-admin` in the virtual API, so
//! RBAC decides and rotation revokes it) and vkube's own internal identity ([`Leaf::Internal`],
//! `system:masters`, used only on loopback and never written into a kubeconfig).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Leaf certificates are renewed when they expire within this window.
const RENEW_BEFORE: Duration = Duration::days(30);
const CA_VALIDITY: Duration = Duration::days(3650);
const LEAF_VALIDITY: Duration = Duration::days(365);
/// The handed-out admin certificate lives a month, not a year: a kubeconfig that leaks without
/// anyone noticing stops working by itself. `vkube serve` renews it while running once less than
/// [`ADMIN_RENEW_BEFORE`] is left, so a kubeconfig fetched at any time works for at least that
/// long.
pub const ADMIN_VALIDITY: Duration = Duration::days(30);
pub const ADMIN_RENEW_BEFORE: Duration = Duration::days(10);
/// Tolerate clocks of other machines that are slightly behind ours.
const BACKDATE: Duration = Duration::hours(1);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating {what}: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("stored PKI is missing key {0:?}")]
    Missing(String),
    #[error("stored PKI entry {key:?} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The certificate authorities. Each signs a distinct class of credential so that, e.g., a
/// front-proxy client certificate can never be used as a user certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Authority {
    /// Signs the API server and proxy serving certs and all user/component client certs.
    Tenant,
    /// Signs only the proxy's requestheader client cert.
    FrontProxy,
    /// Signs the etcd serving cert and the API server's etcd client cert.
    Etcd,
}

impl Authority {
    pub const ALL: [Authority; 3] = [Authority::Tenant, Authority::FrontProxy, Authority::Etcd];

    pub fn file_stem(self) -> &'static str {
        match self {
            Authority::Tenant => "ca",
            Authority::FrontProxy => "front-proxy-ca",
            Authority::Etcd => "etcd-ca",
        }
    }

    fn common_name(self, tenant: &str) -> String {
        match self {
            Authority::Tenant => format!("vkube-{tenant}-ca"),
            Authority::FrontProxy => format!("vkube-{tenant}-front-proxy-ca"),
            Authority::Etcd => format!("vkube-{tenant}-etcd-ca"),
        }
    }
}

/// The leaf certificates. Names double as file stems and Secret keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Leaf {
    ApiServer,
    Proxy,
    FrontProxyClient,
    EtcdServer,
    ApiServerEtcdClient,
    /// The tenant's admin: the only client certificate vkube hands out.
    Admin,
    ControllerManager,
    /// vkube's own client of the virtual API (syncer, DNS, token reviews), on loopback only.
    Internal,
}

impl Leaf {
    pub const ALL: [Leaf; 8] = [
        Leaf::ApiServer,
        Leaf::Proxy,
        Leaf::FrontProxyClient,
        Leaf::EtcdServer,
        Leaf::ApiServerEtcdClient,
        Leaf::Admin,
        Leaf::ControllerManager,
        Leaf::Internal,
    ];

    pub fn file_stem(self) -> &'static str {
        match self {
            Leaf::ApiServer => "apiserver",
            Leaf::Proxy => "proxy",
            Leaf::FrontProxyClient => "front-proxy-client",
            Leaf::EtcdServer => "etcd-server",
            Leaf::ApiServerEtcdClient => "apiserver-etcd-client",
            Leaf::Admin => "admin",
            Leaf::ControllerManager => "controller-manager",
            Leaf::Internal => "internal",
        }
    }

    fn validity(self) -> (Duration, Duration) {
        match self {
            Leaf::Admin => (ADMIN_VALIDITY, ADMIN_RENEW_BEFORE),
            _ => (LEAF_VALIDITY, RENEW_BEFORE),
        }
    }
}

/// User name the front-proxy client certificate carries; the API server only accepts identity
/// headers from a certificate with this name.
pub const FRONT_PROXY_CLIENT_NAME: &str = "front-proxy-client";
/// Identity of the admin kubeconfig handed to the tenant: an ordinary user whose group
/// `vkube serve` binds to `cluster-admin` (ClusterRoleBinding [`ADMIN_GROUP`]), so RBAC decides
/// and the certificate can be revoked (see `proxy::auth`).
pub const ADMIN_USER: &str = "kubernetes-admin";
pub const ADMIN_GROUP: &str = "vkube:admins";
/// vkube's own identity towards its virtual API server, on loopback only: never handed out, and
/// the proxy refuses any certificate in this group.
pub const INTERNAL_USER: &str = "vkube:internal";
pub const INTERNAL_GROUP: &str = "system:masters";

/// What the certificates must say; derived from flags. Changing it re-issues leaves only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiSpec {
    pub tenant: String,
    /// DNS names and IPs the tenant-facing proxy is reached by.
    pub proxy_sans: Vec<String>,
    /// DNS names and IPs of the virtual API server (loopback plus in-cluster names).
    pub apiserver_sans: Vec<String>,
    /// Handed-out client certificates issued before this instant are revoked: the admin
    /// certificate is re-issued to start at or after it (whole seconds; see
    /// [`Self::with_credentials_not_before`]).
    pub credentials_not_before: Option<OffsetDateTime>,
}

impl PkiSpec {
    /// The default names for a tenant whose proxy is exposed by Service `service` in host
    /// namespace `namespace`, plus `extra` SANs from the command line.
    pub fn new(tenant: &str, service: &str, namespace: &str, extra: &[String]) -> Self {
        let mut proxy_sans: Vec<String> = vec![
            "localhost".into(),
            "127.0.0.1".into(),
            "::1".into(),
            service.into(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
            // In-pod clients of the virtual cluster reach the proxy as the `kubernetes` Service.
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
        ];
        proxy_sans.extend(extra.iter().cloned());
        proxy_sans.sort();
        proxy_sans.dedup();
        let apiserver_sans = vec![
            "localhost".into(),
            "127.0.0.1".into(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
        ];
        PkiSpec {
            tenant: tenant.into(),
            proxy_sans,
            apiserver_sans,
            credentials_not_before: None,
        }
    }

    /// Revokes the admin certificates issued before `epoch`, truncated to whole seconds (the
    /// resolution of a certificate's validity).
    pub fn with_credentials_not_before(mut self, epoch: Option<OffsetDateTime>) -> Self {
        self.credentials_not_before = epoch.map(|t| t.replace_nanosecond(0).unwrap_or(t));
        self
    }

    fn leaf(&self, leaf: Leaf) -> LeafSpec {
        let loopback = ["localhost".to_string(), "127.0.0.1".to_string()];
        let (authority, cn, orgs, sans, server, client): (_, &str, &[&str], &[String], _, _) =
            match leaf {
                Leaf::ApiServer => (
                    Authority::Tenant,
                    "kube-apiserver",
                    &[],
                    &self.apiserver_sans,
                    true,
                    false,
                ),
                Leaf::Proxy => (
                    Authority::Tenant,
                    "vkube-proxy",
                    &[],
                    &self.proxy_sans,
                    true,
                    false,
                ),
                Leaf::FrontProxyClient => (
                    Authority::FrontProxy,
                    FRONT_PROXY_CLIENT_NAME,
                    &[],
                    &[],
                    false,
                    true,
                ),
                Leaf::EtcdServer => (Authority::Etcd, "etcd", &[], &loopback, true, true),
                Leaf::ApiServerEtcdClient => (
                    Authority::Etcd,
                    "kube-apiserver-etcd-client",
                    &[],
                    &[],
                    false,
                    true,
                ),
                Leaf::Admin => (
                    Authority::Tenant,
                    ADMIN_USER,
                    &[ADMIN_GROUP],
                    &[],
                    false,
                    true,
                ),
                Leaf::ControllerManager => (
                    Authority::Tenant,
                    "system:kube-controller-manager",
                    &[],
                    &[],
                    false,
                    true,
                ),
                Leaf::Internal => (
                    Authority::Tenant,
                    INTERNAL_USER,
                    &[INTERNAL_GROUP],
                    &[],
                    false,
                    true,
                ),
            };
        let (validity, renew_before) = leaf.validity();
        LeafSpec {
            authority,
            common_name: cn.into(),
            organizations: orgs.iter().map(|o| o.to_string()).collect(),
            sans: sans.to_vec(),
            server,
            client,
            validity,
            renew_before,
            not_before: match leaf {
                Leaf::Admin => self.credentials_not_before,
                _ => None,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LeafSpec {
    authority: Authority,
    common_name: String,
    organizations: Vec<String>,
    sans: Vec<String>,
    server: bool,
    client: bool,
    validity: Duration,
    renew_before: Duration,
    /// The earliest start of validity this certificate may have (the revocation epoch).
    not_before: Option<OffsetDateTime>,
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertKey {
    // Never print private keys, not even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct Pki {
    pub authorities: BTreeMap<Authority, CertKey>,
    pub leaves: BTreeMap<Leaf, CertKey>,
    pub service_account_key_pem: String,
    pub service_account_pub_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("authorities", &self.authorities)
            .field("leaves", &self.leaves)
            .field("service_account_pub_pem", &self.service_account_pub_pem)
            .finish_non_exhaustive()
    }
}

/// Paths of the PEM files written for the child processes.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    pub dir: PathBuf,
}

impl PkiFiles {
    pub fn ca_cert(&self, a: Authority) -> PathBuf {
        self.dir.join(format!("{}.crt", a.file_stem()))
    }
    pub fn ca_key(&self, a: Authority) -> PathBuf {
        self.dir.join(format!("{}.key", a.file_stem()))
    }
    pub fn cert(&self, l: Leaf) -> PathBuf {
        self.dir.join(format!("{}.crt", l.file_stem()))
    }
    pub fn key(&self, l: Leaf) -> PathBuf {
        self.dir.join(format!("{}.key", l.file_stem()))
    }
    pub fn service_account_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }
    pub fn service_account_pub(&self) -> PathBuf {
        self.dir.join("sa.pub")
    }
}

impl Pki {
    pub fn generate(spec: &PkiSpec) -> Result<Pki, PkiError> {
        let mut authorities = BTreeMap::new();
        for a in Authority::ALL {
            authorities.insert(a, new_ca(&a.common_name(&spec.tenant))?);
        }
        let sa = KeyPair::generate().map_err(|source| PkiError::Generate {
            what: "service-account key".into(),
            source,
        })?;
        let mut pki = Pki {
            authorities,
            leaves: BTreeMap::new(),
            service_account_key_pem: sa.serialize_pem(),
            service_account_pub_pem: sa.public_key_pem(),
        };
        for leaf in Leaf::ALL {
            pki.issue(spec, leaf)?;
        }
        Ok(pki)
    }

    /// Brings stored credentials in line with `spec`: re-issues each leaf whose names, issuer or
    /// expiry no longer fit, keeping CAs and the service-account key. Returns the re-issued leaves
    /// (to be persisted when not empty).
    pub fn reconcile(&mut self, spec: &PkiSpec) -> Result<Vec<Leaf>, PkiError> {
        let now = OffsetDateTime::now_utc();
        let mut reissued = Vec::new();
        for leaf in Leaf::ALL {
            let want = spec.leaf(leaf);
            let fits = match (
                self.leaves.get(&leaf),
                self.authorities.get(&want.authority),
            ) {
                (Some(have), Some(ca)) => leaf_fits(have, ca, &want, now),
                _ => false,
            };
            if !fits {
                self.issue(spec, leaf)?;
                reissued.push(leaf);
            }
        }
        Ok(reissued)
    }

    fn issue(&mut self, spec: &PkiSpec, leaf: Leaf) -> Result<(), PkiError> {
        let want = spec.leaf(leaf);
        let ca = self
            .authorities
            .get(&want.authority)
            .ok_or_else(|| PkiError::Missing(format!("{}.crt", want.authority.file_stem())))?;
        let issued = new_leaf(leaf.file_stem(), &want, ca)?;
        self.leaves.insert(leaf, issued);
        Ok(())
    }

    pub fn ca(&self, a: Authority) -> &CertKey {
        // Every constructor fills all authorities; see `from_secret_data` and `generate`.
        &self.authorities[&a]
    }

    pub fn leaf(&self, l: Leaf) -> &CertKey {
        &self.leaves[&l]
    }

    /// Flat key → bytes map, the `data` of the host Secret.
    pub fn to_secret_data(&self) -> BTreeMap<String, Vec<u8>> {
        let mut data = BTreeMap::new();
        for (a, ck) in &self.authorities {
            data.insert(format!("{}.crt", a.file_stem()), ck.cert_pem.clone().into());
            data.insert(format!("{}.key", a.file_stem()), ck.key_pem.clone().into());
        }
        for (l, ck) in &self.leaves {
            data.insert(format!("{}.crt", l.file_stem()), ck.cert_pem.clone().into());
            data.insert(format!("{}.key", l.file_stem()), ck.key_pem.clone().into());
        }
        data.insert("sa.key".into(), self.service_account_key_pem.clone().into());
        data.insert("sa.pub".into(), self.service_account_pub_pem.clone().into());
        data
    }

    /// Parses the host Secret's data. CAs and the service-account key are required and must
    /// parse; a missing or unparsable leaf is tolerated (reconcile re-issues it).
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Pki, PkiError> {
        let text = |key: &str| -> Result<String, PkiError> {
            let bytes = data.get(key).ok_or_else(|| PkiError::Missing(key.into()))?;
            String::from_utf8(bytes.clone()).map_err(|_| PkiError::Corrupt {
                key: key.into(),
                reason: "not UTF-8 PEM".into(),
            })
        };
        let mut authorities = BTreeMap::new();
        for a in Authority::ALL {
            let crt_key = format!("{}.crt", a.file_stem());
            let key_key = format!("{}.key", a.file_stem());
            let ck = CertKey {
                cert_pem: text(&crt_key)?,
                key_pem: text(&key_key)?,
            };
            parse_cert(&ck.cert_pem).map_err(|reason| PkiError::Corrupt {
                key: crt_key.clone(),
                reason,
            })?;
            let key = KeyPair::from_pem(&ck.key_pem).map_err(|e| PkiError::Corrupt {
                key: key_key.clone(),
                reason: e.to_string(),
            })?;
            if !cert_matches_key(&ck.cert_pem, &key) {
                return Err(PkiError::Corrupt {
                    key: crt_key,
                    reason: format!("certificate does not belong to the key in {key_key}"),
                });
            }
            authorities.insert(a, ck);
        }
        let service_account_key_pem = text("sa.key")?;
        let sa = KeyPair::from_pem(&service_account_key_pem).map_err(|e| PkiError::Corrupt {
            key: "sa.key".into(),
            reason: e.to_string(),
        })?;
        let mut leaves = BTreeMap::new();
        for l in Leaf::ALL {
            let (Ok(cert_pem), Ok(key_pem)) = (
                text(&format!("{}.crt", l.file_stem())),
                text(&format!("{}.key", l.file_stem())),
            ) else {
                continue;
            };
            let Ok(key) = KeyPair::from_pem(&key_pem) else {
                continue;
            };
            if cert_matches_key(&cert_pem, &key) {
                leaves.insert(l, CertKey { cert_pem, key_pem });
            }
        }
        Ok(Pki {
            authorities,
            leaves,
            service_account_key_pem,
            service_account_pub_pem: sa.public_key_pem(),
        })
    }

    /// Writes every PEM into `dir` (mode 0600) for the child processes.
    pub fn write_files(&self, dir: &Path) -> Result<PkiFiles, PkiError> {
        let files = PkiFiles {
            dir: dir.to_path_buf(),
        };
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
            path: dir.into(),
            source,
        })?;
        for (name, bytes) in self.to_secret_data() {
            write_private(&dir.join(name), &bytes)?;
        }
        Ok(files)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    crate::private_file::write(path, bytes).map_err(|source| PkiError::Write {
        path: path.into(),
        source,
    })
}

fn random_serial() -> SerialNumber {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    // The system RNG only fails on broken platforms; a time-based serial is still unique enough.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        bytes = nanos.to_be_bytes();
    }
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

fn new_ca(common_name: &str) -> Result<CertKey, PkiError> {
    let gen_err = |source| PkiError::Generate {
        what: common_name.into(),
        source,
    };
    let key = KeyPair::generate().map_err(gen_err)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn new_leaf(what: &str, spec: &LeafSpec, ca: &CertKey) -> Result<CertKey, PkiError> {
    let gen_err = |source| PkiError::Generate {
        what: what.into(),
        source,
    };
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(gen_err)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(gen_err)?;
    let key = KeyPair::generate().map_err(gen_err)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for org in &spec.organizations {
        dn.push(DnType::OrganizationName, org.as_str());
    }
    dn.push(DnType::CommonName, spec.common_name.as_str());
    params.distinguished_name = dn;
    params.subject_alt_names = spec
        .sans
        .iter()
        .map(|s| match s.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => s.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()
        .map_err(gen_err)?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    if spec.server {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if spec.client {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    // Backdated for clock skew, but never to before the revocation epoch: a certificate issued
    // after a rotation must not look like one from before it.
    let earliest = spec.not_before.unwrap_or(OffsetDateTime::UNIX_EPOCH);
    params.not_before = (now - BACKDATE).max(earliest);
    params.not_after = now + spec.validity;
    params.serial_number = Some(random_serial());
    let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The facts of a certificate that decide whether it can stay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    pub subject_common_name: String,
    pub subject_organizations: Vec<String>,
    pub issuer_common_name: String,
    pub sans: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub public_key_der: Vec<u8>,
}

pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| format!("not a PEM certificate: {e}"))
}

pub fn parse_cert(pem: &str) -> Result<CertFacts, String> {
    let der = pem_to_der(pem)?;
    cert_facts(&der)
}

/// Subject, issuer, SANs and expiry of a DER certificate.
pub fn cert_facts(der: &[u8]) -> Result<CertFacts, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let first = |attrs: Vec<&str>| attrs.first().map(|s| s.to_string()).unwrap_or_default();
    let subject_common_name = first(
        cert.subject()
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .collect(),
    );
    let subject_organizations = cert
        .subject()
        .iter_organization()
        .filter_map(|a| a.as_str().ok().map(String::from))
        .collect();
    let issuer_common_name = first(
        cert.issuer()
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .collect(),
    );
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.push(d.to_string()),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => {
                        let b: [u8; 4] = [bytes[0], bytes[1], bytes[2], bytes[3]];
                        sans.push(IpAddr::from(b).to_string())
                    }
                    16 => {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(bytes);
                        sans.push(IpAddr::from(b).to_string())
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
        .unwrap_or(
            OffsetDateTime::UNIX_EPOCH, // an unrepresentable date is treated as expired
        );
    // An unrepresentable start is treated as the oldest possible, i.e. revoked by any epoch.
    let not_before = OffsetDateTime::from_unix_timestamp(cert.validity().not_before.timestamp())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    Ok(CertFacts {
        subject_common_name,
        subject_organizations,
        issuer_common_name,
        sans,
        not_before,
        not_after,
        public_key_der: cert.public_key().subject_public_key.data.to_vec(),
    })
}

fn cert_matches_key(cert_pem: &str, key: &KeyPair) -> bool {
    parse_cert(cert_pem)
        .map(|f| f.public_key_der == key.public_key_raw())
        .unwrap_or(false)
}

fn leaf_fits(have: &CertKey, ca: &CertKey, want: &LeafSpec, now: OffsetDateTime) -> bool {
    let (Ok(facts), Ok(ca_facts)) = (parse_cert(&have.cert_pem), parse_cert(&ca.cert_pem)) else {
        return false;
    };
    let mut have_sans = facts.sans.clone();
    have_sans.sort();
    let mut want_sans: Vec<String> = want
        .sans
        .iter()
        .map(|s| match s.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => s.clone(),
        })
        .collect();
    want_sans.sort();
    want_sans.dedup();
    facts.subject_common_name == want.common_name
        && facts.subject_organizations == want.organizations
        && facts.issuer_common_name == ca_facts.subject_common_name
        && signed_by(&have.cert_pem, &ca.cert_pem)
        && have_sans == want_sans
        && facts.not_after - now > want.renew_before
        && want
            .not_before
            .is_none_or(|epoch| facts.not_before >= epoch)
}

/// Whether `cert_pem`'s signature verifies with the public key of `ca_pem`.
pub fn signed_by(cert_pem: &str, ca_pem: &str) -> bool {
    let (Ok(der), Ok(ca_der)) = (pem_to_der(cert_pem), pem_to_der(ca_pem)) else {
        return false;
    };
    let (Ok((_, cert)), Ok((_, ca))) = (
        X509Certificate::from_der(&der),
        X509Certificate::from_der(&ca_der),
    ) else {
        return false;
    };
    cert.verify_signature(Some(ca.public_key())).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use std::sync::Arc;

    fn spec() -> PkiSpec {
        PkiSpec::new(
            "alice",
            "vkube-alice",
            "vkube-alice",
            &["api.example.test".into()],
        )
    }

    fn roots(ca_pem: &str) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(pem_to_der(ca_pem).unwrap()))
            .unwrap();
        Arc::new(roots)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn verify_server(ca: &str, leaf: &str, name: &str) -> Result<(), rustls::Error> {
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca), provider())
                .build()
                .unwrap();
        verifier
            .verify_server_cert(
                &CertificateDer::from(pem_to_der(leaf).unwrap()),
                &[],
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    fn verify_client(ca: &str, leaf: &str) -> Result<(), rustls::Error> {
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
                .build()
                .unwrap();
        verifier
            .verify_client_cert(
                &CertificateDer::from(pem_to_der(leaf).unwrap()),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    #[test]
    fn server_chains_verify_for_every_san() {
        let s = spec();
        let pki = Pki::generate(&s).unwrap();
        let ca = &pki.ca(Authority::Tenant).cert_pem;
        for name in &s.proxy_sans {
            verify_server(ca, &pki.leaf(Leaf::Proxy).cert_pem, name)
                .unwrap_or_else(|e| panic!("proxy cert for {name}: {e}"));
        }
        for name in ["localhost", "127.0.0.1", "kubernetes.default.svc"] {
            verify_server(ca, &pki.leaf(Leaf::ApiServer).cert_pem, name).unwrap();
        }
        verify_server(
            &pki.ca(Authority::Etcd).cert_pem,
            &pki.leaf(Leaf::EtcdServer).cert_pem,
            "127.0.0.1",
        )
        .unwrap();
        // A name not in the SANs is refused.
        assert!(verify_server(ca, &pki.leaf(Leaf::Proxy).cert_pem, "evil.example.test").is_err());
    }

    #[test]
    fn client_certs_verify_only_against_their_own_ca() {
        let pki = Pki::generate(&spec()).unwrap();
        let tenant = &pki.ca(Authority::Tenant).cert_pem;
        let front = &pki.ca(Authority::FrontProxy).cert_pem;
        verify_client(tenant, &pki.leaf(Leaf::Admin).cert_pem).unwrap();
        verify_client(tenant, &pki.leaf(Leaf::ControllerManager).cert_pem).unwrap();
        verify_client(front, &pki.leaf(Leaf::FrontProxyClient).cert_pem).unwrap();
        verify_client(
            &pki.ca(Authority::Etcd).cert_pem,
            &pki.leaf(Leaf::ApiServerEtcdClient).cert_pem,
        )
        .unwrap();
        // The front-proxy identity must not pass as a tenant user, nor the admin as front proxy.
        assert!(verify_client(tenant, &pki.leaf(Leaf::FrontProxyClient).cert_pem).is_err());
        assert!(verify_client(front, &pki.leaf(Leaf::Admin).cert_pem).is_err());
        // Server-only certificates are not client certificates.
        assert!(verify_client(tenant, &pki.leaf(Leaf::Proxy).cert_pem).is_err());
    }

    #[test]
    fn another_tenants_ca_does_not_verify() {
        let a = Pki::generate(&spec()).unwrap();
        let b = Pki::generate(&PkiSpec::new("bob", "vkube-bob", "vkube-bob", &[])).unwrap();
        assert!(
            verify_client(
                &a.ca(Authority::Tenant).cert_pem,
                &b.leaf(Leaf::Admin).cert_pem
            )
            .is_err()
        );
    }

    #[test]
    fn subjects_carry_user_and_groups() {
        let pki = Pki::generate(&spec()).unwrap();
        let admin = parse_cert(&pki.leaf(Leaf::Admin).cert_pem).unwrap();
        assert_eq!(admin.subject_common_name, ADMIN_USER);
        assert_eq!(admin.subject_organizations, vec![ADMIN_GROUP.to_string()]);
        // The handed-out identity is not system:masters (RBAC decides, revocation works); only
        // the internal one, which never leaves the pod, is.
        assert_ne!(ADMIN_GROUP, "system:masters");
        let internal = parse_cert(&pki.leaf(Leaf::Internal).cert_pem).unwrap();
        assert_eq!(internal.subject_common_name, INTERNAL_USER);
        assert_eq!(
            internal.subject_organizations,
            vec!["system:masters".to_string()]
        );
        let kcm = parse_cert(&pki.leaf(Leaf::ControllerManager).cert_pem).unwrap();
        assert_eq!(kcm.subject_common_name, "system:kube-controller-manager");
        let proxy = parse_cert(&pki.leaf(Leaf::Proxy).cert_pem).unwrap();
        for san in [
            "vkube-alice.vkube-alice.svc",
            "127.0.0.1",
            "::1",
            "api.example.test",
        ] {
            assert!(proxy.sans.contains(&san.to_string()), "missing SAN {san}");
        }
    }

    #[test]
    fn persisted_and_reloaded_identical() {
        let s = spec();
        let pki = Pki::generate(&s).unwrap();
        let data = pki.to_secret_data();
        let mut reloaded = Pki::from_secret_data(&data).unwrap();
        assert_eq!(reloaded, pki);
        assert!(reloaded.reconcile(&s).unwrap().is_empty());
        assert_eq!(reloaded.to_secret_data(), data);
    }

    #[test]
    fn new_sans_reissue_only_the_proxy_leaf_and_keep_the_ca() {
        let s = spec();
        let mut pki = Pki::generate(&s).unwrap();
        let before = pki.clone();
        let mut s2 = s.clone();
        s2.proxy_sans.push("vkube.other.test".into());
        assert_eq!(pki.reconcile(&s2).unwrap(), vec![Leaf::Proxy]);
        assert_eq!(pki.authorities, before.authorities);
        assert_eq!(pki.leaf(Leaf::Admin), before.leaf(Leaf::Admin));
        assert_eq!(pki.service_account_key_pem, before.service_account_key_pem);
        verify_server(
            &pki.ca(Authority::Tenant).cert_pem,
            &pki.leaf(Leaf::Proxy).cert_pem,
            "vkube.other.test",
        )
        .unwrap();
    }

    #[test]
    fn missing_or_corrupt_leaves_are_reissued_but_corrupt_cas_are_errors() {
        let s = spec();
        let pki = Pki::generate(&s).unwrap();
        let mut data = pki.to_secret_data();
        data.remove("admin.crt");
        data.insert("proxy.key".into(), b"garbage".to_vec());
        let mut reloaded = Pki::from_secret_data(&data).unwrap();
        let mut reissued = reloaded.reconcile(&s).unwrap();
        reissued.sort();
        assert_eq!(reissued, vec![Leaf::Proxy, Leaf::Admin]);

        let mut bad = pki.to_secret_data();
        bad.insert(
            "ca.crt".into(),
            b"-----BEGIN CERTIFICATE-----\nAAAA\n".to_vec(),
        );
        assert!(matches!(
            Pki::from_secret_data(&bad),
            Err(PkiError::Corrupt { .. })
        ));
        let mut swapped = pki.to_secret_data();
        let other = Pki::generate(&s).unwrap();
        swapped.insert(
            "ca.key".into(),
            other.ca(Authority::Tenant).key_pem.clone().into(),
        );
        assert!(matches!(
            Pki::from_secret_data(&swapped),
            Err(PkiError::Corrupt { .. })
        ));
        let mut missing = pki.to_secret_data();
        missing.remove("sa.key");
        assert!(matches!(
            Pki::from_secret_data(&missing),
            Err(PkiError::Missing(_))
        ));
    }

    #[test]
    fn leaf_signed_by_foreign_ca_is_reissued() {
        let s = spec();
        let mut pki = Pki::generate(&s).unwrap();
        let other = Pki::generate(&s).unwrap();
        pki.leaves
            .insert(Leaf::Admin, other.leaf(Leaf::Admin).clone());
        assert_eq!(pki.reconcile(&s).unwrap(), vec![Leaf::Admin]);
        assert!(signed_by(
            &pki.leaf(Leaf::Admin).cert_pem,
            &pki.ca(Authority::Tenant).cert_pem
        ));
    }

    #[test]
    fn the_admin_certificate_lives_a_month_and_is_renewed_ten_days_before_its_end() {
        let s = spec();
        let pki = Pki::generate(&s).unwrap();
        let admin = &pki.leaf(Leaf::Admin).cert_pem;
        let facts = parse_cert(admin).unwrap();
        let life = facts.not_after - OffsetDateTime::now_utc();
        assert!(life <= ADMIN_VALIDITY && life > ADMIN_VALIDITY - Duration::hours(1));
        let ca = pki.ca(Authority::Tenant);
        let want = s.leaf(Leaf::Admin);
        let now = OffsetDateTime::now_utc();
        assert!(leaf_fits(
            pki.leaf(Leaf::Admin),
            ca,
            &want,
            now + Duration::days(19)
        ));
        assert!(!leaf_fits(
            pki.leaf(Leaf::Admin),
            ca,
            &want,
            now + Duration::days(21)
        ));
        // Components' certificates keep their year.
        let kcm = parse_cert(&pki.leaf(Leaf::ControllerManager).cert_pem).unwrap();
        assert!(kcm.not_after - now > Duration::days(300));
    }

    #[test]
    fn a_credentials_epoch_reissues_only_the_admin_certificate_to_start_after_it() {
        let s = spec();
        let mut pki = Pki::generate(&s).unwrap();
        let before = pki.clone();
        // An epoch older than the certificate changes nothing.
        let old = s
            .clone()
            .with_credentials_not_before(Some(OffsetDateTime::now_utc() - Duration::days(1)));
        assert!(pki.reconcile(&old).unwrap().is_empty());
        // One after it (with a fraction of a second, truncated) revokes the admin certificate.
        let epoch = OffsetDateTime::now_utc() + Duration::milliseconds(1500);
        let rotated = s.clone().with_credentials_not_before(Some(epoch));
        assert_eq!(pki.reconcile(&rotated).unwrap(), vec![Leaf::Admin]);
        let admin = parse_cert(&pki.leaf(Leaf::Admin).cert_pem).unwrap();
        assert!(admin.not_before >= rotated.credentials_not_before.unwrap());
        assert!(admin.not_before <= epoch);
        assert_eq!(pki.authorities, before.authorities);
        assert_eq!(
            pki.leaf(Leaf::ControllerManager),
            before.leaf(Leaf::ControllerManager)
        );
        assert_eq!(pki.leaf(Leaf::Internal), before.leaf(Leaf::Internal));
        // Stable: the next start with the same epoch keeps it.
        assert!(pki.reconcile(&rotated).unwrap().is_empty());
    }

    #[test]
    fn an_admin_certificate_of_an_older_version_in_system_masters_is_reissued() {
        let s = spec();
        let mut pki = Pki::generate(&s).unwrap();
        let mut legacy = s.leaf(Leaf::Admin);
        legacy.organizations = vec!["system:masters".into()];
        let old = new_leaf("admin", &legacy, pki.ca(Authority::Tenant)).unwrap();
        pki.leaves.insert(Leaf::Admin, old);
        assert_eq!(pki.reconcile(&s).unwrap(), vec![Leaf::Admin]);
    }

    #[test]
    fn debug_output_redacts_keys() {
        let pki = Pki::generate(&spec()).unwrap();
        let dbg = format!("{pki:?}");
        assert!(!dbg.contains("PRIVATE KEY"));
    }
}
