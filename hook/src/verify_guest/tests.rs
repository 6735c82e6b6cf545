#![allow(clippy::unwrap_used)]
use topology::srat::{MemoryAffinity, Srat};
use topology::{Gpu, Health, Inventory, Memmap, NumaNode, PciAddress, Region};

use super::*;

const MIB: u64 = 1 << 20;

fn gpu(address: &str, numa_node: Option<u32>) -> Gpu {
    Gpu {
        address: PciAddress::parse(address).unwrap(),
        vendor: "1af4".into(),
        device: "1050".into(),
        class: "038000".into(),
        driver: None,
        iommu_group: None,
        numa_node,
        cpu_node: Some(0),
        peer_group: None,
    }
}

fn node(id: u32, cpus: &str, online: bool, generic_initiator: bool) -> NumaNode {
    NumaNode {
        id,
        cpus: cpus.into(),
        mem_total_bytes: 0,
        online,
        generic_initiator,
        distances: vec![],
    }
}

/// A guest with CPU node 0 and one GPU on CPU-less node 1 holding 512 MiB of SPM behind dax0.0.
fn healthy_guest() -> Inventory {
    let mut inventory = Inventory::empty("/");
    inventory.nodes = vec![node(0, "0", true, false), node(1, "", true, true)];
    let gpu = gpu("0000:fe:00.0", Some(1));
    inventory.regions.push(Region {
        dax: Some("/dev/dax0.0".into()),
        base: Some(0x2000_0000),
        source: topology::Source::Dax,
        ..topology::fixture::region(gpu.address, 1, 512 * MIB)
    });
    inventory.gpus.push(gpu);
    inventory
}

fn verify_plain(inventory: &Inventory) -> GuestReport {
    verify(inventory, None)
}

fn checks(report: &GuestReport) -> Vec<&'static str> {
    report
        .gpus
        .iter()
        .flat_map(|g| g.problems.iter().map(|p| p.check))
        .collect()
}

#[test]
fn a_gpu_on_its_online_cpu_less_hbm_node_passes() {
    let report = verify_plain(&healthy_guest());
    assert!(report.ok);
    let verdict = &report.gpus[0];
    assert_eq!(verdict.address, "0000:fe:00.0");
    assert_eq!(
        verdict.node,
        Some(NodeView {
            id: 1,
            online: true,
            cpu_less: true,
            generic_initiator: true,
            mem_total_bytes: 0,
            srat_ranges: vec![],
        })
    );
    assert_eq!(verdict.hbm_bytes, 512 * MIB);
    assert_eq!(verdict.marking, Some("spm"));
    assert_eq!(verdict.hbm[0].dax.as_deref(), Some("/dev/dax0.0"));
    assert_eq!(verdict.hbm[0].source, "dax");
    assert!(verdict.problems.is_empty());
}

#[test]
fn numa_node_minus_one_fails_and_names_the_generic_initiator() {
    let mut guest = healthy_guest();
    guest.gpus[0].numa_node = None;
    guest.regions.clear();
    let report = verify_plain(&guest);
    assert!(!report.ok);
    assert_eq!(checks(&report), ["numa-node"]);
    let problem = &report.gpus[0].problems[0];
    assert!(
        problem
            .message
            .starts_with("numa_node is -1: the guest has no Generic Initiator"),
        "{}",
        problem.message
    );
    assert!(problem.host_fix.contains("QEMU >= 9.0"), "{}", problem.host_fix);
}

#[test]
fn an_offline_node_a_cpu_node_and_a_node_without_hbm_each_fail_their_check() {
    let mut offline = healthy_guest();
    offline.nodes[1].online = false;
    assert_eq!(checks(&verify_plain(&offline)), ["node-online"]);

    let mut on_cpu_node = healthy_guest();
    on_cpu_node.gpus[0].numa_node = Some(0);
    on_cpu_node.regions.clear();
    assert_eq!(checks(&verify_plain(&on_cpu_node)), ["cpu-less", "hbm"]);

    let mut absent = healthy_guest();
    absent.gpus[0].numa_node = Some(7);
    absent.regions.clear();
    assert_eq!(checks(&verify_plain(&absent)), ["node-present", "hbm"]);
}

#[test]
fn an_unhealthy_region_is_a_note_not_a_failure() {
    let mut guest = healthy_guest();
    guest.regions[0].health = Health::Unhealthy;
    guest.regions[0].reason = Some("MemTotal 0 and no dax device reaches node 1".into());
    let report = verify_plain(&guest);
    assert!(report.ok);
    assert_eq!(
        report.gpus[0].notes,
        ["region 0000:fe:00.0/node1: MemTotal 0 and no dax device reaches node 1"]
    );
    assert!(render_text(&report).contains("\n  note: region 0000:fe:00.0/node1: MemTotal 0"));
}

/// The firmware's ranges are the size: a normal CPU-less node's MemTotal is less than its range.
#[test]
fn hbm_size_is_the_nodes_srat_ranges_when_the_guest_has_an_srat() {
    let mut guest = healthy_guest();
    guest.regions[0].size_bytes = 251 * MIB;
    guest.regions[0].memmap = Memmap::Normal;
    let srat = Srat {
        processor_pxms: vec![0],
        memory: vec![
            MemoryAffinity {
                pxm: 0,
                base: 0,
                length: 1024 * MIB,
                flags: 1,
            },
            MemoryAffinity {
                pxm: 1,
                base: 1024 * MIB,
                length: 256 * MIB,
                flags: 1,
            },
            MemoryAffinity {
                pxm: 1,
                base: 2048 * MIB,
                length: 64 * MIB,
                flags: 0,
            },
        ],
        initiators: vec![],
        pxm_to_node: [(0, 0), (1, 1)].into_iter().collect(),
    };
    let report = verify(&guest, Some(&srat));
    let verdict = &report.gpus[0];
    assert_eq!(verdict.hbm_bytes, 256 * MIB, "the disabled range does not count");
    assert_eq!(
        verdict.node.as_ref().unwrap().srat_ranges,
        [FirmwareRange {
            base: 1024 * MIB,
            length: 256 * MIB
        }]
    );
    assert_eq!(verdict.hbm[0].size_bytes, 251 * MIB);
    assert_eq!(verdict.marking, Some("normal"));

    guest.regions.clear();
    let without_hbm = verify(&guest, Some(&srat));
    assert_eq!(
        without_hbm.gpus[0].hbm_bytes, 0,
        "SRAT ranges count only when HBM was found"
    );
}

#[test]
fn no_gpu_is_a_failure_and_markings_are_reported_per_gpu() {
    let report = verify_plain(&Inventory::empty("/"));
    assert!(!report.ok);
    assert!(render_text(&report).starts_with("no GPU-class PCI function"));

    let mut mixed = healthy_guest();
    let address = mixed.gpus[0].address;
    mixed.regions.push(Region {
        id: format!("{address}/srat"),
        memmap: Memmap::Normal,
        ..topology::fixture::region(address, 1, 256 * MIB)
    });
    let report = verify_plain(&mixed);
    assert_eq!(report.gpus[0].marking, Some("mixed"));
    assert_eq!(report.gpus[0].hbm_bytes, 768 * MIB);
}

#[test]
fn text_report_shows_node_ranges_and_fixes() {
    let text = render_text(&verify_plain(&healthy_guest()));
    assert_eq!(
        text,
        "0000:fe:00.0 class 038000 node 1 online cpu-less generic-initiator hbm 512 MiB (spm) ok\n  \
         range 0000:fe:00.0/node1 512 MiB Spm base 0x20000000 dax /dev/dax0.0 (dax)\nevery GPU has its HBM\n"
    );
    let mut broken = healthy_guest();
    broken.gpus[0].numa_node = None;
    broken.regions.clear();
    let text = render_text(&verify_plain(&broken));
    assert!(
        text.contains("numa_node -1 hbm 0 MiB (-) FAIL\n  FAIL numa-node: numa_node is -1"),
        "{text}"
    );
    assert!(text.ends_with("    fix: on the host: use QEMU >= 9.0 and the rewriter's Generic Initiator for this device (acpi-generic-initiator or libvirt's <acpi nodeset>), with the device behind a pcie-expander-bus whose <node> is the HBM cell\na GPU lacks its HBM\n"), "{text}");
}
