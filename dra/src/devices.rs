//! Inventory + resource rules -> the node's DRA devices, and those devices -> ResourceSlice specs.
//! Pure: the driver re-derives on every refresh and publishes when the result changes.
//!
//! One device per GPU that owns at least one HBM region (the same GPUs the device plugin
//! advertises: [`plugin::resources::derive`]). Its name is a DNS label made from the PCI address
//! (`0000:c1:00.0` -> `gpu-0000-c1-00-0`). Attributes: `resource.kubernetes.io/pciBusID`,
//! `resource.kubernetes.io/pcieRoot` (when known), `resource.kubernetes.io/numaNode` (the GPU's
//! nearest CPU node; left out when unknown), and in the driver's own domain (unqualified names):
//! `vendor`, `device` (PCI ids), `model` (the resource name's part after `/` from the resource
//! rules, e.g. `mi300x-hbm`), `hbmRegions`, `hbmNumaNodes` (comma-separated host nodes, ascending),
//! `hbmMemmap` (`spm`, `normal`, or `mixed`), `iommuGroup` (when known), `kubevirtUsable` (bool:
//! every region of the GPU is online in its host node, so KubeVirt's virt-launcher can back the
//! guest cells by binding them there; a devdax region it cannot use). Capacity: `hbm`, the total
//! HBM bytes as a quantity.

use std::collections::{BTreeMap, BTreeSet};

use plugin::config::ResourceRule;
use plugin::resources::{DeviceInfo, RegionInfo, ResourceProblem};
use topology::{Inventory, Memmap, PciAddress};

use crate::api::{self, DeviceAttribute, DeviceCapacity, ResourcePool, ResourceSliceSpec};

/// One GPU with its HBM, as the driver publishes and prepares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeDevice {
    /// The device name in the pool (a DNS label).
    pub name: String,
    /// The same facts the device plugin serves (health checks and CDI edits read them).
    pub info: DeviceInfo,
    /// The resource name's part after `/`.
    pub model: String,
    /// `spm`, `normal` or `mixed` over the GPU's regions.
    pub memmap: &'static str,
    /// The PCIe root bus (`pci0000:c0`), when sysfs shows it.
    pub pcie_root: Option<String>,
}

/// The DNS label of a GPU: `gpu-<domain>-<bus>-<slot>-<function>` in lowercase hex.
pub fn device_name(gpu: PciAddress) -> String {
    format!("gpu-{}", gpu.to_string().replace([':', '.'], "-"))
}

fn memmap_of(inventory: &Inventory, gpu: PciAddress) -> &'static str {
    let kinds: BTreeSet<&'static str> = inventory
        .regions_of(gpu)
        .map(|region| match region.memmap {
            Memmap::Spm => "spm",
            Memmap::Normal => "normal",
        })
        .collect();
    match kinds.len() {
        1 => kinds.into_iter().next().unwrap_or("mixed"),
        _ => "mixed",
    }
}

/// The node's devices, sorted by PCI address, and what an operator should fix.
/// `pcie_roots` maps a GPU to its root bus name (see [`crate::driver::read_pcie_roots`]).
pub fn node_devices(
    inventory: &Inventory,
    rules: &[ResourceRule],
    pcie_roots: &BTreeMap<PciAddress, String>,
) -> (Vec<NodeDevice>, Vec<ResourceProblem>) {
    let derived = plugin::resources::derive(inventory, rules);
    let mut devices: Vec<NodeDevice> = derived
        .resources
        .values()
        .flat_map(|resource| {
            let model = resource.name.split_once('/').map_or(resource.name.as_str(), |(_, m)| m);
            resource.devices.values().map(move |info| NodeDevice {
                name: device_name(info.gpu),
                info: info.clone(),
                model: model.to_string(),
                memmap: memmap_of(inventory, info.gpu),
                pcie_root: pcie_roots.get(&info.gpu).cloned(),
            })
        })
        .collect();
    devices.sort_by_key(|device| device.info.gpu);
    (devices, derived.problems)
}

/// A byte count as a Kubernetes quantity: the largest binary suffix that divides it exactly
/// (`68719476736` -> `64Gi`), else plain bytes.
pub fn quantity(bytes: u64) -> String {
    const SUFFIXES: [(&str, u32); 5] = [("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)];
    for (suffix, shift) in SUFFIXES {
        let unit = 1u64 << shift;
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

fn standard(name: &str) -> String {
    format!("{}/{name}", api::STANDARD_DOMAIN)
}

/// The published form of one device.
pub fn api_device(device: &NodeDevice) -> api::Device {
    let info = &device.info;
    let mut attributes = BTreeMap::from([
        (standard("pciBusID"), DeviceAttribute::string(info.gpu.to_string())),
        ("vendor".to_string(), DeviceAttribute::string(&info.vendor)),
        ("device".to_string(), DeviceAttribute::string(&info.device)),
        ("model".to_string(), DeviceAttribute::string(&device.model)),
        (
            "hbmRegions".to_string(),
            DeviceAttribute::int(info.regions.len() as i64),
        ),
        ("hbmMemmap".to_string(), DeviceAttribute::string(device.memmap)),
        (
            "kubevirtUsable".to_string(),
            DeviceAttribute::bool(info.regions.iter().all(RegionInfo::kubevirt_usable)),
        ),
    ]);
    if let Some(root) = &device.pcie_root {
        attributes.insert(standard("pcieRoot"), DeviceAttribute::string(root));
    }
    if let Some(node) = info.cpu_node {
        attributes.insert(standard("numaNode"), DeviceAttribute::int(i64::from(node)));
    }
    if let Some(group) = info.iommu_group {
        attributes.insert("iommuGroup".to_string(), DeviceAttribute::int(i64::from(group)));
    }
    let nodes: BTreeSet<u32> = info.regions.iter().filter_map(|region| region.host_node).collect();
    let nodes: Vec<String> = nodes.iter().map(u32::to_string).collect();
    attributes.insert("hbmNumaNodes".to_string(), DeviceAttribute::string(nodes.join(",")));
    let total: u64 = info.regions.iter().map(|region| region.size_bytes).sum();
    api::Device {
        name: device.name.clone(),
        attributes,
        capacity: BTreeMap::from([("hbm".to_string(), DeviceCapacity { value: quantity(total) })]),
    }
}

/// The slice specs of a pool: `devices` in chunks of at most 128, at least one slice (an empty
/// one when the node has no device, so the pool is still known), every slice naming the same
/// generation and slice count.
pub fn slice_specs(node: &str, driver: &str, generation: i64, devices: &[api::Device]) -> Vec<ResourceSliceSpec> {
    let chunks: Vec<&[api::Device]> = if devices.is_empty() {
        vec![&[]]
    } else {
        devices.chunks(api::MAX_DEVICES_PER_SLICE).collect()
    };
    let count = chunks.len() as i64;
    chunks
        .into_iter()
        .map(|chunk| ResourceSliceSpec {
            driver: driver.to_string(),
            node_name: node.to_string(),
            pool: ResourcePool {
                name: node.to_string(),
                generation,
                resource_slice_count: count,
            },
            devices: chunk.to_vec(),
        })
        .collect()
}

/// The object name of slice `index` of the node's pool: `<node>-<driver with '.' as '-'>-<index>`.
pub fn slice_name(node: &str, driver: &str, index: usize) -> String {
    format!("{node}-{}-{index}", driver.replace('.', "-"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn discovered(host: topology::fixture::FixtureHost) -> (tempfile::TempDir, Inventory) {
        let dir = tempfile::tempdir().unwrap();
        host.write_to(dir.path()).unwrap();
        let inventory = topology::discover(dir.path(), &topology::DiscoveryConfig::default()).unwrap();
        (dir, inventory)
    }

    fn gpu(address: &str) -> PciAddress {
        PciAddress::parse(address).unwrap()
    }

    #[test]
    fn the_seed_amd_host_publishes_one_device_with_every_attribute() {
        let (_dir, inventory) = discovered(topology::fixture::seed_amd());
        let roots = BTreeMap::from([(gpu("0000:c1:00.0"), "pci0000:c0".to_string())]);
        let (devices, problems) = node_devices(&inventory, &[], &roots);
        assert!(problems.is_empty());
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].name, "gpu-0000-c1-00-0");
        let published = serde_json::to_value(api_device(&devices[0])).unwrap();
        assert_eq!(
            published,
            serde_json::json!({
                "name": "gpu-0000-c1-00-0",
                "attributes": {
                    "resource.kubernetes.io/pciBusID": {"string": "0000:c1:00.0"},
                    "resource.kubernetes.io/pcieRoot": {"string": "pci0000:c0"},
                    "resource.kubernetes.io/numaNode": {"int": 0},
                    "vendor": {"string": "1002"},
                    "device": {"string": "74a1"},
                    "model": {"string": "gpu-74a1-hbm"},
                    "hbmRegions": {"int": 1},
                    "hbmNumaNodes": {"string": "1"},
                    "hbmMemmap": {"string": "spm"},
                    "kubevirtUsable": {"bool": false},
                    "iommuGroup": {"int": 12}
                },
                "capacity": {"hbm": {"value": "64Gi"}}
            })
        );
    }

    #[test]
    fn rules_name_the_model_and_unknown_facts_are_left_out() {
        let (_dir, mut inventory) = discovered(topology::fixture::seed_amd_2gpu());
        inventory.gpus[0].cpu_node = None;
        inventory.gpus[0].iommu_group = None;
        let rules = [ResourceRule {
            name: "amd.com/mi300x-hbm".into(),
            vendor: "1002".into(),
            devices: vec!["74a1".into()],
            id_prefix: String::new(),
        }];
        let (devices, _) = node_devices(&inventory, &rules, &BTreeMap::new());
        let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["gpu-0000-41-00-0", "gpu-0000-c1-00-0"]);
        let first = api_device(&devices[0]);
        let keys: Vec<&str> = first.attributes.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "device",
                "hbmMemmap",
                "hbmNumaNodes",
                "hbmRegions",
                "kubevirtUsable",
                "model",
                "resource.kubernetes.io/pciBusID",
                "vendor"
            ]
        );
        assert_eq!(first.attributes["model"], DeviceAttribute::string("mi300x-hbm"));
        assert_eq!(first.attributes["hbmNumaNodes"], DeviceAttribute::string("2"));
        let second = api_device(&devices[1]);
        assert_eq!(
            second.attributes["resource.kubernetes.io/numaNode"],
            DeviceAttribute::int(1)
        );
        assert_eq!(second.attributes["iommuGroup"], DeviceAttribute::int(56));
    }

    #[test]
    fn kubevirt_usable_only_when_every_region_is_online() {
        let (_dir, mut inventory) = discovered(topology::fixture::seed_amd_2gpu());
        // 0000:41:00.0's dax0.0 reconfigured to system-ram; 0000:c1:00.0's dax1.0 stays devdax.
        inventory.regions[0].online = true;
        let (devices, _) = node_devices(&inventory, &[], &BTreeMap::new());
        let usable: Vec<(&str, DeviceAttribute)> = devices
            .iter()
            .map(|device| {
                (
                    device.name.as_str(),
                    api_device(device).attributes["kubevirtUsable"].clone(),
                )
            })
            .collect();
        assert_eq!(
            usable,
            [
                ("gpu-0000-41-00-0", DeviceAttribute::bool(true)),
                ("gpu-0000-c1-00-0", DeviceAttribute::bool(false)),
            ]
        );
        // A second, devdax region on the online GPU makes it unusable as a whole.
        let mut second = inventory.regions[1].clone();
        second.id = "0000:41:00.0/dax9.0".into();
        second.gpu = inventory.regions[0].gpu;
        inventory.regions.insert(1, second);
        let (devices, _) = node_devices(&inventory, &[], &BTreeMap::new());
        assert_eq!(
            api_device(&devices[0]).attributes["kubevirtUsable"],
            DeviceAttribute::bool(false)
        );
    }

    #[test]
    fn a_gpu_without_hbm_is_not_a_device() {
        let (_dir, inventory) = discovered(topology::fixture::no_hbm());
        let (devices, problems) = node_devices(&inventory, &[], &BTreeMap::new());
        assert_eq!((devices.len(), problems.len()), (0, 0));
    }

    #[test]
    fn quantities_use_the_largest_exact_binary_suffix() {
        assert_eq!(quantity(64 << 30), "64Gi");
        assert_eq!(quantity(1536 << 20), "1536Mi");
        assert_eq!(quantity(3 << 40), "3Ti");
        assert_eq!(quantity(1000), "1000");
        assert_eq!(quantity(0), "0");
    }

    #[test]
    fn slices_hold_at_most_128_devices_and_share_generation_and_count() {
        let device = |i: usize| api::Device {
            name: format!("gpu-{i}"),
            attributes: BTreeMap::new(),
            capacity: BTreeMap::new(),
        };
        let devices: Vec<api::Device> = (0..300).map(device).collect();
        let specs = slice_specs("node-a", "hbm.passthrough.dev", 4, &devices);
        let sizes: Vec<usize> = specs.iter().map(|s| s.devices.len()).collect();
        assert_eq!(sizes, [128, 128, 44]);
        for spec in &specs {
            assert_eq!(
                (
                    spec.pool.name.as_str(),
                    spec.pool.generation,
                    spec.pool.resource_slice_count
                ),
                ("node-a", 4, 3)
            );
            assert_eq!(
                (spec.driver.as_str(), spec.node_name.as_str()),
                ("hbm.passthrough.dev", "node-a")
            );
        }
        assert_eq!(specs[2].devices[0].name, "gpu-256");
        let empty = slice_specs("node-a", "hbm.passthrough.dev", 1, &[]);
        assert_eq!(empty.len(), 1);
        assert!(empty[0].devices.is_empty());
        assert_eq!(
            slice_name("node-a", "hbm.passthrough.dev", 2),
            "node-a-hbm-passthrough-dev-2"
        );
    }

    #[test]
    fn device_names_are_dns_labels() {
        let name = device_name(gpu("000a:C1:1f.7"));
        assert_eq!(name, "gpu-000a-c1-1f-7");
        assert!(name.len() <= 63);
    }
}
