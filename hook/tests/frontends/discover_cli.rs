//! `hbm-hook discover` as a user runs it: the README's sample-host command, JSON output, and the
//! exit code / one-line error for an unusable root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

fn sample_host() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/hosts/seed-amd")
}

#[test]
fn discover_on_the_sample_host_prints_both_regions() {
    let out = Command::new(env!("CARGO_BIN_EXE_hbm-hook"))
        .args(["discover", "--sysfs-root"])
        .arg(sample_host())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("0000:41:00.0/dax0.0  2     64 GiB  dax     spm     /dev/dax0.0  no      0         healthy"),
        "{text}"
    );
    assert!(
        text.contains("0000:c1:00.0/dax1.0  3     64 GiB  dax     spm     /dev/dax1.0  no      1         healthy"),
        "{text}"
    );
}

#[test]
fn discover_json_parses_back_into_an_inventory() {
    let out = Command::new(env!("CARGO_BIN_EXE_hbm-hook"))
        .args(["discover", "--json", "--sysfs-root"])
        .arg(sample_host())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let inv = topology::Inventory::from_json(std::str::from_utf8(&out.stdout).unwrap()).unwrap();
    let ids: Vec<&str> = inv.regions.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, vec!["0000:41:00.0/dax0.0", "0000:c1:00.0/dax1.0"]);
}

#[test]
fn discover_on_an_unusable_root_exits_2_with_one_line() {
    let d = tempfile::TempDir::new().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hbm-hook"))
        .args(["discover", "--sysfs-root"])
        .arg(d.path().join("missing"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "discover: sysfs root {}/missing is unusable: cannot stat it",
            d.path().display()
        )),
        "{err}"
    );
}
