//! What a rewrite adds, decided before anything is written: the [`Plan`]. Each decision is one
//! small function in its own module (which hostdevs get which regions, the machine check, cell
//! numbering, expander placement and bus numbers, aliases, the SPM marking, the Generic
//! Initiators); [`plan`] runs them in order and [`crate::emit`] writes the result.

pub(crate) mod aliases;
pub(crate) mod buses;
pub(crate) mod cells;
pub(crate) mod dialect;
pub(crate) mod generic_initiator;
pub(crate) mod machine;
pub(crate) mod select;
pub(crate) mod spm_marking;
mod summary;

use topology::{Inventory, PciAddress};

use crate::document::Document;
use crate::layout::guest_ranges;
use crate::libvirt::invalid;
use crate::metadata::ClaimedRegion;
use crate::{Dialect, RewriteError, RewriteOptions};

use aliases::{AliasChange, alias_change, alias_for, claim_alias};
use buses::{Controllers, Placement};
use cells::{GuestCells, NewCell, check_cell_ids, guest_cells, memory_total, number_cells};
use generic_initiator::{GenericInitiator, QemuNamespace, generic_initiators, qemu_namespace};
use machine::{AcpiFeature, acpi_feature, check_machine};
use select::{Policy, Selection, pci_hostdev_elements, selections};
use spm_marking::{EmulatorChange, SpmMarking, emulator_change, spm_marking};

/// One GPU's hostdev and everything planned for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target<'i> {
    /// The `<hostdev>` element.
    pub hostdev: usize,
    /// Its host PCI address.
    pub addr: PciAddress,
    pub dialect: Dialect,
    /// One new guest cell per HBM region, in region order.
    pub cells: Vec<NewCell<'i>>,
    pub placement: Placement,
    /// The user alias the Generic Initiator names the device by.
    pub alias: String,
    pub alias_change: AliasChange,
}

impl Target<'_> {
    /// The GPU's first cell: the node its expander's `_PXM` names.
    pub(crate) fn first_cell_id(&self) -> u32 {
        self.cells.first().map_or(0, |cell| cell.id)
    }

    /// The GPU's cell ids for `<acpi nodeset>` (`1,2`).
    pub(crate) fn nodeset(&self) -> String {
        self.cells
            .iter()
            .map(|cell| cell.id.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Everything a rewrite adds, with the elements it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan<'i> {
    pub os: usize,
    pub devices: usize,
    pub targets: Vec<Target<'i>>,
    pub cells: GuestCells,
    /// What `<memory>` and `<currentMemory>` become, in bytes.
    pub memory_bytes: u64,
    pub acpi_feature: AcpiFeature,
    pub qemu: QemuNamespace,
    /// Libvirt's `<acpi nodeset>` on the hostdev instead of `-object acpi-generic-initiator`.
    pub native_generic_initiator: bool,
    /// The `-object`s to pass (empty with the native form).
    pub generic_initiators: Vec<GenericInitiator>,
    pub marking: SpmMarking,
    pub emulator: EmulatorChange,
    pub adapter_path: String,
}

impl<'i> Plan<'i> {
    /// The new cells, in cell order.
    pub(crate) fn new_cells(&self) -> impl Iterator<Item = &NewCell<'i>> {
        self.targets.iter().flat_map(|target| target.cells.iter())
    }

    /// The regions claimed, as the record lists them (with the dialect each cell got).
    pub(crate) fn record(&self) -> Vec<ClaimedRegion> {
        self.targets
            .iter()
            .flat_map(|target| target.cells.iter().map(move |cell| (target, cell)))
            .zip(self.marking.dialects.iter())
            .map(|((target, cell), dialect)| ClaimedRegion {
                id: cell.region.id.clone(),
                gpu: target.addr,
                host_node: cell.region.host_node,
                dax: cell.region.dax.clone(),
                size_bytes: cell.size,
                guest_cell: cell.id,
                dialect: Some(*dialect),
            })
            .collect()
    }
}

/// Plans the additions; `None` when no hostdev is selected. Checks run in a fixed order, so a
/// definition with several faults always reports the same one.
pub(crate) fn plan<'i>(
    doc: &Document<'_>,
    inventory: &'i Inventory,
    policy: &Policy,
    options: &RewriteOptions,
) -> Result<Option<Plan<'i>>, RewriteError> {
    check_root(doc)?;
    let Some(devices) = doc.child(doc.root, "devices") else {
        return Ok(None);
    };
    let hostdevs = pci_hostdev_elements(doc, devices);
    if hostdevs.is_empty() {
        return Ok(None);
    }
    let selected = selections(doc, &hostdevs, inventory, policy)?;
    if selected.is_empty() {
        return Ok(None);
    }
    let os = check_machine(doc)?;
    let cells = guest_cells(doc)?;
    let targets = plan_targets(doc, devices, selected, cells.first_new_id)?;
    let sizes = cell_sizes(&cells, &targets);
    let ranges = guest_ranges(&sizes).ok_or_else(|| beyond_address_space(doc))?;
    let new_ranges = ranges.get(cells.existing.len()..).unwrap_or(&[]);
    let marking = spm_marking(doc, os, &targets, new_ranges, options)?;
    let native = options.native_generic_initiator;
    let qemu = qemu_namespace(doc, !native || !marking.instructions.is_empty())?;
    let memory_bytes = memory_total(doc, &sizes)?;
    let generic_initiators = if native {
        Vec::new()
    } else {
        generic_initiators(doc, &qemu, &targets)
    };
    Ok(Some(Plan {
        os,
        devices,
        emulator: emulator_change(doc, devices, options.adapter_path.as_deref(), &marking.instructions),
        acpi_feature: acpi_feature(doc),
        targets,
        cells,
        memory_bytes,
        qemu,
        native_generic_initiator: native,
        generic_initiators,
        marking,
        adapter_path: options.adapter_path.clone().unwrap_or_default(),
    }))
}

/// Refuses a document that is not a libvirt domain definition.
fn check_root(doc: &Document<'_>) -> Result<(), RewriteError> {
    if doc.name(doc.root) == "domain" {
        return Ok(());
    }
    Err(invalid(
        doc,
        doc.root,
        "the root element must be <domain> (a libvirt domain definition)",
    ))
}

/// Cells that do not fit the 64-bit guest-physical address space, at the element giving the
/// existing cells' sizes (`<numa>`, else `<memory>`).
fn beyond_address_space(doc: &Document<'_>) -> RewriteError {
    let element = cells::numa_element(doc)
        .or_else(|| doc.child(doc.root, "memory"))
        .unwrap_or(doc.root);
    invalid(
        doc,
        element,
        "the guest memory plus the HBM cells does not fit the 64-bit guest-physical address space; check the memory amounts and units",
    )
}

/// The sizes of all guest cells in cell order: the existing ones, then the new ones.
fn cell_sizes(cells: &GuestCells, targets: &[Target<'_>]) -> Vec<u64> {
    cells
        .existing
        .iter()
        .map(|cell| cell.1)
        .chain(
            targets
                .iter()
                .flat_map(|target| target.cells.iter().map(|cell| cell.size)),
        )
        .collect()
}

/// Numbers the cells and places the expander and alias of every selected hostdev.
fn plan_targets<'i>(
    doc: &Document<'_>,
    devices: usize,
    selected: Vec<Selection<'i>>,
    first_new_id: u32,
) -> Result<Vec<Target<'i>>, RewriteError> {
    let mut next_id = first_new_id;
    let mut controllers = Controllers::read(doc, devices);
    let mut aliases_taken = Vec::new();
    let mut targets = Vec::with_capacity(selected.len());
    for selection in selected {
        let cells = number_cells(selection.regions, &mut next_id);
        let alias = alias_for(doc, selection.hostdev, selection.addr);
        claim_alias(doc, selection.hostdev, &alias, &mut aliases_taken)?;
        let placement = controllers.place(doc, devices, selection.hostdev, selection.addr)?;
        targets.push(Target {
            hostdev: selection.hostdev,
            addr: selection.addr,
            dialect: selection.dialect,
            cells,
            placement,
            alias_change: alias_change(doc, selection.hostdev, &alias),
            alias,
        });
    }
    check_cell_ids(doc, next_id)?;
    let placements = targets.iter_mut().map(|target| (target.addr, &mut target.placement));
    controllers.assign_bus_numbers(doc, devices, placements)?;
    Ok(targets)
}

/// A host inventory holding `regions` (for the crate's unit tests).
#[cfg(test)]
pub(crate) fn inventory_of(regions: Vec<topology::Region>) -> Inventory {
    let mut inventory = Inventory::empty("/");
    inventory.regions = regions;
    inventory
}

#[cfg(test)]
mod tests;
