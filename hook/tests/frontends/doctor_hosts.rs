//! `hbm-hook doctor` on fixture hosts (`topology::fixture` presets written to a temp dir, and the
//! bundled `examples/hosts/seed-amd`), with the real QEMU 10 probed and the real libvirt 9.0
//! asked for its version and schema: exact report lines, `--json`, exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use topology::PciAddress;
use topology::fixture;

use crate::common::qemu::REAL_QEMU;

struct Doctor {
    dir: tempfile::TempDir,
}

impl Doctor {
    /// A temp dir with an installed hook and adapter (symlinks to the built binary) and an empty
    /// config (so the host's /etc/hbm-passthrough does not leak in).
    fn new() -> Doctor {
        let dir = tempfile::tempdir().unwrap();
        for name in ["hbm-qemu", "hbm-passthrough"] {
            std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_hbm-hook"), dir.path().join(name)).unwrap();
        }
        std::fs::write(dir.path().join("hook.yaml"), "").unwrap();
        Doctor { dir }
    }

    fn host(&self, host: &fixture::FixtureHost) -> PathBuf {
        let root = self.dir.path().join("host");
        host.write_to(&root).unwrap();
        root
    }

    fn run(&self, root: &Path, extra: &[&str]) -> Output {
        let d = self.dir.path();
        self.run_with(root, &d.join("hbm-passthrough"), &d.join("hbm-qemu"), extra)
    }

    fn run_with(&self, root: &Path, hook: &Path, adapter: &Path, extra: &[&str]) -> Output {
        let d = self.dir.path();
        Command::new(env!("CARGO_BIN_EXE_hbm-hook"))
            .arg("doctor")
            .arg("--sysfs-root")
            .arg(root)
            .arg("--config")
            .arg(d.join("hook.yaml"))
            .arg("--probe-cache-dir")
            .arg(d.join("cache"))
            .arg("--adapter")
            .arg(adapter)
            .arg("--hook")
            .arg(hook)
            .args(extra)
            .output()
            .unwrap()
    }

    fn binary() -> String {
        std::fs::canonicalize(env!("CARGO_BIN_EXE_hbm-hook"))
            .unwrap()
            .display()
            .to_string()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The report with the QEMU version (which follows the installed package) replaced by `<version>`.
fn normalized(report: &str) -> Vec<String> {
    report
        .lines()
        .map(|l| match l.find(": QEMU 10.") {
            Some(at) if l.starts_with("pass  qemu ") => format!("{}: QEMU <version>", &l[..at]),
            _ => l.to_string(),
        })
        .collect()
}

/// Report lines from (status, check, detail) rows, the check column as wide as its longest entry.
fn lines(rows: &[(&str, &str, String)]) -> Vec<String> {
    let width = rows.iter().map(|r| r.1.len()).max().unwrap();
    rows.iter()
        .map(|(st, check, detail)| format!("{st}  {check:<width$}  {detail}"))
        .collect()
}

fn expected_tail(d: &Doctor) -> Vec<(&'static str, &'static str, String)> {
    let dir = d.dir.path().display();
    let bin = Doctor::binary();
    vec![
        ("pass", "qemu", format!("{REAL_QEMU}: QEMU <version>")),
        ("pass", "qemu generic-initiator", "acpi-generic-initiator available".into()),
        (
            "warn",
            "qemu spm-dialect",
            "speaks neither memmap-type nor sp-mem -> use the kernel-cmdline dialect (direct kernel boot) or none; a QEMU with the SPM series adds the others".into(),
        ),
        ("pass", "libvirt", "libvirt 9.0.0".into()),
        (
            "pass",
            "libvirt acpi-nodeset",
            "no native <acpi nodeset>: the rewriter adds the Generic Initiator through <qemu:commandline>".into(),
        ),
        ("pass", "hook", format!("{dir}/hbm-passthrough -> {bin}")),
        ("pass", "adapter", format!("{dir}/hbm-qemu -> {bin}")),
    ]
}

#[test]
fn seed_amd_host_is_ready() {
    let d = Doctor::new();
    let root = d.host(&fixture::seed_amd());
    let out = d.run(&root, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rows = seed_amd_first_rows();
    rows.extend([
        (
            "warn",
            "kubevirt 0000:c1:00.0/dax0.0",
            format!("{DEVDAX_FOR_KUBEVIRT} -> {}", system_ram_fix("dax0.0")),
        ),
        (
            "pass",
            "dax dax0.0",
            "devdax (/dev/dax0.0), 64 GiB, target node 1".into(),
        ),
    ]);
    rows.extend(expected_tail(&d));
    let mut expected = lines(&rows);
    expected.push("10 passed, 2 warnings, 0 failed".into());
    assert_eq!(normalized(&stdout(&out)), expected);
}

/// The report's first rows on `seed_amd` (and its variants): IOMMU, GPU, HBM region.
fn seed_amd_first_rows() -> Vec<(&'static str, &'static str, String)> {
    vec![
        ("pass", "iommu", "on (2 IOMMU groups)".to_string()),
        (
            "pass",
            "gpu 0000:c1:00.0",
            "1002:74a1 bound to vfio-pci, IOMMU group 12".into(),
        ),
        (
            "pass",
            "hbm 0000:c1:00.0/dax0.0",
            "64 GiB on host node 1 (SPM, from dax, /dev/dax0.0)".into(),
        ),
    ]
}

/// The `kubevirt` check's detail for the devdax region of `seed_amd`.
const DEVDAX_FOR_KUBEVIRT: &str =
    "not usable: reachable only through /dev/dax0.0, which virt-launcher's QEMU (no argv adapter, uid 107) cannot use";

fn system_ram_fix(dax: &str) -> String {
    format!(
        "`daxctl reconfigure-device --mode=system-ram {dax}` (onlines it as movable memory of its NUMA node; libvirt hosts keep working, binding by node)"
    )
}

/// `seed_amd` after `daxctl reconfigure-device --mode=system-ram dax0.0`: the SPM HBM is online
/// (movable) in node 1 and dax0.0 is bound to kmem.
fn seed_amd_online() -> fixture::FixtureHost {
    fixture::seed_amd().dax_in_system_ram("dax0.0", 1, 64 << 30)
}

#[test]
fn an_online_region_is_usable_by_kubevirt_in_text_and_json() {
    let d = Doctor::new();
    let root = d.host(&seed_amd_online());
    let out = d.run(&root, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let report = normalized(&stdout(&out));
    let mut rows = seed_amd_first_rows();
    rows.extend([
        (
            "pass",
            "kubevirt 0000:c1:00.0/dax0.0",
            "usable: online in host node 1; virt-launcher binds the guest cell there (numatune memnode strict)".into(),
        ),
        (
            "pass",
            "dax dax0.0",
            "system-ram (kmem: onlined into its NUMA node), 64 GiB, target node 1".into(),
        ),
    ]);
    assert_eq!(report[..5], lines(&rows), "{report:#?}");

    let json = d.run(&root, &["--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    let kubevirt: Vec<&serde_json::Value> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["check"].as_str().unwrap().starts_with("kubevirt "))
        .collect();
    assert_eq!(
        kubevirt,
        [&serde_json::json!({
            "check": "kubevirt 0000:c1:00.0/dax0.0",
            "status": "pass",
            "detail": "usable: online in host node 1; virt-launcher binds the guest cell there (numatune memnode strict)",
            "fix": null,
        })]
    );
}

#[test]
fn bundled_seed_amd_example_as_json() {
    let d = Doctor::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hosts/seed-amd");
    let out = d.run(&root, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["ok"], true);
    let checks: Vec<(String, String)> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let pass = |c: &str| (c.to_string(), "pass".to_string());
    assert_eq!(
        checks,
        vec![
            pass("iommu"),
            pass("gpu 0000:41:00.0"),
            pass("gpu 0000:c1:00.0"),
            pass("hbm 0000:41:00.0/dax0.0"),
            pass("hbm 0000:c1:00.0/dax1.0"),
            ("kubevirt 0000:41:00.0/dax0.0".into(), "warn".into()),
            ("kubevirt 0000:c1:00.0/dax1.0".into(), "warn".into()),
            pass("dax dax0.0"),
            pass("dax dax1.0"),
            pass("qemu"),
            pass("qemu generic-initiator"),
            ("qemu spm-dialect".into(), "warn".into()),
            pass("libvirt"),
            pass("libvirt acpi-nodeset"),
            pass("hook"),
            pass("adapter"),
        ]
    );
    let fix = &v["checks"][11]["fix"];
    assert!(
        fix.as_str().unwrap().starts_with("use the kernel-cmdline dialect"),
        "{fix}"
    );
    assert_eq!(v["checks"][6]["fix"].as_str().unwrap(), system_ram_fix("dax1.0"));
    assert_eq!(v["checks"][0]["fix"], serde_json::Value::Null);
}

#[test]
fn what_is_missing_is_named_and_fails_the_run() {
    let d = Doctor::new();
    let gpu: PciAddress = "0000:c1:00.0".parse().unwrap();
    // GPU left on its native driver, dax device unbound, no QEMU, hook not executable, adapter absent.
    let host = fixture::seed_amd().set_driver(gpu, Some("amdgpu"));
    let root = d.host(&host);
    // Unbind dax0.0: neither its `driver` link nor an entry under the driver.
    for link in [
        "sys/bus/dax/devices/dax0.0/driver",
        "sys/bus/dax/drivers/device_dax/dax0.0",
    ] {
        std::fs::remove_file(root.join(link)).unwrap();
    }
    let hook = d.dir.path().join("hook-not-executable");
    std::fs::write(&hook, "#!/bin/sh\n").unwrap();
    let missing_qemu = d.dir.path().join("no-qemu");
    let out = d.run_with(
        &root,
        &hook,
        Path::new("/nonexistent/hbm-qemu"),
        &["--qemu", missing_qemu.to_str().unwrap()],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = stdout(&out);
    // Lines with the check column's padding collapsed to two spaces.
    let line = |prefix: &str| {
        let l = report
            .lines()
            .map(|l| {
                let (status, rest) = l.split_at(6);
                let (check, detail) = rest.split_once("  ").unwrap_or((rest, ""));
                format!("{status}{check}  {}", detail.trim_start())
            })
            .find(|l| l.starts_with(prefix));
        l.unwrap_or_else(|| panic!("no line starting {prefix:?} in\n{report}"))
    };
    assert_eq!(
        line("warn  gpu 0000:c1:00.0"),
        "warn  gpu 0000:c1:00.0  1002:74a1 bound to amdgpu, IOMMU group 12 -> bind it to vfio-pci (libvirt's managed='yes' does so at VM start; KubeVirt needs it bound beforehand)"
    );
    assert_eq!(
        line("fail  hbm 0000:c1:00.0/dax0.0"),
        "fail  hbm 0000:c1:00.0/dax0.0  64 GiB on host node 1 (SPM, from dax, /dev/dax0.0): dax0.0 is not in devdax mode (driver none) -> `daxctl reconfigure-device --mode=devdax dax0.0`; VMs get this memory through /dev/dax0.0"
    );
    assert_eq!(
        line("warn  dax dax0.0"),
        "warn  dax dax0.0  64 GiB, target node 1, driver none -> bind it: `daxctl reconfigure-device --mode=devdax dax0.0` (or --mode=system-ram)"
    );
    assert_eq!(
        line("fail  qemu  "),
        format!(
            "fail  qemu  {}: probe of {}: cannot read the binary: No such file or directory (os error 2); check the qemu.emulator setting -> install QEMU >= 9.0 (Debian 12: qemu-system-x86 from bookworm-backports) or set qemu.emulator",
            missing_qemu.display(),
            missing_qemu.display()
        )
    );
    assert_eq!(
        line("fail  hook"),
        format!(
            "fail  hook  {} is not executable -> run deploy/libvirt/install.sh again",
            hook.display()
        )
    );
    assert_eq!(
        line("warn  adapter"),
        "warn  adapter  /nonexistent/hbm-qemu not installed -> domains using the memmap-type, sp-mem or dax instructions need it: run deploy/libvirt/install.sh"
    );
    assert!(report.ends_with(" failed\n"));
    assert!(report.lines().last().unwrap().ends_with("3 failed"), "{report}");
}

#[test]
fn hosts_without_hbm_or_iommu_fail() {
    let d = Doctor::new();
    let root = d.host(&fixture::no_hbm());
    // The preset may have written no groups at all; either way none remain.
    let _ = std::fs::remove_dir_all(root.join("sys/kernel/iommu_groups"));
    let out = d.run(&root, &["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["ok"], false);
    let failed: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert!(failed.contains(&"iommu"), "{failed:?}");
    assert!(failed.contains(&"hbm"), "{failed:?}");
}

#[test]
fn an_unusable_sysfs_root_is_bad_input() {
    let d = Doctor::new();
    let out = d.run(&d.dir.path().join("nowhere"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stdout(&out), "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "hbm-hook doctor: sysfs root {}/nowhere is unusable",
            d.dir.path().display()
        )),
        "{err}"
    );
}

#[test]
fn a_kubevirt_node_without_qemu_and_libvirt_only_warns() {
    let d = Doctor::new();
    let root = d.host(&fixture::seed_amd());
    let missing = d.dir.path().join("absent");
    let out = d.run_with(
        &root,
        &missing,
        &missing,
        &[
            "--qemu",
            missing.to_str().unwrap(),
            "--libvirtd",
            missing.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let status = |check: &str| {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == check)
            .unwrap()["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for check in ["qemu", "libvirt", "hook", "adapter"] {
        assert_eq!(status(check), "warn", "{check}: {}", stdout(&out));
    }
    for check in ["iommu", "gpu 0000:c1:00.0", "hbm 0000:c1:00.0/dax0.0", "dax dax0.0"] {
        assert_eq!(status(check), "pass", "{check}: {}", stdout(&out));
    }
    assert_eq!(v["ok"], true);
}

#[test]
fn without_sysfs_root_the_configs_sysfs_root_is_inspected() {
    let d = Doctor::new();
    let nowhere = d.dir.path().join("configured-nowhere");
    let config = d.dir.path().join("rooted.yaml");
    std::fs::write(&config, format!("sysfs_root: {}\n", nowhere.display())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hbm-hook"))
        .args(["doctor", "--config"])
        .arg(&config)
        .arg("--probe-cache-dir")
        .arg(d.dir.path().join("cache"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "hbm-hook doctor: sysfs root {} is unusable",
            nowhere.display()
        )),
        "{err}"
    );
}

/// A `--libvirtd` that prints forever or sleeps, and a `--libvirt-schema` of `/dev/zero`: the
/// doctor finishes within its bounds and says which check was cut.
#[test]
fn a_libvirtd_that_hangs_or_floods_and_an_endless_schema_are_cut() {
    use std::os::unix::fs::PermissionsExt;
    let doctor = Doctor::new();
    let root = doctor.host(&fixture::seed_amd());
    let script = |name: &str, body: &str| {
        let path = doctor.dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_string_lossy().into_owned()
    };
    let flooding = script("flooding-libvirtd", "exec yes libvirtd");
    let sleeping = script("sleeping-libvirtd", "sleep 60");
    let check = |out: &Output, name: &str| -> (String, String) {
        let report: serde_json::Value = serde_json::from_str(&stdout(out)).unwrap();
        let found = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|line| line["check"] == name)
            .unwrap_or_else(|| panic!("no {name} check: {report}"))
            .clone();
        (
            found["status"].as_str().unwrap().to_string(),
            found["detail"].as_str().unwrap().to_string(),
        )
    };

    let started = std::time::Instant::now();
    let out = doctor.run(
        &root,
        &[
            "--qemu",
            REAL_QEMU,
            "--libvirtd",
            &flooding,
            "--libvirt-schema",
            "/dev/zero",
            "--json",
        ],
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert_eq!(
        check(&out, "libvirt"),
        (
            "fail".into(),
            format!("`{flooding} --version` gave more than 64 KiB (killed)")
        )
    );
    assert_eq!(
        check(&out, "libvirt acpi-nodeset"),
        (
            "warn".into(),
            "libvirt's domain schema /dev/zero gave more than 16384 KiB (not read)".into()
        )
    );

    let started = std::time::Instant::now();
    let out = doctor.run(&root, &["--qemu", REAL_QEMU, "--libvirtd", &sleeping, "--json"]);
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(15), "{took:?}");
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert_eq!(
        check(&out, "libvirt"),
        (
            "fail".into(),
            format!("`{sleeping} --version` gave no answer within 5 s (killed)")
        )
    );
}
