//! Device health as the driver keeps it: every device with the device plugin's measured verdict
//! (vfio-pci binding, `/dev/vfio/<group>`, dax device or node online, region size unchanged;
//! [`plugin::health::HealthRoots::measure`]), and the `DRAResourceHealth` message built from it
//! (the same message for `v1` and `v1alpha1`).

use std::collections::BTreeMap;
use std::time::Duration;

use plugin::health::{HealthRoots, Verdict};
use proto::dra::health_v1::{DeviceHealth, DeviceIdentifier, HealthStatus, NodeWatchResourcesResponse};

use crate::devices::NodeDevice;

/// The longest message the kubelet keeps.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// The node's devices and their health at one measurement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// Keyed by device name.
    pub devices: BTreeMap<String, NodeDevice>,
    /// Keyed by device name: `None` healthy, else why not.
    pub verdicts: BTreeMap<String, Verdict>,
    /// Region id -> the size first seen (the "size unchanged" check).
    pub baseline: BTreeMap<String, u64>,
    /// When the verdicts were measured, seconds since the epoch.
    pub measured_at: i64,
}

impl DeviceState {
    /// Measures `devices`, carrying the size baseline over from `previous`.
    pub fn measure(roots: &HealthRoots, devices: Vec<NodeDevice>, previous: &DeviceState, now: i64) -> Self {
        let mut baseline = previous.baseline.clone();
        for device in &devices {
            for region in &device.info.regions {
                baseline.entry(region.id.clone()).or_insert(region.size_bytes);
            }
        }
        let verdicts = devices
            .iter()
            .map(|device| (device.name.clone(), roots.measure(&device.info, &baseline)))
            .collect();
        Self {
            devices: devices
                .into_iter()
                .map(|device| (device.name.clone(), device))
                .collect(),
            verdicts,
            baseline,
            measured_at: now,
        }
    }

    /// The devices measured healthy, in name order.
    pub fn healthy(&self) -> impl Iterator<Item = &NodeDevice> {
        self.devices
            .values()
            .filter(|device| self.verdicts.get(&device.name).is_some_and(Option::is_none))
    }

    /// The full health list for the kubelet.
    pub fn health_message(&self, pool: &str, timeout: Duration) -> NodeWatchResourcesResponse {
        let devices = self
            .devices
            .keys()
            .map(|name| {
                let verdict = self.verdicts.get(name).cloned().flatten();
                let (health, message) = match verdict {
                    None => (HealthStatus::Healthy, String::new()),
                    Some(reason) => (HealthStatus::Unhealthy, truncate(reason)),
                };
                DeviceHealth {
                    device: Some(DeviceIdentifier {
                        pool_name: pool.to_string(),
                        device_name: name.clone(),
                    }),
                    health: health as i32,
                    last_updated_time: self.measured_at,
                    health_check_timeout_seconds: timeout.as_secs() as i64,
                    message,
                }
            })
            .collect();
        NodeWatchResourcesResponse { devices }
    }
}

fn truncate(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_LEN {
        let mut cut = MAX_MESSAGE_LEN;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    message
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        assert_eq!(truncate("é".repeat(600)).len(), 1024);
        assert_eq!(truncate("ok".into()), "ok");
    }
}
