//! The SPM marking per dialect: `memmap=` fragments for the guest kernel command line (from the
//! q35 guest-physical layout), or instructions for the QEMU argv adapter (`memmap-type`,
//! `sp-mem`, device-dax backing) with `<emulator>` pointed at the adapter.

use crate::document::Document;
use crate::instructions::Instruction;
use crate::layout::{FOUR_GIB, GpaRange};
use crate::libvirt::unsatisfiable;
use crate::size::kernel_size;
use crate::{Dialect, RewriteError, RewriteOptions};

use super::Target;
use super::cells::NewCell;
use super::dialect::{DialectContext, needs_adapter, resolve};
use topology::Region;

/// Alignment assumed for a device-dax region whose `align` is unknown.
pub(crate) const DEFAULT_DAX_ALIGN: u64 = 2 << 20;

/// How the HBM cells are marked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SpmMarking {
    /// `memmap=<size>%<gpa>-1+0xefffffff`, one per range of each `kernel-cmdline` cell.
    pub kernel_cmdline: Vec<String>,
    /// What the argv adapter changes, in cell order.
    pub instructions: Vec<Instruction>,
    /// The dialect each new cell is marked in, in cell order (`auto` resolved).
    pub dialects: Vec<Dialect>,
    /// One `warning: ...` line per SPM region `auto` could not mark.
    pub warnings: Vec<String>,
}

/// What happens to `<emulator>` when the adapter must act.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EmulatorChange {
    /// No instruction, or it names the adapter already.
    Unchanged,
    /// The existing element's text becomes the adapter path.
    Set(usize),
    /// An `<emulator>` naming the adapter is added.
    Add,
}

/// The marking of every new cell; `new_ranges` holds the cells' guest ranges in cell order.
pub(crate) fn spm_marking(
    doc: &Document<'_>,
    os: usize,
    targets: &[Target<'_>],
    new_ranges: &[Vec<GpaRange>],
    options: &RewriteOptions,
) -> Result<SpmMarking, RewriteError> {
    let context = DialectContext {
        direct_kernel_boot: doc.child(os, "kernel").is_some(),
        adapter: options.adapter_path.is_some(),
        qemu_spm: options.qemu_spm,
    };
    let mut marking = SpmMarking::default();
    let cells = targets
        .iter()
        .flat_map(|target| target.cells.iter().map(move |cell| (target, cell)));
    for ((target, cell), ranges) in cells.zip(new_ranges) {
        let resolved = resolve(target.dialect, cell.region, context, !spans_4g(ranges));
        check_adapter(doc, target, cell, resolved.dialect, context.adapter)?;
        mark_cell(doc, os, target, cell, ranges, resolved.dialect, &mut marking)?;
        marking.instructions.extend(dax_instruction(cell));
        marking.dialects.push(resolved.dialect);
        marking.warnings.extend(resolved.warning);
    }
    Ok(marking)
}

/// Adds the marking of one cell in `dialect` (resolved, never `auto`).
fn mark_cell(
    doc: &Document<'_>,
    os: usize,
    target: &Target<'_>,
    cell: &NewCell<'_>,
    ranges: &[GpaRange],
    dialect: Dialect,
    marking: &mut SpmMarking,
) -> Result<(), RewriteError> {
    match dialect {
        Dialect::KernelCmdline => {
            if doc.child(os, "kernel").is_none() {
                return Err(unsatisfiable(
                    doc,
                    os,
                    "dialect kernel-cmdline needs direct kernel boot (<os><kernel>); use dialect auto, memmap-type, sp-mem or none",
                ));
            }
            marking.kernel_cmdline.extend(kernel_cmdline_fragments(ranges));
        }
        Dialect::MemmapType(memmap) => {
            if spans_4g(ranges) {
                return Err(unsatisfiable(
                    doc,
                    target.hostdev,
                    format!(
                        "cell {} would span the 4 GiB boundary, which memmap-type refuses; change the guest RAM size",
                        cell.id
                    ),
                ));
            }
            marking.instructions.push(Instruction::MemmapType {
                cell: cell.id,
                size_bytes: cell.size,
                memmap,
            });
        }
        Dialect::SpMem => marking.instructions.push(Instruction::SpMem {
            cell: cell.id,
            size_bytes: cell.size,
        }),
        Dialect::None | Dialect::Auto => {}
    }
    Ok(())
}

/// Without the argv adapter (KubeVirt's virt-launcher) neither the adapter's dialects nor a
/// device-dax backing can reach QEMU: refuse, saying what to do instead.
fn check_adapter(
    doc: &Document<'_>,
    target: &Target<'_>,
    cell: &NewCell<'_>,
    dialect: Dialect,
    adapter: bool,
) -> Result<(), RewriteError> {
    if adapter {
        return Ok(());
    }
    if needs_adapter(dialect) {
        return Err(unsatisfiable(
            doc,
            target.hostdev,
            format!(
                "dialect {dialect} is applied by the QEMU argv adapter, which this QEMU runs without (KubeVirt's virt-launcher); use dialect auto, kernel-cmdline (direct kernel boot) or none"
            ),
        ));
    }
    match (&cell.region.dax, cell.region.online) {
        (Some(dax), false) => Err(unsatisfiable(doc, target.hostdev, devdax_only(cell.region, dax))),
        _ => Ok(()),
    }
}

/// The refusal for a region only reachable through device-dax, with the host-side fix.
fn devdax_only(region: &Region, dax: &str) -> String {
    let name = dax.rsplit('/').next().unwrap_or(dax);
    let node = region
        .host_node
        .map_or_else(|| "its NUMA node".to_string(), |node| format!("host NUMA node {node}"));
    format!(
        "region {} is reachable only through the device-dax device {dax}, and this QEMU runs without the argv adapter that maps it (KubeVirt's virt-launcher); on the host run `daxctl reconfigure-device --mode=system-ram {name}` (onlines the HBM as movable memory of {node}), then the cell is bound to that node",
        region.id
    )
}

/// `memmap=` for each guest range of a cell (sizes as the kernel's `memparse` reads them).
pub(crate) fn kernel_cmdline_fragments(ranges: &[GpaRange]) -> Vec<String> {
    ranges
        .iter()
        .map(|range| {
            format!(
                "memmap={}%{}-1+0xefffffff",
                kernel_size(range.size),
                kernel_size(range.start)
            )
        })
        .collect()
}

/// Whether a cell's memory crosses the 4 GiB boundary (two ranges, or one across it).
pub(crate) fn spans_4g(ranges: &[GpaRange]) -> bool {
    ranges.len() > 1
        || ranges
            .first()
            .is_some_and(|range| range.start < FOUR_GIB && range.size > FOUR_GIB - range.start)
}

/// The `dax` instruction for a cell whose region is reachable only as device-dax.
pub(crate) fn dax_instruction(cell: &NewCell<'_>) -> Option<Instruction> {
    if cell.region.online {
        return None;
    }
    let path = cell.region.dax.as_ref()?;
    Some(Instruction::Dax {
        cell: cell.id,
        size_bytes: cell.size,
        path: path.clone(),
        align: cell.region.dax_align.unwrap_or(DEFAULT_DAX_ALIGN),
    })
}

/// `<emulator>` must name `adapter_path` when there are instructions.
pub(crate) fn emulator_change(
    doc: &Document<'_>,
    devices: usize,
    adapter_path: Option<&str>,
    instructions: &[Instruction],
) -> EmulatorChange {
    let Some(adapter_path) = adapter_path.filter(|_| !instructions.is_empty()) else {
        return EmulatorChange::Unchanged;
    };
    match doc.child(devices, "emulator") {
        Some(emulator) if doc.text(emulator) == adapter_path => EmulatorChange::Unchanged,
        Some(emulator) => EmulatorChange::Set(emulator),
        None => EmulatorChange::Add,
    }
}

#[cfg(test)]
mod tests {
    use topology::{PciAddress, Region, fixture::region};

    use super::*;
    use crate::instructions::MemmapType;
    use crate::plan::aliases::AliasChange;
    use crate::plan::buses::Placement;

    const GIB: u64 = 1 << 30;
    const GPU: PciAddress = PciAddress::new(0, 0x41, 0, 0);

    fn target<'i>(dialect: Dialect, cells: Vec<NewCell<'i>>) -> Target<'i> {
        Target {
            hostdev: 0,
            addr: GPU,
            dialect,
            cells,
            placement: Placement::Reuse { expander: 0, index: 1 },
            alias: "ua-x".into(),
            alias_change: AliasChange::Keep,
        }
    }

    fn range(start: u64, size: u64) -> GpaRange {
        GpaRange { start, size }
    }

    #[test]
    fn kernel_cmdline_gets_one_memmap_per_range() {
        assert_eq!(
            kernel_cmdline_fragments(&[range(3 << 29, 1 << 29), range(FOUR_GIB, 3 << 29)]),
            vec!["memmap=512M%1536M-1+0xefffffff", "memmap=1536M%4G-1+0xefffffff"]
        );
        let hbm = region(GPU, 2, GIB);
        let marking = mark_cell(
            "<domain><os><kernel>/k</kernel></os></domain>",
            Dialect::KernelCmdline,
            &hbm,
            (1, vec![range(10 * GIB, GIB)]),
            &RewriteOptions::default(),
        );
        assert_eq!(
            marking,
            Ok(SpmMarking {
                kernel_cmdline: vec!["memmap=1G%10G-1+0xefffffff".into()],
                instructions: vec![],
                dialects: vec![Dialect::KernelCmdline],
                warnings: vec![],
            })
        );
    }

    #[test]
    fn kernel_cmdline_without_direct_kernel_boot_is_refused() {
        let hbm = region(GPU, 2, GIB);
        let options = RewriteOptions::default();
        let err = mark_cell(
            "<domain><os/></domain>",
            Dialect::KernelCmdline,
            &hbm,
            (1, vec![]),
            &options,
        )
        .unwrap_err();
        assert!(err.to_string().contains("needs direct kernel boot"));
    }

    #[test]
    fn memmap_type_refuses_4g_crossings_and_records_instructions() {
        assert!(spans_4g(&[range(0, 1), range(FOUR_GIB, 1)]));
        assert!(spans_4g(&[range(FOUR_GIB - 1, 2)]));
        assert!(!spans_4g(&[range(FOUR_GIB, GIB)]));
        assert!(spans_4g(&[range(1, u64::MAX)]));
        assert!(!spans_4g(&[range(u64::MAX, u64::MAX)]));
        let hbm = region(GPU, 2, GIB);
        let dialect = Dialect::MemmapType(MemmapType::Reserved);
        let cell = (2, vec![range(FOUR_GIB, GIB)]);
        let marking = mark_cell(
            "<domain><os/></domain>",
            dialect,
            &hbm,
            cell,
            &RewriteOptions::default(),
        )
        .unwrap();
        assert_eq!(
            marking.instructions,
            vec![Instruction::MemmapType {
                cell: 2,
                size_bytes: GIB,
                memmap: MemmapType::Reserved
            }]
        );
    }

    /// The marking of one 1 GiB cell `id` of `hbm` at the guest ranges `ranges`, in a domain
    /// `xml` whose `<os>` is element 1.
    fn mark_cell(
        xml: &str,
        dialect: Dialect,
        hbm: &Region,
        (id, ranges): (u32, Vec<GpaRange>),
        options: &RewriteOptions,
    ) -> Result<SpmMarking, RewriteError> {
        let doc = Document::parse(xml).unwrap();
        let cells = vec![NewCell {
            id,
            size: GIB,
            region: hbm,
        }];
        spm_marking(&doc, 1, &[target(dialect, cells)], &[ranges], options)
    }

    /// [`mark_cell`] for cell 1 at 4 GiB.
    fn mark_one(
        xml: &str,
        dialect: Dialect,
        hbm: &Region,
        options: &RewriteOptions,
    ) -> Result<SpmMarking, RewriteError> {
        mark_cell(xml, dialect, hbm, (1, vec![range(4 * GIB, GIB)]), options)
    }

    fn no_adapter() -> RewriteOptions {
        RewriteOptions {
            adapter_path: None,
            ..RewriteOptions::default()
        }
    }

    #[test]
    fn without_the_adapter_a_devdax_only_region_is_refused_with_the_daxctl_fix() {
        let dax = Region {
            online: false,
            dax: Some("/dev/dax1.0".into()),
            ..region(GPU, 3, GIB)
        };
        let err = mark_one("<domain><os/></domain>", Dialect::Auto, &dax, &no_adapter()).unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert_eq!(
            err.to_string(),
            "domain XML line 1: <domain>: cannot satisfy: region 0000:41:00.0/node3 is reachable only through the device-dax device /dev/dax1.0, and this QEMU runs without the argv adapter that maps it (KubeVirt's virt-launcher); on the host run `daxctl reconfigure-device --mode=system-ram dax1.0` (onlines the HBM as movable memory of host NUMA node 3), then the cell is bound to that node"
        );
    }

    #[test]
    fn without_the_adapter_the_adapter_dialects_are_refused() {
        let hbm = region(GPU, 2, GIB);
        let err = mark_one("<domain><os/></domain>", Dialect::SpMem, &hbm, &no_adapter()).unwrap_err();
        assert!(
            err.to_string()
                .contains("dialect sp-mem is applied by the QEMU argv adapter, which this QEMU runs without"),
            "{err}"
        );
    }

    #[test]
    fn auto_on_a_disk_boot_without_adapter_binds_an_online_region_unmarked_and_warns() {
        let hbm = region(GPU, 2, GIB);
        let marking = mark_one("<domain><os/></domain>", Dialect::Auto, &hbm, &no_adapter()).unwrap();
        assert_eq!(marking.dialects, vec![Dialect::None]);
        assert_eq!(marking.instructions, vec![]);
        assert_eq!(marking.kernel_cmdline, Vec::<String>::new());
        assert_eq!(marking.warnings.len(), 1);
        assert!(marking.warnings[0].starts_with("warning: region 0000:41:00.0/node2 is Specific Purpose Memory"));
    }

    #[test]
    fn auto_through_the_adapter_uses_what_the_qemu_speaks() {
        let hbm = region(GPU, 2, GIB);
        let options = RewriteOptions {
            qemu_spm: crate::SpmSupport {
                sp_mem: true,
                memmap_type: false,
            },
            ..RewriteOptions::default()
        };
        let marking = mark_one("<domain><os/></domain>", Dialect::Auto, &hbm, &options).unwrap();
        assert_eq!(marking.dialects, vec![Dialect::SpMem]);
        assert_eq!(
            marking.instructions,
            vec![Instruction::SpMem {
                cell: 1,
                size_bytes: GIB
            }]
        );
        assert_eq!(marking.warnings, Vec::<String>::new());
    }

    #[test]
    fn a_dax_region_gets_a_dax_instruction_with_its_alignment() {
        let dax = Region {
            online: false,
            dax: Some("/dev/dax1.0".into()),
            ..region(GPU, 3, GIB)
        };
        let cell = NewCell {
            id: 4,
            size: GIB,
            region: &dax,
        };
        assert_eq!(
            dax_instruction(&cell),
            Some(Instruction::Dax {
                cell: 4,
                size_bytes: GIB,
                path: "/dev/dax1.0".into(),
                align: DEFAULT_DAX_ALIGN
            })
        );
        let online = region(GPU, 3, GIB);
        assert_eq!(
            dax_instruction(&NewCell {
                id: 4,
                size: GIB,
                region: &online
            }),
            None
        );
    }

    #[test]
    fn emulator_names_the_adapter_only_with_instructions() {
        let sp_mem = [Instruction::SpMem {
            cell: 1,
            size_bytes: GIB,
        }];
        let doc = Document::parse("<devices><emulator>/usr/bin/qemu</emulator></devices>").unwrap();
        assert_eq!(emulator_change(&doc, 0, Some("/a"), &[]), EmulatorChange::Unchanged);
        assert_eq!(emulator_change(&doc, 0, Some("/a"), &sp_mem), EmulatorChange::Set(1));
        assert_eq!(
            emulator_change(&doc, 0, Some("/usr/bin/qemu"), &sp_mem),
            EmulatorChange::Unchanged
        );
        let doc = Document::parse("<devices/>").unwrap();
        assert_eq!(emulator_change(&doc, 0, Some("/a"), &sp_mem), EmulatorChange::Add);
    }
}
