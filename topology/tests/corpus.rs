//! Discovery on the real sysfs snapshots in tests/corpus/sysfs (read in place).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use topology::{Gpu, Health, Memmap, Region, Source, fixture};

#[test]
fn emulated_spm_host_finds_the_dax_region_of_the_gpu() {
    let (_d, root) = unpack("emulated-spm-host-1gpu.tar.gz", "host");
    let inv = run(&root);
    assert_eq!(inv.warnings, Vec::<String>::new());
    assert_eq!(
        inv.gpus,
        vec![Gpu {
            address: pci("0000:d9:00.0"),
            vendor: "1af4".into(),
            device: "1050".into(),
            class: "038000".into(),
            driver: None,
            iommu_group: None,
            numa_node: Some(2),
            cpu_node: Some(0),
            peer_group: None,
        }]
    );
    assert_eq!(
        inv.regions,
        vec![Region {
            id: "0000:d9:00.0/dax0.0".into(),
            source: Source::Dax,
            dax: Some("/dev/dax0.0".into()),
            dax_align: Some(2 << 20),
            base: Some(0x2000_0000),
            online: false,
            ..fixture::region(pci("0000:d9:00.0"), 2, 512 << 20)
        }]
    );
    let nodes: Vec<(u32, &str, u64, bool, bool)> = inv
        .nodes
        .iter()
        .map(|n| (n.id, n.cpus.as_str(), n.mem_total_bytes, n.online, n.generic_initiator))
        .collect();
    assert_eq!(
        nodes,
        vec![
            (0, "0", 469_364 * 1024, true, false),
            (1, "1", 515_320 * 1024, true, false),
            (2, "", 0, true, true)
        ]
    );
    assert_eq!(inv.nodes[2].distances, vec![20, 20, 10]);
}

#[test]
fn emulated_spm_host_without_dax_falls_back_to_srat_and_is_unhealthy() {
    // The dax device vanishes: only the SRAT (GI 0000:d9:00.0 -> PXM 1 -> node 2, 512 MiB) is
    // left, and with no online memory and no dax device the region cannot be used.
    let (_d, root) = unpack("emulated-spm-host-1gpu.tar.gz", "host");
    topology::fixture::remove_dax_device(&root, "dax0.0").unwrap();
    let inv = run(&root);
    assert_eq!(ids(&inv), vec!["0000:d9:00.0/node2"]);
    let r = region(&inv, "0000:d9:00.0/node2");
    assert_eq!(
        (r.source, r.host_node, r.size_bytes, r.base),
        (Source::Srat, Some(2), 512 << 20, Some(0x2000_0000))
    );
    // memmap says System RAM (the guest kernel converted it), /proc/iomem says Soft Reserved.
    assert_eq!(r.memmap, Memmap::Spm);
    assert_eq!(r.health, Health::Unhealthy);
    let reason = r.reason.as_deref().unwrap();
    assert!(
        reason.contains("node2/meminfo: MemTotal 0 and no dax device reaches node 2"),
        "{reason}"
    );
}

#[test]
fn power9_v100_nodes_come_from_numa_status() {
    let (_d, root) = unpack("nvidiagpunumanodes.tar.bz2", "nvidiagpunumanodes");
    let inv = run(&root);
    assert_eq!(inv.warnings, Vec::<String>::new());
    let expect = [
        ("0004:05:00.0", 255, 0),
        ("0004:06:00.0", 254, 0),
        ("0006:00:00.0", 253, 0),
        ("0007:00:00.0", 252, 8),
        ("0035:04:00.0", 251, 8),
        ("0035:05:00.0", 250, 8),
    ];
    assert_eq!(inv.regions.len(), 6);
    assert_eq!(inv.gpus.len(), 6);
    for (gpu, node, cpu) in expect {
        let r = region(&inv, &format!("{gpu}/node{node}"));
        assert_eq!(r.gpu, pci(gpu));
        assert_eq!(r.host_node, Some(node));
        assert_eq!(r.size_bytes, 0x3_f000_0000);
        assert_eq!(r.base, Some(0x400_0000_0000));
        assert_eq!(
            (r.source, r.memmap, r.online, r.health),
            (Source::Nvidia, Memmap::Normal, true, Health::Healthy)
        );
        assert_eq!(r.dax, None);
        // Node distances tie (80 to both sockets): the GPU's own socket (from local_cpus) wins.
        assert_eq!(r.cpu_node, Some(cpu), "{gpu}");
        let g = inv.gpu(pci(gpu)).unwrap();
        assert_eq!((g.class.as_str(), g.numa_node, g.cpu_node), ("030000", None, Some(cpu)));
    }
    let ids: Vec<u32> = inv.nodes.iter().map(|n| n.id).collect();
    assert_eq!(ids, vec![0, 8, 250, 251, 252, 253, 254, 255]);
    assert_eq!(inv.nodes[2].mem_total_bytes, 15_728_640 * 1024);
}

#[test]
fn qemu_hetero_memory_tiers_without_gpus_has_no_region() {
    let (_d, root) = unpack("fakeheteromemtiers.tar.bz2", "fakeheteromemtiers");
    let inv = run(&root);
    assert_eq!(inv.warnings, Vec::<String>::new());
    assert!(inv.gpus.is_empty());
    assert!(inv.regions.is_empty());
    let ids: Vec<u32> = inv.nodes.iter().map(|n| n.id).collect();
    assert_eq!(ids, vec![0, 1, 2, 4, 6, 8, 9]);
    assert!(inv.nodes.iter().all(|n| !n.generic_initiator));
}

#[test]
fn nvdimm_host_has_a_display_gpu_and_no_hbm() {
    let (_d, root) = unpack("32em64t-2n8c+dax+nvme+mic+dimms.tar.bz2", "32em64t-2n8c+1mic");
    let inv = run(&root);
    // possible/online/has_* end with a NUL after the newline in this snapshot: tolerated.
    assert_eq!(inv.warnings, Vec::<String>::new());
    assert_eq!(inv.gpus.len(), 1);
    let g = &inv.gpus[0];
    assert_eq!(
        (g.address, g.vendor.as_str(), g.device.as_str(), g.numa_node, g.cpu_node),
        (pci("0000:05:00.0"), "1a03", "2000", Some(0), Some(0))
    );
    assert!(inv.regions.is_empty());
    assert_eq!(inv.nodes.iter().map(|n| n.id).collect::<Vec<_>>(), vec![0, 1]);
}

#[test]
fn emulated_host_srat_maps_pxm_the_way_the_kernel_did() {
    let bytes = std::fs::read(
        unpack("emulated-spm-host-1gpu.tar.gz", "host")
            .1
            .join("sys/firmware/acpi/tables/SRAT"),
    )
    .unwrap();
    let s = topology::srat::parse(&bytes).unwrap();
    // dmesg of that guest: PXM 0 -> node 0, PXM 2 -> node 1 (CPU 1), PXM 1 -> node 2 (GI).
    assert_eq!(
        s.pxm_to_node.iter().map(|(p, n)| (*p, *n)).collect::<Vec<_>>(),
        vec![(0, 0), (1, 2), (2, 1)]
    );
    assert_eq!(s.processor_pxms, vec![0, 2]);
    assert_eq!(s.initiators.len(), 1);
    assert_eq!(s.initiators[0].pxm, 1);
    assert_eq!(
        s.initiators[0].resolve(|address| address == pci("0000:d9:00.0")),
        pci("0000:d9:00.0")
    );
    let hbm: Vec<_> = s.memory.iter().filter(|m| m.pxm == 1).collect();
    assert_eq!(hbm.len(), 1);
    assert_eq!(
        (hbm[0].base, hbm[0].length, hbm[0].enabled(), hbm[0].specific_purpose()),
        (0x2000_0000, 0x2000_0000, true, false)
    );
}

#[test]
fn this_machines_real_sysfs_is_read() {
    // The real kernfs of the machine running the tests: every online node is reported.
    let inv = run(std::path::Path::new("/"));
    let online = std::fs::read_to_string("/sys/devices/system/node/online").unwrap();
    let want = topology::sysfs::parse_list(&online).unwrap();
    let got: Vec<u32> = inv.nodes.iter().filter(|n| n.online).map(|n| n.id).collect();
    assert_eq!(got, want);
    assert!(inv.nodes.iter().any(|n| !n.cpus.is_empty() && n.mem_total_bytes > 0));
}
