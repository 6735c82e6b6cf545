//! Booted guests (libvirt 9 + QEMU >= 9.0, TCG, Debian guest kernel, busybox report): the guest must
//! be able to walk `GPU -> numa_node -> SRAT -> soft-reserved HBM range`. See docs/testing.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::domain_xml::{StandIn, vfio_hostdev, with_stand_in};
use crate::common::guest::{self, DirectBootDomain, soft_reserved_params};
use crate::common::hbm_chain;
use crate::common::inventory::{HbmSpec, MIB, hbm_inventory};
use crate::common::libvirt::{require_libvirt, unique_name};
use hbm_rewrite::{Dialect, RewriteOptions, rewrite};

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
    let v = crate::common::libvirt::validate(&xml);
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
    let (vendor, device) = StandIn::Rng.guest_ids();
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

/// A GPU to pass through in a base definition: host address, alias (None: the rewriter must give
/// one), HBM size, and the emulated device standing in for it in the guest.
struct Gpu {
    host: &'static str,
    alias: Option<&'static str>,
    hbm_bytes: u64,
    stand_in: StandIn,
}

fn hostdev_xml(g: &Gpu) -> String {
    vfio_hostdev(g.host, g.alias)
}

/// Builds a direct-kernel-boot q35 definition with vfio hostdevs for `gpus` (no NUMA, no ACPI
/// element: the rewriter must add both), rewrites it with the `kernel-cmdline` dialect, swaps each
/// hostdev for its stand-in at the same guest address and alias, boots it, and checks the guest:
/// per GPU, the SRAT node of the rewriter's `memmap=` range has the cell's PXM, is online, has a
/// Generic Initiator and no usable memory, the range is soft reserved (`hmem.N`), and the stand-in
/// sits behind its own expander with that node as `numa_node`.
fn boot_rewritten(label: &str, gpus: &[Gpu]) {
    require_libvirt();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("console.log");
    let mut d = DirectBootDomain::new(&unique_name(label), &log);
    d.memory_mib = 1024;
    d.vcpus = 2;
    d.acpi = false;
    d.devices = gpus.iter().map(hostdev_xml).collect();
    let base = d.to_xml();
    assert!(
        crate::common::libvirt::validate(&base).valid,
        "base definition must validate:\n{base}"
    );

    let specs: Vec<HbmSpec> = gpus.iter().map(|g| HbmSpec::new(g.host, g.hbm_bytes)).collect();
    let options = RewriteOptions {
        dialect: Dialect::KernelCmdline,
        ..RewriteOptions::default()
    };
    let out = rewrite(&base, &hbm_inventory(&specs), &options).unwrap_or_else(|e| panic!("rewrite: {e}"));
    hbm_chain::check_domain(&out.xml).unwrap_or_else(|e| panic!("{e}\n{}", out.xml));

    // What the rewriter decided, read back from its output.
    let cmdline = crate::common::domain_xml::parse(&out.xml)
        .unwrap()
        .at(&["os", "cmdline"])
        .unwrap()
        .text
        .clone();
    let params = soft_reserved_params(&cmdline).unwrap();
    assert_eq!(params.len(), gpus.len(), "one memmap= per HBM cell in '{cmdline}'");
    let mut chains = Vec::new();
    let mut boot_xml = out.xml.clone();
    for (i, g) in gpus.iter().enumerate() {
        let host = crate::common::domain_xml::facts(&base).unwrap().pci_hostdevs[i].host;
        let chain = hbm_chain::read(&out.xml, host).unwrap_or_else(|e| panic!("{e}\n{}", out.xml));
        assert!(
            chain.generic_initiator_arg,
            "no Generic Initiator for {}\n{}",
            chain.alias, out.xml
        );
        if let Some(a) = g.alias {
            assert_eq!(chain.alias, a, "the rewriter keeps an existing alias");
        }
        boot_xml = with_stand_in(&boot_xml, &chain.alias, g.stand_in).unwrap();
        chains.push(chain);
    }
    // The guest physical layout of QEMU's q35 below 2.75 GiB: cells in order from GPA 0, so the
    // HBM cells follow the 1 GiB of cell 0 back to back, in cell order.
    let mut expected_start = 1024 * MIB;
    let mut by_cell: Vec<(&hbm_chain::HbmChain, &Gpu)> = chains.iter().zip(gpus).collect();
    by_cell.sort_by_key(|(c, _)| c.cell);
    let mut ranges = Vec::new();
    for (c, g) in &by_cell {
        let p = params.iter().find(|p| p.start == expected_start).unwrap_or_else(|| {
            panic!(
                "no memmap= range at {expected_start:#x} for cell {} in '{cmdline}'",
                c.cell
            )
        });
        assert_eq!(p.size, g.hbm_bytes, "memmap= size of cell {}", c.cell);
        assert_eq!(c.cell_bytes, g.hbm_bytes);
        ranges.push(*p);
        expected_start += g.hbm_bytes;
    }
    let v = crate::common::libvirt::validate(&boot_xml);
    assert!(
        v.valid,
        "rewritten definition with stand-ins must validate: {}\n{boot_xml}",
        v.output
    );

    let r = guest::boot(&boot_xml, &log).unwrap_or_else(|e| panic!("{e}\n--- definition ---\n{boot_xml}"));
    let ctx = || format!("{}\n--- definition ---\n{boot_xml}", r.console);
    assert_eq!(
        r.cmdline,
        cmdline,
        "the guest got the rewritten kernel command line\n{}",
        ctx()
    );
    assert_eq!(r.nodes_has_cpu, vec![0], "{}", ctx());
    let mut hbm_nodes = Vec::new();
    for ((c, g), p) in by_cell.iter().zip(&ranges) {
        let srat = r
            .srat_memory()
            .into_iter()
            .find(|m| m.start == p.start && m.end == p.end())
            .unwrap_or_else(|| panic!("no SRAT memory affinity for {:#x}-{:#x}\n{}", p.start, p.end(), ctx()));
        assert_eq!(
            srat.pxm,
            c.cell,
            "the range's proximity domain is the HBM cell\n{}",
            ctx()
        );
        let node = srat.node;
        assert!(r.nodes_online.contains(&node), "node {node} online\n{}", ctx());
        assert!(
            r.nodes_generic_initiator.contains(&node),
            "node {node} has the GPU's Generic Initiator\n{}",
            ctx()
        );
        assert_eq!(
            r.nodes.get(&node),
            Some(&guest::GuestNode {
                cpus: vec![],
                mem_total_kb: 0
            }),
            "{}",
            ctx()
        );
        assert!(
            r.hmem_at(p.start, p.end()).is_some(),
            "{:#x}-{:#x} soft reserved (hmem)\n{}",
            p.start,
            p.end(),
            ctx()
        );
        let (vendor, device) = g.stand_in.guest_ids();
        let devs = r.pci_by_id(vendor, device);
        assert_eq!(devs.len(), 1, "one {vendor:04x}:{device:04x} stand-in\n{}", ctx());
        assert_eq!(
            devs[0].bus,
            c.bus_nr + 1,
            "stand-in behind the root port of expander busNr {}\n{}",
            c.bus_nr,
            ctx()
        );
        assert_eq!(
            devs[0].numa_node,
            i32::try_from(node).unwrap(),
            "stand-in numa_node\n{}",
            ctx()
        );
        hbm_nodes.push(node);
    }
    hbm_nodes.sort();
    hbm_nodes.dedup();
    assert_eq!(hbm_nodes.len(), gpus.len(), "distinct HBM nodes\n{}", ctx());
    let mut online_expected: Vec<u32> = std::iter::once(0).chain(hbm_nodes).collect();
    online_expected.sort();
    assert_eq!(r.nodes_online, online_expected, "{}", ctx());
    assert_eq!(r.iomem_named("Soft Reserved").len(), gpus.len(), "{}", ctx());
}

#[test]
fn rewritten_one_gpu_domain_boots_with_soft_reserved_hbm_node() {
    boot_rewritten(
        "one-gpu",
        &[Gpu {
            host: "0000:c1:00.0",
            alias: Some("ua-gpu0"),
            hbm_bytes: 512 * MIB,
            stand_in: StandIn::Rng,
        }],
    );
}

#[test]
fn rewritten_two_gpu_domain_boots_with_two_hbm_nodes_on_distinct_expanders() {
    boot_rewritten(
        "two-gpu",
        &[
            Gpu {
                host: "0000:c1:00.0",
                alias: Some("ua-gpu0"),
                hbm_bytes: 256 * MIB,
                stand_in: StandIn::Rng,
            },
            Gpu {
                host: "0000:c2:00.0",
                alias: None,
                hbm_bytes: 256 * MIB,
                stand_in: StandIn::Tablet,
            },
        ],
    );
}
