//! The developer's commands against the vkube platform (the VirtualCluster API installed by the
//! chart): create, connect, list, delete, pause, resume, sleep, wake, rotate-credentials. They talk to the host cluster with the
//! developer's own kubeconfig (--kubeconfig, --context, $KUBECONFIG) and write a `vkube-NAME`
//! context into it, as kind and vcluster do.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::{SelfSubjectRulesReview, SelfSubjectRulesReviewSpec};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig, NamedContext};

use vkube::api::{
    CREDENTIALS_NOT_BEFORE_ANNOTATION, OWNER_ANNOTATION, Phase, SLEEP_REQUESTED_ANNOTATION,
    VirtualCluster, VirtualClusterSpec, WAKE_REQUESTED_ANNOTATION,
};
use vkube::host::{KUBECONFIG_KEY, kubeconfig_secret_name};
use vkube::manager::objects;

const INSTALL_HINT: &str = "the vkube platform is not installed in this cluster: ask your admin to \
     run `helm install vkube charts/vkube --namespace vkube-system --create-namespace`";
const PREVIOUS_CONTEXT: &str = "vkube.dev/previous-context";

/// Which host cluster, as kubectl chooses it.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Kubeconfig of the host cluster (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// Context in that kubeconfig (default: its current context).
    #[arg(long, global = true)]
    context: Option<String>,
    /// Default namespace inside the virtual cluster for the written context.
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    pub name: String,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Kubernetes version (one the admin allows; default: the admin's default).
    #[arg(long)]
    kubernetes_version: Option<String>,
    /// Spec fields (YAML file with the VirtualCluster spec: sync, resources, expose, ...).
    #[arg(long = "values", short = 'f')]
    values: Option<PathBuf>,
    /// How long to wait for the cluster to be ready (seconds).
    #[arg(long = "wait", default_value_t = 300)]
    wait_seconds: u64,
    /// Keep the current kubeconfig context.
    #[arg(long)]
    no_switch: bool,
}

#[derive(clap::Args, Debug)]
pub struct ConnectArgs {
    pub name: String,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Keep the current kubeconfig context.
    #[arg(long)]
    no_switch: bool,
    /// Run the port-forward (when one is needed) in the background and return.
    #[arg(long)]
    background: bool,
    /// Port-forward even when the endpoint is reachable (e.g. it is reachable only by chance).
    #[arg(long)]
    port_forward: bool,
    /// Local port of the port-forward (default: any free one).
    #[arg(long)]
    local_port: Option<u16>,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[arg(short = 'o', long, value_enum)]
    output: Option<Output>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum Output {
    Json,
    Yaml,
}

#[derive(clap::Args, Debug)]
pub struct NameArgs {
    pub name: String,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// How long to wait for the change to take effect (seconds).
    #[arg(long = "wait", default_value_t = 300)]
    wait_seconds: u64,
}

#[derive(clap::Args, Debug)]
pub struct RotateArgs {
    pub name: String,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// How long to wait for the new kubeconfig (seconds).
    #[arg(long = "wait", default_value_t = 300)]
    wait_seconds: u64,
}

#[derive(clap::Args, Debug)]
pub struct KubeconfigArgs {
    pub name: String,
    /// Kubeconfig of the host cluster (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, visible_alias = "host-kubeconfig", env = "VKUBE_HOST_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Context in that kubeconfig.
    #[arg(long)]
    context: Option<String>,
    /// Host namespace of a cluster started with `vkube serve` (default: from the VirtualCluster,
    /// else vkube-NAME).
    #[arg(long, env = "VKUBE_HOST_NAMESPACE")]
    host_namespace: Option<String>,
    /// Replace the server URL (e.g. when reaching the cluster through a port-forward).
    #[arg(long)]
    server: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct PortForwardArgs {
    pub name: String,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[arg(long)]
    local_port: u16,
}

struct Host {
    client: kube::Client,
    /// The kubeconfig file contexts are written to.
    file: PathBuf,
}

fn kubeconfig_file(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(v) = std::env::var_os("KUBECONFIG")
        && let Some(first) = std::env::split_paths(&v).find(|p| !p.as_os_str().is_empty())
    {
        return Ok(first);
    }
    let home = std::env::var_os("HOME").context("$HOME is not set: pass --kubeconfig")?;
    Ok(PathBuf::from(home).join(".kube").join("config"))
}

async fn host(args: &ClusterArgs) -> anyhow::Result<Host> {
    let kc = match &args.kubeconfig {
        Some(path) => Kubeconfig::read_from(path)
            .with_context(|| format!("reading kubeconfig {}", path.display()))?,
        None => Kubeconfig::read()
            .context("no kubeconfig for the host cluster: pass --kubeconfig or set $KUBECONFIG")?,
    };
    let context = host_context(&kc, args.context.as_deref());
    let options = KubeConfigOptions {
        context: context.clone(),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kc, &options)
        .await
        .with_context(|| match &context {
            Some(c) => format!("using context {c:?} of the kubeconfig"),
            None => "using the kubeconfig's current context".to_string(),
        })?;
    let client = kube::Client::try_from(config)?;
    Ok(Host {
        client,
        file: kubeconfig_file(args.kubeconfig.as_deref())?,
    })
}

/// The host cluster's context. After `vkube create` the current context is the virtual cluster's
/// (`vkube-NAME`), but vkube commands manage clusters on the host: a vkube context remembers the
/// one it was created from, and that is followed (as vcluster's CLI does with its contexts).
fn host_context(kc: &Kubeconfig, explicit: Option<&str>) -> Option<String> {
    let mut context = explicit
        .map(str::to_string)
        .or_else(|| kc.current_context.clone())?;
    // Bounded: a hand-edited file could make a cycle.
    for _ in 0..8 {
        match previous_context(kc, &context) {
            Some(previous) if kc.contexts.iter().any(|c| c.name == previous) => context = previous,
            _ => break,
        }
    }
    Some(context)
}

/// Turns an API error into one that names the fix.
fn explain(e: kube::Error, name: &str, verb: &str) -> anyhow::Error {
    match &e {
        // A missing resource type (no CRD) answers 404 without an object name.
        kube::Error::Api(s)
            if s.code == 404
                && (s.message.contains("page not found")
                    || s.message.contains("could not find the requested resource")) =>
        {
            anyhow!(INSTALL_HINT)
        }
        kube::Error::Api(s) if s.code == 404 => {
            anyhow!("virtual cluster {name:?} does not exist (or is not yours): see `vkube list`")
        }
        // Developers hold rights on their own clusters only, by name: a 403 does not say whether
        // someone else's cluster exists, and neither do we.
        kube::Error::Api(s) if s.code == 403 => anyhow!(
            "virtual cluster {name:?} does not exist or is not yours: only its owner and admins may {verb} it"
        ),
        kube::Error::Api(s) if s.code == 422 || s.reason == "Invalid" => {
            anyhow!("{}", s.message)
        }
        _ => anyhow::Error::new(e).context(format!("cannot {verb} virtual cluster {name:?}")),
    }
}

async fn whoami(client: &kube::Client) -> anyhow::Result<String> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .context("asking the host cluster who you are (SelfSubjectReview)")?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .filter(|u| !u.is_empty())
        .context("the host cluster does not say who you are (SelfSubjectReview has no username)")
}

fn spec_from_values(path: Option<&Path>) -> anyhow::Result<VirtualClusterSpec> {
    let Some(path) = path else {
        return Ok(VirtualClusterSpec::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| {
        format!(
            "{} is not a VirtualCluster spec (fields: kubernetesVersion, sync, resources, expose, sleepAfter, paused)",
            path.display()
        )
    })
}

pub async fn create(args: CreateArgs) -> anyhow::Result<()> {
    vkube::names::validate_tenant_name(&args.name)?;
    let started = Instant::now();
    let host = host(&args.cluster).await?;
    let mut spec = spec_from_values(args.values.as_deref())?;
    if let Some(v) = args.kubernetes_version {
        spec.kubernetes_version = Some(v);
    }
    let user = whoami(&host.client).await?;
    let mut vc = VirtualCluster::new(&args.name, spec);
    vc.metadata.annotations = Some([(OWNER_ANNOTATION.to_string(), user.clone())].into());
    let api: Api<VirtualCluster> = Api::all(host.client.clone());
    match api.create(&PostParams::default(), &vc).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => bail!(
            "a virtual cluster named {:?} already exists: pick another name, or `vkube connect {}` if it is yours",
            args.name,
            args.name
        ),
        Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("denied request") => {
            bail!("{}", s.message)
        }
        Err(kube::Error::Api(s)) if s.code == 403 => bail!(
            "you ({user}) may not create virtual clusters: ask your admin to bind you to the ClusterRole vkube-developer"
        ),
        Err(e) => return Err(explain(e, &args.name, "create")),
    }
    eprintln!("Creating virtual cluster {:?} as {user}", args.name);
    let deadline = started + Duration::from_secs(args.wait_seconds);
    let vc = match wait_for(&api, &args.name, deadline, started, |p| {
        matches!(p, Phase::Ready | Phase::Refused)
    })
    .await
    {
        Ok(vc) => vc,
        Err(e) => {
            return Err(e.context(format!(
                "the cluster is still being created: `vkube list` shows its phase; \
                 `vkube delete {}` removes it",
                args.name
            )));
        }
    };
    let status = vc.status.clone().unwrap_or_default();
    if status.phase == Some(Phase::Refused) {
        // Remove what was refused so the name is free again; nothing exists on the host.
        let _ = api.delete(&args.name, &DeleteParams::default()).await;
        bail!(
            "{}",
            status
                .message
                .unwrap_or_else(|| "refused by the admin's policy".into())
        );
    }
    let context = write_context(
        &host,
        &args.name,
        &vc,
        None,
        args.cluster.namespace.as_deref(),
        !args.no_switch,
    )
    .await?;
    eprintln!(
        "Virtual cluster {:?} is ready ({:.1} s).",
        args.name,
        started.elapsed().as_secs_f64()
    );
    print_usage(&context, &args.name, &host.file, !args.no_switch);
    Ok(())
}

fn print_usage(context: &str, name: &str, file: &Path, switched: bool) {
    if switched {
        eprintln!("Switched to context {context:?} in {}.", file.display());
    } else {
        eprintln!("Wrote context {context:?} to {}.", file.display());
    }
    eprintln!("  kubectl --context {context} get namespaces");
    eprintln!("  vkube pause {name}    # stop it, keep its state");
    eprintln!("  vkube delete {name}   # remove it");
}

/// Polls the cluster until `done(phase)`, printing each phase once with the elapsed time.
/// Right after a create the owner's read grant may not exist yet: a 403/404 is retried.
async fn wait_for(
    api: &Api<VirtualCluster>,
    name: &str,
    deadline: Instant,
    started: Instant,
    done: impl Fn(Phase) -> bool,
) -> anyhow::Result<VirtualCluster> {
    let mut last: Option<(Option<Phase>, Option<String>)> = None;
    loop {
        match api.get_opt(name).await {
            Ok(Some(vc)) => {
                let status = vc.status.clone().unwrap_or_default();
                let now = (status.phase, status.message.clone());
                if last.as_ref() != Some(&now) {
                    let phase = status.phase.map(Phase::as_str).unwrap_or("Accepted");
                    let message = status.message.clone().unwrap_or_default();
                    eprintln!(
                        " • {:>5.1}s  {phase:<12} {message}",
                        started.elapsed().as_secs_f64()
                    );
                    last = Some(now);
                }
                if status.phase.is_some_and(&done)
                    && status.observed_generation == vc.metadata.generation
                {
                    return Ok(vc);
                }
            }
            Ok(None) => {}
            Err(kube::Error::Api(s)) if s.code == 403 || s.code == 404 => {}
            Err(e) => return Err(explain(e, name, "read")),
        }
        if Instant::now() > deadline {
            let phase = last
                .and_then(|(p, m)| p.map(|p| format!("{} ({})", p.as_str(), m.unwrap_or_default())))
                .unwrap_or_else(|| "not yet seen by the manager".into());
            bail!("timed out waiting for virtual cluster {name:?}: it is {phase}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn fetch_kubeconfig(client: &kube::Client, vc: &VirtualCluster) -> anyhow::Result<String> {
    let name = vc.metadata.name.clone().unwrap_or_default();
    let status = vc.status.clone().unwrap_or_default();
    let (ns, secret_name, key) = match status.kubeconfig_secret {
        Some(r) => (r.namespace, r.name, r.key),
        None => (
            objects::host_namespace(&name),
            kubeconfig_secret_name(&name),
            KUBECONFIG_KEY.to_string(),
        ),
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = secrets
        .get(&secret_name)
        .await
        .map_err(|e| explain(e, &name, "read the kubeconfig of"))?;
    secret
        .data
        .and_then(|mut d| d.remove(&key))
        .and_then(|b| String::from_utf8(b.0).ok())
        .with_context(|| format!("secret {ns}/{secret_name} has no {key:?} entry"))
}

async fn reachable(server: &str) -> bool {
    let Ok(url) = server.parse::<http::Uri>() else {
        return false;
    };
    let Some(host) = url.host() else { return false };
    let port = url.port_u16().unwrap_or(443);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect((host, port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// Writes the `vkube-NAME` context (cluster, user, context) into the kubeconfig file, replacing
/// an older one, remembering the context that was current so `vkube delete` can go back to it.
async fn write_context(
    host: &Host,
    name: &str,
    vc: &VirtualCluster,
    server: Option<&str>,
    namespace: Option<&str>,
    switch: bool,
) -> anyhow::Result<String> {
    let mut yaml = fetch_kubeconfig(&host.client, vc).await?;
    if let Some(server) = server {
        yaml = vkube::kubeconfig::with_server(&yaml, server)?;
    }
    let tenant = Kubeconfig::from_yaml(&yaml)?;
    let context = vkube::kubeconfig::context_name(name);
    let mut file = if host.file.exists() {
        Kubeconfig::read_from(&host.file)
            .with_context(|| format!("reading {}", host.file.display()))?
    } else {
        Kubeconfig::default()
    };
    let previous = file
        .current_context
        .clone()
        .filter(|c| *c != context)
        .or_else(|| previous_context(&file, &context));
    file.clusters.retain(|c| c.name != context);
    file.auth_infos.retain(|c| c.name != context);
    file.contexts.retain(|c| c.name != context);
    file.clusters.extend(tenant.clusters);
    file.auth_infos.extend(tenant.auth_infos);
    for mut c in tenant.contexts {
        if let Some(ctx) = c.context.as_mut() {
            if let Some(ns) = namespace {
                ctx.namespace = Some(ns.to_string());
            }
            if let Some(prev) = &previous {
                ctx.extensions = Some(vec![kube::config::NamedExtension {
                    name: PREVIOUS_CONTEXT.into(),
                    extension: serde_json::Value::String(prev.clone()),
                }]);
            }
        }
        file.contexts.push(c);
    }
    if switch || file.current_context.is_none() {
        file.current_context = Some(context.clone());
    }
    save(&host.file, &file)?;
    Ok(context)
}

fn previous_context(file: &Kubeconfig, context: &str) -> Option<String> {
    let c: &NamedContext = file.contexts.iter().find(|c| c.name == context)?;
    c.context
        .as_ref()?
        .extensions
        .as_ref()?
        .iter()
        .find(|e| e.name == PREVIOUS_CONTEXT)?
        .extension
        .as_str()
        .map(str::to_string)
}

fn save(path: &Path, file: &Kubeconfig) -> anyhow::Result<()> {
    let text = serde_yaml::to_string(file)?;
    vkube::private_file::write(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Removes the `vkube-NAME` entries; if that context was current, the previous one is restored.
fn remove_context(path: &Path, name: &str) -> anyhow::Result<Option<String>> {
    if !path.exists() {
        return Ok(None);
    }
    let mut file = Kubeconfig::read_from(path)?;
    let context = vkube::kubeconfig::context_name(name);
    let previous = previous_context(&file, &context);
    let was_current = file.current_context.as_deref() == Some(context.as_str());
    file.clusters.retain(|c| c.name != context);
    file.auth_infos.retain(|c| c.name != context);
    file.contexts.retain(|c| c.name != context);
    let restored = if was_current {
        let back = previous.filter(|p| file.contexts.iter().any(|c| &c.name == p));
        file.current_context = back.clone();
        back
    } else {
        None
    };
    save(path, &file)?;
    Ok(restored)
}

/// Prints a cluster's kubeconfig: from the Secret its VirtualCluster names, or for a cluster
/// started with `vkube serve`, from its host namespace.
pub async fn kubeconfig(args: KubeconfigArgs) -> anyhow::Result<()> {
    vkube::names::validate_tenant_name(&args.name)?;
    let host = host(&ClusterArgs {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
        namespace: None,
    })
    .await?;
    let mut vc = VirtualCluster::new(&args.name, Default::default());
    if args.host_namespace.is_none() {
        let api: Api<VirtualCluster> = Api::all(host.client.clone());
        match api.get_opt(&args.name).await {
            Ok(Some(found)) => vc = found,
            // No platform here, or a cluster of `vkube serve`: the conventional names.
            Ok(None) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(explain(e, &args.name, "read")),
        }
    }
    if let Some(ns) = &args.host_namespace {
        vc.status = Some(vkube::api::VirtualClusterStatus {
            kubeconfig_secret: Some(vkube::api::SecretRef {
                namespace: ns.clone(),
                name: kubeconfig_secret_name(&args.name),
                key: KUBECONFIG_KEY.into(),
            }),
            ..Default::default()
        });
    }
    let mut yaml = fetch_kubeconfig(&host.client, &vc).await?;
    if let Some(server) = args.server {
        yaml = vkube::kubeconfig::with_server(&yaml, &server)?;
    }
    print!("{yaml}");
    Ok(())
}

/// When the client certificate of a kubeconfig starts to be valid.
fn client_cert_not_before(yaml: &str) -> Option<time::OffsetDateTime> {
    use base64::Engine;
    let kc = Kubeconfig::from_yaml(yaml).ok()?;
    let data = kc
        .auth_infos
        .first()?
        .auth_info
        .as_ref()?
        .client_certificate_data
        .clone()?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .ok()?;
    let pem = String::from_utf8(pem).ok()?;
    vkube::pki::parse_cert(&pem).ok().map(|f| f.not_before)
}

/// The host API server's time (the `Date` of its answer), in Unix seconds.
async fn server_now(client: &kube::Client) -> Option<i64> {
    let req = http::Request::get("/version")
        .body(kube::client::Body::from(Vec::new()))
        .ok()?;
    let resp = client.send(req).await.ok()?;
    let date = resp.headers().get(http::header::DATE)?.to_str().ok()?;
    k8s_openapi::jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(date)
        .ok()
        .map(|t| t.as_second())
}

/// Revokes every client certificate of the cluster issued before now: the annotation
/// vkube.dev/credentials-not-before, which the manager hands to the control plane; it restarts,
/// refuses older certificates and publishes a new admin kubeconfig, which is written to this
/// machine's `vkube-NAME` context (if there is one).
pub async fn rotate_credentials(args: RotateArgs) -> anyhow::Result<()> {
    vkube::names::validate_tenant_name(&args.name)?;
    let started = Instant::now();
    let host = host(&args.cluster).await?;
    let api: Api<VirtualCluster> = Api::all(host.client.clone());
    // The host's clock, not this machine's: the epoch must not be in the future for the
    // manager and the control plane (they refuse one that is).
    let now = match server_now(&host.client).await {
        Some(t) => t,
        None => k8s_openapi::jiff::Timestamp::now().as_second(),
    };
    let epoch = k8s_openapi::jiff::Timestamp::from_second(now)?;
    api.patch(
        &args.name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({
            "metadata": {"annotations": {CREDENTIALS_NOT_BEFORE_ANNOTATION: epoch.to_string()}}
        })),
    )
    .await
    .map_err(|e| explain(e, &args.name, "rotate the credentials of"))?;
    eprintln!(
        "Revoking every certificate of virtual cluster {:?} issued before {epoch}; waiting for the new kubeconfig",
        args.name
    );
    let deadline = started + Duration::from_secs(args.wait_seconds);
    // Keep the server of an existing context (it may be a port-forward of `vkube connect`).
    let context = vkube::kubeconfig::context_name(&args.name);
    let existing = host
        .file
        .exists()
        .then(|| Kubeconfig::read_from(&host.file).ok())
        .flatten()
        .and_then(|kc| {
            kc.clusters
                .into_iter()
                .find(|c| c.name == context)
                .and_then(|c| c.cluster?.server)
        });
    let vc = loop {
        let vc = api
            .get(&args.name)
            .await
            .map_err(|e| explain(e, &args.name, "read"))?;
        let status = vc.status.clone().unwrap_or_default();
        if status.phase == Some(Phase::Refused) {
            bail!("{}", status.message.unwrap_or_default());
        }
        let fresh = match fetch_kubeconfig(&host.client, &vc).await {
            Ok(yaml)
                if client_cert_not_before(&yaml).is_some_and(|t| t.unix_timestamp() >= now) =>
            {
                Some(yaml)
            }
            _ => None,
        };
        // The phase may still be the Ready of the control plane before its restart: the new
        // certificate must really be answered where the user's kubeconfig points.
        if let Some(yaml) = fresh
            && status.phase == Some(Phase::Ready)
            && answers_readyz(&yaml, existing.as_deref()).await
        {
            break vc;
        }
        if Instant::now() > deadline {
            bail!(
                "the old certificates are revoked, but virtual cluster {:?} has not published a new kubeconfig within {} s (it is {}): `vkube connect {}` fetches it once it has",
                args.name,
                args.wait_seconds,
                status
                    .phase
                    .map(Phase::as_str)
                    .unwrap_or("not yet seen by the manager"),
                args.name
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if let Some(server) = existing {
        write_context(
            &host,
            &args.name,
            &vc,
            Some(&server),
            args.cluster.namespace.as_deref(),
            false,
        )
        .await?;
        eprintln!(
            "Credentials rotated ({:.1} s): context {context:?} in {} has the new certificate; everyone else needs `vkube connect {}`.",
            started.elapsed().as_secs_f64(),
            host.file.display(),
            args.name
        );
    } else {
        eprintln!(
            "Credentials rotated ({:.1} s): get the new kubeconfig with `vkube connect {}`.",
            started.elapsed().as_secs_f64(),
            args.name
        );
    }
    Ok(())
}

/// Whether the tenant API answers `/readyz` to `yaml`'s credentials, at `server` if given (the
/// user's context may reach it through a port-forward) or at the kubeconfig's own.
async fn answers_readyz(yaml: &str, server: Option<&str>) -> bool {
    let Ok(mut kc) = Kubeconfig::from_yaml(yaml) else {
        return false;
    };
    if let Some(server) = server {
        for c in kc.clusters.iter_mut().filter_map(|c| c.cluster.as_mut()) {
            c.server = Some(server.to_string());
        }
    }
    let Ok(config) =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await
    else {
        return false;
    };
    let Ok(client) = kube::Client::try_from(config) else {
        return false;
    };
    let Ok(req) = http::Request::get("/readyz").body(Vec::new()) else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), client.request_text(req)).await,
        Ok(Ok(body)) if body.trim() == "ok"
    )
}

pub async fn connect(args: ConnectArgs) -> anyhow::Result<()> {
    vkube::names::validate_tenant_name(&args.name)?;
    let host = host(&args.cluster).await?;
    let api: Api<VirtualCluster> = Api::all(host.client.clone());
    let vc = api
        .get(&args.name)
        .await
        .map_err(|e| explain(e, &args.name, "connect to"))?;
    let status = vc.status.clone().unwrap_or_default();
    match status.phase {
        // A sleeping cluster wakes on its first request (or, through a port-forward, when
        // the forward finds no control plane).
        Some(Phase::Ready | Phase::Sleeping) => {}
        Some(Phase::Paused) => bail!(
            "virtual cluster {:?} is paused: `vkube resume {}` first",
            args.name,
            args.name
        ),
        other => bail!(
            "virtual cluster {:?} is not ready ({}): wait, or see `vkube list`",
            args.name,
            other
                .map(Phase::as_str)
                .unwrap_or("not yet seen by the manager")
        ),
    }
    let endpoint = status.endpoint.clone().unwrap_or_default();
    if !args.port_forward && reachable(&endpoint).await {
        let context = write_context(
            &host,
            &args.name,
            &vc,
            None,
            args.cluster.namespace.as_deref(),
            !args.no_switch,
        )
        .await?;
        print_usage(&context, &args.name, &host.file, !args.no_switch);
        return Ok(());
    }
    let port = match args.local_port {
        Some(p) => p,
        None => std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port(),
    };
    let server = format!("https://127.0.0.1:{port}");
    if args.background {
        let pid = spawn_background_forward(&args, port).await?;
        let context = write_context(
            &host,
            &args.name,
            &vc,
            Some(&server),
            args.cluster.namespace.as_deref(),
            !args.no_switch,
        )
        .await?;
        eprintln!(
            "Port-forwarding 127.0.0.1:{port} to {endpoint} through the host API in the background (pid {pid}; stop it with `kill {pid}`)."
        );
        // The last line of stdout is the pid, for scripts.
        println!("{pid}");
        print_usage(&context, &args.name, &host.file, !args.no_switch);
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("listening on 127.0.0.1:{port}"))?;
    let context = write_context(
        &host,
        &args.name,
        &vc,
        Some(&server),
        args.cluster.namespace.as_deref(),
        !args.no_switch,
    )
    .await?;
    eprintln!("Forwarding 127.0.0.1:{port} to {endpoint} through the host API. Ctrl-C stops it.");
    print_usage(&context, &args.name, &host.file, !args.no_switch);
    forward(host.client, &args.name, listener).await
}

async fn spawn_background_forward(args: &ConnectArgs, port: u16) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("port-forward")
        .arg(&args.name)
        .arg("--local-port")
        .arg(port.to_string());
    if let Some(k) = &args.cluster.kubeconfig {
        cmd.arg("--kubeconfig").arg(k);
    }
    if let Some(c) = &args.cluster.context {
        cmd.arg("--context").arg(c);
    }
    // Its own process group: the forward outlives the terminal's Ctrl-C of this command.
    cmd.process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let child = cmd
        .spawn()
        .context("starting the background port-forward")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(child.id());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the background port-forward did not start listening on 127.0.0.1:{port}")
}

pub async fn port_forward(args: PortForwardArgs) -> anyhow::Result<()> {
    let host = host(&args.cluster).await?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.local_port)).await?;
    forward(host.client, &args.name, listener).await
}

/// Each local connection becomes a port-forward stream to the control plane pod's API port.
/// A port-forward needs the pod: when a sleeping cluster has none, the connection asks it to
/// wake (as a request through its Service would) and goes on once it is ready.
async fn forward(
    client: kube::Client,
    name: &str,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &objects::host_namespace(name));
    let vcs: Api<VirtualCluster> = Api::all(client.clone());
    let pod = objects::control_plane_pod(name);
    loop {
        let (mut conn, _) = listener.accept().await?;
        let pods = pods.clone();
        let pod = pod.clone();
        let (vcs, name) = (vcs.clone(), name.to_string());
        tokio::spawn(async move {
            let port = objects::LISTEN_PORT as u16;
            let mut pf = match pods.portforward(&pod, &[port]).await {
                Ok(pf) => pf,
                Err(first) => {
                    let asleep = matches!(
                        vcs.get_opt(&name).await,
                        Ok(Some(vc)) if vc.status.as_ref().and_then(|s| s.phase) == Some(Phase::Sleeping)
                    );
                    if !asleep {
                        eprintln!("port-forward to {pod}: {first}");
                        return;
                    }
                    eprintln!("virtual cluster {name:?} is asleep: waking it");
                    if let Err(e) = request_wake(&vcs, &name).await {
                        eprintln!("waking {name:?}: {e:#}");
                        return;
                    }
                    let deadline = Instant::now() + Duration::from_secs(120);
                    loop {
                        if let Ok(pf) = pods.portforward(&pod, &[port]).await
                            && matches!(
                                vcs.get_opt(&name).await,
                                Ok(Some(vc)) if vc.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready)
                            )
                        {
                            break pf;
                        }
                        if Instant::now() > deadline {
                            eprintln!("virtual cluster {name:?} did not wake within 120 s");
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            };
            let Some(mut upstream) = pf.take_stream(port) else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
            drop(upstream);
            let _ = pf.join().await;
        });
    }
}

/// The clusters this user may see. Admins can LIST; developers cannot (RBAC cannot filter a
/// LIST by owner), so for them the names come from their own grants (SelfSubjectRulesReview:
/// the manager gives each owner rights on their clusters by name).
async fn visible(client: &kube::Client) -> anyhow::Result<Vec<VirtualCluster>> {
    let api: Api<VirtualCluster> = Api::all(client.clone());
    match api.list(&Default::default()).await {
        Ok(list) => return Ok(list.items),
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        Err(e) => return Err(explain(e, "*", "list")),
    }
    let reviews: Api<SelfSubjectRulesReview> = Api::all(client.clone());
    let review = reviews
        .create(
            &PostParams::default(),
            &SelfSubjectRulesReview {
                spec: SelfSubjectRulesReviewSpec {
                    namespace: Some("default".into()),
                },
                ..Default::default()
            },
        )
        .await
        .context("asking the host cluster what you may see (SelfSubjectRulesReview)")?;
    let mut names: Vec<String> = review
        .status
        .map(|s| s.resource_rules)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| {
            r.api_groups
                .as_ref()
                .is_some_and(|g| g.iter().any(|g| g == vkube::api::GROUP))
                && r.resources
                    .as_ref()
                    .is_some_and(|rs| rs.iter().any(|r| r == "virtualclusters"))
                && r.verbs.iter().any(|v| v == "get" || v == "*")
        })
        .flat_map(|r| r.resource_names.unwrap_or_default())
        .collect();
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        if let Ok(Some(vc)) = api.get_opt(&name).await {
            out.push(vc);
        }
    }
    Ok(out)
}

pub async fn list(args: ListArgs) -> anyhow::Result<()> {
    let host = host(&args.cluster).await?;
    let mut items = visible(&host.client).await?;
    items.sort_by_key(|v| v.metadata.name.clone());
    match args.output {
        Some(Output::Json) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({"items": items}))?
            );
        }
        Some(Output::Yaml) => print!(
            "{}",
            serde_yaml::to_string(&serde_json::json!({"items": items}))?
        ),
        None => print!("{}", table(&items, k8s_openapi::jiff::Timestamp::now())),
    }
    Ok(())
}

/// For a sleeping or paused cluster: why, and how long it has been so (the `Sleeping`
/// condition's reason and transition time).
fn sleeping_since(vc: &VirtualCluster, now: k8s_openapi::jiff::Timestamp) -> (String, String) {
    let Some(c) = vc
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Sleeping"))
        .filter(|c| c.status == "True")
    else {
        return (String::new(), String::new());
    };
    let since = c
        .last_transition_time
        .parse::<k8s_openapi::jiff::Timestamp>()
        .map(|t| human_age(now.as_second() - t.as_second()))
        .unwrap_or_default();
    (c.reason.to_lowercase(), since)
}

fn table(items: &[VirtualCluster], now: k8s_openapi::jiff::Timestamp) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "PHASE".into(),
        "SINCE".into(),
        "VERSION".into(),
        "OWNER".into(),
        "ENDPOINT".into(),
        "AGE".into(),
    ]];
    for vc in items {
        let s = vc.status.clone().unwrap_or_default();
        let age = vc
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| human_age(now.as_second() - t.0.as_second()))
            .unwrap_or_default();
        let phase = s.phase.map(Phase::as_str).unwrap_or("Pending");
        let (why, since) = sleeping_since(vc, now);
        let phase = match s.phase {
            Some(Phase::Sleeping) if !why.is_empty() => format!("{phase} ({why})"),
            _ => phase.to_string(),
        };
        rows.push([
            vc.metadata.name.clone().unwrap_or_default(),
            phase,
            since,
            s.kubernetes_version.unwrap_or_default(),
            s.owner.unwrap_or_default(),
            s.endpoint.unwrap_or_default(),
            age,
        ]);
    }
    if items.is_empty() {
        return "No virtual clusters. Create one with `vkube create NAME`.\n".into();
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// `vkube usage`: the metered `status.usage` of every cluster the caller can see (the same
/// visibility as `vkube list`).
pub async fn usage(args: ListArgs) -> anyhow::Result<()> {
    let host = host(&args.cluster).await?;
    let mut items = visible(&host.client).await?;
    items.sort_by_key(|v| v.metadata.name.clone());
    let rows: Vec<serde_json::Value> = items
        .iter()
        .map(|vc| {
            let s = vc.status.clone().unwrap_or_default();
            serde_json::json!({
                "name": vc.metadata.name,
                "owner": s.owner,
                "usage": s.usage,
            })
        })
        .collect();
    match args.output {
        Some(Output::Json) => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"items": rows}))?
        ),
        Some(Output::Yaml) => print!(
            "{}",
            serde_yaml::to_string(&serde_json::json!({"items": rows}))?
        ),
        None => print!("{}", usage_table(&items)),
    }
    Ok(())
}

fn usage_table(items: &[VirtualCluster]) -> String {
    if items.is_empty() {
        return "No virtual clusters. Create one with `vkube create NAME`.\n".into();
    }
    let header = [
        "NAME",
        "OWNER",
        "PODS",
        "CPU REQ",
        "CPU USED",
        "MEM REQ",
        "MEM USED",
        "STORAGE",
        "POD-HOURS",
        "CPU-HOURS REQ",
        "CPU-HOURS USED",
        "SINCE",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for vc in items {
        let s = vc.status.clone().unwrap_or_default();
        let name = vc.metadata.name.clone().unwrap_or_default();
        let owner = s.owner.clone().unwrap_or_default();
        let row = match s.usage {
            Some(u) => vec![
                name,
                owner,
                u.pods.to_string(),
                u.cpu_requested,
                u.cpu_used.unwrap_or_else(|| "-".into()),
                u.memory_requested,
                u.memory_used.unwrap_or_else(|| "-".into()),
                u.storage_claimed,
                format!("{:.2}", u.pod_seconds as f64 / 3600.0),
                format!("{:.3}", u.cpu_requested_seconds / 3600.0),
                format!("{:.3}", u.cpu_used_seconds / 3600.0),
                u.since,
            ],
            None => {
                let mut r = vec![name, owner];
                r.extend(std::iter::repeat_n("-".to_string(), header.len() - 3));
                r.push("not metered yet".into());
                r
            }
        };
        rows.push(row);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

fn human_age(secs: i64) -> String {
    match secs.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub async fn delete(args: NameArgs) -> anyhow::Result<()> {
    vkube::names::validate_tenant_name(&args.name)?;
    let host = host(&args.cluster).await?;
    let api: Api<VirtualCluster> = Api::all(host.client.clone());
    let started = Instant::now();
    api.delete(&args.name, &DeleteParams::default())
        .await
        .map_err(|e| explain(e, &args.name, "delete"))?;
    eprintln!("Deleting virtual cluster {:?}", args.name);
    let deadline = started + Duration::from_secs(args.wait_seconds);
    loop {
        match api.get_opt(&args.name).await {
            Ok(None) => break,
            // The manager removes the owner's grant last, after the host namespace: once it is
            // gone, so is everything else.
            Err(kube::Error::Api(s)) if s.code == 403 || s.code == 404 => break,
            Ok(Some(_)) | Err(_) => {}
        }
        if Instant::now() > deadline {
            bail!(
                "virtual cluster {:?} is still being deleted after {} s: the manager removes its host namespace first",
                args.name,
                args.wait_seconds
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    match remove_context(&host.file, &args.name)? {
        Some(previous) => eprintln!(
            "Deleted virtual cluster {:?} ({:.1} s); switched back to context {previous:?}.",
            args.name,
            started.elapsed().as_secs_f64()
        ),
        None => eprintln!(
            "Deleted virtual cluster {:?} ({:.1} s).",
            args.name,
            started.elapsed().as_secs_f64()
        ),
    }
    Ok(())
}

pub async fn pause(args: NameArgs, paused: bool) -> anyhow::Result<()> {
    vkube::names::validate_tenant_name(&args.name)?;
    let host = host(&args.cluster).await?;
    let api: Api<VirtualCluster> = Api::all(host.client.clone());
    let started = Instant::now();
    let verb = if paused { "pause" } else { "resume" };
    api.patch(
        &args.name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"paused": paused}})),
    )
    .await
    .map_err(|e| explain(e, &args.name, verb))?;
    let want = if paused { Phase::Paused } else { Phase::Ready };
    let deadline = started + Duration::from_secs(args.wait_seconds);
    let vc = wait_for(&api, &args.name, deadline, started, |p| {
        p == want || p == Phase::Refused
    })
    .await?;
    let status = vc.status.unwrap_or_default();
    if paused && status.message.as_deref() != Some("paused by the owner") {
        // Paused phase is reported while pods are still going; wait for the final state.
        let vc = wait_paused(&api, &args.name, deadline).await?;
        drop(vc);
    }
    eprintln!(
        "Virtual cluster {:?} {} ({:.1} s).",
        args.name,
        if paused { "paused" } else { "resumed" },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes one of the owner's requests (`vkube sleep`, `vkube wake`): the annotation with the
/// current time. The manager acts on a value it has not acted on yet (it records the last one
/// in the status), so clocks need not agree; the time is for people to read.
async fn request(
    api: &Api<VirtualCluster>,
    name: &str,
    annotation: &str,
    verb: &str,
) -> anyhow::Result<()> {
    let at = k8s_openapi::jiff::Timestamp::now();
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({
            "metadata": {"annotations": {annotation: at.to_string()}}
        })),
    )
    .await
    .map_err(|e| explain(e, name, verb))?;
    Ok(())
}

async fn request_wake(api: &Api<VirtualCluster>, name: &str) -> anyhow::Result<()> {
    request(api, name, WAKE_REQUESTED_ANNOTATION, "wake").await
}

/// `vkube sleep NAME`: the cluster sleeps now (its control plane stops, its host pods go, all
/// state kept); the first request to its API, or `vkube wake`, wakes it.
pub async fn sleep(args: NameArgs) -> anyhow::Result<()> {
    vkube::names::validate_tenant_name(&args.name)?;
    let host = host(&args.cluster).await?;
    let api: Api<VirtualCluster> = Api::all(host.client.clone());
    let started = Instant::now();
    let vc = api
        .get(&args.name)
        .await
        .map_err(|e| explain(e, &args.name, "put to sleep"))?;
    if vc.spec.paused {
        bail!(
            "virtual cluster {:?} is paused (a pause is a sleep no request ends): `vkube resume {}` first",
            args.name,
            args.name
        );
    }
    request(&api, &args.name, SLEEP_REQUESTED_ANNOTATION, "put to sleep").await?;
    let deadline = started + Duration::from_secs(args.wait_seconds);
    let mut shown = None;
    loop {
        let vc = api
            .get(&args.name)
            .await
            .map_err(|e| explain(e, &args.name, "read"))?;
        let s = vc.status.clone().unwrap_or_default();
        let message = s.message.clone().unwrap_or_default();
        if shown.as_ref() != Some(&message) {
            eprintln!(
                " • {:>5.1}s  {:<12} {message}",
                started.elapsed().as_secs_f64(),
                s.phase.map(Phase::as_str).unwrap_or("")
            );
            shown = Some(message.clone());
        }
        if s.phase == Some(Phase::Sleeping) && message.starts_with(vkube::manager::ASLEEP) {
            break;
        }
        if s.phase == Some(Phase::Refused) {
            bail!("{message}");
        }
        if Instant::now() > deadline {
            bail!(
                "virtual cluster {:?} is not asleep after {} s: {message}",
                args.name,
                args.wait_seconds
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "Virtual cluster {:?} is asleep ({:.1} s): its first request wakes it.",
        args.name,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `vkube wake NAME`: start a sleeping cluster now and wait until it is ready.
pub async fn wake(args: NameArgs) -> anyhow::Result<()> {
    vkube::names::validate_tenant_name(&args.name)?;
    let host = host(&args.cluster).await?;
    let api: Api<VirtualCluster> = Api::all(host.client.clone());
    let started = Instant::now();
    let vc = api
        .get(&args.name)
        .await
        .map_err(|e| explain(e, &args.name, "wake"))?;
    if vc.spec.paused {
        bail!(
            "virtual cluster {:?} is paused, and no request ends a pause: `vkube resume {}`",
            args.name,
            args.name
        );
    }
    request_wake(&api, &args.name).await?;
    let deadline = started + Duration::from_secs(args.wait_seconds);
    // The manager may not have seen the request yet: Ready from before counts only once the
    // cluster is no longer asleep.
    tokio::time::sleep(Duration::from_millis(250)).await;
    wait_for(&api, &args.name, deadline, started, |p| {
        p == Phase::Ready || p == Phase::Refused
    })
    .await?;
    eprintln!(
        "Virtual cluster {:?} is awake ({:.1} s).",
        args.name,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn wait_paused(
    api: &Api<VirtualCluster>,
    name: &str,
    deadline: Instant,
) -> anyhow::Result<VirtualCluster> {
    loop {
        let vc = api.get(name).await.map_err(|e| explain(e, name, "read"))?;
        let s = vc.status.clone().unwrap_or_default();
        if s.phase == Some(Phase::Paused) && s.message.as_deref() == Some("paused by the owner") {
            return Ok(vc);
        }
        if Instant::now() > deadline {
            bail!(
                "timed out pausing {name:?}: {}",
                s.message.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn errors_name_the_cause_and_the_fix() {
        let text = |e| explain(e, "alice", "delete").to_string();
        assert!(text(api(404, "NotFound", "404 page not found")).contains("helm install vkube"));
        let missing = text(api(404, "NotFound", "virtualclusters \"alice\" not found"));
        assert!(
            missing.contains("does not exist (or is not yours)"),
            "{missing}"
        );
        // Someone else's cluster reads like a missing one: existence is not revealed.
        let forbidden = text(api(403, "Forbidden", "cannot delete"));
        assert!(
            forbidden.contains("does not exist or is not yours"),
            "{forbidden}"
        );
        assert!(forbidden.contains("may delete it"), "{forbidden}");
        let invalid = text(api(
            422,
            "Invalid",
            "Kubernetes version 1.20 is not allowed",
        ));
        assert_eq!(invalid, "Kubernetes version 1.20 is not allowed");
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(600), "10m");
        assert_eq!(human_age(3 * 3600), "3h");
        assert_eq!(human_age(3 * 86_400), "3d");
    }

    #[test]
    fn the_table_shows_phase_owner_and_endpoint() {
        let mut vc = VirtualCluster::new("alice", Default::default());
        vc.status = Some(vkube::api::VirtualClusterStatus {
            phase: Some(Phase::Ready),
            owner: Some("dev-alice".into()),
            endpoint: Some("https://10.96.0.5:443".into()),
            kubernetes_version: Some("1.35".into()),
            ..Default::default()
        });
        let t = table(&[vc], k8s_openapi::jiff::Timestamp::now());
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{t}");
        assert!(
            lines[1].contains("alice") && lines[1].contains("Ready"),
            "{t}"
        );
        assert!(lines[1].contains("dev-alice") && lines[1].contains("https://10.96.0.5:443"));
        assert!(table(&[], k8s_openapi::jiff::Timestamp::now()).contains("vkube create"));
    }

    #[test]
    fn contexts_are_written_and_removed_restoring_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        let base = r#"
apiVersion: v1
kind: Config
clusters: [{name: host, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: host, user: {token: t}}]
contexts: [{name: host, context: {cluster: host, user: host}}]
current-context: host
"#;
        std::fs::write(&path, base).unwrap();
        let mut file = Kubeconfig::read_from(&path).unwrap();
        file.contexts.push(
            serde_json::from_value(serde_json::json!({
                "name": "vkube-alice",
                "context": {"cluster": "vkube-alice", "user": "vkube-alice",
                            "extensions": [{"name": PREVIOUS_CONTEXT, "extension": "host"}]},
            }))
            .unwrap(),
        );
        file.current_context = Some("vkube-alice".into());
        save(&path, &file).unwrap();
        assert_eq!(
            previous_context(&Kubeconfig::read_from(&path).unwrap(), "vkube-alice").as_deref(),
            Some("host")
        );
        let current = Kubeconfig::read_from(&path).unwrap();
        assert_eq!(host_context(&current, None).as_deref(), Some("host"));
        assert_eq!(
            host_context(&current, Some("host")).as_deref(),
            Some("host")
        );
        assert_eq!(
            remove_context(&path, "alice").unwrap().as_deref(),
            Some("host")
        );
        let after = Kubeconfig::read_from(&path).unwrap();
        assert_eq!(after.current_context.as_deref(), Some("host"));
        assert!(after.contexts.iter().all(|c| c.name != "vkube-alice"));
    }
}
