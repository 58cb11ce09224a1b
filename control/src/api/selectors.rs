//! Label and field selectors, parsed from query strings and matched against JSON objects.
//!
//! Label selectors support the full Kubernetes syntax: `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
//! `k notin (a,b)`, `k` and `!k`, joined by commas. Field selectors support `=`, `==` and `!=`
//! on dotted paths (`metadata.name`, `spec.nodeName`, `status.phase`, `involvedObject.uid`...).

use serde_json::Value;

use super::object;

/// One label requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelRequirement {
    /// `k=v` / `k==v`.
    Equals(String, String),
    /// `k!=v` (also matches objects without `k`).
    NotEquals(String, String),
    /// `k in (a,b)`.
    In(String, Vec<String>),
    /// `k notin (a,b)` (also matches objects without `k`).
    NotIn(String, Vec<String>),
    /// `k`.
    Exists(String),
    /// `!k`.
    DoesNotExist(String),
}

/// A parsed label selector; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<LabelRequirement>);

/// One field requirement: path, equals (true) or not-equals (false), value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldRequirement {
    /// Dotted path.
    pub path: String,
    /// `=`/`==` (true) or `!=` (false).
    pub equals: bool,
    /// The value compared with the field's string form.
    pub value: String,
}

/// A parsed field selector; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<FieldRequirement>);

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn valid_label_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 317
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

impl LabelSelector {
    /// Parses the `labelSelector` query parameter.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let bad = || format!("unable to parse requirement: {part:?}");
            let req = if let Some(key) = part.strip_prefix('!') {
                let key = key.trim();
                if !valid_label_key(key) {
                    return Err(bad());
                }
                LabelRequirement::DoesNotExist(key.to_owned())
            } else if let Some((k, v)) = part.split_once("!=") {
                LabelRequirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("==") {
                LabelRequirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once('=') {
                LabelRequirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, rest)) = split_set_op(part, " notin ") {
                LabelRequirement::NotIn(k, parse_set(&rest).ok_or_else(bad)?)
            } else if let Some((k, rest)) = split_set_op(part, " in ") {
                LabelRequirement::In(k, parse_set(&rest).ok_or_else(bad)?)
            } else {
                if !valid_label_key(part) {
                    return Err(bad());
                }
                LabelRequirement::Exists(part.to_owned())
            };
            let key = match &req {
                LabelRequirement::Equals(k, _)
                | LabelRequirement::NotEquals(k, _)
                | LabelRequirement::In(k, _)
                | LabelRequirement::NotIn(k, _)
                | LabelRequirement::Exists(k)
                | LabelRequirement::DoesNotExist(k) => k,
            };
            if !valid_label_key(key) {
                return Err(bad());
            }
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// A selector from a `matchLabels` map (as in a Service's `spec.selector`).
    pub fn from_map(map: &serde_json::Map<String, Value>) -> Self {
        Self(
            map.iter()
                .map(|(k, v)| {
                    LabelRequirement::Equals(k.clone(), v.as_str().unwrap_or_default().to_owned())
                })
                .collect(),
        )
    }

    /// Whether `obj`'s labels satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let labels = object::labels(obj);
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            LabelRequirement::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelRequirement::In(k, set) => get(k).is_some_and(|v| set.iter().any(|s| s == v)),
            LabelRequirement::NotIn(k, set) => get(k).is_none_or(|v| !set.iter().any(|s| s == v)),
            LabelRequirement::Exists(k) => get(k).is_some(),
            LabelRequirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

fn split_set_op(part: &str, op: &str) -> Option<(String, String)> {
    let (k, rest) = part.split_once(op)?;
    Some((k.trim().to_owned(), rest.trim().to_owned()))
}

fn parse_set(s: &str) -> Option<Vec<String>> {
    let inner = s.strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

impl FieldSelector {
    /// Parses the `fieldSelector` query parameter.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (path, equals, value) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                ));
            };
            reqs.push(FieldRequirement {
                path: path.trim().to_owned(),
                equals,
                value: value.trim().to_owned(),
            });
        }
        Ok(Self(reqs))
    }

    /// Whether `obj` satisfies every requirement. A missing field compares as the empty string,
    /// as in Kubernetes (`spec.nodeName=` selects unscheduled pods).
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|req| {
            let actual = match object::get_path(obj, &req.path) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (actual == req.value) == req.equals
        })
    }

    /// The value required for `path` by an equality requirement, if any.
    pub fn equality(&self, path: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|r| r.equals && r.path == path)
            .map(|r| r.value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": labels}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
    }

    #[test]
    fn label_selectors() {
        let p = pod(json!({"app": "web", "tier": "front"}));
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app=db", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("app in (web,db)", true),
            ("app in (db)", false),
            ("app notin (db)", true),
            ("missing notin (db)", true),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("app=web,tier in (front, back)", true),
            ("app=web,tier=back", false),
        ];
        for (sel, expected) in cases {
            let parsed = LabelSelector::parse(sel).unwrap();
            assert_eq!(parsed.matches(&p), expected, "{sel}");
        }
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a b").is_err());
    }

    #[test]
    fn field_selectors() {
        let p = pod(json!({}));
        let cases = [
            ("metadata.name=p", true),
            ("metadata.namespace=other", false),
            ("spec.nodeName=n1", true),
            ("spec.nodeName!=n1", false),
            ("status.phase=Running,metadata.name==p", true),
            ("spec.missing=", true),
        ];
        for (sel, expected) in cases {
            assert_eq!(
                FieldSelector::parse(sel).unwrap().matches(&p),
                expected,
                "{sel}"
            );
        }
        assert!(FieldSelector::parse("nonsense").is_err());
        assert_eq!(
            FieldSelector::parse("metadata.name=p")
                .unwrap()
                .equality("metadata.name"),
            Some("p")
        );
    }
}
