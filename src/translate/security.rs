//! What a tenant's pod may not do on the host: the Kubernetes Pod Security "baseline" rules
//! (and, optionally, "restricted"). A violation is refused before anything reaches the host, and
//! reported on the virtual pod as an Event that names the field and the fix.

use k8s_openapi::api::core::v1::{Container, PodSpec, SecurityContext};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Level {
    #[default]
    Baseline,
    Restricted,
}

impl std::str::FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "baseline" => Ok(Level::Baseline),
            "restricted" => Ok(Level::Restricted),
            other => Err(format!(
                "unknown pod security level {other:?} (baseline or restricted)"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Capabilities baseline allows containers to add.
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

const SELINUX_TYPES: &[&str] = &[
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// Every violation of `level` in `spec` (empty = allowed).
pub fn check(spec: &PodSpec, level: Level) -> Vec<Violation> {
    let mut v = Vec::new();
    let mut deny = |field: String, message: &str| {
        v.push(Violation {
            field,
            message: message.to_string(),
        })
    };
    if spec.host_network == Some(true) {
        deny(
            "spec.hostNetwork".into(),
            "host networking is not allowed; remove hostNetwork",
        );
    }
    if spec.host_pid == Some(true) {
        deny(
            "spec.hostPID".into(),
            "the host PID namespace is not allowed",
        );
    }
    if spec.host_ipc == Some(true) {
        deny(
            "spec.hostIPC".into(),
            "the host IPC namespace is not allowed",
        );
    }
    for (i, vol) in spec.volumes.iter().flatten().enumerate() {
        if vol.host_path.is_some() {
            deny(
                format!("spec.volumes[{i}].hostPath"),
                "hostPath volumes are not allowed; use an emptyDir or a PersistentVolumeClaim",
            );
        }
    }
    if let Some(psc) = &spec.security_context {
        if let Some(sysctls) = &psc.sysctls {
            for (i, s) in sysctls.iter().enumerate() {
                if !SAFE_SYSCTLS.contains(&s.name.as_str()) {
                    deny(
                        format!("spec.securityContext.sysctls[{i}]"),
                        "only safe sysctls are allowed",
                    );
                }
            }
        }
        if psc
            .seccomp_profile
            .as_ref()
            .is_some_and(|p| p.type_ == "Unconfined")
        {
            deny(
                "spec.securityContext.seccompProfile.type".into(),
                "Unconfined seccomp is not allowed; use RuntimeDefault",
            );
        }
        if let Some(se) = &psc.se_linux_options
            && (!SELINUX_TYPES.contains(&se.type_.as_deref().unwrap_or(""))
                || se.user.is_some()
                || se.role.is_some())
        {
            deny(
                "spec.securityContext.seLinuxOptions".into(),
                "custom SELinux user, role or type is not allowed",
            );
        }
        if psc
            .windows_options
            .as_ref()
            .and_then(|w| w.host_process)
            .unwrap_or(false)
        {
            deny(
                "spec.securityContext.windowsOptions.hostProcess".into(),
                "host processes are not allowed",
            );
        }
    }
    let groups: [(&str, &[Container]); 2] = [
        ("containers", &spec.containers),
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or(&[]),
        ),
    ];
    for (kind, containers) in groups {
        for (i, c) in containers.iter().enumerate() {
            let path = format!("spec.{kind}[{i}]");
            for (j, p) in c.ports.iter().flatten().enumerate() {
                if p.host_port.unwrap_or(0) != 0 {
                    deny(
                        format!("{path}.ports[{j}].hostPort"),
                        "host ports are not allowed; expose the pod with a Service",
                    );
                }
            }
            check_container(&path, c.security_context.as_ref(), spec, level, &mut deny);
        }
    }
    v
}

fn check_container(
    path: &str,
    sc: Option<&SecurityContext>,
    spec: &PodSpec,
    level: Level,
    deny: &mut impl FnMut(String, &str),
) {
    if let Some(sc) = sc {
        if sc.privileged == Some(true) {
            deny(
                format!("{path}.securityContext.privileged"),
                "privileged containers are not allowed",
            );
        }
        if let Some(caps) = sc.capabilities.as_ref().and_then(|c| c.add.as_ref()) {
            for cap in caps {
                let name = cap.trim_start_matches("CAP_");
                let allowed = match level {
                    Level::Baseline => BASELINE_CAPABILITIES.contains(&name),
                    Level::Restricted => name == "NET_BIND_SERVICE",
                };
                if !allowed {
                    deny(
                        format!("{path}.securityContext.capabilities.add"),
                        &format!("capability {cap} is not allowed"),
                    );
                }
            }
        }
        if sc.proc_mount.as_deref() == Some("Unmasked") {
            deny(
                format!("{path}.securityContext.procMount"),
                "an unmasked /proc is not allowed",
            );
        }
        if sc
            .seccomp_profile
            .as_ref()
            .is_some_and(|p| p.type_ == "Unconfined")
        {
            deny(
                format!("{path}.securityContext.seccompProfile.type"),
                "Unconfined seccomp is not allowed; use RuntimeDefault",
            );
        }
        if let Some(se) = &sc.se_linux_options
            && (!SELINUX_TYPES.contains(&se.type_.as_deref().unwrap_or(""))
                || se.user.is_some()
                || se.role.is_some())
        {
            deny(
                format!("{path}.securityContext.seLinuxOptions"),
                "custom SELinux user, role or type is not allowed",
            );
        }
        if sc
            .windows_options
            .as_ref()
            .and_then(|w| w.host_process)
            .unwrap_or(false)
        {
            deny(
                format!("{path}.securityContext.windowsOptions.hostProcess"),
                "host processes are not allowed",
            );
        }
    }
    if level == Level::Restricted {
        let pod_non_root = spec
            .security_context
            .as_ref()
            .and_then(|p| p.run_as_non_root)
            == Some(true);
        if !(pod_non_root || sc.and_then(|s| s.run_as_non_root) == Some(true)) {
            deny(
                format!("{path}.securityContext.runAsNonRoot"),
                "restricted: set runAsNonRoot: true",
            );
        }
        if sc.and_then(|s| s.allow_privilege_escalation) != Some(false) {
            deny(
                format!("{path}.securityContext.allowPrivilegeEscalation"),
                "restricted: set allowPrivilegeEscalation: false",
            );
        }
        let drops_all = sc
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|c| c.drop.as_ref())
            .is_some_and(|d| d.iter().any(|c| c == "ALL"));
        if !drops_all {
            deny(
                format!("{path}.securityContext.capabilities.drop"),
                "restricted: drop ALL capabilities",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Capabilities, ContainerPort, HostPathVolumeSource, PodSecurityContext, Volume,
    };

    fn spec_with(c: Container) -> PodSpec {
        PodSpec {
            containers: vec![c],
            ..Default::default()
        }
    }

    fn fields(v: &[Violation]) -> Vec<&str> {
        v.iter().map(|v| v.field.as_str()).collect()
    }

    #[test]
    fn an_ordinary_pod_is_allowed() {
        let spec = spec_with(Container {
            name: "web".into(),
            image: Some("nginx".into()),
            ports: Some(vec![ContainerPort {
                container_port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(check(&spec, Level::Baseline).is_empty());
    }

    #[test]
    fn host_access_is_refused() {
        let mut spec = spec_with(Container {
            name: "c".into(),
            ports: Some(vec![ContainerPort {
                container_port: 80,
                host_port: Some(80),
                ..Default::default()
            }]),
            security_context: Some(SecurityContext {
                privileged: Some(true),
                capabilities: Some(Capabilities {
                    add: Some(vec!["NET_ADMIN".into(), "CHOWN".into()]),
                    drop: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        spec.host_network = Some(true);
        spec.host_pid = Some(true);
        spec.volumes = Some(vec![Volume {
            name: "root".into(),
            host_path: Some(HostPathVolumeSource {
                path: "/".into(),
                type_: None,
            }),
            ..Default::default()
        }]);
        spec.security_context = Some(PodSecurityContext {
            sysctls: Some(vec![k8s_openapi::api::core::v1::Sysctl {
                name: "kernel.msgmax".into(),
                value: "1".into(),
            }]),
            ..Default::default()
        });
        let v = check(&spec, Level::Baseline);
        assert_eq!(
            fields(&v),
            vec![
                "spec.hostNetwork",
                "spec.hostPID",
                "spec.volumes[0].hostPath",
                "spec.securityContext.sysctls[0]",
                "spec.containers[0].ports[0].hostPort",
                "spec.containers[0].securityContext.privileged",
                "spec.containers[0].securityContext.capabilities.add",
            ]
        );
        assert!(v[6].message.contains("NET_ADMIN"));
    }

    #[test]
    fn restricted_requires_non_root_and_dropped_capabilities() {
        let spec = spec_with(Container {
            name: "c".into(),
            ..Default::default()
        });
        assert!(check(&spec, Level::Baseline).is_empty());
        assert_eq!(check(&spec, Level::Restricted).len(), 3);
        let ok = spec_with(Container {
            name: "c".into(),
            security_context: Some(SecurityContext {
                run_as_non_root: Some(true),
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities {
                    add: None,
                    drop: Some(vec!["ALL".into()]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(check(&ok, Level::Restricted).is_empty());
    }
}
