//! Ingress for rudder: Ingress v1 (and, to come, Gateway API HTTPRoutes) served by a pingora
//! proxy.
//!
//! - [`routes`]: the pure core, the routing table built from Ingresses, IngressClasses,
//!   Services, EndpointSlices and Secrets, answering where one request goes with no I/O.
//!
//! Being built (issue "Ingress on pingora"): the kube-rs watches that rebuild the table and swap
//! it in whole, and the pingora `ProxyHttp` in front of it.

pub mod routes;
