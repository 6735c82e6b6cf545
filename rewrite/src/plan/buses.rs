//! Where each GPU's pcie-expander-bus and root port go: reuse of an expander the hostdev already
//! sits behind (KubeVirt's layout), controller indexes above the highest existing one, and bus
//! numbers counting down from 254 around the existing expanders' buses.

use topology::PciAddress;

use crate::RewriteError;
use crate::document::Document;
use crate::libvirt::{u32_attr, unsatisfiable};

/// Highest PCI bus number a pcie-expander-bus may take.
pub(crate) const MAX_BUS_NR: u32 = 254;

/// Where a GPU's expander comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// The existing pcie-expander-bus element `expander` (index `index`) is reused: only its
    /// `<node>` changes.
    Reuse { expander: usize, index: u32 },
    /// A new expander and root port; `bus_nr` is the expander's `<target busNr>`.
    New {
        expander_index: u32,
        root_port_index: u32,
        bus_nr: u32,
    },
}

/// The PCI controllers of the definition and what the placements so far have taken.
#[derive(Debug)]
pub(crate) struct Controllers {
    /// `<controller type='pci'>` elements.
    elements: Vec<usize>,
    /// Highest controller index in use (existing and planned).
    max_index: u32,
    /// Bus numbers of existing and planned expanders.
    busy_buses: Vec<u32>,
    /// Existing expanders already reused by a GPU.
    reused: Vec<usize>,
}

impl Controllers {
    /// Reads the PCI controllers under `<devices>`.
    pub(crate) fn read(doc: &Document<'_>, devices: usize) -> Self {
        let elements: Vec<usize> = doc
            .children_named(devices, "controller")
            .filter(|controller| doc.attr(*controller, "type").is_some_and(|kind| kind == "pci"))
            .collect();
        let max_index = elements
            .iter()
            .filter_map(|controller| u32_attr(doc, *controller, "index"))
            .max()
            .unwrap_or(0);
        let busy_buses = elements
            .iter()
            .filter(|controller| model(doc, **controller).ends_with("expander-bus"))
            .filter_map(|controller| doc.child(*controller, "target"))
            .filter_map(|target| u32_attr(doc, target, "busNr"))
            .collect();
        Self {
            elements,
            max_index,
            busy_buses,
            reused: Vec::new(),
        }
    }

    fn by_index(&self, doc: &Document<'_>, index: u32) -> Option<usize> {
        self.elements
            .iter()
            .copied()
            .find(|controller| u32_attr(doc, *controller, "index") == Some(index))
    }

    /// The expander `hostdev` already sits behind (hostdev -> pcie-root-port ->
    /// pcie-expander-bus with a `<target>`), unless another GPU reuses it already.
    pub(crate) fn reusable_expander(&self, doc: &Document<'_>, hostdev: usize) -> Option<usize> {
        let guest_address = doc
            .child(hostdev, "address")
            .filter(|address| doc.attr(*address, "type").is_none_or(|kind| kind == "pci"))?;
        let root_port = u32_attr(doc, guest_address, "bus")
            .and_then(|bus| self.by_index(doc, bus))
            .filter(|port| model(doc, *port) == "pcie-root-port")?;
        doc.child(root_port, "address")
            .and_then(|address| u32_attr(doc, address, "bus"))
            .and_then(|bus| self.by_index(doc, bus))
            .filter(|expander| {
                model(doc, *expander) == "pcie-expander-bus"
                    && !self.reused.contains(expander)
                    && doc.child(*expander, "target").is_some()
            })
    }

    /// Places the expander of the GPU at `hostdev`: reuses one, or takes the next two
    /// controller indexes (its bus number is given later by [`Controllers::assign_bus_numbers`]).
    pub(crate) fn place(
        &mut self,
        doc: &Document<'_>,
        devices: usize,
        hostdev: usize,
        addr: PciAddress,
    ) -> Result<Placement, RewriteError> {
        if let Some(expander) = self.reusable_expander(doc, hostdev) {
            self.reused.push(expander);
            let index = u32_attr(doc, expander, "index").unwrap_or(0);
            return Ok(Placement::Reuse { expander, index });
        }
        let expander_index = self.max_index.saturating_add(1);
        let root_port_index = self.max_index.saturating_add(2);
        self.max_index = root_port_index;
        if root_port_index > 255 {
            return Err(unsatisfiable(
                doc,
                devices,
                format!("no free PCI controller index for GPU {addr}: more than 254 PCI buses would be needed"),
            ));
        }
        Ok(Placement::New {
            expander_index,
            root_port_index,
            bus_nr: 0,
        })
    }

    /// Gives each new expander a bus number, in order (`targets` pairs the GPU with its placement).
    pub(crate) fn assign_bus_numbers<'p>(
        &mut self,
        doc: &Document<'_>,
        devices: usize,
        placements: impl Iterator<Item = (PciAddress, &'p mut Placement)>,
    ) -> Result<(), RewriteError> {
        for (addr, placement) in placements {
            let Placement::New { bus_nr, .. } = placement else {
                continue;
            };
            let Some(free) = free_bus_nr(&self.busy_buses, self.max_index) else {
                return Err(unsatisfiable(
                    doc,
                    devices,
                    format!(
                        "no free PCI bus number for the pcie-expander-bus of GPU {addr} ({} controller indexes and expanders use buses up to 254); more than 254 buses would be needed",
                        self.max_index
                    ),
                ));
            };
            self.busy_buses.push(free);
            *bus_nr = free;
        }
        Ok(())
    }
}

/// A controller's `model`, empty when unset.
fn model(doc: &Document<'_>, controller: usize) -> String {
    doc.attr(controller, "model")
        .map(|model| model.into_owned())
        .unwrap_or_default()
}

/// The highest bus number from [`MAX_BUS_NR`] down in steps of 2 whose bus and the one above
/// (the root port's) are both free of `busy` and its next buses, and above `max_index`.
pub(crate) fn free_bus_nr(busy: &[u32], max_index: u32) -> Option<u32> {
    let mut candidate = MAX_BUS_NR;
    loop {
        if candidate <= max_index {
            return None;
        }
        if !busy
            .iter()
            .any(|taken| candidate <= taken.saturating_add(1) && *taken <= candidate + 1)
        {
            return Some(candidate);
        }
        candidate -= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPU: PciAddress = PciAddress::new(0, 0x41, 0, 0);

    #[test]
    fn bus_numbers_count_down_from_254_avoiding_existing_buses() {
        assert_eq!(free_bus_nr(&[], 0), Some(254));
        assert_eq!(free_bus_nr(&[254], 0), Some(252));
        assert_eq!(free_bus_nr(&[253], 0), Some(250));
        assert_eq!(free_bus_nr(&[254, 252], 2), Some(250));
        assert_eq!(free_bus_nr(&[], 254), None);
        assert_eq!(free_bus_nr(&[254], 252), None);
    }

    fn domain(controllers: &str, hostdev_address: &str) -> String {
        format!(
            "<domain><devices>{controllers}<hostdev mode='subsystem' type='pci'><source><address bus='0x41' slot='0x00'/></source>{hostdev_address}</hostdev></devices></domain>"
        )
    }

    fn plan_one(xml: &str) -> Result<Placement, RewriteError> {
        let doc = Document::parse(xml).unwrap();
        let devices = doc.child(doc.root, "devices").unwrap();
        let hostdev = doc.child(devices, "hostdev").unwrap();
        let mut controllers = Controllers::read(&doc, devices);
        let mut placement = controllers.place(&doc, devices, hostdev, GPU)?;
        controllers.assign_bus_numbers(&doc, devices, std::iter::once((GPU, &mut placement)))?;
        Ok(placement)
    }

    #[test]
    fn new_controllers_take_indexes_above_the_highest_and_avoid_expander_buses() {
        let controllers = "<controller type='pci' index='0' model='pcie-root'/>\
            <controller type='pci' index='0x5' model='pcie-expander-bus'><target busNr='254'/></controller>";
        assert_eq!(
            plan_one(&domain(controllers, "")),
            Ok(Placement::New {
                expander_index: 6,
                root_port_index: 7,
                bus_nr: 252,
            })
        );
    }

    #[test]
    fn kubevirt_expander_is_reused() {
        let controllers = "<controller type='pci' index='0' model='pcie-root'/>\
            <controller type='pci' index='9' model='pcie-expander-bus'><target busNr='252'/></controller>\
            <controller type='pci' index='10' model='pcie-root-port'><address type='pci' bus='0x09' slot='0'/></controller>";
        let placement = plan_one(&domain(controllers, "<address type='pci' bus='0x0a' slot='0'/>")).unwrap();
        assert_eq!(placement, Placement::Reuse { expander: 3, index: 9 });
    }

    #[test]
    fn an_expander_without_target_or_a_non_port_parent_is_not_reused() {
        let controllers = "<controller type='pci' index='9' model='pcie-expander-bus'/>\
            <controller type='pci' index='10' model='pcie-root-port'><address bus='9' slot='0'/></controller>";
        let placement = plan_one(&domain(controllers, "<address bus='10' slot='0'/>")).unwrap();
        assert_eq!(
            placement,
            Placement::New {
                expander_index: 11,
                root_port_index: 12,
                bus_nr: 254,
            }
        );
    }

    #[test]
    fn more_than_254_buses_cannot_be_satisfied() {
        let controllers = "<controller type='pci' index='254' model='pcie-root-port'/>";
        let err = plan_one(&domain(controllers, "")).unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert!(
            err.to_string()
                .contains("no free PCI controller index for GPU 0000:41:00.0")
        );
        let controllers = "<controller type='pci' index='253' model='pcie-root-port'/>";
        let err = plan_one(&domain(controllers, "")).unwrap_err();
        assert!(err.to_string().contains("no free PCI bus number"), "{err}");
    }
}
