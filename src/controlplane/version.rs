//! Which Kubernetes version the virtual control plane runs: the minors vkube knows, the
//! binaries of a requested one, the version the binaries really are (a mismatch is refused
//! before anything starts), and the one place where the flags of a minor differ.

use std::path::{Path, PathBuf};

/// A Kubernetes minor version (major 1): "1.35".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Minor(pub u32);

/// The minors the virtual control plane is tested in (the e2e matrix `versions::` runs each one
/// beside the others on one host; hack/versions.sh builds them). Others are refused: their
/// flags and APIs are unknown to this release.
pub const SUPPORTED: &[Minor] = &[Minor(34), Minor(35), Minor(36)];

impl std::fmt::Display for Minor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "1.{}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("invalid Kubernetes version {0:?}: write the minor, e.g. 1.35")]
    Invalid(String),
    #[error(
        "Kubernetes {version} is not supported by this vkube (supported: {})",
        supported()
    )]
    Unsupported { version: Minor },
    #[error("could not tell the version of {path}: {reason}")]
    Unknown { path: PathBuf, reason: String },
    #[error(
        "{component} at {path} is Kubernetes {found}, but {wanted} was asked for: point --bin-dir (or --versions-dir) at binaries of {wanted}"
    )]
    Mismatch {
        component: &'static str,
        path: PathBuf,
        found: String,
        wanted: Minor,
    },
    #[error(
        "no binaries of Kubernetes {wanted} under {dir}: expected a directory v{wanted}.PATCH/bin (hack/build-components.sh --control-plane v{wanted}.PATCH builds one)"
    )]
    NotBuilt { dir: PathBuf, wanted: Minor },
}

fn supported() -> String {
    SUPPORTED
        .iter()
        .map(Minor::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl std::str::FromStr for Minor {
    type Err = VersionError;
    /// "1.35", "v1.35" or a full "v1.35.4" (the patch is ignored).
    fn from_str(s: &str) -> Result<Minor, VersionError> {
        let invalid = || VersionError::Invalid(s.to_string());
        let rest = s.strip_prefix('v').unwrap_or(s);
        let mut parts = rest.split('.');
        let (Some("1"), Some(minor)) = (parts.next(), parts.next()) else {
            return Err(invalid());
        };
        let patch_ok = match parts.next() {
            None => true,
            Some(p) => !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()),
        };
        if !patch_ok || parts.next().is_some() || minor.is_empty() || minor.len() > 3 {
            return Err(invalid());
        }
        if !minor.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        minor.parse().map(Minor).map_err(|_| invalid())
    }
}

impl Minor {
    /// `s` parsed, and one of [`SUPPORTED`].
    pub fn supported(s: &str) -> Result<Minor, VersionError> {
        let v: Minor = s.parse()?;
        if SUPPORTED.contains(&v) {
            Ok(v)
        } else {
            Err(VersionError::Unsupported { version: v })
        }
    }
}

/// The version a Kubernetes binary reports: `NAME --version` prints "Kubernetes v1.35.4".
pub fn of_binary(path: &Path) -> Result<(Minor, String), VersionError> {
    let unknown = |reason: String| VersionError::Unknown {
        path: path.to_path_buf(),
        reason,
    };
    let out = std::process::Command::new(path)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| unknown(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_version_output(&text)
        .ok_or_else(|| unknown(format!("--version printed {:?}", text.trim())))
}

fn parse_version_output(text: &str) -> Option<(Minor, String)> {
    let full = text.trim().strip_prefix("Kubernetes ")?.trim();
    let minor = full.parse().ok()?;
    Some((minor, full.to_string()))
}

/// The bin directory of `wanted` under `versions_dir`: the highest patch `v1.MINOR.PATCH/bin`
/// there (the layout of hack/build-components.sh's cache).
pub fn bin_dir_in(versions_dir: &Path, wanted: Minor) -> Result<PathBuf, VersionError> {
    let prefix = format!("v{wanted}.");
    let best = std::fs::read_dir(versions_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let patch: u32 = name.strip_prefix(&prefix)?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("kube-apiserver").is_file().then_some((patch, bin))
        })
        .max_by_key(|(patch, _)| *patch);
    best.map(|(_, bin)| bin)
        .ok_or_else(|| VersionError::NotBuilt {
            dir: versions_dir.to_path_buf(),
            wanted,
        })
}

/// Checks that `component` at `path` is of minor `wanted` (or, with none asked for, of a
/// supported one); returns the version it reports.
pub fn check_binary(
    component: &'static str,
    path: &Path,
    wanted: Option<Minor>,
) -> Result<Minor, VersionError> {
    let (found, full) = of_binary(path)?;
    match wanted {
        Some(w) if w != found => Err(VersionError::Mismatch {
            component,
            path: path.to_path_buf(),
            found: full,
            wanted: w,
        }),
        _ if !SUPPORTED.contains(&found) => Err(VersionError::Unsupported { version: found }),
        _ => Ok(found),
    }
}

/// The flags of `args` (kube-apiserver's) as `minor` takes them. Every difference between the
/// supported minors is here, so the argument builders stay version-free.
pub fn apiserver_flags(minor: Minor, args: Vec<String>) -> Vec<String> {
    // No flag vkube passes differs between 1.34 and 1.36 (checked against each `--help` when a
    // minor is added); a flag removed or renamed in a later minor is rewritten or dropped here.
    let _ = minor;
    args
}

/// [`apiserver_flags`] for kube-controller-manager.
pub fn controller_manager_flags(minor: Minor, args: Vec<String>) -> Vec<String> {
    let _ = minor;
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minors_parse_in_every_spelling_kubernetes_uses() {
        for (s, want) in [
            ("1.35", Minor(35)),
            ("v1.35", Minor(35)),
            ("v1.34.4", Minor(34)),
            ("1.36.3", Minor(36)),
        ] {
            assert_eq!(s.parse::<Minor>(), Ok(want), "{s}");
        }
        for bad in [
            "", "1", "2.35", "v1.", "1.x", "1.35.", "1.35.4.1", "1.35-rc", "1.35;rm", "1.9999",
            "v1.35.4a",
        ] {
            assert!(bad.parse::<Minor>().is_err(), "{bad:?}");
        }
        assert_eq!(Minor(34).to_string(), "1.34");
    }

    #[test]
    fn only_tested_minors_are_supported() {
        assert_eq!(Minor::supported("1.35"), Ok(Minor(35)));
        assert_eq!(
            Minor::supported("1.20"),
            Err(VersionError::Unsupported { version: Minor(20) })
        );
        assert!(SUPPORTED.len() >= 3);
    }

    #[test]
    fn version_output_is_read_as_kubernetes_prints_it() {
        assert_eq!(
            parse_version_output("Kubernetes v1.34.4\n"),
            Some((Minor(34), "v1.34.4".into()))
        );
        assert_eq!(parse_version_output("v0.0.0-master+$Format:%H$"), None);
        assert_eq!(parse_version_output(""), None);
    }

    #[test]
    fn the_highest_patch_of_the_minor_is_chosen_and_other_minors_never() {
        let dir = tempfile::tempdir().unwrap();
        for v in ["v1.34.2", "v1.34.4", "v1.35.9", "v1.3.1", "v1.34.x"] {
            let bin = dir.path().join(v).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::write(bin.join("kube-apiserver"), "").unwrap();
        }
        // A newer patch without binaries (a build in progress) is not chosen.
        std::fs::create_dir_all(dir.path().join("v1.34.7/bin")).unwrap();
        assert_eq!(
            bin_dir_in(dir.path(), Minor(34)).unwrap(),
            dir.path().join("v1.34.4/bin")
        );
        assert_eq!(
            bin_dir_in(dir.path(), Minor(35)).unwrap(),
            dir.path().join("v1.35.9/bin")
        );
        assert!(matches!(
            bin_dir_in(dir.path(), Minor(36)),
            Err(VersionError::NotBuilt { .. })
        ));
    }

    /// The chart's schema and hack/ (which builds and tests the versions) name exactly these.
    #[test]
    fn the_chart_and_the_harness_list_the_supported_minors() {
        let want: Vec<String> = SUPPORTED.iter().map(Minor::to_string).collect();
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../charts/vkube/values.schema.json")).unwrap();
        let listed: Vec<String> = serde_json::from_value(
            schema["properties"]["policy"]["properties"]["kubernetesVersions"]["items"]
                ["properties"]["version"]["enum"]
                .clone(),
        )
        .unwrap();
        assert_eq!(listed, want, "charts/vkube/values.schema.json");
        let versions = include_str!("../../hack/versions.sh");
        let line = versions
            .lines()
            .find_map(|l| l.strip_prefix("VIRTUAL_K8S_VERSIONS=\"${VIRTUAL_K8S_VERSIONS:-"))
            .expect("VIRTUAL_K8S_VERSIONS in hack/versions.sh");
        let built: Vec<String> = line
            .trim_end_matches("}\"")
            .split_whitespace()
            .map(|v| v.parse::<Minor>().unwrap().to_string())
            .collect();
        assert_eq!(built, want, "hack/versions.sh VIRTUAL_K8S_VERSIONS");
    }

    /// A fake binary printing `version`, under a fresh name each time: a script just written
    /// may be "busy" for a moment while another test's child still holds the written file.
    fn fake_binary(dir: &Path, version: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(format!("kube-apiserver-{}", version.replace('.', "-")));
        std::fs::write(&path, format!("#!/bin/sh\necho Kubernetes {version}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn check(path: &Path, wanted: Option<Minor>) -> Result<Minor, VersionError> {
        for _ in 0..50 {
            match check_binary("kube-apiserver", path, wanted) {
                Err(VersionError::Unknown { reason, .. }) if reason.contains("busy") => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                other => return other,
            }
        }
        check_binary("kube-apiserver", path, wanted)
    }

    #[test]
    fn binaries_of_another_minor_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_binary(dir.path(), "v1.35.4");
        assert_eq!(check(&fake, Some(Minor(35))), Ok(Minor(35)));
        assert_eq!(check(&fake, None), Ok(Minor(35)));
        let err = check(&fake, Some(Minor(34))).unwrap_err();
        assert!(matches!(err, VersionError::Mismatch { .. }), "{err}");
        assert!(err.to_string().contains("v1.35.4"), "{err}");
        let old = fake_binary(dir.path(), "v1.20.1");
        assert_eq!(
            check(&old, None),
            Err(VersionError::Unsupported { version: Minor(20) })
        );
    }
}
