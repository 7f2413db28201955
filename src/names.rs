//! Validation of names users choose.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid virtual cluster name {name:?}: {reason}")]
pub struct InvalidName {
    pub name: String,
    pub reason: &'static str,
}

/// The longest tenant name: `vkube-<name>-kubeconfig` and host names derived from it must stay
/// within Kubernetes' 63-character label limit.
pub const MAX_TENANT_NAME: usize = 40;

/// A tenant name is a DNS-1123 label of at most [`MAX_TENANT_NAME`] characters.
pub fn validate_tenant_name(name: &str) -> Result<(), InvalidName> {
    let err = |reason| {
        Err(InvalidName {
            name: name.into(),
            reason,
        })
    };
    if name.is_empty() {
        return err("it is empty");
    }
    if name.len() > MAX_TENANT_NAME {
        return err("it is longer than 40 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return err("use only lower-case letters, digits and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return err("it must start and end with a letter or digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "alice", "team-1", "0abc", &"x".repeat(40)] {
            assert_eq!(validate_tenant_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "Alice",
            "-a",
            "a-",
            "a_b",
            "a.b",
            "ä",
            &"x".repeat(41),
            "a b",
        ] {
            assert!(validate_tenant_name(bad).is_err(), "{bad}");
        }
    }
}
