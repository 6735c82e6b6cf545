//! The `resource.k8s.io/v1` objects the driver writes (`ResourceSlice`) and reads
//! (`ResourceClaim`), with only the fields it uses. Written here rather than taken from
//! k8s-openapi so the workspace can stay on a Kubernetes feature level below 1.34.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{ClusterResourceScope, NamespaceResourceScope};
use serde::{Deserialize, Serialize};

/// API group of DRA objects.
pub const GROUP: &str = "resource.k8s.io";
/// API version served since Kubernetes 1.34 (GA).
pub const VERSION: &str = "v1";
/// Domain of the standard device attributes.
pub const STANDARD_DOMAIN: &str = "resource.kubernetes.io";
/// At most this many devices in one ResourceSlice.
pub const MAX_DEVICES_PER_SLICE: usize = 128;

/// One typed attribute value: exactly one of the fields is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAttribute {
    #[serde(rename = "int", default, skip_serializing_if = "Option::is_none")]
    pub int: Option<i64>,
    #[serde(rename = "bool", default, skip_serializing_if = "Option::is_none")]
    pub bool: Option<bool>,
    #[serde(rename = "string", default, skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,
    #[serde(rename = "version", default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl DeviceAttribute {
    pub fn int(value: i64) -> Self {
        Self {
            int: Some(value),
            ..Self::default()
        }
    }

    pub fn bool(value: bool) -> Self {
        Self {
            bool: Some(value),
            ..Self::default()
        }
    }

    pub fn string(value: impl Into<String>) -> Self {
        Self {
            string: Some(value.into()),
            ..Self::default()
        }
    }
}

/// A capacity: a Kubernetes quantity string (`64Gi`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCapacity {
    pub value: String,
}

/// One device of a slice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// A DNS label, unique in the pool.
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, DeviceAttribute>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capacity: BTreeMap<String, DeviceCapacity>,
}

/// `spec.pool`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourcePool {
    pub name: String,
    pub generation: i64,
    pub resource_slice_count: i64,
}

/// `ResourceSlice.spec`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSliceSpec {
    pub driver: String,
    pub node_name: String,
    pub pool: ResourcePool,
    #[serde(default)]
    pub devices: Vec<Device>,
}

/// A `resource.k8s.io/v1` ResourceSlice (cluster scoped).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResourceSlice {
    #[serde(rename = "apiVersion", default = "api_version")]
    pub api_version: String,
    #[serde(default = "slice_kind")]
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ResourceSliceSpec,
}

fn api_version() -> String {
    format!("{GROUP}/{VERSION}")
}

fn slice_kind() -> String {
    "ResourceSlice".into()
}

fn claim_kind() -> String {
    "ResourceClaim".into()
}

impl ResourceSlice {
    /// A new slice object named `name` holding `spec`.
    pub fn new(name: &str, spec: ResourceSliceSpec) -> Self {
        Self {
            api_version: api_version(),
            kind: slice_kind(),
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..ObjectMeta::default()
            },
            spec,
        }
    }
}

/// One allocated device of a claim: `status.allocation.devices.results[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationResult {
    pub request: String,
    pub driver: String,
    pub pool: String,
    pub device: String,
}

/// `status.allocation.devices`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAllocation {
    #[serde(default)]
    pub results: Vec<AllocationResult>,
}

/// `status.allocation`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    #[serde(default)]
    pub devices: DeviceAllocation,
}

/// `ResourceClaim.status` (only the allocation is read).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimStatus {
    #[serde(default)]
    pub allocation: Option<Allocation>,
}

/// A `resource.k8s.io/v1` ResourceClaim (namespaced); `spec` is not read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResourceClaim {
    #[serde(rename = "apiVersion", default = "api_version")]
    pub api_version: String,
    #[serde(default = "claim_kind")]
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: ClaimStatus,
}

/// Annotation the ResourceClaim controller puts on a claim made from a template: the
/// `pod.spec.resourceClaims[].name` it was made for.
pub const POD_CLAIM_NAME_ANNOTATION: &str = "resource.kubernetes.io/pod-claim-name";

macro_rules! dra_resource {
    ($type:ty, $kind:literal, $plural:literal, $scope:ty) => {
        impl kube::Resource for $type {
            type DynamicType = ();
            type Scope = $scope;

            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(GROUP)
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(VERSION)
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

dra_resource!(ResourceSlice, "ResourceSlice", "resourceslices", ClusterResourceScope);
dra_resource!(ResourceClaim, "ResourceClaim", "resourceclaims", NamespaceResourceScope);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use kube::Resource;

    #[test]
    fn paths_are_the_resource_k8s_io_v1_ones() {
        assert_eq!(
            ResourceSlice::url_path(&(), None),
            "/apis/resource.k8s.io/v1/resourceslices"
        );
        assert_eq!(
            ResourceClaim::url_path(&(), Some("vms")),
            "/apis/resource.k8s.io/v1/namespaces/vms/resourceclaims"
        );
    }

    #[test]
    fn attributes_serialize_as_one_typed_field() {
        let json = serde_json::to_string(&DeviceAttribute::int(3)).unwrap();
        assert_eq!(json, r#"{"int":3}"#);
        let json = serde_json::to_string(&DeviceAttribute::string("spm")).unwrap();
        assert_eq!(json, r#"{"string":"spm"}"#);
    }

    #[test]
    fn a_claim_reads_its_allocation_results() {
        let claim: ResourceClaim = serde_json::from_str(
            r#"{"apiVersion":"resource.k8s.io/v1","kind":"ResourceClaim",
                "metadata":{"name":"gpu","namespace":"vms","uid":"u-1"},
                "spec":{"devices":{"requests":[]}},
                "status":{"allocation":{"devices":{"results":[
                  {"request":"gpu","driver":"hbm.passthrough.dev","pool":"node-a","device":"gpu-0000-c1-00-0"}]}}}}"#,
        )
        .unwrap();
        let results = claim.status.allocation.unwrap().devices.results;
        assert_eq!(
            results,
            [AllocationResult {
                request: "gpu".into(),
                driver: "hbm.passthrough.dev".into(),
                pool: "node-a".into(),
                device: "gpu-0000-c1-00-0".into(),
            }]
        );
    }
}
