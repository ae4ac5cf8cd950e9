//! The Prometheus text exposition, read just well enough to count: samples
//! of one metric with their labels, kube-apiserver's write requests summed by
//! resource and subresource, and the difference of two snapshots.
//!
//! The API server's own `apiserver_request_total` is the referee of "API
//! writes per join": it counts every write whoever sent it, including ones a
//! component would not admit to in its own metrics.

use std::collections::BTreeMap;

/// One sample: its labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of `metric` in `text` (no `_bucket`/`_sum` suffix matching:
/// the name must be exact).
pub fn samples(text: &str, metric: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| parse_line(l.trim()))
        .filter(|(name, _)| name == metric)
        .map(|(_, sample)| sample)
        .collect()
}

/// `name{a="b",c="d"} 1.5 [timestamp]` or `name 1.5`.
fn parse_line(line: &str) -> Option<(String, Sample)> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, Sample { labels, value }))
}

/// Labels up to the closing `}`, honouring `\"`, `\\` and `\n` escapes in values.
fn parse_labels(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        let mut chars = s[eq + 1..].strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.insert(key, value);
        s = &s[eq + 1 + 1 + end + 1..];
    }
}

/// Where a write went: API group, resource, subresource ("" for the object itself).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct WriteKey {
    pub group: String,
    pub resource: String,
    pub subresource: String,
}

impl std::fmt::Display for WriteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{group}/{}", self.resource)?;
        if !self.subresource.is_empty() {
            write!(f, "/{}", self.subresource)?;
        }
        Ok(())
    }
}

/// The verbs that change state. `APPLY` is server-side apply (the API
/// server reports it apart from `PATCH`); deletes are left out on purpose:
/// a join deletes nothing.
pub const WRITE_VERBS: [&str; 4] = ["POST", "PUT", "PATCH", "APPLY"];

/// kube-apiserver's write requests, summed over verb, code and version, by
/// group/resource/subresource.
pub type Writes = BTreeMap<WriteKey, u64>;

/// The write counters in a kube-apiserver `/metrics` page.
pub fn apiserver_writes(text: &str) -> Writes {
    let mut writes = Writes::new();
    for sample in samples(text, "apiserver_request_total") {
        let label = |k: &str| sample.labels.get(k).cloned().unwrap_or_default();
        if !WRITE_VERBS.contains(&label("verb").as_str()) {
            continue;
        }
        let key = WriteKey {
            group: label("group"),
            resource: label("resource"),
            subresource: label("subresource"),
        };
        *writes.entry(key).or_default() += sample.value as u64;
    }
    writes
}

/// kube-apiserver's requests answered with `code`, by verb and resource
/// ("APPLY tartan.dev/nodesubnets/status").
pub fn answered_with(text: &str, code: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for sample in samples(text, "apiserver_request_total") {
        let label = |k: &str| sample.labels.get(k).cloned().unwrap_or_default();
        if label("code") != code {
            continue;
        }
        let key = WriteKey {
            group: label("group"),
            resource: label("resource"),
            subresource: label("subresource"),
        };
        *out.entry(format!("{} {key}", label("verb"))).or_default() += sample.value as u64;
    }
    out
}

/// What happened between `before` and `after`: the entries that grew, by
/// how much (counters only grow while the API server runs).
pub fn diff(before: &Writes, after: &Writes) -> Writes {
    after
        .iter()
        .filter_map(|(key, &now)| {
            let then = before.get(key).copied().unwrap_or(0);
            (now > then).then(|| (key.clone(), now - then))
        })
        .collect()
}

/// The writes to one API group.
pub fn in_group(writes: &Writes, group: &str) -> Writes {
    writes
        .iter()
        .filter(|(k, _)| k.group == group)
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

pub fn total(writes: &Writes) -> u64 {
    writes.values().sum()
}

/// The sum of all of `metric`'s samples (None: absent).
pub fn sum(text: &str, metric: &str) -> Option<f64> {
    let all = samples(text, metric);
    (!all.is_empty()).then(|| all.iter().map(|s| s.value).sum())
}

/// The sum of `metric`'s samples whose `label` is `value` (None: absent,
/// say in an agent build that does not export it).
pub fn sum_where(text: &str, metric: &str, label: &str, value: &str) -> Option<f64> {
    let matching: Vec<f64> = samples(text, metric)
        .into_iter()
        .filter(|s| s.labels.get(label).map(String::as_str) == Some(value))
        .map(|s| s.value)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="201",component="apiserver",dry_run="",group="tartan.dev",resource="nodesubnets",scope="resource",subresource="",verb="POST",version="v1alpha1"} 5
apiserver_request_total{code="200",component="apiserver",dry_run="",group="tartan.dev",resource="nodesubnets",scope="resource",subresource="status",verb="APPLY",version="v1alpha1"} 7
apiserver_request_total{code="409",component="apiserver",dry_run="",group="tartan.dev",resource="nodesubnets",scope="resource",subresource="status",verb="APPLY",version="v1alpha1"} 1
apiserver_request_total{code="200",component="apiserver",dry_run="",group="tartan.dev",resource="nodesubnets",scope="cluster",subresource="",verb="WATCH",version="v1alpha1"} 3
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="nodes",scope="resource",subresource="",verb="POST",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 1.2e+01
apiserver_request_duration_seconds_bucket{group="tartan.dev",verb="POST",le="0.1"} 99
"#;

    fn key(group: &str, resource: &str, subresource: &str) -> WriteKey {
        WriteKey {
            group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
        }
    }

    #[test]
    fn writes_are_summed_by_resource_and_reads_left_out() {
        let writes = apiserver_writes(PAGE);
        assert_eq!(writes[&key("tartan.dev", "nodesubnets", "")], 5);
        assert_eq!(writes[&key("tartan.dev", "nodesubnets", "status")], 8);
        assert_eq!(writes[&key("", "nodes", "")], 2);
        assert_eq!(writes[&key("coordination.k8s.io", "leases", "")], 12);
        assert_eq!(writes.len(), 4, "the WATCH is a read: {writes:?}");
        assert_eq!(total(&in_group(&writes, "tartan.dev")), 13);
    }

    #[test]
    fn requests_by_answer() {
        let conflicts = answered_with(PAGE, "409");
        assert_eq!(
            conflicts,
            BTreeMap::from([("APPLY tartan.dev/nodesubnets/status".to_string(), 1)])
        );
        assert!(answered_with(PAGE, "429").is_empty());
    }

    #[test]
    fn diff_keeps_only_what_grew() {
        let before = apiserver_writes(PAGE);
        let mut after = before.clone();
        *after
            .entry(key("tartan.dev", "nodesubnets", "status"))
            .or_default() += 3;
        after.insert(key("tartan.dev", "overlaynetworks", "status"), 1);
        let delta = diff(&before, &after);
        assert_eq!(
            delta,
            Writes::from([
                (key("tartan.dev", "nodesubnets", "status"), 3),
                (key("tartan.dev", "overlaynetworks", "status"), 1),
            ])
        );
        assert_eq!(diff(&before, &before), Writes::new());
    }

    #[test]
    fn labels_with_escapes_and_bare_samples_parse() {
        let text = "m{a=\"x\\\"y\",b=\"1,2}\"} 3\nm 4 1700000000\nother{a=\"x\"} 9\n";
        let all = samples(text, "m");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].labels["a"], "x\"y");
        assert_eq!(all[0].labels["b"], "1,2}");
        assert_eq!(all[0].value, 3.0);
        assert!(all[1].labels.is_empty());
        assert_eq!(all[1].value, 4.0);
    }

    #[test]
    fn agent_counters_by_label() {
        let text = "tartan_agent_status_writes_total{result=\"ok\"} 12\n\
                    tartan_agent_status_writes_total{result=\"error\"} 1\n\
                    tartan_agent_peers{state=\"programmed\"} 1000\n";
        let ok = sum_where(text, "tartan_agent_status_writes_total", "result", "ok");
        assert_eq!(ok, Some(12.0));
        let programmed = sum_where(text, "tartan_agent_peers", "state", "programmed");
        assert_eq!(programmed, Some(1000.0));
        assert_eq!(sum_where(text, "tartan_agent_gone", "result", "ok"), None);
        assert_eq!(sum(text, "tartan_agent_status_writes_total"), Some(13.0));
        assert_eq!(sum(text, "tartan_agent_gone"), None);
    }

    #[test]
    fn display_names_the_core_group() {
        assert_eq!(key("", "nodes", "").to_string(), "core/nodes");
        assert_eq!(
            key("tartan.dev", "nodesubnets", "status").to_string(),
            "tartan.dev/nodesubnets/status"
        );
    }
}
