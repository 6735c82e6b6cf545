//! Inventory + resource rules -> resources and their devices. Pure and diffable: the manager
//! re-derives on every refresh and compares with what it serves.

use std::collections::BTreeMap;

use topology::{Inventory, PciAddress};

use crate::config::ResourceRule;

/// The kubelet's limit on device ID length.
pub const MAX_DEVICE_ID_LEN: usize = 63;

/// One HBM region of a device, as the plugin needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    pub id: String,
    pub host_node: Option<u32>,
    pub size_bytes: u64,
    /// Device-dax path as discovery reported it (`/dev/dax0.0`).
    pub dax: Option<String>,
    /// Memory online in `host_node`.
    pub online: bool,
}

impl RegionInfo {
    /// The device node a VM's container needs for this region: its dax device while the memory
    /// is reachable only that way (devdax). An online region (dax in system-ram mode, or a plain
    /// node) needs none: QEMU binds the guest cell to `host_node`, and after
    /// `daxctl reconfigure-device --mode=system-ram` the `/dev/daxX.Y` node no longer exists.
    pub fn device_node(&self) -> Option<&str> {
        self.dax.as_deref().filter(|_| !self.online)
    }

    /// Whether KubeVirt's virt-launcher (QEMU without the argv adapter, as uid 107) can back a
    /// guest cell with this region: only by binding the cell to an online host node.
    pub fn kubevirt_usable(&self) -> bool {
        self.online && self.host_node.is_some()
    }

    /// The dax device name (`dax0.0`) of the region's device node, if any.
    pub fn dax_name(&self) -> Option<&str> {
        self.dax.as_deref().map(|path| path.rsplit('/').next().unwrap_or(path))
    }

    /// What makes this region usable by KubeVirt, when it is not: the host-side command for a
    /// devdax region, else a sentence.
    pub fn kubevirt_fix(&self) -> Option<String> {
        if self.kubevirt_usable() {
            return None;
        }
        Some(match self.dax_name() {
            Some(name) => format!("daxctl reconfigure-device --mode=system-ram {name}"),
            None => "bring the region's host NUMA node online".to_string(),
        })
    }
}

/// One advertised device: a GPU with its HBM regions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device ID sent to the kubelet: the rule's prefix + the PCI address.
    pub id: String,
    pub gpu: PciAddress,
    pub vendor: String,
    pub device: String,
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
    /// Nearest CPU-bearing NUMA node (the kubelet topology hint); `None` when unknown.
    pub cpu_node: Option<u32>,
    pub peer_group: Option<String>,
    pub regions: Vec<RegionInfo>,
}

/// A resource: its name and its devices keyed by device ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    pub name: String,
    pub devices: BTreeMap<String, DeviceInfo>,
}

/// Something the derivation noticed that an operator should fix; logged and counted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResourceProblem {
    #[error("resource rule {name:?} (vendor {vendor}, devices {devices:?}) matches no GPU with HBM on this host")]
    RuleMatchesNothing {
        name: String,
        vendor: String,
        devices: Vec<String>,
    },
    #[error("GPU {gpu}: device ID {id:?} is {len} characters, over the kubelet's 63; shorten the rule's id-prefix")]
    DeviceIdTooLong { gpu: PciAddress, id: String, len: usize },
}

/// The result of one derivation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Derived {
    pub resources: BTreeMap<String, Resource>,
    pub problems: Vec<ResourceProblem>,
}

/// What changed between two derivations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Resources present in both whose device set or device facts changed.
    pub changed: Vec<String>,
}

/// Default resource name for a GPU no rule matched: `<vendor domain>/gpu-<device>-hbm`, with
/// `nvidia.com`, `amd.com`, `intel.com` for the known vendors and `hbm-passthrough.io/<vendor>-...`
/// otherwise.
pub fn default_resource_name(vendor: &str, device: &str) -> String {
    let vendor = vendor.to_ascii_lowercase();
    let device = device.to_ascii_lowercase();
    match vendor.as_str() {
        "10de" => format!("nvidia.com/gpu-{device}-hbm"),
        "1002" => format!("amd.com/gpu-{device}-hbm"),
        "8086" => format!("intel.com/gpu-{device}-hbm"),
        _ => format!("{}/gpu-{vendor}-{device}-hbm", crate::config::DEFAULT_LABEL_DOMAIN),
    }
}

fn rule_matches(rule: &ResourceRule, vendor: &str, device: &str) -> bool {
    rule.vendor.eq_ignore_ascii_case(vendor)
        && (rule.devices.is_empty() || rule.devices.iter().any(|d| d.eq_ignore_ascii_case(device)))
}

/// Derives resources: one device per GPU with at least one HBM region; the first matching rule
/// names its resource, else [`default_resource_name`].
pub fn derive(inventory: &Inventory, rules: &[ResourceRule]) -> Derived {
    let mut derived = Derived::default();
    let mut rule_used = vec![false; rules.len()];
    for gpu in &inventory.gpus {
        let regions: Vec<RegionInfo> = inventory
            .regions_of(gpu.address)
            .map(|r| RegionInfo {
                id: r.id.clone(),
                host_node: r.host_node,
                size_bytes: r.size_bytes,
                dax: r.dax.clone(),
                online: r.online,
            })
            .collect();
        if regions.is_empty() {
            continue;
        }
        let matched = rules
            .iter()
            .position(|rule| rule_matches(rule, &gpu.vendor, &gpu.device));
        let (name, prefix) = match matched {
            Some(i) => {
                rule_used[i] = true;
                (rules[i].name.clone(), rules[i].id_prefix.as_str())
            }
            None => (default_resource_name(&gpu.vendor, &gpu.device), ""),
        };
        let id = format!("{prefix}{}", gpu.address);
        if id.len() > MAX_DEVICE_ID_LEN {
            derived.problems.push(ResourceProblem::DeviceIdTooLong {
                gpu: gpu.address,
                len: id.len(),
                id,
            });
            continue;
        }
        let device = DeviceInfo {
            id: id.clone(),
            gpu: gpu.address,
            vendor: gpu.vendor.clone(),
            device: gpu.device.clone(),
            driver: gpu.driver.clone(),
            iommu_group: gpu.iommu_group,
            cpu_node: gpu.cpu_node,
            peer_group: gpu.peer_group.clone(),
            regions,
        };
        derived
            .resources
            .entry(name.clone())
            .or_insert_with(|| Resource {
                name,
                devices: BTreeMap::new(),
            })
            .devices
            .insert(id, device);
    }
    for (rule, used) in rules.iter().zip(rule_used) {
        if !used {
            derived.problems.push(ResourceProblem::RuleMatchesNothing {
                name: rule.name.clone(),
                vendor: rule.vendor.clone(),
                devices: rule.devices.clone(),
            });
        }
    }
    derived
}

/// Whether KubeVirt's virt-launcher can use one region; its `Display` is the discovery log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubevirtUse {
    pub resource: String,
    pub region: String,
    pub host_node: Option<u32>,
    /// The dax device path while the region is reachable only through it.
    pub dax: Option<String>,
    /// What makes the region usable; `None` when it is.
    pub fix: Option<String>,
}

impl KubevirtUse {
    pub fn usable(&self) -> bool {
        self.fix.is_none()
    }
}

impl std::fmt::Display for KubevirtUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (resource, region) = (&self.resource, &self.region);
        match (&self.fix, &self.dax) {
            (None, _) => {
                let node = self.host_node.map_or_else(|| "?".to_string(), |n| n.to_string());
                write!(
                    f,
                    "{resource} region {region}: usable by KubeVirt (online in host node {node}; virt-launcher binds the guest cell there)"
                )
            }
            (Some(fix), Some(dax)) => write!(
                f,
                "{resource} region {region}: not usable by KubeVirt (reachable only through {dax}, which virt-launcher's QEMU cannot use); on the host: `{fix}`"
            ),
            (Some(fix), None) => write!(
                f,
                "{resource} region {region}: not usable by KubeVirt (not online: {fix})"
            ),
        }
    }
}

/// Per region of every resource (resource, device, region order): whether KubeVirt can use it.
pub fn kubevirt_use(resources: &BTreeMap<String, Resource>) -> Vec<KubevirtUse> {
    resources
        .values()
        .flat_map(|resource| {
            resource
                .devices
                .values()
                .flat_map(|device| &device.regions)
                .map(|region| KubevirtUse {
                    resource: resource.name.clone(),
                    region: region.id.clone(),
                    host_node: region.host_node,
                    dax: region.device_node().map(str::to_string),
                    fix: region.kubevirt_fix(),
                })
        })
        .collect()
}

/// Compares two derivations by resource.
pub fn diff(old: &BTreeMap<String, Resource>, new: &BTreeMap<String, Resource>) -> ResourceDiff {
    let mut d = ResourceDiff::default();
    for (name, resource) in new {
        match old.get(name) {
            None => d.added.push(name.clone()),
            Some(prev) if prev != resource => d.changed.push(name.clone()),
            Some(_) => {}
        }
    }
    d.removed = old.keys().filter(|name| !new.contains_key(*name)).cloned().collect();
    d
}

/// The socket file name of a resource: `hbm-<name with '/' as '_'>.sock`. Names that would make
/// the file name longer than 64 characters (unix socket paths are limited to 107 bytes) are cut
/// to 40 characters plus a stable 16-hex-digit FNV-1a hash of the whole name.
pub fn socket_name(resource: &str) -> String {
    let stem = resource.replace('/', "_");
    if stem.len() + 9 <= 64 {
        return format!("hbm-{stem}.sock");
    }
    let hash = resource.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let cut: String = stem.chars().take(40).collect();
    format!("hbm-{cut}-{hash:016x}.sock")
}

/// The env-var suffix of a resource as KubeVirt computes it: upper-cased, '.' and '/' replaced
/// by '_', everything else kept (`amd.com/mi300x-hbm` -> `AMD_COM_MI300X-HBM`).
pub fn env_suffix(resource: &str) -> String {
    resource
        .chars()
        .map(|c| {
            if matches!(c, '.' | '/') {
                '_'
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use topology::{Gpu, Region, Source};

    fn gpu(addr: &str, vendor: &str, device: &str) -> Gpu {
        Gpu {
            address: PciAddress::parse(addr).unwrap(),
            vendor: vendor.into(),
            device: device.into(),
            class: "038000".into(),
            driver: Some("vfio-pci".into()),
            iommu_group: Some(7),
            numa_node: Some(0),
            cpu_node: Some(0),
            peer_group: None,
        }
    }

    fn region(addr: &str, node: u32) -> Region {
        Region {
            source: Source::Dax,
            dax: Some("/dev/dax0.0".into()),
            online: false,
            ..topology::fixture::region(PciAddress::parse(addr).unwrap(), node, 1 << 30)
        }
    }

    fn inventory() -> Inventory {
        let mut inv = Inventory::empty("/");
        inv.gpus = vec![
            gpu("0000:c1:00.0", "1002", "74a1"),
            gpu("0000:c2:00.0", "10de", "2335"),
            gpu("0000:c3:00.0", "1002", "74a1"),
        ];
        inv.regions = vec![region("0000:c1:00.0", 2), region("0000:c2:00.0", 3)];
        inv
    }

    fn rule(name: &str, vendor: &str, devices: &[&str]) -> ResourceRule {
        ResourceRule {
            name: name.into(),
            vendor: vendor.into(),
            devices: devices.iter().map(|d| d.to_string()).collect(),
            id_prefix: String::new(),
        }
    }

    #[test]
    fn only_gpus_with_hbm_become_devices_with_default_names() {
        let d = derive(&inventory(), &[]);
        assert_eq!(
            d.resources.keys().collect::<Vec<_>>(),
            ["amd.com/gpu-74a1-hbm", "nvidia.com/gpu-2335-hbm"]
        );
        let amd = &d.resources["amd.com/gpu-74a1-hbm"];
        assert_eq!(amd.devices.keys().collect::<Vec<_>>(), ["0000:c1:00.0"]);
        assert_eq!(amd.devices["0000:c1:00.0"].regions.len(), 1);
        assert!(d.problems.is_empty());
    }

    #[test]
    fn rules_name_resources_and_unused_rules_are_reported() {
        let rules = [
            rule("example.com/big-hbm", "1002", &["74A1"]),
            rule("example.com/none", "8086", &[]),
        ];
        let d = derive(&inventory(), &rules);
        assert_eq!(
            d.resources.keys().collect::<Vec<_>>(),
            ["example.com/big-hbm", "nvidia.com/gpu-2335-hbm"]
        );
        assert_eq!(
            d.problems,
            vec![ResourceProblem::RuleMatchesNothing {
                name: "example.com/none".into(),
                vendor: "8086".into(),
                devices: vec![]
            }]
        );
    }

    #[test]
    fn device_ids_over_63_characters_are_skipped_with_a_problem() {
        let mut r = rule("example.com/x", "10de", &[]);
        r.id_prefix = "p".repeat(52);
        let d = derive(&inventory(), &[r]);
        assert!(!d.resources.contains_key("example.com/x"));
        assert_eq!(d.problems.len(), 1);
        assert!(
            d.problems[0]
                .to_string()
                .contains("is 64 characters, over the kubelet's 63")
        );
    }

    #[test]
    fn diff_reports_added_removed_changed() {
        let a = derive(&inventory(), &[]).resources;
        let mut inv = inventory();
        inv.regions[0].size_bytes = 2 << 30;
        inv.gpus.retain(|g| g.vendor != "10de");
        inv.gpus.push(gpu("0000:d1:00.0", "8086", "0bd5"));
        inv.regions.push(region("0000:d1:00.0", 4));
        let b = derive(&inv, &[]).resources;
        let d = diff(&a, &b);
        assert_eq!(d.added, ["intel.com/gpu-0bd5-hbm"]);
        assert_eq!(d.removed, ["nvidia.com/gpu-2335-hbm"]);
        assert_eq!(d.changed, ["amd.com/gpu-74a1-hbm"]);
        assert_eq!(diff(&a, &a), ResourceDiff::default());
    }

    #[test]
    fn kubevirt_can_use_online_regions_only_and_devdax_gets_the_daxctl_fix() {
        let mut inv = inventory();
        // c1: dax0.0 reconfigured to system-ram; c2: dax0.0 in devdax mode; c3: an offline node.
        inv.regions[0].online = true;
        inv.regions.push(Region {
            dax: None,
            online: false,
            ..region("0000:c3:00.0", 4)
        });
        let d = derive(&inv, &[]);
        let amd = &d.resources["amd.com/gpu-74a1-hbm"].devices;
        let online = &amd["0000:c1:00.0"].regions[0];
        assert_eq!((online.kubevirt_usable(), online.device_node()), (true, None));
        let nvidia = &d.resources["nvidia.com/gpu-2335-hbm"].devices["0000:c2:00.0"].regions[0];
        assert_eq!(
            (nvidia.kubevirt_usable(), nvidia.device_node()),
            (false, Some("/dev/dax0.0"))
        );
        let lines: Vec<String> = kubevirt_use(&d.resources).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "amd.com/gpu-74a1-hbm region 0000:c1:00.0/node2: usable by KubeVirt (online in host node 2; virt-launcher binds the guest cell there)",
                "amd.com/gpu-74a1-hbm region 0000:c3:00.0/node4: not usable by KubeVirt (not online: bring the region's host NUMA node online)",
                "nvidia.com/gpu-2335-hbm region 0000:c2:00.0/node3: not usable by KubeVirt (reachable only through /dev/dax0.0, which virt-launcher's QEMU cannot use); on the host: `daxctl reconfigure-device --mode=system-ram dax0.0`",
            ]
        );
        let usable: Vec<bool> = kubevirt_use(&d.resources).iter().map(KubevirtUse::usable).collect();
        assert_eq!(usable, [true, false, false]);
    }

    #[test]
    fn names_of_sockets_and_env_vars() {
        assert_eq!(socket_name("amd.com/mi300x-hbm"), "hbm-amd.com_mi300x-hbm.sock");
        let long = format!("{}.example.com/{}", "a".repeat(60), "b".repeat(63));
        let name = socket_name(&long);
        assert_eq!(name.len(), 4 + 40 + 1 + 16 + 5);
        assert!(
            name.starts_with(&format!("hbm-{}-", "a".repeat(40))) && name.ends_with(".sock"),
            "{name}"
        );
        assert_eq!(name, socket_name(&long), "stable");
        assert_ne!(name, socket_name(&format!("{long}c")));
        assert_eq!(env_suffix("amd.com/mi300x-hbm"), "AMD_COM_MI300X-HBM");
    }
}
