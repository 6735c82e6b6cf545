#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Issue 12's hardening of the rewriter: checked size arithmetic, a UTF-8 BOM, CRLF line ends,
//! malformed XML the parser must refuse, what a missing size cap means, and records whose
//! additions no longer match what they say was added.

use hbm_rewrite::{RewriteError, RewriteOptions, Rewritten, rewrite};
use topology::{Inventory, PciAddress};

const GIB: u64 = 1 << 30;
const SAMPLE: &str = include_str!("../../../examples/domains/gpu-vm.xml");

/// GPU 0000:c1:00.0 (the sample's) with `size` bytes of HBM online in host node 3.
fn host(size: u64) -> Inventory {
    let mut inventory = Inventory::empty("/");
    inventory.regions = vec![topology::fixture::region(PciAddress::new(0, 0xc1, 0, 0), 3, size)];
    inventory
}

fn rewritten(xml: &str) -> Result<Rewritten, RewriteError> {
    rewrite(xml, &host(16 * GIB), &RewriteOptions::default())
}

/// The refusal of `xml` as (exit code, message).
fn refusal(xml: &str) -> (u8, String) {
    let error = rewritten(xml).unwrap_err();
    (error.exit_code(), error.to_string())
}

#[test]
fn a_memory_size_near_the_top_of_u64_is_bad_input_not_a_panic() {
    let huge = SAMPLE.replace(
        "<memory unit='GiB'>8</memory>",
        "<memory unit='b'>18446744072635809792</memory>",
    );
    assert_eq!(
        refusal(&huge),
        (
            2,
            "domain XML line 4: <memory>: the guest memory plus the HBM cells does not fit the 64-bit guest-physical address space; check the memory amounts and units".to_string()
        )
    );
}

#[test]
fn a_cell_size_near_the_top_of_u64_is_bad_input_not_a_panic() {
    let huge = SAMPLE.replace(
        "<cpu mode='host-passthrough'/>",
        "<cpu mode='host-passthrough'>\n    <numa>\n      <cell id='0' cpus='0-3' memory='18446744072635809792' unit='b'/>\n    </numa>\n  </cpu>",
    );
    assert_eq!(
        refusal(&huge),
        (
            2,
            "domain XML line 18: <numa>: the guest memory plus the HBM cells does not fit the 64-bit guest-physical address space; check the memory amounts and units".to_string()
        )
    );
}

#[test]
fn malformed_xml_that_xmllint_rejects_is_bad_input() {
    for (from, to, line) in [
        ("<name>gpu-vm</name>", "<name>gpu\u{0}vm</name>", 2),
        ("<name>gpu-vm</name>", "<name>gpu\u{1}vm</name>", 2),
        ("<apic/>", "<1bad/>", 15),
        ("<apic/>", "<a:b:c/>", 15),
        ("<name>gpu-vm</name>", "<name>gpu]]>vm</name>", 2),
        ("<apic/>", "<!-- a -- b -->", 15),
        ("<name>gpu-vm</name>", "<name x=\"a&b\">gpu-vm</name>", 2),
    ] {
        let xml = SAMPLE.replacen(from, to, 1);
        let error = rewritten(&xml).unwrap_err();
        assert!(
            matches!(&error, RewriteError::Malformed { line: at, .. } if *at == line),
            "{to:?}: {error:?}"
        );
        assert_eq!(error.exit_code(), 2);
    }
}

/// Rewrites `xml`, checks it is idempotent and that a run for a host without HBM gives back the
/// input byte for byte; returns the output.
fn round_trip(xml: &str) -> String {
    let out = rewritten(xml).unwrap();
    assert!(out.changed);
    let again = rewritten(&out.xml).unwrap();
    assert_eq!(again.xml, out.xml, "a second rewrite must give the same bytes");
    let removed = rewrite(&out.xml, &Inventory::empty("/"), &RewriteOptions::default()).unwrap();
    assert_eq!(removed.xml, xml, "undo must give back the input");
    out.xml
}

#[test]
fn a_utf8_bom_is_kept_and_the_document_rewritten_as_without_it() {
    let plain = round_trip(SAMPLE);
    let with_bom = round_trip(&format!("\u{feff}{SAMPLE}"));
    assert_eq!(with_bom, format!("\u{feff}{plain}"));
    assert_eq!(
        hbm_rewrite::read_metadata(&with_bom).unwrap().unwrap().claimed,
        hbm_rewrite::read_metadata(&plain).unwrap().unwrap().claimed
    );
}

#[test]
fn a_crlf_document_gets_crlf_additions_and_undo_gives_it_back() {
    let plain = round_trip(SAMPLE);
    let crlf = round_trip(&SAMPLE.replace('\n', "\r\n"));
    assert_eq!(crlf, plain.replace('\n', "\r\n"));
}

#[test]
fn a_one_line_crlf_document_stays_one_line() {
    let one_line: String = SAMPLE.lines().map(str::trim).collect();
    let crlf = format!("{one_line}\r\n");
    let out = round_trip(&crlf);
    assert_eq!(out.matches('\n').count(), 1);
    assert!(out.ends_with("</domain>\r\n"));
}
