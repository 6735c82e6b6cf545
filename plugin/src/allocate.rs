//! Allocate and GetPreferredAllocation as pure functions over the devices a resource serves.
//!
//! Per container the response carries: `/dev/vfio/vfio`, `/dev/vfio/<group>` of every GPU, with
//! iommufd also `/dev/iommu` and `/dev/vfio/devices/vfioN`, and the dax device of every region
//! that is reachable only through it (devdax), all `rw` (an online region, dax in system-ram mode
//! or a plain node, gets no device node: the VM binds it by host node, and its `/dev/daxX.Y` does
//! not exist); the env var `PCI_RESOURCE_<RESOURCE>` (KubeVirt's convention) with the comma-separated
//! PCI addresses; and `HBM_REGIONS_<RESOURCE>` with the regions in the compact form
//! `<pci address>,<host node|->,<size bytes>,<dax path|->` joined by `;`, in device then region
//! order, every region whether online or not (the dax path as discovery reports it), e.g. `0000:c1:00.0,2,68719476736,/dev/dax0.0;0000:c2:00.0,3,68719476736,-`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use proto::deviceplugin::v1beta1::{ContainerAllocateResponse, DeviceSpec};

use crate::health::HealthRoots;
use crate::resources::{DeviceInfo, RegionInfo, env_suffix};

/// Why part of an Allocate call cannot be served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocateError {
    /// `id` is cut to 64 bytes (`…` marks the cut): the kubelet's input, echoed into a gRPC
    /// status and the log.
    #[error("resource {resource}: unknown device ID {id:?} (not advertised by this plugin)")]
    UnknownDevice { resource: String, id: String },
    #[error("resource {resource}: device ID {id:?} appears more than once in one container request")]
    DuplicateDevice { resource: String, id: String },
    #[error("resource {resource}: device {id} is unhealthy: {reason}")]
    Unhealthy {
        resource: String,
        id: String,
        reason: String,
    },
    #[error("resource {resource}: empty device list in a container request")]
    Empty { resource: String },
}

/// The env var name with the PCI addresses (`PCI_RESOURCE_AMD_COM_MI300X-HBM`).
pub fn pci_env_name(resource: &str) -> String {
    format!("PCI_RESOURCE_{}", env_suffix(resource))
}

/// The env var name with the compact region list (`HBM_REGIONS_AMD_COM_MI300X-HBM`).
pub fn regions_env_name(resource: &str) -> String {
    format!("HBM_REGIONS_{}", env_suffix(resource))
}

/// The compact region list of `devices` (see the module docs).
pub fn regions_env_value(devices: &[&DeviceInfo]) -> String {
    let mut parts = Vec::new();
    for device in devices {
        for region in &device.regions {
            let node = region.host_node.map_or_else(|| "-".to_string(), |n| n.to_string());
            let dax = region.dax.as_deref().unwrap_or("-");
            parts.push(format!("{},{node},{},{dax}", device.gpu, region.size_bytes));
        }
    }
    parts.join(";")
}

fn spec(roots: &HealthRoots, container_path: &str) -> DeviceSpec {
    DeviceSpec {
        container_path: container_path.to_string(),
        host_path: roots.host_dev_path(container_path).to_string_lossy().into_owned(),
        permissions: "rw".to_string(),
    }
}

/// Builds one container's response for `devices` (already looked up and checked healthy).
pub fn container_response(resource: &str, devices: &[&DeviceInfo], roots: &HealthRoots) -> ContainerAllocateResponse {
    let mut paths: Vec<String> = vec!["/dev/vfio/vfio".to_string()];
    let mut push = |p: String| {
        if !paths.contains(&p) {
            paths.push(p);
        }
    };
    for device in devices {
        if let Some(group) = device.iommu_group {
            push(format!("/dev/vfio/{group}"));
        }
        if let Some(cdev) = roots.iommufd_cdev(device) {
            push("/dev/iommu".to_string());
            push(format!("/dev/vfio/devices/{cdev}"));
        }
        for dax in device.regions.iter().filter_map(RegionInfo::device_node) {
            push(dax.to_string());
        }
    }
    let addresses: Vec<String> = devices.iter().map(|d| d.gpu.to_string()).collect();
    let envs = BTreeMap::from([
        (pci_env_name(resource), addresses.join(",")),
        (regions_env_name(resource), regions_env_value(devices)),
    ]);
    ContainerAllocateResponse {
        envs: envs.into_iter().collect(),
        mounts: Vec::new(),
        devices: paths.iter().map(|p| spec(roots, p)).collect(),
        annotations: Default::default(),
        cdi_devices: Vec::new(),
    }
}

/// Picks `size` devices out of `available`, always including `must_include`: prefer devices
/// sharing a CPU node with those already chosen, then sharing a peer group, then devices whose
/// CPU node can hold the most of the request; ties go to the lowest ID. Unknown IDs are ignored.
pub fn preferred(
    devices: &BTreeMap<String, DeviceInfo>,
    available: &[String],
    must_include: &[String],
    size: usize,
) -> Vec<String> {
    let mut chosen: Vec<&DeviceInfo> = Vec::new();
    for id in must_include {
        if let Some(d) = devices.get(id)
            && !chosen.iter().any(|c| c.id == d.id)
        {
            chosen.push(d);
        }
    }
    let mut candidates: Vec<&DeviceInfo> = available
        .iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter_map(|id| devices.get(id))
        .filter(|d| !chosen.iter().any(|c| c.id == d.id))
        .collect();
    let mut per_node: BTreeMap<Option<u32>, usize> = BTreeMap::new();
    for d in candidates.iter().chain(chosen.iter()) {
        *per_node.entry(d.cpu_node).or_default() += 1;
    }
    while chosen.len() < size && !candidates.is_empty() {
        let score = |d: &DeviceInfo| {
            let same_node = chosen
                .iter()
                .filter(|c| c.cpu_node.is_some() && c.cpu_node == d.cpu_node)
                .count();
            let same_peer = chosen
                .iter()
                .filter(|c| c.peer_group.is_some() && c.peer_group == d.peer_group)
                .count();
            let node_capacity = if d.cpu_node.is_some() {
                per_node.get(&d.cpu_node).copied().unwrap_or(0)
            } else {
                0
            };
            (same_node, same_peer, node_capacity)
        };
        let mut best = 0;
        for (i, d) in candidates.iter().enumerate() {
            if (score(d), Reverse(&d.id)) > (score(candidates[best]), Reverse(&candidates[best].id)) {
                best = i;
            }
        }
        chosen.push(candidates.remove(best));
    }
    chosen.into_iter().map(|d| d.id.clone()).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use topology::PciAddress;

    fn device(addr: &str, group: u32, node: Option<u32>, peer: Option<&str>) -> DeviceInfo {
        DeviceInfo {
            id: addr.into(),
            gpu: PciAddress::parse(addr).unwrap(),
            vendor: "1002".into(),
            device: "74a1".into(),
            driver: Some("vfio-pci".into()),
            iommu_group: Some(group),
            cpu_node: node,
            peer_group: peer.map(str::to_string),
            regions: vec![RegionInfo {
                id: format!("{addr}/dax{group}.0"),
                host_node: Some(group + 10),
                size_bytes: 1 << 30,
                dax: Some(format!("/dev/dax{group}.0")),
                online: false,
            }],
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn response_has_vfio_dax_specs_and_both_env_vars() {
        let roots = HealthRoots {
            sysfs_root: "/nonexistent".into(),
            dev_root: "/nonexistent-dev".into(),
            host_dev_root: "/hostdev".into(),
        };
        let a = device("0000:c1:00.0", 5, Some(0), None);
        let mut b = device("0000:c2:00.0", 5, Some(0), None);
        b.regions[0].dax = None;
        b.regions[0].host_node = Some(7);
        let r = container_response("amd.com/mi300x-hbm", &[&a, &b], &roots);
        let specs: Vec<(&str, &str, &str)> = r
            .devices
            .iter()
            .map(|d| (d.container_path.as_str(), d.host_path.as_str(), d.permissions.as_str()))
            .collect();
        assert_eq!(
            specs,
            [
                ("/dev/vfio/vfio", "/hostdev/vfio/vfio", "rw"),
                ("/dev/vfio/5", "/hostdev/vfio/5", "rw"),
                ("/dev/dax5.0", "/hostdev/dax5.0", "rw"),
            ]
        );
        assert_eq!(r.envs.len(), 2);
        assert_eq!(r.envs["PCI_RESOURCE_AMD_COM_MI300X-HBM"], "0000:c1:00.0,0000:c2:00.0");
        assert_eq!(
            r.envs["HBM_REGIONS_AMD_COM_MI300X-HBM"],
            "0000:c1:00.0,15,1073741824,/dev/dax5.0;0000:c2:00.0,7,1073741824,-"
        );
    }

    #[test]
    fn online_regions_get_no_dax_device_node_but_stay_in_the_region_list() {
        let roots = HealthRoots {
            sysfs_root: "/nonexistent".into(),
            dev_root: "/nonexistent-dev".into(),
            host_dev_root: "/dev".into(),
        };
        // c1: its dax device reconfigured to system-ram (online, node 15); c2: devdax only;
        // c3: a plain online HBM node without a dax device.
        let mut online_dax = device("0000:c1:00.0", 5, Some(0), None);
        online_dax.regions[0].online = true;
        let devdax = device("0000:c2:00.0", 6, Some(0), None);
        let mut plain = device("0000:c3:00.0", 7, Some(0), None);
        plain.regions[0].dax = None;
        plain.regions[0].online = true;
        let r = container_response("amd.com/x", &[&online_dax, &devdax, &plain], &roots);
        let paths: Vec<&str> = r.devices.iter().map(|s| s.container_path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/dev/vfio/vfio",
                "/dev/vfio/5",
                "/dev/vfio/6",
                "/dev/dax6.0",
                "/dev/vfio/7"
            ]
        );
        assert_eq!(
            r.envs["HBM_REGIONS_AMD_COM_X"],
            "0000:c1:00.0,15,1073741824,/dev/dax5.0;0000:c2:00.0,16,1073741824,/dev/dax6.0;0000:c3:00.0,17,1073741824,-"
        );
        assert_eq!(
            r.envs["PCI_RESOURCE_AMD_COM_X"],
            "0000:c1:00.0,0000:c2:00.0,0000:c3:00.0"
        );
    }

    #[test]
    fn preferred_keeps_cpu_node_then_peer_group_and_honours_must_include() {
        let devices: BTreeMap<String, DeviceInfo> = [
            device("0000:01:00.0", 1, Some(0), Some("hive0")),
            device("0000:02:00.0", 2, Some(0), Some("hive1")),
            device("0000:03:00.0", 3, Some(0), Some("hive0")),
            device("0000:81:00.0", 4, Some(1), Some("hive2")),
            device("0000:82:00.0", 5, Some(1), Some("hive2")),
            device("0000:83:00.0", 6, Some(1), Some("hive2")),
            device("0000:84:00.0", 7, None, None),
        ]
        .into_iter()
        .map(|d| (d.id.clone(), d))
        .collect();
        let all: Vec<String> = devices.keys().cloned().collect();
        // must-include on node 1 pulls the rest from node 1.
        assert_eq!(
            preferred(&devices, &all, &ids(&["0000:82:00.0"]), 2),
            ids(&["0000:82:00.0", "0000:81:00.0"])
        );
        // must-include on node 0 in hive0 picks the other hive0 device before hive1.
        assert_eq!(
            preferred(&devices, &all, &ids(&["0000:03:00.0"]), 2),
            ids(&["0000:03:00.0", "0000:01:00.0"])
        );
        // nothing required: the lowest id, then its node.
        assert_eq!(
            preferred(&devices, &all, &[], 3),
            ids(&["0000:01:00.0", "0000:03:00.0", "0000:02:00.0"])
        );
        // Without must-include, the CPU node that can hold the whole request wins.
        let avail = ids(&["0000:01:00.0", "0000:81:00.0", "0000:82:00.0", "0000:84:00.0"]);
        assert_eq!(
            preferred(&devices, &avail, &[], 2),
            ids(&["0000:81:00.0", "0000:82:00.0"])
        );
        // unknown ids are ignored, and the result never exceeds what is available.
        assert_eq!(
            preferred(&devices, &ids(&["bogus", "0000:84:00.0"]), &[], 2),
            ids(&["0000:84:00.0"])
        );
    }

    #[test]
    fn iommufd_adds_dev_iommu_and_the_vfio_cdev() {
        let dir = tempfile::tempdir().unwrap();
        let roots = HealthRoots {
            sysfs_root: dir.path().join("root"),
            dev_root: dir.path().join("dev"),
            host_dev_root: "/dev".into(),
        };
        std::fs::create_dir_all(roots.sysfs_root.join("sys/bus/pci/devices/0000:c1:00.0/vfio-dev/vfio7")).unwrap();
        std::fs::create_dir_all(&roots.dev_root).unwrap();
        std::fs::write(roots.dev_root.join("iommu"), "").unwrap();
        let d = device("0000:c1:00.0", 5, Some(0), None);
        let r = container_response("amd.com/x", &[&d], &roots);
        let paths: Vec<&str> = r.devices.iter().map(|s| s.container_path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/dev/vfio/vfio",
                "/dev/vfio/5",
                "/dev/iommu",
                "/dev/vfio/devices/vfio7",
                "/dev/dax5.0"
            ]
        );
        assert_eq!(r.devices[3].host_path, "/dev/vfio/devices/vfio7");
    }
}
