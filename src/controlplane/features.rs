//! Kubernetes features of one virtual control plane (`vkube serve --feature-gates` and
//! `--runtime-config`): an admin may turn on a feature inside a tenant's API server and controller
//! manager (an alpha API a team wants to try) without touching the host. What they let a tenant
//! write still passes the syncer's checks before anything reaches the host: a pod field vkube's
//! types do not know is refused, never dropped (`translate::security::fields_beyond_types`).

/// A validated `--feature-gates` value: `Name=true|false` pairs, comma-separated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureGates(String);

/// More gates than any Kubernetes minor has alpha and beta features together.
const MAX_GATES: usize = 100;

/// Checks a comma-separated `KEY=true|false` list (at most [`MAX_GATES`] pairs) and returns it
/// normalised; `key_error` says why a key is refused, if it is.
fn parse_pairs(value: &str, key_error: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let pairs: Vec<&str> = value.split(',').map(str::trim).collect();
    if pairs.len() > MAX_GATES {
        return Err(format!("at most {MAX_GATES} entries"));
    }
    let mut normal = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let Some((key, enabled)) = pair.split_once('=') else {
            return Err(format!("{pair:?}: write KEY=true or KEY=false"));
        };
        if let Some(e) = key_error(key) {
            return Err(e);
        }
        if enabled != "true" && enabled != "false" {
            return Err(format!("{pair:?}: the value must be true or false"));
        }
        normal.push(format!("{key}={enabled}"));
    }
    Ok(normal.join(","))
}

impl FeatureGates {
    /// Parses `A=true,B=false`; names as Kubernetes spells them (letters and digits).
    pub fn parse(value: &str) -> Result<Self, String> {
        parse_pairs(value, |name| {
            let ok = name.len() <= 100
                && name.starts_with(|c: char| c.is_ascii_uppercase())
                && name.chars().all(|c| c.is_ascii_alphanumeric());
            (!ok).then(|| format!(
                "{name:?} is not a feature gate name (letters and digits, starting upper-case, e.g. GenericWorkload)"
            ))
        })
        .map(FeatureGates)
    }

    /// The flag kube-apiserver and kube-controller-manager take.
    pub fn flag(&self) -> String {
        format!("--feature-gates={}", self.0)
    }
}

impl std::fmt::Display for FeatureGates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated `--runtime-config` value of the API server: `group/version=true|false` pairs
/// (`api/all`, `api/alpha`, `scheduling.k8s.io/v1alpha2`, `group/version/resource`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig(String);

impl RuntimeConfig {
    pub fn parse(value: &str) -> Result<Self, String> {
        parse_pairs(value, |key| {
            let parts: Vec<&str> = key.split('/').collect();
            let part_ok = |p: &&str| {
                !p.is_empty()
                    && p.len() <= 63
                    && p.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-'
                    })
            };
            (!(2..=3).contains(&parts.len()) || !parts.iter().all(part_ok)).then(|| format!(
                "{key:?} is not an API group version (e.g. scheduling.k8s.io/v1alpha2 or api/alpha)"
            ))
        })
        .map(RuntimeConfig)
    }

    /// The flag kube-apiserver takes.
    pub fn flag(&self) -> String {
        format!("--runtime-config={}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_are_name_equals_bool_pairs() {
        let g = FeatureGates::parse("GenericWorkload=true, AllBeta=false").unwrap();
        assert_eq!(
            g.flag(),
            "--feature-gates=GenericWorkload=true,AllBeta=false"
        );
        for bad in [
            "",
            "GenericWorkload",
            "GenericWorkload=yes",
            "genericWorkload=true",
            "Generic-Workload=true",
            "A=true --authorization-mode=AlwaysAllow",
            "A=true,,B=true",
        ] {
            assert!(FeatureGates::parse(bad).is_err(), "{bad:?} accepted");
        }
        let many = vec!["A=true"; MAX_GATES + 1].join(",");
        assert!(FeatureGates::parse(&many).is_err());
    }

    #[test]
    fn runtime_config_is_group_version_equals_bool_pairs() {
        let r = RuntimeConfig::parse("scheduling.k8s.io/v1alpha2=true,api/beta=false").unwrap();
        assert_eq!(
            r.flag(),
            "--runtime-config=scheduling.k8s.io/v1alpha2=true,api/beta=false"
        );
        assert!(RuntimeConfig::parse("apps/v1/deployments=false").is_ok());
        for bad in [
            "",
            "api/all",
            "v1=true",
            "a/b/c/d=true",
            "Apps/v1=true",
            "apps/v1=on",
            "apps/v1=true --anonymous-auth=true",
            "apps//v1=true",
        ] {
            assert!(RuntimeConfig::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
