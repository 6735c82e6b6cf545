//! Which hostdevs get which HBM regions: the policy in force (host defaults overridden by the
//! domain's metadata), per-GPU overrides, region health and reachability, the size cap.

use topology::{Health, Inventory, PciAddress, Region};

use crate::document::Document;
use crate::libvirt::{hostdev_source, invalid, is_pci_hostdev, unsatisfiable};
use crate::metadata::{GpuPolicy, HbmMetadata};
use crate::{Dialect, PolicyMode, RewriteError, RewriteOptions};

/// Cells are sized in multiples of this (the common huge page size).
pub(crate) const CELL_ALIGN: u64 = 2 << 20;

/// The policy in force: host defaults overridden by the domain's metadata.
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    mode: PolicyMode,
    dialect: Dialect,
    size_cap: Option<u64>,
    gpus: Vec<GpuPolicy>,
}

impl Policy {
    pub(crate) fn resolve(options: &RewriteOptions, meta: Option<&HbmMetadata>) -> Self {
        Self {
            mode: meta.and_then(|meta| meta.mode).unwrap_or(options.policy),
            dialect: meta.and_then(|meta| meta.dialect).unwrap_or(options.dialect),
            size_cap: meta.and_then(|meta| meta.size_cap_bytes).or(options.size_cap_bytes),
            gpus: meta.map(|meta| meta.gpus.clone()).unwrap_or_default(),
        }
    }
}

/// A hostdev the policy selects, with the regions it gets and each cell's size.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Selection<'i> {
    pub hostdev: usize,
    pub addr: PciAddress,
    pub dialect: Dialect,
    pub regions: Vec<(&'i Region, u64)>,
}

/// The PCI hostdevs under `<devices>`, in document order.
pub(crate) fn pci_hostdev_elements(doc: &Document<'_>, devices: usize) -> Vec<usize> {
    doc.children(devices)
        .filter(|device| is_pci_hostdev(doc, *device))
        .collect()
}

/// Every hostdev the policy selects, in document order.
pub(crate) fn selections<'i>(
    doc: &Document<'_>,
    hostdevs: &[usize],
    inventory: &'i Inventory,
    policy: &Policy,
) -> Result<Vec<Selection<'i>>, RewriteError> {
    let mut selected = Vec::new();
    for &hostdev in hostdevs {
        if let Some(selection) = select_hostdev(doc, hostdev, hostdevs, inventory, policy)? {
            selected.push(selection);
        }
    }
    Ok(selected)
}

/// The selection of one hostdev; `None` when the policy or the host leaves it alone.
fn select_hostdev<'i>(
    doc: &Document<'_>,
    hostdev: usize,
    hostdevs: &[usize],
    inventory: &'i Inventory,
    policy: &Policy,
) -> Result<Option<Selection<'i>>, RewriteError> {
    let Some(addr) = hostdev_source(doc, hostdev) else {
        if doc
            .child(hostdev, "source")
            .and_then(|source| doc.child(source, "address"))
            .is_some()
        {
            return Err(invalid(
                doc,
                hostdev,
                "source <address> is not a PCI address (domain/bus/slot/function)",
            ));
        }
        return Ok(None);
    };
    if is_unassigned(doc, hostdev) {
        return Ok(None);
    }
    let gpu_policy = policy.gpus.iter().find(|gpu| gpu.address == addr);
    let mode = gpu_policy.and_then(|gpu| gpu.mode).unwrap_or(policy.mode);
    if mode == PolicyMode::Off {
        return Ok(None);
    }
    let dialect = gpu_policy.and_then(|gpu| gpu.dialect).unwrap_or(policy.dialect);
    let cap = gpu_policy.and_then(|gpu| gpu.size_cap_bytes).or(policy.size_cap);
    let regions = usable_regions(inventory, addr, gpu_policy, cap);
    if regions.is_empty() {
        if mode == PolicyMode::Required {
            return Err(unsatisfiable(
                doc,
                hostdev,
                format!("PCI hostdev {addr} owns no usable HBM region on this host and the policy is 'required'"),
            ));
        }
        return Ok(None);
    }
    if let Some((region, _)) = regions.iter().find(|(_, size)| *size == 0) {
        return Err(invalid(doc, hostdev, too_small(region, cap)));
    }
    check_passed_through_once(doc, hostdev, addr, hostdevs)?;
    Ok(Some(Selection {
        hostdev,
        addr,
        dialect,
        regions,
    }))
}

/// Why `region` gets no cell (its cell size rounded down to 0): the region itself is below
/// [`CELL_ALIGN`], or the size cap is.
fn too_small(region: &Region, cap: Option<u64>) -> String {
    if region.size_bytes < CELL_ALIGN {
        return format!(
            "region {} holds {} bytes, less than the 2 MiB a guest cell needs (cells are whole 2 MiB pages); leave this region out of the GPU's regions= or use another GPU",
            region.id, region.size_bytes
        );
    }
    let cap = cap.unwrap_or_default();
    format!(
        "size cap {cap} bytes leaves region {} smaller than the 2 MiB a guest cell needs; raise the cap to 2 MiB or more",
        region.id
    )
}

/// `<address type='unassigned'/>`: bound to vfio on the host but never shown to the guest.
fn is_unassigned(doc: &Document<'_>, hostdev: usize) -> bool {
    doc.child(hostdev, "address")
        .is_some_and(|address| doc.attr(address, "type").is_some_and(|kind| kind == "unassigned"))
}

/// The regions of `addr` a guest can use (healthy; online in a host node or reachable as
/// device-dax; listed in the GPU's override), each with its cell size.
pub(crate) fn usable_regions<'i>(
    inventory: &'i Inventory,
    addr: PciAddress,
    gpu_policy: Option<&GpuPolicy>,
    cap: Option<u64>,
) -> Vec<(&'i Region, u64)> {
    let listed = gpu_policy.and_then(|gpu| gpu.regions.as_ref());
    inventory
        .regions_of(addr)
        .filter(|region| region.health == Health::Healthy)
        .filter(|region| (region.online && region.host_node.is_some()) || region.dax.is_some())
        .filter(|region| listed.is_none_or(|ids| ids.contains(&region.id)))
        .map(|region| (region, cell_size(region.size_bytes, cap)))
        .collect()
}

/// The guest cell size for a region: capped, rounded down to [`CELL_ALIGN`].
pub(crate) fn cell_size(region_bytes: u64, cap: Option<u64>) -> u64 {
    let size = cap.map_or(region_bytes, |cap| cap.min(region_bytes));
    size - size % CELL_ALIGN
}

/// Refuses a GPU that a second hostdev passes through too.
fn check_passed_through_once(
    doc: &Document<'_>,
    hostdev: usize,
    addr: PciAddress,
    hostdevs: &[usize],
) -> Result<(), RewriteError> {
    match hostdevs
        .iter()
        .find(|other| **other != hostdev && hostdev_source(doc, **other) == Some(addr))
    {
        Some(&other) => Err(RewriteError::Collision {
            line: doc.line(other),
            element: "hostdev".into(),
            reason: format!(
                "PCI device {addr} is passed through twice (also at line {}); keep one",
                doc.line(hostdev)
            ),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use topology::fixture::region;

    use super::*;
    use crate::plan::inventory_of;

    const GIB: u64 = 1 << 30;
    const GPU: PciAddress = PciAddress::new(0, 0x41, 0, 0);

    fn hostdev(bus: u8, extra: &str) -> String {
        format!(
            "<hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0x{bus:02x}' slot='0x00' function='0x0'/></source>{extra}</hostdev>"
        )
    }

    fn policy(mode: PolicyMode, gpus: Vec<GpuPolicy>) -> Policy {
        Policy {
            mode,
            dialect: Dialect::None,
            size_cap: None,
            gpus,
        }
    }

    fn select(
        devices: &str,
        inventory: &Inventory,
        policy: &Policy,
    ) -> Result<Vec<(PciAddress, Vec<u64>)>, RewriteError> {
        let xml = format!("<domain><devices>{devices}</devices></domain>");
        let doc = Document::parse(&xml).unwrap();
        let devices = doc.child(doc.root, "devices").unwrap();
        let hostdevs = pci_hostdev_elements(&doc, devices);
        let picked = selections(&doc, &hostdevs, inventory, policy)?;
        Ok(picked
            .into_iter()
            .map(|selection| {
                (
                    selection.addr,
                    selection.regions.iter().map(|(_, size)| *size).collect(),
                )
            })
            .collect())
    }

    #[test]
    fn size_cap_limits_and_aligns_cells() {
        assert_eq!(cell_size(64 * GIB, None), 64 * GIB);
        assert_eq!(cell_size(64 * GIB, Some(16 * GIB)), 16 * GIB);
        assert_eq!(cell_size(64 * GIB, Some(3 * (1 << 20))), 2 << 20);
        assert_eq!(cell_size(GIB, Some(1 << 20)), 0);
    }

    #[test]
    fn auto_selects_gpus_with_hbm_and_skips_the_others() {
        let inv = inventory_of(vec![region(GPU, 2, GIB)]);
        let devices = format!("{}{}", hostdev(0x41, ""), hostdev(0x42, ""));
        assert_eq!(
            select(&devices, &inv, &policy(PolicyMode::Auto, vec![])),
            Ok(vec![(GPU, vec![GIB])])
        );
    }

    #[test]
    fn off_selects_nothing_and_required_refuses_a_gpu_without_hbm() {
        let inv = inventory_of(vec![region(GPU, 2, GIB)]);
        assert_eq!(
            select(&hostdev(0x41, ""), &inv, &policy(PolicyMode::Off, vec![])),
            Ok(vec![])
        );
        let err = select(&hostdev(0x42, ""), &inv, &policy(PolicyMode::Required, vec![])).unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert!(
            err.to_string()
                .contains("PCI hostdev 0000:42:00.0 owns no usable HBM region")
        );
    }

    #[test]
    fn per_gpu_override_selects_listed_regions_with_its_own_cap() {
        let inv = inventory_of(vec![region(GPU, 2, 4 * GIB), region(GPU, 3, 4 * GIB)]);
        let gpu = GpuPolicy {
            address: GPU,
            mode: Some(PolicyMode::Required),
            dialect: None,
            size_cap_bytes: Some(GIB),
            regions: Some(vec![format!("{GPU}/node3")]),
        };
        assert_eq!(
            select(&hostdev(0x41, ""), &inv, &policy(PolicyMode::Off, vec![gpu])),
            Ok(vec![(GPU, vec![GIB])])
        );
    }

    #[test]
    fn unhealthy_offline_and_unassigned_are_skipped() {
        let sick = Region {
            health: Health::Unhealthy,
            ..region(GPU, 2, GIB)
        };
        let offline = Region {
            online: false,
            ..region(GPU, 3, GIB)
        };
        let inv = inventory_of(vec![sick, offline]);
        assert_eq!(
            select(&hostdev(0x41, ""), &inv, &policy(PolicyMode::Auto, vec![])),
            Ok(vec![])
        );
        let inv = inventory_of(vec![region(GPU, 2, GIB)]);
        let unassigned = hostdev(0x41, "<address type='unassigned'/>");
        assert_eq!(select(&unassigned, &inv, &policy(PolicyMode::Auto, vec![])), Ok(vec![]));
    }

    #[test]
    fn a_gpu_passed_through_twice_collides() {
        let inv = inventory_of(vec![region(GPU, 2, GIB)]);
        let devices = format!("{}{}", hostdev(0x41, ""), hostdev(0x41, ""));
        let err = select(&devices, &inv, &policy(PolicyMode::Auto, vec![])).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string()
                .contains("PCI device 0000:41:00.0 is passed through twice")
        );
    }

    #[test]
    fn a_cap_below_2_mib_is_bad_input() {
        let inv = inventory_of(vec![region(GPU, 2, GIB)]);
        let capped = Policy {
            size_cap: Some(1 << 20),
            ..policy(PolicyMode::Auto, vec![])
        };
        let err = select(&hostdev(0x41, ""), &inv, &capped).unwrap_err();
        assert!(
            err.to_string()
                .contains("size cap 1048576 bytes leaves region 0000:41:00.0/node2 smaller than the 2 MiB")
        );
    }

    #[test]
    fn a_region_below_2_mib_without_a_cap_says_so_and_names_no_cap() {
        let inv = inventory_of(vec![region(GPU, 2, 1 << 20)]);
        let err = select(&hostdev(0x41, ""), &inv, &policy(PolicyMode::Auto, vec![])).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert_eq!(
            err.to_string(),
            "domain XML line 1: <hostdev>: region 0000:41:00.0/node2 holds 1048576 bytes, less than the 2 MiB a guest cell needs (cells are whole 2 MiB pages); leave this region out of the GPU's regions= or use another GPU"
        );
        let capped = Policy {
            size_cap: Some(GIB),
            ..policy(PolicyMode::Auto, vec![])
        };
        let err = select(&hostdev(0x41, ""), &inv, &capped).unwrap_err();
        assert!(
            err.to_string().contains("holds 1048576 bytes, less than the 2 MiB"),
            "{err}"
        );
    }
}
