//! Tidy checks over the source tree (rust-analyzer style): the dependency rule of DESIGN.md and
//! module docs on every source file.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn node_dns_and_ingress_never_depend_on_control() {
    for krate in ["node", "dns", "ingress"] {
        let manifest = std::fs::read_to_string(root().join(krate).join("Cargo.toml")).unwrap();
        assert!(
            !manifest.contains("rudder-control"),
            "{krate}/Cargo.toml depends on rudder-control; it must use the apiserver through kube-rs"
        );
    }
}

#[test]
fn ebpf_common_has_no_required_dependencies() {
    let manifest = std::fs::read_to_string(root().join("ebpf/common/Cargo.toml")).unwrap();
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .unwrap_or("")
        .split("\n[")
        .next()
        .unwrap_or("");
    for line in deps
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        assert!(
            line.contains("optional = true"),
            "ebpf/common must stay dependency-free (only optional user-side deps): {line}"
        );
    }
}

#[test]
fn every_source_file_starts_with_module_docs() {
    let mut files = Vec::new();
    for dir in [
        "control", "node", "ebpf", "dns", "ingress", "benches", "xtask",
    ] {
        rust_files(&root().join(dir), &mut files);
    }
    assert!(files.len() > 10, "found too few source files: {files:?}");
    let missing: Vec<_> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            !text.trim_start().starts_with("//!")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "files without `//!` module docs: {missing:?}"
    );
}
