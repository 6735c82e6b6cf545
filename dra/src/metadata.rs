//! Device metadata files (KEP-5304): what virt-launcher reads to learn which PCI device to pass
//! through. One file per request of a claim, written on the host under the plugin directory and
//! bind-mounted read-only (through CDI) at
//! `/var/run/kubernetes.io/dra-device-attributes/resourceclaims/<claim>/<request>/<driver>-metadata.json`
//! for a claim the pod names, or
//! `.../resourceclaimtemplates/<pod claim name>/<request>/<driver>-metadata.json` for a claim made
//! from a template (recognised by its `resource.kubernetes.io/pod-claim-name` annotation).
//!
//! The file is a stream of `DeviceMetadata` objects, newest API version first; this driver
//! writes the one version there is, `metadata.resource.k8s.io/v1alpha1`. Attributes carry fully
//! qualified names (the driver's own get the driver name as their domain).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::api;

/// `apiVersion` of the objects written.
pub const API_VERSION: &str = "metadata.resource.k8s.io/v1alpha1";
/// Where the files appear inside the container.
pub const CONTAINER_DIR: &str = "/var/run/kubernetes.io/dra-device-attributes";

/// Which of the two container layouts a claim uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The pod names the claim: `resourceclaims/<claim name>/...`.
    Claim { claim_name: String },
    /// The claim was made from a template: `resourceclaimtemplates/<pod claim name>/...`.
    Template { pod_claim_name: String },
}

impl Layout {
    /// The layout of a claim read from the API server.
    pub fn of(claim: &api::ResourceClaim) -> Self {
        let annotation = claim
            .metadata
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(api::POD_CLAIM_NAME_ANNOTATION));
        match annotation {
            Some(pod_claim_name) => Layout::Template {
                pod_claim_name: pod_claim_name.clone(),
            },
            None => Layout::Claim {
                claim_name: claim.metadata.name.clone().unwrap_or_default(),
            },
        }
    }

    /// The file's path inside the container.
    pub fn container_path(&self, request: &str, driver: &str) -> String {
        let (folder, name) = match self {
            Layout::Claim { claim_name } => ("resourceclaims", claim_name),
            Layout::Template { pod_claim_name } => ("resourceclaimtemplates", pod_claim_name),
        };
        format!("{CONTAINER_DIR}/{folder}/{name}/{request}/{driver}-metadata.json")
    }
}

/// The claim a metadata file describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// The folder of a claim's metadata files on the host: `<plugin dir>/metadata/<claim uid>`.
pub fn claim_dir(plugin_dir: &Path, claim_uid: &str) -> PathBuf {
    plugin_dir.join("metadata").join(claim_uid)
}

/// The host file of one request: `<claim dir>/<request>/<driver>-metadata.json`.
pub fn host_path(plugin_dir: &Path, claim_uid: &str, request: &str, driver: &str) -> PathBuf {
    claim_dir(plugin_dir, claim_uid)
        .join(request)
        .join(format!("{driver}-metadata.json"))
}

fn qualified(driver: &str, attributes: &BTreeMap<String, api::DeviceAttribute>) -> Value {
    let map: serde_json::Map<String, Value> = attributes
        .iter()
        .map(|(name, value)| {
            let key = if name.contains('/') {
                name.clone()
            } else {
                format!("{driver}/{name}")
            };
            (key, serde_json::to_value(value).unwrap_or(Value::Null))
        })
        .collect();
    Value::Object(map)
}

/// The file's contents (one JSON object and a newline) for `request`'s `devices` (pool, device).
pub fn document(
    claim: &ClaimIdentity,
    generation: u64,
    layout: &Layout,
    request: &str,
    driver: &str,
    devices: &[(&str, &api::Device)],
) -> String {
    let devices: Vec<Value> = devices
        .iter()
        .map(|(pool, device)| {
            json!({
                "driver": driver,
                "pool": pool,
                "name": device.name,
                "attributes": qualified(driver, &device.attributes),
            })
        })
        .collect();
    let mut object = json!({
        "kind": "DeviceMetadata",
        "apiVersion": API_VERSION,
        "metadata": {
            "name": claim.name,
            "namespace": claim.namespace,
            "uid": claim.uid,
            "generation": generation,
        },
        "requests": [{"name": request, "devices": devices}],
    });
    if let Layout::Template { pod_claim_name } = layout {
        object["podClaimName"] = json!(pod_claim_name);
    }
    let mut text = object.to_string();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn claim(annotations: Option<BTreeMap<String, String>>) -> api::ResourceClaim {
        api::ResourceClaim {
            api_version: "resource.k8s.io/v1".into(),
            kind: "ResourceClaim".into(),
            metadata: ObjectMeta {
                name: Some("vm-gpu-x7k".into()),
                annotations,
                ..ObjectMeta::default()
            },
            status: api::ClaimStatus::default(),
        }
    }

    #[test]
    fn the_layout_follows_the_pod_claim_name_annotation() {
        let named = Layout::of(&claim(None));
        assert_eq!(
            named.container_path("gpu", "hbm.passthrough.dev"),
            "/var/run/kubernetes.io/dra-device-attributes/resourceclaims/vm-gpu-x7k/gpu/hbm.passthrough.dev-metadata.json"
        );
        let annotations = BTreeMap::from([(api::POD_CLAIM_NAME_ANNOTATION.to_string(), "hbm-gpu".to_string())]);
        let templated = Layout::of(&claim(Some(annotations)));
        assert_eq!(
            templated.container_path("gpu", "hbm.passthrough.dev"),
            "/var/run/kubernetes.io/dra-device-attributes/resourceclaimtemplates/hbm-gpu/gpu/hbm.passthrough.dev-metadata.json"
        );
    }

    #[test]
    fn the_document_qualifies_attributes_and_names_the_claim() {
        let device = api::Device {
            name: "gpu-0000-c1-00-0".into(),
            attributes: BTreeMap::from([
                (
                    "resource.kubernetes.io/pciBusID".to_string(),
                    api::DeviceAttribute::string("0000:c1:00.0"),
                ),
                ("hbmRegions".to_string(), api::DeviceAttribute::int(1)),
            ]),
            capacity: BTreeMap::new(),
        };
        let identity = ClaimIdentity {
            namespace: "vms".into(),
            name: "vm-gpu-x7k".into(),
            uid: "u-1".into(),
        };
        let layout = Layout::Template {
            pod_claim_name: "hbm-gpu".into(),
        };
        let text = document(
            &identity,
            2,
            &layout,
            "gpu",
            "hbm.passthrough.dev",
            &[("node-a", &device)],
        );
        assert!(text.ends_with('\n'));
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            json!({
                "kind": "DeviceMetadata",
                "apiVersion": "metadata.resource.k8s.io/v1alpha1",
                "metadata": {"name": "vm-gpu-x7k", "namespace": "vms", "uid": "u-1", "generation": 2},
                "podClaimName": "hbm-gpu",
                "requests": [{"name": "gpu", "devices": [{
                    "driver": "hbm.passthrough.dev", "pool": "node-a", "name": "gpu-0000-c1-00-0",
                    "attributes": {
                        "resource.kubernetes.io/pciBusID": {"string": "0000:c1:00.0"},
                        "hbm.passthrough.dev/hbmRegions": {"int": 1}
                    }
                }]}]
            })
        );
    }
}
