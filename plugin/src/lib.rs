//! hbm-device-plugin: advertises each passthrough-ready GPU together with its HBM regions as one
//! Kubernetes device.
//!
//! Where to start: `run` (what the `run` command does, from flags to shutdown) and `manager`
//! (the one loop tying the rest together). Module map:
//! - `config`: flags, environment and the YAML file resolved into `Settings`.
//! - `run`: settings, runtime, metrics, labels and signals around the manager; `RunError`.
//! - `manager`: discovery -> resources -> servers, registration, health, config reload.
//! - `resources`: inventory + rules -> devices per resource (pure).
//! - `health`: measured device health (driver binding, device nodes, region size).
//! - `allocate`: Allocate / GetPreferredAllocation answers (pure).
//! - `server`: the DevicePlugin gRPC service and its unix socket server.
//! - `registration`: kubelet `Register` and the plugin-watcher service.
//! - `node_labels`: Node labels via server-side apply.
//! - `metrics`: Prometheus `/metrics`, `/healthz`, `/readyz`.

pub mod allocate;
pub mod config;
pub mod health;
pub mod manager;
pub mod metrics;
pub mod node_labels;
pub mod registration;
pub mod resources;
pub mod run;
pub mod server;
