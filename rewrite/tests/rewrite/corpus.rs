#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Every corpus definition (libvirt's own test inputs and KubeVirt-generated ones): each PCI
//! hostdev is given a 1 GiB HBM region on host node 0. Files without a PCI hostdev must come
//! back byte-identical; q35 files with one get exactly the expected additions, are idempotent,
//! and a rewrite for a host without HBM restores them byte for byte; the rest fail with the
//! expected exit code.

use std::path::PathBuf;

use hbm_rewrite::{Dialect, RewriteOptions, pci_hostdevs, read_metadata, rewrite};
use topology::Inventory;

const GIB: u64 = 1 << 30;

fn corpus_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["../tests/corpus/libvirt", "../tests/corpus/kubevirt"] {
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("corpus folder {dir}: {e}")) {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "xml") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

fn name(p: &std::path::Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn inventory_for(xml: &str) -> Inventory {
    let mut inv = Inventory::empty("/");
    for gpu in pci_hostdevs(xml).unwrap_or_default() {
        inv.regions.push(topology::fixture::region(gpu, 0, GIB));
    }
    inv
}

/// (file, exit code) for the files that must be refused.
const REFUSED: &[(&str, u8)] = &[
    ("api-domain_numa_topology.xml", 2),
    ("hostdev-pci-address-device.xml", 3),
    ("hostdev-pci-address.xml", 3),
    ("hostdev-pci-duplicate.xml", 2),
    ("hostdev-vfio-multidomain.xml", 3),
    ("net-virtio-teaming-hostdev.xml", 3),
    ("pci-rom.xml", 3),
];

/// (file, PCI hostdevs, hostdevs given HBM, first new cell, first new controller index) for the
/// files rewritten. `hostdev-pci-address-unassigned-q35.xml` has one hostdev with
/// `<address type='unassigned'/>` (never shown to the guest), which is left alone.
const REWRITTEN: &[(&str, usize, usize, u32, u32)] = &[
    ("acpi-generic-initiator.xml", 1, 1, 9, 3),
    ("gpu1.rendered.xml", 1, 1, 1, 1),
    ("hostdev-pci-address-device-q35.xml", 1, 1, 1, 1),
    ("hostdev-pci-address-q35.xml", 1, 1, 1, 1),
    ("hostdev-pci-address-unassigned-q35.xml", 4, 3, 1, 1),
    ("hostdev-vfio-multidomain-q35.xml", 1, 1, 1, 1),
    ("hostdev-vfio-q35.xml", 1, 1, 1, 1),
    ("numa-passthrough-gpu.rendered.xml", 1, 1, 1, 1),
];

#[test]
fn every_corpus_file_is_rewritten_refused_or_left_byte_identical() {
    let files = corpus_files();
    assert!(files.len() >= 100, "corpus incomplete: {} files", files.len());
    for dialect in [Dialect::None, Dialect::SpMem] {
        let opts = RewriteOptions {
            dialect,
            ..RewriteOptions::default()
        };
        let mut unchanged = 0;
        let mut rewritten = Vec::new();
        let mut refused = Vec::new();
        for f in &files {
            let xml = std::fs::read_to_string(f).unwrap();
            let inv = inventory_for(&xml);
            match rewrite(&xml, &inv, &opts) {
                Err(e) => refused.push((name(f), e.exit_code())),
                Ok(out) if !out.changed => {
                    assert_eq!(out.xml, xml, "{}: unchanged output must be byte-identical", f.display());
                    assert!(
                        inv.regions.is_empty(),
                        "{}: has a PCI hostdev with HBM but was not rewritten",
                        f.display()
                    );
                    unchanged += 1;
                }
                Ok(out) => {
                    check_rewritten(f, &xml, &out.xml, &inv, &opts);
                    rewritten.push(name(f));
                }
            }
        }
        refused.sort();
        rewritten.sort();
        let expected: Vec<(String, u8)> = REFUSED.iter().map(|(f, c)| (f.to_string(), *c)).collect();
        assert_eq!(refused, expected, "{dialect}");
        let expected: Vec<String> = REWRITTEN.iter().map(|r| r.0.to_string()).collect();
        assert_eq!(rewritten, expected, "{dialect}");
        assert_eq!(unchanged, files.len() - REFUSED.len() - REWRITTEN.len());
    }
}

fn check_rewritten(f: &std::path::Path, xml: &str, out: &str, inv: &Inventory, opts: &RewriteOptions) {
    let file = name(f);
    let (_, hostdevs, claimed, first_cell, first_index) = REWRITTEN
        .iter()
        .find(|r| r.0 == file)
        .copied()
        .unwrap_or_else(|| panic!("{file} unexpectedly rewritten"));
    assert_eq!(pci_hostdevs(xml).unwrap().len(), hostdevs, "{file}");
    // Same quoting style as the document's root element.
    let q = if xml.trim_start().starts_with("<domain type=\"") {
        '"'
    } else {
        '\''
    };
    let meta = read_metadata(out).unwrap().expect("record");
    assert_eq!(meta.claimed.len(), claimed, "{file}");
    if hostdevs != claimed {
        assert!(out.contains("<address type='unassigned'/>"), "{file}");
    }
    let mut index = first_index;
    let mut bus_nr = 254;
    for (i, c) in meta.claimed.iter().enumerate() {
        let cell = first_cell + u32::try_from(i).unwrap();
        assert_eq!(c.guest_cell, cell, "{file}");
        assert_eq!(c.size_bytes, GIB);
        let needles = [
            format!("<cell id={q}{cell}{q} memory={q}1048576{q} unit={q}KiB{q}/>"),
            format!("<memnode cellid={q}{cell}{q} mode={q}strict{q} nodeset={q}0{q}/>"),
            format!(
                "<controller type={q}pci{q} index={q}{index}{q} model={q}pcie-expander-bus{q}>\n      <target busNr={q}{bus_nr}{q}>\n        <node>{cell}</node>"
            ),
            format!(
                "<controller type={q}pci{q} index={q}{}{q} model={q}pcie-root-port{q}>",
                index + 1
            ),
            format!(
                "<address type={q}pci{q} domain={q}0x0000{q} bus={q}0x{index:02x}{q} slot={q}0x00{q} function={q}0x0{q}/>\n    </controller>"
            ),
            format!(
                "<address type={q}pci{q} domain={q}0x0000{q} bus={q}0x{:02x}{q} slot={q}0x00{q} function={q}0x0{q}/>",
                index + 1
            ),
            format!(",node={cell}{q}/>"),
        ];
        for n in &needles {
            assert!(out.contains(n.as_str()), "{file}: missing {n}\n{out}");
        }
        if opts.dialect != Dialect::None {
            assert!(out.contains(&format!("sp-mem:cell={cell},size=1073741824")), "{file}");
        }
        index += 2;
        bus_nr -= 2;
    }
    assert!(out.contains("acpi-generic-initiator,id=hbm-gi"), "{file}");
    assert!(out.contains("<acpi/>") || out.contains("<acpi></acpi>"), "{file}");
    // Idempotent, and removable.
    let again = rewrite(out, inv, opts).unwrap();
    assert_eq!(again.xml, out, "{file}: not idempotent");
    let removed = rewrite(out, &Inventory::empty("/"), opts).unwrap();
    assert_eq!(removed.xml, xml, "{file}: removal did not restore the input");
}
