//! Explicit configuration: first in precedence, loaded from YAML under `discovery:`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use topology::fixture;
use topology::{DiscoveryConfig, GpuMapping, Health, Source, discover};

fn cfg(yaml: &str) -> DiscoveryConfig {
    DiscoveryConfig::from_yaml(yaml, "test.yaml").unwrap()
}

#[test]
fn config_overrides_other_sources_for_its_gpu() {
    let d = write(&fixture::seed_amd_2gpu());
    let c = cfg("discovery:\n  gpus:\n    - gpu: \"0000:41:00.0\"\n      dax: [dax0.0]\n");
    let inv = discover(d.path(), &c).unwrap();
    assert_eq!(ids(&inv), vec!["0000:41:00.0/dax0.0", "0000:c1:00.0/dax1.0"]);
    let r = region(&inv, "0000:41:00.0/dax0.0");
    assert_eq!(
        (r.source, r.host_node, r.size_bytes, r.health),
        (Source::Config, Some(2), 64 * GIB, Health::Healthy)
    );
    assert_eq!(region(&inv, "0000:c1:00.0/dax1.0").source, Source::Dax);
}

#[test]
fn config_node_mapping_takes_a_node_from_another_gpu() {
    // Say node 3 (c1's HBM) belongs to 41 instead: config wins, c1's dax claim is dropped.
    let d = write(&fixture::seed_amd_2gpu());
    let c = DiscoveryConfig {
        gpus: vec![GpuMapping {
            gpu: pci("0000:41:00.0"),
            nodes: vec![3],
            dax: vec![],
        }],
    };
    let inv = discover(d.path(), &c).unwrap();
    assert_eq!(ids(&inv), vec!["0000:41:00.0/node3"]);
    let r = &inv.regions[0];
    // Node 3's memory sits in dax1.0 (the only device on it): attached, SPM, 64 GiB from SRAT.
    assert_eq!(
        (r.source, r.size_bytes, r.dax.as_deref(), r.memmap, r.health),
        (
            Source::Config,
            64 * GIB,
            Some("/dev/dax1.0"),
            topology::Memmap::Spm,
            Health::Healthy
        )
    );
    assert_eq!(
        inv.warnings,
        vec!["node 3: dax claim of 0000:c1:00.0 overridden by the discovery config".to_string()]
    );
}

#[test]
fn config_naming_absent_things_gives_unhealthy_regions() {
    let d = write(&fixture::seed_amd());
    let c = cfg(
        "discovery:\n  gpus:\n    - gpu: \"0000:c1:00.0\"\n      dax: [dax9.0]\n    - gpu: \"0000:99:00.0\"\n      nodes: [0]\n",
    );
    let inv = discover(d.path(), &c).unwrap();
    let r = region(&inv, "0000:c1:00.0/dax9.0");
    assert_eq!((r.host_node, r.health), (None, Health::Unhealthy));
    assert_eq!(
        r.reason.as_deref(),
        Some(
            format!(
                "{}/sys/bus/dax/devices/dax9.0: missing (dax device named in the discovery config)",
                d.path().display()
            )
            .as_str()
        )
    );
    let r = region(&inv, "0000:99:00.0/node0");
    assert_eq!(r.health, Health::Unhealthy);
    assert_eq!(
        r.reason.as_deref(),
        Some(
            format!(
                "GPU 0000:99:00.0 named in the discovery config is not under {}/sys/bus/pci/devices",
                d.path().display()
            )
            .as_str()
        )
    );
}

#[test]
fn config_round_trips_through_yaml() {
    let c = DiscoveryConfig {
        gpus: vec![GpuMapping {
            gpu: pci("0000:c1:00.0"),
            nodes: vec![2, 3],
            dax: vec!["dax0.0".into()],
        }],
    };
    let yaml = serde_yaml_ng::to_string(&serde_yaml_ng::Mapping::from_iter([(
        serde_yaml_ng::Value::from("discovery"),
        serde_yaml_ng::to_value(&c).unwrap(),
    )]))
    .unwrap();
    assert_eq!(DiscoveryConfig::from_yaml(&yaml, "x").unwrap(), c);
}

#[test]
fn config_file_errors_name_the_file() {
    let d = tempfile::TempDir::new().unwrap();
    let p = d.path().join("c.yaml");
    std::fs::write(
        &p,
        "discovery:\n  gpus:\n    - gpu: \"0000:c1:00.0\"\n      nodez: [1]\n",
    )
    .unwrap();
    let e = DiscoveryConfig::load(&p).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}: invalid discovery configuration: ", p.display())),
        "{e}"
    );
    assert!(e.contains("nodez"), "{e}");
    let e = DiscoveryConfig::load(&d.path().join("absent.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.yaml: unreadable"), "{e}");
}

#[test]
fn configured_node_out_of_range_is_unhealthy() {
    let d = write(&fixture::seed_amd());
    let c = cfg("discovery:\n  gpus:\n    - gpu: \"0000:c1:00.0\"\n      nodes: [50]\n");
    let inv = discover(d.path(), &c).unwrap();
    assert_eq!(ids(&inv), vec!["0000:c1:00.0/node50"]);
    let nodes = d.path().join("sys/devices/system/node");
    assert_eq!(
        inv.regions[0].reason.as_deref(),
        Some(
            format!(
                "node 50 has no memory ({0}/node50/meminfo) and no SRAT range gives its size; node 50 is out of range ({0}/possible)",
                nodes.display()
            )
            .as_str()
        )
    );
}
