//! What each API server did per pod during a benchmark phase: write requests by verb, resource
//! and subresource, and pod watch events sent, from the servers' own `/metrics` taken before and
//! after. It shows where a syncer phase costs more than direct creates (status writes per pod,
//! watchers fanning out every change) with figures rather than guesses.

use std::collections::BTreeMap;

use serde::Serialize;

/// Counter values at one moment, keyed by a readable series name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts(pub BTreeMap<String, f64>);

const WRITE_VERBS: &[&str] = &["POST", "PUT", "PATCH", "DELETE", "APPLY"];

/// The value of `key="..."` inside a Prometheus label set.
fn label<'a>(labels: &'a str, key: &str) -> &'a str {
    let needle = format!("{key}=\"");
    labels
        .split(',')
        .find_map(|l| l.trim().strip_prefix(needle.as_str()))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or("")
}

/// Parses the Prometheus text of a kube-apiserver: `apiserver_request_total` for write verbs,
/// summed over codes and scopes as `VERB resource[/subresource]`, and
/// `apiserver_watch_events_total` for pods as `watch events Pod`.
pub fn parse(text: &str) -> Counts {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let Some((name, labels)) = name_labels.split_once('{') else {
            continue;
        };
        let labels = labels.trim_end_matches('}');
        let key = match name {
            "apiserver_request_total" => {
                let verb = label(labels, "verb");
                if !WRITE_VERBS.contains(&verb) {
                    continue;
                }
                let resource = label(labels, "resource");
                match label(labels, "subresource") {
                    "" => format!("{verb} {resource}"),
                    sub => format!("{verb} {resource}/{sub}"),
                }
            }
            // `resource` since 1.32, `kind` before.
            "apiserver_watch_events_total"
                if label(labels, "resource") == "pods" || label(labels, "kind") == "Pod" =>
            {
                "watch events Pod".to_string()
            }
            _ => continue,
        };
        *out.entry(key).or_insert(0.0) += value;
    }
    Counts(out)
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PerPod {
    pub series: String,
    pub per_pod: f64,
}

/// `(after - before) / pods` per series, those of at least 0.01 per pod (clean-up of earlier
/// phases shows as a long tail of near-zero series), largest first.
pub fn per_pod(before: &Counts, after: &Counts, pods: usize) -> Vec<PerPod> {
    let pods = pods.max(1) as f64;
    let mut out: Vec<PerPod> = after
        .0
        .iter()
        .filter_map(|(k, a)| {
            let delta = a - before.0.get(k).copied().unwrap_or(0.0);
            let per_pod = (delta / pods * 100.0).round() / 100.0;
            (per_pod >= 0.01).then(|| PerPod {
                series: k.clone(),
                per_pod,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        b.per_pod
            .total_cmp(&a.per_pod)
            .then(a.series.cmp(&b.series))
    });
    out
}

/// Total writes per pod in a `per_pod` list (watch events excluded).
pub fn writes_per_pod(list: &[PerPod]) -> f64 {
    let sum: f64 = list
        .iter()
        .filter(|p| !p.series.starts_with("watch events"))
        .map(|p| p.per_pod)
        .sum();
    (sum * 100.0).round() / 100.0
}

/// Scrapes `/metrics` of the API server behind `client`; `None` when it is not allowed or
/// unreachable (the report then goes without these figures).
pub async fn scrape(client: &kube::Client) -> Option<Counts> {
    let req = http::Request::get("/metrics").body(Vec::new()).ok()?;
    let text = client.request_text(req).await.ok()?;
    Some(parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="POST",version="v1"} 10
apiserver_request_total{code="409",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="POST",version="v1"} 2
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="binding",verb="POST",version="v1"} 10
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="status",verb="PATCH",version="v1"} 25
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="namespace",subresource="",verb="LIST",version="v1"} 99
apiserver_watch_events_total{group="",resource="pods",version="v1"} 60
apiserver_watch_events_total{group="",kind="Pod",version="v1"} 10
apiserver_watch_events_total{group="",resource="nodes",version="v1"} 7
"#;

    #[test]
    fn sums_writes_by_verb_and_subresource_and_counts_pod_watch_events() {
        let c = parse(SAMPLE);
        assert_eq!(c.0.get("POST pods"), Some(&12.0));
        assert_eq!(c.0.get("POST pods/binding"), Some(&10.0));
        assert_eq!(c.0.get("PATCH pods/status"), Some(&25.0));
        assert_eq!(c.0.get("watch events Pod"), Some(&70.0));
        assert!(!c.0.keys().any(|k| k.starts_with("LIST")), "{c:?}");
        assert!(!c.0.keys().any(|k| k.contains("nodes")), "{c:?}");
    }

    #[test]
    fn per_pod_is_the_difference_divided_by_pods() {
        let before = parse(SAMPLE);
        let after = parse(&SAMPLE.replace("} 25", "} 45").replace("} 60", "} 100"));
        let list = per_pod(&before, &after, 10);
        assert_eq!(
            list,
            vec![
                PerPod {
                    series: "watch events Pod".into(),
                    per_pod: 4.0
                },
                PerPod {
                    series: "PATCH pods/status".into(),
                    per_pod: 2.0
                },
            ]
        );
        assert_eq!(writes_per_pod(&list), 2.0);
        // A series that moved by less than 0.01 per pod is noise from other work.
        let after = parse(&SAMPLE.replace("version=\"v1\"} 2\n", "version=\"v1\"} 3\n"));
        assert_ne!(after, before);
        assert!(per_pod(&before, &after, 1000).is_empty());
    }

    #[test]
    fn garbage_lines_are_skipped() {
        let c = parse("apiserver_request_total{verb=\"POST\" nonsense\n{}} x\n\n");
        assert!(c.0.is_empty());
    }
}
