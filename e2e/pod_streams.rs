//! Pod logs, exec, attach and port-forward through vkube's API proxy, served from the host pod.
//! The host cluster's kwok nodes serve them for fake pods (hack/host-cluster.sh configures kwok:
//! logs and attach read DIR/kwok-pods.log, exec runs the command in DIR/kwok-exec, port-forward
//! echoes), so every byte here went kubectl → proxy → host API → kwok and back.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::common::{self, Tenant};

/// Both protocols kubectl speaks: WebSocket (its default since 1.31) and SPDY (older clients;
/// kubectl still falls back to it, and these variables force it).
const PROTOCOLS: [(&str, &[(&str, &str)]); 2] = [
    ("websocket", &[]),
    (
        "spdy",
        &[
            ("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false"),
            ("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false"),
        ],
    ),
];

fn kubectl(kubeconfig: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(common::kubectl_bin());
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn run(kubeconfig: &Path, env: &[(&str, &str)], args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = kubectl(kubeconfig, env, args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        // Dropping the handle closes stdin: the half-close must reach the container.
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    wait_with_timeout(child, Duration::from_secs(60), args)
}

fn wait_with_timeout(mut child: std::process::Child, limit: Duration, what: &[&str]) -> Output {
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "kubectl {what:?} did not finish within {limit:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stdout_ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The log file kwok serves for every fake pod of the host cluster.
fn kwok_log() -> PathBuf {
    let kubeconfig = common::env().host_kubeconfig;
    kubeconfig.parent().unwrap().join("kwok-pods.log")
}

fn append_log_line(text: &str) {
    // RFC 3339 with nanoseconds, as CRI log lines carry.
    let now = time::OffsetDateTime::now_utc();
    let ts = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.nanosecond()
    );
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(kwok_log())
        .unwrap();
    writeln!(f, "{ts} stdout F {text}").unwrap();
}

/// A virtual pod on a kwok node, Running in the virtual cluster.
fn running_pod(t: &Tenant, name: &str) {
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec:
  containers: [{{name: main, image: busybox, ports: [{{containerPort: 8080}}]}}]
"#
    );
    let out = common::kubectl(&t.kubeconfig, &["apply", "-f", "-"], Some(&yaml));
    assert!(out.status.success(), "{out:?}");
    t.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        &format!("pod/{name}"),
        "--timeout=90s",
    ]);
}

/// Waits up to `limit` for a line containing `needle` from `lines`.
fn wait_line(lines: &std::sync::mpsc::Receiver<String>, needle: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_follow_and_attach_come_from_the_host_pod() {
    let t = Tenant::start("logs");
    running_pod(&t, "web");
    let kc = &t.kubeconfig;

    let all = t.kubectl_ok(&["logs", "web"]);
    assert!(all.contains("kwok pod log: first line"), "{all}");
    let tail = t.kubectl_ok(&["logs", "web", "--tail=1"]);
    assert_eq!(tail.lines().count(), 1, "{tail}");
    let stamped = t.kubectl_ok(&["logs", "web", "--timestamps", "--limit-bytes=30"]);
    assert!(stamped.starts_with("2026-01-01T00:00:00"), "{stamped}");
    assert_eq!(stamped.len(), 30, "{stamped:?}");
    let previous = t.kubectl_ok(&["logs", "web", "--previous"]);
    assert!(previous.contains("previous container"), "{previous}");
    // Only lines newer than a second: the file's fixed lines are from the past.
    let recent = t.kubectl_ok(&["logs", "web", "--since=1s"]);
    assert!(!recent.contains("first line"), "{recent}");

    // -f streams lines as the container writes them.
    let mut follow = kubectl(kc, &[], &["logs", "-f", "web", "-c", "main"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = common::line_reader(follow.stdout.take().unwrap());
    assert!(wait_line(&lines, "second line", Duration::from_secs(20)));
    let marker = common::unique("followed");
    let appended = Instant::now();
    append_log_line(&marker);
    assert!(
        wait_line(&lines, &marker, Duration::from_secs(10)),
        "logs -f did not stream a new line"
    );
    eprintln!("logs -f: new line after {:?}", appended.elapsed());
    let _ = follow.kill();
    let _ = follow.wait();

    // attach shows what the container writes from now on.
    let mut attach = kubectl(kc, &[], &["attach", "web"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = common::line_reader(attach.stdout.take().unwrap());
    let marker = common::unique("attached");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        append_log_line(&marker);
        seen = wait_line(&lines, &marker, Duration::from_secs(1));
    }
    let _ = attach.kill();
    let _ = attach.wait();
    assert!(seen, "kubectl attach showed nothing");

    // Errors are the API server's, in the tenant's names.
    let out = t.kubectl(&["logs", "nosuch"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("pods \"nosuch\" not found"), "{err}");
    // A pod the host has not scheduled: as the API server says of a pod without a node.
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: nowhere, namespace: default}
spec:
  nodeSelector: {no-such-label: "true"}
  containers: [{name: main, image: busybox}]
"#;
    let out = common::kubectl(kc, &["apply", "-f", "-"], Some(yaml));
    assert!(out.status.success(), "{out:?}");
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(t.client().await, "default");
    match pods.logs("nowhere", &Default::default()).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 400, "{s:?}");
            assert_eq!(s.message, "pod nowhere does not have a host assigned");
        }
        other => panic!("logs of an unscheduled pod: {other:?}"),
    }
    let out = t.kubectl(&["logs", "web", "-c", "nope"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("nope"), "{err}");
    assert!(!err.contains("-x-default-x-"), "host name leaked: {err}");
    assert!(!err.contains(&t.namespace), "host namespace leaked: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_with_and_without_a_terminal_over_both_protocols() {
    let t = Tenant::start("exec");
    running_pod(&t, "web");
    let kc = &t.kubeconfig;
    for (protocol, env) in PROTOCOLS {
        let out = run(kc, env, &["exec", "web", "--", "echo", "hello"], None);
        assert_eq!(stdout_ok(&out, protocol), "hello\n", "{protocol}");

        // stdin reaches the process. (`head`, not `cat` until EOF: kwok's local exec does not
        // pass stdin's end on to the process; straight against the host API `exec -i cat` hangs
        // the same way.)
        let input = "ping\npong\n";
        let out = run(
            kc,
            env,
            &["exec", "-i", "web", "--", "head", "-n", "2"],
            Some(input),
        );
        assert_eq!(stdout_ok(&out, protocol), input, "{protocol}");

        // A failing command fails kubectl. (kwok reports the exit status as an error message
        // rather than as a code, straight against the host API too; the real node's e2e covers
        // real containers.)
        let out = run(kc, env, &["exec", "web", "--", "sh", "-c", "exit 3"], None);
        assert!(!out.status.success(), "{protocol}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("exit status 3"),
            "{protocol}: {out:?}"
        );

        let (rows, cols) = (33, 101);
        let shown = exec_in_terminal(kc, env, rows, cols);
        assert!(
            shown.contains(&format!("{rows} {cols}")),
            "{protocol}: terminal size not passed through: {shown:?}"
        );
        assert!(shown.contains("tty:yes"), "{protocol}: {shown:?}");
    }
}

/// `kubectl exec -it` in a pseudo-terminal of `rows`×`cols`; returns what the terminal showed.
fn exec_in_terminal(kc: &Path, env: &[(&str, &str)], rows: u16, cols: u16) -> String {
    use nix::pty::{Winsize, openpty};
    use std::os::fd::{AsRawFd, OwnedFd};
    let size = Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None).unwrap();
    let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
    let child = kubectl(
        kc,
        env,
        &[
            "exec",
            "-it",
            "web",
            "--",
            "sh",
            "-c",
            // kwok starts the command before it applies the first terminal size, and drops
            // output still in its pty when the command ends (both seen straight against the
            // host API too): give the size a moment to arrive and the output to drain.
            "sleep 1; stty size; [ -t 0 ] && echo tty:yes; sleep 1",
        ],
    )
    .stdin(slave(&pty.slave))
    .stdout(slave(&pty.slave))
    .stderr(slave(&pty.slave))
    .spawn()
    .unwrap();
    drop(pty.slave);
    let mut master = std::fs::File::from(pty.master);
    let fd = master.as_raw_fd();
    let reader = std::thread::spawn(move || {
        let mut shown = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the child side closes: that is the end of the session.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            shown.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&shown).into_owned()
    });
    let out = wait_with_timeout(child, Duration::from_secs(60), &["exec", "-it"]);
    assert!(out.status.success(), "kubectl exec -it failed (fd {fd})");
    reader.join().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn port_forward_carries_bytes_both_ways_over_both_protocols() {
    let t = Tenant::start("portfwd");
    running_pod(&t, "web");
    for (protocol, env) in PROTOCOLS {
        let mut pf = kubectl(&t.kubeconfig, env, &["port-forward", "pod/web", ":8080"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = common::line_reader(pf.stdout.take().unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .expect("kubectl port-forward did not report its local port");
            let line = lines.recv_timeout(left).unwrap();
            // "Forwarding from 127.0.0.1:PORT -> 8080"
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                break rest.split(' ').next().unwrap().parse::<u16>().unwrap();
            }
        };
        // Two connections in turn, each with 1 MiB echoed back by the pod (kwok: `cat`).
        for round in 0..2u8 {
            let payload: Vec<u8> = (0..1024 * 1024u32)
                .map(|i| (i.wrapping_mul(31) as u8) ^ round)
                .collect();
            let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut writer = conn.try_clone().unwrap();
            let sent = payload.clone();
            let send = std::thread::spawn(move || writer.write_all(&sent).unwrap());
            let mut echoed = vec![0u8; payload.len()];
            conn.read_exact(&mut echoed).unwrap();
            send.join().unwrap();
            assert!(echoed == payload, "{protocol}: echoed bytes differ");
        }
        let _ = pf.kill();
        let _ = pf.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn virtual_rbac_decides_who_may_exec_and_forged_headers_do_not_help() {
    let t = Tenant::start("execrbac");
    running_pod(&t, "web");
    let client = t.client().await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    sas.create(
        &PostParams::default(),
        &ServiceAccount {
            metadata: ObjectMeta {
                name: Some("viewer".into()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Logs and pods yes, exec no.
    t.kubectl_ok(&[
        "create",
        "role",
        "log-reader",
        "--verb=get,list",
        "--resource=pods,pods/log",
    ]);
    t.kubectl_ok(&[
        "create",
        "rolebinding",
        "viewer",
        "--role=log-reader",
        "--serviceaccount=default:viewer",
    ]);
    let token = sas
        .create_token_request("viewer", &PostParams::default(), &TokenRequest::default())
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let viewer_kc = t.dir.join("viewer.kubeconfig");
    let mut kc = kube::config::Kubeconfig::read_from(&t.kubeconfig).unwrap();
    kc.auth_infos[0].auth_info = Some(kube::config::AuthInfo {
        token: Some(token.clone().into()),
        ..Default::default()
    });
    std::fs::write(&viewer_kc, serde_json::to_string(&kc).unwrap()).unwrap();

    let logs = common::eventually(
        "RBAC lets the viewer read logs",
        Duration::from_secs(15),
        || {
            let out = common::kubectl(&viewer_kc, &["logs", "web"], None);
            async move { out.status.success().then_some(out) }
        },
    )
    .await;
    assert!(String::from_utf8_lossy(&logs.stdout).contains("first line"));

    for (protocol, env) in PROTOCOLS {
        let out = run(&viewer_kc, env, &["exec", "web", "--", "echo", "hi"], None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{protocol}: exec allowed");
        assert!(
            err.contains("cannot create resource \"pods/exec\""),
            "{protocol}: {err}"
        );
        let out = run(&viewer_kc, env, &["port-forward", "pod/web", ":8080"], None);
        assert!(!out.status.success(), "{protocol}: port-forward allowed");
    }

    // Impersonation: the admin acting as the viewer gets the viewer's rights; the viewer
    // cannot act as anyone.
    let as_viewer = "--as=system:serviceaccount:default:viewer";
    let out = t.kubectl(&[as_viewer, "logs", "web"]);
    assert!(out.status.success(), "{out:?}");
    let out = t.kubectl(&[as_viewer, "exec", "web", "--", "echo", "hi"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("User \"system:serviceaccount:default:viewer\" cannot create"),
        "{err}"
    );
    let out = t.kubectl(&["exec", "web", "--", "echo", "as-admin"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "as-admin\n",
        "{out:?}"
    );
    let out = common::kubectl(&viewer_kc, &["--as=kubernetes-admin", "logs", "web"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot impersonate"), "{err}");

    // An identity header sent by the caller is ignored: still the viewer, still forbidden.
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    config.headers = vec![
        (
            http::HeaderName::from_static("x-remote-user"),
            http::HeaderValue::from_static("kubernetes-admin"),
        ),
        (
            http::HeaderName::from_static("x-remote-group"),
            http::HeaderValue::from_static("system:masters"),
        ),
    ];
    let forged = kube::Client::try_from(config).unwrap();
    let req =
        http::Request::post("/api/v1/namespaces/default/pods/web/exec?command=id&stdout=true")
            .body(Vec::new())
            .unwrap();
    let err = forged.request_text(req).await.unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert!(
                s.message.contains("system:serviceaccount:default:viewer"),
                "{s:?}"
            );
        }
        other => panic!("expected 403, got {other:?}"),
    }
}
