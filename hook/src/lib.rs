//! hbm-hook: gives VMs a passed-through GPU together with its HBM as an SPM guest NUMA node, with
//! the GPU's `_PXM` naming it. The rewriter itself is the `hbm-rewrite` crate; this crate holds
//! its front ends and the tools around them.
//!
//! Where to start: `main.rs` only parses the command line (and `argv[0]`) and dispatches to one
//! front end's `cli` module. Each front end is a folder with a pure core and a thin `cli.rs`:
//!
//! - [`rewrite_cli`]: `hbm-hook rewrite`, a domain XML file in, the rewritten one out;
//! - [`kubevirt`]: the KubeVirt hook sidecar and the sidecar-shim commands;
//! - [`libvirt`]: the libvirt qemu.d hook and its region claims;
//! - [`qemu`]: the QEMU argv adapter (`hbm-qemu`) and the QEMU capability probe;
//! - [`doctor`]: `hbm-hook doctor`, the host readiness report;
//! - [`verify_guest`]: `hbm-hook verify-guest`, run inside a VM: does each GPU find its HBM?
//!
//! Shared by all of them: [`config`] (the config file) and [`inventory`] (where the host's HBM
//! inventory comes from). Exit statuses, atomic writes and logging come from `hbm-shell`.

pub mod config;
pub mod doctor;
pub mod inventory;
pub mod kubevirt;
pub mod libvirt;
pub mod qemu;
pub mod rewrite_cli;
pub mod verify_guest;
