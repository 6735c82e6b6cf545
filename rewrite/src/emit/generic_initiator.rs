//! The Generic Initiator: the hostdev's user alias, then either `-object
//! acpi-generic-initiator,...` pairs for `<qemu:commandline>` or libvirt's native
//! `<acpi nodeset='K,..'/>` inside the hostdev.

use crate::metadata::UndoOp;
use crate::plan::aliases::AliasChange;
use crate::plan::{Plan, Target};

use super::edit_writer::EditWriter;
use super::expander::hostdev_path;

/// Gives the hostdev its planned alias.
pub(super) fn emit_alias(writer: &mut EditWriter<'_, '_>, target: &Target<'_>) {
    let hostdev_path = hostdev_path(target);
    let xml = format!("<alias{}/>", writer.attr("name", &target.alias));
    match target.alias_change {
        AliasChange::Keep => {}
        AliasChange::Replace(element) => writer.replace_element(element, &format!("{hostdev_path}/alias"), xml),
        AliasChange::Add => writer.append(target.hostdev, &hostdev_path, xml, format!("{hostdev_path}/alias")),
    }
}

/// Libvirt's `<acpi nodeset>` naming the GPU's cells, replacing an existing `<acpi>`.
pub(super) fn emit_native(writer: &mut EditWriter<'_, '_>, target: &Target<'_>) {
    let hostdev_path = hostdev_path(target);
    let nodeset = target.nodeset();
    let xml = format!("<acpi{}/>", writer.attr("nodeset", &nodeset));
    match writer.doc.child(target.hostdev, "acpi") {
        Some(element) => writer.replace_element(element, &format!("{hostdev_path}/acpi"), xml),
        None => writer.append(target.hostdev, &hostdev_path, xml, format!("{hostdev_path}/acpi")),
    }
}

/// The `<qemu:arg>` pairs of the Generic Initiators not already passed, with the op that
/// removes each pair.
pub(super) fn objects(writer: &EditWriter<'_, '_>, plan: &Plan<'_>) -> Vec<(String, Option<UndoOp>)> {
    let prefix = &plan.qemu.prefix;
    let commandline = plan.qemu.commandline_name();
    let mut children = Vec::new();
    for initiator in plan.generic_initiators.iter().filter(|initiator| !initiator.present) {
        let value = initiator.arg_value();
        children.push((format!("<{prefix}arg{}/>", writer.attr("value", "-object")), None));
        let op = UndoOp::Remove {
            at: format!("{commandline}/{prefix}arg[value={value}]"),
            previous: Some("-object".into()),
        };
        children.push((format!("<{prefix}arg{}/>", writer.attr("value", &value)), Some(op)));
    }
    children
}
