//! Helpers of the image tests: building the images once, running a container with podman, the
//! chart's settings turned into podman flags, a kubelet stand-in and a hook-sidecar client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod chart;
pub mod images;
pub mod kubelet;
pub mod podman;
pub mod sidecar_client;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// Upper bound for any wait: a guard against hanging, never an assertion on speed.
pub const GUARD: Duration = Duration::from_secs(60);

/// Runs `future`, panicking with `what` (and the container's log) when it outlives [`GUARD`].
pub async fn guarded<F: Future>(what: &str, container: &podman::Container, future: F) -> F::Output {
    match tokio::time::timeout(GUARD, future).await {
        Ok(value) => value,
        Err(_) => panic!("gave up waiting for {what}; container log:\n{}", container.logs()),
    }
}

/// Mode 0777, as the emptyDir KubeVirt shares between the sidecars and the compute container.
pub fn make_world_writable(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
}
