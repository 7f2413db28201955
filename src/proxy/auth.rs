//! Authentication of callers: client certificates (already verified against the tenant CA by
//! the TLS handshake) are checked against the revocation epoch here, and bearer tokens with a
//! TokenReview against the virtual API server, cached briefly by the token's SHA-256 (the token
//! itself is never stored or logged).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use super::identity::Identity;
use crate::pki::CertFacts;

const POSITIVE_TTL: Duration = Duration::from_secs(10);
const NEGATIVE_TTL: Duration = Duration::from_secs(2);
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token review failed: {0}")]
    Review(#[from] kube::Error),
}

/// What the proxy accepts of a client certificate the TLS handshake verified.
#[derive(Debug, Clone, Default)]
pub struct ClientCertPolicy {
    /// Tenant name, for the hint in refusals.
    pub tenant: String,
    /// Certificates issued before this instant (whole seconds) are revoked
    /// (`vkube serve --credentials-not-before`).
    pub not_before: Option<time::OffsetDateTime>,
}

/// Why a verified certificate is not accepted; the text is the 401's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertRefusal {
    #[error(
        "this client certificate was issued before the credentials of virtual cluster {tenant:?} were rotated ({epoch}): get a new kubeconfig with `vkube kubeconfig {tenant}`"
    )]
    Revoked { tenant: String, epoch: String },
    #[error(
        "client certificates in group system:masters are not accepted (vkube's own identity, never handed out; older vkube versions put the admin there): get a new kubeconfig with `vkube kubeconfig {tenant}`"
    )]
    Masters { tenant: String },
    #[error("the client certificate names no user (empty common name)")]
    NoUser,
}

impl ClientCertPolicy {
    /// The caller's identity, or why the certificate is refused. Pure.
    pub fn identity(&self, cert: &CertFacts) -> Result<Identity, CertRefusal> {
        if let Some(epoch) = self.not_before
            && cert.not_before < epoch
        {
            return Err(CertRefusal::Revoked {
                tenant: self.tenant.clone(),
                epoch: k8s_openapi::jiff::Timestamp::from_second(epoch.unix_timestamp())
                    .map(|t| t.to_string())
                    .unwrap_or_else(|_| epoch.unix_timestamp().to_string()),
            });
        }
        // system:masters skips RBAC and cannot be revoked: no certificate that reaches the
        // proxy may carry it, whoever signed it (vkube's internal identity talks to the API
        // server on loopback, never through here).
        if cert
            .subject_organizations
            .iter()
            .any(|o| o == crate::pki::INTERNAL_GROUP)
        {
            return Err(CertRefusal::Masters {
                tenant: self.tenant.clone(),
            });
        }
        Identity::from_certificate(&cert.subject_common_name, &cert.subject_organizations)
            .ok_or(CertRefusal::NoUser)
    }
}

type Digest = [u8; 32];

pub struct TokenAuthenticator {
    client: kube::Client,
    cache: Mutex<HashMap<Digest, (Instant, Option<Identity>)>>,
}

impl TokenAuthenticator {
    pub fn new(client: kube::Client) -> Self {
        TokenAuthenticator {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// `Ok(None)` when the API server says the token is not valid.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Identity>, AuthError> {
        let key = digest(token);
        if let Some(hit) = self.cached(&key) {
            return Ok(hit);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let result = api.create(&PostParams::default(), &review).await?;
        let identity = result.status.and_then(|s| {
            if s.authenticated != Some(true) {
                return None;
            }
            let user = s.user?;
            Some(Identity {
                user: user.username.filter(|u| !u.is_empty())?,
                uid: user.uid,
                groups: user.groups.unwrap_or_default(),
                extra: user.extra.unwrap_or_default().into_iter().collect(),
            })
        });
        let ttl = if identity.is_some() {
            POSITIVE_TTL
        } else {
            NEGATIVE_TTL
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_ENTRIES {
                let now = Instant::now();
                cache.retain(|_, (expires, _)| *expires > now);
                if cache.len() >= MAX_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(key, (Instant::now() + ttl, identity.clone()));
        }
        Ok(identity)
    }

    fn cached(&self, key: &Digest) -> Option<Option<Identity>> {
        let cache = self.cache.lock().ok()?;
        let (expires, identity) = cache.get(key)?;
        (*expires > Instant::now()).then(|| identity.clone())
    }
}

fn digest(token: &str) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::{Duration, OffsetDateTime};

    fn cert(user: &str, groups: &[&str], issued: OffsetDateTime) -> CertFacts {
        CertFacts {
            subject_common_name: user.into(),
            subject_organizations: groups.iter().map(|g| g.to_string()).collect(),
            issuer_common_name: "vkube-alice-ca".into(),
            sans: vec![],
            not_before: issued,
            not_after: issued + Duration::days(30),
            public_key_der: vec![],
        }
    }

    #[test]
    fn certificates_from_before_the_epoch_are_revoked_and_later_ones_accepted() {
        let epoch = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let policy = ClientCertPolicy {
            tenant: "alice".into(),
            not_before: Some(epoch),
        };
        let old = cert(
            "kubernetes-admin",
            &["vkube:admins"],
            epoch - Duration::seconds(1),
        );
        let err = policy.identity(&old).unwrap_err();
        assert!(matches!(err, CertRefusal::Revoked { .. }));
        let text = err.to_string();
        assert!(text.contains("2023-11-14T22:13:20Z"), "{text}");
        assert!(text.contains("vkube kubeconfig alice"), "{text}");
        for issued in [epoch, epoch + Duration::days(1)] {
            let id = policy
                .identity(&cert("kubernetes-admin", &["vkube:admins"], issued))
                .unwrap();
            assert_eq!(id.user, "kubernetes-admin");
            assert_eq!(id.groups, ["vkube:admins"]);
        }
        // No epoch: nothing is revoked.
        assert!(ClientCertPolicy::default().identity(&old).is_ok());
    }

    #[test]
    fn system_masters_and_nameless_certificates_are_refused() {
        let policy = ClientCertPolicy::default();
        let now = OffsetDateTime::now_utc();
        assert!(matches!(
            policy.identity(&cert("kubernetes-admin", &["system:masters"], now)),
            Err(CertRefusal::Masters { .. })
        ));
        assert!(matches!(
            policy.identity(&cert("x", &["dev", "system:masters"], now)),
            Err(CertRefusal::Masters { .. })
        ));
        assert_eq!(
            policy.identity(&cert("", &["dev"], now)),
            Err(CertRefusal::NoUser)
        );
    }
}
