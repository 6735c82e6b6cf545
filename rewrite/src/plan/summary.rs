//! The human summary of a plan (`Rewritten::summary`): one line per change, in the order the
//! changes appear in the definition.

use crate::{Dialect, instructions};

use super::aliases::AliasChange;
use super::buses::Placement;
use super::cells::NewCell;
use super::machine::AcpiFeature;
use super::spm_marking::EmulatorChange;
use super::{Plan, Target};

/// `8 GiB`, or `512 MiB` when not a whole number of GiB.
fn gib(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

impl Plan<'_> {
    /// One human line per change.
    pub(crate) fn summary(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(size) = self.cells.created_cell0 {
            lines.push(format!("cell 0: {} with all vCPUs (the existing memory)", gib(size)));
        }
        if self.acpi_feature != AcpiFeature::Present {
            lines.push("<features><acpi/> added (the pxb's _PXM needs ACPI)".into());
        }
        let mut dialects = self.marking.dialects.iter();
        for target in &self.targets {
            lines.extend(self.target_lines(target, &mut dialects));
        }
        lines.extend(self.generic_initiators.iter().map(|initiator| {
            if initiator.present {
                format!("Generic Initiator hbm-gi{} already present", initiator.cell)
            } else {
                format!(
                    "Generic Initiator hbm-gi{} for {} on node {}",
                    initiator.cell, initiator.alias, initiator.cell
                )
            }
        }));
        lines.extend(self.adapter_lines());
        if !self.marking.kernel_cmdline.is_empty() {
            lines.push(format!(
                "guest kernel command line += {}",
                self.marking.kernel_cmdline.join(" ")
            ));
        }
        lines.extend(self.marking.warnings.iter().cloned());
        lines
    }

    /// A GPU's cells (taking their dialects from `dialects`), expander, alias and native Generic
    /// Initiator.
    fn target_lines<'d>(&self, target: &Target<'_>, dialects: &mut impl Iterator<Item = &'d Dialect>) -> Vec<String> {
        let mut lines: Vec<String> = target
            .cells
            .iter()
            .zip(dialects)
            .map(|(cell, dialect)| cell_line(target, cell, *dialect))
            .collect();
        let first = target.first_cell_id();
        lines.push(match target.placement {
            Placement::Reuse { index, .. } => {
                format!("existing pcie-expander-bus index {index} reused, now on guest node {first}")
            }
            Placement::New {
                expander_index,
                root_port_index,
                bus_nr,
            } => format!(
                "pcie-expander-bus index {expander_index} (busNr {bus_nr}, node {first}) + pcie-root-port index {root_port_index}; hostdev {} moved behind it",
                target.addr
            ),
        });
        match target.alias_change {
            AliasChange::Keep => {}
            AliasChange::Replace(_) => lines.push(format!("hostdev {} alias set to {}", target.addr, target.alias)),
            AliasChange::Add => lines.push(format!("hostdev {} alias {} added", target.addr, target.alias)),
        }
        if self.native_generic_initiator {
            lines.push(format!(
                "Generic Initiator (libvirt <acpi nodeset='{}'/>) for {}",
                target.nodeset(),
                target.alias
            ));
        }
        lines
    }

    /// The adapter's instructions and `<emulator>`.
    fn adapter_lines(&self) -> Vec<String> {
        if self.marking.instructions.is_empty() {
            return Vec::new();
        }
        let wire = instructions::render(&self.marking.instructions);
        let mut lines = vec![format!("{}={wire} for the QEMU argv adapter", instructions::ENV_VAR)];
        match self.emulator {
            EmulatorChange::Unchanged => {}
            EmulatorChange::Set(_) => lines.push(format!("<emulator> set to the adapter {}", self.adapter_path)),
            EmulatorChange::Add => lines.push(format!("<emulator> {} added (the adapter)", self.adapter_path)),
        }
        lines
    }
}

/// `cell K: SIZE CPU-less for GPU .. region .. (where), dialect D` (`(auto)` after a dialect
/// that `auto` chose).
fn cell_line(target: &Target<'_>, cell: &NewCell<'_>, dialect: Dialect) -> String {
    let region = cell.region;
    let backing = match (region.online, region.host_node, &region.dax) {
        (true, Some(node), _) => format!("host node {node}"),
        (_, _, Some(dax)) => format!("dax {dax}"),
        _ => "host".to_string(),
    };
    let chosen = if target.dialect == Dialect::Auto { " (auto)" } else { "" };
    format!(
        "cell {}: {} CPU-less for GPU {} region {} ({backing}), {dialect}{chosen}",
        cell.id,
        gib(cell.size),
        target.addr,
        region.id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_gib_or_mib() {
        assert_eq!(gib(8 << 30), "8 GiB");
        assert_eq!(gib(512 << 20), "512 MiB");
        assert_eq!(gib(3 << 29), "1536 MiB");
    }
}
