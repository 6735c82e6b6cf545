//! Broken inputs: missing files, unreadable files, garbage numbers, vanishing dax devices,
//! out-of-range nodes, truncated or checksum-broken SRAT. Never a panic; the region is skipped
//! (with a warning naming the file) or unhealthy (with a reason naming the file); only an
//! unusable root is an error.
//!
//! We run as root, so "unreadable" is made with a file that is a directory (EISDIR) or a
//! dangling symlink (ENOENT through the link) rather than with permissions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::Path;

use common::*;
use topology::fixture::{self, FixtureHost, NvidiaNumaStatus, PciFunction};
use topology::{DiscoverError, DiscoveryConfig, Health, Source, discover};

fn seed() -> tempfile::TempDir {
    write(&fixture::seed_amd())
}

const DAX: &str = "sys/devices/platform/hmem.0/dax0.0";

#[test]
fn unusable_roots_are_errors_with_one_line() {
    let d = tempfile::TempDir::new().unwrap();
    let cases = [
        (d.path().join("nope"), "cannot stat it"),
        (d.path().to_path_buf(), "it has no sys/ folder"),
    ];
    for (root, why) in cases {
        let e = discover(&root, &DiscoveryConfig::default()).unwrap_err();
        let DiscoverError::RootUnusable { why: got, .. } = &e else {
            panic!("{e}")
        };
        assert!(got.starts_with(why), "{got}");
        let line = e.to_string();
        assert!(!line.contains('\n'));
        assert!(line.contains("pass --sysfs-root DIR"), "{line}");
    }
    let file = d.path().join("file");
    fs::write(&file, "x").unwrap();
    let e = discover(&file, &DiscoveryConfig::default()).unwrap_err();
    assert!(e.to_string().contains("not a directory"), "{e}");
}

#[test]
fn empty_sys_is_an_empty_inventory_with_a_warning() {
    let d = tempfile::TempDir::new().unwrap();
    fs::create_dir(d.path().join("sys")).unwrap();
    let inv = run(d.path());
    assert!(inv.gpus.is_empty() && inv.regions.is_empty() && inv.nodes.is_empty());
    assert_eq!(
        inv.warnings,
        vec![format!(
            "{}/sys/devices/system/node: missing; no NUMA information",
            d.path().display()
        )]
    );
}

#[test]
fn missing_dax_size_makes_the_region_unhealthy_naming_the_file() {
    let d = seed();
    fs::remove_file(d.path().join(DAX).join("size")).unwrap();
    let inv = run(d.path());
    let r = region(&inv, "0000:c1:00.0/dax0.0");
    assert_eq!((r.health, r.size_bytes, r.source), (Health::Unhealthy, 0, Source::Dax));
    let want = format!(
        "{}/sys/bus/dax/devices/dax0.0/size: missing (dax device gone or unreadable)",
        d.path().display()
    );
    assert_eq!(r.reason.as_deref(), Some(want.as_str()));
}

#[test]
fn size_that_is_a_directory_is_unreadable_not_a_panic() {
    let d = seed();
    let size = d.path().join(DAX).join("size");
    fs::remove_file(&size).unwrap();
    fs::create_dir(&size).unwrap();
    let inv = run(d.path());
    let r = region(&inv, "0000:c1:00.0/dax0.0");
    assert_eq!(r.health, Health::Unhealthy);
    let reason = r.reason.as_deref().unwrap();
    assert!(
        reason.starts_with(&format!(
            "{}/sys/bus/dax/devices/dax0.0/size: unreadable: ",
            d.path().display()
        )),
        "{reason}"
    );
}

#[test]
fn vanished_dax_device_dangling_link_is_skipped_with_a_warning() {
    let d = seed();
    // The device folder went away between readdir and the reads: the bus link dangles.
    fs::remove_dir_all(d.path().join(DAX)).unwrap();
    let inv = run(d.path());
    let target = format!(
        "{}/sys/bus/dax/devices/dax0.0/target_node: missing; dax device dax0.0 skipped",
        d.path().display()
    );
    assert!(inv.warnings.contains(&target), "{:#?}", inv.warnings);
    // The SRAT still names the HBM node for the GPU: a region, but unusable.
    let r = region(&inv, "0000:c1:00.0/node1");
    assert_eq!((r.source, r.health), (Source::Srat, Health::Unhealthy));
}

#[test]
fn garbage_target_node_skips_the_device() {
    let d = seed();
    fs::write(d.path().join(DAX).join("target_node"), "one\n").unwrap();
    let inv = run(d.path());
    let w = format!(
        "{}/sys/bus/dax/devices/dax0.0/target_node: \"one\" is not a node number; dax device dax0.0 skipped",
        d.path().display()
    );
    assert!(inv.warnings.contains(&w), "{:#?}", inv.warnings);
    assert!(inv.regions.iter().all(|r| r.source != Source::Dax));
}

#[test]
fn out_of_range_dax_target_node_is_garbage() {
    let d = seed();
    fs::write(d.path().join(DAX).join("target_node"), "70000\n").unwrap();
    let inv = run(d.path());
    assert!(
        inv.warnings
            .iter()
            .any(|w| w.contains("target_node: \"70000\" is not a node number (-1 or 0..65535)")),
        "{:#?}",
        inv.warnings
    );
}

#[test]
fn garbage_gpu_numbers_are_warnings() {
    let d = seed();
    let dev = d.path().join("sys/devices/pci0000:c1/0000:c1:00.0");
    fs::write(dev.join("numa_node"), "zz\n").unwrap();
    fs::write(dev.join("vendor"), "0xfffff\n").unwrap();
    let inv = run(d.path());
    let g = inv.gpu(pci("0000:c1:00.0")).unwrap();
    assert_eq!((g.numa_node, g.vendor.as_str()), (None, ""));
    assert!(
        inv.warnings
            .iter()
            .any(|w| w.ends_with("numa_node: \"zz\" is not a node number; numa_node taken as unknown")),
        "{:#?}",
        inv.warnings
    );
    assert!(
        inv.warnings
            .iter()
            .any(|w| w.ends_with("vendor: 0xfffff is wider than 16 bits")),
        "{:#?}",
        inv.warnings
    );
    // Without numa_node the SRAT Generic Initiator (PCI handle 0000:c1:00.0 -> node 1) still
    // ties the dax device to the GPU.
    let r = region(&inv, "0000:c1:00.0/dax0.0");
    assert_eq!((r.source, r.health), (Source::Dax, Health::Healthy));
    // Without SRAT either, nothing ties dax0.0 to the GPU: no region.
    fs::remove_file(d.path().join("sys/firmware/acpi/tables/SRAT")).unwrap();
    assert!(run(d.path()).regions.is_empty());
}

#[test]
fn garbage_class_skips_the_function() {
    let d = seed();
    fs::write(d.path().join("sys/devices/pci0000:c1/0000:c1:00.0/class"), "display\n").unwrap();
    let inv = run(d.path());
    assert!(inv.gpus.is_empty());
    assert!(
        inv.warnings
            .iter()
            .any(|w| w.ends_with("0000:c1:00.0/class: \"display\" is not a class code; function skipped"))
    );
}

#[test]
fn garbage_meminfo_and_cpulist_are_warnings() {
    let d = seed();
    let n0 = d.path().join("sys/devices/system/node/node0");
    fs::write(n0.join("meminfo"), "Node 0 MemTotal: lots kB\n").unwrap();
    fs::write(n0.join("cpulist"), "0-\n").unwrap();
    fs::write(n0.join("distance"), "10 x\n").unwrap();
    let inv = run(d.path());
    for tail in [
        "meminfo: no readable MemTotal line",
        "cpulist: \"0-\" is not a cpulist",
        "distance: \"10 x\" is not a list of numbers",
    ] {
        assert!(
            inv.warnings.iter().any(|w| w.ends_with(tail)),
            "{tail}: {:#?}",
            inv.warnings
        );
    }
}

#[test]
fn missing_node_files_degrade_gracefully() {
    let d = seed();
    let nd = d.path().join("sys/devices/system/node");
    for f in ["online", "possible", "has_cpu"] {
        fs::remove_file(nd.join(f)).unwrap();
    }
    fs::remove_file(nd.join("node1/distance")).unwrap();
    let inv = run(d.path());
    assert!(
        inv.warnings
            .iter()
            .any(|w| w.ends_with("online: unusable, online nodes taken from the nodeN folders"))
    );
    let r = region(&inv, "0000:c1:00.0/dax0.0");
    // No distance row for node 1: its nearest CPU node is unknown, the region is still usable.
    assert_eq!((r.health, r.cpu_node), (Health::Healthy, None));
}

#[test]
fn out_of_range_numa_status_node_is_skipped() {
    let gpu = pci("0009:01:00.0");
    let host = FixtureHost::new()
        .cpu_node(0, "0-7", 16 * GIB)
        .pci(PciFunction::gpu(gpu).class(0x030200).numa_node(Some(0)))
        .nvidia_numa_status(NvidiaNumaStatus {
            gpu,
            node: 9999,
            status: "online".into(),
            address: 0,
            size: GIB,
        });
    let d = write(&host);
    let inv = run(d.path());
    assert!(inv.regions.is_empty());
    let file = d.path().join("proc/driver/nvidia/gpus/0009:01:00.0/numa_status");
    let nodes = d.path().join("sys/devices/system/node");
    assert_eq!(
        inv.warnings,
        vec![format!(
            "{}: node 9999 is out of range ({}/possible), region skipped",
            file.display(),
            nodes.display()
        )]
    );
}

#[test]
fn garbage_numa_status_is_a_warning() {
    let d = write(&fixture::grace_hopper());
    let file = d.path().join("proc/driver/nvidia/gpus/0009:01:00.0/numa_status");
    fs::write(&file, "Node: one\nStatus: online\n").unwrap();
    let inv = run(d.path());
    assert!(inv.warnings.contains(&format!(
        "{}: Node \"one\" is not a number; entry skipped",
        file.display()
    )));
    // The SRAT still maps the GPU's generic initiators: node 1 has online memory.
    assert_eq!(ids(&inv), vec!["0009:01:00.0/node1"]);
    assert_eq!(inv.regions[0].source, Source::Srat);
}

#[test]
fn truncated_and_checksum_broken_srat_are_ignored_with_a_warning() {
    for (mangle, expect) in [
        (
            Box::new(|b: &mut Vec<u8>| b.truncate(b.len() - 5)) as Box<dyn Fn(&mut Vec<u8>)>,
            "(truncated); SRAT ignored",
        ),
        (Box::new(|b: &mut Vec<u8>| b[60] ^= 0x40), "SRAT checksum is wrong"),
        (
            Box::new(|b: &mut Vec<u8>| b.truncate(20)),
            "shorter than its 48-byte header",
        ),
        (
            Box::new(|b: &mut Vec<u8>| {
                // A subtable claiming to run past the end, checksum fixed up.
                b[49] = 0xff;
                let sum = b.iter().fold(0u8, |a, x| a.wrapping_add(*x));
                b[9] = b[9].wrapping_sub(sum);
            }),
            "does not fit the table",
        ),
    ] {
        let d = write(&fixture::grace_hopper());
        let p = d.path().join("sys/firmware/acpi/tables/SRAT");
        let mut b = fs::read(&p).unwrap();
        mangle(&mut b);
        fs::write(&p, &b).unwrap();
        let inv = run(d.path());
        assert!(
            inv.warnings
                .iter()
                .any(|w| w.starts_with(&p.display().to_string()) && w.contains(expect)),
            "{expect}: {:#?}",
            inv.warnings
        );
        // numa_status still gives the region.
        assert_eq!(ids(&inv), vec!["0009:01:00.0/node1"]);
    }
}

#[test]
fn zeroed_iomem_without_privilege_is_harmless() {
    let d = seed();
    let p = d.path().join("proc/iomem");
    let zeroed: String = fs::read_to_string(&p)
        .unwrap()
        .lines()
        .map(|l| {
            let indent = l.len() - l.trim_start().len();
            let name = l.split_once(" : ").unwrap().1;
            format!("{}00000000-00000000 : {name}\n", " ".repeat(indent))
        })
        .collect();
    fs::write(&p, zeroed).unwrap();
    fs::remove_dir_all(d.path().join("sys/firmware/memmap")).unwrap();
    let inv = run(d.path());
    assert_eq!(inv.warnings, Vec::<String>::new());
    assert_eq!(region(&inv, "0000:c1:00.0/dax0.0").memmap, topology::Memmap::Spm);
}

/// Every file of a fixture host replaced, one at a time, by each kind of garbage: discovery
/// returns an inventory every time.
#[test]
fn garbage_in_any_single_file_never_panics() {
    let garbage: [&[u8]; 7] = [
        b"",
        b"zz\n",
        b"-5\n",
        b"99999999999999999999999\n",
        b"\0\0\0",
        b"0-4294967295\n",
        &[0xff, 0xfe, 0x0a],
    ];
    for host in [fixture::seed_amd_2gpu(), fixture::grace_hopper()] {
        let d = write(&host);
        let mut files = Vec::new();
        collect_files(d.path(), &mut files);
        assert!(files.len() > 50);
        for f in &files {
            let original = fs::read(f).unwrap();
            for g in garbage {
                fs::write(f, g).unwrap();
                discover(d.path(), &DiscoveryConfig::default()).unwrap();
            }
            fs::write(f, original).unwrap();
        }
    }
}

fn collect_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            collect_files(&e.path(), out);
        } else if t.is_file() {
            out.push(e.path());
        }
    }
}

#[test]
fn extreme_addresses_and_lengths_do_not_overflow() {
    // A dax mapping spanning the whole address space, and SRAT ranges whose lengths add past 2^64.
    let d = seed();
    fs::write(d.path().join(DAX).join("mapping0/start"), "0x0\n").unwrap();
    fs::write(d.path().join(DAX).join("mapping0/end"), "0xffffffffffffffff\n").unwrap();
    let srat = topology::fixture::SratBuilder::new()
        .lapic(0, 0)
        .generic_initiator_pci(1, pci("0000:c1:00.0"), true)
        .memory(1, u64::MAX - 1, u64::MAX, topology::fixture::MEM_ENABLED)
        .memory(1, 0, u64::MAX, topology::fixture::MEM_ENABLED)
        .build();
    fs::write(d.path().join("sys/firmware/acpi/tables/SRAT"), srat).unwrap();
    let inv = run(d.path());
    let r = region(&inv, "0000:c1:00.0/dax0.0");
    assert_eq!(r.health, Health::Unhealthy);
    assert!(
        r.reason
            .as_deref()
            .unwrap()
            .contains("mapping*: ranges cover 18446744073709551615 bytes but size says 68719476736")
    );
    fixture::remove_dax_device(d.path(), "dax0.0").unwrap();
    let inv = run(d.path());
    assert_eq!(region(&inv, "0000:c1:00.0/node1").size_bytes, u64::MAX);
}

#[test]
fn a_cpulist_naming_too_many_cpus_is_refused_with_a_warning_naming_the_file() {
    let d = seed();
    // 16 KB of `0-65535,`: each range is valid, together they name 134 million CPUs.
    let amplified = "0-65535,".repeat(2048);
    let gpu_list = d.path().join("sys/bus/pci/devices/0000:c1:00.0/local_cpulist");
    fs::write(&gpu_list, &amplified).unwrap();
    let node_list = d.path().join("sys/devices/system/node/node0/cpulist");
    fs::write(&node_list, &amplified).unwrap();
    let started = std::time::Instant::now();
    let inv = run(d.path());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let refused = "names more than 65536 ids in total (ranges repeated?); list refused";
    for file in [&gpu_list, &node_list] {
        let want = format!("{}: {refused}", file.display());
        assert!(inv.warnings.contains(&want), "{want} not in {:#?}", inv.warnings);
    }
    assert_eq!(inv.nodes[0].cpus, "");
    assert_eq!(ids(&inv), ["0000:c1:00.0/dax0.0"]);
}

#[test]
fn fifos_where_files_are_expected_are_refused_naming_the_path_not_waited_on() {
    let d = seed();
    let class = d.path().join("sys/devices/pci0000:c1/0000:c1:00.0/class");
    make_fifo(&class);
    let iomem = d.path().join("proc/iomem");
    make_fifo(&iomem);
    let root = d.path().to_path_buf();
    let inv = within_10s("discover", move || run(&root));
    let not_regular = "unreadable: a FIFO, not a regular file; only regular files are read";
    let want = [
        format!(
            "{}/sys/bus/pci/devices/0000:c1:00.0/class: {not_regular}; function skipped",
            d.path().display()
        ),
        format!("{}: {not_regular}", iomem.display()),
    ];
    for line in &want {
        assert!(inv.warnings.contains(line), "{line} not in {:#?}", inv.warnings);
    }
    assert!(inv.gpus.is_empty(), "{:?}", inv.gpus);
}

#[test]
fn a_config_file_that_is_a_fifo_is_an_error_naming_it() {
    let d = tempfile::TempDir::new().unwrap();
    let config = d.path().join("hook.yaml");
    make_fifo(&config);
    let path = config.clone();
    let err = within_10s("config load", move || DiscoveryConfig::load(&path)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: unreadable: a FIFO, not a regular file; only regular files are read",
            config.display()
        )
    );
}

#[test]
fn an_unlistable_pci_devices_folder_is_an_error_naming_it_not_an_empty_host() {
    let d = seed();
    let devices = d.path().join("sys/bus/pci/devices");
    fs::rename(&devices, d.path().join("devices.away")).unwrap();
    fs::write(&devices, "").unwrap();
    let e = discover(d.path(), &DiscoveryConfig::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("cannot read {}: Not a directory (os error 20)", devices.display())
    );
    assert_eq!(e.exit_code(), 1);
    // Gone altogether (no PCI in this root) is still an empty scan.
    fs::remove_file(&devices).unwrap();
    assert!(run(d.path()).gpus.is_empty());
}
