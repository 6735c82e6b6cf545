//! Writes one of the fixture presets as a sysfs/procfs tree, e.g. to recreate the bundled sample:
//!
//! ```text
//! cargo run -p topology --features fixture --example write-fixture-host -- seed-amd-2gpu examples/hosts/seed-amd
//! ```
//!
//! Presets: seed-amd, seed-amd-2gpu, grace-hopper, cxl-expander, no-hbm, large (10,000 PCI
//! functions over 64 NUMA nodes, the discovery benchmark's biggest tree).
//! Exit codes: 0 written, 2 bad arguments, 1 write failed.

use std::path::Path;
use std::process::ExitCode;

use topology::fixture;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [preset, dir] = args.as_slice() else {
        eprintln!("usage: write-fixture-host PRESET DIR (presets: {})", PRESETS.join(", "));
        return ExitCode::from(2);
    };
    let host = match preset.as_str() {
        "seed-amd" => fixture::seed_amd(),
        "seed-amd-2gpu" => fixture::seed_amd_2gpu(),
        "grace-hopper" => fixture::grace_hopper(),
        "cxl-expander" => fixture::cxl_expander(),
        "no-hbm" => fixture::no_hbm(),
        "large" => fixture::large_host(10_000, 64),
        other => {
            eprintln!(
                "write-fixture-host: unknown preset {other:?}; use one of {}",
                PRESETS.join(", ")
            );
            return ExitCode::from(2);
        }
    };
    let dir = Path::new(dir);
    if dir.exists() {
        eprintln!(
            "write-fixture-host: {} exists; remove it first (the tree must be written fresh)",
            dir.display()
        );
        return ExitCode::from(2);
    }
    match host.write_to(dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("write-fixture-host: writing {} failed: {e}", dir.display());
            ExitCode::from(1)
        }
    }
}

const PRESETS: [&str; 6] = [
    "seed-amd",
    "seed-amd-2gpu",
    "grace-hopper",
    "cxl-expander",
    "no-hbm",
    "large",
];
