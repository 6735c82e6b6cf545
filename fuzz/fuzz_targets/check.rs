//! The fuzz target's check, shared with the rewriter's regression tests (which include this file
//! to replay `fuzz/known/`): any input must give `Ok` or a typed error, never a panic; an `Ok`
//! output must rewrite to itself (idempotent, for every input, a record in it or not); a
//! rewrite for a host without HBM must succeed, and give back the input when the input carried
//! no record of an earlier rewrite.
//!
//! The first input byte picks the dialect and options; the rest is the XML. The inventory gives
//! HBM to every PCI hostdev of the input, so the fuzzer reaches the rewriting paths, not only the
//! parser.

use hbm_rewrite::instructions::MemmapType;
use hbm_rewrite::{Dialect, PolicyMode, RewriteOptions, pci_hostdevs, rewrite};
use topology::{Inventory, Region};

/// One region per PCI hostdev of `xml` (online in a host node, else behind device-dax).
pub fn inventory(xml: &str, online: bool) -> Inventory {
    let mut inv = Inventory::empty("/");
    for (i, gpu) in pci_hostdevs(xml).unwrap_or_default().into_iter().enumerate() {
        let host_node = u32::try_from(i).unwrap_or(0);
        let size_bytes = (1 << 30) + ((i as u64) << 21);
        inv.regions.push(Region {
            dax: (!online).then(|| format!("/dev/dax{i}.0")),
            online,
            ..topology::fixture::region(gpu, host_node, size_bytes)
        });
    }
    inv
}

/// The options the selector byte `sel` picks.
pub fn options(sel: u8) -> RewriteOptions {
    let dialect = match sel & 0x07 {
        0 => Dialect::KernelCmdline,
        1 => Dialect::MemmapType(MemmapType::Spm),
        2 => Dialect::MemmapType(MemmapType::Reserved),
        3 => Dialect::SpMem,
        4 => Dialect::None,
        5 => Dialect::MemmapType(MemmapType::Normal),
        _ => Dialect::Auto,
    };
    // Bit 3: the QEMU runs without the argv adapter (KubeVirt).
    let adapter_path = (sel & 0x08 == 0).then(|| hbm_rewrite::DEFAULT_ADAPTER_PATH.to_string());
    RewriteOptions {
        adapter_path,
        dialect,
        policy: if sel & 0x40 != 0 {
            PolicyMode::Required
        } else {
            PolicyMode::Auto
        },
        size_cap_bytes: (sel & 0x20 != 0).then_some(512 << 20),
        native_generic_initiator: sel & 0x10 != 0,
        ..RewriteOptions::default()
    }
}

/// Runs the check on one fuzz input (panics on a violation).
pub fn check(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else { return };
    let Ok(xml) = std::str::from_utf8(rest) else { return };
    let options = options(sel);
    let inv = inventory(xml, sel & 0x80 == 0);
    let Ok(out) = rewrite(xml, &inv, &options) else { return };
    let again = rewrite(&out.xml, &inv, &options).expect("a rewrite's output must rewrite again");
    assert_eq!(again.xml, out.xml, "not idempotent");
    if out.changed {
        let auto = RewriteOptions {
            policy: PolicyMode::Auto,
            ..options.clone()
        };
        let removed = rewrite(&out.xml, &Inventory::empty("/"), &auto).expect("removal must succeed");
        // Undo restores the input unless the input itself carried an earlier record.
        if !xml.contains("applied") {
            assert_eq!(removed.xml, xml, "removal did not restore the input");
        }
    }
}
