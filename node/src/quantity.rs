//! Kubernetes resource quantities (`500m`, `1.5`, `128Mi`, `1G`, `250000000n`), shared by the
//! scheduler and the autoscaler (in rudder-control) and the node's cgroup limits.

/// Parses a Kubernetes quantity into an integer of `scale` (1000 for millicores, 1 for bytes),
/// rounding up; `None` for text that is not a non-negative quantity.
pub fn quantity(text: &str, scale: f64) -> Option<i64> {
    let text = text.trim();
    let suffixes: [(&str, f64); 15] = [
        ("Ki", 1024.0),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let (number, factor) = suffixes
        .iter()
        .find_map(|(s, f)| text.strip_suffix(s).map(|n| (n, *f)))
        .unwrap_or((text, 1.0));
    let value: f64 = number.parse().ok()?;
    let v = (value * factor * scale).ceil();
    (v.is_finite() && v >= 0.0).then_some(v as i64)
}

#[cfg(test)]
mod tests {
    use super::quantity;

    #[test]
    fn quantities_parse() {
        assert_eq!(quantity("500m", 1000.0), Some(500));
        assert_eq!(quantity("1.5", 1000.0), Some(1500));
        assert_eq!(quantity("128Mi", 1.0), Some(128 << 20));
        assert_eq!(quantity("1G", 1.0), Some(1_000_000_000));
        // The metrics API's nanocores.
        assert_eq!(quantity("250000000n", 1000.0), Some(250));
        assert_eq!(quantity("1500u", 1000.0), Some(2));
        assert_eq!(quantity("-1", 1.0), None);
        assert_eq!(quantity("lots", 1.0), None);
    }
}
