//! Shared helpers of the hook test binaries (frontends, adapter, real_components): fixtures,
//! libvirt, QEMU and booted guests. Each binary declares `mod common;`; not every binary uses every helper.
#![allow(dead_code)]

pub mod corpus;
pub mod domain_spec;
pub mod domain_xml;
pub mod guest;
pub mod hbm_chain;
pub mod inventory;
pub mod kubevirt;
pub mod kubevirt_round_trip;
pub mod libvirt;
pub mod libvirt_hook;
pub mod qemu;

use std::path::PathBuf;

/// The repository root (the workspace), from the hook crate's manifest dir.
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}
