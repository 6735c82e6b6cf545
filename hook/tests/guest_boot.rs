//! Booted guests (libvirt 9 + QEMU >= 9.0, TCG, Debian guest kernel, busybox report): the guest must
//! be able to walk `GPU -> numa_node -> SRAT -> soft-reserved HBM range`. See docs/testing.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::domain_xml::StandIn;
use support::guest::{self, DirectBootDomain};
use support::libvirt::{require_libvirt, unique_name};

/// The harness against a hand-written domain (reference guest-chain.md, run 6): CPU-less cell 1
/// made soft reserved by `memmap=`, pcie-expander-bus naming it, root port, a stand-in device with
/// a user alias, and an ACPI Generic Initiator for it. Proves the kit, libvirt boot and report
/// parsing independently of the rewriter.
#[test]
fn harness_boots_hand_written_spm_domain() {
    require_libvirt();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("console.log");
    let mut d = DirectBootDomain::new(&unique_name("harness"), &log);
    d.memory_mib = 1536;
    d.extra_cmdline = "memmap=512M%0x40000000-1+0xefffffff".to_string();
    d.extra_top = "  <cpu>
    <numa>
      <cell id='0' cpus='0-1' memory='1024' unit='MiB'/>
      <cell id='1' memory='512' unit='MiB'/>
    </numa>
  </cpu>
  <numatune>
    <memnode cellid='1' mode='strict' nodeset='0'/>
  </numatune>
"
    .to_string();
    d.devices = "    <controller type='pci' index='0' model='pcie-root'/>
    <controller type='pci' index='1' model='pcie-expander-bus'>
      <target busNr='254'><node>1</node></target>
    </controller>
    <controller type='pci' index='2' model='pcie-root-port'>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </controller>
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
      <alias name='ua-gpu0'/>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
    </rng>
"
    .to_string();
    d.tail = "  <qemu:commandline>
    <qemu:arg value='-object'/>
    <qemu:arg value='acpi-generic-initiator,id=hbm-gi0,pci-dev=ua-gpu0,node=1'/>
  </qemu:commandline>
"
    .to_string();
    let xml = d.to_xml();
    let v = support::libvirt::validate(&xml);
    assert!(v.valid, "hand-written domain must validate: {}", v.output);

    let r = guest::boot(&xml, &log).unwrap_or_else(|e| panic!("{e}"));
    let ctx = || r.console.clone();
    assert_eq!(r.nodes_online, vec![0, 1], "{}", ctx());
    assert_eq!(r.nodes_generic_initiator, vec![1], "{}", ctx());
    assert_eq!(r.nodes[&0].cpus, vec![0, 1], "{}", ctx());
    assert!(r.nodes[&1].cpus.is_empty(), "{}", ctx());
    assert_eq!(
        r.nodes[&1].mem_total_kb,
        0,
        "soft-reserved node has no usable memory\n{}",
        ctx()
    );
    assert_eq!(
        r.node_with_memory(0x4000_0000, 0x5fff_ffff),
        Some(1),
        "SRAT range of node 1\n{}",
        ctx()
    );
    assert!(
        r.hmem_at(0x4000_0000, 0x5fff_ffff).is_some(),
        "hmem.N over node 1's range\n{}",
        ctx()
    );
    let soft = r.iomem_named("Soft Reserved");
    assert_eq!(soft.len(), 1, "{}", ctx());
    assert_eq!(soft[0].start, 0x4000_0000, "{}", ctx());
    let (vendor, device) = StandIn::VirtioRng.guest_ids();
    let dev = r.pci_by_id(vendor, device);
    assert_eq!(dev.len(), 1, "{}", ctx());
    assert_eq!(dev[0].numa_node, 1, "stand-in device's numa_node\n{}", ctx());
    assert_eq!(
        dev[0].bus,
        0xff,
        "device behind the root port below pxb bus 254\n{}",
        ctx()
    );
}
