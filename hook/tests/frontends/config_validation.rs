//! One validation of the config's `discovery` section for every command: a mapping that names
//! neither nodes nor dax devices makes `discover`, `rewrite`, `doctor`, the libvirt hook's
//! `prepare`, the shim's `onDefineDomain`, the sidecar and the QEMU adapter exit 2 with the same
//! message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::kubevirt::{hbm_hook, vmi_json};
use crate::common::libvirt_hook::{domain_xml, inventory, run_hook, write_host};

const SAMPLE: &str = "../examples/domains/gpu-vm.xml";

fn run(args: &[&str]) -> Output {
    Command::new(hbm_hook())
        .args(args)
        .env_remove("HBM_LOG")
        .env_remove("HBM_QEMU_EMULATOR")
        .env_remove("HBM_PROBE_CACHE_DIR")
        .output()
        .unwrap()
}

/// Runs `args`, killing the process if it has not exited after 20 s (a sidecar that starts
/// serving instead of refusing its config).
fn run_bounded(args: &[&str]) -> Output {
    let mut child = Command::new(hbm_hook())
        .args(args)
        .env_remove("HBM_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Asserts exit 2 and exactly one stderr line, `<prefix>: <message>`.
fn assert_refused(what: &str, out: &Output, prefix: &str, message: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{what}: {err}");
    assert_eq!(err, format!("{prefix}: {message}\n"), "{what}");
    assert!(out.stdout.is_empty(), "{what}: nothing on stdout");
}

#[test]
fn a_mapping_without_nodes_or_dax_is_refused_by_every_command() {
    let host = write_host();
    let root = host.path().to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hook.yaml");
    std::fs::write(
        &config,
        format!(
            "sysfs_root: {root}\nclaims:\n  dir: {}\ndiscovery:\n  gpus:\n    - gpu: \"0000:c1:00.0\"\n",
            dir.path().join("claims").display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let message = format!(
        "{cfg}: invalid discovery configuration: discovery.gpus: 0000:c1:00.0 names neither nodes nor dax devices"
    );

    let out = run(&["discover", "--sysfs-root", root, "--config", cfg]);
    assert_refused("discover", &out, "discover", &message);
    let out = run(&["rewrite", "--sysfs-root", root, "--config", cfg, "--in", SAMPLE]);
    assert_refused("rewrite", &out, "hbm-hook rewrite: error", &message);
    let out = run(&["doctor", "--sysfs-root", root, "--config", cfg]);
    assert_refused("doctor", &out, "hbm-hook doctor", &message);
    let vmi = String::from_utf8(vmi_json("cfg", &[])).unwrap();
    let domain = std::fs::read_to_string(SAMPLE).unwrap();
    let out = run(&["onDefineDomain", "--vmi", &vmi, "--domain", &domain, "--config", cfg]);
    assert_refused("onDefineDomain", &out, "hbm-hook onDefineDomain", &message);
    let sockets = dir.path().join("hooks");
    std::fs::create_dir(&sockets).unwrap();
    let out = run_bounded(&[
        "kubevirt-sidecar",
        "--socket-dir",
        sockets.to_str().unwrap(),
        "--config",
        cfg,
    ]);
    assert_refused("kubevirt-sidecar", &out, "hbm-hook kubevirt-sidecar", &message);
    let out = run(&["qemu", "--config", cfg, "--", "-version"]);
    assert_refused("qemu", &out, "hbm-qemu", &message);

    let xml = domain_xml("cfg-check", Path::new("/dev/null"), &inventory(host.path())).replacen(
        "<name>",
        "<uuid>6f1c52d2-3a7c-4a57-9d0e-0c0000000003</uuid>\n  <name>",
        1,
    );
    let out = run_hook(
        &hbm_hook(),
        &["libvirt", "--config", cfg],
        ["cfg-check", "prepare", "begin", "-"],
        xml.as_bytes(),
    );
    assert_refused("libvirt prepare", &out, "hbm-passthrough", &message);
    assert!(!dir.path().join("claims").exists(), "nothing claimed");
}

/// A FIFO named as the config file or the topology file is refused at once (exit 2, one line),
/// never waited on; `/dev/null` still means "no settings".
#[test]
fn a_fifo_as_config_or_topology_is_refused_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let fifo = fifo.to_str().unwrap();
    let sample = crate::common::repo_root().join("examples");
    let host = sample.join("hosts/seed-amd");
    let domain = sample.join("domains/gpu-vm.xml");
    let (host, domain) = (host.to_str().unwrap(), domain.to_str().unwrap());
    let as_config = run_bounded(&["rewrite", "--sysfs-root", host, "--config", fifo, "--in", domain]);
    assert_refused(
        "rewrite --config FIFO",
        &as_config,
        "hbm-hook rewrite",
        &format!("error: config {fifo}: cannot read: a FIFO, not a regular file; only regular files are read"),
    );
    let as_topology = run_bounded(&["rewrite", "--topology", fifo, "--config", "/dev/null", "--in", domain]);
    assert_refused(
        "rewrite --topology FIFO",
        &as_topology,
        "hbm-hook rewrite",
        &format!("error: topology {fifo}: cannot read: a FIFO, not a regular file; only regular files are read"),
    );
    let doctor = run_bounded(&["doctor", "--config", fifo, "--sysfs-root", host]);
    assert_refused(
        "doctor --config FIFO",
        &doctor,
        "hbm-hook doctor",
        &format!("config {fifo}: cannot read: a FIFO, not a regular file; only regular files are read"),
    );
    let null_config = run(&["rewrite", "--sysfs-root", host, "--config", "/dev/null", "--in", domain]);
    assert_eq!(null_config.status.code(), Some(0), "{null_config:?}");
}
