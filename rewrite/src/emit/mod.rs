//! Writes a [`Plan`] into the definition: one module per thing `docs/rewrite.md` says is added,
//! called in a fixed order (the order fixes the bytes of the record's undo list, so a second
//! rewrite gives the same bytes). Every change goes through the [`EditWriter`], which records
//! how to take it back. The record's digests are those of the additions as written, so the
//! additions are written once and the record twice: once to read the additions back, once with
//! their digests.

mod cells;
mod edit_writer;
mod expander;
mod generic_initiator;
mod host_binding;
mod qemu_commandline;
mod record;
mod spm_marking;

use crate::document::Document;
use crate::plan::Plan;
use crate::proof;

use edit_writer::EditWriter;

/// The definition with the plan's additions and their record (with a digest per addition).
pub(crate) fn emit(doc: &Document<'_>, plan: &Plan<'_>) -> String {
    let mut writer = EditWriter::new(doc);
    emit_additions(&mut writer, plan);
    let claimed = plan.record();
    let mut without_digests = writer.clone();
    record::emit_record(&mut without_digests, &claimed, &[]);
    let ops = without_digests.undo_ops().to_vec();
    let first = without_digests.finish();
    let digests: Vec<Option<u64>> = match Document::parse(&first) {
        Ok(written) => ops.iter().map(|op| proof::digest_of(&written, op)).collect(),
        Err(err) => {
            tracing::warn!(error = %err, "the rewritten definition does not parse; record without digests");
            Vec::new()
        }
    };
    record::emit_record(&mut writer, &claimed, &digests);
    writer.finish()
}

/// Writes the plan's additions (everything but the record) and flushes them.
fn emit_additions(writer: &mut EditWriter<'_, '_>, plan: &Plan<'_>) {
    qemu_commandline::declare_namespace(writer, plan);
    cells::emit_memory(writer, plan);
    cells::emit_cells(writer, plan);
    host_binding::emit_memnodes(writer, plan);
    expander::emit_acpi_feature(writer, plan);
    for target in &plan.targets {
        expander::emit_expander(writer, plan.devices, target);
        generic_initiator::emit_alias(writer, target);
        if plan.native_generic_initiator {
            generic_initiator::emit_native(writer, target);
        }
    }
    let mut commandline_children = generic_initiator::objects(writer, plan);
    spm_marking::emit_adapter_instructions(writer, plan, &mut commandline_children);
    qemu_commandline::emit_commandline(writer, plan, commandline_children);
    spm_marking::emit_kernel_cmdline(writer, plan);
    writer.flush_groups();
}

#[cfg(test)]
mod tests;
