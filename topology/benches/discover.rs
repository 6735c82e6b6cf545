//! Discovery cost: each fixture host, the real corpus snapshots, and generated trees with
//! 2,500 / 5,000 / 10,000 PCI functions over 64 NUMA nodes (to show cost is linear in devices;
//! the generated trees hold `proc/bus/pci/devices`, so only the GPUs' `class` files are read).
//!
//! cargo bench -p topology --bench discover -- --warm-up-time 1 --measurement-time 3

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;

use criterion::{Criterion, criterion_group, criterion_main};
use tempfile::TempDir;
use topology::fixture::{self, FixtureHost};
use topology::{DiscoveryConfig, discover};

/// Trees go to tmpfs (`/dev/shm`) when there is one: sysfs is memory-backed too, and a disk
/// file system would measure the disk cache instead.
fn written(host: &FixtureHost) -> TempDir {
    let shm = Path::new("/dev/shm");
    let d = if shm.is_dir() {
        TempDir::new_in(shm)
    } else {
        TempDir::new()
    };
    let d = d.unwrap_or_else(|e| panic!("temp dir: {e}"));
    host.write_to(d.path())
        .unwrap_or_else(|e| panic!("writing fixture: {e}"));
    d
}

/// Unpacks a corpus snapshot (tests/corpus/sysfs); `None` otherwise.
fn corpus(tarball: &str, top: &str) -> Option<(TempDir, PathBuf)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/corpus/sysfs")
        .join(tarball);
    if !src.exists() {
        eprintln!("bench: {} not found, snapshot skipped", src.display());
        return None;
    }
    let shm = Path::new("/dev/shm");
    let d = if shm.is_dir() {
        TempDir::new_in(shm)
    } else {
        TempDir::new()
    }
    .ok()?;
    let ok = Command::new("tar")
        .arg("xf")
        .arg(&src)
        .arg("-C")
        .arg(d.path())
        .status()
        .ok()?
        .success();
    let root = d.path().join(top);
    ok.then_some((d, root))
}

fn bench(c: &mut Criterion) {
    let cfg = DiscoveryConfig::default();
    let mut g = c.benchmark_group("discover");
    for (name, host) in [
        ("seed_amd", fixture::seed_amd()),
        ("seed_amd_2gpu", fixture::seed_amd_2gpu()),
        ("grace_hopper", fixture::grace_hopper()),
        ("cxl_expander", fixture::cxl_expander()),
        ("no_hbm", fixture::no_hbm()),
    ] {
        let d = written(&host);
        g.bench_function(name, |b| b.iter(|| black_box(discover(d.path(), &cfg))));
    }
    for (name, tarball, top) in [
        ("corpus_emulated_spm_host", "emulated-spm-host-1gpu.tar.gz", "host"),
        ("corpus_power9_v100", "nvidiagpunumanodes.tar.bz2", "nvidiagpunumanodes"),
        (
            "corpus_hetero_tiers",
            "fakeheteromemtiers.tar.bz2",
            "fakeheteromemtiers",
        ),
        (
            "corpus_nvdimm_137_pci",
            "32em64t-2n8c+dax+nvme+mic+dimms.tar.bz2",
            "32em64t-2n8c+1mic",
        ),
    ] {
        if let Some((_keep, root)) = corpus(tarball, top) {
            g.bench_function(name, |b| b.iter(|| black_box(discover(&root, &cfg))));
        }
    }
    for devices in [2_500u32, 5_000, 10_000] {
        let d = written(&fixture::large_host(devices, 64));
        g.bench_function(format!("generated_{devices}_pci_64_nodes"), |b| {
            b.iter(|| black_box(discover(d.path(), &cfg)))
        });
        // What discovery cost before it used proc/bus/pci/devices: reading every function's
        // `class` file, nothing else.
        let classes: Vec<PathBuf> = std::fs::read_dir(d.path().join("sys/bus/pci/devices"))
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path().join("class")).collect())
            .unwrap_or_default();
        g.bench_function(format!("floor_read_{devices}_class_files"), |b| {
            b.iter(|| {
                for p in &classes {
                    black_box(std::fs::read(p).ok());
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
