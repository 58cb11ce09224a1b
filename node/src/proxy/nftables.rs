//! The nftables dataplane: kube-proxy's nftables mode (KEP-3866), the second comparison peer of
//! the forwarding benchmark beside [`super::iptables`].
//!
//! Everything lives in one table, `ip kube-proxy`, laid out as kube-proxy lays it out:
//! - `nat-prerouting` and `nat-output` (priority -100, i.e. dstnat) jump to `services`, which
//!   looks packets up in two verdict maps: `service-ips` (`ClusterIP . protocol . port`) and, for
//!   local destination addresses outside 127.0.0.0/8, `service-nodeports` (`protocol . port`).
//! - A ClusterIP element goes to the service port's policy chain: `service-…` balances over every
//!   endpoint, `local-…` over this node's (`internalTrafficPolicy: Local`). Policy chains pick an
//!   endpoint with `numgen random mod N vmap { 0 : goto endpoint-…, … }`; with
//!   `sessionAffinity: ClientIP` one `ip saddr @affinity-… goto endpoint-…` per endpoint comes
//!   first, over a dynamic set with the service's timeout that the endpoint chain refreshes with
//!   `update`.
//! - A NodePort element goes to `external-…`, which marks for masquerade and continues to
//!   `service-…`; with `externalTrafficPolicy: Local` it keeps the client address and continues to
//!   `local-…`, except that traffic from the node itself is masqueraded and short-circuited to
//!   `service-…`.
//! - `endpoint-…` chains mark hairpin traffic (an endpoint reaching its own service) for
//!   masquerade, then DNAT; `nat-postrouting` → `masquerading` clears the mark of marked packets
//!   and masquerades them (`fully-random`).
//! - `filter-input`, `filter-forward` and `filter-output` (priority -110, before DNAT) send new
//!   connections through `endpoints-check`: the `no-endpoint-services` and
//!   `no-endpoint-nodeports` maps `goto reject-chain` for service ports without any endpoint (an
//!   ICMP error instead of a black hole) and `drop` those whose endpoints are all elsewhere under
//!   a Local policy.
//!
//! Names are kube-proxy's: `service-` + the first 8 characters of base32(sha256(base)) + `-` +
//! base, base being `namespace/name/protocol/port` (`service-ULMVA6XW-ns1/svc1/tcp/p80`), and for
//! endpoints `…__ip/port` (`endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80`; the affinity set
//! of an endpoint is the same name with `affinity-`). nft's scanner reads
//! `[A-Za-z_.][A-Za-z0-9/_.-]*` as one identifier, so these names are written unquoted; they
//! could not be quoted anyway, as nft 1.0's grammar takes no quoted string for a chain name. Any
//! other character (possible only in a state that skipped API validation) becomes `_` (the hash
//! still covers the original), so no name can break the script or inject a command.
//!
//! Updates are incremental, which is where nftables mode beats iptables mode: [`rendered`] turns
//! the state into one piece per service port (its chains and their rules, affinity sets and map
//! elements) and [`render_diff`] writes a single `nft -f` transaction with only what changed,
//! ordered so that every reference stays valid: new chains; flushes of changed and gone chains;
//! element deletions; deletions of gone chains (after the elements and rules pointing at them);
//! deletion and creation of sets (a set's timeout cannot change in place, so a set whose timeout
//! changed is recreated after the rules using it were flushed); rules; element additions.
//! [`Nftables`] keeps the last applied rendering and renders again only the service ports whose
//! frontend changed. Its first sync, and the sync after a failed one, deletes and recreates the
//! table in the same transaction, so a restarted proxy starts clean with no moment of missing
//! rules.
//!
//! Differences from kube-proxy: no ExternalIPs, LoadBalancer IPs or source ranges (the model has
//! none); no cluster CIDR, so neither the "masquerade off-cluster traffic to ClusterIPs" rule nor
//! the short-circuit of pod traffic in `external-…`; priorities are numbers (kube-proxy writes
//! `dstnat-10` etc., but nft 1.0 accepts `dstnat`/`srcnat` only on the prerouting/postrouting
//! hooks). kube-proxy deletes a stale chain a second after the map element pointing at it,
//! because kernels before 6.2 release that reference late; this dataplane deletes both in one
//! transaction and so needs a 6.2 or later kernel.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap, HashSet},
    io,
    net::Ipv4Addr,
    sync::Arc,
};

use sha2::{Digest, Sha256};

use super::model::{Backend, DesiredState, Frontend, Protocol, ServicePortName};

/// The table as nft commands address it: family `ip`, kube-proxy's table name.
pub const TABLE: &str = "ip kube-proxy";

const SERVICE_IPS: &str = "service-ips";
const SERVICE_NODEPORTS: &str = "service-nodeports";
const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
const MARK_MASQ: &str = "mark-for-masquerade";
/// Verdict for a service port without any endpoint.
const REJECT: &str = "goto reject-chain";
/// Longest name base: nft names have at most 255 bytes, 16 of which stay for the prefix
/// (kube-proxy's limit).
const NAME_BASE_MAX: usize = 240;
/// Longest element comment written (nft allows 255 bytes of user data).
const COMMENT_MAX: usize = 128;

/// The fixed part of the table, written by the first sync: the table (deleted first, should an
/// earlier process have left one), base chains, top-level chains, the verdict maps and the rules
/// that tie them together. The mark is kube-proxy's, as in [`super::iptables::MASQ_MARK`].
const BASE: &str = "\
add table ip kube-proxy
delete table ip kube-proxy
add table ip kube-proxy { comment \"rules for kube-proxy\" ; }
add chain ip kube-proxy filter-input { type filter hook input priority -110 ; }
add chain ip kube-proxy filter-forward { type filter hook forward priority -110 ; }
add chain ip kube-proxy filter-output { type filter hook output priority -110 ; }
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }
add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }
add chain ip kube-proxy services
add chain ip kube-proxy masquerading
add chain ip kube-proxy mark-for-masquerade
add chain ip kube-proxy endpoints-check
add chain ip kube-proxy reject-chain
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP traffic\" ; }
add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }
add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP traffic of services without endpoints\" ; }
add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment \"NodePort traffic of services without endpoints\" ; }
add rule ip kube-proxy filter-input ct state new jump endpoints-check
add rule ip kube-proxy filter-forward ct state new jump endpoints-check
add rule ip kube-proxy filter-output ct state new jump endpoints-check
add rule ip kube-proxy nat-prerouting jump services
add rule ip kube-proxy nat-output jump services
add rule ip kube-proxy nat-postrouting jump masquerading
add rule ip kube-proxy masquerading mark and 0x4000 == 0 return
add rule ip kube-proxy masquerading mark set mark xor 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000
add rule ip kube-proxy endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add rule ip kube-proxy endpoints-check fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports
add rule ip kube-proxy reject-chain reject
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
";

/// A rendering of the desired state: the fixed objects plus, per service port, its chains,
/// affinity sets and map elements. `Rendered::default()` stands for "no table at all".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    /// Whether the table and its fixed objects ([`BASE`]) exist.
    base: bool,
    /// One piece per service port; pieces share nothing but the maps their elements go into.
    ports: BTreeMap<ServicePortName, Arc<PortRules>>,
}

/// The objects of one service port.
#[derive(Debug, PartialEq, Eq)]
struct PortRules {
    /// What they were rendered from; reused while this stays the same.
    source: Source,
    /// Chains in the order their rules are written.
    chains: Vec<Chain>,
    /// Affinity sets and their timeouts in seconds.
    sets: Vec<(String, u32)>,
    /// Elements of the four verdict maps.
    elements: Vec<Element>,
}

/// The input of one [`PortRules`].
#[derive(Debug, PartialEq, Eq)]
struct Source {
    frontend: Frontend,
    /// Whether this port owns its `ClusterIP . protocol . port` key. Keys are unique in a valid
    /// cluster; if two frontends share one anyway, the first in name order takes it, since one
    /// transaction adding the same key twice would fail as a whole.
    owns_cluster_ip: bool,
    /// The same for `protocol . NodePort`.
    owns_node_port: bool,
}

/// One chain and its rules.
#[derive(Debug, PartialEq, Eq)]
struct Chain {
    name: String,
    rules: Vec<String>,
    /// Affinity sets the rules reference.
    sets: Vec<String>,
}

/// One element of a verdict map.
#[derive(Debug, PartialEq, Eq)]
struct Element {
    map: &'static str,
    key: String,
    comment: Option<String>,
    verdict: String,
}

impl Element {
    fn add(&self) -> String {
        match &self.comment {
            Some(comment) => format!(
                "add element {TABLE} {} {{ {} comment \"{comment}\" : {} }}",
                self.map, self.key, self.verdict
            ),
            None => format!(
                "add element {TABLE} {} {{ {} : {} }}",
                self.map, self.key, self.verdict
            ),
        }
    }

    fn delete(&self) -> String {
        format!("delete element {TABLE} {} {{ {} }}", self.map, self.key)
    }
}

/// Renders `state` (pure).
pub fn rendered(state: &DesiredState) -> Rendered {
    render_reusing(None, state)
}

/// A complete `nft -f` script for `state`: the table deleted if present and written whole (pure).
pub fn render_full(state: &DesiredState) -> String {
    render_diff(&Rendered::default(), &rendered(state))
}

/// [`rendered`], taking from `previous` the pieces of service ports whose input is unchanged
/// instead of rendering them again.
fn render_reusing(previous: Option<&Rendered>, state: &DesiredState) -> Rendered {
    let mut cluster_ips: HashSet<(Ipv4Addr, Protocol, u16)> = HashSet::new();
    let mut node_ports: HashSet<(Protocol, u16)> = HashSet::new();
    let mut ports = BTreeMap::new();
    for (name, f) in &state.frontends {
        let owns_cluster_ip = cluster_ips.insert((f.cluster_ip, f.name.protocol, f.port));
        let owns_node_port = f
            .node_port
            .is_none_or(|p| node_ports.insert((f.name.protocol, p)));
        let reused = previous
            .and_then(|p| p.ports.get(name))
            .filter(|r| {
                r.source.owns_cluster_ip == owns_cluster_ip
                    && r.source.owns_node_port == owns_node_port
                    && r.source.frontend == *f
            })
            .cloned();
        let rules = reused.unwrap_or_else(|| {
            Arc::new(render_port(Source {
                frontend: f.clone(),
                owns_cluster_ip,
                owns_node_port,
            }))
        });
        ports.insert(name.clone(), rules);
    }
    Rendered { base: true, ports }
}

/// `service-HASH-namespace/name/protocol/port`: the chain balancing over every endpoint of a
/// service port, named as kube-proxy names it (`local-` and `external-` share the suffix).
pub fn service_chain(f: &Frontend) -> String {
    format!("service-{}", service_base(f))
}

/// `endpoint-HASH-namespace/name/protocol/port__ip/port`: the chain that DNATs to one endpoint,
/// named as kube-proxy names it (its affinity set is `affinity-` with the same suffix).
pub fn endpoint_chain(f: &Frontend, b: &Backend) -> String {
    format!("endpoint-{}", endpoint_base(f, b))
}

fn service_base(f: &Frontend) -> String {
    hash_and_truncate(&format!(
        "{}/{}/{}/{}",
        f.name.namespace,
        f.name.name,
        f.name.protocol.as_str(),
        f.name.port
    ))
}

fn endpoint_base(f: &Frontend, b: &Backend) -> String {
    hash_and_truncate(&format!(
        "{}/{}/{}/{}__{}/{}",
        f.name.namespace,
        f.name.name,
        f.name.protocol.as_str(),
        f.name.port,
        b.ip,
        b.port
    ))
}

/// kube-proxy's `hashAndTruncate`: `HASH-base`, with characters nft would not read as part of a
/// name replaced by `_`.
fn hash_and_truncate(base: &str) -> String {
    let mut name = hash8(base);
    name.push('-');
    name.extend(base.chars().map(|c| {
        if c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.') {
            c
        } else {
            '_'
        }
    }));
    if name.len() > NAME_BASE_MAX {
        // All ASCII by now, so any byte offset is a character boundary.
        name.truncate(NAME_BASE_MAX - 3);
        name.push_str("...");
    }
    name
}

/// The first 8 characters of the RFC 4648 base32 encoding of sha256(`text`) (40 bits).
fn hash8(text: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(text.as_bytes());
    let bits = digest
        .iter()
        .take(5)
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    (0..8)
        .rev()
        .map(|i| char::from(ALPHABET[((bits >> (5 * i)) & 31) as usize]))
        .collect()
}

/// Text safe inside an nft quoted string.
fn comment_text(text: &str) -> String {
    text.chars()
        .take(COMMENT_MAX)
        .map(|c| {
            if c == ' ' || (c.is_ascii_graphic() && c != '"' && c != '\\') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The endpoints for "Cluster" traffic policy: every ready endpoint, or the serving terminating
/// ones when none is ready. The model's backend lists hold exactly this unless both policies are
/// Local; then it is derived from `serving` the way the model derives its lists.
fn cluster_policy_backends(f: &Frontend) -> Cow<'_, [Backend]> {
    if !f.internal_local {
        Cow::Borrowed(f.cluster_backends.as_slice())
    } else if !f.external_local {
        Cow::Borrowed(f.external_backends.as_slice())
    } else {
        let ready: Vec<Backend> = f
            .serving
            .iter()
            .filter(|b| !b.terminating)
            .cloned()
            .collect();
        if ready.is_empty() {
            Cow::Borrowed(f.serving.as_slice())
        } else {
            Cow::Owned(ready)
        }
    }
}

/// The chains, sets and elements of one service port.
fn render_port(source: Source) -> PortRules {
    let (chains, sets, elements) = render_objects(&source);
    PortRules {
        source,
        chains,
        sets,
        elements,
    }
}

/// [`render_port`]'s work: (chains, affinity sets, elements).
fn render_objects(source: &Source) -> (Vec<Chain>, Vec<(String, u32)>, Vec<Element>) {
    let f = &source.frontend;
    let proto = f.name.protocol.as_str();
    let base = service_base(f);
    let cluster_chain = format!("service-{base}");
    let local_chain = format!("local-{base}");
    let external_chain = format!("external-{base}");

    // kube-proxy's CategorizeEndpoints, over the model's lists (which already hold the ready
    // endpoints, or the serving terminating ones when none is ready).
    let cluster_eps = cluster_policy_backends(f);
    let local_eps: &[Backend] = if f.internal_local {
        &f.cluster_backends
    } else if f.external_local {
        &f.external_backends
    } else {
        &[]
    };
    let externally = f.node_port.is_some();
    let has_endpoints = !cluster_eps.is_empty() || !local_eps.is_empty();
    // The cluster chain also serves node-local traffic to a Local NodePort (short-circuit).
    let uses_cluster = !cluster_eps.is_empty() && (!f.internal_local || externally);
    let uses_local =
        !local_eps.is_empty() && (f.internal_local || (externally && f.external_local));
    let (internal_chain, has_internal) = if f.internal_local {
        (&local_chain, !local_eps.is_empty())
    } else {
        (&cluster_chain, !cluster_eps.is_empty())
    };
    let (external_policy_chain, has_external) = if f.external_local {
        (&local_chain, !local_eps.is_empty())
    } else {
        (&cluster_chain, !cluster_eps.is_empty())
    };
    // No endpoint anywhere: reject. Endpoints, but none for this policy: drop, as kube-proxy.
    let no_endpoints = if has_endpoints { "drop" } else { REJECT };
    let comment = Some(comment_text(&f.name.to_string()));

    let mut elements = Vec::new();
    if source.owns_cluster_ip {
        let key = format!("{} . {proto} . {}", f.cluster_ip, f.port);
        elements.push(if has_internal {
            Element {
                map: SERVICE_IPS,
                key,
                comment: None,
                verdict: format!("goto {internal_chain}"),
            }
        } else {
            Element {
                map: NO_ENDPOINT_SERVICES,
                key,
                comment: comment.clone(),
                verdict: no_endpoints.to_owned(),
            }
        });
    }
    if let Some(node_port) = f.node_port.filter(|_| source.owns_node_port) {
        let key = format!("{proto} . {node_port}");
        if has_endpoints {
            elements.push(Element {
                map: SERVICE_NODEPORTS,
                key: key.clone(),
                comment: None,
                verdict: format!("goto {external_chain}"),
            });
        }
        if !has_external {
            elements.push(Element {
                map: NO_ENDPOINT_NODEPORTS,
                key,
                comment: comment.clone(),
                verdict: no_endpoints.to_owned(),
            });
        }
    }

    let affinity = f.affinity_timeout.map(|t| t.max(1));
    let mut chains = Vec::new();
    let mut endpoints: Vec<&Backend> = Vec::new();
    if uses_cluster {
        chains.push(balance(f, &cluster_chain, &cluster_eps, affinity.is_some()));
        endpoints.extend(cluster_eps.iter());
    }
    if uses_local {
        chains.push(balance(f, &local_chain, local_eps, affinity.is_some()));
        endpoints.extend(local_eps);
    }
    if externally && has_endpoints {
        let mut rules = Vec::new();
        if !f.external_local {
            rules.push(format!("jump {MARK_MASQ}"));
        } else if uses_cluster {
            // The node's own address is the source: masquerade, and any endpoint will do.
            rules.push(format!(
                "fib saddr type local jump {MARK_MASQ} comment \"masquerade local traffic\""
            ));
            rules.push(format!(
                "fib saddr type local goto {cluster_chain} comment \"short-circuit local traffic\""
            ));
        }
        if has_external {
            rules.push(format!("goto {external_policy_chain}"));
        }
        chains.push(Chain {
            name: external_chain,
            rules,
            sets: Vec::new(),
        });
    }

    let mut sets = Vec::new();
    let mut seen = HashSet::new();
    for b in endpoints {
        let ep = endpoint_base(f, b);
        let name = format!("endpoint-{ep}");
        if !seen.insert(name.clone()) {
            continue;
        }
        let mut rules = vec![format!("ip saddr {} jump {MARK_MASQ}", b.ip)];
        let mut used = Vec::new();
        if let Some(timeout) = affinity {
            let set = format!("affinity-{ep}");
            rules.push(format!("update @{set} {{ ip saddr }}"));
            sets.push((set.clone(), timeout));
            used.push(set);
        }
        rules.push(format!("meta l4proto {proto} dnat to {}:{}", b.ip, b.port));
        chains.push(Chain {
            name,
            rules,
            sets: used,
        });
    }

    (chains, sets, elements)
}

/// A policy chain: affinity checks, then a random choice among `backends`.
fn balance(f: &Frontend, name: &str, backends: &[Backend], affinity: bool) -> Chain {
    let mut rules = Vec::new();
    let mut sets = Vec::new();
    let mut arms = Vec::with_capacity(backends.len());
    for (i, b) in backends.iter().enumerate() {
        let ep = endpoint_base(f, b);
        if affinity {
            let set = format!("affinity-{ep}");
            rules.push(format!("ip saddr @{set} goto endpoint-{ep}"));
            sets.push(set);
        }
        arms.push(format!("{i} : goto endpoint-{ep}"));
    }
    rules.push(format!(
        "numgen random mod {} vmap {{ {} }}",
        backends.len(),
        arms.join(", ")
    ));
    Chain {
        name: name.to_owned(),
        rules,
        sets,
    }
}

/// Writes the `nft -f` transaction that takes the table from `previous` to `next` (pure): empty
/// when nothing changed; the whole table when `previous` is `Rendered::default()`; the table's
/// deletion when `next` is.
pub fn render_diff(previous: &Rendered, next: &Rendered) -> String {
    if !next.base {
        return if previous.base {
            format!("add table {TABLE}\ndelete table {TABLE}\n")
        } else {
            String::new()
        };
    }
    let mut out = String::new();
    let none: BTreeMap<ServicePortName, Arc<PortRules>> = BTreeMap::new();
    let old = if previous.base {
        &previous.ports
    } else {
        out.push_str(BASE);
        &none
    };
    let mut ops = Ops::default();
    for (name, before) in old {
        match next.ports.get(name) {
            Some(after) if Arc::ptr_eq(before, after) || before == after => {}
            after => ops.port(Some(Arc::as_ref(before)), after.map(Arc::as_ref)),
        }
    }
    for (name, after) in &next.ports {
        if !old.contains_key(name) {
            ops.port(None, Some(Arc::as_ref(after)));
        }
    }
    ops.write(&mut out);
    out
}

/// The commands of one transaction, by phase (see the module docs for why this order).
#[derive(Default)]
struct Ops {
    add_chains: Vec<String>,
    flush_chains: Vec<String>,
    delete_elements: Vec<String>,
    delete_chains: Vec<String>,
    delete_sets: Vec<String>,
    add_sets: Vec<String>,
    add_rules: Vec<String>,
    add_elements: Vec<String>,
}

impl Ops {
    /// The commands that take one service port from `before` to `after` (`None`: absent).
    fn port(&mut self, before: Option<&PortRules>, after: Option<&PortRules>) {
        let old_sets = before.map(|p| p.sets.as_slice()).unwrap_or_default();
        let new_sets = after.map(|p| p.sets.as_slice()).unwrap_or_default();
        let old_timeouts: HashMap<&str, u32> =
            old_sets.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        let new_set_names: HashSet<&str> = new_sets.iter().map(|(n, _)| n.as_str()).collect();
        // Sets whose timeout changed: deleted and created again once no rule uses them.
        let mut reset: HashSet<&str> = HashSet::new();
        for (name, timeout) in new_sets {
            match old_timeouts.get(name.as_str()) {
                Some(old) if old == timeout => {}
                Some(_) => {
                    reset.insert(name.as_str());
                    self.delete_sets.push(format!("delete set {TABLE} {name}"));
                    self.add_sets.push(add_set(name, *timeout));
                }
                None => self.add_sets.push(add_set(name, *timeout)),
            }
        }
        for (name, _) in old_sets {
            if !new_set_names.contains(name.as_str()) {
                self.delete_sets.push(format!("delete set {TABLE} {name}"));
            }
        }

        let old_chains = before.map(|p| p.chains.as_slice()).unwrap_or_default();
        let new_chains = after.map(|p| p.chains.as_slice()).unwrap_or_default();
        let old_by_name: HashMap<&str, &Chain> =
            old_chains.iter().map(|c| (c.name.as_str(), c)).collect();
        let new_chain_names: HashSet<&str> = new_chains.iter().map(|c| c.name.as_str()).collect();
        for chain in new_chains {
            match old_by_name.get(chain.name.as_str()) {
                None => self
                    .add_chains
                    .push(format!("add chain {TABLE} {}", chain.name)),
                Some(old)
                    if old.rules == chain.rules
                        && !chain.sets.iter().any(|s| reset.contains(s.as_str())) =>
                {
                    continue;
                }
                Some(_) => self
                    .flush_chains
                    .push(format!("flush chain {TABLE} {}", chain.name)),
            }
            for rule in &chain.rules {
                self.add_rules
                    .push(format!("add rule {TABLE} {} {rule}", chain.name));
            }
        }
        for chain in old_chains {
            if !new_chain_names.contains(chain.name.as_str()) {
                // A chain must be empty to be deleted.
                self.flush_chains
                    .push(format!("flush chain {TABLE} {}", chain.name));
                self.delete_chains
                    .push(format!("delete chain {TABLE} {}", chain.name));
            }
        }

        let old_elements = before.map(|p| p.elements.as_slice()).unwrap_or_default();
        let new_elements = after.map(|p| p.elements.as_slice()).unwrap_or_default();
        for e in old_elements {
            if !new_elements.contains(e) {
                self.delete_elements.push(e.delete());
            }
        }
        for e in new_elements {
            if !old_elements.contains(e) {
                self.add_elements.push(e.add());
            }
        }
    }

    fn write(self, out: &mut String) {
        let phases = [
            self.add_chains,
            self.flush_chains,
            self.delete_elements,
            self.delete_chains,
            self.delete_sets,
            self.add_sets,
            self.add_rules,
            self.add_elements,
        ];
        for line in phases.iter().flatten() {
            out.push_str(line);
            out.push('\n');
        }
    }
}

fn add_set(name: &str, timeout: u32) -> String {
    format!(
        "add set {TABLE} {name} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {timeout}s ; }}"
    )
}

/// Applies renderings with the real `nft`, optionally inside a network namespace (`ip netns
/// exec`), remembering what it applied so that the next sync writes only the difference.
#[derive(Debug, Clone)]
pub struct Nftables {
    netns: Option<String>,
    /// What the table holds after the last successful sync; `None` makes the next sync rewrite
    /// the whole table.
    applied: Option<Rendered>,
}

impl Nftables {
    /// The table in the current network namespace (`None`) or in the named one.
    pub fn new(netns: Option<&str>) -> Self {
        Self {
            netns: netns.map(str::to_owned),
            applied: None,
        }
    }

    fn apply(&self, script: &str) -> io::Result<()> {
        if script.is_empty() {
            return Ok(());
        }
        crate::command::run(self.netns.as_deref(), "nft", &["-f", "-"], Some(script)).map(drop)
    }

    /// Brings the table to `state` in one `nft -f -` transaction: the whole table on the first
    /// sync, only what changed afterwards (nothing at all, not even a process, when nothing
    /// did). If an incremental transaction fails (say the table was changed behind our back), the
    /// whole table is written at once; if that fails too, the error is returned and the next
    /// sync starts from scratch.
    pub fn sync(&mut self, state: &DesiredState) -> io::Result<()> {
        let previous = self.applied.take();
        let next = render_reusing(previous.as_ref(), state);
        let nothing = Rendered::default();
        let result = match self.apply(&render_diff(previous.as_ref().unwrap_or(&nothing), &next)) {
            Err(e) if previous.is_some() => {
                tracing::warn!(error = %e, "nftables update failed; rewriting the whole table");
                self.apply(&render_diff(&nothing, &next))
            }
            other => other,
        };
        result?;
        self.applied = Some(next);
        Ok(())
    }

    /// Deletes the table (fine if there is none), like `kube-proxy --cleanup`; the next sync
    /// writes it whole again.
    pub fn cleanup(&mut self) -> io::Result<()> {
        self.applied = None;
        self.apply(&format!("add table {TABLE}\ndelete table {TABLE}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(ip: [u8; 4], port: u16, local: bool) -> Backend {
        Backend {
            ip: Ipv4Addr::from(ip),
            port,
            local,
            terminating: false,
        }
    }

    /// A ClusterIP frontend with cluster-wide policies balancing over `backends`.
    fn frontend(
        ns: &str,
        name: &str,
        port_name: &str,
        protocol: Protocol,
        cluster_ip: [u8; 4],
        port: u16,
        backends: Vec<Backend>,
    ) -> Frontend {
        Frontend {
            name: ServicePortName {
                namespace: ns.into(),
                name: name.into(),
                port: port_name.into(),
                protocol,
            },
            cluster_ip: Ipv4Addr::from(cluster_ip),
            port,
            node_port: None,
            external_ips: Vec::new(),
            affinity_timeout: None,
            internal_local: false,
            external_local: false,
            cluster_backends: backends.clone(),
            external_backends: backends.clone(),
            serving: backends,
        }
    }

    fn state(frontends: impl IntoIterator<Item = Frontend>) -> DesiredState {
        DesiredState {
            frontends: frontends.into_iter().map(|f| (f.name.clone(), f)).collect(),
        }
    }

    /// `ns1/svc1:p80`, kube-proxy's test service, with `n` endpoints 10.180.0.1.. on port 80.
    fn svc1(n: u8) -> Frontend {
        let backends = (1..=n)
            .map(|i| backend([10, 180, 0, i], 80, i == 1))
            .collect();
        frontend(
            "ns1",
            "svc1",
            "p80",
            Protocol::Tcp,
            [10, 96, 0, 41],
            80,
            backends,
        )
    }

    /// 100 services `ns/svcN:http`, two endpoints each.
    fn many() -> DesiredState {
        state((0..100u8).map(|i| {
            frontend(
                "ns",
                &format!("svc{i}"),
                "http",
                Protocol::Tcp,
                [10, 96, 1, i],
                80,
                vec![
                    backend([10, 181, i, 1], 8080, true),
                    backend([10, 181, i, 2], 8080, false),
                ],
            )
        }))
    }

    /// The lines of `script` that are not part of [`BASE`].
    fn own_lines(script: &str) -> Vec<&str> {
        script
            .lines()
            .filter(|l| !BASE.lines().any(|b| b == *l))
            .collect()
    }

    #[test]
    fn names_are_kube_proxys() {
        // kube-proxy's own test expectations (pkg/proxy/nftables/proxier_test.go).
        let f = svc1(1);
        assert_eq!(service_chain(&f), "service-ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(
            endpoint_chain(&f, &f.cluster_backends[0]),
            "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
        // Characters nft would not read as part of a name cannot reach the script.
        let bad = frontend(
            "n s",
            "a;b\n",
            "x\"y",
            Protocol::Udp,
            [10, 96, 0, 1],
            53,
            vec![],
        );
        let name = service_chain(&bad);
        assert!(name.ends_with("-n_s/a_b_/udp/x_y"), "{name}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c))
        );
        let long = frontend(
            "ns",
            &"a".repeat(300),
            "",
            Protocol::Tcp,
            [10, 96, 0, 1],
            80,
            vec![],
        );
        assert_eq!(service_chain(&long).len(), "service-".len() + NAME_BASE_MAX);
        assert_eq!(hash8("foobar").len(), 8);
    }

    #[test]
    fn full_render_matches_kube_proxy_layout() {
        let mut web = svc1(1);
        web.node_port = Some(30080);
        let remote = backend([10, 180, 1, 1], 80, false);
        web.cluster_backends.push(remote.clone());
        web.external_backends.push(remote.clone());
        web.serving.push(remote);
        let empty = frontend(
            "ns2",
            "svc2",
            "p53",
            Protocol::Udp,
            [10, 96, 0, 42],
            53,
            vec![],
        );
        let script = render_full(&state([web, empty]));
        assert!(script.starts_with(BASE));
        // Loaded as is into nft 1.0.6 in a scratch network namespace.
        expect_test::expect![[r#"
            add chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80
            add chain ip kube-proxy external-ULMVA6XW-ns1/svc1/tcp/p80
            add chain ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
            add chain ip kube-proxy endpoint-B7I4G2ZB-ns1/svc1/tcp/p80__10.180.1.1/80
            add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 2 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80, 1 : goto endpoint-B7I4G2ZB-ns1/svc1/tcp/p80__10.180.1.1/80 }
            add rule ip kube-proxy external-ULMVA6XW-ns1/svc1/tcp/p80 jump mark-for-masquerade
            add rule ip kube-proxy external-ULMVA6XW-ns1/svc1/tcp/p80 goto service-ULMVA6XW-ns1/svc1/tcp/p80
            add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 ip saddr 10.180.0.1 jump mark-for-masquerade
            add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80
            add rule ip kube-proxy endpoint-B7I4G2ZB-ns1/svc1/tcp/p80__10.180.1.1/80 ip saddr 10.180.1.1 jump mark-for-masquerade
            add rule ip kube-proxy endpoint-B7I4G2ZB-ns1/svc1/tcp/p80__10.180.1.1/80 meta l4proto tcp dnat to 10.180.1.1:80
            add element ip kube-proxy service-ips { 10.96.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }
            add element ip kube-proxy service-nodeports { tcp . 30080 : goto external-ULMVA6XW-ns1/svc1/tcp/p80 }
            add element ip kube-proxy no-endpoint-services { 10.96.0.42 . udp . 53 comment "ns2/svc2:p53" : goto reject-chain }
        "#]]
        .assert_eq(&script[BASE.len()..]);
    }

    #[test]
    fn cluster_ips_dispatch_to_a_numgen_vmap() {
        let script = render_full(&state([svc1(3)]));
        assert!(script.contains(
            "add element ip kube-proxy service-ips { 10.96.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }\n"
        ));
        let numgen = script
            .lines()
            .find(|l| l.contains("numgen random mod 3 vmap"))
            .unwrap();
        assert!(numgen.starts_with("add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 "));
        assert_eq!(numgen.matches(" : goto endpoint-").count(), 3);
        for i in 1..=3 {
            assert!(script.contains(&format!("dnat to 10.180.0.{i}:80\n")));
        }
        // Chains exist before anything refers to them.
        let first_use = |what: &str| script.find(&format!("goto {what}")).unwrap();
        let created = |what: &str| {
            script
                .find(&format!("add chain ip kube-proxy {what}\n"))
                .unwrap()
        };
        let svc = "service-ULMVA6XW-ns1/svc1/tcp/p80";
        assert!(created(svc) < first_use(svc));
        let ep = "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80";
        assert!(created(ep) < first_use(ep));
    }

    #[test]
    fn services_without_endpoints_are_rejected_or_dropped() {
        let empty = frontend(
            "ns2",
            "svc2",
            "p53",
            Protocol::Udp,
            [10, 96, 0, 42],
            53,
            vec![],
        );
        // internalTrafficPolicy: Local with endpoints on other nodes only: drop, not reject.
        let mut elsewhere = svc1(0);
        elsewhere.internal_local = true;
        elsewhere.serving = vec![backend([10, 180, 1, 1], 80, false)];
        elsewhere.external_backends = elsewhere.serving.clone();
        let script = render_full(&state([empty, elsewhere]));
        assert_eq!(
            own_lines(&script),
            [
                "add element ip kube-proxy no-endpoint-services { 10.96.0.41 . tcp . 80 comment \"ns1/svc1:p80\" : drop }",
                "add element ip kube-proxy no-endpoint-services { 10.96.0.42 . udp . 53 comment \"ns2/svc2:p53\" : goto reject-chain }",
            ]
        );
    }

    #[test]
    fn node_ports_go_through_the_external_chain() {
        let mut cluster = svc1(2);
        cluster.node_port = Some(30080);
        let script = render_full(&state([cluster.clone()]));
        let ext = "external-ULMVA6XW-ns1/svc1/tcp/p80";
        assert!(script.contains(&format!(
            "add element ip kube-proxy service-nodeports {{ tcp . 30080 : goto {ext} }}\n"
        )));
        assert!(script.contains(&format!(
            "add rule ip kube-proxy {ext} jump mark-for-masquerade\nadd rule ip kube-proxy {ext} goto service-ULMVA6XW-ns1/svc1/tcp/p80\n"
        )));

        // externalTrafficPolicy: Local keeps the client address and this node's endpoints.
        let mut local = cluster;
        local.external_local = true;
        local.external_backends.retain(|b| b.local);
        let script = render_full(&state([local.clone()]));
        let ext_rules: Vec<&str> = script
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("add rule ip kube-proxy {ext} ")))
            .collect();
        assert_eq!(
            ext_rules,
            [
                "fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\"",
                "fib saddr type local goto service-ULMVA6XW-ns1/svc1/tcp/p80 comment \"short-circuit local traffic\"",
                "goto local-ULMVA6XW-ns1/svc1/tcp/p80",
            ]
        );
        assert!(script.contains(
            "add rule ip kube-proxy local-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }\n"
        ));
        assert!(!script.contains("add element ip kube-proxy no-endpoint-nodeports"));

        // No local endpoint: NodePort traffic is dropped (node-local traffic short-circuits).
        local.external_backends.clear();
        let script = render_full(&state([local]));
        assert!(script.contains(
            "add element ip kube-proxy no-endpoint-nodeports { tcp . 30080 comment \"ns1/svc1:p80\" : drop }\n"
        ));
        assert!(script.contains(&format!(
            "add element ip kube-proxy service-nodeports {{ tcp . 30080 : goto {ext} }}\n"
        )));
        assert!(!script.contains("local-ULMVA6XW"));
    }

    #[test]
    fn client_ip_affinity_uses_timeout_sets() {
        let mut f = svc1(2);
        f.affinity_timeout = Some(600);
        let script = render_full(&state([f]));
        let ep = "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80";
        let set = format!(
            "add set ip kube-proxy affinity-{ep} {{ type ipv4_addr ; flags dynamic,timeout ; timeout 600s ; }}\n"
        );
        let check = format!(
            "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip saddr @affinity-{ep} goto endpoint-{ep}\n"
        );
        let update =
            format!("add rule ip kube-proxy endpoint-{ep} update @affinity-{ep} {{ ip saddr }}\n");
        let position = |s: &str| script.find(s).unwrap();
        assert!(position(&set) < position(&check));
        assert!(position(&check) < position("numgen random mod 2"));
        assert!(position(&update) < position("dnat to 10.180.0.1:80"));
        assert_eq!(script.matches("add set ").count(), 2);
    }

    #[test]
    fn identical_states_give_an_empty_diff() {
        let before = rendered(&many());
        assert_eq!(render_diff(&before, &rendered(&many())), "");
        assert_eq!(
            render_diff(&before, &render_reusing(Some(&before), &many())),
            ""
        );
        assert_eq!(render_diff(&Rendered::default(), &Rendered::default()), "");
        assert_eq!(
            render_diff(&before, &Rendered::default()),
            "add table ip kube-proxy\ndelete table ip kube-proxy\n"
        );
    }

    #[test]
    fn one_changed_service_touches_only_its_objects() {
        let before = rendered(&many());
        let mut changed = many();
        let key = changed
            .frontends
            .keys()
            .find(|k| k.name == "svc42")
            .unwrap()
            .clone();
        let f = changed.frontends.get_mut(&key).unwrap();
        f.cluster_backends.truncate(1);
        f.cluster_backends
            .push(backend([10, 181, 42, 3], 8080, false));
        let after = render_reusing(Some(&before), &changed);
        let script = render_diff(&before, &after);
        assert!(!script.is_empty());
        for line in script.lines() {
            assert!(line.contains("-ns/svc42/tcp/http"), "{line}");
        }
        let ep2 = "ns/svc42/tcp/http__10.181.42.2/8080";
        let ep3 = "ns/svc42/tcp/http__10.181.42.3/8080";
        // The new endpoint's chain first, the old one's flushed before it is deleted.
        let first = script.lines().next().unwrap();
        assert!(first.starts_with("add chain ip kube-proxy endpoint-") && first.ends_with(ep3));
        let position = |s: &str| script.find(s).unwrap();
        assert!(position("flush chain ip kube-proxy service-") < position("delete chain "));
        assert!(script.contains(&format!("{ep2}\ndelete chain ip kube-proxy endpoint-")));
        assert_eq!(script.matches("delete chain ").count(), 1);
        // Nothing else was rendered again.
        let reused = before
            .ports
            .iter()
            .filter(|(name, rules)| Arc::ptr_eq(*rules, &after.ports[*name]))
            .count();
        assert_eq!(reused, 99);
    }

    #[test]
    fn removed_service_deletes_elements_before_chains() {
        let before = rendered(&many());
        let mut smaller = many();
        smaller.frontends.retain(|k, _| k.name != "svc7");
        let script = render_diff(&before, &rendered(&smaller));
        for line in script.lines() {
            assert!(
                line.contains("-ns/svc7/tcp/http") || line.contains("10.96.1.7 "),
                "{line}"
            );
        }
        let position = |s: &str| script.find(s).unwrap();
        let element =
            position("delete element ip kube-proxy service-ips { 10.96.1.7 . tcp . 80 }\n");
        let flush = position("flush chain ip kube-proxy service-");
        let chain = position("delete chain ip kube-proxy service-");
        assert!(flush < element && element < chain);
        assert_eq!(script.matches("delete chain ").count(), 3);
        assert!(!script.contains("add "));
    }

    #[test]
    fn changed_affinity_timeout_recreates_sets_after_flushing_their_users() {
        let mut f = svc1(1);
        f.affinity_timeout = Some(600);
        let before = rendered(&state([f.clone()]));
        f.affinity_timeout = Some(60);
        let script = render_diff(&before, &rendered(&state([f])));
        let set = "affinity-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80";
        let position = |s: &str| script.find(s).unwrap();
        let flushes = script
            .lines()
            .filter(|l| l.starts_with("flush chain "))
            .count();
        assert_eq!(flushes, 2);
        assert!(position("flush chain") < position(&format!("delete set ip kube-proxy {set}\n")));
        assert!(
            position(&format!("delete set ip kube-proxy {set}\n"))
                < position(&format!("add set ip kube-proxy {set} "))
        );
        assert!(position("timeout 60s") < position("add rule "));
        assert!(!script.contains("add chain "));
    }

    #[test]
    fn a_key_is_written_once_even_if_two_frontends_claim_it() {
        let a = svc1(1);
        let mut b = svc1(1);
        b.name.name = "svc1-copy".into();
        let script = render_full(&state([a, b]));
        assert_eq!(script.matches("{ 10.96.0.41 . tcp . 80 ").count(), 1);
    }
}
