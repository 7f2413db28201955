//! What a tenant's pod may not do on the host: the Kubernetes Pod Security "baseline" rules
//! (and, optionally, "restricted"). A violation is refused before anything reaches the host, and
//! reported on the virtual pod as an Event that names the field and the fix.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, HTTPGetAction, PodSpec, SecurityContext, TCPSocketAction,
};

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

/// Namespaced sysctls isolated from other pods (upstream baseline, Kubernetes 1.32+).
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
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

const SELINUX_TYPES: &[&str] = &[
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// Volume types restricted allows (everything else must come through a claim).
const RESTRICTED_VOLUME_TYPES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Annotations that set a container's AppArmor profile (before the field existed; the kubelet
/// and admission still read them).
pub const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";
const SECCOMP_POD_ANNOTATION: &str = "seccomp.security.alpha.kubernetes.io/pod";
const SECCOMP_CONTAINER_ANNOTATION_PREFIX: &str = "container.seccomp.security.alpha.kubernetes.io/";

fn allowed_apparmor_annotation(v: &str) -> bool {
    v.is_empty() || v == "runtime/default" || v.starts_with("localhost/")
}

fn allowed_seccomp_annotation(v: &str) -> bool {
    v == "runtime/default" || v == "docker/default" || v.starts_with("localhost/")
}

fn allowed_profile_type(t: &str) -> bool {
    matches!(t, "RuntimeDefault" | "Localhost")
}

/// Every violation of `level` by a pod with these annotations and this spec (empty = allowed).
/// The checks are those of Kubernetes' Pod Security Standards at 1.35 for `containers` and
/// `initContainers` (ephemeral containers never reach the host), plus the AppArmor and seccomp
/// annotations.
pub fn check(
    annotations: &BTreeMap<String, String>,
    spec: &PodSpec,
    level: Level,
) -> Vec<Violation> {
    let mut v = Vec::new();
    let mut deny = |field: String, message: &str| {
        v.push(Violation {
            field,
            message: message.to_string(),
        })
    };
    // Pods in their own user namespace may do more, as upstream allows since 1.35.
    let user_namespace = spec.host_users == Some(false);
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
        if level == Level::Restricted {
            for t in super::volumes::source_types(vol) {
                if t != "hostPath" && !RESTRICTED_VOLUME_TYPES.contains(&t.as_str()) {
                    deny(
                        format!("spec.volumes[{i}].{t}"),
                        "restricted: only configMap, csi, downwardAPI, emptyDir, ephemeral, image, persistentVolumeClaim, projected and secret volumes",
                    );
                }
            }
        }
    }
    for (k, val) in annotations {
        if k.starts_with(APPARMOR_ANNOTATION_PREFIX) && !allowed_apparmor_annotation(val) {
            deny(
                format!("metadata.annotations[{k}]"),
                "only the runtime/default or a localhost/ AppArmor profile is allowed; remove the annotation",
            );
        }
        if (k == SECCOMP_POD_ANNOTATION || k.starts_with(SECCOMP_CONTAINER_ANNOTATION_PREFIX))
            && !allowed_seccomp_annotation(val)
        {
            deny(
                format!("metadata.annotations[{k}]"),
                "only the runtime/default or a localhost/ seccomp profile is allowed; remove the annotation",
            );
        }
    }
    let psc = spec.security_context.as_ref();
    if let Some(psc) = psc {
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
            .is_some_and(|p| !allowed_profile_type(&p.type_))
        {
            deny(
                "spec.securityContext.seccompProfile.type".into(),
                "only RuntimeDefault or Localhost seccomp profiles are allowed",
            );
        }
        if psc
            .app_armor_profile
            .as_ref()
            .is_some_and(|p| !allowed_profile_type(&p.type_))
        {
            deny(
                "spec.securityContext.appArmorProfile.type".into(),
                "only RuntimeDefault or Localhost AppArmor profiles are allowed",
            );
        }
        if let Some(se) = &psc.se_linux_options
            && !allowed_selinux(se)
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
        if level == Level::Restricted && !user_namespace && psc.run_as_user == Some(0) {
            deny(
                "spec.securityContext.runAsUser".into(),
                "restricted: runAsUser must not be 0",
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
            for (field, host) in handler_hosts(c) {
                deny(
                    format!("{path}.{field}"),
                    &format!(
                        "the kubelet would connect to {host:?} from the node; leave host empty (the pod's own IP)"
                    ),
                );
            }
            check_container(&path, c.security_context.as_ref(), spec, level, &mut deny);
        }
    }
    v
}

/// Every pod-spec field vkube handles, by its JSON name. A field outside these (one a later
/// Kubernetes adds) is refused until vkube knows what it makes the host do.
const POD_SPEC_FIELDS: &[&str] = &[
    "activeDeadlineSeconds",
    "affinity",
    "automountServiceAccountToken",
    "containers",
    "dnsConfig",
    "dnsPolicy",
    "enableServiceLinks",
    "ephemeralContainers",
    "hostAliases",
    "hostIPC",
    "hostNetwork",
    "hostPID",
    "hostUsers",
    "hostname",
    "hostnameOverride",
    "imagePullSecrets",
    "initContainers",
    "nodeName",
    "nodeSelector",
    "os",
    "overhead",
    "preemptionPolicy",
    "priority",
    "priorityClassName",
    "readinessGates",
    "resourceClaims",
    "resources",
    "restartPolicy",
    "runtimeClassName",
    "schedulerName",
    "schedulingGates",
    "securityContext",
    "serviceAccount",
    "serviceAccountName",
    "setHostnameAsFQDN",
    "shareProcessNamespace",
    "subdomain",
    "terminationGracePeriodSeconds",
    "tolerations",
    "topologySpreadConstraints",
    "volumes",
    "workloadRef",
];

const CONTAINER_FIELDS: &[&str] = &[
    "args",
    "command",
    "env",
    "envFrom",
    "image",
    "imagePullPolicy",
    "lifecycle",
    "livenessProbe",
    "name",
    "ports",
    "readinessProbe",
    "resizePolicy",
    "resources",
    "restartPolicy",
    "restartPolicyRules",
    "securityContext",
    "startupProbe",
    "stdin",
    "stdinOnce",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "tty",
    "volumeDevices",
    "volumeMounts",
    "workingDir",
];

const SECURITY_CONTEXT_FIELDS: &[&str] = &[
    "allowPrivilegeEscalation",
    "appArmorProfile",
    "capabilities",
    "privileged",
    "procMount",
    "readOnlyRootFilesystem",
    "runAsGroup",
    "runAsNonRoot",
    "runAsUser",
    "seLinuxOptions",
    "seccompProfile",
    "windowsOptions",
];

const POD_SECURITY_CONTEXT_FIELDS: &[&str] = &[
    "appArmorProfile",
    "fsGroup",
    "fsGroupChangePolicy",
    "runAsGroup",
    "runAsNonRoot",
    "runAsUser",
    "seLinuxChangePolicy",
    "seLinuxOptions",
    "seccompProfile",
    "supplementalGroups",
    "supplementalGroupsPolicy",
    "sysctls",
    "windowsOptions",
];

/// The field names of a pod spec, its security context, and each container and its security
/// context (by path), as the unknown-field check reads them.
struct SpecFields {
    spec: Vec<String>,
    security_context: Vec<String>,
    containers: Vec<(String, Vec<String>, Vec<String>)>,
}

fn spec_fields(spec: &PodSpec) -> SpecFields {
    use super::fields::names;
    let groups = [
        ("containers", &spec.containers[..]),
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or(&[]),
        ),
    ];
    SpecFields {
        spec: names(spec),
        security_context: spec
            .security_context
            .as_ref()
            .map(names)
            .unwrap_or_default(),
        containers: groups
            .iter()
            .flat_map(|(kind, cs)| {
                cs.iter().enumerate().map(move |(i, c)| {
                    (
                        format!("spec.{kind}[{i}]"),
                        names(c),
                        c.security_context.as_ref().map(names).unwrap_or_default(),
                    )
                })
            })
            .collect(),
    }
}

/// Fields of `spec` (the pod spec, its containers and security contexts) that vkube does not
/// know: refused, since nobody has decided what they would make the host do.
pub fn unknown_fields(spec: &PodSpec) -> Vec<Violation> {
    unknown_in(&spec_fields(spec))
}

/// Spec fields the tenant's API server keeps but vkube's types cannot even read (a newer
/// Kubernetes minor, a feature gate turned on inside the tenant): refused like any unknown field.
/// Dropping them instead would start the pod without them, and such a field may be what
/// confines it.
pub fn fields_beyond_types(paths: &[String]) -> Vec<Violation> {
    /// A pod has few such fields; the message stays readable even if an API server sends more.
    const LISTED: usize = 10;
    let mut out: Vec<Violation> = paths
        .iter()
        .take(LISTED)
        .map(|path| Violation {
            field: path.chars().take(200).collect(),
            message: format!(
                "this field is not known to this version of vkube (Kubernetes {} types); remove it",
                TYPES_MINOR
            ),
        })
        .collect();
    if paths.len() > LISTED {
        out.push(Violation {
            field: format!("{} more fields", paths.len() - LISTED),
            message: "not known to this version of vkube either".into(),
        });
    }
    out
}

/// The Kubernetes minor of the types vkube is built with (k8s-openapi's `v1_35` feature).
const TYPES_MINOR: &str = "1.35";

fn unknown_in(f: &SpecFields) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut unknown = |path: &str, names: &[String], known: &[&str]| {
        for k in names.iter().filter(|k| !known.contains(&k.as_str())) {
            out.push(Violation {
                field: format!("{path}.{k}"),
                message: "this field is not known to this version of vkube; remove it".into(),
            });
        }
    };
    unknown("spec", &f.spec, POD_SPEC_FIELDS);
    unknown(
        "spec.securityContext",
        &f.security_context,
        POD_SECURITY_CONTEXT_FIELDS,
    );
    for (path, container, sc) in &f.containers {
        unknown(path, container, CONTAINER_FIELDS);
        unknown(
            &format!("{path}.securityContext"),
            sc,
            SECURITY_CONTEXT_FIELDS,
        );
    }
    out
}

/// Probe and lifecycle handler `host` fields that are set: the kubelet would connect there from
/// the node's network, reaching what the pod itself cannot.
fn handler_hosts(c: &Container) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut http_tcp =
        |prefix: &str, http: Option<&HTTPGetAction>, tcp: Option<&TCPSocketAction>| {
            if let Some(h) = http
                .and_then(|h| h.host.as_deref())
                .filter(|h| !h.is_empty())
            {
                out.push((format!("{prefix}.httpGet.host"), h.to_string()));
            }
            if let Some(h) = tcp
                .and_then(|t| t.host.as_deref())
                .filter(|h| !h.is_empty())
            {
                out.push((format!("{prefix}.tcpSocket.host"), h.to_string()));
            }
        };
    for (name, probe) in [
        ("livenessProbe", &c.liveness_probe),
        ("readinessProbe", &c.readiness_probe),
        ("startupProbe", &c.startup_probe),
    ] {
        if let Some(p) = probe {
            http_tcp(name, p.http_get.as_ref(), p.tcp_socket.as_ref());
        }
    }
    if let Some(l) = &c.lifecycle {
        for (name, handler) in [
            ("lifecycle.postStart", &l.post_start),
            ("lifecycle.preStop", &l.pre_stop),
        ] {
            if let Some(h) = handler {
                http_tcp(name, h.http_get.as_ref(), h.tcp_socket.as_ref());
            }
        }
    }
    out
}

fn allowed_selinux(se: &k8s_openapi::api::core::v1::SELinuxOptions) -> bool {
    SELINUX_TYPES.contains(&se.type_.as_deref().unwrap_or(""))
        && se.user.as_deref().unwrap_or("").is_empty()
        && se.role.as_deref().unwrap_or("").is_empty()
}

fn check_container(
    path: &str,
    sc: Option<&SecurityContext>,
    spec: &PodSpec,
    level: Level,
    deny: &mut impl FnMut(String, &str),
) {
    let user_namespace = spec.host_users == Some(false);
    let windows = spec.os.as_ref().is_some_and(|o| o.name == "windows");
    if let Some(sc) = sc {
        if sc.privileged == Some(true) {
            deny(
                format!("{path}.securityContext.privileged"),
                "privileged containers are not allowed",
            );
        }
        if let Some(caps) = sc.capabilities.as_ref().and_then(|c| c.add.as_ref()) {
            for cap in caps {
                let allowed = match level {
                    Level::Baseline => BASELINE_CAPABILITIES.contains(&cap.as_str()),
                    Level::Restricted => cap == "NET_BIND_SERVICE",
                };
                if !allowed {
                    deny(
                        format!("{path}.securityContext.capabilities.add"),
                        &format!("capability {cap} is not allowed"),
                    );
                }
            }
        }
        if !user_namespace && sc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
            deny(
                format!("{path}.securityContext.procMount"),
                "an unmasked /proc is not allowed (unless the pod sets hostUsers: false)",
            );
        }
        if sc
            .seccomp_profile
            .as_ref()
            .is_some_and(|p| !allowed_profile_type(&p.type_))
        {
            deny(
                format!("{path}.securityContext.seccompProfile.type"),
                "only RuntimeDefault or Localhost seccomp profiles are allowed",
            );
        }
        if sc
            .app_armor_profile
            .as_ref()
            .is_some_and(|p| !allowed_profile_type(&p.type_))
        {
            deny(
                format!("{path}.securityContext.appArmorProfile.type"),
                "only RuntimeDefault or Localhost AppArmor profiles are allowed",
            );
        }
        if let Some(se) = &sc.se_linux_options
            && !allowed_selinux(se)
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
        let psc = spec.security_context.as_ref();
        if !user_namespace {
            let pod_non_root = psc.and_then(|p| p.run_as_non_root);
            let non_root = sc.and_then(|s| s.run_as_non_root).or(pod_non_root);
            if non_root != Some(true) || pod_non_root == Some(false) {
                deny(
                    format!("{path}.securityContext.runAsNonRoot"),
                    "restricted: set runAsNonRoot: true",
                );
            }
            if sc.and_then(|s| s.run_as_user) == Some(0) {
                deny(
                    format!("{path}.securityContext.runAsUser"),
                    "restricted: runAsUser must not be 0",
                );
            }
        }
        if windows {
            return;
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
        let pod_seccomp = psc.and_then(|p| p.seccomp_profile.as_ref()).is_some();
        if !pod_seccomp && sc.and_then(|s| s.seccomp_profile.as_ref()).is_none() {
            deny(
                format!("{path}.securityContext.seccompProfile"),
                "restricted: set seccompProfile.type RuntimeDefault (on the pod or the container)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        AppArmorProfile, Capabilities, ContainerPort, HTTPGetAction, HostPathVolumeSource,
        Lifecycle, LifecycleHandler, NFSVolumeSource, PodSecurityContext, Probe, SeccompProfile,
        TCPSocketAction, Volume,
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

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
        assert!(check(&BTreeMap::new(), &spec, Level::Baseline).is_empty());
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
        let v = check(&BTreeMap::new(), &spec, Level::Baseline);
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
        assert!(check(&BTreeMap::new(), &spec, Level::Baseline).is_empty());
        assert_eq!(check(&BTreeMap::new(), &spec, Level::Restricted).len(), 4);
        let ok = spec_with(Container {
            name: "c".into(),
            security_context: Some(SecurityContext {
                run_as_non_root: Some(true),
                allow_privilege_escalation: Some(false),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                capabilities: Some(Capabilities {
                    add: None,
                    drop: Some(vec!["ALL".into()]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(check(&BTreeMap::new(), &ok, Level::Restricted).is_empty());
    }

    fn apparmor(t: &str) -> Option<AppArmorProfile> {
        Some(AppArmorProfile {
            type_: t.into(),
            localhost_profile: (t == "Localhost").then(|| "k8s-nginx".into()),
        })
    }

    #[test]
    fn apparmor_may_be_tightened_never_turned_off() {
        for (t, allowed) in [
            ("RuntimeDefault", true),
            ("Localhost", true),
            ("Unconfined", false),
        ] {
            for level in [Level::Baseline, Level::Restricted] {
                let mut spec = spec_with(Container {
                    name: "c".into(),
                    security_context: Some(SecurityContext {
                        app_armor_profile: apparmor(t),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                spec.security_context = Some(PodSecurityContext {
                    app_armor_profile: apparmor(t),
                    ..Default::default()
                });
                let v = check(&BTreeMap::new(), &spec, level);
                let apparmor: Vec<_> = fields(&v)
                    .into_iter()
                    .filter(|f| f.contains("appArmor"))
                    .collect();
                let want: Vec<&str> = if allowed {
                    vec![]
                } else {
                    vec![
                        "spec.securityContext.appArmorProfile.type",
                        "spec.containers[0].securityContext.appArmorProfile.type",
                    ]
                };
                assert_eq!(apparmor, want, "{t} at {level:?}");
            }
        }
        let spec = spec_with(Container {
            name: "c".into(),
            ..Default::default()
        });
        let key = format!("{APPARMOR_ANNOTATION_PREFIX}c");
        for (value, allowed) in [
            ("runtime/default", true),
            ("localhost/k8s-nginx", true),
            ("unconfined", false),
        ] {
            let annotations = BTreeMap::from([(key.clone(), value.to_string())]);
            let v = check(&annotations, &spec, Level::Baseline);
            assert_eq!(v.is_empty(), allowed, "{value}: {v:?}");
            if !allowed {
                assert_eq!(v[0].field, format!("metadata.annotations[{key}]"));
            }
        }
        let seccomp = BTreeMap::from([(SECCOMP_POD_ANNOTATION.to_string(), "unconfined".into())]);
        assert_eq!(check(&seccomp, &spec, Level::Baseline).len(), 1);
    }

    #[test]
    fn probes_and_hooks_may_not_aim_the_kubelet_elsewhere() {
        let http = |host: Option<&str>| HTTPGetAction {
            host: host.map(Into::into),
            port: IntOrString::Int(80),
            ..Default::default()
        };
        let tcp = |host: Option<&str>| TCPSocketAction {
            host: host.map(Into::into),
            port: IntOrString::Int(80),
        };
        let spec = spec_with(Container {
            name: "c".into(),
            liveness_probe: Some(Probe {
                http_get: Some(http(Some("169.254.169.254"))),
                ..Default::default()
            }),
            readiness_probe: Some(Probe {
                tcp_socket: Some(tcp(Some("10.96.0.1"))),
                ..Default::default()
            }),
            startup_probe: Some(Probe {
                http_get: Some(http(Some(""))),
                ..Default::default()
            }),
            lifecycle: Some(Lifecycle {
                post_start: Some(LifecycleHandler {
                    http_get: Some(http(Some("kubernetes.default"))),
                    ..Default::default()
                }),
                pre_stop: Some(LifecycleHandler {
                    tcp_socket: Some(tcp(None)),
                    ..Default::default()
                }),
                stop_signal: None,
            }),
            ..Default::default()
        });
        assert_eq!(
            fields(&check(&BTreeMap::new(), &spec, Level::Baseline)),
            [
                "spec.containers[0].livenessProbe.httpGet.host",
                "spec.containers[0].readinessProbe.tcpSocket.host",
                "spec.containers[0].lifecycle.postStart.httpGet.host",
            ]
        );
    }

    #[test]
    fn user_namespaces_relax_proc_mount_and_root_as_upstream_does() {
        let mut spec = spec_with(Container {
            name: "c".into(),
            security_context: Some(SecurityContext {
                proc_mount: Some("Unmasked".into()),
                run_as_user: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            fields(&check(&BTreeMap::new(), &spec, Level::Baseline)),
            ["spec.containers[0].securityContext.procMount"]
        );
        assert!(
            fields(&check(&BTreeMap::new(), &spec, Level::Restricted))
                .contains(&"spec.containers[0].securityContext.runAsUser")
        );
        spec.host_users = Some(false);
        assert!(check(&BTreeMap::new(), &spec, Level::Baseline).is_empty());
        assert!(
            !fields(&check(&BTreeMap::new(), &spec, Level::Restricted))
                .iter()
                .any(|f| f.ends_with("runAsUser") || f.ends_with("procMount"))
        );
    }

    #[test]
    fn restricted_allows_only_core_volume_types() {
        let mut spec = spec_with(Container {
            name: "c".into(),
            ..Default::default()
        });
        spec.volumes = Some(vec![Volume {
            name: "share".into(),
            nfs: Some(NFSVolumeSource {
                server: "10.0.0.1".into(),
                path: "/".into(),
                read_only: None,
            }),
            ..Default::default()
        }]);
        assert!(check(&BTreeMap::new(), &spec, Level::Baseline).is_empty());
        assert!(
            fields(&check(&BTreeMap::new(), &spec, Level::Restricted))
                .contains(&"spec.volumes[0].nfs")
        );
    }

    #[test]
    fn fields_beyond_the_types_are_refused_and_listed_briefly() {
        let v = fields_beyond_types(&["spec.schedulingGroup".into()]);
        assert_eq!(fields(&v), ["spec.schedulingGroup"]);
        assert!(v[0].message.contains("1.35"), "{}", v[0].message);
        assert!(fields_beyond_types(&[]).is_empty());
        let many: Vec<String> = (0..25)
            .map(|i| format!("spec.f{i}{}", "x".repeat(500)))
            .collect();
        let v = fields_beyond_types(&many);
        assert_eq!(v.len(), 11);
        assert!(v.iter().all(|v| v.field.len() <= 200));
        assert_eq!(v[10].field, "15 more fields");
    }

    #[test]
    fn fields_vkube_does_not_know_are_refused() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let future = SpecFields {
            spec: names(&["containers", "hostKernel"]),
            security_context: names(&["runAsUser", "hostUser"]),
            containers: vec![
                (
                    "spec.containers[0]".into(),
                    names(&["name", "hostDevice", "securityContext"]),
                    names(&["privileged", "privilegedKernel"]),
                ),
                ("spec.initContainers[0]".into(), names(&["name"]), vec![]),
            ],
        };
        assert_eq!(
            fields(&unknown_in(&future)),
            [
                "spec.hostKernel",
                "spec.securityContext.hostUser",
                "spec.containers[0].hostDevice",
                "spec.containers[0].securityContext.privilegedKernel",
            ]
        );
        // Everything k8s-openapi knows today is handled, and read by its JSON name.
        let spec = PodSpec {
            containers: vec![Container {
                name: "c".into(),
                security_context: Some(SecurityContext {
                    privileged: Some(false),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            host_users: Some(false),
            ..Default::default()
        };
        let read = spec_fields(&spec);
        assert_eq!(read.spec, ["containers", "hostUsers"]);
        assert_eq!(read.containers[0].2, ["privileged"]);
        assert!(unknown_fields(&spec).is_empty());
    }
}
