//! Helpers over objects as JSON (`serde_json::Value`): metadata access, timestamps, uids and
//! generated names. The apiserver handles every resource generically as JSON; typed k8s-openapi
//! structs are only used to decode and validate built-in kinds (see `validation`).

use serde_json::{Map, Value, json};

/// `metadata` of an object, created if missing.
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

/// A string field of `metadata`.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// `metadata.name` (empty if missing).
pub fn name(obj: &Value) -> &str {
    meta_str(obj, "name").unwrap_or("")
}

/// `metadata.namespace`, if set.
pub fn namespace(obj: &Value) -> Option<&str> {
    meta_str(obj, "namespace").filter(|s| !s.is_empty())
}

/// The value at a dotted path (`spec.replicas`), if present.
pub fn get_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .filter(|p| !p.is_empty())
        .try_fold(obj, |v, part| v.get(part))
}

/// Sets the value at a dotted path, creating objects on the way.
pub fn set_path(obj: &mut Value, path: &str, value: Value) {
    let mut cur = obj;
    let parts: Vec<&str> = path.split('.').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let Value::Object(map) = cur else { return };
        if i == parts.len() - 1 {
            map.insert((*part).to_owned(), value);
            return;
        }
        cur = map.entry((*part).to_owned()).or_insert_with(|| json!({}));
    }
}

/// Labels of an object (empty when none).
pub fn labels(obj: &Value) -> Map<String, Value> {
    obj.get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// Now, as an RFC 3339 timestamp with second precision (Kubernetes `Time`).
pub fn now() -> String {
    let now = jiff::Timestamp::now();
    now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Now with microseconds (Kubernetes `MicroTime`, used by Leases and Events).
pub fn now_micro() -> String {
    let now = jiff::Timestamp::now();
    now.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Parses an RFC 3339 timestamp.
pub fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

/// A random UUID (v4) for `metadata.uid`.
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The 5-character random suffix Kubernetes appends to `generateName`.
pub fn name_suffix() -> String {
    // The same alphabet as Kubernetes: no vowels (no words) and no confusable characters.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A human age like kubectl's: `45s`, `3m12s`, `5h`, `12d`.
pub fn human_age(since: &str) -> String {
    let Some(t) = parse_time(since) else {
        return "<unknown>".to_owned();
    };
    let secs = (jiff::Timestamp::now().as_second() - t.as_second()).max(0);
    human_duration(secs)
}

/// Formats a number of seconds the way kubectl's `HumanDuration` does.
pub fn human_duration(secs: i64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        let s = secs % 60;
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        let rm = m % 60;
        if rm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{rm}m")
        }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        let rh = h % 24;
        if rh == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{rh}h")
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let mut v = json!({"spec": {"replicas": 3}});
        assert_eq!(get_path(&v, "spec.replicas"), Some(&json!(3)));
        assert_eq!(get_path(&v, "status.replicas"), None);
        set_path(&mut v, "status.replicas", json!(2));
        assert_eq!(v["status"]["replicas"], 2);
        meta_mut(&mut v).insert("name".into(), json!("x"));
        assert_eq!(name(&v), "x");
    }

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(185), "3m5s");
        assert_eq!(human_duration(1800), "30m");
        assert_eq!(human_duration(4 * 3600 + 60), "4h1m");
        assert_eq!(human_duration(3 * 86400), "3d");
    }

    #[test]
    fn suffixes_are_five_safe_characters() {
        let s = name_suffix();
        assert_eq!(s.len(), 5);
        assert!(
            s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
    }
}
