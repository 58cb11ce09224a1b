//! The iptables dataplane: kube-proxy-compatible rules, so the benchmark compares rudder's eBPF
//! datapath with the real thing.
//!
//! [`render`] is pure: desired state in, `iptables-restore --noflush` input out. The chain layout
//! and names are kube-proxy's (iptables mode):
//! - `nat`: `KUBE-SERVICES` matches ClusterIP:port and jumps to `KUBE-SVC-<hash>`, which picks an
//!   endpoint with `-m statistic --mode random --probability 1/(n-i)` and jumps to
//!   `KUBE-SEP-<hash>` (DNAT); `sessionAffinity: ClientIP` uses `-m recent`; NodePorts go through
//!   `KUBE-NODEPORTS` → `KUBE-EXT-<hash>` (masquerade, then the service chain, or the node-local
//!   `KUBE-SVL-<hash>` for `externalTrafficPolicy: Local`); hairpin traffic (an endpoint reaching
//!   its own service) is marked for masquerade in `KUBE-SEP-*` and SNATed in `KUBE-POSTROUTING`.
//! - `filter`: services without endpoints REJECT in `KUBE-SERVICES` / `KUBE-EXTERNAL-SERVICES`,
//!   so clients fail fast instead of timing out.
//!
//! Chain names are `KUBE-SVC-` + the first 16 characters of base32(sha256(name + protocol)), as
//! kube-proxy computes them. Chains of services that went away are flushed and deleted (`-X`).

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use super::model::{Backend, DesiredState, Frontend};

/// The packet mark kube-proxy uses for "masquerade this".
pub const MASQ_MARK: &str = "0x4000";

fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let mut buffer = 0u32;
    let mut bits = 0;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn hash16(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    base32(&digest)[..16].to_owned()
}

/// `KUBE-SVC-...` for a frontend (also the base of the EXT/SVL names).
pub fn service_chain(f: &Frontend, prefix: &str) -> String {
    format!(
        "{prefix}{}",
        hash16(&format!("{}{}", f.name, f.name.protocol.as_str()))
    )
}

/// `KUBE-SEP-...` for one backend of a frontend.
pub fn endpoint_chain(f: &Frontend, b: &Backend) -> String {
    format!(
        "KUBE-SEP-{}",
        hash16(&format!(
            "{}{}{}:{}",
            f.name,
            f.name.protocol.as_str(),
            b.ip,
            b.port
        ))
    )
}

/// Renders the rules for `state`. `stale` lists `KUBE-SVC/SEP/EXT/SVL` chains that exist now
/// (from `iptables-save`); those not rendered again are deleted.
pub fn render(state: &DesiredState, stale: &BTreeSet<String>) -> String {
    let mut chains: Vec<String> = vec![
        "KUBE-SERVICES".into(),
        "KUBE-NODEPORTS".into(),
        "KUBE-POSTROUTING".into(),
        "KUBE-MARK-MASQ".into(),
    ];
    let mut rules: Vec<String> = vec![
        format!("-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"),
        format!("-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}"),
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully".into(),
        format!("-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"),
    ];
    let mut filter_rules: Vec<String> = Vec::new();
    for f in state.frontends.values() {
        let proto = f.name.protocol.as_str();
        let svc = service_chain(f, "KUBE-SVC-");
        if f.cluster_backends.is_empty() {
            filter_rules.push(format!(
                "-A KUBE-SERVICES -m comment --comment \"{} has no endpoints\" -m {proto} -p {proto} -d {}/32 --dport {} -j REJECT",
                f.name, f.cluster_ip, f.port
            ));
        } else {
            rules.push(format!(
                "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m {proto} -p {proto} -d {}/32 --dport {} -j {svc}",
                f.name, f.cluster_ip, f.port
            ));
            chains.push(svc.clone());
            balance(f, &svc, &f.cluster_backends, &mut chains, &mut rules);
        }
        let Some(node_port) = f.node_port else {
            continue;
        };
        if f.external_backends.is_empty() {
            filter_rules.push(format!(
                "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"{} has no local endpoints\" -m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {node_port} -j REJECT",
                f.name
            ));
            continue;
        }
        let ext = service_chain(f, "KUBE-EXT-");
        chains.push(ext.clone());
        rules.push(format!(
            "-A KUBE-NODEPORTS -m comment --comment {} -m {proto} -p {proto} --dport {node_port} -j {ext}",
            f.name
        ));
        if f.external_local {
            // Local policy keeps the client address: no masquerade, node-local endpoints only.
            let svl = service_chain(f, "KUBE-SVL-");
            chains.push(svl.clone());
            rules.push(format!("-A {ext} -j {svl}"));
            balance(f, &svl, &f.external_backends, &mut chains, &mut rules);
        } else {
            rules.push(format!(
                "-A {ext} -m comment --comment \"masquerade traffic for {} external destinations\" -j KUBE-MARK-MASQ",
                f.name
            ));
            rules.push(format!("-A {ext} -j {svc}"));
            if f.cluster_backends.is_empty() {
                chains.push(svc.clone());
                balance(f, &svc, &f.external_backends, &mut chains, &mut rules);
            }
        }
    }
    rules.push("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS".into());
    chains.dedup();
    let live: BTreeSet<&String> = chains.iter().collect();
    let gone: Vec<&String> = stale.iter().filter(|c| !live.contains(c)).collect();

    let mut out =
        String::from("*filter\n:KUBE-SERVICES - [0:0]\n:KUBE-EXTERNAL-SERVICES - [0:0]\n");
    for r in &filter_rules {
        out.push_str(r);
        out.push('\n');
    }
    out.push_str("COMMIT\n*nat\n");
    for c in chains.iter().chain(gone.iter().copied()) {
        out.push_str(&format!(":{c} - [0:0]\n"));
    }
    for r in &rules {
        out.push_str(r);
        out.push('\n');
    }
    for c in gone {
        out.push_str(&format!("-X {c}\n"));
    }
    out.push_str("COMMIT\n");
    out
}

/// Rules of one service chain: affinity checks, then random choice among `backends`, then the
/// endpoint chains.
fn balance(
    f: &Frontend,
    chain: &str,
    backends: &[Backend],
    chains: &mut Vec<String>,
    rules: &mut Vec<String>,
) {
    let proto = f.name.protocol.as_str();
    let seps: Vec<String> = backends.iter().map(|b| endpoint_chain(f, b)).collect();
    if let Some(timeout) = f.affinity_timeout {
        for (b, sep) in backends.iter().zip(&seps) {
            rules.push(format!(
                "-A {chain} -m comment --comment \"{} -> {}:{}\" -m recent --name {sep} --rcheck --seconds {timeout} --reap -j {sep}",
                f.name, b.ip, b.port
            ));
        }
    }
    let n = backends.len();
    for (i, (b, sep)) in backends.iter().zip(&seps).enumerate() {
        let comment = format!("-m comment --comment \"{} -> {}:{}\"", f.name, b.ip, b.port);
        if i + 1 < n {
            let probability = 1.0 / (n - i) as f64;
            rules.push(format!(
                "-A {chain} {comment} -m statistic --mode random --probability {probability:.10} -j {sep}"
            ));
        } else {
            rules.push(format!("-A {chain} {comment} -j {sep}"));
        }
    }
    for (b, sep) in backends.iter().zip(seps) {
        if chains.contains(&sep) {
            continue;
        }
        chains.push(sep.clone());
        rules.push(format!(
            "-A {sep} -m comment --comment {} -s {}/32 -j KUBE-MARK-MASQ",
            f.name, b.ip
        ));
        let recent = if f.affinity_timeout.is_some() {
            format!(" -m recent --name {sep} --set")
        } else {
            String::new()
        };
        rules.push(format!(
            "-A {sep} -m comment --comment {}{recent} -m {proto} -p {proto} -j DNAT --to-destination {}:{}",
            f.name, b.ip, b.port
        ));
    }
}

/// Jump rules that hook kube-proxy's chains into the built-in ones, as kube-proxy installs them:
/// (table, built-in chain, rule).
const JUMPS: [(&str, &str, &str); 7] = [
    (
        "nat",
        "PREROUTING",
        "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "nat",
        "OUTPUT",
        "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "nat",
        "POSTROUTING",
        "-m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
    ),
    (
        "filter",
        "FORWARD",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "filter",
        "OUTPUT",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ),
    (
        "filter",
        "INPUT",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
    ),
    (
        "filter",
        "FORWARD",
        "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
    ),
];

/// Applies rendered rules with the real `iptables-restore`, optionally inside a network
/// namespace (`ip netns exec`), which is how the lab and the benchmark run it.
#[derive(Debug, Clone)]
pub struct Iptables {
    netns: Option<String>,
}

impl Iptables {
    /// Rules in the current network namespace (`None`) or in the named one.
    pub fn new(netns: Option<&str>) -> Self {
        Self {
            netns: netns.map(str::to_owned),
        }
    }

    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> std::io::Result<String> {
        crate::command::run(self.netns.as_deref(), program, args, stdin)
    }

    /// The per-service chains that exist now in the nat table.
    pub fn existing_chains(&self) -> std::io::Result<BTreeSet<String>> {
        let saved = self.run("iptables-save", &["-t", "nat"], None)?;
        Ok(saved
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| {
                ["KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-SVL-"]
                    .iter()
                    .any(|p| c.starts_with(p))
            })
            .map(str::to_owned)
            .collect())
    }

    /// Writes the rules for `state` in one `iptables-restore --noflush` transaction, deleting the
    /// chains of services that are gone, then makes sure the jump rules exist.
    pub fn sync(&self, state: &DesiredState) -> std::io::Result<()> {
        let stale = self.existing_chains()?;
        self.run(
            "iptables-restore",
            &["--noflush"],
            Some(&render(state, &stale)),
        )?;
        for (table, chain, rule) in JUMPS {
            let args = split_rule(rule);
            let mut check = vec!["-w", "-t", table, "-C", chain];
            check.extend(args.iter().map(String::as_str));
            if self.run("iptables", &check, None).is_err() {
                let mut insert = vec!["-w", "-t", table, "-I", chain];
                insert.extend(args.iter().map(String::as_str));
                self.run("iptables", &insert, None)?;
            }
        }
        Ok(())
    }

    /// Removes every rule and chain [`Iptables::sync`] made.
    pub fn cleanup(&self) -> std::io::Result<()> {
        for (table, chain, rule) in JUMPS {
            let args = split_rule(rule);
            let mut delete = vec!["-w", "-t", table, "-D", chain];
            delete.extend(args.iter().map(String::as_str));
            while self.run("iptables", &delete, None).is_ok() {}
        }
        let mut restore = String::from(
            "*filter\n:KUBE-SERVICES - [0:0]\n:KUBE-EXTERNAL-SERVICES - [0:0]\n-X KUBE-SERVICES\n-X KUBE-EXTERNAL-SERVICES\nCOMMIT\n*nat\n",
        );
        let mut chains: Vec<String> = self.existing_chains()?.into_iter().collect();
        chains.extend(
            [
                "KUBE-SERVICES",
                "KUBE-NODEPORTS",
                "KUBE-POSTROUTING",
                "KUBE-MARK-MASQ",
            ]
            .map(String::from),
        );
        for c in &chains {
            restore.push_str(&format!(":{c} - [0:0]\n"));
        }
        for c in &chains {
            restore.push_str(&format!("-X {c}\n"));
        }
        restore.push_str("COMMIT\n");
        self.run("iptables-restore", &["--noflush"], Some(&restore))
            .map(drop)
    }
}

/// Splits a rule into arguments, honouring double quotes (comments contain spaces).
fn split_rule(rule: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for ch in rule.chars() {
        match ch {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !current.is_empty() {
                    args.push(std::mem::take(&mut current));
                }
            }
            _ => current.push(ch),
        }
    }
    if !current.is_empty() {
        args.push(current);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::{Objects, build};

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"f"), "MY");
    }

    #[test]
    fn chain_names_are_kube_proxys() {
        // Chain names every Kubernetes cluster has, as kube-proxy names them.
        let frontend = |ns: &str, name: &str, port: &str, protocol| Frontend {
            name: crate::proxy::model::ServicePortName {
                namespace: ns.into(),
                name: name.into(),
                port: port.into(),
                protocol,
            },
            cluster_ip: std::net::Ipv4Addr::UNSPECIFIED,
            port: 0,
            node_port: None,
            external_ips: Vec::new(),
            affinity_timeout: None,
            internal_local: false,
            external_local: false,
            cluster_backends: Vec::new(),
            external_backends: Vec::new(),
            serving: Vec::new(),
        };
        use crate::proxy::model::Protocol;
        assert_eq!(
            service_chain(
                &frontend("kube-system", "kube-dns", "dns", Protocol::Udp),
                "KUBE-SVC-"
            ),
            "KUBE-SVC-TCOU7JCQXEZGVUNU"
        );
        assert_eq!(
            service_chain(
                &frontend("kube-system", "kube-dns", "dns-tcp", Protocol::Tcp),
                "KUBE-SVC-"
            ),
            "KUBE-SVC-ERIFXISQEP7F7OF4"
        );
        assert_eq!(
            service_chain(
                &frontend("default", "kubernetes", "https", Protocol::Tcp),
                "KUBE-SVC-"
            ),
            "KUBE-SVC-NPX46M4PTMTKRN6Y"
        );
    }

    #[test]
    fn rules_match_kube_proxy_layout() {
        let objects = Objects::from_yaml(
            r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.244.0.5], nodeName: n1}
- {addresses: [10.244.0.6], nodeName: n1}
- {addresses: [10.244.0.7], nodeName: n2}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec:
  clusterIP: 10.96.0.30
  sessionAffinity: ClientIP
  ports: [{port: 53, protocol: UDP}]
"#,
        )
        .unwrap();
        let state = build(&objects, "n1");
        let stale: BTreeSet<String> = ["KUBE-SVC-OLDOLDOLDOLDOLDO".to_owned()].into();
        expect_test::expect![[r#"
            *filter
            :KUBE-SERVICES - [0:0]
            :KUBE-EXTERNAL-SERVICES - [0:0]
            -A KUBE-SERVICES -m comment --comment "default/empty has no endpoints" -m udp -p udp -d 10.96.0.30/32 --dport 53 -j REJECT
            COMMIT
            *nat
            :KUBE-SERVICES - [0:0]
            :KUBE-NODEPORTS - [0:0]
            :KUBE-POSTROUTING - [0:0]
            :KUBE-MARK-MASQ - [0:0]
            :KUBE-SVC-CDGGSHYLG3RE2FKL - [0:0]
            :KUBE-SEP-7U6MWNJWR3SADOJA - [0:0]
            :KUBE-SEP-WBD4CCV6JIIBARLY - [0:0]
            :KUBE-SEP-T2IEUACZRFGGXOE4 - [0:0]
            :KUBE-EXT-CDGGSHYLG3RE2FKL - [0:0]
            :KUBE-SVC-OLDOLDOLDOLDOLDO - [0:0]
            -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
            -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
            -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
            -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
            -A KUBE-SERVICES -m comment --comment "default/web:http cluster IP" -m tcp -p tcp -d 10.96.0.20/32 --dport 80 -j KUBE-SVC-CDGGSHYLG3RE2FKL
            -A KUBE-SVC-CDGGSHYLG3RE2FKL -m comment --comment "default/web:http -> 10.244.0.5:8080" -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-7U6MWNJWR3SADOJA
            -A KUBE-SVC-CDGGSHYLG3RE2FKL -m comment --comment "default/web:http -> 10.244.0.6:8080" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-WBD4CCV6JIIBARLY
            -A KUBE-SVC-CDGGSHYLG3RE2FKL -m comment --comment "default/web:http -> 10.244.0.7:8080" -j KUBE-SEP-T2IEUACZRFGGXOE4
            -A KUBE-SEP-7U6MWNJWR3SADOJA -m comment --comment default/web:http -s 10.244.0.5/32 -j KUBE-MARK-MASQ
            -A KUBE-SEP-7U6MWNJWR3SADOJA -m comment --comment default/web:http -m tcp -p tcp -j DNAT --to-destination 10.244.0.5:8080
            -A KUBE-SEP-WBD4CCV6JIIBARLY -m comment --comment default/web:http -s 10.244.0.6/32 -j KUBE-MARK-MASQ
            -A KUBE-SEP-WBD4CCV6JIIBARLY -m comment --comment default/web:http -m tcp -p tcp -j DNAT --to-destination 10.244.0.6:8080
            -A KUBE-SEP-T2IEUACZRFGGXOE4 -m comment --comment default/web:http -s 10.244.0.7/32 -j KUBE-MARK-MASQ
            -A KUBE-SEP-T2IEUACZRFGGXOE4 -m comment --comment default/web:http -m tcp -p tcp -j DNAT --to-destination 10.244.0.7:8080
            -A KUBE-NODEPORTS -m comment --comment default/web:http -m tcp -p tcp --dport 30080 -j KUBE-EXT-CDGGSHYLG3RE2FKL
            -A KUBE-EXT-CDGGSHYLG3RE2FKL -m comment --comment "masquerade traffic for default/web:http external destinations" -j KUBE-MARK-MASQ
            -A KUBE-EXT-CDGGSHYLG3RE2FKL -j KUBE-SVC-CDGGSHYLG3RE2FKL
            -A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
            -X KUBE-SVC-OLDOLDOLDOLDOLDO
            COMMIT
        "#]]
        .assert_eq(&render(&state, &stale));
    }
}
