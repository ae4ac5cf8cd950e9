//! The CEL evaluator of the rule tests: every `x-kubernetes-validations`
//! rule of a CRD's schema run with the `cel` crate, plus the IP/CIDR library
//! Kubernetes adds to CEL (`isCIDR`, `cidr()`, `isIP`, `ip()`, `.family()`,
//! `.masked()`, `.prefixLength()`), which the `cel` crate lacks, from
//! `tartan_crds::cidr`, the parsing the operator and agent use. A CIDR or IP
//! value is its canonical text (CEL compares them by value; canonical text
//! compares the same way).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use cel::extractors::This;
use cel::objects::Key;
use cel::{Context, ExecutionError, Program, ResolveResult, Value};
use serde_json::Value as Json;
use tartan_crds::cidr::{canonical, family_of, parse_cidr, parse_ip};

fn k8s_error(function: &str, value: &str) -> ExecutionError {
    ExecutionError::function_error(function, format!("invalid value {value:?}"))
}

/// `ip(s)` and `<cidr>.ip()`: an address, by its canonical text.
fn ip(This(s): This<Arc<String>>) -> ResolveResult {
    if let Some(net) = parse_cidr(&s) {
        return Ok(Value::String(Arc::new(net.addr().to_string())));
    }
    parse_ip(&s)
        .map(|a| Value::String(Arc::new(a.to_string())))
        .ok_or_else(|| k8s_error("ip", &s))
}

fn family(This(s): This<Arc<String>>) -> ResolveResult {
    let family = match parse_ip(&s) {
        Some(std::net::IpAddr::V4(_)) => 4,
        Some(std::net::IpAddr::V6(_)) => 6,
        None => return Err(k8s_error("family", &s)),
    };
    Ok(Value::Int(family))
}

fn cidr(This(s): This<Arc<String>>) -> ResolveResult {
    parse_cidr(&s)
        .map(|n| Value::String(Arc::new(canonical(&n))))
        .ok_or_else(|| k8s_error("cidr", &s))
}

fn masked(This(s): This<Arc<String>>) -> ResolveResult {
    parse_cidr(&s)
        .map(|n| Value::String(Arc::new(canonical(&n.trunc()))))
        .ok_or_else(|| k8s_error("masked", &s))
}

fn prefix_length(This(s): This<Arc<String>>) -> ResolveResult {
    parse_cidr(&s)
        .map(|n| Value::Int(i64::from(n.prefix_len())))
        .ok_or_else(|| k8s_error("prefixLength", &s))
}

pub fn context_with_kubernetes_ip_library() -> Context<'static, 'static> {
    let mut ctx = Context::default();
    let declared = [
        ctx.add_function("isCIDR", |s: Arc<String>| parse_cidr(&s).is_some()),
        ctx.add_function("isIP", |s: Arc<String>| parse_ip(&s).is_some()),
        ctx.add_function("cidr", cidr),
        ctx.add_function("ip", ip),
        ctx.add_function("family", family),
        ctx.add_function("masked", masked),
        ctx.add_function("prefixLength", prefix_length),
    ];
    for result in declared {
        result.expect("no clash with the cel crate's own functions");
    }
    // Unused here but keeps `family_of` honest: it is the function CEL's family() mirrors.
    let _ = family_of;
    ctx
}

/// Kubernetes hands CEL integers as `int`, maps and lists as they are.
pub fn to_cel(json: &Json) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .unwrap_or_else(|| Value::Float(n.as_f64().unwrap_or(f64::NAN))),
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(items) => Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Json::Object(map) => {
            let map: HashMap<Key, Value> = map
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            Value::from(map)
        }
    }
}

/// A rule that refused the object.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub path: String,
    pub message: String,
}

/// Which rules ran, and whether each one passed or refused at least once.
#[derive(Default)]
pub struct Coverage {
    passed: BTreeSet<(String, String)>,
    refused: BTreeSet<(String, String)>,
}

/// Walks `schema` like the API server's CEL validator: each rule runs with
/// `self` bound to the value at its node; transition rules run only on update.
pub fn check(
    schema: &Json,
    value: &Json,
    old: Option<&Json>,
    path: &str,
    coverage: &mut Coverage,
) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Json::as_array)
    {
        for rule in rules {
            let text = rule["rule"].as_str().expect("rule is a string");
            let transition = text.contains("oldSelf");
            if transition && old.is_none() {
                continue;
            }
            let program = Program::compile(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let mut ctx = context_with_kubernetes_ip_library();
            ctx.add_variable_from_value("self", to_cel(value));
            if let Some(old) = old {
                ctx.add_variable_from_value("oldSelf", to_cel(old));
            }
            let key = (path.to_string(), text.to_string());
            match program.execute(&ctx) {
                Ok(Value::Bool(true)) => {
                    coverage.passed.insert(key);
                }
                outcome => {
                    assert!(
                        matches!(outcome, Ok(Value::Bool(false)) | Err(_)),
                        "{text} returned {outcome:?}"
                    );
                    coverage.refused.insert(key);
                    let field = rule.get("fieldPath").and_then(Json::as_str).unwrap_or("");
                    refusals.push(Refusal {
                        path: format!("{path}{field}"),
                        message: rule["message"].as_str().unwrap_or(text).to_string(),
                    });
                }
            }
        }
    }
    if let (Some(props), Some(obj)) = (schema.get("properties"), value.as_object()) {
        for (name, sub) in props.as_object().expect("properties is a map") {
            if let Some(child) = obj.get(name).filter(|v| !v.is_null()) {
                let old_child = old.and_then(|o| o.get(name)).filter(|v| !v.is_null());
                let child_path = format!("{path}.{name}");
                refusals.extend(check(sub, child, old_child, &child_path, coverage));
            }
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
        for (i, item) in list.iter().enumerate() {
            refusals.extend(check(items, item, None, &format!("{path}[{i}]"), coverage));
        }
    }
    refusals
}

pub fn schema_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Json {
    serde_json::to_value(
        &crd.spec.versions[0]
            .schema
            .as_ref()
            .expect("schema")
            .open_api_v3_schema,
    )
    .expect("schema is JSON")
}

/// Every rule (by path and text) in a schema.
pub fn all_rules(schema: &Json, path: &str, out: &mut BTreeSet<(String, String)>) {
    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Json::as_array)
    {
        for rule in rules {
            out.insert((
                path.to_string(),
                rule["rule"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    if let Some(props) = schema.get("properties").and_then(Json::as_object) {
        for (name, sub) in props {
            all_rules(sub, &format!("{path}.{name}"), out);
        }
    }
    if let Some(items) = schema.get("items") {
        all_rules(items, &format!("{path}[0]"), out);
    }
}

/// Runs `cases` (name, new object, old object, expected refusal paths) against
/// `schema`, returning what each rule did.
pub fn run(schema: &Json, cases: Vec<(&str, Json, Option<Json>, Vec<&str>)>) -> Coverage {
    let mut coverage = Coverage::default();
    for (name, new, old, expected) in cases {
        let refusals = check(schema, &new, old.as_ref(), "", &mut coverage);
        let paths: Vec<&str> = refusals.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, expected, "case {name:?}: {refusals:#?}");
    }
    coverage
}

pub fn assert_every_rule_passed_and_refused(schema: &Json, coverage: &Coverage) {
    let mut rules = BTreeSet::new();
    all_rules(schema, "", &mut rules);
    // List items are reported with their index; fold them onto the schema path.
    let fold = |set: &BTreeSet<(String, String)>| -> BTreeSet<(String, String)> {
        set.iter()
            .map(|(p, r)| (regex_free_index_fold(p), r.clone()))
            .collect()
    };
    let (passed, refused) = (fold(&coverage.passed), fold(&coverage.refused));
    for rule in &rules {
        assert!(
            passed.contains(rule),
            "rule never passed a good object: {rule:?}"
        );
        assert!(
            refused.contains(rule),
            "rule never refused a bad object: {rule:?}"
        );
    }
}

pub fn regex_free_index_fold(path: &str) -> String {
    let mut out = String::new();
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push_str("[0");
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}
