//! The chart tests' helpers: `helm template` with `--set`s, parsed into
//! documents, and the RBAC rules they hold as comparable triples.
// Each test binary uses only some of these.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_yaml::Value;
use tartan_harness::binaries_dir;

pub fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/tartan")
}

pub fn helm(args: &[&str]) -> Output {
    Command::new(binaries_dir().join("helm"))
        .args(args)
        .output()
        .expect("helm runs")
}

pub fn render(sets: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec![
        "template",
        "t",
        chart.to_str().expect("path"),
        "--namespace",
        "tartan-system",
    ];
    for set in sets {
        args.extend_from_slice(&["--set", set]);
    }
    let out = helm(&args);
    assert!(
        out.status.success(),
        "helm template {sets:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split("\n---")
        .filter_map(|doc| serde_yaml::from_str::<Value>(doc).ok())
        .filter(|v| v.get("kind").is_some())
        .collect()
}

pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

/// (group, resource, verb) triples: order and grouping do not matter.
pub fn triples(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        for group in rule.api_groups.clone().unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

pub fn rendered_rules(doc: &Value) -> Vec<PolicyRule> {
    serde_yaml::from_value(doc["rules"].clone()).expect("rules parse")
}

pub const BACKENDS: &[&[&str]] = &[
    &[],
    &["network.backend.type=vxlan"],
    &["network.backend.type=host-gw"],
    &[
        "network.backend.type=vxlan",
        "network.backend.vxlan.directRouting=true",
    ],
    &["network.backend.type=udp"],
    &["network.backend.type=bgp"],
    &["network.backend.type=wireguard"],
];
