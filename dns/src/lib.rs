//! Cluster DNS for rudder, following the Kubernetes DNS-Based Service Discovery specification.
//!
//! Not built yet (issue: "Cluster DNS on hickory-dns"). The plan: an in-memory index kept current by
//! kube-rs watches, pure answer-building functions over it, and hickory-server on UDP and TCP.
