//! `cargo xtask codegen`: writes `control/src/api/protobuf/schema.rs`, the protobuf field table the
//! apiserver uses to read `application/vnd.kubernetes.protobuf` request bodies.
//!
//! client-go's typed clients (`kubectl create deployment`, `kubectl create configmap`, ...) send
//! protobuf. Decoding it needs, for every message, the field numbers, wire types and JSON names.
//! Two crates.io dependencies hold that knowledge, and this generator joins them:
//! - `k8s-pb` (prost code generated from Kubernetes' `generated.proto`): message and field names,
//!   tags, scalar kinds and the message type of each field, plus `apiVersion`/`kind` of resources;
//! - `k8s-openapi` (serde code generated from the OpenAPI spec): the exact JSON name of each field
//!   (`hostIPC`, `podCIDRs`, `$ref`), matched to the prost field by letters and digits only.
//!
//! The output is committed, so building rudder needs neither crate's sources; rerun this after
//! bumping either crate. The round-trip tests in `control/tests/protobuf.rs` encode real `k8s-pb`
//! messages with prost and check that the table decodes them to the same JSON as `k8s-openapi`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Packages (directories of both crates) whose messages the apiserver may receive.
const PACKAGES: &[&str] = &[
    "api/core/v1",
    "api/apps/v1",
    "api/batch/v1",
    "api/networking/v1",
    "api/discovery/v1",
    "api/coordination/v1",
    "api/autoscaling/v1",
    "api/autoscaling/v2",
    "api/authentication/v1",
    "api/policy/v1",
    "api/events/v1",
    "apimachinery/pkg/apis/meta/v1",
    "apimachinery/pkg/api/resource",
    "apimachinery/pkg/util/intstr",
    "apimachinery/pkg/runtime",
    "apiextensions_apiserver/pkg/apis/apiextensions/v1",
];

/// The k8s-openapi feature (Kubernetes minor version) whose JSON names are used.
const OPENAPI_VERSION: &str = "v1_37";

const OUTPUT: &str = "control/src/api/protobuf/schema.rs";

struct Field {
    tag: u32,
    rust: String,
    json: String,
    kind: String,
    repeated: bool,
    /// The message type of a singular or repeated message field.
    target: Option<String>,
    /// Go's `json:",inline"`: the field's own fields appear in the parent's JSON object.
    inline: bool,
}

struct Message {
    name: String,
    fields: Vec<Field>,
}

/// Generates the table; `check` only compares it with the committed file.
pub fn run(check: bool) -> Result<()> {
    let (pb, openapi) = crate_dirs()?;
    let mut messages = Vec::new();
    let mut resources = Vec::new();
    let mut json_names = HashMap::new();
    for package in PACKAGES {
        let file = pb.join("src").join(package).join("mod.rs");
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let module: Vec<&str> = package.split('/').collect();
        let names = openapi_names(&openapi.join("src").join(OPENAPI_VERSION).join(package))?;
        for (lower, fields) in names {
            json_names.insert(format!("{}.{lower}", module.join(".")), fields);
        }
        parse_package(&text, &module, &mut messages, &mut resources)?;
    }
    let notes = name_fields(&mut messages, &json_names);
    if !check {
        for note in notes {
            eprintln!("note: {note}");
        }
    }
    messages.sort_by(|a, b| a.name.cmp(&b.name));
    resources.sort();
    let out = rustfmt(&render(&messages, &resources))?;
    let path = crate::workspace_root().join(OUTPUT);
    let path = path.as_path();
    if check {
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        if committed != out {
            bail!("{OUTPUT} is out of date: run `cargo xtask codegen`");
        }
        println!("{OUTPUT} is up to date");
    } else {
        std::fs::write(path, out).with_context(|| format!("writing {OUTPUT}"))?;
        println!(
            "wrote {OUTPUT}: {} messages, {} resources",
            messages.len(),
            resources.len()
        );
    }
    Ok(())
}

/// Formats generated source the way `cargo fmt` would.
fn rustfmt(source: &str) -> Result<String> {
    use std::io::Write as _;
    let mut child = Command::new("rustfmt")
        .args(["--edition", "2024", "--emit", "stdout"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting rustfmt")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(source.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("rustfmt failed on the generated table");
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Finds the sources of k8s-pb and k8s-openapi through `cargo metadata`.
fn crate_dirs() -> Result<(PathBuf, PathBuf)> {
    let out = Command::new("cargo")
        .args(["metadata", "--format-version", "1"])
        .current_dir(crate::workspace_root())
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed");
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let find = |name: &str| -> Result<PathBuf> {
        meta["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .and_then(|p| p["manifest_path"].as_str())
            .and_then(|m| Path::new(m).parent().map(Path::to_path_buf))
            .with_context(|| format!("{name} is not in the dependency graph"))
    };
    Ok((find("k8s-pb")?, find("k8s-openapi")?))
}

/// Letters and digits only, lower case: the key that pairs a prost field with its JSON name.
fn normalize(name: &str) -> String {
    name.trim_start_matches("r#")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// JSON field names per (lower-case) struct name in one k8s-openapi package directory.
fn openapi_names(dir: &Path) -> Result<HashMap<String, HashMap<String, String>>> {
    let mut out = HashMap::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let Some(name) = text
            .lines()
            .find_map(|l| l.strip_prefix("pub struct "))
            .and_then(|l| l.split([' ', '{', '(', ';']).next())
        else {
            continue;
        };
        let mut fields = HashMap::new();
        for line in text.lines() {
            // `"hostIPC" => Field::Key_host_ipc,` in the generated Deserialize impl.
            let line = line.trim();
            if let Some(rest) = line.strip_prefix('"')
                && let Some((json, tail)) = rest.split_once('"')
                && tail.trim_start().starts_with("=> Field::Key_")
            {
                fields.insert(normalize(json), json.to_owned());
            }
        }
        out.insert(name.to_ascii_lowercase(), fields);
    }
    Ok(out)
}

/// Resolves a prost type path (`super::super::x::Y`, `Y`) against the module it appears in.
fn resolve(module: &[&str], path: &str) -> String {
    let mut parts: Vec<&str> = module.to_vec();
    let mut rest = path;
    if let Some(r) = rest.strip_prefix("crate::") {
        parts.clear();
        rest = r;
    }
    while let Some(r) = rest.strip_prefix("super::") {
        parts.pop();
        rest = r;
    }
    parts.extend(rest.split("::"));
    parts.join(".")
}

/// The message type inside `Option<..>`, `Vec<..>`, `Box<..>` or a map's value.
fn inner_type(ty: &str) -> &str {
    let mut t = ty.trim().trim_end_matches(',').trim();
    if let Some(start) = t.find("BTreeMap<") {
        let inner = &t[start + "BTreeMap<".len()..];
        let inner = inner.trim_end().trim_end_matches('>');
        t = inner
            .split_once(',')
            .map_or(inner, |(_, v)| v)
            .trim()
            .trim_end_matches(',')
            .trim();
    }
    for wrapper in [
        "::core::option::Option<",
        "::prost::alloc::vec::Vec<",
        "::prost::alloc::boxed::Box<",
    ] {
        if let Some(r) = t.strip_prefix(wrapper) {
            t = r.trim_end_matches('>');
        }
    }
    t.trim_end_matches('>').trim().trim_end_matches(',').trim()
}

fn scalar(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "string" => "Kind::String",
        "bool" => "Kind::Bool",
        "int32" => "Kind::Int32",
        "int64" => "Kind::Int64",
        "double" => "Kind::Double",
        "bytes" => "Kind::Bytes",
        _ => return None,
    })
}

fn parse_package(
    text: &str,
    module: &[&str],
    messages: &mut Vec<Message>,
    resources: &mut Vec<(String, String, String)>,
) -> Result<()> {
    let mut current: Option<Message> = None;
    let mut attr: Option<String> = None;
    let mut decl = String::new();
    let mut resource: Option<(String, Option<String>, Option<String>)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("pub struct ") {
            let name = rest.split([' ', '{']).next().unwrap_or_default();
            let message = Message {
                name: format!("{}.{name}", module.join(".")),
                fields: Vec::new(),
            };
            if rest.trim_end().ends_with("{}") {
                messages.push(message);
            } else {
                current = Some(message);
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("impl crate::Resource for ") {
            let name = rest.split([' ', '{']).next().unwrap_or_default();
            resource = Some((format!("{}.{name}", module.join(".")), None, None));
            continue;
        }
        if let Some((_, api_version, kind)) = resource.as_mut() {
            let l = line.trim();
            let value = || l.split('"').nth(1).map(str::to_owned);
            if l.starts_with("const API_VERSION") {
                *api_version = value();
            } else if l.starts_with("const KIND") {
                *kind = value();
            } else if l == "}"
                && let Some((message, Some(v), Some(k))) = resource.take()
            {
                resources.push((v, k, message));
            }
            continue;
        }
        let Some(message) = current.as_mut() else {
            continue;
        };
        if line == "}" {
            if let Some(done) = current.take() {
                messages.push(done);
            }
            continue;
        }
        let l = line.trim();
        if let Some(a) = l.strip_prefix("#[prost(") {
            attr = Some(a.trim_end_matches(")]").to_owned());
            decl.clear();
            continue;
        }
        let Some(a) = attr.as_ref() else { continue };
        if l.starts_with("///") || l.starts_with("#[") {
            continue;
        }
        decl.push_str(l);
        decl.push(' ');
        let depth = decl.matches('<').count() as i64 - decl.matches('>').count() as i64;
        if !(l.ends_with(',') && depth == 0) {
            continue;
        }
        // `pub name: Type,`
        let Some((name, ty)) = decl
            .trim()
            .strip_prefix("pub ")
            .and_then(|d| d.split_once(':'))
        else {
            bail!("cannot parse field `{decl}` in {}", message.name);
        };
        let name = name.trim().to_owned();
        let a = a.clone();
        attr = None;
        let tag: u32 = a
            .split("tag = \"")
            .nth(1)
            .and_then(|t| t.split('"').next())
            .and_then(|t| t.parse().ok())
            .with_context(|| format!("no tag on {}.{name}", message.name))?;
        let first = a.split([',', ' ', '=']).next().unwrap_or_default();
        let repeated = a.contains("repeated");
        let kind = if first == "btree_map" {
            let spec = a.split('"').nth(1).unwrap_or_default();
            let (k, v) = spec.split_once(',').unwrap_or_default();
            let key = scalar(k.trim()).with_context(|| format!("map key {k}"))?;
            let value = match v.trim() {
                "message" => format!("&Kind::Message({:?})", resolve(module, inner_type(ty))),
                other => format!(
                    "&{}",
                    scalar(other).with_context(|| format!("map value {other}"))?
                ),
            };
            format!("Kind::Map(&{key}, {value})")
        } else if first == "message" {
            format!("Kind::Message({:?})", resolve(module, inner_type(ty)))
        } else {
            scalar(first)
                .with_context(|| format!("kind {first} on {}.{name}", message.name))?
                .to_owned()
        };
        let target = (first == "message").then(|| resolve(module, inner_type(ty)));
        message.fields.push(Field {
            tag,
            json: String::new(),
            rust: name,
            kind,
            repeated,
            target,
            inline: false,
        });
    }
    Ok(())
}

/// The key of a message in the k8s-openapi name map: package and lower-case struct name.
fn openapi_key(message: &str) -> String {
    match message.rsplit_once('.') {
        Some((package, name)) => format!("{package}.{}", name.to_ascii_lowercase()),
        None => message.to_ascii_lowercase(),
    }
}

/// Gives every field its JSON name. A message field k8s-openapi does not know, in a struct it
/// does know, is an embedded Go struct (`Volume.volumeSource`, `Probe.handler`): it is marked
/// inline and its own fields take their names from the embedding struct (`downwardAPI`).
/// Returns notes on the fields named by guesswork (camelCase of the prost name).
fn name_fields(
    messages: &mut [Message],
    json_names: &HashMap<String, HashMap<String, String>>,
) -> Vec<String> {
    let mut notes = Vec::new();
    let field_keys: HashMap<String, Vec<String>> = messages
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                m.fields.iter().map(|f| normalize(&f.rust)).collect(),
            )
        })
        .collect();
    let mut inherited: HashMap<String, HashMap<String, String>> = HashMap::new();
    for message in messages.iter_mut() {
        let Some(names) = json_names.get(&openapi_key(&message.name)) else {
            continue;
        };
        for field in &mut message.fields {
            if let Some(json) = names.get(&normalize(&field.rust)) {
                field.json = json.clone();
            } else if let (Some(target), false) = (&field.target, field.repeated)
                && field_keys
                    .get(target)
                    .is_some_and(|keys| keys.iter().all(|k| names.contains_key(k)))
            {
                field.inline = true;
                field.json = camel(&field.rust);
                inherited
                    .entry(target.clone())
                    .or_default()
                    .extend(names.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
    }
    for message in messages.iter_mut() {
        let names = inherited.get(&message.name);
        for field in &mut message.fields {
            if !field.json.is_empty() {
                continue;
            }
            field.json = match names.and_then(|n| n.get(&normalize(&field.rust))) {
                Some(json) => json.clone(),
                None => {
                    let guess = camel(&field.rust);
                    if json_names.contains_key(&openapi_key(&message.name)) || names.is_some() {
                        notes.push(format!(
                            "{}.{} is not in k8s-openapi; JSON name {guess}",
                            message.name, field.rust
                        ));
                    }
                    guess
                }
            };
        }
    }
    notes
}

/// `snake_case` → `camelCase`, for the few fields k8s-openapi does not have.
fn camel(name: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in name.trim_start_matches("r#").chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn render(messages: &[Message], resources: &[(String, String, String)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "//! GENERATED by `cargo xtask codegen` from the k8s-pb and k8s-openapi ({OPENAPI_VERSION}) crates;\n\
         //! do not edit. Every protobuf message the apiserver can read: name (the k8s-pb module path),\n\
         //! fields by tag with their JSON names and kinds, and the resources' `apiVersion`/`kind`.\n\
         \n\
         use super::{{Field, Kind, Message}};\n"
    );
    let _ = writeln!(out, "/// Messages, sorted by name.");
    let _ = writeln!(out, "#[rustfmt::skip]");
    let _ = writeln!(out, "pub(super) static MESSAGES: &[Message] = &[");
    let mut by_name: BTreeMap<&str, &Message> = BTreeMap::new();
    for m in messages {
        by_name.insert(&m.name, m);
    }
    for m in by_name.values() {
        let _ = writeln!(out, "    Message {{ name: {:?}, fields: &[", m.name);
        let mut fields: Vec<&Field> = m.fields.iter().collect();
        fields.sort_by_key(|f| f.tag);
        for f in fields {
            let _ = writeln!(
                out,
                "        Field {{ tag: {}, json: {:?}, kind: {}, repeated: {}, inline: {} }}, // {}",
                f.tag, f.json, f.kind, f.repeated, f.inline, f.rust
            );
        }
        let _ = writeln!(out, "    ] }},");
    }
    let _ = writeln!(out, "];\n");
    let _ = writeln!(
        out,
        "/// (`apiVersion`, `kind`, message) of every resource, sorted."
    );
    let _ = writeln!(out, "#[rustfmt::skip]");
    let _ = writeln!(
        out,
        "pub(super) static RESOURCES: &[(&str, &str, &str)] = &["
    );
    for (v, k, m) in resources {
        let _ = writeln!(out, "    ({v:?}, {k:?}, {m:?}),");
    }
    let _ = writeln!(out, "];");
    out
}
