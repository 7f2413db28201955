//! CPU seconds per control-plane component during a benchmark phase, from /proc: where the
//! machine's time goes (the virtual API server, the host's, etcd, vkube itself), so a throughput
//! ratio can be explained rather than guessed at.

use std::collections::BTreeMap;

/// The processes a sync benchmark involves, by executable name.
const COMPONENTS: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller",
    "kube-scheduler",
    "kwok",
    "vkube",
];

/// Which processes count: `vkube serve` (by pid) and its children are "virtual", processes
/// whose command line mentions `host_marker` (the host cluster's directory) are "host".
#[derive(Debug, Clone)]
pub struct Scope {
    pub serve_pid: Option<u32>,
    pub host_marker: Option<String>,
}

/// CPU ticks per labelled component at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot(BTreeMap<String, f64>);

struct ProcStat {
    comm: String,
    ppid: u32,
    cpu_seconds: f64,
}

fn read_stat(pid: u32, ticks: f64) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command name: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(ProcStat {
        comm,
        ppid,
        cpu_seconds: (utime + stime) / ticks,
    })
}

/// The label of a process, or `None` when it is not part of the benchmark.
pub fn label(comm: &str, pid: u32, ppid: u32, cmdline: &str, scope: &Scope) -> Option<String> {
    let component = COMPONENTS.iter().find(|c| comm.starts_with(*c))?;
    if scope.serve_pid == Some(pid) {
        return Some("vkube serve".into());
    }
    if pid == std::process::id() {
        return Some("vkube bench client".into());
    }
    if scope.serve_pid == Some(ppid) {
        return Some(format!("virtual {component}"));
    }
    match &scope.host_marker {
        Some(marker) if cmdline.contains(marker.as_str()) => Some(format!("host {component}")),
        _ => None,
    }
}

/// Every process in `scope` with its label, stat and command line.
fn labelled_processes(scope: &Scope) -> Vec<(String, ProcStat, String)> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = read_stat(pid, ticks)?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            let l = label(&stat.comm, pid, stat.ppid, &cmdline, scope)?;
            Some((l, stat, cmdline))
        })
        .collect()
}

/// CPU seconds so far of every process in `scope`, summed per label.
pub fn snapshot(scope: &Scope) -> Snapshot {
    let mut out = BTreeMap::new();
    for (l, stat, _) in labelled_processes(scope) {
        *out.entry(l).or_insert(0.0) += stat.cpu_seconds;
    }
    Snapshot(out)
}

/// Whether the host's etcd and the tenant's etcd (a child of `vkube serve`) sync writes to
/// disk: `Some(false)` when started with `--unsafe-no-fsync`, `None` when not found.
pub fn etcd_fsync(scope: &Scope) -> (Option<bool>, Option<bool>) {
    let (mut host, mut tenant) = (None, None);
    for (l, _, cmdline) in labelled_processes(scope) {
        let fsync = Some(!cmdline.contains("--unsafe-no-fsync"));
        match l.as_str() {
            "host etcd" => host = fsync,
            "virtual etcd" => tenant = fsync,
            _ => {}
        }
    }
    (host, tenant)
}

/// CPU seconds spent per label between two snapshots (rounded to 10 ms), largest first.
pub fn spent(before: &Snapshot, after: &Snapshot) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = after
        .0
        .iter()
        .map(|(k, a)| {
            let b = before.0.get(k).copied().unwrap_or(0.0);
            (k.clone(), ((a - b).max(0.0) * 100.0).round() / 100.0)
        })
        .filter(|(_, s)| *s > 0.0)
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_are_labelled_by_side() {
        let scope = Scope {
            serve_pid: Some(10),
            host_marker: Some("/tmp/bench/host".into()),
        };
        assert_eq!(
            label("vkube", 10, 1, "", &scope).as_deref(),
            Some("vkube serve")
        );
        assert_eq!(
            label("kube-apiserver", 11, 10, "", &scope).as_deref(),
            Some("virtual kube-apiserver")
        );
        assert_eq!(
            label(
                "etcd",
                12,
                1,
                "etcd --data-dir /tmp/bench/host/etcd",
                &scope
            )
            .as_deref(),
            Some("host etcd")
        );
        // Another cluster's etcd on the same machine is not ours.
        assert_eq!(
            label("etcd", 13, 1, "etcd --data-dir /tmp/other", &scope),
            None
        );
        assert_eq!(label("bash", 14, 10, "", &scope), None);
    }

    #[test]
    fn spent_is_the_difference_largest_first() {
        let before = Snapshot(BTreeMap::from([("a".into(), 1.0), ("b".into(), 2.0)]));
        let after = Snapshot(BTreeMap::from([
            ("a".into(), 1.5),
            ("b".into(), 4.0),
            ("c".into(), 0.25),
        ]));
        assert_eq!(
            spent(&before, &after),
            vec![("b".into(), 2.0), ("a".into(), 0.5), ("c".into(), 0.25)]
        );
    }
}
