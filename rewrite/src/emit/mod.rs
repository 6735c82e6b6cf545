//! Writes a [`Plan`] into the definition: one module per thing `docs/rewrite.md` says is added,
//! called in a fixed order (the order fixes the bytes of the record's undo list, so a second
//! rewrite gives the same bytes). Every change goes through the [`EditWriter`], which records
//! how to take it back. The record's digests are those of the additions as written, so the
//! plan is written twice: once to read the additions back, once with their digests.

mod cells;
mod edit_writer;
mod expander;
mod generic_initiator;
mod host_binding;
mod qemu_commandline;
mod record;
mod spm_marking;

use crate::document::Document;
use crate::metadata::UndoOp;
use crate::plan::Plan;
use crate::proof;

use edit_writer::EditWriter;

/// The definition with the plan's additions and their record (with a digest per addition).
pub(crate) fn emit(doc: &Document<'_>, plan: &Plan<'_>) -> String {
    let (first, ops) = emit_with(doc, plan, &[]);
    let digests: Vec<Option<u64>> = match Document::parse(&first) {
        Ok(written) => ops.iter().map(|op| proof::digest_of(&written, op)).collect(),
        Err(err) => {
            tracing::warn!(error = %err, "the rewritten definition does not parse; record without digests");
            Vec::new()
        }
    };
    emit_with(doc, plan, &digests).0
}

/// The definition with the plan's additions and their record, and the record's undo ops.
fn emit_with(doc: &Document<'_>, plan: &Plan<'_>, digests: &[Option<u64>]) -> (String, Vec<UndoOp>) {
    let mut writer = EditWriter::new(doc);
    qemu_commandline::declare_namespace(&mut writer, plan);
    cells::emit_memory(&mut writer, plan);
    cells::emit_cells(&mut writer, plan);
    host_binding::emit_memnodes(&mut writer, plan);
    expander::emit_acpi_feature(&mut writer, plan);
    for target in &plan.targets {
        expander::emit_expander(&mut writer, plan.devices, target);
        generic_initiator::emit_alias(&mut writer, target);
        if plan.native_generic_initiator {
            generic_initiator::emit_native(&mut writer, target);
        }
    }
    let mut commandline_children = generic_initiator::objects(&writer, plan);
    spm_marking::emit_adapter_instructions(&mut writer, plan, &mut commandline_children);
    qemu_commandline::emit_commandline(&mut writer, plan, commandline_children);
    spm_marking::emit_kernel_cmdline(&mut writer, plan);
    writer.flush_groups();
    record::emit_record(&mut writer, &plan.record(), digests);
    let ops = writer.undo_ops().to_vec();
    (writer.finish(), ops)
}

#[cfg(test)]
mod tests;
