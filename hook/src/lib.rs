//! hbm-hook: rewrites libvirt domain definitions so the guest sees a passed-through GPU's HBM as
//! its own (SPM) NUMA node, with the GPU's `_PXM` naming it.
pub mod claims;
pub mod kubevirt;
pub mod kubevirt_policy;
pub mod qemu_instructions;
pub mod rewrite;
