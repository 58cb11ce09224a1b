//! Pod volumes: what a container's `volumeMounts` bind into its mount namespace.
//!
//! - `emptyDir`: a directory in the pod's state directory (`<pod>/volumes/<name>`), shared by
//!   the pod's containers and removed with the pod. `medium: Memory` gets the same directory
//!   (no tmpfs; documented difference).
//! - `hostPath`: the node's path, checked against `type` (`Directory`, `File`, `Socket`, … must
//!   exist; `DirectoryOrCreate` and `FileOrCreate` create it; empty: no check).
//! - `configMap` and `secret`: their keys (or the listed `items`, at their `path`) written as
//!   files into `<pod>/volumes/<name>` with `defaultMode` (or each item's `mode`; 0644 by
//!   default). Files are rewritten whenever a container of the pod starts, so a restarted
//!   container sees current data. (The kubelet also refreshes them in running pods about once
//!   a minute; rudder does not yet.) A missing ConfigMap or Secret, or a missing item key, stops
//!   the container with `CreateContainerConfigError` unless the volume is `optional`.
//! - Other volume types are refused with a message naming the volume.
//!
//! Containers run on the node's own file system (DESIGN.md, "Pods without a registry"), so a
//! `mountPath` is a path of the node. The shim binds the volume there inside the container's
//! private mount namespace; a missing directory is created on the node first.
//!
//! `subPath` mounts a path inside the volume (created as a directory if missing); like
//! `items[].path`, it must be relative and must not contain `..`.

use std::{
    collections::BTreeMap,
    fs, io,
    os::unix::fs::PermissionsExt,
    path::{Component, Path, PathBuf},
};

use k8s_openapi::api::core::v1::{HostPathVolumeSource, KeyToPath, VolumeMount};

use super::shim::Mount;

/// Mode of projected files when the volume sets none.
pub const DEFAULT_MODE: u32 = 0o644;

/// A file to write into a configMap or secret volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    /// Path inside the volume (relative, checked).
    pub path: PathBuf,
    /// Content.
    pub content: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// Whether `path` is a safe relative path inside a volume: not empty, not absolute, no `..`.
pub fn relative_ok(path: &str) -> bool {
    let p = Path::new(path);
    !path.is_empty()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// The files a configMap or secret volume holds, from `data` (`None`: the object does not
/// exist). `what` names the source for messages (`configmap "x"`).
pub fn project(
    data: Option<&BTreeMap<String, String>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
    what: &str,
) -> Result<Vec<File>, String> {
    let mode_of = |m: Option<i32>| -> Result<u32, String> {
        match m.or(default_mode) {
            None => Ok(DEFAULT_MODE),
            Some(m) => u32::try_from(m)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| format!("{what}: mode {m} is not between 0 and 0777")),
        }
    };
    let Some(data) = data else {
        return if optional {
            Ok(Vec::new())
        } else {
            Err(format!("{what} not found"))
        };
    };
    let mut files = Vec::new();
    match items {
        None => {
            for (key, value) in data {
                files.push(File {
                    path: PathBuf::from(key),
                    content: value.clone().into_bytes(),
                    mode: mode_of(None)?,
                });
            }
        }
        Some(items) => {
            for item in items {
                let Some(value) = data.get(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(format!("{what} has no key {:?}", item.key));
                };
                if !relative_ok(&item.path) {
                    return Err(format!(
                        "{what}: item path {:?} must be relative and must not contain '..'",
                        item.path
                    ));
                }
                files.push(File {
                    path: PathBuf::from(&item.path),
                    content: value.clone().into_bytes(),
                    mode: mode_of(item.mode)?,
                });
            }
        }
    }
    Ok(files)
}

/// Writes `files` into `dir` (created if needed), replacing what they replace.
pub fn write(dir: &Path, files: &[File]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    for f in files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        // Written beside and renamed, so a reader never sees half a file.
        let tmp = path.with_extension("rudder-tmp");
        fs::write(&tmp, &f.content)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(f.mode))?;
        fs::rename(&tmp, &path)?;
    }
    Ok(())
}

/// Checks (and for the `…OrCreate` types creates) a hostPath volume's path.
pub fn host_path(source: &HostPathVolumeSource) -> Result<PathBuf, String> {
    let path = PathBuf::from(&source.path);
    if !path.is_absolute() {
        return Err(format!("hostPath {:?} must be absolute", source.path));
    }
    let kind = source.type_.as_deref().unwrap_or("");
    let missing = |what: &str| format!("hostPath {:?} is not {what}", source.path);
    match kind {
        "" => {}
        "DirectoryOrCreate" => {
            fs::create_dir_all(&path)
                .map_err(|e| format!("creating hostPath {:?}: {e}", source.path))?;
        }
        "Directory" if !path.is_dir() => return Err(missing("a directory")),
        "FileOrCreate" => {
            if !path.exists() {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)
                        .map_err(|e| format!("creating hostPath {:?}: {e}", source.path))?;
                }
                fs::write(&path, b"")
                    .map_err(|e| format!("creating hostPath {:?}: {e}", source.path))?;
            }
        }
        "File" if !path.is_file() => return Err(missing("a file")),
        "Socket" | "CharDevice" | "BlockDevice" if !path.exists() => {
            return Err(missing(&format!("an existing {kind}")));
        }
        "Directory" | "File" | "Socket" | "CharDevice" | "BlockDevice" => {}
        other => return Err(format!("hostPath type {other:?} is not known")),
    }
    Ok(path)
}

/// The bind mount for `mount` of a volume whose content is at `source`.
pub fn bind(source: &Path, mount: &VolumeMount) -> Result<Mount, String> {
    let sub = mount.sub_path.as_deref().unwrap_or("");
    let source = if sub.is_empty() {
        source.to_owned()
    } else {
        if !relative_ok(sub) {
            return Err(format!(
                "volumeMount {:?}: subPath {sub:?} must be relative and must not contain '..'",
                mount.name
            ));
        }
        let path = source.join(sub);
        if !path.exists() {
            fs::create_dir_all(&path).map_err(|e| format!("creating subPath {sub:?}: {e}"))?;
        }
        path
    };
    if !mount.mount_path.starts_with('/') {
        return Err(format!(
            "volumeMount {:?}: mountPath {:?} must be absolute",
            mount.name, mount.mount_path
        ));
    }
    Ok(Mount {
        source,
        target: PathBuf::from(&mount.mount_path),
        read_only: mount.read_only.unwrap_or(false),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use super::*;

    fn data() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("a.conf".to_owned(), "A".to_owned()),
            ("b".to_owned(), "B".to_owned()),
        ])
    }

    #[test]
    fn keys_or_items_become_files() {
        let all = project(Some(&data()), None, Some(0o600), false, "configmap \"c\"").unwrap();
        assert_eq!(
            all.iter()
                .map(|f| (f.path.display().to_string(), f.mode))
                .collect::<Vec<_>>(),
            [("a.conf".to_owned(), 0o600), ("b".to_owned(), 0o600)]
        );
        let items = [KeyToPath {
            key: "b".into(),
            path: "sub/b.txt".into(),
            mode: Some(0o400),
            ..KeyToPath::default()
        }];
        let some = project(Some(&data()), Some(&items), None, false, "x").unwrap();
        assert_eq!(
            some,
            [File {
                path: "sub/b.txt".into(),
                content: b"B".to_vec(),
                mode: 0o400
            }]
        );
    }

    #[test]
    fn missing_sources_and_bad_paths_are_errors_unless_optional() {
        assert_eq!(
            project(None, None, None, false, "secret \"s\"").unwrap_err(),
            "secret \"s\" not found"
        );
        assert!(project(None, None, None, true, "x").unwrap().is_empty());
        let missing = [KeyToPath {
            key: "nope".into(),
            path: "n".into(),
            mode: None,
            ..KeyToPath::default()
        }];
        assert!(
            project(Some(&data()), Some(&missing), None, false, "x")
                .unwrap_err()
                .contains("no key \"nope\"")
        );
        let escape = [KeyToPath {
            key: "b".into(),
            path: "../etc/passwd".into(),
            mode: None,
            ..KeyToPath::default()
        }];
        assert!(project(Some(&data()), Some(&escape), None, false, "x").is_err());
        assert!(project(Some(&data()), None, Some(0o1777), false, "x").is_err());
        assert!(!relative_ok("/abs") && !relative_ok("") && relative_ok("a/./b"));
    }

    #[test]
    fn files_are_written_with_their_modes_and_sub_paths_mount() {
        let dir = tempfile::tempdir().unwrap();
        let files = project(Some(&data()), None, Some(0o640), false, "x").unwrap();
        write(dir.path(), &files).unwrap();
        let meta = fs::metadata(dir.path().join("a.conf")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        assert_eq!(fs::read_to_string(dir.path().join("b")).unwrap(), "B");
        let mount = VolumeMount {
            name: "v".into(),
            mount_path: "/data".into(),
            sub_path: Some("inner".into()),
            read_only: Some(true),
            ..VolumeMount::default()
        };
        let m = bind(dir.path(), &mount).unwrap();
        assert_eq!(m.source, dir.path().join("inner"));
        assert!(m.source.is_dir() && m.read_only);
        let bad = VolumeMount {
            sub_path: Some("../x".into()),
            ..mount
        };
        assert!(bind(dir.path(), &bad).is_err());
    }

    #[test]
    fn host_paths_are_checked_by_type() {
        let dir = tempfile::tempdir().unwrap();
        let at = |p: &str, t: &str| HostPathVolumeSource {
            path: dir.path().join(p).display().to_string(),
            type_: Some(t.into()),
        };
        assert!(host_path(&at("d", "Directory")).is_err());
        assert!(host_path(&at("d", "DirectoryOrCreate")).unwrap().is_dir());
        assert!(host_path(&at("d", "Directory")).is_ok());
        assert!(host_path(&at("f", "FileOrCreate")).unwrap().is_file());
        assert!(host_path(&at("d", "File")).is_err());
        assert!(host_path(&at("x", "Bogus")).is_err());
        let relative = HostPathVolumeSource {
            path: "rel".into(),
            ..HostPathVolumeSource::default()
        };
        assert!(host_path(&relative).is_err());
    }
}
