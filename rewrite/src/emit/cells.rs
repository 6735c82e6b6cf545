//! Guest NUMA cells: the new CPU-less `<cell>`s (and cell 0 with all vCPUs when the definition
//! had no NUMA cells), and `<memory>`/`<currentMemory>` grown to the cells' sum.

use crate::document::Document;
use crate::plan::Plan;
use crate::plan::cells::{NewCell, numa_element};
use crate::size::unit_factor;

use super::edit_writer::EditWriter;

/// Sets `<memory>` and `<currentMemory>` to the new total, in their own unit when it divides,
/// else in KiB or bytes.
pub(super) fn emit_memory(writer: &mut EditWriter<'_, '_>, plan: &Plan<'_>) {
    let doc = writer.doc;
    let total = plan.memory_bytes;
    for (element, path) in crate::plan::cells::memory_elements(doc) {
        let unit = doc.attr(element, "unit").map(|unit| unit.into_owned());
        let factor = unit_factor(unit.as_deref().unwrap_or("")).unwrap_or(1024);
        let (start, end) = doc.inner(element);
        if total.is_multiple_of(factor) {
            writer.modify(element, path, start, end, (total / factor).to_string());
            continue;
        }
        let (unit_name, unit_bytes) = if total.is_multiple_of(1024) {
            ("KiB", 1024)
        } else {
            ("b", 1)
        };
        writer.modify(element, path, start, end, (total / unit_bytes).to_string());
        match doc.attrs(element).into_iter().find(|attr| attr.name == "unit") {
            Some(attr) => writer.replace_unrecorded(attr.value.0, attr.value.1, unit_name),
            None => {
                let unit_attr = writer.attr("unit", unit_name);
                writer.insert(doc.elements[element].name.1, unit_attr);
            }
        }
    }
}

/// Appends the new cells to `<numa>`, or adds `<numa>` (and `<cpu>`) with cell 0 first.
pub(super) fn emit_cells(writer: &mut EditWriter<'_, '_>, plan: &Plan<'_>) {
    let doc = writer.doc;
    let cpu = doc.child(doc.root, "cpu");
    if let (Some(_), Some(numa)) = (cpu, numa_element(doc)) {
        for cell in plan.new_cells() {
            let xml = cell_xml(writer, cell);
            writer.append(numa, "cpu/numa", xml, format!("cpu/numa/cell[id={}]", cell.id));
        }
        return;
    }
    let depth = usize::from(cpu.is_none());
    let mut lines = Vec::new();
    if cpu.is_none() {
        lines.push((0, "<cpu>".to_string()));
    }
    lines.push((depth, "<numa>".to_string()));
    if let Some(size) = plan.cells.created_cell0 {
        lines.push((depth + 1, cell0_xml(writer, doc, size)));
    }
    lines.extend(plan.new_cells().map(|cell| (depth + 1, cell_xml(writer, cell))));
    lines.push((depth, "</numa>".to_string()));
    match cpu {
        Some(cpu) => {
            let xml = writer.block(&lines);
            writer.append(cpu, "cpu", xml, "cpu/numa".into());
        }
        None => {
            lines.push((0, "</cpu>".to_string()));
            let xml = writer.block(&lines);
            writer.append(doc.root, "", xml, "cpu".into());
        }
    }
}

/// `<cell id='K' memory='KIB' unit='KiB'/>`: a CPU-less HBM cell.
fn cell_xml(writer: &EditWriter<'_, '_>, cell: &NewCell<'_>) -> String {
    format!(
        "<cell{}{}{}/>",
        writer.attr("id", &cell.id.to_string()),
        writer.attr("memory", &(cell.size / 1024).to_string()),
        writer.attr("unit", "KiB")
    )
}

/// Cell 0 with all vCPUs and the existing memory.
fn cell0_xml(writer: &EditWriter<'_, '_>, doc: &Document<'_>, size: u64) -> String {
    let vcpus = doc
        .child(doc.root, "vcpu")
        .and_then(|vcpu| doc.text(vcpu).trim().parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    let cpus = if vcpus == 1 {
        "0".to_string()
    } else {
        format!("0-{}", vcpus - 1)
    };
    let (amount, unit) = if size.is_multiple_of(1024) {
        (size / 1024, "KiB")
    } else {
        (size, "b")
    };
    format!(
        "<cell{}{}{}{}/>",
        writer.attr("id", "0"),
        writer.attr("cpus", &cpus),
        writer.attr("memory", &amount.to_string()),
        writer.attr("unit", unit)
    )
}
