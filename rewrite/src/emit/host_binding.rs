//! Host binding: `<numatune><memnode cellid='K' mode='strict' nodeset='HOST_NODE'/>` for each
//! cell whose HBM is online in a host NUMA node (device-dax cells are bound by the adapter).

use crate::plan::Plan;

use super::edit_writer::EditWriter;

/// Appends the memnodes to `<numatune>`, or adds `<numatune>`.
pub(super) fn emit_memnodes(writer: &mut EditWriter<'_, '_>, plan: &Plan<'_>) {
    let doc = writer.doc;
    let memnodes: Vec<(u32, String)> = plan
        .new_cells()
        .filter(|cell| cell.region.online)
        .filter_map(|cell| {
            cell.region.host_node.map(|host_node| {
                let xml = format!(
                    "<memnode{}{}{}/>",
                    writer.attr("cellid", &cell.id.to_string()),
                    writer.attr("mode", "strict"),
                    writer.attr("nodeset", &host_node.to_string())
                );
                (cell.id, xml)
            })
        })
        .collect();
    if memnodes.is_empty() {
        return;
    }
    match doc.child(doc.root, "numatune") {
        Some(numatune) => {
            for (cell_id, xml) in memnodes {
                writer.append(numatune, "numatune", xml, format!("numatune/memnode[cellid={cell_id}]"));
            }
        }
        None => {
            let mut lines = vec![(0, "<numatune>".to_string())];
            lines.extend(memnodes.into_iter().map(|(_, xml)| (1, xml)));
            lines.push((0, "</numatune>".to_string()));
            let xml = writer.block(&lines);
            writer.append(doc.root, "", xml, "numatune".into());
        }
    }
}
