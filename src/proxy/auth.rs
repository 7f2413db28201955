//! Bearer-token authentication: a TokenReview against the virtual API server, cached briefly by
//! the token's SHA-256 (the token itself is never stored or logged).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use super::identity::Identity;

const POSITIVE_TTL: Duration = Duration::from_secs(10);
const NEGATIVE_TTL: Duration = Duration::from_secs(2);
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token review failed: {0}")]
    Review(#[from] kube::Error),
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
