//! The SPM marking: the adapter instructions (`<qemu:env name='HBM_QEMU_INSTRUCTIONS'>` and
//! `<emulator>` pointed at the adapter) and the `memmap=` fragments on the guest kernel command
//! line.

use crate::document::escape_text;
use crate::instructions;
use crate::metadata::UndoOp;
use crate::plan::Plan;
use crate::plan::generic_initiator::existing_env;
use crate::plan::spm_marking::EmulatorChange;

use super::edit_writer::EditWriter;

/// Writes the instructions into `<qemu:env>` (replacing an existing one, else adding one to
/// `commandline_children`) and points `<emulator>` at the adapter.
pub(super) fn emit_adapter_instructions(
    writer: &mut EditWriter<'_, '_>,
    plan: &Plan<'_>,
    commandline_children: &mut Vec<(String, Option<UndoOp>)>,
) {
    if plan.marking.instructions.is_empty() {
        return;
    }
    let prefix = &plan.qemu.prefix;
    let wire = instructions::render(&plan.marking.instructions);
    let xml = format!(
        "<{prefix}env{}{}/>",
        writer.attr("name", instructions::ENV_VAR),
        writer.attr("value", &wire)
    );
    let env_path = format!(
        "{}/{prefix}env[name={}]",
        plan.qemu.commandline_name(),
        instructions::ENV_VAR
    );
    match existing_env(writer.doc, &plan.qemu) {
        Some(env) => writer.replace_element(env, &env_path, xml),
        None => commandline_children.push((
            xml,
            Some(UndoOp::Remove {
                at: env_path,
                previous: None,
            }),
        )),
    }
    emit_emulator(writer, plan);
}

/// Sets or adds `<emulator>` naming the adapter.
fn emit_emulator(writer: &mut EditWriter<'_, '_>, plan: &Plan<'_>) {
    let adapter = escape_text(&plan.adapter_path);
    match plan.emulator {
        EmulatorChange::Unchanged => {}
        EmulatorChange::Set(emulator) => writer.set_text(emulator, "devices/emulator", adapter),
        EmulatorChange::Add => writer.append(
            plan.devices,
            "devices",
            format!("<emulator>{adapter}</emulator>"),
            "devices/emulator".into(),
        ),
    }
}

/// Appends the `memmap=` fragments to `<os><cmdline>` (or adds it).
pub(super) fn emit_kernel_cmdline(writer: &mut EditWriter<'_, '_>, plan: &Plan<'_>) {
    if plan.marking.kernel_cmdline.is_empty() {
        return;
    }
    let doc = writer.doc;
    let fragments = plan.marking.kernel_cmdline.join(" ");
    let Some(cmdline) = doc.child(plan.os, "cmdline") else {
        let xml = format!("<cmdline>{}</cmdline>", escape_text(&fragments));
        writer.append(plan.os, "os", xml, "os/cmdline".into());
        return;
    };
    let (start, end) = doc.inner(cmdline);
    let current = &doc.src[start..end];
    let element = &doc.elements[cmdline];
    if !element.self_closing && element.children.is_empty() && (current.is_empty() || !current.trim().is_empty()) {
        // Appended text is taken back by itself, so later edits of the line survive.
        let added = if current.is_empty() {
            escape_text(&fragments)
        } else {
            format!(" {}", escape_text(&fragments))
        };
        writer.insert(end, added.clone());
        writer.record(UndoOp::StripText {
            at: "os/cmdline".into(),
            text: added,
        });
    } else {
        let text = if current.trim().is_empty() {
            escape_text(&fragments)
        } else {
            format!("{current} {}", escape_text(&fragments))
        };
        writer.set_text(cmdline, "os/cmdline", text);
    }
}
