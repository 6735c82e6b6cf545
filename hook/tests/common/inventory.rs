//! Host inventories for tests: give chosen PCI hostdevs HBM regions on host NUMA node 0 (this
//! machine, like a CI runner, has one NUMA node, and libvirt refuses `nodeset`s naming absent nodes).

use std::path::Path;

use topology::{Gpu, Inventory, NumaNode, PciAddress, Region, Source};

pub const MIB: u64 = 1024 * 1024;
pub const GIB: u64 = 1024 * MIB;

/// One HBM region to give a GPU.
#[derive(Clone, Debug)]
pub struct HbmSpec {
    /// Host PCI address of the GPU (`0000:c1:00.0`), as the hostdev's `<source><address>` names it.
    pub gpu: String,
    pub size_bytes: u64,
    /// Host node holding the region (0 on a one-node host).
    pub host_node: u32,
}

impl HbmSpec {
    pub fn new(gpu: &str, size_bytes: u64) -> Self {
        Self {
            gpu: gpu.to_string(),
            size_bytes,
            host_node: 0,
        }
    }
}

/// An inventory in which each listed GPU owns one online, Soft-Reserved (SPM) HBM region of the
/// given size on its host node, plus host node 0 with CPUs.
pub fn hbm_inventory(specs: &[HbmSpec]) -> Inventory {
    let mut inv = Inventory::empty("/");
    inv.nodes.push(NumaNode {
        id: 0,
        cpus: "0-1".to_string(),
        mem_total_bytes: 16 * GIB,
        online: true,
        generic_initiator: false,
        distances: vec![10],
    });
    for (i, s) in specs.iter().enumerate() {
        let address = PciAddress::parse(&s.gpu).unwrap_or_else(|e| panic!("fixture GPU address '{}': {e}", s.gpu));
        inv.gpus.push(Gpu {
            address,
            vendor: "1002".to_string(),
            device: "74a1".to_string(),
            class: "120000".to_string(),
            driver: Some("vfio-pci".to_string()),
            iommu_group: Some(u32::try_from(i).unwrap_or(0) + 10),
            numa_node: Some(s.host_node),
            cpu_node: Some(0),
            peer_group: None,
        });
        inv.regions.push(Region {
            source: Source::Config,
            ..topology::fixture::region(address, s.host_node, s.size_bytes)
        });
    }
    inv.gpus.sort_by_key(|g| g.address);
    inv.regions
        .sort_by(|a, b| (a.gpu, a.host_node, &a.id).cmp(&(b.gpu, b.host_node, &b.id)));
    inv
}

/// Writes `inv` as a `discover --json` document (for `hbm-hook rewrite --topology FILE`).
pub fn write_topology(inv: &Inventory, path: &Path) {
    std::fs::write(path, inv.to_json()).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
