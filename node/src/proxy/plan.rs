//! Turning the desired state into the smallest set of eBPF map writes.
//!
//! The [`Planner`] remembers what it programmed (frontends, their service ids and backend ids)
//! and, for each change, emits [`Op`]s in a safe order: backends first, then the Maglev table that
//! points at them, then the frontend that points at the table; removals only after all writes.
//! A packet therefore never finds a frontend whose table names a backend that does not exist
//! yet. A service whose model is unchanged costs one comparison and no write.
//!
//! Backend ids are never shared between services and are handed out in increasing order, so a
//! stale conntrack or affinity entry can only miss. Backends of endpoints that are terminating
//! but still serving stay in the map (outside the Maglev table) so their flows drain.
//!
//! After an agent restart [`Planner::recover`] rebuilds the planner's memory from the pinned
//! maps, so the first sync rewrites nothing that is already right.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use rudder_ebpf_common::{
    BACKEND_LOCAL, Backend4, MAGLEV_SMALL_MAX_BACKENDS, MAGLEV_SMALL_SIZE, MAGLEV_TABLE_SIZE,
    MAX_SERVICES, MaglevSmall, MaglevTable, SVC_EXTERNAL, SVC_RANDOM, SVC_SMALL_TABLE, Service,
    ServiceKey4,
};

use super::{
    maglev,
    model::{Backend, DesiredState, Frontend, ServicePortName},
};

/// How new flows pick a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    /// Maglev consistent hashing of the flow's 5-tuple (the default).
    #[default]
    Maglev,
    /// A random slot of the Maglev table per new flow.
    Random,
}

/// Node-wide settings that shape the frontends.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// This node's addresses; NodePorts are served on each.
    pub node_ips: Vec<Ipv4Addr>,
    /// Backend selection.
    pub algorithm: Algorithm,
}

/// One map write or delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace a backend.
    Backend(u32, Backend4),
    /// Insert or replace a service's (full-size) Maglev table.
    Maglev(u32, Box<MaglevTable>),
    /// Insert or replace a service's small Maglev table (few backends).
    MaglevSmall(u32, Box<MaglevSmall>),
    /// Insert or replace a frontend.
    Service(ServiceKey4, Service),
    /// Delete a frontend.
    RemoveService(ServiceKey4),
    /// Delete a service's (full-size) Maglev table.
    RemoveMaglev(u32),
    /// Delete a service's small Maglev table.
    RemoveMaglevSmall(u32),
    /// Delete a backend.
    RemoveBackend(u32),
}

/// Errors planning changes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Every service id is taken.
    #[error("more than {MAX_SERVICES} frontends on this node")]
    TooManyServices,
}

/// What one frontend key should balance over.
#[derive(Default)]
struct Wanted {
    flags: u32,
    affinity: u32,
    selectable: Vec<Backend>,
    serving: Vec<Backend>,
}

/// What is programmed for one frontend key.
#[derive(Clone, Debug, Default)]
struct Programmed {
    service: Service,
    /// (address, port) in network order → (backend id, flags).
    backends: BTreeMap<(u32, u16), (u32, u8)>,
    /// Ids in the Maglev table; `None` when unknown (after recovery).
    selectable: Option<Vec<u32>>,
}

/// Remembers what is programmed and plans changes. See the module docs.
#[derive(Debug)]
pub struct Planner {
    settings: Settings,
    /// Model frontends last planned, and the keys they produced.
    models: HashMap<ServicePortName, (Frontend, Vec<ServiceKey4>)>,
    programmed: HashMap<ServiceKey4, Programmed>,
    next_service: u32,
    free_services: Vec<u32>,
    /// Ids freed by the plan being made; reusable from the next one.
    freeing: Vec<u32>,
    next_backend: u32,
}

/// Network-order address as the maps store it.
pub fn addr(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// Network-order port as the maps store it.
pub fn port(port: u16) -> u16 {
    port.to_be()
}

impl Planner {
    /// A planner that has programmed nothing.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            models: HashMap::new(),
            programmed: HashMap::new(),
            next_service: 1,
            free_services: Vec::new(),
            freeing: Vec::new(),
            next_backend: 1,
        }
    }

    /// A planner that knows what the maps already hold (read back from pinned maps).
    pub fn recover(
        settings: Settings,
        services: impl IntoIterator<Item = (ServiceKey4, Service)>,
        backends: impl IntoIterator<Item = (u32, Backend4)>,
    ) -> Self {
        let mut planner = Self::new(settings);
        let mut by_id: HashMap<u32, ServiceKey4> = HashMap::new();
        for (key, service) in services {
            by_id.insert(service.id, key);
            planner.next_service = planner.next_service.max(service.id + 1);
            planner.programmed.insert(
                key,
                Programmed {
                    service,
                    backends: BTreeMap::new(),
                    // A frontend without backends has no table; others are rewritten once.
                    selectable: (service.count == 0).then(Vec::new),
                },
            );
        }
        for (id, b) in backends {
            planner.next_backend = planner.next_backend.max(id.wrapping_add(1)).max(1);
            if let Some(p) = by_id
                .get(&b.service_id)
                .and_then(|k| planner.programmed.get_mut(k))
            {
                p.backends.insert((b.addr, b.port), (id, b.flags));
            }
        }
        // Ids below the high-water mark that nobody holds are free again.
        let used: std::collections::HashSet<u32> = by_id.keys().copied().collect();
        planner.free_services = (1..planner.next_service)
            .filter(|id| !used.contains(id))
            .rev()
            .collect();
        planner
    }

    /// Number of frontend keys programmed.
    pub fn len(&self) -> usize {
        self.programmed.len()
    }

    /// Whether nothing is programmed.
    pub fn is_empty(&self) -> bool {
        self.programmed.is_empty()
    }

    /// Plans the whole desired state: every changed service port is replanned, every vanished
    /// one removed. Orphans found by [`Planner::recover`] that no model claims are removed too.
    pub fn sync(&mut self, desired: &DesiredState) -> Result<Vec<Op>, Error> {
        let mut puts = Vec::new();
        let mut removes = Vec::new();
        let gone: Vec<ServicePortName> = self
            .models
            .keys()
            .filter(|name| !desired.frontends.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            self.update_into(&name, None, &mut puts, &mut removes)?;
        }
        for (name, frontend) in &desired.frontends {
            self.update_into(name, Some(frontend), &mut puts, &mut removes)?;
        }
        let claimed: std::collections::HashSet<ServiceKey4> = self
            .models
            .values()
            .flat_map(|(_, keys)| keys.iter().copied())
            .collect();
        let orphans: Vec<ServiceKey4> = self
            .programmed
            .keys()
            .filter(|k| !claimed.contains(k))
            .copied()
            .collect();
        for key in orphans {
            self.remove_key(key, &mut removes);
        }
        Ok(self.finish(puts, removes))
    }

    /// Puts the removals after the writes. A frontend key that one service port gave up and
    /// another took in the same plan (a port renamed when a second port is added, a Service
    /// deleted and re-created with the same address) is not deleted after its new write, and
    /// service ids freed by this plan only become reusable in the next, so no removal queued
    /// here can hit a table written here.
    fn finish(&mut self, mut puts: Vec<Op>, removes: Vec<Op>) -> Vec<Op> {
        puts.extend(removes.into_iter().filter(|op| match op {
            Op::RemoveService(k) => !self.programmed.contains_key(k),
            _ => true,
        }));
        for id in self.freeing.drain(..) {
            self.free_services.insert(0, id);
        }
        puts
    }

    /// Plans one service port's change (`None`: it is gone). This is the agent's path for a
    /// single watch event; its cost does not depend on how many other services exist.
    pub fn update(
        &mut self,
        name: &ServicePortName,
        frontend: Option<&Frontend>,
    ) -> Result<Vec<Op>, Error> {
        let mut puts = Vec::new();
        let mut removes = Vec::new();
        self.update_into(name, frontend, &mut puts, &mut removes)?;
        Ok(self.finish(puts, removes))
    }

    fn update_into(
        &mut self,
        name: &ServicePortName,
        frontend: Option<&Frontend>,
        puts: &mut Vec<Op>,
        removes: &mut Vec<Op>,
    ) -> Result<(), Error> {
        let old_keys = match (self.models.get(name), frontend) {
            (Some((old, _)), Some(new)) if old == new => return Ok(()),
            (Some((_, keys)), _) => keys.clone(),
            (None, None) => return Ok(()),
            (None, Some(_)) => Vec::new(),
        };
        let wanted = frontend.map(|f| self.wanted(f)).unwrap_or_default();
        for key in &old_keys {
            if !wanted.iter().any(|(k, _)| k == key) {
                self.remove_key(*key, removes);
            }
        }
        for (key, want) in &wanted {
            self.program_key(*key, want, puts, removes)?;
        }
        match frontend {
            Some(f) => {
                self.models.insert(
                    name.clone(),
                    (f.clone(), wanted.iter().map(|(k, _)| *k).collect()),
                );
            }
            None => {
                self.models.remove(name);
            }
        }
        Ok(())
    }

    /// The frontend keys a model frontend produces: its ClusterIP, its NodePort on each node
    /// address, and its port on each external address (externalIPs, load-balancer IPs).
    fn wanted(&self, f: &Frontend) -> Vec<(ServiceKey4, Wanted)> {
        let proto = f.name.protocol.number();
        let random = if self.settings.algorithm == Algorithm::Random {
            SVC_RANDOM
        } else {
            0
        };
        let affinity = f.affinity_timeout.unwrap_or(0);
        let mut keys = vec![(
            ServiceKey4 {
                addr: addr(f.cluster_ip),
                port: port(f.port),
                proto,
                pad: 0,
            },
            Wanted {
                flags: random,
                affinity,
                selectable: f.cluster_backends.clone(),
                serving: serving(f, f.internal_local),
            },
        )];
        // NodePorts on the node's addresses, and the service port on its external addresses:
        // both reach the external backends.
        let node_ports = f
            .node_port
            .into_iter()
            .flat_map(|p| self.settings.node_ips.iter().map(move |ip| (*ip, p)));
        let external = f.external_ips.iter().map(|ip| (*ip, f.port));
        for (ip, frontend_port) in node_ports.chain(external) {
            keys.push((
                ServiceKey4 {
                    addr: addr(ip),
                    port: port(frontend_port),
                    proto,
                    pad: 0,
                },
                Wanted {
                    flags: random | SVC_EXTERNAL,
                    affinity,
                    selectable: f.external_backends.clone(),
                    serving: serving(f, f.external_local),
                },
            ));
        }
        keys
    }

    fn allocate_service(&mut self) -> Result<u32, Error> {
        if self.next_service < MAX_SERVICES {
            self.next_service += 1;
            return Ok(self.next_service - 1);
        }
        self.free_services.pop().ok_or(Error::TooManyServices)
    }

    fn allocate_backend(&mut self) -> u32 {
        let id = self.next_backend;
        self.next_backend = self.next_backend.wrapping_add(1).max(1);
        id
    }

    fn program_key(
        &mut self,
        key: ServiceKey4,
        want: &Wanted,
        puts: &mut Vec<Op>,
        removes: &mut Vec<Op>,
    ) -> Result<(), Error> {
        let is_new = !self.programmed.contains_key(&key);
        let mut current = match self.programmed.remove(&key) {
            Some(p) => p,
            None => {
                let id = self.allocate_service()?;
                Programmed {
                    service: Service {
                        id,
                        ..Service::default()
                    },
                    ..Programmed::default()
                }
            }
        };
        let service_id = current.service.id;

        // Backends: keep ids of known addresses, give new ones fresh ids.
        let mut backends = BTreeMap::new();
        for b in want.serving.iter().chain(&want.selectable) {
            let at = (addr(b.ip), port(b.port));
            if backends.contains_key(&at) {
                continue;
            }
            let flags = if b.local { BACKEND_LOCAL } else { 0 };
            let id = match current.backends.get(&at) {
                Some(&(id, old_flags)) if old_flags == flags => id,
                Some(&(id, _)) => {
                    puts.push(Op::Backend(id, backend4(at, flags, service_id)));
                    id
                }
                None => {
                    let id = self.allocate_backend();
                    puts.push(Op::Backend(id, backend4(at, flags, service_id)));
                    id
                }
            };
            backends.insert(at, (id, flags));
        }

        // Maglev table over the selectable backends: a small one for a few backends. When a
        // service changes size, the new table and the frontend pointing at it are written
        // first and the old table is removed after.
        let selectable: Vec<u32> = want
            .selectable
            .iter()
            .filter_map(|b| backends.get(&(addr(b.ip), port(b.port))).map(|(id, _)| *id))
            .collect();
        let small = !selectable.is_empty() && selectable.len() <= MAGLEV_SMALL_MAX_BACKENDS;
        let was_small = current.service.flags & SVC_SMALL_TABLE != 0;
        if current.selectable.as_ref() != Some(&selectable) {
            if selectable.is_empty() {
                removes.push(remove_table(service_id, was_small));
            } else {
                let named: Vec<(u32, String)> = want
                    .selectable
                    .iter()
                    .zip(&selectable)
                    .map(|(b, id)| (*id, format!("{}:{}", b.ip, b.port)))
                    .collect();
                if small {
                    let cells = maglev::build(&named, MAGLEV_SMALL_SIZE);
                    let mut table = Box::new(MaglevSmall([0; MAGLEV_SMALL_SIZE]));
                    table.0.copy_from_slice(&cells);
                    puts.push(Op::MaglevSmall(service_id, table));
                } else {
                    let cells = maglev::build(&named, MAGLEV_TABLE_SIZE);
                    let mut table = Box::new(MaglevTable([0; MAGLEV_TABLE_SIZE]));
                    table.0.copy_from_slice(&cells);
                    puts.push(Op::Maglev(service_id, table));
                }
                if !is_new && current.service.count > 0 && was_small != small {
                    removes.push(remove_table(service_id, was_small));
                }
            }
        }

        // The frontend itself.
        let service = Service {
            id: service_id,
            count: u32::try_from(selectable.len()).unwrap_or(u32::MAX),
            affinity_timeout: want.affinity,
            flags: want.flags | if small { SVC_SMALL_TABLE } else { 0 },
        };
        if is_new || service != current.service {
            puts.push(Op::Service(key, service));
        }

        // Backends no longer serving, once nothing points at them.
        for (at, (id, _)) in &current.backends {
            if !backends.contains_key(at) {
                removes.push(Op::RemoveBackend(*id));
            }
        }
        current.service = service;
        current.backends = backends;
        current.selectable = Some(selectable);
        self.programmed.insert(key, current);
        Ok(())
    }

    fn remove_key(&mut self, key: ServiceKey4, removes: &mut Vec<Op>) {
        let Some(p) = self.programmed.remove(&key) else {
            return;
        };
        removes.push(Op::RemoveService(key));
        removes.push(remove_table(
            p.service.id,
            p.service.flags & SVC_SMALL_TABLE != 0,
        ));
        for (id, _) in p.backends.values() {
            removes.push(Op::RemoveBackend(*id));
        }
        self.freeing.push(p.service.id);
    }
}

/// Serving endpoints that traffic of this kind may drain to (local ones only under a Local
/// policy).
fn serving(f: &Frontend, local_only: bool) -> Vec<Backend> {
    f.serving
        .iter()
        .filter(|b| !local_only || b.local)
        .cloned()
        .collect()
}

/// The op deleting service `id`'s Maglev table of the given size.
fn remove_table(id: u32, small: bool) -> Op {
    if small {
        Op::RemoveMaglevSmall(id)
    } else {
        Op::RemoveMaglev(id)
    }
}

fn backend4((addr, port): (u32, u16), flags: u8, service_id: u32) -> Backend4 {
    Backend4 {
        addr,
        port,
        flags,
        pad: 0,
        service_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::{Objects, build};

    fn state(backends: &[&str], terminating: &[&str]) -> DesiredState {
        let mut endpoints = String::new();
        for ip in backends {
            endpoints.push_str(&format!("- {{addresses: [{ip}], nodeName: n1}}\n"));
        }
        for ip in terminating {
            endpoints.push_str(&format!(
                "- {{addresses: [{ip}], nodeName: n1, conditions: {{ready: false, serving: true, terminating: true}}}}\n"
            ));
        }
        let yaml = format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  type: NodePort
  clusterIP: 10.96.0.20
  ports: [{{port: 80, targetPort: 8080, nodePort: 30080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{port: 8080}}]
endpoints:
{endpoints}"#
        );
        build(&Objects::from_yaml(&yaml).unwrap(), "n1")
    }

    fn settings() -> Settings {
        Settings {
            node_ips: vec![Ipv4Addr::new(172, 30, 0, 2)],
            algorithm: Algorithm::Maglev,
        }
    }

    fn kinds(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .map(|op| match op {
                Op::Backend(id, _) => format!("backend {id}"),
                Op::Maglev(id, _) | Op::MaglevSmall(id, _) => format!("maglev {id}"),
                Op::Service(k, s) => format!(
                    "service {:x}:{} -> {} x{}",
                    k.addr,
                    u16::from_be(k.port),
                    s.id,
                    s.count
                ),
                Op::RemoveService(k) => format!("-service {:x}:{}", k.addr, u16::from_be(k.port)),
                Op::RemoveMaglev(id) | Op::RemoveMaglevSmall(id) => format!("-maglev {id}"),
                Op::RemoveBackend(id) => format!("-backend {id}"),
            })
            .collect()
    }

    #[test]
    fn writes_backends_before_tables_before_frontends() {
        let mut p = Planner::new(settings());
        let ops = p.sync(&state(&["10.244.0.5", "10.244.0.6"], &[])).unwrap();
        assert_eq!(
            kinds(&ops),
            [
                "backend 1",
                "backend 2",
                "maglev 1",
                "service 1400600a:80 -> 1 x2",
                "backend 3",
                "backend 4",
                "maglev 2",
                "service 2001eac:30080 -> 2 x2",
            ]
        );
        // Nothing changed: nothing to write.
        assert!(
            p.sync(&state(&["10.244.0.5", "10.244.0.6"], &[]))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn external_ips_are_external_frontends() {
        let mut p = Planner::new(settings());
        let mut desired = state(&["10.244.0.5"], &[]);
        for f in desired.frontends.values_mut() {
            f.external_ips = vec![Ipv4Addr::new(192, 0, 2, 10)];
        }
        let ops = p.sync(&desired).unwrap();
        let external: Vec<&Service> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Service(k, s) if k.addr == addr(Ipv4Addr::new(192, 0, 2, 10)) => {
                    assert_eq!(k.port, port(80), "the service port, not the NodePort");
                    Some(s)
                }
                _ => None,
            })
            .collect();
        assert_eq!(external.len(), 1, "{}", kinds(&ops).join(", "));
        assert_ne!(external[0].flags & SVC_EXTERNAL, 0);
    }

    #[test]
    fn a_backend_change_touches_only_that_backend() {
        let mut p = Planner::new(settings());
        p.sync(&state(&["10.244.0.5", "10.244.0.6"], &[])).unwrap();
        let ops = p.sync(&state(&["10.244.0.5", "10.244.0.7"], &[])).unwrap();
        assert_eq!(
            kinds(&ops),
            [
                "backend 5",
                "maglev 1",
                "backend 6",
                "maglev 2",
                "-backend 2",
                "-backend 4",
            ]
        );
    }

    #[test]
    fn terminating_backends_drain_outside_the_table() {
        let mut p = Planner::new(settings());
        p.sync(&state(&["10.244.0.5", "10.244.0.6"], &[])).unwrap();
        // .6 starts terminating: it leaves the table (count 1) but its backend entry stays.
        let ops = p.sync(&state(&["10.244.0.5"], &["10.244.0.6"])).unwrap();
        assert_eq!(
            kinds(&ops),
            [
                "maglev 1",
                "service 1400600a:80 -> 1 x1",
                "maglev 2",
                "service 2001eac:30080 -> 2 x1"
            ]
        );
        // Gone entirely: now the backend goes.
        let ops = p.sync(&state(&["10.244.0.5"], &[])).unwrap();
        assert_eq!(kinds(&ops), ["-backend 2", "-backend 4"]);
    }

    #[test]
    fn no_backends_keeps_the_frontend_to_refuse() {
        let mut p = Planner::new(settings());
        p.sync(&state(&["10.244.0.5"], &[])).unwrap();
        let ops = p.sync(&state(&[], &[])).unwrap();
        assert_eq!(
            kinds(&ops),
            [
                "service 1400600a:80 -> 1 x0",
                "service 2001eac:30080 -> 2 x0",
                "-maglev 1",
                "-backend 1",
                "-maglev 2",
                "-backend 2",
            ]
        );
        let ops = p.sync(&DesiredState::default()).unwrap();
        assert_eq!(
            kinds(&ops),
            [
                "-service 1400600a:80",
                "-maglev 1",
                "-service 2001eac:30080",
                "-maglev 2"
            ]
        );
        assert!(p.is_empty());
    }

    #[test]
    fn a_key_passed_to_another_port_name_in_one_sync_stays() {
        let mut p = Planner::new(settings());
        let desired = state(&["10.244.0.5"], &[]);
        p.sync(&desired).unwrap();
        // The same frontends under new names (as when a Service's only port gets a name).
        let mut renamed = DesiredState::default();
        for (name, f) in &desired.frontends {
            let mut f = f.clone();
            f.name.port = format!("{}-renamed", name.port);
            renamed.frontends.insert(f.name.clone(), f);
        }
        let ops = p.sync(&renamed).unwrap();
        assert!(
            !ops.iter().any(|op| matches!(op, Op::RemoveService(_))),
            "{:?}",
            kinds(&ops)
        );
        assert_eq!(
            ops.iter()
                .filter(|op| matches!(op, Op::Service(..)))
                .count(),
            2,
            "{:?}",
            kinds(&ops)
        );
    }

    #[test]
    fn tables_are_small_for_few_backends_and_switch_safely() {
        let ips = |n: u8| -> Vec<String> { (1..=n).map(|i| format!("10.244.0.{i}")).collect() };
        fn refs(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        let tables = |ops: &[Op]| -> Vec<&'static str> {
            ops.iter()
                .filter_map(|op| match op {
                    Op::Maglev(..) => Some("big"),
                    Op::MaglevSmall(..) => Some("small"),
                    Op::RemoveMaglev(..) => Some("-big"),
                    Op::RemoveMaglevSmall(..) => Some("-small"),
                    _ => None,
                })
                .collect()
        };
        let flags = |ops: &[Op]| -> Vec<bool> {
            ops.iter()
                .filter_map(|op| match op {
                    Op::Service(_, s) => Some(s.flags & SVC_SMALL_TABLE != 0),
                    _ => None,
                })
                .collect()
        };
        let mut p = Planner::new(settings());
        let few = ips(u8::try_from(MAGLEV_SMALL_MAX_BACKENDS).unwrap());
        let ops = p.sync(&state(&refs(&few), &[])).unwrap();
        assert_eq!(tables(&ops), ["small", "small"]);
        assert_eq!(flags(&ops), [true, true]);
        // One more backend: a full table, the frontend pointing at it, then the small table goes.
        let many = ips(u8::try_from(MAGLEV_SMALL_MAX_BACKENDS + 1).unwrap());
        let ops = p.sync(&state(&refs(&many), &[])).unwrap();
        assert_eq!(tables(&ops), ["big", "big", "-small", "-small"]);
        assert_eq!(flags(&ops), [false, false]);
        let service_at = ops.iter().position(|op| matches!(op, Op::Service(..)));
        let removed_at = ops
            .iter()
            .position(|op| matches!(op, Op::RemoveMaglevSmall(..)));
        assert!(service_at < removed_at, "{:?}", kinds(&ops));
        // And back.
        let ops = p.sync(&state(&refs(&few), &[])).unwrap();
        assert_eq!(tables(&ops), ["small", "small", "-big", "-big"]);
        // Removing the service removes the table it has.
        let ops = p.sync(&DesiredState::default()).unwrap();
        assert_eq!(tables(&ops), ["-small", "-small"]);
    }

    #[test]
    fn recovery_rewrites_nothing_that_is_right() {
        let mut p = Planner::new(settings());
        let desired = state(&["10.244.0.5", "10.244.0.6"], &[]);
        let ops = p.sync(&desired).unwrap();
        let services: Vec<(ServiceKey4, Service)> = ops
            .iter()
            .filter_map(|op| {
                if let Op::Service(k, s) = op {
                    Some((*k, *s))
                } else {
                    None
                }
            })
            .collect();
        let backends: Vec<(u32, Backend4)> = ops
            .iter()
            .filter_map(|op| {
                if let Op::Backend(id, b) = op {
                    Some((*id, *b))
                } else {
                    None
                }
            })
            .collect();
        let mut recovered = Planner::recover(settings(), services, backends);
        let ops = recovered.sync(&desired).unwrap();
        // Only the Maglev tables are rewritten (their content is not read back); same ids.
        assert_eq!(kinds(&ops), ["maglev 1", "maglev 2"]);
        // A new backend gets an id never used before.
        let ops = recovered
            .sync(&state(&["10.244.0.5", "10.244.0.6", "10.244.0.9"], &[]))
            .unwrap();
        assert!(
            kinds(&ops).contains(&"backend 5".to_string()),
            "{:?}",
            kinds(&ops)
        );
    }
}
