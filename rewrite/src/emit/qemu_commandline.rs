//! `<qemu:commandline>`, which the Generic Initiators and the adapter instructions go into, and
//! the `xmlns:qemu` declaration on `<domain>` when the definition has none.

use crate::metadata::UndoOp;
use crate::plan::Plan;
use crate::plan::generic_initiator::QEMU_NAMESPACE;

use super::edit_writer::EditWriter;

/// Declares `xmlns:qemu` after the root's last attribute when the plan says so.
pub(super) fn declare_namespace(writer: &mut EditWriter<'_, '_>, plan: &Plan<'_>) {
    if !plan.qemu.declare {
        return;
    }
    let doc = writer.doc;
    let at = doc
        .attrs(doc.root)
        .last()
        .map_or(doc.elements[doc.root].name.1, |attr| attr.end);
    let declaration = writer.attr("xmlns:qemu", QEMU_NAMESPACE);
    writer.insert(at, declaration);
    let digest = crate::proof::attr_digest("xmlns:qemu", QEMU_NAMESPACE);
    writer.record_digested(
        UndoOp::RemoveRootAttr {
            name: "xmlns:qemu".into(),
        },
        digest,
    );
}

/// Appends `children` to `<qemu:commandline>`, or adds it with them.
pub(super) fn emit_commandline(
    writer: &mut EditWriter<'_, '_>,
    plan: &Plan<'_>,
    children: Vec<(String, Option<UndoOp>)>,
) {
    if children.is_empty() {
        return;
    }
    let name = plan.qemu.commandline_name();
    match plan.qemu.commandline(writer.doc) {
        Some(commandline) => {
            for (xml, op) in children {
                writer.append_with(commandline, &name, xml, op);
            }
        }
        None => {
            let mut lines = vec![(0, format!("<{name}>"))];
            lines.extend(children.into_iter().map(|(xml, _)| (1, xml)));
            lines.push((0, format!("</{name}>")));
            let xml = writer.block(&lines);
            let root = writer.doc.root;
            writer.append(root, "", xml, name);
        }
    }
}
