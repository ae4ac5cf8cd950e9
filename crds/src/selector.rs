//! Kubernetes label selectors (`matchLabels`, `matchExpressions`), as the
//! API server defines them: which BGP peers apply to which nodes.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::ValidationError;

/// Checks operators and values the way the API server does for label selectors.
pub fn validate(field: &str, selector: &LabelSelector) -> Result<(), ValidationError> {
    for (i, expression) in selector.match_expressions.iter().flatten().enumerate() {
        let values = expression.values.as_deref().unwrap_or_default();
        let operator = expression.operator.as_str();
        let ok = match operator {
            "In" | "NotIn" => !values.is_empty(),
            "Exists" | "DoesNotExist" => values.is_empty(),
            _ => {
                return Err(ValidationError::new(
                    format!("{field}.matchExpressions[{i}].operator"),
                    operator,
                    "must be In, NotIn, Exists or DoesNotExist",
                ));
            }
        };
        if !ok {
            return Err(ValidationError::new(
                format!("{field}.matchExpressions[{i}].values"),
                format!("{values:?}"),
                format!("{operator} needs values only with In and NotIn"),
            ));
        }
    }
    Ok(())
}

/// Whether `labels` match `selector` (an empty selector matches everything).
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_match = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_match && expressions_match
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn expression(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn labels_and_expressions_must_all_match() {
        let labels = BTreeMap::from([("rack".to_string(), "r1".to_string())]);
        let by_label = LabelSelector {
            match_labels: Some(labels.clone()),
            ..Default::default()
        };
        assert!(matches(&by_label, &labels));
        assert!(!matches(&by_label, &BTreeMap::new()));
        assert!(matches(&LabelSelector::default(), &BTreeMap::new()));
        let cases = [
            (expression("rack", "In", &["r1", "r2"]), true),
            (expression("rack", "NotIn", &["r1"]), false),
            (expression("zone", "NotIn", &["a"]), true),
            (expression("rack", "Exists", &[]), true),
            (expression("rack", "DoesNotExist", &[]), false),
        ];
        for (e, want) in cases {
            let selector = LabelSelector {
                match_expressions: Some(vec![e.clone()]),
                ..Default::default()
            };
            assert_eq!(matches(&selector, &labels), want, "{e:?}");
        }
    }

    #[test]
    fn refuses_unknown_operators_and_misplaced_values() {
        let bad = |e| LabelSelector {
            match_expressions: Some(vec![e]),
            ..Default::default()
        };
        let error = validate("sel", &bad(expression("rack", "Near", &[]))).unwrap_err();
        assert_eq!(error.field, "sel.matchExpressions[0].operator");
        let error = validate("sel", &bad(expression("rack", "In", &[]))).unwrap_err();
        assert_eq!(error.field, "sel.matchExpressions[0].values");
        assert!(validate("sel", &bad(expression("rack", "Exists", &[]))).is_ok());
    }
}
