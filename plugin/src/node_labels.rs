//! The Node inventory: labels `<domain>/hbm.present`, and per resource
//! `<domain>/<resource with '/' as '_'>.regions`, `.hbm-gib` and `.kubevirt-usable-regions` (how
//! many of its regions KubeVirt's virt-launcher can back a guest cell with: the online ones,
//! [`crate::resources::RegionInfo::kubevirt_usable`]), plus the annotation
//! `<domain>/discovery` with the discovery JSON. Applied with server-side apply under the field
//! manager `hbm-device-plugin`, and only when the desired object changed.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use topology::Inventory;

use crate::resources::Resource;

/// Field manager name used for server-side apply.
pub const FIELD_MANAGER: &str = "hbm-device-plugin";

#[derive(Debug, thiserror::Error)]
pub enum NodeLabelError {
    #[error("server-side apply of Node {node} labels failed: {source} (check the RBAC for nodes/patch)")]
    Apply { node: String, source: kube::Error },
}

/// The label name part for a resource (`amd.com/mi300x-hbm` -> `amd.com_mi300x-hbm`).
fn label_stem(resource: &str) -> String {
    resource.replace('/', "_")
}

/// The apply body for `node`. Labels whose name would exceed 63 characters are left out and
/// reported in the returned list.
pub fn desired(
    node: &str,
    domain: &str,
    resources: &BTreeMap<String, Resource>,
    inventory: &Inventory,
) -> (Value, Vec<String>) {
    let mut labels = BTreeMap::new();
    let mut skipped = Vec::new();
    let present = resources.values().any(|r| !r.devices.is_empty());
    labels.insert(format!("{domain}/hbm.present"), present.to_string());
    for resource in resources.values() {
        let regions: usize = resource.devices.values().map(|d| d.regions.len()).sum();
        let bytes: u64 = resource
            .devices
            .values()
            .flat_map(|d| &d.regions)
            .map(|r| r.size_bytes)
            .sum();
        let gib = bytes >> 30;
        let usable = resource
            .devices
            .values()
            .flat_map(|d| &d.regions)
            .filter(|r| r.kubevirt_usable())
            .count();
        let stem = label_stem(&resource.name);
        let values = [
            ("regions", regions.to_string()),
            ("hbm-gib", gib.to_string()),
            ("kubevirt-usable-regions", usable.to_string()),
        ];
        for (suffix, value) in values {
            let name = format!("{stem}.{suffix}");
            if name.len() > 63 {
                skipped.push(format!("{domain}/{name}"));
                continue;
            }
            labels.insert(format!("{domain}/{name}"), value);
        }
    }
    // Compact JSON of plain types: serialization cannot fail.
    let discovery = serde_json::to_string(inventory).unwrap_or_default();
    let body = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node,
            "labels": labels,
            "annotations": { format!("{domain}/discovery"): discovery },
        },
    });
    (body, skipped)
}

/// Keeps the own Node's labels in line; remembers what it applied last.
pub struct NodeLabeler {
    api: Api<Node>,
    node: String,
    last: Option<Value>,
}

impl NodeLabeler {
    pub fn new(client: kube::Client, node: impl Into<String>) -> Self {
        Self {
            api: Api::all(client),
            node: node.into(),
            last: None,
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Applies `body` unless it equals the last applied one. Returns whether a request was sent.
    pub async fn sync(&mut self, body: Value) -> Result<bool, NodeLabelError> {
        if self.last.as_ref() == Some(&body) {
            return Ok(false);
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.api
            .patch(&self.node, &params, &Patch::Apply(&body))
            .await
            .map_err(|source| NodeLabelError::Apply {
                node: self.node.clone(),
                source,
            })?;
        tracing::info!(node = %self.node, "applied Node labels and discovery annotation");
        self.last = Some(body);
        Ok(true)
    }
}
