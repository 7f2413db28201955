//! Runs one child process and keeps it running: restart with exponential backoff on exit, stdout
//! and stderr forwarded line by line to `tracing`, and an orderly stop (SIGTERM, then SIGKILL
//! after a grace period). Children die with us even on SIGKILL (PR_SET_PDEATHSIG), so a crashed
//! `vkube serve` never leaves an orphaned API server holding ports.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const LAST_LINES: usize = 30;

/// What to run.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// Restart policy: the delay doubles from `initial` up to `max`, and resets once the process has
/// stayed up for `stable_after`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub stable_after: Duration,
    pub stop_grace: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            stable_after: Duration::from_secs(60),
            stop_grace: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// Delay before restart number `failures` (1-based) in a row.
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessState {
    Starting,
    Running {
        pid: u32,
        restarts: u32,
    },
    /// Exited on its own; will be restarted unless stopping.
    Exited {
        status: String,
        restarts: u32,
    },
    /// Could not be started at all (e.g. exec failed).
    SpawnFailed {
        error: String,
    },
    Stopped,
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("{name} binary {path} does not exist or is not executable")]
    MissingBinary { name: String, path: PathBuf },
}

/// Handle to a supervised process. Dropping it without `stop` kills the child (kill_on_drop).
pub struct Supervised {
    name: String,
    state: watch::Receiver<ProcessState>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    last_lines: Arc<Mutex<VecDeque<String>>>,
}

pub fn check_executable(name: &str, path: &std::path::Path) -> Result<(), SupervisorError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        _ => Err(SupervisorError::MissingBinary {
            name: name.into(),
            path: path.into(),
        }),
    }
}

impl Supervised {
    pub fn start(spec: ProcessSpec, backoff: Backoff) -> Result<Supervised, SupervisorError> {
        check_executable(&spec.name, &spec.program)?;
        let (state_tx, state) = watch::channel(ProcessState::Starting);
        let (stop, stop_rx) = watch::channel(false);
        let last_lines = Arc::new(Mutex::new(VecDeque::with_capacity(LAST_LINES)));
        let name = spec.name.clone();
        let task = tokio::spawn(run(spec, backoff, state_tx, stop_rx, last_lines.clone()));
        Ok(Supervised {
            name,
            state,
            stop,
            task: Some(task),
            last_lines,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn state(&self) -> watch::Receiver<ProcessState> {
        self.state.clone()
    }

    /// The most recent output lines, for error messages when a start fails.
    pub fn last_lines(&self) -> Vec<String> {
        self.last_lines
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The most telling recent line: the last one that looks like an error, else the last one.
    pub fn last_error_line(&self) -> Option<String> {
        let lines = self.last_lines();
        lines
            .iter()
            .rev()
            .find(|l| {
                let lower = l.to_ascii_lowercase();
                l.starts_with('E') || l.starts_with('F') || lower.contains("error")
            })
            .or(lines.last())
            .cloned()
    }

    /// SIGTERM, wait up to the grace period, then SIGKILL; returns once the child is reaped.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn run(
    spec: ProcessSpec,
    backoff: Backoff,
    state: watch::Sender<ProcessState>,
    mut stop: watch::Receiver<bool>,
    last_lines: Arc<Mutex<VecDeque<String>>>,
) {
    let mut failures = 0u32;
    let mut restarts = 0u32;
    loop {
        if *stop.borrow() {
            break;
        }
        let started = Instant::now();
        let mut child = match spawn(&spec) {
            Ok(child) => child,
            Err(e) => {
                tracing::error!(component = %spec.name, error = %e, "cannot start process");
                let _ = state.send(ProcessState::SpawnFailed {
                    error: e.to_string(),
                });
                failures += 1;
                if sleep_or_stop(backoff.delay(failures), &mut stop).await {
                    break;
                }
                continue;
            }
        };
        let pid = child.id().unwrap_or(0);
        tracing::info!(component = %spec.name, pid, restarts, "process started");
        let _ = state.send(ProcessState::Running { pid, restarts });
        let readers = forward_output(&spec.name, &mut child, &last_lines);

        let exit = tokio::select! {
            status = child.wait() => Some(status),
            _ = stop.changed() => None,
        };
        match exit {
            None => {
                terminate(&spec.name, &mut child, backoff.stop_grace).await;
                for r in readers {
                    let _ = r.await;
                }
                break;
            }
            Some(status) => {
                for r in readers {
                    let _ = r.await;
                }
                let status = describe(status);
                if *stop.borrow() {
                    break;
                }
                tracing::warn!(component = %spec.name, %status, "process exited; restarting");
                let _ = state.send(ProcessState::Exited { status, restarts });
                if started.elapsed() >= backoff.stable_after {
                    failures = 0;
                }
                failures += 1;
                restarts += 1;
                if sleep_or_stop(backoff.delay(failures), &mut stop).await {
                    break;
                }
            }
        }
    }
    let _ = state.send(ProcessState::Stopped);
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("wait failed: {e}"),
    }
}

/// Returns true if stop was requested while sleeping.
async fn sleep_or_stop(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

fn spawn(spec: &ProcessSpec) -> std::io::Result<Child> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Own process group: a Ctrl-C in the terminal reaches only vkube, which then stops the
        // children in order (controller-manager, API server, etcd).
        .process_group(0);
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn()
}

async fn terminate(name: &str, child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(status) => {
                tracing::info!(component = %name, status = %describe(status), "process stopped");
                return;
            }
            Err(_) => tracing::warn!(component = %name, "process ignored SIGTERM; killing it"),
        }
    }
    let _ = child.kill().await;
}

fn forward_output(
    name: &str,
    child: &mut Child,
    last_lines: &Arc<Mutex<VecDeque<String>>>,
) -> Vec<JoinHandle<()>> {
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(forward_lines(
            name.to_string(),
            out,
            last_lines.clone(),
        )));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(forward_lines(
            name.to_string(),
            err,
            last_lines.clone(),
        )));
    }
    readers
}

async fn forward_lines<R: AsyncRead + Unpin>(
    name: String,
    reader: R,
    last_lines: Arc<Mutex<VecDeque<String>>>,
) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match classify(&line) {
            LineLevel::Error => tracing::warn!(target: "vkube::child", component = %name, "{line}"),
            // Startup warnings of kube components are many and benign; keep them for debugging.
            LineLevel::Warning => {
                tracing::debug!(target: "vkube::child", component = %name, "{line}")
            }
            LineLevel::Info => tracing::debug!(target: "vkube::child", component = %name, "{line}"),
        }
        if let Ok(mut buf) = last_lines.lock() {
            if buf.len() == LAST_LINES {
                buf.pop_front();
            }
            buf.push_back(line);
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum LineLevel {
    Error,
    Warning,
    Info,
}

/// Severity of a line from klog (`E1125 12:00:00.000000 ...`) or etcd's JSON logs.
pub fn classify(line: &str) -> LineLevel {
    let klog =
        |c: char| line.starts_with(c) && line.as_bytes().get(1).is_some_and(|b| b.is_ascii_digit());
    if klog('E')
        || klog('F')
        || line.contains("\"level\":\"error\"")
        || line.contains("\"level\":\"fatal\"")
        || line.contains("\"level\":\"panic\"")
    {
        LineLevel::Error
    } else if klog('W') || line.contains("\"level\":\"warn\"") {
        LineLevel::Warning
    } else {
        LineLevel::Info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff::default();
        assert_eq!(b.delay(1), Duration::from_millis(500));
        assert_eq!(b.delay(2), Duration::from_secs(1));
        assert_eq!(b.delay(3), Duration::from_secs(2));
        assert_eq!(b.delay(50), Duration::from_secs(30));
    }

    #[test]
    fn classifies_klog_and_etcd_lines() {
        assert_eq!(
            classify("E1125 16:00:00.1 1 x.go:1] boom"),
            LineLevel::Error
        );
        assert_eq!(
            classify("W1125 16:00:00.1 1 x.go:1] hmm"),
            LineLevel::Warning
        );
        assert_eq!(classify("I1125 16:00:00.1 1 x.go:1] fine"), LineLevel::Info);
        assert_eq!(
            classify("{\"level\":\"warn\",\"msg\":\"slow\"}"),
            LineLevel::Warning
        );
        assert_eq!(classify("Error: unknown flag"), LineLevel::Info);
    }

    #[tokio::test]
    async fn restarts_a_crashing_process_and_stops_cleanly() {
        let spec = ProcessSpec {
            name: "crasher".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "echo E0000 00:00:00 boom; exit 3".into()],
            env: vec![],
        };
        let backoff = Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(20),
            stable_after: Duration::from_secs(60),
            stop_grace: Duration::from_secs(1),
        };
        let p = Supervised::start(spec, backoff).unwrap();
        let mut state = p.state();
        let restarted = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let ProcessState::Running { restarts, .. } = &*state.borrow_and_update()
                    && *restarts >= 2
                {
                    return;
                }
                if state.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(restarted.is_ok(), "process was not restarted");
        assert!(p.last_error_line().unwrap().contains("boom"));
        p.stop().await;
    }

    #[tokio::test]
    async fn stop_sends_sigterm_and_reaps() {
        let spec = ProcessSpec {
            name: "sleeper".into(),
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "trap 'exit 0' TERM; while :; do sleep 0.05; done".into(),
            ],
            env: vec![],
        };
        let p = Supervised::start(spec, Backoff::default()).unwrap();
        let mut state = p.state();
        let pid = loop {
            if let ProcessState::Running { pid, .. } = &*state.borrow_and_update() {
                break *pid;
            }
            state.changed().await.unwrap();
        };
        let started = Instant::now();
        p.stop().await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGTERM was not honoured"
        );
        // Reaped: the pid no longer exists (kill with signal 0 fails).
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
        assert!(!alive, "child {pid} still exists after stop");
    }

    #[test]
    fn missing_binary_is_a_clear_error() {
        let err = check_executable("etcd", std::path::Path::new("/nonexistent/etcd")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/etcd"));
    }
}
