//! The `discover --json` contract and the `discover` command's outputs and exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use clap::Parser;
use common::*;
use hbm_shell::ExitStatus;
use topology::cli::{DiscoverArgs, discover_output};
use topology::{Inventory, fixture};

#[derive(Parser)]
struct Cmd {
    #[command(flatten)]
    args: DiscoverArgs,
}

fn args(v: &[&str]) -> DiscoverArgs {
    Cmd::try_parse_from(std::iter::once("discover").chain(v.iter().copied()))
        .unwrap()
        .args
}

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/hosts/seed-amd")
}

#[test]
fn defaults_are_root_slash_table_no_config() {
    let a = args(&[]);
    assert_eq!((a.json, a.sysfs_root, a.config), (false, PathBuf::from("/"), None));
}

#[test]
fn json_holds_the_documented_fields_and_round_trips() {
    let root = sample();
    let out = discover_output(&args(&["--json", "--sysfs-root", root.to_str().unwrap()])).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let r = &v["regions"][0];
    for key in [
        "id",
        "gpu",
        "host_node",
        "size_bytes",
        "source",
        "memmap",
        "dax",
        "cpu_node",
        "health",
        "reason",
        "online",
    ] {
        assert!(r.get(key).is_some(), "region lacks {key}: {r}");
    }
    assert_eq!(r["id"], "0000:41:00.0/dax0.0");
    assert_eq!(r["gpu"], "0000:41:00.0");
    assert_eq!(r["host_node"], 2);
    assert_eq!(r["size_bytes"], 68_719_476_736u64);
    assert_eq!(r["source"], "dax");
    assert_eq!(r["memmap"], "spm");
    assert_eq!(r["dax"], "/dev/dax0.0");
    assert_eq!(r["cpu_node"], 0);
    assert_eq!(r["health"], "healthy");
    assert!(r["reason"].is_null());
    let g = &v["gpus"][1];
    for key in ["address", "vendor", "device", "driver", "iommu_group", "numa_node"] {
        assert!(g.get(key).is_some(), "gpu lacks {key}: {g}");
    }
    assert_eq!(
        (g["address"].as_str(), g["driver"].as_str(), g["iommu_group"].as_u64()),
        (Some("0000:c1:00.0"), Some("vfio-pci"), Some(56))
    );
    assert_eq!(v["schema_version"], 1);
    let back = Inventory::from_json(&out).unwrap();
    assert_eq!(back, run(&root));
}

#[test]
fn table_lists_gpus_and_regions() {
    let root = sample();
    let out = discover_output(&args(&["--sysfs-root", root.to_str().unwrap()])).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("sysfs root: {}", root.display()));
    assert_eq!(
        lines[2],
        "GPU           ID         CLASS   DRIVER    IOMMU  NUMA  CPU-NODE  REGIONS"
    );
    assert_eq!(
        lines[3],
        "0000:41:00.0  1002:74a1  120000  vfio-pci  24     2     0         1"
    );
    assert_eq!(
        lines[6],
        "REGION               NODE  SIZE    SOURCE  MEMMAP  DAX          ONLINE  CPU-NODE  HEALTH"
    );
    assert_eq!(
        lines[7],
        "0000:41:00.0/dax0.0  2     64 GiB  dax     spm     /dev/dax0.0  no      0         healthy"
    );
    assert_eq!(
        lines[8],
        "0000:c1:00.0/dax1.0  3     64 GiB  dax     spm     /dev/dax1.0  no      1         healthy"
    );
    assert_eq!(lines.len(), 9);
}

#[test]
fn table_shows_unhealthy_reasons_and_warnings() {
    let d = write(&fixture::seed_amd());
    std::fs::remove_file(d.path().join("sys/devices/platform/hmem.0/dax0.0/size")).unwrap();
    std::fs::write(d.path().join("sys/devices/system/node/node0/cpulist"), "x\n").unwrap();
    let out = discover_output(&args(&["--sysfs-root", d.path().to_str().unwrap()])).unwrap();
    assert!(out.contains("UNHEALTHY: "), "{out}");
    assert!(out.contains("\nwarnings:\n  - "), "{out}");
}

#[test]
fn unusable_root_and_bad_config_exit_2_with_one_line() {
    let d = tempfile::TempDir::new().unwrap();
    let error = discover_output(&args(&["--sysfs-root", d.path().to_str().unwrap()])).unwrap_err();
    assert_eq!(error.exit_code(), 2);
    let line = hbm_shell::one_line(&format!("discover: {error}"));
    assert_eq!(
        line,
        format!(
            "discover: sysfs root {} is unusable: it has no sys/ folder; pass --sysfs-root DIR naming a directory that holds sys/ (and proc/)",
            d.path().display()
        )
    );
    let cfg = d.path().join("c.yaml");
    std::fs::write(&cfg, "discovery:\n  gpus: 7\n").unwrap();
    let root = sample();
    let error = discover_output(&args(&[
        "--sysfs-root",
        root.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]))
    .unwrap_err();
    assert_eq!(error.exit_code(), 2);
    let line = hbm_shell::one_line(&format!("discover: {error}"));
    assert!(
        line.starts_with(&format!(
            "discover: {}: invalid discovery configuration: ",
            cfg.display()
        )),
        "{line}"
    );
    assert!(!line.contains('\n'));
}

#[test]
fn config_file_with_other_sections_is_accepted() {
    let d = tempfile::TempDir::new().unwrap();
    let cfg = d.path().join("c.yaml");
    std::fs::write(
        &cfg,
        "resourceName: amd.com/gpu-hbm\ndiscovery:\n  gpus:\n    - gpu: \"0000:41:00.0\"\n      nodes: [2]\n",
    )
    .unwrap();
    let root = sample();
    let out = discover_output(&args(&[
        "--json",
        "--sysfs-root",
        root.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]))
    .unwrap();
    let inv = Inventory::from_json(&out).unwrap();
    // Node 2's one dax device is attached to the configured node region.
    assert_eq!(ids(&inv), vec!["0000:41:00.0/node2", "0000:c1:00.0/dax1.0"]);
    assert_eq!(inv.regions[0].dax.as_deref(), Some("/dev/dax0.0"));
    assert_eq!(inv.regions[0].source, topology::Source::Config);
}

#[test]
fn discovery_output_of_every_preset_reads_back() {
    for host in [
        fixture::seed_amd(),
        fixture::seed_amd_2gpu(),
        fixture::grace_hopper(),
        fixture::cxl_expander(),
        fixture::no_hbm(),
    ] {
        let d = write(&host);
        let inv = run(d.path());
        assert_eq!(Inventory::from_json(&inv.to_json()).unwrap(), inv);
    }
    // An absent configured GPU is an unhealthy region whose GPU is not in gpus[]: accepted.
    let d = write(&fixture::seed_amd());
    let config = topology::DiscoveryConfig::from_yaml(
        "discovery:\n  gpus:\n    - gpu: \"0000:e1:00.0\"\n      nodes: [1]\n",
        "test.yaml",
    )
    .unwrap();
    let inv = topology::discover(d.path(), &config).unwrap();
    assert!(
        inv.regions.iter().any(|r| r.gpu == pci("0000:e1:00.0")),
        "{:?}",
        inv.regions
    );
    assert_eq!(Inventory::from_json(&inv.to_json()).unwrap(), inv);
}

#[test]
fn a_document_with_bad_fields_is_refused_naming_the_field() {
    let d = write(&fixture::seed_amd_2gpu());
    let good = run(d.path());
    type Edit = fn(&mut Inventory);
    let cases: [(Edit, &str); 9] = [
        (
            |inv| inv.regions[0].dax = Some("/dev/dax1.0,size=1;sp-mem:cell=0".into()),
            "regions[0].dax: \"/dev/dax1.0,size=1;sp-mem:cell=0\" is not a device-dax path like /dev/dax0.0",
        ),
        (
            |inv| inv.regions[1].dax = Some("dax1.0".into()),
            "regions[1].dax: \"dax1.0\" is not a device-dax path like /dev/dax0.0",
        ),
        (
            |inv| inv.regions[1].id = inv.regions[0].id.clone(),
            "regions[1].id: \"0000:41:00.0/dax0.0\" is listed twice; region ids are unique",
        ),
        (
            |inv| inv.regions[0].dax_align = Some(0),
            "regions[0].dax_align: 0 is not a power of two greater than 0",
        ),
        (
            |inv| inv.regions[0].dax_align = Some(3 << 20),
            "regions[0].dax_align: 3145728 is not a power of two greater than 0",
        ),
        (
            |inv| inv.regions[0].size_bytes = 0,
            "regions[0].size_bytes: 0 in a healthy region",
        ),
        (
            |inv| {
                inv.gpus.remove(0);
            },
            "regions[0].gpu: 0000:41:00.0 is not in gpus[] (a healthy region's GPU is present)",
        ),
        (
            |inv| inv.regions[0].id = "0000:c1:00.0/dax0.0".into(),
            "regions[0].id: \"0000:c1:00.0/dax0.0\" is not <gpu>/<node or dax device> for gpu 0000:41:00.0",
        ),
        (
            |inv| inv.gpus[1].vendor = "1002;x".into(),
            "gpus[1].vendor: \"1002;x\" is not 4 lowercase hex digits",
        ),
    ];
    for (edit, want) in cases {
        let mut inv = good.clone();
        edit(&mut inv);
        let err = Inventory::from_json(&inv.to_json()).unwrap_err();
        assert_eq!(err.to_string(), want);
    }
    let mut inv = good.clone();
    inv.schema_version = 2;
    let err = Inventory::from_json(&inv.to_json()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "schema_version: 2 is not 1, the version this build reads"
    );
}
