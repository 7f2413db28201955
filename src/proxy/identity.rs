//! Who is calling, and how that identity is handed to the virtual API server: front-proxy
//! (requestheader) headers on a connection authenticated by the front-proxy client certificate.
//! Pure functions: request headers in, forwarded headers out.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub const REMOTE_USER: &str = "x-remote-user";
pub const REMOTE_GROUP: &str = "x-remote-group";
pub const REMOTE_EXTRA_PREFIX: &str = "x-remote-extra-";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    pub user: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: Vec<(String, Vec<String>)>,
}

impl Identity {
    /// The API server's own name for unauthenticated callers. The front-proxy connection always
    /// needs a user header, since its certificate is not one of the tenant CA.
    pub fn anonymous() -> Identity {
        Identity {
            user: "system:anonymous".into(),
            uid: None,
            groups: vec!["system:unauthenticated".into()],
            extra: vec![],
        }
    }

    /// From a verified client certificate: CN is the user, each O a group (as Kubernetes does).
    pub fn from_certificate(common_name: &str, organizations: &[String]) -> Option<Identity> {
        if common_name.is_empty() {
            return None;
        }
        Some(Identity {
            user: common_name.into(),
            uid: None,
            groups: organizations.to_vec(),
            extra: vec![],
        })
    }
}

/// Headers that describe one connection and must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether the request asks to switch protocols (exec/attach/port-forward over SPDY/WebSocket).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers (and any named in `Connection`); keeps `Connection: Upgrade` and
/// `Upgrade` when `keep_upgrade`, since the upgrade itself is forwarded end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if keep_upgrade && name == header::UPGRADE {
            continue;
        }
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        if keep_upgrade && (*name == "upgrade" || *name == "connection") {
            continue;
        }
        headers.remove(*name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    }
}

/// The headers sent to the virtual API server for a request from `identity`: the caller's own
/// credentials and any identity headers it sent are dropped (nobody can forge X-Remote-User),
/// then the authenticated identity is added.
pub fn forwarded_headers(incoming: &HeaderMap, identity: Option<&Identity>) -> HeaderMap {
    let upgrade = is_upgrade(incoming);
    let mut out = incoming.clone();
    strip_hop_by_hop(&mut out, upgrade);
    out.remove(header::AUTHORIZATION);
    out.remove(header::HOST);
    let forged: Vec<HeaderName> = out
        .keys()
        .filter(|k| k.as_str().starts_with("x-remote-"))
        .cloned()
        .collect();
    for k in forged {
        out.remove(k);
    }
    if let Some(id) = identity {
        // Values that are not valid header values (control characters) cannot come from a
        // verified certificate or TokenReview; skipping them fails closed (less identity).
        if let Ok(v) = HeaderValue::from_str(&id.user) {
            out.insert(REMOTE_USER, v);
        }
        for g in &id.groups {
            if let Ok(v) = HeaderValue::from_str(g) {
                out.append(REMOTE_GROUP, v);
            }
        }
        for (key, values) in &id.extra {
            let Ok(name) = HeaderName::from_bytes(
                format!("{REMOTE_EXTRA_PREFIX}{}", encode_extra_key(key)).as_bytes(),
            ) else {
                continue;
            };
            for value in values {
                if let Ok(v) = HeaderValue::from_str(value) {
                    out.append(name.clone(), v);
                }
            }
        }
    }
    out
}

/// Extra keys are percent-encoded in header names (as the requestheader authenticator expects:
/// it lower-cases and unescapes them).
pub fn encode_extra_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'!'
                    | b'#'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        if keep {
            out.push(b.to_ascii_lowercase() as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The bearer token of an `Authorization: Bearer ...` header.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn alice() -> Identity {
        Identity {
            user: "alice".into(),
            uid: None,
            groups: vec!["dev".into(), "system:authenticated".into()],
            extra: vec![(
                "authentication.kubernetes.io/pod-name".into(),
                vec!["web-1".into()],
            )],
        }
    }

    #[test]
    fn forged_identity_headers_and_credentials_are_dropped() {
        let h = headers(&[
            ("X-Remote-User", "system:admin"),
            ("x-remote-group", "system:masters"),
            ("X-Remote-Extra-Scopes", "all"),
            ("Authorization", "Bearer secret"),
            ("Accept", "application/json"),
        ]);
        let out = forwarded_headers(&h, Some(&alice()));
        assert_eq!(out.get(REMOTE_USER).unwrap(), "alice");
        let groups: Vec<_> = out.get_all(REMOTE_GROUP).iter().collect();
        assert_eq!(groups, vec!["dev", "system:authenticated"]);
        assert!(out.get("x-remote-extra-scopes").is_none());
        assert!(out.get(header::AUTHORIZATION).is_none());
        assert_eq!(out.get(header::ACCEPT).unwrap(), "application/json");
        assert_eq!(
            out.get("x-remote-extra-authentication.kubernetes.io%2Fpod-name")
                .unwrap(),
            "web-1"
        );
    }

    #[test]
    fn anonymous_requests_carry_no_identity() {
        let h = headers(&[("X-Remote-User", "system:admin")]);
        let out = forwarded_headers(&h, None);
        assert!(out.get(REMOTE_USER).is_none());
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_but_upgrades_survive() {
        let plain = headers(&[
            ("Connection", "keep-alive, X-Custom"),
            ("X-Custom", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
        ]);
        let out = forwarded_headers(&plain, None);
        assert!(out.is_empty(), "{out:?}");

        let upgrade = headers(&[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Protocol", "v5.channel.k8s.io"),
        ]);
        assert!(is_upgrade(&upgrade));
        let out = forwarded_headers(&upgrade, None);
        assert_eq!(out.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(out.get(header::CONNECTION).unwrap(), "Upgrade");
        assert_eq!(
            out.get("sec-websocket-protocol").unwrap(),
            "v5.channel.k8s.io"
        );
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(
            bearer_token(&headers(&[("Authorization", "Bearer abc")])),
            Some("abc")
        );
        assert_eq!(
            bearer_token(&headers(&[("Authorization", "bearer  abc ")])),
            Some("abc")
        );
        assert_eq!(
            bearer_token(&headers(&[("Authorization", "Basic abc")])),
            None
        );
        assert_eq!(
            bearer_token(&headers(&[("Authorization", "Bearer ")])),
            None
        );
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn certificate_identity_needs_a_name() {
        assert_eq!(Identity::from_certificate("", &[]), None);
        let id = Identity::from_certificate("bob", &["team-a".into()]).unwrap();
        assert_eq!(id.groups, vec!["team-a".to_string()]);
    }
}
