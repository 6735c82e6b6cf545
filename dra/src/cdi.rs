//! CDI (Container Device Interface) spec files: one JSON file per prepared claim in the CDI
//! directory, named after the claim UID, so unprepare deletes exactly what prepare wrote.
//!
//! The spec's kind is `<driver>/gpu`; each allocated GPU is one CDI device named
//! `<claim uid>-<device name>` whose edits give its `/dev/vfio/<group>` (or, with iommufd, its
//! `/dev/vfio/devices/vfioN`) and the `/dev/daxX.Y` of each region reachable only through it
//! (devdax; an online region has no device node: the VM binds it by host node). The spec-wide edits (applied once
//! any device of the claim is injected) give `/dev/vfio/vfio` (and `/dev/iommu`), the env vars
//! `PCI_RESOURCE_<DRIVER>_<REQUEST>` and `HBM_REGIONS_<DRIVER>_<REQUEST>` per request (the device
//! plugin's forms), and the read-only bind mounts of the device metadata files.
//!
//! The types are written from the CDI specification (the `container-device-interface` crate
//! keeps its fields crate-private, so its types cannot be built from outside); [`validate`]
//! checks what the runtime's parser checks on the parts we write.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// CDI spec version written (device nodes, env and mounts with options are all in 0.6.0).
pub const CDI_VERSION: &str = "0.6.0";
/// The class part of the kind.
pub const CLASS: &str = "gpu";
/// Device nodes every GPU of a claim shares; they go into the spec-wide edits.
const SHARED_NODES: [&str; 2] = ["/dev/vfio/vfio", "/dev/iommu"];

/// A CDI spec file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    pub devices: Vec<Device>,
    #[serde(default, skip_serializing_if = "ContainerEdits::is_empty")]
    pub container_edits: ContainerEdits,
}

/// One CDI device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Device {
    pub name: String,
    pub container_edits: ContainerEdits,
}

/// Edits to the container's OCI spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerEdits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
}

impl ContainerEdits {
    pub fn is_empty(&self) -> bool {
        self.env.is_empty() && self.device_nodes.is_empty() && self.mounts.is_empty()
    }
}

/// A device node: `path` in the container, `host_path` on the host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceNode {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
}

/// A mount.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Mount {
    /// A read-only bind mount of one file.
    pub fn read_only_bind(host_path: &Path, container_path: &str) -> Self {
        Self {
            host_path: host_path.display().to_string(),
            container_path: container_path.to_string(),
            options: ["ro", "nosuid", "nodev", "bind"].map(String::from).to_vec(),
        }
    }
}

/// Why a spec is not one a CDI runtime accepts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CdiError {
    #[error("CDI kind {0:?} is not <vendor>/<class> (vendor a DNS name, class of [A-Za-z0-9_.-])")]
    Kind(String),
    #[error("CDI device name {0:?} must start with a letter or digit and hold only [A-Za-z0-9_.:-]")]
    DeviceName(String),
    #[error("CDI device name {0:?} appears twice in one spec")]
    Duplicate(String),
    #[error("CDI spec has no devices")]
    NoDevices,
    #[error("CDI path {0:?} is not absolute")]
    Path(String),
    #[error("CDI env entry {0:?} is not NAME=value")]
    Env(String),
}

/// The spec's kind for `driver`.
pub fn kind(driver: &str) -> String {
    format!("{driver}/{CLASS}")
}

/// The CDI device name of a claim's device.
pub fn device_name(claim_uid: &str, device: &str) -> String {
    format!("{claim_uid}-{device}")
}

/// The fully qualified device ID returned to the kubelet: `<driver>/gpu=<name>`.
pub fn device_id(driver: &str, name: &str) -> String {
    format!("{}={name}", kind(driver))
}

/// Where a claim's spec lives: `<cdi root>/<driver>-claim-<uid>.json`.
pub fn spec_path(cdi_root: &Path, driver: &str, claim_uid: &str) -> PathBuf {
    cdi_root.join(format!("{driver}-claim-{claim_uid}.json"))
}

/// Whether a device node is shared by every GPU of a claim.
pub fn is_shared_node(path: &str) -> bool {
    SHARED_NODES.contains(&path)
}

fn valid_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

fn valid_kind(kind: &str) -> bool {
    let Some((vendor, class)) = kind.split_once('/') else {
        return false;
    };
    let vendor_ok = !vendor.is_empty()
        && vendor.split('.').all(|label| {
            !label.is_empty()
                && label.starts_with(|c: char| c.is_ascii_alphanumeric())
                && label.ends_with(|c: char| c.is_ascii_alphanumeric())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    let class_ok = class.starts_with(|c: char| c.is_ascii_alphanumeric())
        && class
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    vendor_ok && class_ok
}

fn validate_edits(edits: &ContainerEdits) -> Result<(), CdiError> {
    for entry in &edits.env {
        match entry.split_once('=') {
            Some((name, _)) if !name.is_empty() => {}
            _ => return Err(CdiError::Env(entry.clone())),
        }
    }
    let paths = edits
        .device_nodes
        .iter()
        .flat_map(|node| std::iter::once(&node.path).chain(node.host_path.as_ref()))
        .chain(edits.mounts.iter().flat_map(|m| [&m.host_path, &m.container_path]));
    for path in paths {
        if !path.starts_with('/') {
            return Err(CdiError::Path(path.clone()));
        }
    }
    Ok(())
}

/// Checks kind, device names (valid, unique), env entries and that every path is absolute.
pub fn validate(spec: &Spec) -> Result<(), CdiError> {
    if !valid_kind(&spec.kind) {
        return Err(CdiError::Kind(spec.kind.clone()));
    }
    if spec.devices.is_empty() {
        return Err(CdiError::NoDevices);
    }
    let mut seen = BTreeSet::new();
    for device in &spec.devices {
        if !valid_name(&device.name) {
            return Err(CdiError::DeviceName(device.name.clone()));
        }
        if !seen.insert(device.name.as_str()) {
            return Err(CdiError::Duplicate(device.name.clone()));
        }
        validate_edits(&device.container_edits)?;
    }
    validate_edits(&spec.container_edits)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn spec() -> Spec {
        Spec {
            cdi_version: CDI_VERSION.into(),
            kind: kind("hbm.passthrough.dev"),
            devices: vec![Device {
                name: device_name("0b5f-11", "gpu-0000-c1-00-0"),
                container_edits: ContainerEdits {
                    device_nodes: vec![DeviceNode {
                        path: "/dev/vfio/12".into(),
                        host_path: Some("/dev/vfio/12".into()),
                        permissions: Some("rw".into()),
                    }],
                    ..ContainerEdits::default()
                },
            }],
            container_edits: ContainerEdits {
                env: vec!["PCI_RESOURCE_X=0000:c1:00.0".into()],
                mounts: vec![Mount::read_only_bind(Path::new("/var/lib/m.json"), "/var/run/m.json")],
                ..ContainerEdits::default()
            },
        }
    }

    #[test]
    fn a_written_spec_validates_and_names_its_ids() {
        assert_eq!(validate(&spec()), Ok(()));
        assert_eq!(
            device_id("hbm.passthrough.dev", "0b5f-11-gpu-0000-c1-00-0"),
            "hbm.passthrough.dev/gpu=0b5f-11-gpu-0000-c1-00-0"
        );
        let json = serde_json::to_value(spec()).unwrap();
        assert_eq!(json["cdiVersion"], "0.6.0");
        assert_eq!(
            json["containerEdits"]["mounts"][0]["options"],
            serde_json::json!(["ro", "nosuid", "nodev", "bind"])
        );
        assert_eq!(
            json["devices"][0]["containerEdits"]["deviceNodes"][0]["hostPath"],
            "/dev/vfio/12"
        );
    }

    #[test]
    fn each_defect_is_named() {
        let mut bad = spec();
        bad.kind = "gpu".into();
        assert_eq!(validate(&bad), Err(CdiError::Kind("gpu".into())));
        let mut bad = spec();
        bad.devices[0].name = "-x".into();
        assert_eq!(validate(&bad), Err(CdiError::DeviceName("-x".into())));
        let mut bad = spec();
        bad.devices.push(bad.devices[0].clone());
        assert!(matches!(validate(&bad), Err(CdiError::Duplicate(_))));
        let mut bad = spec();
        bad.container_edits.mounts[0].container_path = "relative".into();
        assert_eq!(validate(&bad), Err(CdiError::Path("relative".into())));
        let mut bad = spec();
        bad.container_edits.env.push("=x".into());
        assert_eq!(validate(&bad), Err(CdiError::Env("=x".into())));
        let mut bad = spec();
        bad.devices.clear();
        assert_eq!(validate(&bad), Err(CdiError::NoDevices));
    }
}
