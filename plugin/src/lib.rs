//! hbm-device-plugin: advertises each passthrough-ready GPU together with its HBM regions as one
//! Kubernetes device.
//!
//! Module map: `config` (flags/env/YAML), `resources` (inventory + rules -> devices, pure),
//! `health` (measured device health), `allocate` (Allocate/GetPreferredAllocation, pure),
//! `server` (DevicePlugin gRPC service + unix socket server), `registration` (kubelet Register,
//! plugin-watcher service), `node_labels` (Node labels via server-side apply), `metrics`
//! (Prometheus + /healthz + /readyz), `manager` (the loop tying them together).

pub mod allocate;
pub mod config;
pub mod health;
pub mod manager;
pub mod metrics;
pub mod node_labels;
pub mod registration;
pub mod resources;
pub mod server;
