//! Discovery on the generated fixture hosts (topology::fixture presets and custom builds), and
//! the committed sample host staying equal to what its generator writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use common::*;
use topology::fixture::{self, DaxDevice, DaxParent, FixtureHost, NvidiaNumaStatus, PciFunction, SratBuilder};
use topology::{Health, Memmap, Region, Source};

#[test]
fn seed_amd_gpu_owns_its_spm_dax_region() {
    let d = write(&fixture::seed_amd());
    let inv = run(d.path());
    assert_eq!(inv.warnings, Vec::<String>::new());
    assert_eq!(inv.gpus.len(), 1);
    let g = &inv.gpus[0];
    assert_eq!(
        (
            g.address,
            g.vendor.as_str(),
            g.device.as_str(),
            g.class.as_str(),
            g.driver.as_deref(),
            g.iommu_group,
            g.numa_node,
            g.cpu_node
        ),
        (
            pci("0000:c1:00.0"),
            "1002",
            "74a1",
            "120000",
            Some("vfio-pci"),
            Some(12),
            Some(1),
            Some(0)
        )
    );
    assert_eq!(
        inv.regions,
        vec![Region {
            id: "0000:c1:00.0/dax0.0".into(),
            source: Source::Dax,
            dax: Some("/dev/dax0.0".into()),
            dax_align: Some(2 << 20),
            base: Some(0x21_0000_0000),
            online: false,
            ..fixture::region(pci("0000:c1:00.0"), 1, 64 * GIB)
        }]
    );
}

type RegionRow<'a> = (
    &'a str,
    Option<u32>,
    u64,
    Source,
    Memmap,
    Option<&'a str>,
    Option<u32>,
    Health,
);

#[test]
fn bundled_sample_host_has_two_gpus_with_one_region_each() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hosts/seed-amd");
    let inv = run(&root);
    assert_eq!(inv.warnings, Vec::<String>::new());
    let got: Vec<RegionRow> = inv
        .regions
        .iter()
        .map(|r| {
            (
                r.id.as_str(),
                r.host_node,
                r.size_bytes,
                r.source,
                r.memmap,
                r.dax.as_deref(),
                r.cpu_node,
                r.health,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "0000:41:00.0/dax0.0",
                Some(2),
                64 * GIB,
                Source::Dax,
                Memmap::Spm,
                Some("/dev/dax0.0"),
                Some(0),
                Health::Healthy
            ),
            (
                "0000:c1:00.0/dax1.0",
                Some(3),
                64 * GIB,
                Source::Dax,
                Memmap::Spm,
                Some("/dev/dax1.0"),
                Some(1),
                Health::Healthy
            ),
        ]
    );
    let gpus: Vec<_> = inv
        .gpus
        .iter()
        .map(|g| (g.address, g.driver.as_deref(), g.iommu_group, g.numa_node, g.cpu_node))
        .collect();
    assert_eq!(
        gpus,
        vec![
            (pci("0000:41:00.0"), Some("vfio-pci"), Some(24), Some(2), Some(0)),
            (pci("0000:c1:00.0"), Some("vfio-pci"), Some(56), Some(3), Some(1)),
        ]
    );
    assert_eq!(
        inv.nodes.iter().map(|n| (n.id, n.cpus.as_str())).collect::<Vec<_>>(),
        vec![(0, "0-31"), (1, "32-63"), (2, ""), (3, "")]
    );
}

/// Files and links under `root` (directories are implied), with contents / link targets.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                out.insert(rel, format!("-> {}", std::fs::read_link(&p).unwrap().display()));
            } else if ft.is_dir() {
                stack.push(p);
            } else {
                out.insert(rel, format!("{:?}", std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

#[test]
fn committed_sample_host_equals_the_generator_output() {
    // Recreate with:
    // cargo run -p topology --features fixture --example write-fixture-host -- seed-amd-2gpu examples/hosts/seed-amd
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hosts/seed-amd");
    let d = write(&fixture::seed_amd_2gpu());
    let (want, got) = (tree(d.path()), tree(&committed));
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    let differ: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "missing {missing:?} extra {extra:?} differ {differ:?}"
    );
    assert_eq!(want.len(), 102);
}

#[test]
fn grace_hopper_gpu_owns_the_node_the_driver_onlined() {
    let d = write(&fixture::grace_hopper());
    let inv = run(d.path());
    assert_eq!(inv.warnings, Vec::<String>::new());
    assert_eq!(ids(&inv), vec!["0009:01:00.0/node1"]);
    let r = region(&inv, "0009:01:00.0/node1");
    assert_eq!(
        (
            r.host_node,
            r.size_bytes,
            r.source,
            r.memmap,
            r.online,
            r.cpu_node,
            r.health,
            r.dax.as_deref()
        ),
        (
            Some(1),
            96 * GIB,
            Source::Nvidia,
            Memmap::Normal,
            true,
            Some(0),
            Health::Healthy,
            None
        )
    );
    let gi: Vec<u32> = inv.nodes.iter().filter(|n| n.generic_initiator).map(|n| n.id).collect();
    assert_eq!(gi, (1..=8).collect::<Vec<_>>());
    assert_eq!(inv.gpus[0].numa_node, Some(0));
}

#[test]
fn grace_hopper_without_driver_falls_back_to_srat_generic_initiators() {
    // Same host, but no numa_status (driver not loaded, or a container without /proc/driver).
    let gpu = pci("0009:01:00.0");
    let mut host = FixtureHost::new()
        .cpu_node(0, "0-71", 480 * GIB)
        .hbm_node(1, 96 * GIB, false, true)
        .generic_initiator(1);
    for n in 2..=8 {
        host = host.gi_node(n);
    }
    let mut srat = SratBuilder::new().lapic(0, 0);
    for pxm in 1..=8 {
        // devfn-first handles, as older firmware wrote them.
        srat = srat.generic_initiator_pci(pxm, gpu, false);
    }
    let host = host
        .pci(
            PciFunction::gpu(gpu)
                .vendor(0x10de)
                .device(0x2342)
                .class(0x030200)
                .numa_node(Some(0)),
        )
        .distance(0, 1, 80)
        .srat(srat.build());
    let inv = run(write(&host).path());
    assert_eq!(inv.warnings, Vec::<String>::new());
    // Nodes 2-8 have no memory: not regions. Node 1 is the HBM, learned from SRAT.
    assert_eq!(ids(&inv), vec!["0009:01:00.0/node1"]);
    let r = region(&inv, "0009:01:00.0/node1");
    assert_eq!(
        (r.source, r.size_bytes, r.online, r.health),
        (Source::Srat, 96 * GIB, true, Health::Healthy)
    );
}

#[test]
fn gpu_with_two_gi_nodes_owns_two_regions() {
    let gpu = pci("0000:81:00.0");
    let host = FixtureHost::new()
        .cpu_node(0, "0-7", 16 * GIB)
        .hbm_node(1, 48 * GIB, false, true)
        .hbm_node(2, 48 * GIB, false, true)
        .generic_initiator(1)
        .generic_initiator(2)
        .pci(
            PciFunction::gpu(gpu)
                .numa_node(Some(0))
                .driver(Some("vfio-pci"))
                .iommu_group(Some(5)),
        );
    let host = host.with_generated_srat();
    // The generated SRAT has GIs only for GPUs whose numa_node is a GI node; add them by hand.
    let srat = SratBuilder::new()
        .lapic(0, 0)
        .generic_initiator_pci(1, gpu, true)
        .generic_initiator_pci(2, gpu, true)
        .memory(0, 4 * GIB, 16 * GIB, fixture::MEM_ENABLED)
        .memory(1, 20 * GIB, 48 * GIB, fixture::MEM_ENABLED)
        .memory(2, 68 * GIB, 48 * GIB, fixture::MEM_ENABLED)
        .build();
    let inv = run(write(&host.srat(srat)).path());
    assert_eq!(ids(&inv), vec!["0000:81:00.0/node1", "0000:81:00.0/node2"]);
    // The GPU's numa_node is node 0 (CPUs), so the CPU-less-node source does not apply: the two
    // GI nodes come from the SRAT.
    for r in &inv.regions {
        assert_eq!(
            (r.source, r.size_bytes, r.health, r.cpu_node),
            (Source::Srat, 48 * GIB, Health::Healthy, Some(0))
        );
    }
}

#[test]
fn cxl_expander_without_gpu_has_no_region() {
    let inv = run(write(&fixture::cxl_expander()).path());
    assert_eq!(inv.warnings, Vec::<String>::new());
    assert!(inv.gpus.is_empty());
    assert!(inv.regions.is_empty());
}

#[test]
fn no_hbm_host_has_a_gpu_and_no_region() {
    let inv = run(write(&fixture::no_hbm()).path());
    assert_eq!(inv.warnings, Vec::<String>::new());
    assert_eq!(inv.gpus.len(), 1);
    assert_eq!((inv.gpus[0].numa_node, inv.gpus[0].cpu_node), (Some(0), Some(0)));
    assert!(inv.regions.is_empty());
}

#[test]
fn gpu_pointing_at_a_cpuless_node_with_online_memory_is_a_cpuless_node_region() {
    let host = FixtureHost::new()
        .cpu_node(0, "0-7", 16 * GIB)
        .hbm_node(1, 32 * GIB, false, true)
        .gpu("0000:41:00.0", 0x1002, 0x740f, Some("amdgpu"), Some(7), Some(1))
        .without_memmap();
    let inv = run(write(&host).path());
    assert_eq!(ids(&inv), vec!["0000:41:00.0/node1"]);
    let r = &inv.regions[0];
    assert_eq!(
        (r.source, r.size_bytes, r.memmap, r.online, r.health, r.base),
        (
            Source::CpulessNode,
            32 * GIB,
            Memmap::Normal,
            true,
            Health::Healthy,
            None
        )
    );
}

#[test]
fn kmem_dax_region_is_online_and_dax_wins_over_cpuless_node() {
    let host = FixtureHost::new()
        .cpu_node(0, "0-7", 16 * GIB)
        .hbm_node(1, 32 * GIB, true, true)
        .gpu("0000:41:00.0", 0x1002, 0x740f, Some("vfio-pci"), Some(7), Some(1))
        .dax(DaxDevice::hmem("dax0.0", 1, 32 * GIB).kmem(true).align(1 << 30));
    let inv = run(write(&host).path());
    assert_eq!(ids(&inv), vec!["0000:41:00.0/dax0.0"]);
    let r = &inv.regions[0];
    assert_eq!(
        (r.source, r.online, r.memmap, r.dax_align, r.health),
        (Source::Dax, true, Memmap::Spm, Some(1 << 30), Health::Healthy)
    );
}

#[test]
fn nvdimm_dax_on_the_gpu_node_is_not_hbm() {
    let host = FixtureHost::new()
        .cpu_node(0, "0-7", 16 * GIB)
        .hbm_node(1, 32 * GIB, false, false)
        .generic_initiator(1)
        .gpu("0000:41:00.0", 0x1002, 0x740f, None, None, Some(1))
        .dax(DaxDevice::hmem("dax3.0", 1, 32 * GIB).parent(DaxParent::Nvdimm(3)));
    let inv = run(write(&host).path());
    assert!(inv.regions.is_empty(), "{:#?}", inv.regions);
}

#[test]
fn two_gpus_sharing_a_node_are_ambiguous_and_warned() {
    let host = FixtureHost::new()
        .cpu_node(0, "0-7", 16 * GIB)
        .hbm_node(1, 32 * GIB, true, false)
        .generic_initiator(1)
        .gpu("0000:41:00.0", 0x1002, 0x740f, None, None, Some(1))
        .gpu("0000:42:00.0", 0x1002, 0x740f, None, None, Some(1))
        .dax(DaxDevice::hmem("dax0.0", 1, 32 * GIB));
    let inv = run(write(&host).path());
    assert!(inv.regions.is_empty());
    assert_eq!(
        inv.warnings,
        vec![
            "dax device dax0.0 (target node 1) is near several GPUs (0000:41:00.0, 0000:42:00.0); name its owner in the discovery config"
                .to_string()
        ]
    );
}

#[test]
fn nvidia_offline_status_is_unhealthy_naming_the_file() {
    let gpu = pci("0009:01:00.0");
    let host = FixtureHost::new()
        .cpu_node(0, "0-7", 16 * GIB)
        .hbm_node(1, 96 * GIB, false, false)
        .generic_initiator(1)
        .pci(PciFunction::gpu(gpu).vendor(0x10de).class(0x030200).numa_node(Some(0)))
        .nvidia_numa_status(NvidiaNumaStatus {
            gpu,
            node: 1,
            status: "offline".into(),
            address: 0x40_0000_0000,
            size: 96 * GIB,
        });
    let d = write(&host);
    let inv = run(d.path());
    let r = region(&inv, "0009:01:00.0/node1");
    assert_eq!(
        (r.source, r.online, r.health),
        (Source::Nvidia, false, Health::Unhealthy)
    );
    let file = d.path().join("proc/driver/nvidia/gpus/0009:01:00.0/numa_status");
    assert_eq!(
        r.reason.as_deref(),
        Some(format!("{}: Status is \"offline\", not online", file.display()).as_str())
    );
}

#[test]
fn hbm_node_offline_without_dax_is_unhealthy() {
    // The SRAT names node 1 for the GPU, but its memory is neither online nor behind a dax device.
    let host = FixtureHost::new()
        .cpu_node(0, "0-7", 16 * GIB)
        .hbm_node(1, 32 * GIB, true, false)
        .gpu("0000:41:00.0", 0x1002, 0x740f, None, None, Some(1))
        .with_generated_srat();
    let d = write(&host);
    let inv = run(d.path());
    let r = region(&inv, "0000:41:00.0/node1");
    assert_eq!(
        (r.source, r.size_bytes, r.memmap, r.health),
        (Source::Srat, 32 * GIB, Memmap::Spm, Health::Unhealthy)
    );
    let nodes = d.path().join("sys/devices/system/node");
    assert_eq!(
        r.reason.as_deref(),
        Some(format!("node 1 is not online ({}/online)", nodes.display()).as_str())
    );
}

#[test]
fn in_place_edits_change_what_discovery_sees() {
    let d = write(&fixture::seed_amd_2gpu());
    fixture::bind_driver(d.path(), pci("0000:41:00.0"), Some("amdgpu")).unwrap();
    fixture::remove_dax_device(d.path(), "dax1.0").unwrap();
    let inv = run(d.path());
    assert_eq!(inv.gpu(pci("0000:41:00.0")).unwrap().driver.as_deref(), Some("amdgpu"));
    // c1's HBM is now only known from the SRAT, with no way to reach it.
    let r = region(&inv, "0000:c1:00.0/node3");
    assert_eq!((r.source, r.health), (Source::Srat, Health::Unhealthy));
    fixture::bind_driver(d.path(), pci("0000:41:00.0"), None).unwrap();
    fixture::remove_pci_function(d.path(), pci("0000:c1:00.0")).unwrap();
    let inv = run(d.path());
    assert_eq!(
        inv.gpus
            .iter()
            .map(|g| (g.address, g.driver.clone()))
            .collect::<Vec<_>>(),
        vec![(pci("0000:41:00.0"), None)]
    );
    assert_eq!(ids(&inv), vec!["0000:41:00.0/dax0.0"]);
    fixture::offline_node(d.path(), 2).unwrap();
    let inv = run(d.path());
    // The dax device is still there: the region stays healthy (its memory is reached via /dev/dax0.0).
    assert_eq!(region(&inv, "0000:41:00.0/dax0.0").health, Health::Healthy);
}

#[test]
fn large_host_finds_one_region_per_gpu() {
    let inv = run(write(&fixture::large_host(300, 8)).path());
    assert_eq!(inv.gpus.len(), 4);
    assert_eq!(inv.regions.len(), 4);
    assert!(
        inv.regions
            .iter()
            .all(|r| r.health == Health::Healthy && r.source == Source::Dax)
    );
}

#[test]
fn proc_bus_pci_devices_limits_class_reads_to_gpu_vendors_and_configured_gpus() {
    // A processing accelerator of a vendor outside GPU_VENDORS, and an NVMe drive whose `class`
    // is garbage: with proc/bus/pci/devices neither `class` is read.
    let other_vendor = pci("0000:e1:00.0");
    let host = fixture::seed_amd().pci(PciFunction::gpu(other_vendor).vendor(0x1e52).device(0x401e));
    let d = write(&host);
    fs::write(d.path().join("sys/devices/pci0000:01/0000:01:00.0/class"), "garbage\n").unwrap();
    let inv = run(d.path());
    assert_eq!(inv.warnings, Vec::<String>::new());
    let gpus: Vec<String> = inv.gpus.iter().map(|g| g.address.to_string()).collect();
    assert_eq!(gpus, ["0000:c1:00.0"]);

    // Named by the config: its `class` is read.
    let config = topology::DiscoveryConfig::from_yaml(
        "discovery:\n  gpus:\n    - gpu: \"0000:e1:00.0\"\n      nodes: [1]\n",
        "test.yaml",
    )
    .unwrap();
    let inv = topology::discover(d.path(), &config).unwrap();
    let gpus: Vec<String> = inv.gpus.iter().map(|g| g.address.to_string()).collect();
    assert_eq!(gpus, ["0000:c1:00.0", "0000:e1:00.0"]);

    // Without the file (a snapshot, a container): every `class` is read.
    fs::remove_file(d.path().join("proc/bus/pci/devices")).unwrap();
    let inv = run(d.path());
    let gpus: Vec<String> = inv.gpus.iter().map(|g| g.address.to_string()).collect();
    assert_eq!(gpus, ["0000:c1:00.0", "0000:e1:00.0"]);
    assert_eq!(
        inv.warnings,
        [format!(
            "{}/sys/bus/pci/devices/0000:01:00.0/class: \"garbage\" is not a class code; function skipped",
            d.path().display()
        )]
    );
}

#[test]
fn proc_bus_pci_devices_names_no_domain_so_a_slot_shared_across_domains_is_read() {
    // 0000:c1:00.0 is the AMD GPU; 0001:c1:00.0 an NVMe drive in another PCI domain, same slot.
    let host = fixture::seed_amd().pci(PciFunction::other(pci("0001:c1:00.0")).numa_node(Some(0)));
    let d = write(&host);
    let inv = run(d.path());
    let gpus: Vec<String> = inv.gpus.iter().map(|g| g.address.to_string()).collect();
    assert_eq!(gpus, ["0000:c1:00.0"]);
    assert_eq!(ids(&inv), ["0000:c1:00.0/dax0.0"]);
}

/// With `proc/bus/pci/devices` and `sys/class/pci_bus` the GPU candidates are addressed
/// directly: `sys/bus/pci/devices` is not listed (its odd entry draws no warning); without
/// `sys/class/pci_bus` the folder is listed (the warning appears) and the GPUs are the same.
#[test]
fn gpu_candidates_are_addressed_through_pci_bus_without_listing_every_function() {
    let d = write(&fixture::seed_amd_2gpu());
    fs::create_dir(d.path().join("sys/bus/pci/devices/not-an-address")).unwrap();
    let addressed = run(d.path());
    assert!(
        !addressed.warnings.iter().any(|w| w.contains("not-an-address")),
        "{:?}",
        addressed.warnings
    );
    fs::remove_dir_all(d.path().join("sys/class/pci_bus")).unwrap();
    let listed = run(d.path());
    let odd = format!(
        "{}/not-an-address: not a PCI address, skipped",
        d.path().join("sys/bus/pci/devices").display()
    );
    assert!(listed.warnings.contains(&odd), "{:?}", listed.warnings);
    assert_eq!(addressed.gpus, listed.gpus);
    assert_eq!(addressed.regions, listed.regions);
    assert_eq!(addressed.gpus.len(), 2);
}

/// `proc/bus/pci/devices` names no domain: a candidate (bus, devfn) is tried in every domain
/// that has the bus, and the domain without the function is skipped silently.
#[test]
fn a_gpu_in_a_second_pci_domain_is_found_by_its_bus() {
    let gpu = pci("0001:c1:00.0");
    let host = FixtureHost::new()
        .cpu_node(0, "0-7", 16 << 30)
        .pci(PciFunction::other(pci("0000:c1:00.0")))
        .gpu("0001:c1:00.0", 0x1002, 0x74a1, Some("vfio-pci"), Some(7), Some(0));
    let d = write(&host);
    let inventory = run(d.path());
    assert_eq!(inventory.gpus.iter().map(|g| g.address).collect::<Vec<_>>(), vec![gpu]);
    assert_eq!(inventory.warnings, Vec::<String>::new());
}
