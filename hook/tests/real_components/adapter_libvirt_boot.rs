//! Domains started by the real libvirtd whose `<emulator>` is the adapter (an `hbm-qemu` symlink to
//! the built `hbm-hook`), TCG, direct kernel boot of the guest kit: the guest is reached, and the
//! argv the adapter saw and the argv it exec'd are in libvirt's log of the domain. A dax-backed
//! cell goes all the way to the real QEMU (on /dev/zero, a character device standing in for
//! /dev/daxX.Y); a dialect the real QEMU lacks is refused with the adapter's line in virsh's error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::guest::{DirectBootDomain, GuestReport};
use crate::common::libvirt::{Domain, read_console_log, require_libvirt, unique_name};

const MIB: u64 = 1 << 20;

/// The adapter as libvirt sees it: `<dir>/hbm-qemu` -> the built binary. The directory must be
/// readable by libvirtd (root here).
fn adapter_in(dir: &Path) -> PathBuf {
    let adapter = dir.join("hbm-qemu");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_hbm-hook"), &adapter).unwrap();
    adapter
}

/// Two guest cells: 0 with both vCPUs (1 GiB), CPU-less 1 (512 MiB), the HBM cell's shape.
fn domain_xml(name: &str, dir: &Path, adapter: &Path, qemu_env: &[(&str, String)]) -> String {
    let mut d = DirectBootDomain::new(name, &dir.join("console.log"));
    d.memory_mib = 1536;
    d.extra_top = "  <cpu>\n    <numa>\n      <cell id='0' cpus='0-1' memory='1024' unit='MiB'/>\n      \
                   <cell id='1' memory='512' unit='MiB'/>\n    </numa>\n  </cpu>\n"
        .to_string();
    let mut env = vec![("HBM_PROBE_CACHE_DIR", dir.join("probe-cache").display().to_string())];
    env.extend(qemu_env.iter().cloned());
    d.tail = format!(
        "  <qemu:commandline>\n{}  </qemu:commandline>\n",
        env.iter()
            .map(|(k, v)| format!("    <qemu:env name='{k}' value='{v}'/>\n"))
            .collect::<String>()
    );
    let xml = d.to_xml();
    let emulator = "<emulator>/usr/bin/qemu-system-x86_64</emulator>";
    assert!(xml.contains(emulator), "{xml}");
    xml.replace(emulator, &format!("<emulator>{}</emulator>", adapter.display()))
}

/// Defines and starts `xml`, waits for the guest to power off, returns libvirt's QEMU log and the
/// guest's report (the domain is undefined when the returned guard drops).
fn boot(xml: &str, console: &Path) -> (Domain, String, GuestReport) {
    let _no_hook = crate::common::libvirt::without_installed_hook();
    let domain = Domain::define(xml).unwrap();
    domain
        .start()
        .unwrap_or_else(|e| panic!("{e}\n--- qemu log ---\n{}", domain.qemu_log()));
    domain
        .wait_shut_off(crate::common::guest::BOOT_BOUND)
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n--- console ---\n{}\n--- qemu log ---\n{}",
                read_console_log(console),
                domain.qemu_log()
            )
        });
    // virtlogd may still be flushing QEMU's last lines.
    std::thread::sleep(Duration::from_millis(200));
    let log = domain.qemu_log();
    let report = GuestReport::parse(&read_console_log(console)).unwrap_or_else(|e| panic!("{e}\n{log}"));
    (domain, log, report)
}

/// The argv on the adapter's log line tagged `message` (the `argv=` field runs to the end of the
/// line).
fn logged_argv(log: &str, message: &str) -> String {
    let line = log
        .lines()
        .find(|l| l.contains(message))
        .unwrap_or_else(|| panic!("no '{message}' line in libvirt's log:\n{log}"));
    let start = line.find(" argv=").unwrap_or_else(|| panic!("no argv= in {line}")) + 6;
    line[start..].to_string()
}

fn assert_two_node_guest(report: &GuestReport, log: &str) {
    assert_eq!(report.nodes_online, vec![0, 1], "{log}");
    assert_eq!(report.nodes[&0].cpus, vec![0, 1]);
    assert!(report.nodes[&1].cpus.is_empty());
    // MemTotal of a 512 MiB node, less what the kernel keeps for its own structures.
    let node1 = report.nodes[&1].mem_total_kb * 1024;
    assert!(node1 > 448 * MIB && node1 <= 512 * MIB, "node 1 MemTotal {node1}");
}

/// The rewriter's guest-boot domain (one GPU with 512 MiB of HBM, kernel-cmdline dialect, the GPU
/// swapped for a virtio-rng stand-in at its guest address), booted with `<emulator>` = the adapter:
/// no instructions, so the argv passes through untouched, and the guest sees what it sees with the
/// real QEMU as emulator (hook/tests/real_components/guest_boot.rs): an online CPU-less HBM node with a Generic
/// Initiator and no usable memory, its range soft reserved, the stand-in's `numa_node` on it.
#[test]
fn libvirt_boots_the_rewritten_gpu_guest_through_the_adapter_unchanged() {
    use crate::common::domain_xml::{StandIn, with_stand_in};
    use crate::common::inventory::{HbmSpec, hbm_inventory};
    use hbm_rewrite::{Dialect, RewriteOptions, rewrite};

    require_libvirt();
    let dir = tempfile::tempdir().unwrap();
    let adapter = adapter_in(dir.path());
    let console = dir.path().join("console.log");
    let mut d = DirectBootDomain::new(&unique_name("adapter-passthrough"), &console);
    d.acpi = false;
    d.devices =
        "    <hostdev mode='subsystem' type='pci' managed='no'>\n      <driver name='vfio'/>\n      <source>\n        \
                 <address domain='0x0000' bus='0xc1' slot='0x00' function='0x0'/>\n      </source>\n      \
                 <alias name='ua-gpu0'/>\n    </hostdev>\n"
            .to_string();
    let options = RewriteOptions {
        dialect: Dialect::KernelCmdline,
        ..RewriteOptions::default()
    };
    let out = rewrite(
        &d.to_xml(),
        &hbm_inventory(&[HbmSpec::new("0000:c1:00.0", 512 * MIB)]),
        &options,
    )
    .unwrap();
    let emulator = "<emulator>/usr/bin/qemu-system-x86_64</emulator>";
    assert!(
        out.xml.contains(emulator),
        "kernel-cmdline needs no adapter, the rewriter keeps the emulator"
    );
    let xml = with_stand_in(&out.xml, "ua-gpu0", StandIn::Rng)
        .unwrap()
        .replace(emulator, &format!("<emulator>{}</emulator>", adapter.display()));

    let (_domain, log, report) = boot(&xml, &console);
    let seen = logged_argv(&log, "hbm-qemu: argv seen");
    let execd = logged_argv(&log, "hbm-qemu: no instructions, argv exec'd unchanged");
    let adapter = adapter.display().to_string();
    assert!(seen.starts_with(&format!("{adapter} -name guest=")), "{seen}");
    assert_eq!(execd, seen.replacen(&adapter, "/usr/bin/qemu-system-x86_64", 1));
    assert!(seen.contains("acpi-generic-initiator,id="), "{seen}");

    assert_eq!(report.nodes_has_cpu, vec![0], "{log}");
    let hbm_node = *report
        .nodes_online
        .iter()
        .find(|n| **n != 0)
        .unwrap_or_else(|| panic!("{}", report.console));
    assert_eq!(report.nodes_online, vec![0, hbm_node]);
    assert!(report.nodes_generic_initiator.contains(&hbm_node), "{}", report.console);
    assert_eq!(report.nodes[&hbm_node].mem_total_kb, 0);
    assert!(report.nodes[&hbm_node].cpus.is_empty());
    assert!(
        report.hmem_at(1024 * MIB, 1536 * MIB - 1).is_some(),
        "{}",
        report.console
    );
    assert_eq!(report.iomem_named("Soft Reserved").len(), 1, "{}", report.console);
    let (vendor, device) = StandIn::Rng.guest_ids();
    let stand_in = report.pci_by_id(vendor, device);
    assert_eq!(stand_in.len(), 1, "{}", report.console);
    assert_eq!(stand_in[0].numa_node, i32::try_from(hbm_node).unwrap());
}

#[test]
fn libvirt_boots_a_dax_backed_cell_through_the_adapter() {
    require_libvirt();
    let dir = tempfile::tempdir().unwrap();
    let adapter = adapter_in(dir.path());
    let name = unique_name("adapter-dax");
    let wire = format!("v1;dax:cell=1,size={},path=/dev/zero,align=2097152", 512 * MIB);
    let xml = domain_xml(&name, dir.path(), &adapter, &[("HBM_QEMU_INSTRUCTIONS", wire.clone())]);
    let (_domain, log, report) = boot(&xml, &dir.path().join("console.log"));
    assert_two_node_guest(&report, &log);
    let seen = logged_argv(&log, "hbm-qemu: argv seen");
    let execd = logged_argv(&log, "hbm-qemu: argv exec'd");
    assert!(
        seen.contains(r#"'{"qom-type":"memory-backend-ram","id":"ram-node1","size":536870912}'"#),
        "{seen}"
    );
    let file_backend = r#"'{"qom-type":"memory-backend-file","id":"ram-node1","mem-path":"/dev/zero","share":true,"align":2097152,"size":536870912}'"#;
    let expected = seen
        .replacen(&adapter.display().to_string(), "/usr/bin/qemu-system-x86_64", 1)
        .replace(
            r#"'{"qom-type":"memory-backend-ram","id":"ram-node1","size":536870912}'"#,
            file_backend,
        );
    assert_eq!(execd, expected);
    let line = log.lines().find(|l| l.contains("hbm-qemu: argv exec'd")).unwrap();
    assert!(line.contains(&format!("instructions={wire}")), "{line}");
    // The real QEMU got the file backend: a character device cannot be truncated, and QEMU says so.
    assert!(log.contains("ftruncate: Invalid argument"), "{log}");
}

#[test]
fn libvirt_shows_the_adapters_refusal_of_a_dialect_the_qemu_lacks() {
    require_libvirt();
    let dir = tempfile::tempdir().unwrap();
    let adapter = adapter_in(dir.path());
    let name = unique_name("adapter-memmap");
    let wire = format!("v1;memmap-type:cell=1,size={},type=spm", 512 * MIB);
    let domain = Domain::define(&domain_xml(
        &name,
        dir.path(),
        &adapter,
        &[("HBM_QEMU_INSTRUCTIONS", wire)],
    ))
    .unwrap();
    let err = {
        let _no_hook = crate::common::libvirt::without_installed_hook();
        domain.start().unwrap_err()
    };
    assert!(
        err.contains(
            "hbm-qemu: cell 1: the domain asks for the memmap-type SPM dialect but /usr/bin/qemu-system-x86_64 (QEMU 10."
        ),
        "{err}"
    );
    assert!(err.contains("speaks neither memmap-type nor sp-mem"), "{err}");
    assert_eq!(domain.state().unwrap(), "shut off");
    let log = domain.qemu_log();
    assert!(
        !log.contains("Invalid parameter 'memmap-type'"),
        "QEMU must not have run:\n{log}"
    );
}
