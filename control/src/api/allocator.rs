//! ClusterIP and NodePort allocation.
//!
//! Every allocated address or port is a reservation key in the store
//! (`/registry/rudder/clusterips/<ip>`, `/registry/rudder/nodeports/<port>`), taken with an atomic
//! create. Two apiservers sharing one etcd can therefore never hand out the same address (the
//! same idea as Kubernetes' IPAddress objects); deleting a Service releases its reservations.

use std::{net::Ipv4Addr, sync::Arc};

use bytes::Bytes;

use super::status::{ApiError, ApiResult, Cause};
use crate::store::{self, Store};

const IP_PREFIX: &str = "/registry/rudder/clusterips/";
const PORT_PREFIX: &str = "/registry/rudder/nodeports/";

/// An IPv4 CIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub base: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| format!("{s:?}: bad address"))?;
        let prefix: u8 = len
            .parse()
            .map_err(|_| format!("{s:?}: bad prefix length"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("{s:?}: prefix length must be between 8 and 30"));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            base: Ipv4Addr::from(u32::from(ip) & mask),
            prefix,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl Cidr {
    /// Number of addresses.
    pub fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip).wrapping_sub(u32::from(self.base)) < self.size()
    }

    /// The address at `offset` from the base.
    pub fn nth(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + offset)
    }
}

/// Allocates Service ClusterIPs and NodePorts.
pub struct Allocator {
    store: Arc<dyn Store>,
    service_cidr: Cidr,
    node_ports: (u16, u16),
}

impl Allocator {
    /// An allocator over `service_cidr` and NodePorts 30000–32767.
    pub fn new(store: Arc<dyn Store>, service_cidr: Cidr) -> Self {
        Self {
            store,
            service_cidr,
            node_ports: (30000, 32767),
        }
    }

    /// The service CIDR.
    pub fn service_cidr(&self) -> Cidr {
        self.service_cidr
    }

    /// Reserves a specific ClusterIP for `owner` (`namespace/name`).
    pub async fn reserve_ip(&self, ip: Ipv4Addr, owner: &str, field: &str) -> ApiResult<()> {
        if !self.service_cidr.contains(ip) {
            return Err(invalid_field(
                field,
                &ip.to_string(),
                &format!(
                    "provided IP is not in the valid range. The range of valid IPs is {}",
                    self.service_cidr
                ),
            ));
        }
        if take(&*self.store, &format!("{IP_PREFIX}{ip}"), owner).await? {
            Ok(())
        } else {
            Err(invalid_field(
                field,
                &ip.to_string(),
                "provided IP is already allocated",
            ))
        }
    }

    /// Allocates a free ClusterIP for `owner`. Dynamic allocation skips the lowest 256
    /// addresses, which stay free for well-known static IPs (10.96.0.1, 10.96.0.10).
    pub async fn allocate_ip(&self, owner: &str) -> ApiResult<Ipv4Addr> {
        let size = self.service_cidr.size();
        let low = 256.min(size / 16).max(2);
        let span = size - 1 - low;
        let start = rand::random_range(0..span);
        for i in 0..span.min(1 << 16) {
            let ip = self.service_cidr.nth(low + (start + i) % span);
            if take(&*self.store, &format!("{IP_PREFIX}{ip}"), owner).await? {
                return Ok(ip);
            }
        }
        Err(ApiError::internal(format!(
            "failed to allocate a serviceIP: range {} is full",
            self.service_cidr
        )))
    }

    /// Releases a ClusterIP (missing reservations are fine).
    pub async fn release_ip(&self, ip: &str) {
        release(&*self.store, &format!("{IP_PREFIX}{ip}")).await;
    }

    /// Reserves a specific NodePort.
    pub async fn reserve_port(&self, port: u16, owner: &str, field: &str) -> ApiResult<()> {
        let (lo, hi) = self.node_ports;
        if !(lo..=hi).contains(&port) {
            return Err(invalid_field(
                field,
                &port.to_string(),
                &format!(
                    "provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
                ),
            ));
        }
        if take(&*self.store, &format!("{PORT_PREFIX}{port}"), owner).await? {
            Ok(())
        } else {
            Err(invalid_field(
                field,
                &port.to_string(),
                "provided port is already allocated",
            ))
        }
    }

    /// Allocates a free NodePort.
    pub async fn allocate_port(&self, owner: &str) -> ApiResult<u16> {
        let (lo, hi) = self.node_ports;
        let span = u32::from(hi - lo) + 1;
        let start = rand::random_range(0..span);
        for i in 0..span {
            let port = lo + ((start + i) % span) as u16;
            if take(&*self.store, &format!("{PORT_PREFIX}{port}"), owner).await? {
                return Ok(port);
            }
        }
        Err(ApiError::internal(
            "failed to allocate a nodePort: range is full",
        ))
    }

    /// Releases a NodePort.
    pub async fn release_port(&self, port: u16) {
        release(&*self.store, &format!("{PORT_PREFIX}{port}")).await;
    }
}

/// Takes the reservation `key` for `owner`: `Ok(false)` if someone holds it already.
async fn take(store: &dyn Store, key: &str, owner: &str) -> ApiResult<bool> {
    match store.create(key, Bytes::from(owner.to_owned())).await {
        Ok(_) => Ok(true),
        Err(store::Error::AlreadyExists(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn release(store: &dyn Store, key: &str) {
    match store.delete(key, None).await {
        Ok(_) | Err(store::Error::NotFound(_)) => {}
        Err(e) => tracing::warn!(key, error = %e, "could not release reservation"),
    }
}

fn invalid_field(field: &str, value: &str, detail: &str) -> ApiError {
    let cause = Cause::invalid(field, &serde_json::json!(value), detail);
    ApiError {
        code: 422,
        reason: "Invalid",
        message: format!("{}: {}", cause.field, cause.message),
        details: Some(
            serde_json::json!({"causes": [{"reason": cause.reason, "message": cause.message, "field": cause.field}]}),
        ),
    }
}

/// The addresses a Service holds: its ClusterIP and NodePorts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Allocated ClusterIP, if any.
    pub ip: Option<String>,
    /// Allocated NodePorts.
    pub ports: Vec<u16>,
}

/// What a Service object holds (`spec.clusterIP`, `spec.ports[*].nodePort`).
pub fn held(svc: &serde_json::Value) -> Held {
    let spec = svc.get("spec");
    let ip = spec
        .and_then(|s| s.get("clusterIP"))
        .and_then(serde_json::Value::as_str)
        .filter(|ip| !ip.is_empty() && *ip != "None")
        .map(str::to_owned);
    let ports = spec
        .and_then(|s| s.get("ports"))
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort")?.as_u64())
        .filter_map(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .collect();
    Held { ip, ports }
}

impl Allocator {
    /// Fills in and reserves the ClusterIP and NodePorts of a Service being created or updated.
    /// `old` is what the Service held before. On error everything newly reserved is released.
    pub async fn assign(
        &self,
        svc: &mut serde_json::Value,
        old: &Held,
        owner: &str,
    ) -> ApiResult<Held> {
        let mut taken = Held::default();
        let result = self.assign_inner(svc, old, owner, &mut taken).await;
        if result.is_err() {
            self.release_held(&taken).await;
        }
        result.map(|()| taken)
    }

    async fn assign_inner(
        &self,
        svc: &mut serde_json::Value,
        old: &Held,
        owner: &str,
        taken: &mut Held,
    ) -> ApiResult<()> {
        let ty = svc
            .pointer("/spec/type")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("ClusterIP")
            .to_owned();
        if ty == "ExternalName" {
            return Ok(());
        }
        let requested = svc
            .pointer("/spec/clusterIP")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_owned();
        if requested != "None" {
            let ip = if requested.is_empty() {
                match &old.ip {
                    Some(ip) => ip.clone(),
                    None => {
                        let ip = self.allocate_ip(owner).await?.to_string();
                        taken.ip = Some(ip.clone());
                        ip
                    }
                }
            } else if old.ip.as_deref() == Some(requested.as_str()) {
                requested
            } else {
                let ip: Ipv4Addr = requested.parse().map_err(|_| {
                    invalid_field("spec.clusterIP", &requested, "must be a valid IP address")
                })?;
                self.reserve_ip(ip, owner, "spec.clusterIP").await?;
                taken.ip = Some(requested.clone());
                requested
            };
            super::object::set_path(svc, "spec.clusterIP", serde_json::json!(ip));
            super::object::set_path(svc, "spec.clusterIPs", serde_json::json!([ip]));
        } else {
            super::object::set_path(svc, "spec.clusterIPs", serde_json::json!(["None"]));
        }
        if ty == "NodePort" || ty == "LoadBalancer" {
            let count = svc
                .pointer("/spec/ports")
                .and_then(serde_json::Value::as_array)
                .map_or(0, Vec::len);
            for i in 0..count {
                let field = format!("spec.ports[{i}].nodePort");
                let current = svc
                    .pointer(&format!("/spec/ports/{i}/nodePort"))
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0);
                let port = match current {
                    Some(p) if old.ports.contains(&p) || taken.ports.contains(&p) => p,
                    Some(p) => {
                        self.reserve_port(p, owner, &field).await?;
                        taken.ports.push(p);
                        p
                    }
                    None => {
                        let p = self.allocate_port(owner).await?;
                        taken.ports.push(p);
                        p
                    }
                };
                if let Some(slot) = svc.pointer_mut(&format!("/spec/ports/{i}")) {
                    slot["nodePort"] = serde_json::json!(port);
                }
            }
        } else if let Some(ports) = svc
            .pointer_mut("/spec/ports")
            .and_then(serde_json::Value::as_array_mut)
        {
            for p in ports {
                if let Some(m) = p.as_object_mut() {
                    m.remove("nodePort");
                }
            }
        }
        Ok(())
    }

    /// Releases everything in `held`.
    pub async fn release_held(&self, held: &Held) {
        if let Some(ip) = &held.ip {
            self.release_ip(ip).await;
        }
        for p in &held.ports {
            self.release_port(*p).await;
        }
    }

    /// Releases what `old` held and `new` no longer does.
    pub async fn release_dropped(&self, old: &Held, new: &Held) {
        if old.ip.is_some()
            && old.ip != new.ip
            && let Some(ip) = &old.ip
        {
            self.release_ip(ip).await;
        }
        for p in old.ports.iter().filter(|p| !new.ports.contains(p)) {
            self.release_port(*p).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_math() {
        let c: Cidr = "10.96.0.0/12".parse().unwrap();
        assert_eq!(c.size(), 1 << 20);
        assert!(c.contains("10.96.0.1".parse().unwrap()));
        assert!(c.contains("10.111.255.255".parse().unwrap()));
        assert!(!c.contains("10.112.0.0".parse().unwrap()));
        assert_eq!(c.nth(10).to_string(), "10.96.0.10");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    }

    #[tokio::test]
    async fn no_double_allocation_and_release() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        // A /28 has 16 addresses: 2..15 are dynamic here.
        let alloc = Allocator::new(Arc::clone(&store), "10.96.0.0/28".parse().unwrap());
        let mut ips = std::collections::HashSet::new();
        for i in 0..13 {
            ips.insert(alloc.allocate_ip(&format!("ns/s{i}")).await.unwrap());
        }
        assert_eq!(ips.len(), 13);
        assert!(alloc.allocate_ip("ns/full").await.is_err());
        let one = *ips.iter().next().unwrap();
        assert_eq!(
            alloc
                .reserve_ip(one, "ns/x", "spec.clusterIP")
                .await
                .unwrap_err()
                .code,
            422
        );
        alloc.release_ip(&one.to_string()).await;
        assert_eq!(alloc.allocate_ip("ns/again").await.unwrap(), one);

        alloc.reserve_port(30080, "ns/a", "p").await.unwrap();
        assert!(alloc.reserve_port(30080, "ns/b", "p").await.is_err());
        assert!(alloc.reserve_port(80, "ns/b", "p").await.is_err());
        alloc.release_port(30080).await;
        alloc.reserve_port(30080, "ns/b", "p").await.unwrap();
    }
}
