//! Benchmarks of the domain-XML rewriter.
//!
//! - `rewrite/<file>`: one in-process rewrite of each KubeVirt corpus definition (5-15 KB) for a
//!   host where its GPU has a 64 GiB region (target: under 50 µs each); `rewrite-again/<file>`
//!   rewrites that output again (the undo + re-apply path a migration takes).
//! - `process/hbm-hook-rewrite`: a whole `hbm-hook rewrite --topology FILE --in FILE --out FILE`
//!   process (parse the topology file, rewrite, write atomically; target under 3 ms wall).
//!
//! Run: `cargo bench -p hook --bench rewrite -- --warm-up-time 1 --measurement-time 3`

use std::path::PathBuf;
use std::process::Command;

use criterion::{Criterion, criterion_group, criterion_main};
use hbm_hook::rewrite::{Dialect, RewriteOptions, pci_hostdevs, rewrite};
use topology::{Health, Inventory, Memmap, Region, Source};

fn corpus() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/kubevirt");
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let p = e.path();
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !name.ends_with(".xml") {
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(&p)
                && pci_hostdevs(&text).is_ok()
            {
                out.push((name, text));
            }
        }
    }
    out.sort();
    out
}

fn inventory_for(xml: &str) -> Inventory {
    let mut inv = Inventory::empty("/");
    for gpu in pci_hostdevs(xml).unwrap_or_default() {
        inv.regions.push(Region {
            id: format!("{gpu}/node2"),
            gpu,
            host_node: Some(2),
            size_bytes: 64 << 30,
            source: Source::Srat,
            memmap: Memmap::Spm,
            dax: None,
            dax_align: None,
            base: None,
            online: true,
            cpu_node: Some(0),
            health: Health::Healthy,
            reason: None,
        });
    }
    inv
}

fn in_process(c: &mut Criterion) {
    let options = RewriteOptions {
        dialect: Dialect::SpMem,
        ..RewriteOptions::default()
    };
    for (name, xml) in corpus() {
        let inv = inventory_for(&xml);
        c.bench_function(&format!("rewrite/{name}"), |b| b.iter(|| rewrite(&xml, &inv, &options)));
        if let Ok(first) = rewrite(&xml, &inv, &options)
            && first.changed
        {
            c.bench_function(&format!("rewrite-again/{name}"), |b| {
                b.iter(|| rewrite(&first.xml, &inv, &options))
            });
        }
    }
}

fn whole_process(c: &mut Criterion) {
    let Ok(dir) = tempfile::tempdir() else { return };
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let input = manifest.join("../../shared/corpus/kubevirt/numa-passthrough-gpu.rendered.xml");
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

criterion_group!(benches, in_process, whole_process);
criterion_main!(benches);
