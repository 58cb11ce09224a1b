//! Pod volumes: what a container's `volumeMounts` bind into its mount namespace, and the
//! downward API (pod fields and container resources as text) that env vars share.
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
//! - `downwardAPI`: one file per item, holding a pod field ([`Downward::field`]: name,
//!   namespace, uid, labels and annotations (all of them as the kubelet's sorted `key="value"`
//!   lines, or one by `['key']`), node name, service account, pod and host IP) or a container's
//!   CPU or memory request or limit in units of `divisor` ([`Downward::resource`]; a limit the
//!   container does not set is the node's allocatable, as in the kubelet). The files are
//!   rewritten when the pod's labels or annotations change.
//! - `projected`: configMap, secret, downwardAPI and serviceAccountToken sources written into
//!   one directory ([`projected`]); `defaultMode` applies to every file without its own `mode`.
//!   A token comes from the TokenRequest API, bound to the pod, for the pod's service account
//!   (`expirationSeconds` 3600 by default, at least 600, and `audience`); the pod worker
//!   rewrites it when 80% of its lifetime has passed or after 24 hours
//!   ([`token_refresh_after`]); a failed refresh leaves the old token in place and is retried.
//!   Without a first token the container does not start (`CreateContainerConfigError`).
//! - Other volume types are refused with a message naming the volume.
//!
//! Files are written beside their final name and renamed over it ([`write`]), so a running
//! container that reads a file sees the old or the new content, never half of it. (The
//! kubelet swaps a `..data` symlink to update all files of a volume at once; rudder replaces
//! them one by one.)
//!
//! Containers run on the node's own file system (DESIGN.md, "Pods without a registry"), so a
//! `mountPath` is a path of the node. The shim binds the volume there inside the container's
//! private mount namespace; a missing directory is created on the node first.
//!
//! `subPath` mounts a path inside the volume (created as a directory if missing); like
//! `items[].path`, it must be relative and must not contain `..`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs, io,
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt,
    path::{Component, Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequestSpec},
    core::v1::{
        Container, DownwardAPIVolumeFile, HostPathVolumeSource, KeyToPath, Pod,
        ProjectedVolumeSource, ResourceFieldSelector, ServiceAccountTokenProjection, VolumeMount,
    },
};

use super::shim::Mount;
use crate::quantity::quantity;

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

/// The permission bits of a file: its own `mode`, else the volume's `defaultMode`, else 0644.
/// `what` names the file for the error about a mode above 0777.
pub fn file_mode(own: Option<i32>, default_mode: Option<i32>, what: &str) -> Result<u32, String> {
    match own.or(default_mode) {
        None => Ok(DEFAULT_MODE),
        Some(m) => u32::try_from(m)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| format!("{what}: mode {m} is not between 0 and 0777")),
    }
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
    let mode_of = |m: Option<i32>| file_mode(m, default_mode, what);
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

/// Writes `files` into `dir` (created if needed), replacing what they replace. A file that
/// already holds its content and mode is left alone, so rewriting a volume whose data did not
/// change touches nothing a container might watch.
pub fn write(dir: &Path, files: &[File]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    for f in files {
        let path = dir.join(&f.path);
        let unchanged = fs::metadata(&path)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o7777 == f.mode)
            && fs::read(&path).is_ok_and(|old| old == f.content);
        if unchanged {
            continue;
        }
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

/// The node's allocatable CPU and memory: what the downward API reports as the limit of a
/// container that sets none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocatable {
    /// CPU in millicores.
    pub cpu_millis: i64,
    /// Memory in bytes.
    pub memory_bytes: i64,
}

/// What the downward API tells a pod about itself: its object, and what only the node knows.
#[derive(Clone, Copy, Debug)]
pub struct Downward<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// This node's name (`spec.nodeName`).
    pub node_name: &'a str,
    /// This node's address (`status.hostIP`).
    pub host_ip: Ipv4Addr,
    /// The pod's address (`status.podIP`), once it has one.
    pub pod_ip: Option<Ipv4Addr>,
    /// The node's allocatable resources.
    pub allocatable: Allocatable,
}

/// The pod's service account: `spec.serviceAccountName`, else the deprecated
/// `spec.serviceAccount`, else `default` (what the apiserver defaults it to).
pub fn service_account(pod: &Pod) -> &str {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.service_account_name.as_deref())
        .filter(|n| !n.is_empty())
        .or_else(|| {
            spec.and_then(|s| s.service_account.as_deref())
                .filter(|n| !n.is_empty())
        })
        .unwrap_or("default")
}

impl Downward<'_> {
    /// The value of `fieldRef.fieldPath` `path`, as the kubelet renders it.
    pub fn field(&self, path: &str) -> Result<String, String> {
        let meta = &self.pod.metadata;
        if let Some((field, key)) = subscripted(path) {
            let map = match field {
                "metadata.labels" => &meta.labels,
                "metadata.annotations" => &meta.annotations,
                _ => return Err(format!("fieldPath {path:?} does not support a subscript")),
            };
            return Ok(map
                .as_ref()
                .and_then(|m| m.get(key))
                .cloned()
                .unwrap_or_default());
        }
        Ok(match path {
            "metadata.name" => meta.name.clone().unwrap_or_default(),
            "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
            "metadata.uid" => meta.uid.clone().unwrap_or_default(),
            "metadata.labels" => format_map(meta.labels.as_ref()),
            "metadata.annotations" => format_map(meta.annotations.as_ref()),
            "spec.nodeName" => self.node_name.to_owned(),
            "spec.serviceAccountName" => service_account(self.pod).to_owned(),
            "status.hostIP" | "status.hostIPs" => self.host_ip.to_string(),
            "status.podIP" | "status.podIPs" => {
                self.pod_ip.map(|i| i.to_string()).unwrap_or_default()
            }
            _ => return Err(format!("unsupported fieldPath {path:?}")),
        })
    }

    /// The value of a `resourceFieldRef`: the named container's (else `own`'s) CPU or memory
    /// limit or request, divided by `divisor` (1 by default) and rounded up. A limit the
    /// container does not set is the node's allocatable; a request it does not set is its limit
    /// if it sets one (the apiserver's defaulting), else 0.
    pub fn resource(
        &self,
        selector: &ResourceFieldSelector,
        own: Option<&Container>,
    ) -> Result<String, String> {
        let container = match selector.container_name.as_deref().filter(|n| !n.is_empty()) {
            Some(name) => self
                .pod
                .spec
                .iter()
                .flat_map(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                })
                .find(|c| c.name == name)
                .ok_or_else(|| format!("resourceFieldRef: container {name:?} not found"))?,
            None => own.ok_or_else(|| {
                format!(
                    "resourceFieldRef {:?} needs a containerName",
                    selector.resource
                )
            })?,
        };
        let (kind, name) = selector.resource.split_once('.').unwrap_or(("", ""));
        let scale = match name {
            "cpu" => 1000.0,
            "memory" => 1.0,
            _ => return Err(format!("unsupported resource {:?}", selector.resource)),
        };
        let resources = container.resources.as_ref();
        let limit = resources
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get(name));
        let set = match kind {
            "limits" => limit,
            "requests" => resources
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get(name))
                .or(limit),
            _ => return Err(format!("unsupported resource {:?}", selector.resource)),
        };
        let value = match set {
            Some(q) => quantity(&q.0, scale).ok_or_else(|| {
                format!(
                    "container {:?}: {} {:?} is not a quantity",
                    container.name, selector.resource, q.0
                )
            })?,
            None if kind == "limits" && name == "cpu" => self.allocatable.cpu_millis,
            None if kind == "limits" => self.allocatable.memory_bytes,
            None => 0,
        };
        let divisor = match &selector.divisor {
            None => None,
            Some(d) => Some(
                quantity(&d.0, scale)
                    .ok_or_else(|| format!("divisor {:?} is not a quantity", d.0))?,
            ),
        }
        .filter(|d| *d > 0)
        .unwrap_or(if name == "cpu" { 1000 } else { 1 });
        Ok(value
            .unsigned_abs()
            .div_ceil(divisor.unsigned_abs())
            .to_string())
    }

    /// The files of a downwardAPI volume (or projection): one per item, at its `path`, with its
    /// `mode` or `default_mode`.
    pub fn files(
        &self,
        items: &[DownwardAPIVolumeFile],
        default_mode: Option<i32>,
    ) -> Result<Vec<File>, String> {
        items
            .iter()
            .map(|item| {
                let what = format!("downwardAPI item {:?}", item.path);
                if !relative_ok(&item.path) {
                    return Err(format!(
                        "{what}: path must be relative and must not contain '..'"
                    ));
                }
                let content = match (&item.field_ref, &item.resource_field_ref) {
                    (Some(f), None) => self.field(&f.field_path),
                    (None, Some(r))
                        if r.container_name.as_deref().is_some_and(|n| !n.is_empty()) =>
                    {
                        self.resource(r, None)
                    }
                    (None, Some(_)) => Err("resourceFieldRef needs a containerName".to_owned()),
                    _ => Err("needs exactly one of fieldRef and resourceFieldRef".to_owned()),
                }
                .map_err(|e| format!("{what}: {e}"))?;
                Ok(File {
                    path: PathBuf::from(&item.path),
                    content: content.into_bytes(),
                    mode: file_mode(item.mode, default_mode, &what)?,
                })
            })
            .collect()
    }
}

/// `metadata.labels['key']` → (`metadata.labels`, `key`), as the kubelet splits field paths.
fn subscripted(path: &str) -> Option<(&str, &str)> {
    let inner = path.strip_suffix("']")?;
    let (field, key) = inner.split_once("['")?;
    (!field.is_empty()).then_some((field, key))
}

/// Labels or annotations as the kubelet writes them: `key="value"` lines sorted by key, values
/// quoted as Go's `%q` does, no newline after the last.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    let mut out = String::new();
    for (k, v) in map.into_iter().flatten() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(k);
        out.push('=');
        go_quote(v, &mut out);
    }
    out
}

/// Appends `s` quoted like Go's `strconv.Quote`: `"` and `\` escaped, control, space-like,
/// format and private-use characters as `\a`…`\v`, `\xNN`, `\uNNNN` or `\UNNNNNNNN`. (Go also
/// escapes unassigned code points, which Rust's standard library cannot tell apart.)
fn go_quote(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if go_printable(c) => out.push(c),
            c if u32::from(c) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if u32::from(c) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\U{:08x}", u32::from(c));
            }
        }
    }
    out.push('"');
}

/// Go's `unicode.IsPrint` as far as the standard library can tell: not a control, space-like
/// (other than ASCII space), format or private-use character.
fn go_printable(c: char) -> bool {
    let format = matches!(
        u32::from(c),
        0xad | 0x600..=0x605
            | 0x61c
            | 0x6dd
            | 0x70f
            | 0x180e
            | 0x200b..=0x200f
            | 0x202a..=0x202e
            | 0x2060..=0x2064
            | 0x2066..=0x206f
            | 0xfeff
            | 0xfff9..=0xfffb
            | 0xe0001
            | 0xe0020..=0xe007f
    );
    let private = matches!(
        u32::from(c),
        0xe000..=0xf8ff | 0xf0000..=0xffffd | 0x100000..=0x10fffd
    );
    c == ' ' || !(c.is_control() || c.is_whitespace() || format || private)
}

/// Default `expirationSeconds` of a projected token (an hour).
pub const TOKEN_EXPIRATION_DEFAULT: i64 = 3600;
/// Shortest `expirationSeconds` the API accepts (ten minutes).
pub const TOKEN_EXPIRATION_MIN: i64 = 600;
/// Longest `expirationSeconds` the API accepts (2³² seconds).
const TOKEN_EXPIRATION_MAX: i64 = 1 << 32;
/// A token is rewritten after at most this long, however long it lasts (the kubelet's).
const TOKEN_REFRESH_MAX: Duration = Duration::from_secs(24 * 3600);
/// And not sooner than this, so an apiserver that issues tokens with (almost) no lifetime left
/// is not asked again in a loop.
pub const TOKEN_REFRESH_MIN: Duration = Duration::from_secs(10);

/// The TokenRequest spec for a `serviceAccountToken` projection of `pod`: its `audience` (none:
/// the apiserver's own), `expirationSeconds` (3600 by default, checked against the API's
/// bounds) and the pod as the bound object, so the token dies with the pod.
pub fn token_request(
    source: &ServiceAccountTokenProjection,
    pod: &Pod,
) -> Result<TokenRequestSpec, String> {
    let secs = source
        .expiration_seconds
        .unwrap_or(TOKEN_EXPIRATION_DEFAULT);
    if !(TOKEN_EXPIRATION_MIN..=TOKEN_EXPIRATION_MAX).contains(&secs) {
        return Err(format!(
            "serviceAccountToken {:?}: expirationSeconds {secs} is not between \
             {TOKEN_EXPIRATION_MIN} (10 minutes) and {TOKEN_EXPIRATION_MAX}",
            source.path
        ));
    }
    Ok(TokenRequestSpec {
        audiences: Some(
            source
                .audience
                .clone()
                .filter(|a| !a.is_empty())
                .into_iter()
                .collect(),
        ),
        expiration_seconds: Some(secs),
        bound_object_ref: Some(BoundObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
        }),
        ..TokenRequestSpec::default()
    })
}

/// When to rewrite a token that has `lifetime` left as it arrives: after 80% of it, or after 24
/// hours if that comes first (the kubelet's token manager), but not within
/// [`TOKEN_REFRESH_MIN`].
pub fn token_refresh_after(lifetime: Duration) -> Duration {
    (lifetime * 4 / 5)
        .min(TOKEN_REFRESH_MAX)
        .max(TOKEN_REFRESH_MIN)
}

/// What a projected volume's sources hold, fetched by the caller before [`projected`] lays
/// them out. A ConfigMap or Secret missing from the maps counts as not existing.
#[derive(Clone, Debug, Default)]
pub struct Fetched {
    /// ConfigMap data by name (`None`: it does not exist).
    pub config_maps: BTreeMap<String, Option<BTreeMap<String, String>>>,
    /// Decoded Secret data by name (`None`: it does not exist).
    pub secrets: BTreeMap<String, Option<BTreeMap<String, String>>>,
    /// ServiceAccount tokens by the `path` of their source.
    pub tokens: BTreeMap<String, String>,
}

/// The files of a projected volume: every source's, in one directory. Two sources writing the
/// same path are an error (the API refuses such pods too).
pub fn projected(
    volume: &ProjectedVolumeSource,
    fetched: &Fetched,
    downward: &Downward<'_>,
) -> Result<Vec<File>, String> {
    let default_mode = volume.default_mode;
    let mut files: Vec<File> = Vec::new();
    for source in volume.sources.iter().flatten() {
        let part = if let Some(cm) = &source.config_map {
            project(
                fetched.config_maps.get(&cm.name).and_then(Option::as_ref),
                cm.items.as_deref(),
                default_mode,
                cm.optional.unwrap_or(false),
                &format!("configmap {:?}", cm.name),
            )?
        } else if let Some(secret) = &source.secret {
            project(
                fetched.secrets.get(&secret.name).and_then(Option::as_ref),
                secret.items.as_deref(),
                default_mode,
                secret.optional.unwrap_or(false),
                &format!("secret {:?}", secret.name),
            )?
        } else if let Some(d) = &source.downward_api {
            downward.files(d.items.as_deref().unwrap_or_default(), default_mode)?
        } else if let Some(token) = &source.service_account_token {
            let what = format!("serviceAccountToken {:?}", token.path);
            if !relative_ok(&token.path) {
                return Err(format!(
                    "{what}: path must be relative and must not contain '..'"
                ));
            }
            let content = fetched
                .tokens
                .get(&token.path)
                .ok_or_else(|| format!("{what}: no token"))?;
            vec![File {
                path: PathBuf::from(&token.path),
                content: content.clone().into_bytes(),
                mode: file_mode(None, default_mode, &what)?,
            }]
        } else if source.cluster_trust_bundle.is_some() {
            return Err("clusterTrustBundle projections are not supported".into());
        } else if source.pod_certificate.is_some() {
            return Err("podCertificate projections are not supported".into());
        } else {
            continue;
        };
        for file in part {
            if files.iter().any(|f| f.path == file.path) {
                return Err(format!(
                    "two sources write the same path {:?}",
                    file.path.display().to_string()
                ));
            }
            files.push(file);
        }
    }
    Ok(files)
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

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-0", "namespace": "shop", "uid": "u-1",
                "labels": {"tier": "front end", "app": "web"},
                "annotations": {"q": "say \"hi\"\\now", "b": "two\nlines", "c": "tab\tcafé \u{a0}\u{1}"},
            },
            "spec": {
                "serviceAccountName": "builder",
                "containers": [
                    {"name": "main", "resources": {
                        "limits": {"cpu": "500m", "memory": "64Mi"},
                        "requests": {"cpu": "250m"}}},
                    {"name": "bare"},
                ],
                "initContainers": [{"name": "init", "resources": {"requests": {"memory": "1Gi"}}}],
            },
        }))
        .unwrap()
    }

    fn downward(pod: &Pod) -> Downward<'_> {
        Downward {
            pod,
            node_name: "n1",
            host_ip: Ipv4Addr::new(172, 30, 0, 2),
            pod_ip: Some(Ipv4Addr::new(10, 244, 0, 7)),
            allocatable: Allocatable {
                cpu_millis: 2000,
                memory_bytes: 4 << 30,
            },
        }
    }

    #[test]
    fn downward_fields_render_like_the_kubelet() {
        let pod = pod();
        let d = downward(&pod);
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("metadata.name", Ok("web-0")),
            ("metadata.namespace", Ok("shop")),
            ("metadata.uid", Ok("u-1")),
            // Sorted by key, Go-quoted values, no newline after the last line.
            ("metadata.labels", Ok("app=\"web\"\ntier=\"front end\"")),
            (
                "metadata.annotations",
                Ok("b=\"two\\nlines\"\nc=\"tab\\tcafé \\u00a0\\x01\"\nq=\"say \\\"hi\\\"\\\\now\""),
            ),
            ("metadata.labels['app']", Ok("web")),
            ("metadata.labels['missing']", Ok("")),
            ("metadata.annotations['b']", Ok("two\nlines")),
            ("spec.nodeName", Ok("n1")),
            ("spec.serviceAccountName", Ok("builder")),
            ("status.podIP", Ok("10.244.0.7")),
            ("status.hostIP", Ok("172.30.0.2")),
            ("metadata.name['x']", Err("does not support a subscript")),
            ("spec.containers", Err("unsupported fieldPath")),
        ];
        for (path, want) in cases {
            match (d.field(path), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{path}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{path}: {got}"),
                (got, want) => panic!("{path}: got {got:?}, want {want:?}"),
            }
        }
        let mut plain = Pod::default();
        plain.metadata.name = Some("p".into());
        assert_eq!(
            downward(&plain).field("spec.serviceAccountName").unwrap(),
            "default"
        );
        assert_eq!(downward(&plain).field("metadata.labels").unwrap(), "");
    }

    #[test]
    fn go_quoting_escapes_what_go_does() {
        let cases = [
            ("plain", r#""plain""#),
            ("\u{7}\u{8}\u{c}\u{b}\r", r#""\a\b\f\v\r""#),
            ("\u{1b}\u{7f}", r#""\x1b\x7f""#),
            (
                "\u{85}\u{200b}\u{2028}\u{e000}",
                r#""\u0085\u200b\u2028\ue000""#,
            ),
            ("\u{f0000}", r#""\U000f0000""#),
            ("日本 😀", "\"日本 😀\""),
        ];
        for (text, want) in cases {
            let mut got = String::new();
            go_quote(text, &mut got);
            assert_eq!(got, want, "{text:?}");
        }
    }

    #[test]
    fn resource_fields_divide_and_round_up() {
        let pod = pod();
        let d = downward(&pod);
        // (container, resource, divisor, value or error)
        type Case = (
            &'static str,
            &'static str,
            Option<&'static str>,
            Result<&'static str, &'static str>,
        );
        let cases: &[Case] = &[
            ("main", "limits.cpu", None, Ok("1")),
            ("main", "limits.cpu", Some("1m"), Ok("500")),
            ("main", "requests.cpu", Some("1m"), Ok("250")),
            ("main", "limits.memory", None, Ok("67108864")),
            ("main", "limits.memory", Some("1Mi"), Ok("64")),
            ("main", "limits.memory", Some("1k"), Ok("67109")),
            // An unset request is the limit (the apiserver's defaulting).
            ("main", "requests.memory", Some("1Mi"), Ok("64")),
            // An unset limit is the node's allocatable.
            ("bare", "limits.cpu", Some("1m"), Ok("2000")),
            ("bare", "limits.cpu", Some("0"), Ok("2")),
            ("bare", "limits.memory", Some("1Gi"), Ok("4")),
            ("bare", "requests.cpu", None, Ok("0")),
            ("init", "requests.memory", Some("1Mi"), Ok("1024")),
            (
                "ghost",
                "limits.cpu",
                None,
                Err("container \"ghost\" not found"),
            ),
            (
                "main",
                "limits.nvidia.com/gpu",
                None,
                Err("unsupported resource"),
            ),
            ("main", "cpu", None, Err("unsupported resource")),
            ("main", "limits.cpu", Some("lots"), Err("not a quantity")),
        ];
        for (container, resource, divisor, want) in cases {
            let selector = ResourceFieldSelector {
                container_name: Some((*container).into()),
                resource: (*resource).into(),
                divisor: divisor
                    .map(|d| k8s_openapi::apimachinery::pkg::api::resource::Quantity(d.into())),
            };
            match (d.resource(&selector, None), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{container} {resource} {divisor:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{resource}: {got}"),
                (got, want) => panic!("{container} {resource}: got {got:?}, want {want:?}"),
            }
        }
        // Env vars name no container: their own is meant.
        let own = &pod.spec.as_ref().unwrap().containers[0];
        let selector = ResourceFieldSelector {
            resource: "limits.memory".into(),
            ..ResourceFieldSelector::default()
        };
        assert_eq!(d.resource(&selector, Some(own)).unwrap(), "67108864");
        assert!(d.resource(&selector, None).is_err());
    }

    fn listing(files: &[File]) -> Vec<(String, u32, String)> {
        files
            .iter()
            .map(|f| {
                (
                    f.path.display().to_string(),
                    f.mode,
                    String::from_utf8_lossy(&f.content).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn downward_api_volumes_write_one_file_per_item() {
        let pod = pod();
        let items: Vec<DownwardAPIVolumeFile> = serde_json::from_value(serde_json::json!([
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "sub/name", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o400},
            {"path": "mem", "resourceFieldRef": {"containerName": "main", "resource": "limits.memory", "divisor": "1Mi"}},
        ]))
        .unwrap();
        let files = downward(&pod).files(&items, Some(0o440)).unwrap();
        assert_eq!(
            listing(&files),
            [
                (
                    "labels".into(),
                    0o440,
                    "app=\"web\"\ntier=\"front end\"".into()
                ),
                ("sub/name".into(), 0o400, "web-0".into()),
                ("mem".into(), 0o440, "64".into()),
            ]
        );
        let bad: &[(serde_json::Value, &str)] = &[
            (
                serde_json::json!({"path": "../x", "fieldRef": {"fieldPath": "metadata.name"}}),
                "must be relative",
            ),
            (
                serde_json::json!({"path": "x", "resourceFieldRef": {"resource": "limits.cpu"}}),
                "needs a containerName",
            ),
            (serde_json::json!({"path": "x"}), "exactly one of"),
            (
                serde_json::json!({"path": "x", "fieldRef": {"fieldPath": "spec.volumes"}}),
                "unsupported fieldPath",
            ),
            (
                serde_json::json!({"path": "x", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o1000}),
                "mode",
            ),
        ];
        for (item, want) in bad {
            let item: DownwardAPIVolumeFile = serde_json::from_value(item.clone()).unwrap();
            let err = downward(&pod).files(&[item], None).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn projected_volumes_gather_every_source() {
        let pod = pod();
        let fetched = Fetched {
            config_maps: BTreeMap::from([("cm".into(), Some(data()))]),
            secrets: BTreeMap::from([(
                "s".into(),
                Some(BTreeMap::from([("pw".to_owned(), "hunter2".to_owned())])),
            )]),
            tokens: BTreeMap::from([("token".into(), "jwt".into())]),
        };
        type Want = Result<Vec<(&'static str, u32, &'static str)>, &'static str>;
        let cases: Vec<(serde_json::Value, Want)> = vec![
            (
                serde_json::json!({"defaultMode": 0o440, "sources": [
                    {"configMap": {"name": "cm", "items": [{"key": "b", "path": "b.txt"}]}},
                    {"secret": {"name": "s", "items": [{"key": "pw", "path": "pw", "mode": 0o400}]}},
                    {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                ]}),
                Ok(vec![
                    ("b.txt", 0o440, "B"),
                    ("pw", 0o400, "hunter2"),
                    ("ns", 0o440, "shop"),
                    ("token", 0o440, "jwt"),
                ]),
            ),
            (
                serde_json::json!({"sources": [
                    {"configMap": {"name": "absent", "optional": true}},
                    {"configMap": {"name": "cm"}},
                ]}),
                Ok(vec![("a.conf", 0o644, "A"), ("b", 0o644, "B")]),
            ),
            (
                serde_json::json!({"sources": [{"secret": {"name": "absent"}}]}),
                Err("secret \"absent\" not found"),
            ),
            (
                serde_json::json!({"sources": [
                    {"configMap": {"name": "cm", "items": [{"key": "a.conf", "path": "token"}]}},
                    {"serviceAccountToken": {"path": "token"}},
                ]}),
                Err("same path \"token\""),
            ),
            (
                serde_json::json!({"sources": [{"serviceAccountToken": {"path": "../token"}}]}),
                Err("must be relative"),
            ),
            (
                serde_json::json!({"sources": [{"serviceAccountToken": {"path": "other"}}]}),
                Err("no token"),
            ),
            (
                serde_json::json!({"sources": [{"clusterTrustBundle": {"path": "ca.crt", "name": "b"}}]}),
                Err("clusterTrustBundle projections are not supported"),
            ),
        ];
        for (volume, want) in cases {
            let source: ProjectedVolumeSource = serde_json::from_value(volume.clone()).unwrap();
            match (projected(&source, &fetched, &downward(&pod)), want) {
                (Ok(got), Ok(want)) => assert_eq!(
                    listing(&got),
                    want.iter()
                        .map(|(p, m, c)| ((*p).to_owned(), *m, (*c).to_owned()))
                        .collect::<Vec<_>>(),
                    "{volume}"
                ),
                (Err(got), Err(want)) => assert!(got.contains(want), "{volume}: {got}"),
                (got, want) => panic!("{volume}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn token_requests_and_refresh_times() {
        let pod = pod();
        let source = |secs: Option<i64>, audience: Option<&str>| ServiceAccountTokenProjection {
            path: "token".into(),
            expiration_seconds: secs,
            audience: audience.map(Into::into),
            ..ServiceAccountTokenProjection::default()
        };
        let spec = token_request(&source(None, None), &pod).unwrap();
        assert_eq!(spec.expiration_seconds, Some(3600));
        assert_eq!(spec.audiences, Some(vec![]));
        let bound = spec.bound_object_ref.unwrap();
        assert_eq!(
            (bound.api_version, bound.kind, bound.name, bound.uid),
            (
                Some("v1".into()),
                Some("Pod".into()),
                Some("web-0".into()),
                Some("u-1".into())
            )
        );
        let spec = token_request(&source(Some(600), Some("vault")), &pod).unwrap();
        assert_eq!(spec.audiences, Some(vec!["vault".to_owned()]));
        for secs in [599, 0, -1, (1 << 32) + 1] {
            let err = token_request(&source(Some(secs), None), &pod).unwrap_err();
            assert!(err.contains("expirationSeconds"), "{err}");
        }
        let h = |h: u64| Duration::from_secs(h * 3600);
        let cases = [
            (h(1), Duration::from_secs(2880)),
            (Duration::from_secs(600), Duration::from_secs(480)),
            (h(48), h(24)),
            (Duration::from_secs(5), TOKEN_REFRESH_MIN),
            (Duration::ZERO, TOKEN_REFRESH_MIN),
        ];
        for (lifetime, want) in cases {
            assert_eq!(token_refresh_after(lifetime), want, "{lifetime:?}");
        }
    }

    #[test]
    fn unchanged_files_are_not_rewritten() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let file = |content: &str| File {
            path: "token".into(),
            content: content.as_bytes().to_vec(),
            mode: 0o600,
        };
        write(dir.path(), &[file("one")]).unwrap();
        let inode = || fs::metadata(dir.path().join("token")).unwrap().ino();
        let first = inode();
        write(dir.path(), &[file("one")]).unwrap();
        assert_eq!(inode(), first);
        write(dir.path(), &[file("two")]).unwrap();
        assert_ne!(inode(), first);
        assert_eq!(fs::read_to_string(dir.path().join("token")).unwrap(), "two");
        assert!(!dir.path().join("token.rudder-tmp").exists());
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
