//! Measured device health: each check reads the live sysfs root and `/dev` stand-in, so a device
//! recovers as soon as the cause goes away.
//!
//! A device is Healthy when: the GPU is bound to `vfio-pci`; `<dev>/vfio/<group>` exists; each
//! region's memory is online in its node (node listed in `node/online`) or its dax device exists
//! under `<dev>`; and each region's size equals the size first seen for it (`baseline`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::resources::DeviceInfo;

/// Where the checks look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthRoots {
    /// Root holding `sys/` (`/` on a real host).
    pub sysfs_root: PathBuf,
    /// Where `vfio/`, `iommu` and dax devices live as this process sees them (`/dev` on a real
    /// host, e.g. `/host/dev` in a pod that mounts the host's `/dev` there).
    pub dev_root: PathBuf,
    /// Where the same device nodes live as the kubelet (the host) sees them: the `host_path` of
    /// every `DeviceSpec` handed out by Allocate (`/dev` unless the host itself is unusual).
    pub host_dev_root: PathBuf,
}

/// Result of measuring one device: `None` when healthy, else why not (names the file or
/// condition).
pub type Verdict = Option<String>;

impl HealthRoots {
    fn pci_device_dir(&self, device: &DeviceInfo) -> PathBuf {
        self.sysfs_root.join("sys/bus/pci/devices").join(device.gpu.to_string())
    }

    /// Path of a `/dev/...` path under the dev root (`/dev/dax0.0` -> `<dev_root>/dax0.0`).
    pub fn dev_path(&self, dev_path: &str) -> PathBuf {
        let relative = dev_path
            .strip_prefix("/dev/")
            .unwrap_or(dev_path)
            .trim_start_matches('/');
        self.dev_root.join(relative)
    }

    /// Path of a `/dev/...` path as the host sees it (`/dev/dax0.0` -> `<host_dev_root>/dax0.0`).
    pub fn host_dev_path(&self, dev_path: &str) -> PathBuf {
        let relative = dev_path
            .strip_prefix("/dev/")
            .unwrap_or(dev_path)
            .trim_start_matches('/');
        self.host_dev_root.join(relative)
    }

    /// `<dev_root>/vfio/<group>`.
    pub fn vfio_group_path(&self, group: u32) -> PathBuf {
        self.dev_root.join("vfio").join(group.to_string())
    }

    /// The bound driver's name, read from the `driver` symlink.
    pub fn bound_driver(&self, device: &DeviceInfo) -> Option<String> {
        let link = std::fs::read_link(self.pci_device_dir(device).join("driver")).ok()?;
        link.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    /// The `vfioN` cdev name when the device is usable through iommufd
    /// (`<pci dir>/vfio-dev/vfioN` exists and `<dev_root>/iommu` exists).
    pub fn iommufd_cdev(&self, device: &DeviceInfo) -> Option<String> {
        if !self.dev_root.join("iommu").exists() {
            return None;
        }
        let entries = std::fs::read_dir(self.pci_device_dir(device).join("vfio-dev")).ok()?;
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("vfio") && n[4..].chars().all(|c| c.is_ascii_digit()) && n.len() > 4)
            .collect();
        names.sort();
        names.into_iter().next()
    }

    fn online_nodes(&self) -> Option<Vec<u32>> {
        topology::sysfs::Sysfs::new(&self.sysfs_root)
            .read_list("sys/devices/system/node/online")
            .ok()
    }

    /// Measures one device. `baseline` maps region id -> the size first seen.
    pub fn measure(&self, device: &DeviceInfo, baseline: &BTreeMap<String, u64>) -> Verdict {
        match self.bound_driver(device) {
            Some(d) if d == "vfio-pci" => {}
            Some(d) => return Some(format!("GPU {} is bound to {d}, not vfio-pci", device.gpu)),
            None => return Some(format!("GPU {} is not bound to vfio-pci (no driver)", device.gpu)),
        }
        let Some(group) = device.iommu_group else {
            return Some(format!("GPU {} has no IOMMU group (IOMMU off?)", device.gpu));
        };
        let group_path = self.vfio_group_path(group);
        if !group_path.exists() {
            return Some(format!("{} is missing", group_path.display()));
        }
        let mut online_nodes: Option<Option<Vec<u32>>> = None;
        for region in &device.regions {
            if let Some(&first) = baseline.get(&region.id)
                && first != region.size_bytes
            {
                return Some(format!(
                    "region {} changed size from {first} to {} bytes",
                    region.id, region.size_bytes
                ));
            }
            // An online region is measured by its node even when discovery names its dax device:
            // in system-ram mode `/dev/daxX.Y` does not exist.
            if let Some(dax) = region.device_node() {
                let path = self.dev_path(dax);
                if !path.exists() {
                    return Some(format!(
                        "dax device {} of region {} is missing",
                        path.display(),
                        region.id
                    ));
                }
            } else if let Some(node) = region.host_node {
                let online = online_nodes.get_or_insert_with(|| self.online_nodes());
                if !online.as_ref().is_some_and(|nodes| nodes.contains(&node)) {
                    return Some(format!("node {node} of region {} is not online", region.id));
                }
            } else {
                return Some(format!("region {} has neither a dax device nor a host node", region.id));
            }
        }
        None
    }
}

/// Logs a device's health change with its reason (`before`: its previous verdict, `None` when
/// first seen; nothing is logged when the verdict is unchanged or a new device is healthy).
pub fn log_health_change(resource: &str, device: &str, before: Option<&Verdict>, verdict: &Verdict) {
    if before == Some(verdict) {
        return;
    }
    match verdict {
        Some(reason) => tracing::warn!(resource = %resource, device = %device, %reason, "device unhealthy"),
        None if before.is_some() => tracing::info!(resource = %resource, device = %device, "device healthy again"),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::resources::RegionInfo;
    use topology::PciAddress;

    fn device() -> DeviceInfo {
        DeviceInfo {
            id: "0000:c1:00.0".into(),
            gpu: PciAddress::parse("0000:c1:00.0").unwrap(),
            vendor: "1002".into(),
            device: "74a1".into(),
            driver: Some("vfio-pci".into()),
            iommu_group: Some(12),
            cpu_node: Some(0),
            peer_group: None,
            regions: vec![
                RegionInfo {
                    id: "0000:c1:00.0/dax0.0".into(),
                    host_node: Some(2),
                    size_bytes: 4096,
                    dax: Some("/dev/dax0.0".into()),
                    online: false,
                },
                RegionInfo {
                    id: "0000:c1:00.0/node3".into(),
                    host_node: Some(3),
                    size_bytes: 8192,
                    dax: None,
                    online: true,
                },
            ],
        }
    }

    fn host() -> (tempfile::TempDir, HealthRoots) {
        let dir = tempfile::tempdir().unwrap();
        let roots = HealthRoots {
            sysfs_root: dir.path().join("root"),
            dev_root: dir.path().join("dev"),
            host_dev_root: "/dev".into(),
        };
        let pci = roots.sysfs_root.join("sys/bus/pci/devices/0000:c1:00.0");
        std::fs::create_dir_all(&pci).unwrap();
        let drivers = roots.sysfs_root.join("sys/bus/pci/drivers");
        std::fs::create_dir_all(drivers.join("vfio-pci")).unwrap();
        std::fs::create_dir_all(drivers.join("amdgpu")).unwrap();
        std::os::unix::fs::symlink("../../drivers/vfio-pci", pci.join("driver")).unwrap();
        std::fs::create_dir_all(roots.sysfs_root.join("sys/devices/system/node")).unwrap();
        std::fs::write(roots.sysfs_root.join("sys/devices/system/node/online"), "0-1,3\n").unwrap();
        std::fs::create_dir_all(roots.dev_root.join("vfio")).unwrap();
        std::fs::write(roots.dev_root.join("vfio/12"), "").unwrap();
        std::fs::write(roots.dev_root.join("dax0.0"), "").unwrap();
        (dir, roots)
    }

    #[test]
    fn each_cause_is_named_and_recovery_is_measured() {
        let (_dir, roots) = host();
        let dev = device();
        let none = BTreeMap::new();
        assert_eq!(roots.measure(&dev, &none), None);

        let link = roots.sysfs_root.join("sys/bus/pci/devices/0000:c1:00.0/driver");
        std::fs::remove_file(&link).unwrap();
        assert_eq!(
            roots.measure(&dev, &none).unwrap(),
            "GPU 0000:c1:00.0 is not bound to vfio-pci (no driver)"
        );
        std::os::unix::fs::symlink("../../drivers/amdgpu", &link).unwrap();
        assert_eq!(
            roots.measure(&dev, &none).unwrap(),
            "GPU 0000:c1:00.0 is bound to amdgpu, not vfio-pci"
        );
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink("../../drivers/vfio-pci", &link).unwrap();

        std::fs::remove_file(roots.dev_root.join("vfio/12")).unwrap();
        assert_eq!(
            roots.measure(&dev, &none).unwrap(),
            format!("{}/vfio/12 is missing", roots.dev_root.display())
        );
        std::fs::write(roots.dev_root.join("vfio/12"), "").unwrap();

        std::fs::remove_file(roots.dev_root.join("dax0.0")).unwrap();
        assert_eq!(
            roots.measure(&dev, &none).unwrap(),
            format!(
                "dax device {}/dax0.0 of region 0000:c1:00.0/dax0.0 is missing",
                roots.dev_root.display()
            )
        );
        std::fs::write(roots.dev_root.join("dax0.0"), "").unwrap();

        std::fs::write(roots.sysfs_root.join("sys/devices/system/node/online"), "0-1\n").unwrap();
        assert_eq!(
            roots.measure(&dev, &none).unwrap(),
            "node 3 of region 0000:c1:00.0/node3 is not online"
        );
        std::fs::write(roots.sysfs_root.join("sys/devices/system/node/online"), "0-3\n").unwrap();

        let baseline = BTreeMap::from([("0000:c1:00.0/node3".to_string(), 4096u64)]);
        assert_eq!(
            roots.measure(&dev, &baseline).unwrap(),
            "region 0000:c1:00.0/node3 changed size from 4096 to 8192 bytes"
        );
        assert_eq!(roots.measure(&dev, &none), None);
    }

    #[test]
    fn an_online_dax_region_is_measured_by_its_node_not_its_absent_device_node() {
        let (_dir, roots) = host();
        let mut dev = device();
        // dax0.0 reconfigured to system-ram: online in node 2, no /dev/dax0.0 any more.
        dev.regions[0].online = true;
        std::fs::remove_file(roots.dev_root.join("dax0.0")).unwrap();
        std::fs::write(roots.sysfs_root.join("sys/devices/system/node/online"), "0-3\n").unwrap();
        let none = BTreeMap::new();
        assert_eq!(roots.measure(&dev, &none), None);
        std::fs::write(roots.sysfs_root.join("sys/devices/system/node/online"), "0-1,3\n").unwrap();
        assert_eq!(
            roots.measure(&dev, &none).unwrap(),
            "node 2 of region 0000:c1:00.0/dax0.0 is not online"
        );
    }

    #[test]
    fn iommufd_cdev_needs_dev_iommu_and_a_vfio_dev_entry() {
        let (_dir, roots) = host();
        let dev = device();
        assert_eq!(roots.iommufd_cdev(&dev), None);
        std::fs::create_dir_all(roots.sysfs_root.join("sys/bus/pci/devices/0000:c1:00.0/vfio-dev/vfio3")).unwrap();
        assert_eq!(roots.iommufd_cdev(&dev), None);
        std::fs::write(roots.dev_root.join("iommu"), "").unwrap();
        assert_eq!(roots.iommufd_cdev(&dev).as_deref(), Some("vfio3"));
    }
}
