//! hbm-hook: rewrites libvirt domain definitions so the guest sees a passed-through GPU's HBM as
//! its own (SPM) NUMA node, with the GPU's `_PXM` naming it.
pub mod adapter;
pub mod adapter_command;
pub mod claims;
pub mod config;
pub mod doctor;
pub mod kubevirt;
pub mod kubevirt_command;
pub mod kubevirt_policy;
pub mod libvirt_hook;
pub mod probe;
pub mod rewrite_command;
pub mod verify_guest;
