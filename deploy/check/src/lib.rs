//! Checks of the deployment artefacts (`charts/hbm-passthrough`, `deploy/`).
//!
//! The tests in `tests/` render the chart with a real `helm` binary ([`helm`]), split the output
//! into objects ([`manifest`]), parse each object into its typed Kubernetes form and serialize it
//! back ([`roundtrip`]): a key the type does not know (a typo, a key at the wrong level) is
//! dropped by the typed parse and so shows up as a difference. The Prometheus Operator's
//! ServiceMonitor has no k8s-openapi type; [`servicemonitor`] gives it a strict one.

pub mod containerfile;
pub mod helm;
pub mod manifest;
pub mod roundtrip;
pub mod servicemonitor;

use std::path::PathBuf;

/// The workspace root (this crate lives in `deploy/check`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.join("..").join("..")
}

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    workspace_root().join("charts").join("hbm-passthrough")
}
