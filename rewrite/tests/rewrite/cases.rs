#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The rewriter's pure behaviour: exact additions per dialect and layout, policy, idempotency,
//! undo, and every bad-input case with its exit code.

use hbm_rewrite::instructions::MemmapType;
use hbm_rewrite::{Dialect, PolicyMode, RewriteError, RewriteOptions, Rewritten, read_metadata, rewrite};
use topology::{Health, Inventory, PciAddress, Region, Source};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const SAMPLE: &str = include_str!("../../../examples/domains/gpu-vm.xml");
const SAMPLE_GOLDEN: &str = include_str!("../../../examples/domains/gpu-vm.rewritten.xml");

/// The fixture region of `gpu` (written as text) on host node `node`.
fn region(gpu: &str, node: u32, size: u64) -> Region {
    topology::fixture::region(PciAddress::parse(gpu).unwrap(), node, size)
}

fn inventory(regions: Vec<Region>) -> Inventory {
    let mut inv = Inventory::empty("/");
    inv.regions = regions;
    inv
}

/// Like the bundled sample host (0000:41:00.0 -> node 2, 0000:c1:00.0 -> node 3) but with the
/// HBM online in its node (the sample host holds it offline behind dax0.0 / dax1.0).
fn seed_amd() -> Inventory {
    let mut a = region("0000:41:00.0", 2, 64 * GIB);
    a.dax = Some("/dev/dax0.0".into());
    a.source = Source::Dax;
    a.cpu_node = Some(0);
    let mut b = region("0000:c1:00.0", 3, 64 * GIB);
    b.dax = Some("/dev/dax1.0".into());
    b.source = Source::Dax;
    b.cpu_node = Some(1);
    inventory(vec![a, b])
}

fn opts(dialect: Dialect) -> RewriteOptions {
    RewriteOptions {
        dialect,
        ..RewriteOptions::default()
    }
}

/// Rewrites and checks the guarantees every successful rewrite must keep: idempotent, and a run
/// for a host without HBM gives back the input byte for byte.
fn rw(xml: &str, inv: &Inventory, o: &RewriteOptions) -> Rewritten {
    let out = rewrite(xml, inv, o).unwrap();
    let again = rewrite(&out.xml, inv, o).unwrap();
    assert_eq!(again.xml, out.xml, "second rewrite must be byte-identical");
    assert!(!again.changed);
    let removed = rewrite(&out.xml, &Inventory::empty("/"), o).unwrap();
    assert_eq!(
        removed.xml, xml,
        "a rewrite for a host without HBM must restore the input"
    );
    out
}

fn err(xml: &str, inv: &Inventory, o: &RewriteOptions) -> RewriteError {
    rewrite(xml, inv, o).unwrap_err()
}

/// The refusal of `xml` for a host where GPU 0000:41:00.0 has `size` bytes of HBM on node 0:
/// (exit code, message).
fn refusal(xml: &str, size: u64, dialect: Dialect) -> (u8, String) {
    let e = err(xml, &inventory(vec![region("0000:41:00.0", 0, size)]), &opts(dialect));
    (e.exit_code(), e.to_string())
}

/// A minimal q35 domain with direct kernel boot and the given devices.
fn domain(memory_mib: u64, devices: &str) -> String {
    format!(
        "<domain type='qemu'>\n  <name>t</name>\n  <memory unit='MiB'>{memory_mib}</memory>\n  <vcpu>2</vcpu>\n  <os>\n    <type arch='x86_64' machine='pc-q35-9.0'>hvm</type>\n    <kernel>/k</kernel>\n    <cmdline>console=ttyS0</cmdline>\n  </os>\n  <devices>\n{devices}  </devices>\n</domain>\n"
    )
}

fn hostdev(bus: u8) -> String {
    format!(
        "    <hostdev mode='subsystem' type='pci' managed='yes'>\n      <driver name='vfio'/>\n      <source>\n        <address domain='0x0000' bus='0x{bus:02x}' slot='0x00' function='0x0'/>\n      </source>\n    </hostdev>\n"
    )
}

/// The bundled sample host, scanned by discovery.
fn sample_host() -> Inventory {
    topology::discover(
        std::path::Path::new("../examples/hosts/seed-amd"),
        &topology::DiscoveryConfig::default(),
    )
    .unwrap()
}

#[test]
fn sample_domain_on_the_sample_host_matches_the_golden_output() {
    let out = rw(SAMPLE, &sample_host(), &RewriteOptions::default());
    assert!(out.changed);
    assert_eq!(out.xml, SAMPLE_GOLDEN);
    assert_eq!(
        out.summary,
        vec![
            "cell 0: 8 GiB with all vCPUs (the existing memory)",
            "cell 1: 64 GiB CPU-less for GPU 0000:c1:00.0 region 0000:c1:00.0/dax1.0 (dax /dev/dax1.0), kernel-cmdline (auto)",
            "pcie-expander-bus index 1 (busNr 254, node 1) + pcie-root-port index 2; hostdev 0000:c1:00.0 moved behind it",
            "hostdev 0000:c1:00.0 alias ua-hbm-0000-c1-00-0 added",
            "Generic Initiator hbm-gi1 for ua-hbm-0000-c1-00-0 on node 1",
            "HBM_QEMU_INSTRUCTIONS=v1;dax:cell=1,size=68719476736,path=/dev/dax1.0,align=2097152 for the QEMU argv adapter",
            "<emulator> set to the adapter /usr/local/bin/hbm-qemu",
            "guest kernel command line += memmap=64G%10G-1+0xefffffff",
        ]
    );
    // The comment, quoting and everything outside the additions stay as they were.
    assert!(
        out.xml
            .contains("  <!-- A GPU VM: q35, direct kernel boot, one passed-through GPU with on-package HBM. -->\n")
    );
}

#[test]
fn online_hbm_is_bound_with_numatune() {
    let out = rw(SAMPLE, &seed_amd(), &RewriteOptions::default());
    assert!(
        out.xml
            .contains("  <numatune>\n    <memnode cellid='1' mode='strict' nodeset='3'/>\n  </numatune>\n")
    );
    assert!(
        out.xml.contains("<emulator>/usr/bin/qemu-system-x86_64</emulator>"),
        "no adapter needed"
    );
    assert!(!out.xml.contains("HBM_QEMU_INSTRUCTIONS"));
}

#[test]
fn metadata_records_the_claimed_regions() {
    let out = rw(SAMPLE, &seed_amd(), &RewriteOptions::default());
    let meta = read_metadata(&out.xml).unwrap().unwrap();
    assert!(meta.applied);
    assert_eq!(meta.claimed.len(), 1);
    let c = &meta.claimed[0];
    assert_eq!(c.id, "0000:c1:00.0/node3");
    assert_eq!(c.gpu, PciAddress::parse("0000:c1:00.0").unwrap());
    assert_eq!(c.host_node, Some(3));
    assert_eq!(c.dax.as_deref(), Some("/dev/dax1.0"));
    assert_eq!(c.size_bytes, 64 * GIB);
    assert_eq!(c.guest_cell, 1);
    assert_eq!(read_metadata(SAMPLE).unwrap(), None);
}

#[test]
fn kernel_cmdline_ranges_follow_the_q35_layout() {
    // guest-chain.md run 6: node 0 = 1 GiB, node 1 = 512 MiB, all below 2.75 GiB.
    let xml = domain(1024, &hostdev(0x41));
    let out = rw(
        &xml,
        &inventory(vec![region("0000:41:00.0", 0, 512 * MIB)]),
        &RewriteOptions::default(),
    );
    assert!(
        out.xml
            .contains("<cmdline>console=ttyS0 memmap=512M%1G-1+0xefffffff</cmdline>")
    );
    assert!(
        out.xml
            .contains("<cell id='0' cpus='0-1' memory='1048576' unit='KiB'/>")
    );
    assert!(out.xml.contains("<cell id='1' memory='524288' unit='KiB'/>"));
    assert!(out.xml.contains("<memory unit='MiB'>1536</memory>"));

    // 2 GiB + 1 GiB = 3 GiB >= 2.75 GiB: only 2 GiB below 4G, the HBM cell starts at 4 GiB.
    let xml = domain(2048, &hostdev(0x41));
    let out = rw(
        &xml,
        &inventory(vec![region("0000:41:00.0", 0, GIB)]),
        &RewriteOptions::default(),
    );
    assert!(
        out.xml
            .contains("<cmdline>console=ttyS0 memmap=1G%4G-1+0xefffffff</cmdline>")
    );

    // 1.5 GiB + 2 GiB: the HBM cell crosses the hole and needs two ranges.
    let xml = domain(1536, &hostdev(0x41));
    let out = rw(
        &xml,
        &inventory(vec![region("0000:41:00.0", 0, 2 * GIB)]),
        &RewriteOptions::default(),
    );
    assert!(
        out.xml
            .contains("<cmdline>console=ttyS0 memmap=512M%1536M-1+0xefffffff memmap=1536M%4G-1+0xefffffff</cmdline>")
    );
}

#[test]
fn kernel_cmdline_needs_direct_kernel_boot() {
    let xml = domain(1024, &hostdev(0x41)).replace("    <kernel>/k</kernel>\n", "");
    let (code, message) = refusal(&xml, GIB, Dialect::KernelCmdline);
    assert_eq!(code, 3);
    assert_eq!(
        message,
        "domain XML line 5: <os>: cannot satisfy: dialect kernel-cmdline needs direct kernel boot (<os><kernel>); use dialect auto, memmap-type, sp-mem or none"
    );
}

#[test]
fn memmap_type_and_sp_mem_record_adapter_instructions() {
    let xml = domain(1024, &hostdev(0x41)).replace(
        "  <devices>\n",
        "  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n",
    );
    let inv = inventory(vec![region("0000:41:00.0", 0, GIB)]);
    let out = rw(&xml, &inv, &opts(Dialect::MemmapType(MemmapType::Spm)));
    assert!(out.xml.contains("<emulator>/usr/local/bin/hbm-qemu</emulator>"));
    assert!(
        out.xml.contains(
            "<qemu:env name='HBM_QEMU_INSTRUCTIONS' value='v1;memmap-type:cell=1,size=1073741824,type=spm'/>"
        )
    );
    assert!(
        out.xml.contains("<cmdline>console=ttyS0</cmdline>"),
        "the guest command line is left alone"
    );

    let out = rw(&xml, &inv, &opts(Dialect::MemmapType(MemmapType::Reserved)));
    assert!(
        out.xml
            .contains("value='v1;memmap-type:cell=1,size=1073741824,type=reserved'")
    );

    let mut o = opts(Dialect::SpMem);
    o.adapter_path = Some("/opt/hbm/bin/hbm-qemu".into());
    let out = rw(&xml, &inv, &o);
    assert!(out.xml.contains("<emulator>/opt/hbm/bin/hbm-qemu</emulator>"));
    assert!(
        out.xml
            .contains("<qemu:env name='HBM_QEMU_INSTRUCTIONS' value='v1;sp-mem:cell=1,size=1073741824'/>")
    );
}

#[test]
fn memmap_type_refuses_a_cell_across_4g() {
    let xml = domain(1536, &hostdev(0x41));
    let (code, message) = refusal(&xml, 2 * GIB, Dialect::MemmapType(MemmapType::Spm));
    assert_eq!(code, 3);
    assert!(message.contains("cell 1 would span the 4 GiB boundary"), "{message}");
}

#[test]
fn device_dax_region_gets_a_dax_instruction_and_no_memnode() {
    let mut r = region("0000:41:00.0", 2, GIB);
    r.online = false;
    r.host_node = None;
    r.dax = Some("/dev/dax0.0".into());
    r.dax_align = Some(GIB);
    r.source = Source::Dax;
    let out = rw(&domain(1024, &hostdev(0x41)), &inventory(vec![r]), &opts(Dialect::None));
    assert!(
        out.xml
            .contains("value='v1;dax:cell=1,size=1073741824,path=/dev/dax0.0,align=1073741824'")
    );
    assert!(out.xml.contains("<emulator>/usr/local/bin/hbm-qemu</emulator>"));
    assert!(!out.xml.contains("<numatune>"));
}

#[test]
fn none_dialect_adds_only_the_numa_chain() {
    let xml = domain(1024, &hostdev(0x41));
    let out = rw(
        &xml,
        &inventory(vec![region("0000:41:00.0", 5, GIB)]),
        &opts(Dialect::None),
    );
    let expected = "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>t</name>
  <memory unit='MiB'>2048</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-9.0'>hvm</type>
    <kernel>/k</kernel>
    <cmdline>console=ttyS0</cmdline>
  </os>
  <devices>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <driver name='vfio'/>
      <source>
        <address domain='0x0000' bus='0x41' slot='0x00' function='0x0'/>
      </source>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
      <alias name='ua-hbm-0000-41-00-0'/>
    </hostdev>
    <controller type='pci' index='1' model='pcie-expander-bus'>
      <target busNr='254'>
        <node>1</node>
      </target>
    </controller>
    <controller type='pci' index='2' model='pcie-root-port'>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </controller>
  </devices>
  <cpu>
    <numa>
      <cell id='0' cpus='0-1' memory='1048576' unit='KiB'/>
      <cell id='1' memory='1048576' unit='KiB'/>
    </numa>
  </cpu>
  <numatune>
    <memnode cellid='1' mode='strict' nodeset='5'/>
  </numatune>
  <features>
    <acpi/>
  </features>
  <qemu:commandline>
    <qemu:arg value='-object'/>
    <qemu:arg value='acpi-generic-initiator,id=hbm-gi1,pci-dev=ua-hbm-0000-41-00-0,node=1'/>
  </qemu:commandline>
  <metadata>
    <hbm:passthrough xmlns:hbm='https://hbm-passthrough.dev/xmlns/domain/1'>
      <hbm:applied>
        <hbm:region id='0000:41:00.0/node5' gpu='0000:41:00.0' host-node='5' size='1073741824' cell='1' dialect='none'/>
        <hbm:undo op='remove-root-attr' name='xmlns:qemu' digest='ec5a97d9a3029edf'/>
        <hbm:undo op='restore' at='memory' raw='&lt;memory unit=&apos;MiB&apos;&gt;1024&lt;/memory&gt;'/>
        <hbm:undo op='remove' at='cpu' digest='f5a8fa190cb314c9'/>
        <hbm:undo op='remove' at='numatune' digest='ec50e04061a74120'/>
        <hbm:undo op='remove' at='features' digest='be45a3a6ee3c626a'/>
        <hbm:undo op='remove' at='qemu:commandline' digest='d639a6e485a2c678'/>
        <hbm:undo op='remove' at='devices/controller[type=pci][index=1]' digest='ca781a3a1c7685b8'/>
        <hbm:undo op='remove' at='devices/controller[type=pci][index=2]' digest='0aab7482fea9f363'/>
        <hbm:undo op='remove' at='devices/hostdev[source=0000:41:00.0]/address' digest='416ce2d6b6d2e290'/>
        <hbm:undo op='remove' at='devices/hostdev[source=0000:41:00.0]/alias' digest='34611eea1d831c9a'/>
        <hbm:undo op='remove' at='metadata' digest='28475f88f42fd020'/>
      </hbm:applied>
    </hbm:passthrough>
  </metadata>
</domain>
";
    assert_eq!(out.xml, expected);
}

#[test]
fn native_generic_initiator_uses_libvirts_acpi_element() {
    let o = RewriteOptions {
        native_generic_initiator: true,
        dialect: Dialect::None,
        ..RewriteOptions::default()
    };
    let out = rw(
        &domain(1024, &hostdev(0x41)),
        &inventory(vec![region("0000:41:00.0", 0, GIB)]),
        &o,
    );
    assert!(out.xml.contains("      <acpi nodeset='1'/>\n    </hostdev>"));
    assert!(!out.xml.contains("qemu:"), "no qemu namespace needed");
}

#[test]
fn two_gpus_get_two_cells_and_distinct_expanders() {
    let xml = domain(1024, &format!("{}{}", hostdev(0x41), hostdev(0xc1)));
    let out = rw(&xml, &seed_amd(), &opts(Dialect::None));
    for needle in [
        "<cell id='1' memory='67108864' unit='KiB'/>",
        "<cell id='2' memory='67108864' unit='KiB'/>",
        "<controller type='pci' index='1' model='pcie-expander-bus'>\n      <target busNr='254'>\n        <node>1</node>",
        "<controller type='pci' index='3' model='pcie-expander-bus'>\n      <target busNr='252'>\n        <node>2</node>",
        "<controller type='pci' index='2' model='pcie-root-port'>\n      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>",
        "<controller type='pci' index='4' model='pcie-root-port'>\n      <address type='pci' domain='0x0000' bus='0x03' slot='0x00' function='0x0'/>",
        "<address domain='0x0000' bus='0x41' slot='0x00' function='0x0'/>\n      </source>\n      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>",
        "<address domain='0x0000' bus='0xc1' slot='0x00' function='0x0'/>\n      </source>\n      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>",
        "<memnode cellid='1' mode='strict' nodeset='2'/>",
        "<memnode cellid='2' mode='strict' nodeset='3'/>",
        "<qemu:arg value='acpi-generic-initiator,id=hbm-gi1,pci-dev=ua-hbm-0000-41-00-0,node=1'/>",
        "<qemu:arg value='acpi-generic-initiator,id=hbm-gi2,pci-dev=ua-hbm-0000-c1-00-0,node=2'/>",
        "<memory unit='MiB'>132096</memory>",
    ] {
        assert!(out.xml.contains(needle), "missing {needle}\n{}", out.xml);
    }
    assert_eq!(out.xml.matches("pcie-expander-bus").count(), 2);
}

#[test]
fn one_gpu_with_two_regions_gets_two_cells_and_two_generic_initiators() {
    let inv = inventory(vec![region("0000:41:00.0", 2, GIB), region("0000:41:00.0", 3, GIB)]);
    let out = rw(&domain(1024, &hostdev(0x41)), &inv, &opts(Dialect::None));
    assert!(
        out.xml
            .contains("<cell id='1' memory='1048576' unit='KiB'/>\n      <cell id='2' memory='1048576' unit='KiB'/>")
    );
    assert!(out.xml.contains("node=1'/>") && out.xml.contains("id=hbm-gi2,pci-dev=ua-hbm-0000-41-00-0,node=2'/>"));
    assert_eq!(out.xml.matches("pcie-expander-bus").count(), 1);
    assert!(out.xml.contains("<node>1</node>"));
}

#[test]
fn kubevirt_expander_layout_is_reused_not_duplicated() {
    let devices = "    <controller type=\"pci\" index=\"0\" model=\"pcie-root\"></controller>
    <controller type=\"pci\" index=\"1\" model=\"pcie-expander-bus\">
      <target busNr=\"254\">
        <node>0</node>
      </target>
    </controller>
    <controller type=\"pci\" index=\"2\" model=\"pcie-root-port\">
      <address type=\"pci\" domain=\"0x0000\" bus=\"0x01\" slot=\"0x00\" function=\"0x0\"></address>
    </controller>
    <hostdev type=\"pci\" managed=\"no\" mode=\"subsystem\">
      <source>
        <address type=\"pci\" domain=\"0x0000\" bus=\"0x41\" slot=\"0x00\" function=\"0x0\"></address>
      </source>
      <alias name=\"ua-hostdevice-gpu1\"></alias>
      <address type=\"pci\" domain=\"0x0000\" bus=\"0x02\" slot=\"0x00\" function=\"0x0\"></address>
    </hostdev>
";
    let xml = domain(1024, devices);
    let out = rw(
        &xml,
        &inventory(vec![region("0000:41:00.0", 2, GIB)]),
        &opts(Dialect::None),
    );
    assert_eq!(out.xml.matches("pcie-expander-bus").count(), 1);
    assert_eq!(out.xml.matches("pcie-root-port").count(), 1);
    assert!(out.xml.contains("<target busNr=\"254\">\n        <node>1</node>"));
    assert!(out.xml.contains(
        "<address type=\"pci\" domain=\"0x0000\" bus=\"0x02\" slot=\"0x00\" function=\"0x0\"></address>\n    </hostdev>"
    ));
    assert!(out.xml.contains("pci-dev=ua-hostdevice-gpu1,node=1"));
    assert!(
        out.summary
            .iter()
            .any(|l| l == "existing pcie-expander-bus index 1 reused, now on guest node 1")
    );
}

#[test]
fn new_controllers_avoid_existing_indexes_and_bus_numbers() {
    let xml = std::fs::read_to_string("../tests/corpus/libvirt/pcie-expander-bus.xml").unwrap();
    let xml = xml.replacen("  </devices>", &format!("{}  </devices>", hostdev(0x41)), 1);
    let out = rw(
        &xml,
        &inventory(vec![region("0000:41:00.0", 0, GIB)]),
        &opts(Dialect::None),
    );
    // The file has pci controllers 0-35, an expander at busNr 254 and guest cells 0 and 1.
    assert!(out.xml.contains(
        "<controller type='pci' index='36' model='pcie-expander-bus'>\n      <target busNr='252'>\n        <node>2</node>"
    ));
    assert!(
        out.xml
            .contains("<controller type='pci' index='37' model='pcie-root-port'>")
    );
    assert!(out.xml.contains(
        "bus='0x25' slot='0x00' function='0x0'/>\n      <alias name='ua-hbm-0000-41-00-0'/>\n    </hostdev>"
    ));
}

#[test]
fn more_than_254_buses_cannot_be_satisfied() {
    let mut devices = String::from("    <controller type='pci' index='0' model='pcie-root'/>\n");
    for i in 1..=252 {
        devices.push_str(&format!(
            "    <controller type='pci' index='{i}' model='pcie-root-port'/>\n"
        ));
    }
    devices.push_str(&hostdev(0x41));
    let (code, message) = refusal(&domain(1024, &devices), GIB, Dialect::None);
    assert_eq!(code, 3);
    assert!(message.contains("more than 254 buses would be needed"), "{message}");
}

#[test]
fn policy_required_without_hbm_fails_and_auto_leaves_the_domain_alone() {
    let xml = domain(1024, &hostdev(0x41));
    let inv = inventory(vec![region("0000:c1:00.0", 3, GIB)]);
    let out = rewrite(&xml, &inv, &RewriteOptions::default()).unwrap();
    assert!(!out.changed);
    assert_eq!(out.xml, xml);
    let o = RewriteOptions {
        policy: PolicyMode::Required,
        ..RewriteOptions::default()
    };
    let e = err(&xml, &inv, &o);
    assert_eq!(e.exit_code(), 3);
    assert_eq!(
        e.to_string(),
        "domain XML line 11: <hostdev>: cannot satisfy: PCI hostdev 0000:41:00.0 owns no usable HBM region on this host and the policy is 'required'"
    );
    // An unhealthy region is not usable.
    let mut r = region("0000:41:00.0", 2, GIB);
    r.health = Health::Unhealthy;
    r.reason = Some("node2/meminfo unreadable".into());
    assert_eq!(err(&xml, &inventory(vec![r]), &o).exit_code(), 3);
}

fn with_metadata(xml: &str, meta: &str) -> String {
    xml.replace(
        "</domain>\n",
        &format!("  <metadata>\n    {meta}\n  </metadata>\n</domain>\n"),
    )
}

#[test]
fn domain_metadata_policy_overrides_the_host_defaults() {
    let base = domain(1024, &format!("{}{}", hostdev(0x41), hostdev(0xc1)));
    let inv = seed_amd();
    // off: untouched.
    let xml = with_metadata(
        &base,
        "<hbm:passthrough xmlns:hbm='https://hbm-passthrough.dev/xmlns/domain/1' mode='off'/>",
    );
    let out = rewrite(&xml, &inv, &RewriteOptions::default()).unwrap();
    assert_eq!(out.xml, xml);
    // Per-GPU: 41 off, c1 capped at 16 GiB with dialect none (domain default kernel-cmdline).
    let xml = with_metadata(
        &base,
        "<hbm:passthrough xmlns:hbm='https://hbm-passthrough.dev/xmlns/domain/1' dialect='sp-mem'><hbm:gpu address='0000:41:00.0' mode='off'/><hbm:gpu address='0000:c1:00.0' dialect='none' size-cap='16GiB'/></hbm:passthrough>",
    );
    let out = rw(&xml, &inv, &RewriteOptions::default());
    assert!(out.xml.contains("<cell id='1' memory='16777216' unit='KiB'/>"));
    assert!(!out.xml.contains("<cell id='2'"));
    assert!(!out.xml.contains("memmap=") && !out.xml.contains("HBM_QEMU_INSTRUCTIONS"));
    assert!(out.xml.contains("pci-dev=ua-hbm-0000-c1-00-0,node=1"));
    // The user's policy element is kept; the record goes inside it.
    assert!(
        out.xml
            .contains("<hbm:gpu address='0000:c1:00.0' dialect='none' size-cap='16GiB'/>\n      <hbm:applied>")
    );
    let meta = read_metadata(&out.xml).unwrap().unwrap();
    assert_eq!(meta.dialect, Some(Dialect::SpMem));
    assert_eq!(meta.gpus.len(), 2);
    assert_eq!(meta.gpus[1].size_cap_bytes, Some(16 * GIB));
    assert_eq!(meta.claimed.len(), 1);
    // Region selection: only the listed region.
    let inv2 = inventory(vec![region("0000:41:00.0", 2, GIB), region("0000:41:00.0", 3, GIB)]);
    let xml = with_metadata(
        &domain(1024, &hostdev(0x41)),
        "<hbm:passthrough xmlns:hbm='https://hbm-passthrough.dev/xmlns/domain/1' dialect='none'>\n      <hbm:gpu address='0000:41:00.0' regions='0000:41:00.0/node3'/>\n    </hbm:passthrough>",
    );
    let out = rw(&xml, &inv2, &RewriteOptions::default());
    assert!(out.xml.contains("<memnode cellid='1' mode='strict' nodeset='3'/>"));
    assert!(!out.xml.contains("nodeset='2'"));
    // Bad metadata: exit 2 naming the element.
    let xml = with_metadata(
        &base,
        "<hbm:passthrough xmlns:hbm='https://hbm-passthrough.dev/xmlns/domain/1' dialect='spm'/>",
    );
    let e = err(&xml, &inv, &RewriteOptions::default());
    assert_eq!(e.exit_code(), 2);
    assert!(
        e.to_string()
            .starts_with("domain XML line 25: <hbm:passthrough>: attribute dialect: unknown dialect \"spm\""),
        "{e}"
    );
}

#[test]
fn size_cap_limits_each_cell() {
    let o = RewriteOptions {
        size_cap_bytes: Some(3 * GIB + 1),
        dialect: Dialect::None,
        ..RewriteOptions::default()
    };
    let out = rw(&domain(1024, &hostdev(0xc1)), &seed_amd(), &o);
    assert!(
        out.xml.contains("<cell id='1' memory='3145728' unit='KiB'/>"),
        "rounded down to 2 MiB"
    );
    let o = RewriteOptions {
        size_cap_bytes: Some(MIB),
        dialect: Dialect::None,
        ..RewriteOptions::default()
    };
    assert_eq!(err(&domain(1024, &hostdev(0xc1)), &seed_amd(), &o).exit_code(), 2);
}

#[test]
fn a_rewrite_for_another_host_replaces_the_first_hosts_additions() {
    let xml = domain(1024, &hostdev(0x41));
    let host_a = inventory(vec![region("0000:41:00.0", 2, 8 * GIB)]);
    let host_b = inventory(vec![
        region("0000:41:00.0", 7, 4 * GIB),
        region("0000:41:00.0", 6, 2 * GIB),
    ]);
    let on_a = rw(&xml, &host_a, &RewriteOptions::default());
    let direct_b = rw(&xml, &host_b, &RewriteOptions::default());
    let migrated = rewrite(&on_a.xml, &host_b, &RewriteOptions::default()).unwrap();
    assert_eq!(migrated.xml, direct_b.xml);
    assert!(migrated.changed);
}

#[test]
fn i440fx_and_non_x86_are_refused() {
    let xml = domain(1024, &hostdev(0x41)).replace("pc-q35-9.0", "pc-i440fx-9.0");
    let (code, message) = refusal(&xml, GIB, Dialect::KernelCmdline);
    assert_eq!(code, 3);
    assert_eq!(
        message,
        "domain XML line 6: <type>: cannot satisfy: machine \"pc-i440fx-9.0\" is not q35; HBM passthrough needs a PCIe (q35) machine for the pcie-expander-bus"
    );
    let xml = domain(1024, &hostdev(0x41)).replace("arch='x86_64'", "arch='aarch64'");
    assert_eq!(refusal(&xml, GIB, Dialect::KernelCmdline).0, 3);
}

#[test]
fn doctype_entities_and_malformed_input_are_bad_input() {
    let inv = seed_amd();
    let o = RewriteOptions::default();
    let e = err(
        "<?xml version='1.0'?>\n<!DOCTYPE domain [<!ENTITY x 'y'>]>\n<domain>&x;</domain>",
        &inv,
        &o,
    );
    assert_eq!(e, RewriteError::Doctype { line: 2 });
    assert_eq!(e.exit_code(), 2);
    let e = err("<domain>\n<name>&x;</name></domain>", &inv, &o);
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("entity reference &x;"), "{e}");
    let e = err("<domain>\n  <name>x</nam>\n</domain>", &inv, &o);
    assert_eq!(e.exit_code(), 2);
    assert!(
        e.to_string().starts_with("domain XML line 2: not well-formed XML"),
        "{e}"
    );
    // Found by the fuzzer: quick-xml reads attributes lazily, the index checks them.
    let e = err(
        "<domain>\n  <devices>\n    <controller typ=e'usb'/>\n  </devices>\n</domain>",
        &inv,
        &o,
    );
    assert_eq!(e.exit_code(), 2);
    assert!(
        e.to_string()
            .starts_with("domain XML line 3: not well-formed XML: element <controller>: bad attribute"),
        "{e}"
    );
    let e = err("<domain =ype='kvm'/>", &inv, &o);
    assert_eq!(e.exit_code(), 2);
    let e = err("<domain a='1' a='2'/>", &inv, &o);
    assert_eq!(e.exit_code(), 2);
    assert_eq!(err("<domain>", &inv, &o).exit_code(), 2);
    assert_eq!(err("", &inv, &o).exit_code(), 2);
    assert_eq!(err("<domain/><domain/>", &inv, &o).exit_code(), 2);
    let e = err(
        "<network><name>x</name><devices><hostdev type='pci'/></devices></network>",
        &inv,
        &o,
    );
    assert_eq!(e.exit_code(), 2);
    let corpus = std::fs::read_to_string("../tests/corpus/kubevirt/api-domain_numa_topology.xml").unwrap();
    let e = err(&corpus, &inv, &o);
    assert_eq!(e.exit_code(), 2);
    assert_eq!(
        e.to_string(),
        "domain XML line 19: not well-formed XML: text \"`\" outside the root element; fix the XML and retry"
    );
}

#[test]
fn a_gpu_passed_through_twice_is_a_collision() {
    let xml = std::fs::read_to_string("../tests/corpus/libvirt/hostdev-pci-duplicate.xml").unwrap();
    let inv = inventory(vec![region("0000:06:12.5", 0, GIB)]);
    let e = err(&xml, &inv, &opts(Dialect::None));
    assert_eq!(e.exit_code(), 2);
    assert!(
        e.to_string()
            .contains("PCI device 0000:06:12.5 is passed through twice"),
        "{e}"
    );
}

#[test]
fn compact_single_line_documents_stay_compact() {
    let xml = "<domain type='kvm'><name>c</name><memory>1048576</memory><os><type machine='q35'>hvm</type></os><devices><hostdev mode='subsystem' type='pci'><source><address domain='0' bus='0x41' slot='0' function='0'/></source></hostdev></devices></domain>";
    let out = rw(
        xml,
        &inventory(vec![region("0000:41:00.0", 1, GIB)]),
        &opts(Dialect::None),
    );
    assert!(!out.xml.contains('\n'));
    assert!(out.xml.contains("<memory>2097152</memory>"));
    assert!(out.xml.contains("<cpu><numa><cell id='0' cpus='0' memory='1048576' unit='KiB'/><cell id='1' memory='1048576' unit='KiB'/></numa></cpu>"));
}

#[test]
fn self_closing_and_empty_parents_are_expanded_and_restored() {
    let xml = domain(1024, &hostdev(0x41)).replace(
        "</os>\n",
        "</os>\n  <features/>\n  <numatune></numatune>\n  <metadata/>\n",
    );
    let out = rw(
        &xml,
        &inventory(vec![region("0000:41:00.0", 1, GIB)]),
        &opts(Dialect::None),
    );
    assert!(out.xml.contains("  <features>\n    <acpi/>\n  </features>\n"));
    assert!(
        out.xml
            .contains("  <numatune>\n    <memnode cellid='1' mode='strict' nodeset='1'/>\n  </numatune>\n")
    );
    assert!(out.xml.contains("  <metadata>\n    <hbm:passthrough"));
}

#[test]
fn a_damaged_record_does_not_make_additions_stack() {
    // Found by the fuzzer: an earlier rewrite whose record lost the entry for <qemu:commandline>.
    let damaged: String = SAMPLE_GOLDEN
        .split_inclusive('\n')
        .filter(|line| !line.contains("<hbm:undo op='remove' at='qemu:commandline'"))
        .collect();
    assert_ne!(damaged, SAMPLE_GOLDEN);
    let inv = sample_host();
    let once = rewrite(&damaged, &inv, &RewriteOptions::default()).unwrap();
    let twice = rewrite(&once.xml, &inv, &RewriteOptions::default()).unwrap();
    assert_eq!(twice.xml, once.xml);
    assert_eq!(once.xml.matches("acpi-generic-initiator,id=hbm-gi1").count(), 1);
    assert_eq!(once.xml.matches("<qemu:env name='HBM_QEMU_INSTRUCTIONS'").count(), 1);
}

#[test]
fn undo_finds_the_pci_hostdev_not_an_other_mode_one_with_the_same_source() {
    // Found by the fuzzer: a non-subsystem hostdev naming the same address comes first.
    let other = hostdev(0x41).replace("mode='subsystem'", "mode='capabilities'");
    let xml = domain(1024, &format!("{other}{}", hostdev(0x41)));
    let out = rw(
        &xml,
        &inventory(vec![region("0000:41:00.0", 0, GIB)]),
        &opts(Dialect::None),
    );
    assert_eq!(out.xml.matches("<alias name='ua-hbm-0000-41-00-0'/>").count(), 1);
}

#[test]
fn an_alias_libvirt_would_refuse_is_bad_input() {
    let xml = domain(1024, &hostdev(0x41)).replace("</source>\n", "</source>\n      <alias name='ua-gpu]/0'/>\n");
    let (code, message) = refusal(&xml, GIB, Dialect::None);
    assert_eq!(code, 2);
    assert!(message.contains("has characters libvirt does not allow"), "{message}");
}

#[test]
fn undo_removes_the_rewriters_own_element_when_the_user_has_a_twin() {
    // A stray memnode for the cell id the rewriter will use: the rewriter's own one is removed.
    let xml = domain(1024, &hostdev(0x41)).replace(
        "</os>\n",
        "</os>\n  <numatune>\n    <memnode cellid='1' mode='preferred' nodeset='0'/>\n  </numatune>\n",
    );
    let out = rw(
        &xml,
        &inventory(vec![region("0000:41:00.0", 4, GIB)]),
        &opts(Dialect::None),
    );
    assert!(out.xml.contains(
        "    <memnode cellid='1' mode='preferred' nodeset='0'/>\n    <memnode cellid='1' mode='strict' nodeset='4'/>\n"
    ));
}

#[test]
fn control_characters_are_refused() {
    // Found by the fuzzer: a form feed inside the root tag made the quote detection pick a
    // control character. XML allows no C0 control but tab, LF and CR: such a document is refused.
    let xml = domain(1024, &hostdev(0x41)).replace("<domain type='qemu'>", "<domain \u{2}\u{c}='x' type='qemu'>");
    let e = err(
        &xml,
        &inventory(vec![region("0000:41:00.0", 0, GIB)]),
        &opts(Dialect::None),
    );
    assert_eq!(
        e,
        RewriteError::Malformed {
            line: 1,
            reason: "character U+0002 at column 9 is not allowed in XML".into()
        }
    );
}

#[test]
fn self_closing_text_elements_get_their_text_inside() {
    let xml = domain(1024, &hostdev(0x41))
        .replace("<cmdline>console=ttyS0</cmdline>", "<cmdline/>")
        .replace("  <devices>\n", "  <devices>\n    <emulator/>\n");
    let inv = inventory(vec![region("0000:41:00.0", 0, 512 * MIB)]);
    let out = rw(&xml, &inv, &RewriteOptions::default());
    assert!(out.xml.contains("<cmdline>memmap=512M%1G-1+0xefffffff</cmdline>"));
    let out = rw(&xml, &inv, &opts(Dialect::SpMem));
    assert!(out.xml.contains("<emulator>/usr/local/bin/hbm-qemu</emulator>"));
    // A memory element without an amount is bad input.
    let xml = domain(1024, &hostdev(0x41)).replace("<memory unit='MiB'>1024</memory>", "<memory unit='MiB'/>");
    assert_eq!(err(&xml, &inv, &opts(Dialect::None)).exit_code(), 2);
    let xml = domain(1024, &hostdev(0x41)).replace("unit='MiB'", "unit='Gi<'");
    assert_eq!(err(&xml, &inv, &opts(Dialect::None)).exit_code(), 2);
}

#[test]
fn later_edits_of_the_kernel_command_line_survive_a_second_rewrite() {
    let inv = inventory(vec![region("0000:41:00.0", 0, 512 * MIB)]);
    let out = rw(&domain(1024, &hostdev(0x41)), &inv, &RewriteOptions::default());
    let edited = out.xml.replace("0xefffffff</cmdline>", "0xefffffff quiet</cmdline>");
    let again = rewrite(&edited, &inv, &RewriteOptions::default()).unwrap();
    assert!(
        again
            .xml
            .contains("<cmdline>console=ttyS0 quiet memmap=512M%1G-1+0xefffffff</cmdline>"),
        "{}",
        again.xml
    );
    assert_eq!(
        rewrite(&again.xml, &inv, &RewriteOptions::default()).unwrap().xml,
        again.xml
    );
}

#[test]
fn an_opened_up_parent_keeps_later_changes_to_its_start_tag() {
    let xml = domain(1024, &hostdev(0x41)).replace("</os>\n", "</os>\n  <cpu mode='host-passthrough'/>\n");
    let inv = inventory(vec![region("0000:41:00.0", 0, GIB)]);
    let out = rw(&xml, &inv, &opts(Dialect::None));
    assert!(out.xml.contains("  <cpu mode='host-passthrough'>\n    <numa>\n"));
    // Someone changes the CPU mode after the rewrite; a rewrite for a host without HBM keeps it.
    let edited = out
        .xml
        .replace("<cpu mode='host-passthrough'>", "<cpu mode='host-model'>");
    let removed = rewrite(&edited, &Inventory::empty("/"), &opts(Dialect::None)).unwrap();
    assert_eq!(
        removed.xml,
        xml.replace("<cpu mode='host-passthrough'/>", "<cpu mode='host-model'/>")
    );
}
