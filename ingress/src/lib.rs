//! Ingress for rudder: Ingress v1 and Gateway API HTTPRoutes served by a pingora proxy.
//!
//! Not built yet (issue: "Ingress on pingora"). The plan: a routing table built from kube-rs watches,
//! swapped atomically, pure route matching, and a pingora `ProxyHttp` in front of it.
