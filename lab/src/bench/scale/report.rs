//! The scale benchmark's figures: what was measured, as JSON for machines
//! and one Markdown table for the closing note. A wait that hit the timeout
//! is reported as how far it got, never as a number of seconds.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub nodes: usize,
    pub joins: usize,
    /// A joining fake node's status is written this long after its NodeSubnet appears.
    pub status_delay_seconds: f64,
    pub timeout_seconds: u64,
    pub agent_binary: String,
    pub operator_binary: String,
    pub machine: String,
    /// Fake NodeSubnets seen by the simulated agent's watch, from the first Node create.
    pub subnets: Progress,
    /// Per real agent: peers (N fake + the other real node) routed in its kernel.
    pub programmed: Vec<Named<Progress>>,
    pub join: Option<JoinWrites>,
    /// Per real agent: from the joined node's status write to its route in the kernel.
    pub join_latency: Vec<Named<Latency>>,
    /// Per real agent: from the joined Node's create (operator, simulated agent, agent).
    pub join_latency_from_create: Vec<Named<Latency>>,
    pub agent_rss_kib: Vec<Named<u64>>,
    pub operator_rss_kib: Option<u64>,
    pub apiserver_rss_kib: Option<u64>,
    pub agent_cpu_seconds_per_join: Vec<Named<f64>>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Named<T> {
    pub name: String,
    pub value: T,
}

/// How far a wait got: `seconds` only when it reached `target`.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub reached: usize,
    pub target: usize,
    pub seconds: Option<f64>,
    /// How long it waited (the timeout, when it was not reached).
    pub waited_seconds: f64,
}

impl Progress {
    fn describe(&self, what: &str) -> String {
        match self.seconds {
            Some(s) => format!("{s:.1} s"),
            None => format!(
                "**not reached**: {} of {} {what} after {:.0} s",
                thousands(self.reached),
                thousands(self.target),
                self.waited_seconds
            ),
        }
    }
}

/// The writes one join caused, from kube-apiserver's counters.
#[derive(Debug, Clone, Serialize)]
pub struct JoinWrites {
    /// group tartan.dev, by resource[/subresource].
    pub tartan: Vec<Named<u64>>,
    pub tartan_total: u64,
    /// Other groups (the bench's own Node create, Lease renewals, ...).
    pub other: Vec<Named<u64>>,
    /// Per real agent, from its `tartan_agent_status_writes_total` (None: not exported).
    pub real_agents: Vec<Named<Option<u64>>>,
    /// Seconds from the Node create until the counters had been still for the quiet period.
    pub settle_seconds: f64,
    /// False when the counters never went quiet before the cap.
    pub quiet: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub samples_ms: Vec<f64>,
    pub median_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Joins whose route did not appear before the per-join cap.
    pub missed: usize,
}

impl Latency {
    pub fn of(samples_ms: Vec<f64>, missed: usize) -> Self {
        Self {
            median_ms: median(&samples_ms),
            max_ms: samples_ms.iter().copied().reduce(f64::max),
            samples_ms,
            missed,
        }
    }
}

/// The median (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if !n.is_multiple_of(2) => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// 5000 -> "5,000".
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn list<T>(items: &[Named<T>], show: impl Fn(&T) -> String) -> String {
    if items.is_empty() {
        return "none".into();
    }
    let parts: Vec<String> = items
        .iter()
        .map(|i| format!("{} {}", i.name, show(&i.value)))
        .collect();
    parts.join(", ")
}

impl Report {
    pub fn markdown(&self) -> String {
        let n = thousands(self.nodes);
        let mut rows: Vec<(String, String)> = vec![(
            format!("{n} NodeSubnets exist, from the first Node create"),
            self.subnets.describe("NodeSubnets"),
        )];
        for p in &self.programmed {
            rows.push((
                format!(
                    "{}: all {} peers in the kernel (proto 84 routes), from the first Node create",
                    p.name,
                    thousands(p.value.target)
                ),
                p.value.describe("peers"),
            ));
        }
        if let Some(join) = &self.join {
            rows.extend(join.rows(self.nodes));
        }
        let from_create = format!(
            "Node create (the simulated agent waits {:.1} s to write)",
            self.status_delay_seconds
        );
        for (from, all) in [
            ("status write", &self.join_latency),
            (from_create.as_str(), &self.join_latency_from_create),
        ] {
            for l in all {
                rows.push(latency_row(&l.name, from, &l.value));
            }
        }
        rows.push((
            format!("agent RSS at {n} peers"),
            list(&self.agent_rss_kib, |k| mib(*k)),
        ));
        let or_dash = |v: Option<u64>| v.map_or("-".into(), mib);
        rows.push((
            format!("operator RSS with {n} Nodes"),
            or_dash(self.operator_rss_kib),
        ));
        rows.push(("kube-apiserver RSS".into(), or_dash(self.apiserver_rss_kib)));
        rows.push((
            format!("agent CPU per join (over {} joins)", self.joins),
            list(&self.agent_cpu_seconds_per_join, |s| {
                format!("{:.2} ms", s * 1e3)
            }),
        ));
        let mut md = format!(
            "## tartan-lab bench --scale {}\n\nagent: `{}`  \noperator: `{}`  \n{}\n\n| figure | value |\n|---|---|\n",
            self.nodes, self.agent_binary, self.operator_binary, self.machine
        );
        for (figure, value) in rows {
            md.push_str(&format!("| {figure} | {value} |\n"));
        }
        for note in &self.notes {
            md.push_str(&format!("\n- {note}"));
        }
        if !self.notes.is_empty() {
            md.push('\n');
        }
        md
    }
}

fn latency_row(agent: &str, from: &str, l: &Latency) -> (String, String) {
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0} ms"));
    let missed = match l.missed {
        0 => String::new(),
        m => format!(", **{m} not programmed in time**"),
    };
    (
        format!(
            "{agent}: joined peer's route in the kernel, from its {from} (median / max of {})",
            l.samples_ms.len() + l.missed
        ),
        format!("{} / {}{missed}", ms(l.median_ms), ms(l.max_ms)),
    )
}

impl JoinWrites {
    fn rows(&self, nodes: usize) -> Vec<(String, String)> {
        let settled = if self.quiet {
            format!(
                "the last within {:.1} s of the Node create",
                self.settle_seconds
            )
        } else {
            format!("**still writing after {:.0} s**", self.settle_seconds)
        };
        let agents_total: Option<u64> = self.real_agents.iter().map(|a| a.value).sum();
        // Every node runs an agent: what these two do, all N + 2 would.
        let full_scale = agents_total.map_or("n/a".into(), |t| {
            let per_agent = t as f64 / self.real_agents.len().max(1) as f64;
            thousands((per_agent * (nodes + 2) as f64).round() as usize)
        });
        vec![
            (
                "API writes (group tartan.dev) cluster-wide for one more node joining".into(),
                format!(
                    "**{}**: {} ({settled})",
                    self.tartan_total,
                    list(&self.tartan, u64::to_string)
                ),
            ),
            (
                "other API writes meanwhile (the join's Node create, leases)".into(),
                list(&self.other, u64::to_string),
            ),
            (
                "writes by real agents per join (each node's agent at full scale does the same)"
                    .into(),
                format!(
                    "{} (total {}; with an agent on each of the {} nodes: ≈ {full_scale})",
                    list(&self.real_agents, |v| v
                        .map_or("n/a".into(), |v| v.to_string())),
                    agents_total.map_or("n/a".into(), |t| t.to_string()),
                    thousands(nodes + 2),
                ),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_none() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let l = Latency::of(vec![10.0, 30.0, 20.0], 1);
        assert_eq!(
            (l.median_ms, l.max_ms, l.missed),
            (Some(20.0), Some(30.0), 1)
        );
        assert_eq!(Latency::of(vec![], 2).max_ms, None);
    }

    fn named<T>(name: &str, value: T) -> Named<T> {
        Named {
            name: name.into(),
            value,
        }
    }

    #[test]
    fn agent_writes_are_scaled_to_an_agent_on_every_node() {
        let join = JoinWrites {
            tartan: vec![named("tartan.dev/nodesubnets", 1)],
            tartan_total: 1,
            other: vec![],
            real_agents: vec![named("n1", Some(2)), named("n2", Some(1))],
            settle_seconds: 0.5,
            quiet: true,
        };
        let rows = join.rows(998);
        assert!(rows[2].1.contains("total 3;"), "{rows:?}");
        assert!(rows[2].1.contains("1,000 nodes: ≈ 1,500"), "{rows:?}");
        let unknown = JoinWrites {
            real_agents: vec![named("n1", None), named("n2", Some(1))],
            ..join
        };
        assert!(unknown.rows(998)[2].1.contains("≈ n/a"));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(5_000), "5,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn a_wait_that_timed_out_says_how_far_it_got() {
        let p = Progress {
            reached: 4_210,
            target: 5_001,
            seconds: None,
            waited_seconds: 600.0,
        };
        assert_eq!(
            p.describe("peers"),
            "**not reached**: 4,210 of 5,001 peers after 600 s"
        );
        let done = Progress {
            seconds: Some(12.34),
            ..p
        };
        assert_eq!(done.describe("peers"), "12.3 s");
    }
}
