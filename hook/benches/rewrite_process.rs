//! Benchmark of a whole `hbm-hook rewrite --topology FILE --in FILE --out FILE` process (parse
//! the topology file, rewrite, write atomically; target under 3 ms wall). The rewriter alone is
//! benchmarked in process by `cargo bench -p hbm-rewrite --bench rewrite`.
//!
//! Run: `cargo bench -p hook --bench rewrite_process -- --warm-up-time 1 --measurement-time 3`

use std::path::PathBuf;
use std::process::Command;

use criterion::{Criterion, criterion_group, criterion_main};
use hbm_rewrite::pci_hostdevs;
use topology::Inventory;

fn inventory_for(xml: &str) -> Inventory {
    let mut inv = Inventory::empty("/");
    for gpu in pci_hostdevs(xml).unwrap_or_default() {
        inv.regions.push(topology::fixture::region(gpu, 2, 64 << 30));
    }
    inv
}

fn whole_process(c: &mut Criterion) {
    let Ok(dir) = tempfile::tempdir() else { return };
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let input = manifest.join("../tests/corpus/kubevirt/numa-passthrough-gpu.rendered.xml");
    let Ok(xml) = std::fs::read_to_string(&input) else {
        return;
    };
    let topology = dir.path().join("topology.json");
    if std::fs::write(&topology, inventory_for(&xml).to_json()).is_err() {
        return;
    }
    let out = dir.path().join("out.xml");
    let bin = env!("CARGO_BIN_EXE_hbm-hook");
    c.bench_function("process/hbm-hook-rewrite", |b| {
        b.iter(|| {
            let status = Command::new(bin)
                .arg("rewrite")
                .arg("--topology")
                .arg(&topology)
                .arg("--dialect")
                .arg("sp-mem")
                .arg("--config")
                .arg("/dev/null")
                .arg("--in")
                .arg(&input)
                .arg("--out")
                .arg(&out)
                .stderr(std::process::Stdio::null())
                .status();
            assert!(status.is_ok_and(|s| s.success()));
        })
    });
}

criterion_group!(benches, whole_process);
criterion_main!(benches);
