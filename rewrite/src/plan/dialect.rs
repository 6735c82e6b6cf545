//! The dialect each new cell is marked in: `auto` resolved per region (mirror what the host
//! firmware presents, in the best form the domain's QEMU and boot allow), explicit dialects
//! checked against what the QEMU can be given (no adapter: no `sp-mem`/`memmap-type`).

use topology::{Memmap, Region};

use crate::instructions::MemmapType;
use crate::{Dialect, SpmSupport};

/// What decides `auto` besides the region: the domain's boot and the QEMU that runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DialectContext {
    /// The domain boots a kernel directly (`<os><kernel>`), so `memmap=` can be passed.
    pub direct_kernel_boot: bool,
    /// The argv adapter runs the domain's QEMU (libvirt hosts; not KubeVirt).
    pub adapter: bool,
    /// The adapter dialects that QEMU speaks.
    pub qemu_spm: SpmSupport,
}

/// A cell's dialect, and the warning when `auto` could not mark an SPM region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub dialect: Dialect,
    pub warning: Option<String>,
}

/// The dialect for `region` when `requested` is asked for; explicit dialects are kept.
/// `fits_memmap_type` is false when the cell would span the 4 GiB boundary.
pub(crate) fn resolve(
    requested: Dialect,
    region: &Region,
    context: DialectContext,
    fits_memmap_type: bool,
) -> Resolved {
    let plain = |dialect| Resolved { dialect, warning: None };
    if requested != Dialect::Auto {
        return plain(requested);
    }
    if region.memmap != Memmap::Spm {
        return plain(Dialect::None);
    }
    if context.adapter && context.qemu_spm.sp_mem {
        return plain(Dialect::SpMem);
    }
    if context.adapter && context.qemu_spm.memmap_type && fits_memmap_type {
        return plain(Dialect::MemmapType(MemmapType::Spm));
    }
    if context.direct_kernel_boot {
        return plain(Dialect::KernelCmdline);
    }
    Resolved {
        dialect: Dialect::None,
        warning: Some(no_marking_warning(region, context)),
    }
}

/// What the guest sees without a marking, and what would give it SPM.
fn no_marking_warning(region: &Region, context: DialectContext) -> String {
    let qemu = if context.adapter {
        "the QEMU speaks neither sp-mem nor memmap-type"
    } else {
        "the QEMU runs without the argv adapter"
    };
    format!(
        "warning: region {} is Specific Purpose Memory on the host but is not marked SPM in the guest \
         (dialect auto: {qemu} and the domain boots from a disk): the guest sees it as ordinary \
         memory of a CPU-less NUMA node, the GPU still on that node; for SPM boot the kernel \
         directly (<os><kernel>, dialect kernel-cmdline) or run a QEMU with sp-mem/memmap-type \
         through the adapter",
        region.id
    )
}

/// Whether `dialect` needs the argv adapter to reach QEMU.
pub(crate) fn needs_adapter(dialect: Dialect) -> bool {
    matches!(dialect, Dialect::SpMem | Dialect::MemmapType(_))
}

#[cfg(test)]
mod tests {
    use topology::PciAddress;
    use topology::fixture::region;

    use super::*;

    const GPU: PciAddress = PciAddress {
        domain: 0,
        bus: 0xc1,
        device: 0,
        function: 0,
    };

    fn context(direct_kernel_boot: bool, adapter: bool, sp_mem: bool, memmap_type: bool) -> DialectContext {
        DialectContext {
            direct_kernel_boot,
            adapter,
            qemu_spm: SpmSupport { sp_mem, memmap_type },
        }
    }

    fn spm_region() -> Region {
        region(GPU, 2, 1 << 30)
    }

    fn normal_region() -> Region {
        let mut normal = region(GPU, 2, 1 << 30);
        normal.memmap = Memmap::Normal;
        normal
    }

    #[test]
    fn explicit_dialects_are_kept() {
        let resolved = resolve(
            Dialect::SpMem,
            &normal_region(),
            context(false, false, false, false),
            true,
        );
        assert_eq!(
            resolved,
            Resolved {
                dialect: Dialect::SpMem,
                warning: None
            }
        );
    }

    #[test]
    fn auto_gives_a_normal_region_no_marking() {
        let resolved = resolve(Dialect::Auto, &normal_region(), context(true, true, true, true), true);
        assert_eq!(
            resolved,
            Resolved {
                dialect: Dialect::None,
                warning: None
            }
        );
    }

    #[test]
    fn auto_prefers_sp_mem_then_memmap_type_through_the_adapter() {
        let spm = spm_region();
        assert_eq!(
            resolve(Dialect::Auto, &spm, context(true, true, true, true), true).dialect,
            Dialect::SpMem
        );
        assert_eq!(
            resolve(Dialect::Auto, &spm, context(true, true, false, true), true).dialect,
            Dialect::MemmapType(MemmapType::Spm)
        );
    }

    #[test]
    fn auto_skips_memmap_type_for_a_cell_across_4_gib() {
        let resolved = resolve(Dialect::Auto, &spm_region(), context(true, true, false, true), false);
        assert_eq!(resolved.dialect, Dialect::KernelCmdline);
    }

    #[test]
    fn auto_without_adapter_uses_the_kernel_command_line_of_a_direct_boot() {
        let resolved = resolve(Dialect::Auto, &spm_region(), context(true, false, true, true), true);
        assert_eq!(
            resolved,
            Resolved {
                dialect: Dialect::KernelCmdline,
                warning: None
            }
        );
    }

    #[test]
    fn auto_on_a_disk_boot_without_adapter_marks_nothing_and_warns() {
        let resolved = resolve(Dialect::Auto, &spm_region(), context(false, false, true, true), true);
        assert_eq!(resolved.dialect, Dialect::None);
        let warning = resolved.warning.unwrap_or_default();
        assert!(
            warning.starts_with("warning: region 0000:c1:00.0/node2 is Specific Purpose Memory"),
            "{warning}"
        );
        assert!(warning.contains("runs without the argv adapter"), "{warning}");
        assert!(warning.contains("ordinary memory of a CPU-less NUMA node"), "{warning}");
    }

    #[test]
    fn auto_with_an_adapter_that_speaks_no_spm_dialect_says_so() {
        let resolved = resolve(Dialect::Auto, &spm_region(), context(false, true, false, false), true);
        let warning = resolved.warning.unwrap_or_default();
        assert!(warning.contains("speaks neither sp-mem nor memmap-type"), "{warning}");
    }

    #[test]
    fn only_the_qemu_dialects_need_the_adapter() {
        assert!(needs_adapter(Dialect::SpMem));
        assert!(needs_adapter(Dialect::MemmapType(MemmapType::Normal)));
        assert!(!needs_adapter(Dialect::KernelCmdline));
        assert!(!needs_adapter(Dialect::None));
        assert!(!needs_adapter(Dialect::Auto));
    }
}
