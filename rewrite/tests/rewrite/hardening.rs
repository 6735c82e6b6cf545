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

const GOLDEN: &str = include_str!("../../../examples/domains/gpu-vm.rewritten.xml");

/// The sample host as the golden output was written for (0000:c1:00.0: 64 GiB behind dax1.0).
fn sample_host() -> Inventory {
    topology::discover(
        std::path::Path::new("../examples/hosts/seed-amd"),
        &topology::DiscoveryConfig::default(),
    )
    .unwrap()
}

/// The golden output with `entry` added as the record's last entry.
fn with_entry(entry: &str) -> String {
    GOLDEN.replacen(
        "      </hbm:applied>",
        &format!("        {entry}\n      </hbm:applied>"),
        1,
    )
}

/// The golden output's record without its digests (as the release before digests wrote it).
fn without_digests(xml: &str) -> String {
    let mut out = String::new();
    let mut rest = xml;
    while let Some(at) = rest.find(" digest='") {
        out.push_str(&rest[..at]);
        rest = &rest[at + " digest='0123456789abcdef'".len()..];
    }
    out.push_str(rest);
    out
}

/// The refusal of rewriting `xml` for the sample host, as (exit code, message).
fn record_refusal(xml: &str) -> (u8, String) {
    let error = rewrite(xml, &sample_host(), &RewriteOptions::default()).unwrap_err();
    (error.exit_code(), error.to_string())
}

#[test]
fn the_golden_record_carries_a_digest_per_addition_and_still_undoes() {
    assert_eq!(GOLDEN.matches(" digest='").count(), 8);
    let again = rewrite(GOLDEN, &sample_host(), &RewriteOptions::default()).unwrap();
    assert_eq!(again.xml, GOLDEN);
    let removed = rewrite(GOLDEN, &Inventory::empty("/"), &RewriteOptions::default()).unwrap();
    assert_eq!(removed.xml, SAMPLE);
}

#[test]
fn a_forged_remove_of_devices_is_refused_naming_the_entry() {
    let forged = with_entry("<hbm:undo op='remove' at='devices'/>");
    assert_eq!(
        record_refusal(&forged),
        (
            2,
            "domain XML line 72: <hbm:undo>: record entry 14 (op=remove at=devices): <devices> is not an element the rewriter adds; the record does not prove the earlier rewrite made this change: remove the hbm:applied record and the additions it lists by hand, then rewrite again".to_string()
        )
    );
    let legacy = without_digests(&forged);
    assert!(
        record_refusal(&legacy)
            .1
            .contains("<devices> is not an element the rewriter adds")
    );
}

#[test]
fn a_forged_restore_cannot_splice_more_than_the_element() {
    let two_names =
        with_entry("<hbm:undo op='restore' at='name' raw='&lt;name&gt;a&lt;/name&gt;&lt;name&gt;b&lt;/name&gt;'/>");
    assert!(
        record_refusal(&two_names)
            .1
            .contains("record entry 14 (op=restore at=name): <name> is not an element the rewriter changes")
    );
    let injected = GOLDEN.replace(
        "raw='&lt;memory unit=&apos;GiB&apos;&gt;8&lt;/memory&gt;'",
        "raw='&lt;memory unit=&apos;GiB&apos;&gt;8&lt;/memory&gt;&lt;qemu:arg value=&apos;-evil&apos;/&gt;'",
    );
    assert_ne!(injected, GOLDEN);
    let (code, message) = record_refusal(&injected);
    assert_eq!(code, 2);
    assert!(
        message.contains("(op=restore at=memory): raw is not one element"),
        "{message}"
    );
}

#[test]
fn an_addition_changed_since_is_refused_by_its_digest() {
    let changed = GOLDEN.replace("<alias name='ua-hbm-0000-c1-00-0'/>", "<alias name='ua-mine'/>");
    let (code, message) = record_refusal(&changed);
    assert_eq!(code, 2);
    assert!(
        message.contains(
            "(op=remove at=devices/hostdev[source=0000:c1:00.0]/alias): the document has a different element there"
        ),
        "{message}"
    );
}

#[test]
fn additions_libvirt_wrote_back_still_undo() {
    // libvirt re-quotes nothing here but fills in children of the controllers it knows.
    let filled = GOLDEN
        .replace(
            "model='pcie-expander-bus'>\n",
            "model='pcie-expander-bus'>\n      <model name='pxb-pcie'/>\n",
        )
        .replace(
            "model='pcie-root-port'>\n",
            "model='pcie-root-port'>\n      <model name='pcie-root-port'/>\n      <target chassis='2' port='0x8'/>\n      <alias name='pci.2'/>\n",
        );
    assert_ne!(filled, GOLDEN);
    let again = rewrite(&filled, &sample_host(), &RewriteOptions::default()).unwrap();
    assert_eq!(again.xml, GOLDEN);
}

#[test]
fn a_record_without_digests_from_the_previous_release_is_undone() {
    let legacy = without_digests(GOLDEN);
    assert_eq!(legacy.matches(" digest='").count(), 0);
    let again = rewrite(&legacy, &sample_host(), &RewriteOptions::default()).unwrap();
    assert_eq!(again.xml, GOLDEN);
    let removed = rewrite(&legacy, &Inventory::empty("/"), &RewriteOptions::default()).unwrap();
    assert_eq!(removed.xml, SAMPLE);
}

#[test]
fn a_record_with_some_digests_missing_is_refused() {
    let first = GOLDEN.find(" digest='").unwrap();
    let partial = format!(
        "{}{}",
        &GOLDEN[..first],
        &GOLDEN[first + " digest='0123456789abcdef'".len()..]
    );
    assert!(
        record_refusal(&partial)
            .1
            .contains("no digest, although the record's other entries have one")
    );
}

#[test]
fn two_records_are_refused() {
    let record_start = GOLDEN.find("      <hbm:applied>").unwrap();
    let record_end = GOLDEN.find("      </hbm:applied>\n").unwrap() + "      </hbm:applied>\n".len();
    let twice = format!(
        "{}{}{}",
        &GOLDEN[..record_end],
        &GOLDEN[record_start..record_end],
        &GOLDEN[record_end..]
    );
    assert!(
        record_refusal(&twice)
            .1
            .contains("a second record of an earlier rewrite")
    );
}

#[path = "../../../fuzz/fuzz_targets/check.rs"]
mod fuzz_check;

#[test]
fn the_known_fuzz_finds_pass_the_full_fuzz_check() {
    let mut replayed = 0;
    for entry in std::fs::read_dir("../fuzz/known").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "md") {
            continue;
        }
        fuzz_check::check(&std::fs::read(&path).unwrap());
        replayed += 1;
    }
    assert!(replayed >= 2, "fuzz/known/ holds the regression inputs");
}
