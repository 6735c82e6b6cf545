//! Reading ResourceClaims: the kubelet sends only a claim's identity, the driver GETs the claim
//! and keeps the allocation results of its own driver name.

use kube::Api;

use crate::api::{AllocationResult, ResourceClaim};

/// Why a claim cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("cannot get ResourceClaim {namespace}/{name} from the API server: {message}")]
    Get {
        namespace: String,
        name: String,
        message: String,
    },
    #[error(
        "ResourceClaim {namespace}/{name} has UID {found}, the kubelet asked for {wanted} (the claim was deleted and recreated)"
    )]
    Uid {
        namespace: String,
        name: String,
        found: String,
        wanted: String,
    },
    #[error("ResourceClaim {namespace}/{name} is not allocated (no status.allocation)")]
    NotAllocated { namespace: String, name: String },
}

/// Where claims come from: the API server, or a fixed set in benchmarks.
#[tonic::async_trait]
pub trait ClaimSource: Send + Sync {
    /// The claim `namespace/name` as stored.
    async fn get(&self, namespace: &str, name: &str) -> Result<ResourceClaim, ClaimError>;
}

/// Claims read from the API server.
#[derive(Clone)]
pub struct ApiClaims {
    pub client: kube::Client,
}

#[tonic::async_trait]
impl ClaimSource for ApiClaims {
    async fn get(&self, namespace: &str, name: &str) -> Result<ResourceClaim, ClaimError> {
        let api: Api<ResourceClaim> = Api::namespaced(self.client.clone(), namespace);
        api.get(name).await.map_err(|error| ClaimError::Get {
            namespace: namespace.to_string(),
            name: name.to_string(),
            message: error.to_string(),
        })
    }
}

/// Checks the claim's UID and returns the allocation results of `driver`, in order.
pub fn own_results(
    claim: &ResourceClaim,
    namespace: &str,
    name: &str,
    uid: &str,
    driver: &str,
) -> Result<Vec<AllocationResult>, ClaimError> {
    let found = claim.metadata.uid.as_deref().unwrap_or_default();
    if found != uid {
        return Err(ClaimError::Uid {
            namespace: namespace.to_string(),
            name: name.to_string(),
            found: found.to_string(),
            wanted: uid.to_string(),
        });
    }
    let allocation = claim
        .status
        .allocation
        .as_ref()
        .ok_or_else(|| ClaimError::NotAllocated {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })?;
    Ok(allocation
        .devices
        .results
        .iter()
        .filter(|result| result.driver == driver)
        .cloned()
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn claim(uid: &str, allocated: bool) -> ResourceClaim {
        let status = if allocated {
            serde_json::json!({"allocation": {"devices": {"results": [
                {"request": "gpu", "driver": "hbm.passthrough.dev", "pool": "node-a", "device": "gpu-1"},
                {"request": "nic", "driver": "other.example.com", "pool": "node-a", "device": "nic-1"}
            ]}}})
        } else {
            serde_json::json!({})
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "c", "namespace": "vms", "uid": uid},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn keeps_only_this_drivers_results() {
        let results = own_results(&claim("u-1", true), "vms", "c", "u-1", "hbm.passthrough.dev").unwrap();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].device, "gpu-1");
    }

    #[test]
    fn a_uid_mismatch_or_a_missing_allocation_is_an_error() {
        let error = own_results(&claim("u-2", true), "vms", "c", "u-1", "hbm.passthrough.dev").unwrap_err();
        assert_eq!(
            error.to_string(),
            "ResourceClaim vms/c has UID u-2, the kubelet asked for u-1 (the claim was deleted and recreated)"
        );
        let error = own_results(&claim("u-1", false), "vms", "c", "u-1", "hbm.passthrough.dev").unwrap_err();
        assert_eq!(
            error.to_string(),
            "ResourceClaim vms/c is not allocated (no status.allocation)"
        );
    }
}
