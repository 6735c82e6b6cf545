//! Emission of small one-line definitions, exact to the byte.

use topology::PciAddress;
use topology::fixture::region;

use super::*;
use crate::plan::select::Policy;
use crate::plan::{inventory_of, plan};
use crate::{Dialect, RewriteOptions};

const GPU: PciAddress = PciAddress::new(0, 0x41, 0, 0);
const HOSTDEV: &str =
    "<hostdev mode='subsystem' type='pci'><source><address bus='0x41' slot='0x00'/></source></hostdev>";

/// The emitted definition for a GPU with a region of `hbm_bytes`, dialect `none`, native GI.
fn emitted(memory: &str, hbm_bytes: u64) -> String {
    let xml = format!(
        "<domain>{memory}<os><type machine='q35'>hvm</type></os><features><acpi/></features><devices>{HOSTDEV}</devices><metadata/></domain>"
    );
    let doc = Document::parse(&xml).unwrap();
    let inventory = inventory_of(vec![region(GPU, 2, hbm_bytes)]);
    let options = RewriteOptions {
        dialect: Dialect::None,
        native_generic_initiator: true,
        ..RewriteOptions::default()
    };
    let policy = Policy::resolve(&options, None);
    let planned = plan(&doc, &inventory, &policy, &options).unwrap().unwrap();
    emit(&doc, &planned, None)
}

/// The part of `text` from `from` up to and including the first `to` after it.
fn between<'t>(text: &'t str, from: &str, to: &str) -> &'t str {
    let start = text.find(from).unwrap();
    let end = start + text[start..].find(to).unwrap() + to.len();
    &text[start..end]
}

#[test]
fn memory_grows_in_its_own_unit_when_it_divides() {
    let out = emitted(
        "<memory unit='GiB'>2</memory><currentMemory unit='GiB'>1</currentMemory>",
        1 << 30,
    );
    assert_eq!(
        between(&out, "<memory", "</currentMemory>"),
        "<memory unit='GiB'>3</memory><currentMemory unit='GiB'>3</currentMemory>"
    );
}

#[test]
fn memory_falls_back_to_kib_then_bytes() {
    let out = emitted("<memory unit='GiB'>2</memory>", 512 << 20);
    assert_eq!(
        between(&out, "<memory", "</memory>"),
        "<memory unit='KiB'>2621440</memory>"
    );
    let out = emitted(
        "<memory unit='b'>1025</memory><currentMemory>1</currentMemory>",
        2 << 20,
    );
    assert_eq!(
        between(&out, "<memory", "</currentMemory>"),
        "<memory unit='b'>2098177</memory><currentMemory unit='b'>2098177</currentMemory>"
    );
}

#[test]
fn a_compact_definition_gets_every_addition_on_one_line() {
    let out = emitted("<memory unit='GiB'>2</memory>", 1 << 30);
    assert_eq!(
        out,
        "<domain><memory unit='GiB'>3</memory><os><type machine='q35'>hvm</type></os><features><acpi/></features><devices><hostdev mode='subsystem' type='pci'><source><address bus='0x41' slot='0x00'/></source><address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/><alias name='ua-hbm-0000-41-00-0'/><acpi nodeset='1'/></hostdev><controller type='pci' index='1' model='pcie-expander-bus'><target busNr='254'><node>1</node></target></controller><controller type='pci' index='2' model='pcie-root-port'><address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></controller></devices><metadata><hbm:passthrough xmlns:hbm='https://hbm-passthrough.dev/xmlns/domain/1'><hbm:applied><hbm:region id='0000:41:00.0/node2' gpu='0000:41:00.0' host-node='2' size='1073741824' cell='1' dialect='none'/><hbm:undo op='restore' at='memory' raw='&lt;memory unit=&apos;GiB&apos;&gt;2&lt;/memory&gt;'/><hbm:undo op='remove' at='cpu' digest='f5a8fa190cb314c9'/><hbm:undo op='remove' at='numatune' digest='ec50e04061a74120'/><hbm:undo op='remove' at='devices/controller[type=pci][index=1]' digest='ca781a3a1c7685b8'/><hbm:undo op='remove' at='devices/controller[type=pci][index=2]' digest='0aab7482fea9f363'/><hbm:undo op='remove' at='devices/hostdev[source=0000:41:00.0]/address' digest='416ce2d6b6d2e290'/><hbm:undo op='remove' at='devices/hostdev[source=0000:41:00.0]/alias' digest='34611eea1d831c9a'/><hbm:undo op='remove' at='devices/hostdev[source=0000:41:00.0]/acpi' digest='d2161379227dddae'/><hbm:undo op='collapse' at='metadata' tail='/&gt;'/><hbm:undo op='remove' at='metadata/{hbm}' digest='7d11dc33bd1bfa98'/></hbm:applied></hbm:passthrough></metadata><cpu><numa><cell id='0' cpus='0' memory='2097152' unit='KiB'/><cell id='1' memory='1048576' unit='KiB'/></numa></cpu><numatune><memnode cellid='1' mode='strict' nodeset='2'/></numatune></domain>"
    );
}

/// `emit` of the undone `rewritten` with `rewritten` as the definition it was undone from.
fn emitted_again(rewritten: &str, inventory: &topology::Inventory) -> (String, String) {
    let before = Document::parse(rewritten).unwrap();
    let (_, meta) = crate::metadata::find(&before).unwrap().unwrap();
    let undone = crate::undo::undo(&before, &meta);
    let doc = Document::parse(&undone).unwrap();
    let options = RewriteOptions {
        dialect: Dialect::None,
        native_generic_initiator: true,
        ..RewriteOptions::default()
    };
    let policy = Policy::resolve(&options, Some(&meta));
    let planned = plan(&doc, inventory, &policy, &options).unwrap().unwrap();
    (emit(&doc, &planned, Some(&before)), emit(&doc, &planned, None))
}

#[test]
fn a_re_rewrite_takes_the_recorded_digests_only_when_they_give_back_its_input() {
    let first = emitted("<memory unit='GiB'>2</memory>", 1 << 30);
    let same_host = inventory_of(vec![region(GPU, 2, 1 << 30)]);
    let (shortcut, read_back) = emitted_again(&first, &same_host);
    assert_eq!(shortcut, first);
    assert_eq!(read_back, first);
    let other_host = inventory_of(vec![region(GPU, 3, 2 << 30)]);
    let (shortcut, read_back) = emitted_again(&first, &other_host);
    assert_ne!(shortcut, first);
    assert_eq!(shortcut, read_back);
    let altered = first.replace("digest='ca781a3a1c7685b8'", "digest='0000000000000000'");
    let (shortcut, read_back) = emitted_again(&altered, &same_host);
    assert_eq!(shortcut, first);
    assert_eq!(read_back, first);
}

#[test]
fn a_record_with_a_character_xml_refuses_gets_no_digests() {
    let xml = format!(
        "<domain><memory unit='GiB'>2</memory><os><type machine='q35'>hvm</type></os><devices>{HOSTDEV}</devices></domain>"
    );
    let doc = Document::parse(&xml).unwrap();
    let mut odd = region(GPU, 2, 1 << 30);
    odd.id = "id\u{1}".into();
    let options = RewriteOptions {
        dialect: Dialect::None,
        ..RewriteOptions::default()
    };
    let policy = Policy::resolve(&options, None);
    let inventory = inventory_of(vec![odd]);
    let planned = plan(&doc, &inventory, &policy, &options).unwrap().unwrap();
    let out = emit(&doc, &planned, None);
    assert!(out.contains("<hbm:region id='id\u{1}'"));
    assert!(!out.contains(" digest='"));
    let mut writer = EditWriter::new(&doc);
    emit_additions(&mut writer, &planned);
    assert_eq!(out, with_record(writer, &planned.record(), &[]));
}
