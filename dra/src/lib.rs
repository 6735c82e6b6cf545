//! hbm-dra-driver: a Kubernetes Dynamic Resource Allocation (DRA) kubelet plugin that publishes
//! each passthrough-ready GPU together with its HBM regions as one `resource.k8s.io/v1` device
//! and prepares allocated GPUs for KubeVirt (CDI spec + device metadata file per claim).
//!
//! Module map: `config` (flags, env, YAML file -> settings), `devices` (inventory + rules ->
//! the node's DRA devices and ResourceSlice specs, pure), `api` (the `resource.k8s.io/v1`
//! objects the driver reads and writes), `slices` (ResourceSlice publication), `claims`
//! (ResourceClaim reads), `cdi` (CDI spec files), `metadata` (device metadata files),
//! `checkpoint` (prepared claims on disk), `prepare` (NodePrepare/NodeUnprepare logic),
//! `health` (device health as the DRA health stream sends it), `service` (the gRPC services),
//! `server` (unix-socket servers and plugin-watcher registration), `driver` (the loop tying them
//! together).

pub mod api;
pub mod cdi;
pub mod checkpoint;
pub mod claims;
pub mod config;
pub mod devices;
pub mod driver;
pub mod health;
pub mod metadata;
pub mod prepare;
pub mod server;
pub mod service;
pub mod slices;
