//! Writes a [`Plan`] into the definition: one module per thing `docs/rewrite.md` says is added,
//! called in a fixed order (the order fixes the bytes of the record's undo list, so a second
//! rewrite gives the same bytes). Every change goes through the [`EditWriter`], which records
//! how to take it back. The record's digests are those of the additions' start tags as the
//! writer wrote them (each addition read on its own, not the whole definition again), so the
//! record is written twice: once to learn the undo ops it lists, once with their digests.

mod cells;
mod edit_writer;
mod expander;
mod generic_initiator;
mod host_binding;
mod qemu_commandline;
mod record;
mod spm_marking;

use crate::document::{Document, first_non_xml_char};
use crate::metadata::{ClaimedRegion, UndoOp};
use crate::plan::Plan;
use crate::proof;

use edit_writer::EditWriter;
use record::Body;

/// The definition with the plan's additions and their record (with a digest per addition).
///
/// A digest is read from the addition as written (see `proof.rs`); it equals what reading the
/// definition back gives (debug builds check that on every rewrite, so the tests and the fuzz
/// target do), unless the entries hold a character XML does not allow (then the record has no
/// digests).
///
/// `rewritten_before` is the definition this one was undone from (a rewrite of a rewrite): when
/// the definition written with the digests `rewritten_before` has for the same undo entries is
/// `rewritten_before` itself, those are the digests, and nothing is read back (the usual
/// re-rewrite, which gives back its input).
pub(crate) fn emit(doc: &Document<'_>, plan: &Plan<'_>, rewritten_before: Option<&Document<'_>>) -> String {
    let mut writer = EditWriter::new(doc);
    emit_additions(&mut writer, plan);
    let claimed = plan.record();
    let mut with_empty_record = writer.clone();
    record::emit_record(&mut with_empty_record, Body::Empty);
    let ops = with_empty_record.undo_ops().to_vec();
    if let Some(before) = rewritten_before {
        let recorded: Vec<Option<u64>> = ops.iter().map(|op| proof::digest_of(before, op)).collect();
        let written = with_record(writer.clone(), &claimed, &recorded);
        if written == before.src {
            return written;
        }
    }
    let digests = with_empty_record.digests();
    #[cfg(debug_assertions)]
    {
        let read_back = digests_read_back(&with_empty_record.clone().finish(), &ops);
        assert!(
            read_back.is_empty() || read_back == digests,
            "the digests of the additions as written must be those read back"
        );
    }
    let written = with_record(writer.clone(), &claimed, &digests);
    if digests.is_empty() || first_non_xml_char(written.as_bytes()).is_none() {
        return written;
    }
    with_record(writer, &claimed, &[])
}

/// The definition with the full record, `digests` on its undo entries.
fn with_record(mut writer: EditWriter<'_, '_>, claimed: &[ClaimedRegion], digests: &[Option<u64>]) -> String {
    record::emit_record(&mut writer, Body::Entries { claimed, digests });
    writer.finish()
}

/// The digest of each of `ops` in `written`; none when it does not parse.
fn digests_read_back(written: &str, ops: &[UndoOp]) -> Vec<Option<u64>> {
    match Document::parse(written) {
        Ok(written) => ops.iter().map(|op| proof::digest_of(&written, op)).collect(),
        Err(err) => {
            tracing::warn!(error = %err, "the rewritten definition does not parse; record without digests");
            Vec::new()
        }
    }
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
