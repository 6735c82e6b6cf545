//! `hbm-hook verify-guest` on a real guest's sysfs/procfs mirror (`tests/corpus/sysfs/
//! emulated-spm-host-1gpu.tar.gz`: a QEMU guest with a 512 MiB soft-reserved HBM node, a Generic
//! Initiator and a virtio-gpu stand-in behind a pcie-expander-bus naming that node), and on a
//! guest without GPU.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use crate::common::repo_root;

fn unpack_snapshot() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let tarball = repo_root().join("tests/corpus/sysfs/emulated-spm-host-1gpu.tar.gz");
    let status = Command::new("tar")
        .arg("xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "tar xzf {}", tarball.display());
    dir
}

fn verify_guest(root: &std::path::Path, json: bool) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hbm-hook"));
    command.arg("verify-guest").arg("--sysfs-root").arg(root);
    if json {
        command.arg("--json");
    }
    command.output().unwrap()
}

#[test]
fn the_emulated_spm_guest_has_its_hbm() {
    let dir = unpack_snapshot();
    let root = dir.path().join("host");
    let text = verify_guest(&root, false);
    assert_eq!(text.status.code(), Some(0), "{text:?}");
    assert_eq!(
        String::from_utf8_lossy(&text.stdout),
        "0000:d9:00.0 class 038000 node 2 online cpu-less generic-initiator hbm 512 MiB (spm) ok\n  \
         range 0000:d9:00.0/dax0.0 512 MiB Spm base 0x20000000 dax /dev/dax0.0 (dax)\nevery GPU has its HBM\n"
    );
    let json = verify_guest(&root, true);
    assert_eq!(json.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let gpu = &report["gpus"][0];
    assert_eq!(
        gpu["node"]["srat_ranges"],
        serde_json::json!([{"base": 536870912u64, "length": 536870912u64}])
    );
    assert_eq!(gpu["hbm_bytes"], 536870912u64);
    assert_eq!(gpu["problems"], serde_json::json!([]));
}

#[test]
fn a_guest_without_gpu_fails_and_an_unreadable_root_is_bad_input() {
    let dir = unpack_snapshot();
    let root = dir.path().join("host");
    std::fs::remove_dir_all(root.join("sys/bus/pci/devices/0000:d9:00.0")).unwrap();
    let out = verify_guest(&root, false);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "no GPU-class PCI function (class 03xxxx or 1200xx) in this guest\na GPU lacks its HBM\n"
    );
    let missing = verify_guest(&dir.path().join("nothing-here"), false);
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.starts_with("hbm-hook verify-guest: sysfs root "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
