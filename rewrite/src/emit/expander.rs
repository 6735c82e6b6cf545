//! The GPU's `_PXM`: a `pcie-expander-bus` whose `<target><node>` is the GPU's first HBM cell, a
//! `pcie-root-port` behind it and the hostdev's guest `<address>` moved behind that port (or
//! the `<node>` of the expander KubeVirt already put it behind), and `<features><acpi/>`, without
//! which the `_PXM` never reaches the guest.

use crate::plan::buses::Placement;
use crate::plan::machine::AcpiFeature;
use crate::plan::{Plan, Target};

use super::edit_writer::EditWriter;

/// Adds `<acpi/>` to `<features>`, or `<features>` itself.
pub(super) fn emit_acpi_feature(writer: &mut EditWriter<'_, '_>, plan: &Plan<'_>) {
    match plan.acpi_feature {
        AcpiFeature::Present => {}
        AcpiFeature::AddTo(features) => {
            writer.append(features, "features", "<acpi/>".into(), "features/acpi".into());
        }
        AcpiFeature::AddFeatures => {
            let xml = writer.block(&[
                (0, "<features>".into()),
                (1, "<acpi/>".into()),
                (0, "</features>".into()),
            ]);
            let root = writer.doc.root;
            writer.append(root, "", xml, "features".into());
        }
    }
}

/// Puts the GPU behind an expander on its first cell.
pub(super) fn emit_expander(writer: &mut EditWriter<'_, '_>, devices: usize, target: &Target<'_>) {
    match target.placement {
        Placement::Reuse { expander, index } => set_expander_node(writer, expander, index, target.first_cell_id()),
        Placement::New {
            expander_index,
            root_port_index,
            bus_nr,
        } => {
            let indexes = (expander_index, root_port_index);
            add_controllers(writer, devices, target, indexes, bus_nr);
            move_hostdev(writer, target, root_port_index);
        }
    }
}

/// Sets the reused expander's `<target><node>`.
fn set_expander_node(writer: &mut EditWriter<'_, '_>, expander: usize, index: u32, node: u32) {
    let doc = writer.doc;
    let path = format!("devices/controller[type=pci][index={index}]");
    let Some(target) = doc.child(expander, "target") else {
        return;
    };
    match doc.child(target, "node") {
        Some(element) => writer.set_text(element, &format!("{path}/target/node"), node.to_string()),
        None => writer.append(
            target,
            &format!("{path}/target"),
            format!("<node>{node}</node>"),
            format!("{path}/target/node"),
        ),
    }
}

/// Appends the expander and the root port behind it to `<devices>`.
fn add_controllers(
    writer: &mut EditWriter<'_, '_>,
    devices: usize,
    target: &Target<'_>,
    (expander_index, root_port_index): (u32, u32),
    bus_nr: u32,
) {
    let expander = writer.block(&[
        (0, controller_tag(writer, expander_index, "pcie-expander-bus")),
        (1, format!("<target{}>", writer.attr("busNr", &bus_nr.to_string()))),
        (2, format!("<node>{}</node>", target.first_cell_id())),
        (1, "</target>".into()),
        (0, "</controller>".into()),
    ]);
    writer.append(
        devices,
        "devices",
        expander,
        format!("devices/controller[type=pci][index={expander_index}]"),
    );
    let root_port = writer.block(&[
        (0, controller_tag(writer, root_port_index, "pcie-root-port")),
        (1, pci_address_xml(writer, expander_index)),
        (0, "</controller>".into()),
    ]);
    writer.append(
        devices,
        "devices",
        root_port,
        format!("devices/controller[type=pci][index={root_port_index}]"),
    );
}

/// `<controller type='pci' index='I' model='M'>`.
fn controller_tag(writer: &EditWriter<'_, '_>, index: u32, model: &str) -> String {
    format!(
        "<controller{}{}{}>",
        writer.attr("type", "pci"),
        writer.attr("index", &index.to_string()),
        writer.attr("model", model)
    )
}

/// Gives the hostdev the guest address slot 0 of the root port's bus.
fn move_hostdev(writer: &mut EditWriter<'_, '_>, target: &Target<'_>, root_port_index: u32) {
    let hostdev_path = hostdev_path(target);
    let address = pci_address_xml(writer, root_port_index);
    match writer.doc.child(target.hostdev, "address") {
        Some(element) => writer.replace_element(element, &format!("{hostdev_path}/address"), address),
        None => writer.append(
            target.hostdev,
            &hostdev_path,
            address,
            format!("{hostdev_path}/address"),
        ),
    }
}

/// The record path of the GPU's hostdev.
pub(super) fn hostdev_path(target: &Target<'_>) -> String {
    format!("devices/hostdev[source={}]", target.addr)
}

/// `<address type='pci' domain='0x0000' bus='0xBB' slot='0x00' function='0x0'/>`.
fn pci_address_xml(writer: &EditWriter<'_, '_>, bus: u32) -> String {
    format!(
        "<address{}{}{}{}{}/>",
        writer.attr("type", "pci"),
        writer.attr("domain", "0x0000"),
        writer.attr("bus", &format!("0x{bus:02x}")),
        writer.attr("slot", "0x00"),
        writer.attr("function", "0x0")
    )
}
