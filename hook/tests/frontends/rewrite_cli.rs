#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `hbm-hook rewrite` as a process: input/output paths, atomic `--out`, the config file, the
//! stderr summary and the documented exit codes (0 ok, 1 I/O, 2 bad input, 3 cannot satisfy).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_hbm-hook");
const SAMPLE: &str = "../examples/domains/gpu-vm.xml";
const GOLDEN: &str = include_str!("../../../examples/domains/gpu-vm.rewritten.xml");
const HOST: &str = "../examples/hosts/seed-amd";

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("HBM_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn topology_file(dir: &Path) -> String {
    let out = Command::new(BIN)
        .args(["discover", "--sysfs-root", HOST, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let path = dir.join("seed-amd.json");
    std::fs::write(&path, &out.stdout).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn readme_main_job_rewrites_the_sample_against_the_sample_host() {
    let o = run(&["rewrite", "--sysfs-root", HOST, "--in", SAMPLE], None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(String::from_utf8(o.stdout.clone()).unwrap(), GOLDEN);
    let err = stderr(&o);
    assert!(
        err.starts_with("hbm-hook rewrite: cell 0: 8 GiB with all vCPUs (the existing memory)\n"),
        "{err}"
    );
    assert!(
        err.ends_with("hbm-hook rewrite: guest kernel command line += memmap=64G%10G-1+0xefffffff\n"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 8);
}

#[test]
fn stdin_to_stdout_with_a_topology_file_and_idempotent_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let topo = topology_file(dir.path());
    let input = std::fs::read_to_string(SAMPLE).unwrap();
    let o = run(&["rewrite", "--topology", &topo], Some(&input));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let first = String::from_utf8(o.stdout.clone()).unwrap();
    assert_eq!(first, GOLDEN);
    let o = run(&["rewrite", "--topology", &topo], Some(&first));
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(String::from_utf8(o.stdout.clone()).unwrap(), first);
    assert_eq!(
        stderr(&o),
        "hbm-hook rewrite: unchanged: the definition already carries these additions\n"
    );
}

#[test]
fn out_is_written_atomically_and_left_alone_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let topo = topology_file(dir.path());
    let out = dir.path().join("domain.xml");
    let out_s = out.to_string_lossy().into_owned();
    let o = run(&["rewrite", "--topology", &topo, "--in", SAMPLE, "--out", &out_s], None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), GOLDEN);

    std::fs::write(&out, "previous content\n").unwrap();
    let bad = "../tests/corpus/kubevirt/api-domain_numa_topology.xml";
    let o = run(&["rewrite", "--topology", &topo, "--in", bad, "--out", &out_s], None);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o),
        "hbm-hook rewrite: error: domain XML line 19: not well-formed XML: text \"`\" outside the root element; fix the XML and retry\n"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "previous content\n");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file left behind: {names:?}");
}

/// `rewrite` of the sample against the sample host (no config) into `out`.
fn rewrite_sample_to(out: &str) -> Output {
    run(
        &[
            "rewrite",
            "--sysfs-root",
            HOST,
            "--config",
            "/dev/null",
            "--in",
            SAMPLE,
            "--out",
            out,
        ],
        None,
    )
}

/// `--out` naming a character device: exit 2, one line naming the path, the node untouched.
#[test]
fn out_naming_a_device_node_is_bad_input_and_left_alone() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("n");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &node,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .expect("mknod c 1 3 (the tests run as root)");
    let node_s = node.to_string_lossy().into_owned();
    let out = rewrite_sample_to(&node_s);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "hbm-hook rewrite: error: output {node_s}: refused: {node_s} is not a regular file; name a regular file to write\n"
        )
    );
    assert!(out.stdout.is_empty());
    assert!(std::fs::symlink_metadata(&node).unwrap().file_type().is_char_device());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left"
    );
}

/// `--out` naming a symlink: its target gets the result, the link stays a link.
#[test]
fn out_through_a_symlink_writes_its_target_and_keeps_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("real.xml");
    std::fs::write(&target, "old\n").unwrap();
    let link = dir.path().join("link.xml");
    std::os::unix::fs::symlink("real.xml", &link).unwrap();
    let link_s = link.to_string_lossy().into_owned();
    let out = rewrite_sample_to(&link_s);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("real.xml"));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), GOLDEN);
}

#[test]
fn exit_codes_for_bad_input_and_unsatisfiable_requests() {
    let dir = tempfile::tempdir().unwrap();
    let topo = topology_file(dir.path());
    // Topology file that does not parse: 2.
    let bad_topo = dir.path().join("bad.json");
    std::fs::write(&bad_topo, "{\"schema_version\": 1,").unwrap();
    let o = run(
        &["rewrite", "--topology", bad_topo.to_str().unwrap(), "--in", SAMPLE],
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).starts_with(&format!(
        "hbm-hook rewrite: error: topology {}: not a discover --json document",
        bad_topo.display()
    )));
    assert!(o.stdout.is_empty());
    // i440fx with an HBM GPU: 3, no output.
    let i440fx = std::fs::read_to_string(SAMPLE)
        .unwrap()
        .replace("machine='q35'", "machine='pc'");
    let o = run(&["rewrite", "--topology", &topo], Some(&i440fx));
    assert_eq!(o.status.code(), Some(3));
    assert!(o.stdout.is_empty());
    assert_eq!(stderr(&o).lines().count(), 1);
    // required, but the GPU has no HBM on this host: 3.
    let other = std::fs::read_to_string(SAMPLE)
        .unwrap()
        .replace("bus='0xc1'", "bus='0x05'");
    let o = run(&["rewrite", "--topology", &topo, "--policy", "required"], Some(&other));
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("PCI hostdev 0000:05:00.0 owns no usable HBM region"));
    // ... and with auto it is left alone: 0, byte-identical.
    let o = run(&["rewrite", "--topology", &topo], Some(&other));
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(String::from_utf8(o.stdout.clone()).unwrap(), other);
    // DOCTYPE: 2.
    let o = run(
        &["rewrite", "--topology", &topo],
        Some("<!DOCTYPE d [<!ENTITY a 'b'>]><domain/>"),
    );
    assert_eq!(o.status.code(), Some(2));
    // Unknown dialect flag: 2 (usage).
    let o = run(
        &["rewrite", "--topology", &topo, "--dialect", "spm", "--in", SAMPLE],
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown dialect \"spm\""));
    // Missing input file: 1.
    let o = run(
        &["rewrite", "--topology", &topo, "--in", "/nonexistent/domain.xml"],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("hbm-hook rewrite: error: input /nonexistent/domain.xml: cannot read"));
    // Unusable sysfs root: 1 (discovery could not run).
    let o = run(&["rewrite", "--sysfs-root", "/nonexistent", "--in", SAMPLE], None);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn config_file_sets_the_defaults_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let topo = topology_file(dir.path());
    let cfg = dir.path().join("hook.yaml");
    std::fs::write(
        &cfg,
        "rewrite:\n  dialect: none\n  size_cap: 16GiB\n  adapter_path: /opt/hbm/hbm-qemu\n",
    )
    .unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let o = run(
        &["rewrite", "--topology", &topo, "--config", cfg_s, "--in", SAMPLE],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    assert!(out.contains("<cell id='1' memory='16777216' unit='KiB'/>"));
    assert!(out.contains("<emulator>/opt/hbm/hbm-qemu</emulator>"));
    assert!(!out.contains("memmap="));
    let o = run(
        &[
            "rewrite",
            "--topology",
            &topo,
            "--config",
            cfg_s,
            "--size-cap",
            "8GiB",
            "--dialect",
            "kernel-cmdline",
            "--in",
            SAMPLE,
        ],
        None,
    );
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    assert!(out.contains("<cell id='1' memory='8388608' unit='KiB'/>"));
    assert!(out.contains("memmap=8G%10G-1+0xefffffff"));
    // Unknown key: 2 naming the file.
    std::fs::write(&cfg, "rewrite:\n  dialekt: none\n").unwrap();
    let o = run(
        &["rewrite", "--topology", &topo, "--config", cfg_s, "--in", SAMPLE],
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).starts_with(&format!("hbm-hook rewrite: error: config {cfg_s}: ")),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("dialekt"));
    // Missing config named explicitly: 2.
    let o = run(
        &[
            "rewrite",
            "--topology",
            &topo,
            "--config",
            "/nonexistent.yaml",
            "--in",
            SAMPLE,
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(2));
}

/// The README's sample, rewritten, as the real libvirt 9.0 judges it: schema-valid, and its QEMU
/// command line has the cell, the pxb naming it, the GPU behind it and the Generic Initiator.
/// (`<emulator>` points at the adapter, which the argv check swaps back for QEMU; TCG domain
/// type and a plain `<cpu>` because this machine's KVM cannot run host-passthrough.)
#[test]
fn sample_rewrite_is_accepted_by_libvirt() {
    let dir = tempfile::tempdir().unwrap();
    let golden = dir.path().join("gpu-vm.rewritten.xml");
    std::fs::write(&golden, GOLDEN).unwrap();
    let v = Command::new("virt-xml-validate")
        .arg(&golden)
        .arg("domain")
        .output()
        .expect("virt-xml-validate (Debian package libvirt-clients + libxml2-utils) must be installed");
    assert!(
        v.status.success(),
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    let argv_input = dir.path().join("argv.xml");
    let text = GOLDEN
        .replace("/usr/local/bin/hbm-qemu", "/usr/bin/qemu-system-x86_64")
        .replace("<domain type='kvm'", "<domain type='qemu'")
        .replace("<cpu mode='host-passthrough'>", "<cpu>");
    std::fs::write(&argv_input, text).unwrap();
    let o = Command::new("virsh")
        .args(["-c", "qemu:///system", "domxml-to-native", "qemu-argv"])
        .arg(&argv_input)
        .output()
        .expect("virsh (Debian package libvirt-clients) must be installed");
    let argv = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "libvirtd must run (scripts/start-services): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for needle in [
        "-numa node,nodeid=1,memdev=ram-node1",
        "\"qom-type\":\"memory-backend-ram\",\"id\":\"ram-node1\",\"size\":68719476736",
        "\"driver\":\"pxb-pcie\",\"bus_nr\":254,\"id\":\"pci.1\",\"numa_node\":1",
        "\"driver\":\"vfio-pci\",\"host\":\"0000:c1:00.0\",\"id\":\"ua-hbm-0000-c1-00-0\",\"bus\":\"pci.2\"",
        "-object acpi-generic-initiator,id=hbm-gi1,pci-dev=ua-hbm-0000-c1-00-0,node=1",
        "memmap=64G%10G-1+0xefffffff",
    ] {
        assert!(argv.contains(needle), "missing {needle} in\n{argv}");
    }
}
