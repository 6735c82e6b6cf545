//! Benchmarks of the pure domain-XML rewriter, in process.
//!
//! - `rewrite/<file>`: one rewrite of each KubeVirt corpus definition (5-15 KB) for a host where its
//!   GPU has a 64 GiB region (target: under 50 µs each); `rewrite-again/<file>` rewrites that output
//!   again (the undo + re-apply path a migration takes).
//!
//! Run: `cargo bench -p hbm-rewrite --bench rewrite -- --warm-up-time 1 --measurement-time 3`
//! (the whole `hbm-hook rewrite` process: `cargo bench -p hook --bench rewrite_process`).

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use hbm_rewrite::{Dialect, RewriteOptions, pci_hostdevs, rewrite};
use topology::Inventory;

fn corpus() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus/kubevirt");
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
        inv.regions.push(topology::fixture::region(gpu, 2, 64 << 30));
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

criterion_group!(benches, in_process);
criterion_main!(benches);
