//! The KubeVirt front end: [`policy`] (pure: VMI annotations + domain XML + inventory in, the
//! definition for libvirt out), [`sidecar`] (the hook sidecar's gRPC services on virt-launcher's
//! hook socket) and [`cli`] (`hbm-hook kubevirt-sidecar` and the sidecar-shim commands
//! `onDefineDomain` / `preCloudInitIso`: arguments, start-up, exit codes), and [`quantity`]
//! (Kubernetes quantities, for the size annotation).

pub mod cli;
pub mod policy;
pub mod quantity;
pub mod sidecar;
