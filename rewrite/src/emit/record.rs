//! The record: `hbm:applied` under `<metadata>` (the claimed regions and the undo ops of every
//! change written before it), inside the project's element, created with `<metadata>` when
//! missing.

use crate::metadata::{self, ClaimedRegion, NAMESPACE, UndoOp, render_applied};

use super::edit_writer::EditWriter;

/// What the record holds.
#[derive(Clone, Copy)]
pub(super) enum Body<'r> {
    /// The claimed regions and the undo entries; `digests` go on the undo entries, in order
    /// (see `proof.rs`).
    Entries {
        claimed: &'r [ClaimedRegion],
        digests: &'r [Option<u64>],
    },
    /// An `applied` element without entries: the definition around it and the undo ops
    /// recorded are those of the full record.
    Empty,
}

/// Writes the record; the writer's changes must all be flushed before.
pub(super) fn emit_record(writer: &mut EditWriter<'_, '_>, body: Body<'_>) {
    let doc = writer.doc;
    let root = doc.root;
    match (doc.child(root, "metadata"), metadata::element(doc)) {
        (_, Some(ours)) => {
            let prefix = doc
                .name(ours)
                .split_once(':')
                .map_or("", |(prefix, _)| prefix)
                .to_string();
            if doc.elements[ours].children.is_empty() {
                let op = writer.collapse_op(ours, "metadata/{hbm}");
                writer.record(op);
            }
            let applied = applied(writer, &prefix, body);
            // Not recorded as a remove op: the record is always removed with itself.
            let xml = applied
                .replace("\n  ", &format!("\n{}", writer.indent_unit))
                .replace('\n', writer.newline);
            writer.append(ours, "metadata/{hbm}", xml, String::new());
        }
        (Some(metadata), None) => {
            if doc.elements[metadata].children.is_empty() {
                let op = writer.collapse_op(metadata, "metadata");
                writer.record(op);
            }
            let position = writer.undo_ops().len();
            writer.record(UndoOp::Remove {
                at: "metadata/{hbm}".into(),
                previous: None,
            });
            let xml = our_element(writer, body);
            writer.set_written(position, &xml);
            writer.append(metadata, "metadata", xml, String::new());
        }
        (None, None) => {
            let position = writer.undo_ops().len();
            writer.record(UndoOp::Remove {
                at: "metadata".into(),
                previous: None,
            });
            let inner = our_element(writer, body);
            let unit = &writer.indent_unit;
            let xml = format!(
                "<metadata>\n{unit}{}\n</metadata>",
                inner.replace('\n', &format!("\n{unit}"))
            );
            let xml = if writer.newline.is_empty() {
                xml.replace('\n', "")
            } else {
                xml
            };
            writer.set_written(position, &xml);
            writer.append(root, "", xml, String::new());
        }
    }
    writer.flush_groups();
}

/// `<hbm:passthrough xmlns:hbm=..>` holding the record.
fn our_element(writer: &EditWriter<'_, '_>, body: Body<'_>) -> String {
    let unit = &writer.indent_unit;
    let applied = applied(writer, "hbm", body);
    let applied = applied.replace("\n  ", &format!("\n{unit}"));
    let body = format!(
        "<hbm:{}{}>\n{unit}{}\n</hbm:{}>",
        metadata::ELEMENT,
        writer.attr("xmlns:hbm", NAMESPACE),
        applied.replace('\n', &format!("\n{unit}")),
        metadata::ELEMENT
    );
    if writer.newline.is_empty() {
        body.replace('\n', "")
    } else {
        body
    }
}

/// The `applied` element (one entry a line) with the undo ops recorded so far.
fn applied(writer: &EditWriter<'_, '_>, prefix: &str, body: Body<'_>) -> String {
    match body {
        Body::Entries { claimed, digests } => render_applied(prefix, claimed, writer.undo_ops(), digests, writer.quote),
        Body::Empty => render_applied(prefix, &[], &[], &[], writer.quote),
    }
}
