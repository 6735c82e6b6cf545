//! KubeVirt's answer judged by a real libvirt, the way virt-launcher runs it:
//!
//! - `virsh domxml-to-native` (system libvirtd) of KubeVirt's re-marshal of the sidecar's answer
//!   for each corpus GPU on an SPM-online host: CPU-less `-numa node`, `pxb-pcie` with
//!   `numa_node`, the Generic Initiator object, and the domain's own emulator (no adapter);
//! - a virt-launcher-like start: a session-mode libvirtd running as a non-root system user
//!   (`hbm-launcher`, created when absent), QEMU reached as `<tmp>/libexec/qemu-kvm` (a symlink to
//!   the real QEMU, standing for virt-launcher's `/usr/libexec/qemu-kvm`), no argv adapter
//!   installed. The re-marshalled answer of a disk-booted VM defines and starts (TCG; the GPU
//!   replaced by a stand-in device at the same guest address and alias) with QEMU running as that
//!   user; direct-kernel-boot variants boot the guest kit and the guest sees the stand-in on the
//!   HBM cell's node, that node online with the cell's size.
//!
//! Host node binding: the fixture hosts' HBM nodes (1, 2) do not exist on this machine, so the
//! re-marshalled answer's `<numatune>` nodesets are mapped to host node 0 before libvirt sees them
//! (as the other boot tests bind to node 0).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::corpus;
use crate::common::domain_xml::{PciAddr, StandIn, with_stand_in};
use crate::common::guest::{self, BASE_CMDLINE, BOOT_BOUND, GuestReport, soft_reserved_params};
use crate::common::hbm_chain::{self, HbmChain};
use crate::common::inventory::MIB;
use crate::common::kubevirt::{vmi_json, write_node};
use crate::common::kubevirt_round_trip::{
    CORPUS_GPUS, CorpusGpu, GiStyle, HostKind, check_chain_survives, cmdline_of, fixture_host, for_this_machine,
    shim_on_define_domain, spm_warnings,
};
use crate::common::libvirt::{domxml_to_native, require_libvirt, text};

/// The chart's defaults: no dialect, policy or Generic Initiator flag.
const CHART_DEFAULTS: &[&str] = &[];
/// HBM per GPU on the fixture hosts of the booted guests (small: TCG, a 2-core machine).
const BOOT_HBM_BYTES: u64 = 512 * MIB;
/// HBM per GPU for the argv checks.
const ARGV_HBM_BYTES: u64 = 16 << 30;
/// The non-root user QEMU runs as (virt-launcher: uid 107).
const LAUNCHER_USER: &str = "hbm-launcher";

/// The sidecar's answer (through the shim convention) for `input` on a fixture host of `kind`,
/// and the shim's log.
fn answer(kind: HostKind, hbm_bytes: u64, input: &str) -> (String, String) {
    let node = write_node(&fixture_host(kind, hbm_bytes));
    let out = shim_on_define_domain(&vmi_json("vm", &[]), input, node.path(), CHART_DEFAULTS);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{log}");
    (String::from_utf8(out.stdout).unwrap(), log)
}

#[test]
fn kubevirt_remarshal_of_the_answer_gives_qemu_the_chain_without_an_adapter() {
    require_libvirt();
    for gpu in CORPUS_GPUS {
        let input = corpus::file(gpu.file).text;
        let (answer, _) = answer(HostKind::SpmOnline, ARGV_HBM_BYTES, &input);
        let projected = check_chain_survives(
            gpu.file,
            &input,
            &answer,
            &gpu,
            ARGV_HBM_BYTES,
            GiStyle::QemuCommandline,
        );
        let here = for_this_machine(&projected);
        let chain = hbm_chain::read(&here, PciAddr::parse_host(gpu.host).unwrap()).unwrap();
        let argv = domxml_to_native(&here).unwrap_or_else(|e| panic!("{}: {e}\n{here}", gpu.file));
        hbm_chain::check_argv(&argv, &chain, 0).unwrap_or_else(|e| panic!("{}: {e}\n{argv:?}", gpu.file));
        assert_eq!(
            argv.binary, "/usr/bin/qemu-system-x86_64",
            "{}: libvirt's own emulator, as the domain names none",
            gpu.file
        );
        assert!(
            argv.env.iter().all(|(k, _)| k != "HBM_QEMU_INSTRUCTIONS"),
            "{}: {:?}",
            gpu.file,
            argv.env
        );
    }
}

/// `(uid, gid)` of the launcher user, created as a system user when absent (tests run as root;
/// once per process, as tests run in parallel).
fn launcher_user() -> (u32, u32) {
    static USER: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    *USER.get_or_init(create_launcher_user)
}

fn create_launcher_user() -> (u32, u32) {
    let id = |flag: &str| Command::new("id").args([flag, LAUNCHER_USER]).output().unwrap();
    if !id("-u").status.success() {
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", "--home-dir", "/nonexistent"])
            .args(["--shell", "/usr/sbin/nologin", LAUNCHER_USER])
            .output()
            .unwrap_or_else(|e| panic!("useradd (passwd package): {e}"));
        assert!(out.status.success(), "useradd {LAUNCHER_USER}: {}", text(&out));
    }
    let number = |flag: &str| -> u32 {
        let out = id(flag);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("id {flag}: {e}"))
    };
    (number("-u"), number("-g"))
}

fn which(tool: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(tool)).find(|f| f.is_file()))
        .unwrap_or_else(|| panic!("'{tool}' is not on PATH: scripts/install-deps installs it"))
}

/// A session-mode libvirtd of the launcher user with its own HOME and XDG dirs in a temp dir,
/// plus `libexec/qemu-kvm`. Stopped (and its dir removed) when dropped.
struct SessionLibvirt {
    dir: tempfile::TempDir,
    uid: u32,
    gid: u32,
    daemon: Child,
}

impl SessionLibvirt {
    fn start() -> Self {
        let (uid, gid) = launcher_user();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["home", "run", "work", "libexec", "home/.config/libvirt"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::os::unix::fs::symlink(which("qemu-system-x86_64"), dir.path().join("libexec/qemu-kvm")).unwrap();
        // Chardev logs (the serial console log) written by libvirtd itself, not a session virtlogd.
        std::fs::write(
            dir.path().join("home/.config/libvirt/qemu.conf"),
            "stdio_handler = \"file\"\n",
        )
        .unwrap();
        for sub in ["home", "home/.config", "home/.config/libvirt", "run", "work"] {
            rustix::fs::chown(
                dir.path().join(sub),
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .unwrap();
        }
        std::fs::set_permissions(dir.path().join("run"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let daemon = as_launcher(dir.path(), uid, gid, &which("libvirtd"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start session libvirtd: {e}"));
        let session = Self { dir, uid, gid, daemon };
        session.wait_ready();
        session
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.virsh(&["version"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "session libvirtd does not answer: {}",
                text(&out)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    fn virsh(&self, args: &[&str]) -> Output {
        as_launcher(self.dir.path(), self.uid, self.gid, &which("virsh"))
            .args(["-c", "qemu:///session"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("virsh: {e}"))
    }

    /// A file in the launcher's work dir holding `content`, readable by it.
    fn work_file(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.path("work").join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        path
    }

    /// A 64 MiB empty qcow2 disk owned by the launcher user.
    fn empty_disk(&self) -> PathBuf {
        let path = self.path("work").join("disk.qcow2");
        let out = Command::new(which("qemu-img"))
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&path)
            .arg("64M")
            .output()
            .unwrap();
        assert!(out.status.success(), "qemu-img: {}", text(&out));
        rustix::fs::chown(
            &path,
            Some(rustix::fs::Uid::from_raw(self.uid)),
            Some(rustix::fs::Gid::from_raw(self.gid)),
        )
        .unwrap();
        path
    }

    fn define(&self, name: &str, xml: &str) -> SessionDomain<'_> {
        let file = self.work_file(&format!("{name}.xml"), xml.as_bytes());
        let out = self.virsh(&["define", file.to_str().unwrap()]);
        assert!(out.status.success(), "define {name}: {}\n{xml}", text(&out));
        SessionDomain {
            session: self,
            name: name.to_string(),
        }
    }

    /// libvirt's QEMU log of a domain in this session.
    fn qemu_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("home/.cache/libvirt/qemu/log/{name}.log"))).unwrap_or_default()
    }
}

impl Drop for SessionLibvirt {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// `program` run as the launcher user (`setpriv`, util-linux) with the session's HOME and XDG
/// dirs, never auto-starting another daemon.
fn as_launcher(dir: &Path, uid: u32, gid: u32, program: &Path) -> Command {
    let mut cmd = Command::new(which("setpriv"));
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg(program)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.join("home"))
        .env("XDG_RUNTIME_DIR", dir.join("run"))
        .env("XDG_CONFIG_HOME", dir.join("home/.config"))
        .env("XDG_CACHE_HOME", dir.join("home/.cache"))
        .env("XDG_DATA_HOME", dir.join("home/.local/share"))
        .env("LIBVIRT_AUTOSTART", "0");
    cmd
}

/// A domain of a [`SessionLibvirt`]; destroyed and undefined when dropped.
struct SessionDomain<'a> {
    session: &'a SessionLibvirt,
    name: String,
}

impl SessionDomain<'_> {
    fn start(&self) {
        let out = self.session.virsh(&["start", &self.name]);
        assert!(
            out.status.success(),
            "start {}: {}\n--- qemu log ---\n{}",
            self.name,
            text(&out),
            self.session.qemu_log(&self.name)
        );
    }

    fn state(&self) -> String {
        let out = self.session.virsh(&["domstate", &self.name]);
        assert!(out.status.success(), "domstate: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The running QEMU's pid (libvirt's pid file in the session's runtime dir).
    fn qemu_pid(&self) -> u32 {
        let file = self.session.path(&format!("run/libvirt/qemu/run/{}.pid", self.name));
        let pid = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        pid.trim().parse().unwrap()
    }

    fn wait_shut_off(&self, bound: Duration) -> Result<(), String> {
        let start = Instant::now();
        while self.state() != "shut off" {
            if start.elapsed() > bound {
                return Err(format!("{} still running after {}s", self.name, bound.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    }
}

impl Drop for SessionDomain<'_> {
    fn drop(&mut self) {
        let _ = self.session.virsh(&["destroy", &self.name]);
        let _ = self.session.virsh(&["undefine", &self.name]);
    }
}

/// The `Uid:` line of `/proc/PID/status`: real, effective, saved, filesystem uid.
fn uids_of(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().skip(1).map(|u| u.parse().unwrap()).collect()
}

/// The first word of `/proc/PID/cmdline` (the path QEMU was run as).
fn argv0_of(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    String::from_utf8_lossy(cmdline.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
}

/// A KubeVirt-shaped definition of a VM passing GPU 0000:81:00.0 through: the elements KubeVirt's
/// converter writes (user aliases, unix serial with a log file, pty console, `<metadata><kubevirt>`),
/// TCG, virt-launcher's emulator, an empty disk, and the kernel lines of `os_extra`.
fn kubevirt_vm(session: &SessionLibvirt, name: &str, disk: &Path, os_extra: &str) -> String {
    let work = session.path("work");
    format!(
        r#"<domain type="qemu" xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0">
  <name>{name}</name>
  <memory unit="b">{memory}</memory>
  <os>
    <type arch="x86_64" machine="q35">hvm</type>{os_extra}
  </os>
  <devices>
    <emulator>{emulator}</emulator>
    <hostdev type="pci" managed="no" mode="subsystem">
      <source>
        <address type="pci" domain="0x0000" bus="0x81" slot="0x00" function="0x0"></address>
      </source>
      <alias name="ua-hostdevice-gpu1"></alias>
    </hostdev>
    <disk device="disk" type="file">
      <source file="{disk}"></source>
      <target bus="virtio" dev="vda"></target>
      <driver name="qemu" type="qcow2"></driver>
      <alias name="ua-containerdisk"></alias>
    </disk>
    <serial type="unix">
      <target port="0"></target>
      <source mode="bind" path="{work}/serial0"></source>
      <log file="{work}/serial0-log" append="on"></log>
    </serial>
    <console type="pty">
      <target type="serial" port="0"></target>
    </console>
    <memballoon model="none"></memballoon>
  </devices>
  <metadata>
    <kubevirt xmlns="http://kubevirt.io">
      <uid>e4686d2c-6e8d-4335-b8fd-81bee22f4814</uid>
    </kubevirt>
  </metadata>
  <features>
    <acpi></acpi>
  </features>
  <vcpu placement="static">2</vcpu>
</domain>
"#,
        memory = 512 * MIB,
        emulator = session.path("libexec/qemu-kvm").display(),
        disk = disk.display(),
        work = work.display(),
    )
}

const GPU: CorpusGpu = CORPUS_GPUS[0];

/// The VM through the sidecar (shim) on `kind`, checked, re-marshalled by KubeVirt's model,
/// mapped to this machine's node 0 and with the GPU replaced by a stand-in. Returns the
/// definition to start and the chain.
fn launcher_definition(kind: HostKind, input: &str) -> (String, HbmChain) {
    let (answer, log) = answer(kind, BOOT_HBM_BYTES, input);
    let disk_booted_spm = kind == HostKind::SpmOnline && cmdline_of(input).is_empty();
    assert_eq!(
        spm_warnings(&log),
        usize::from(disk_booted_spm),
        "{kind:?}: a warning only when SPM HBM goes unmarked\n{log}"
    );
    let projected = check_chain_survives(
        &format!("{kind:?}"),
        input,
        &answer,
        &GPU,
        BOOT_HBM_BYTES,
        GiStyle::QemuCommandline,
    );
    let chain = hbm_chain::read(&projected, PciAddr::parse_host(GPU.host).unwrap()).unwrap();
    let here = for_this_machine(&projected);
    let with_stand_in = with_stand_in(&here, GPU.alias, StandIn::Rng).unwrap();
    (with_stand_in, chain)
}

#[test]
fn virt_launcher_like_start_of_a_disk_booted_vm_as_a_non_root_user() {
    let session = SessionLibvirt::start();
    let disk = session.empty_disk();
    let input = kubevirt_vm(&session, "hbm-launcher-disk", &disk, "");
    let (xml, _) = launcher_definition(HostKind::SpmOnline, &input);
    let domain = session.define("hbm-launcher-disk", &xml);
    domain.start();
    assert_eq!(domain.state(), "running");
    let pid = domain.qemu_pid();
    assert_eq!(uids_of(pid), vec![session.uid; 4], "QEMU runs as {LAUNCHER_USER}");
    assert_eq!(argv0_of(pid), session.path("libexec/qemu-kvm").display().to_string());
    assert!(
        session.qemu_log(&domain.name).contains("acpi-generic-initiator"),
        "{}",
        session.qemu_log(&domain.name)
    );
    let out = session.virsh(&["destroy", &domain.name]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(domain.state(), "shut off");
}

/// Boots the direct-kernel-boot variant on `kind` in a session and returns the guest's report
/// with the chain and the re-marshalled kernel command line.
fn boot_direct(kind: HostKind) -> (GuestReport, HbmChain, String) {
    let session = SessionLibvirt::start();
    let disk = session.empty_disk();
    let kit = guest::kit();
    let os_extra = format!(
        "\n    <kernel>{}</kernel>\n    <initrd>{}</initrd>\n    <cmdline>{BASE_CMDLINE}</cmdline>",
        kit.vmlinuz.display(),
        kit.initrd.display()
    );
    let name = format!("hbm-launcher-boot-{kind:?}").to_lowercase();
    let input = kubevirt_vm(&session, &name, &disk, &os_extra);
    let (xml, chain) = launcher_definition(kind, &input);
    let domain = session.define(&name, &xml);
    let started = Instant::now();
    domain.start();
    let pid = domain.qemu_pid();
    assert_eq!(uids_of(pid), vec![session.uid; 4], "QEMU runs as {LAUNCHER_USER}");
    let log = session.path("work/serial0-log");
    let console = || std::fs::read_to_string(&log).unwrap_or_default();
    domain
        .wait_shut_off(BOOT_BOUND)
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", console(), session.qemu_log(&domain.name)));
    eprintln!(
        "{kind:?}: direct-kernel boot as {LAUNCHER_USER} took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let report = GuestReport::parse(&console()).unwrap_or_else(|e| panic!("{e}\n{}", console()));
    (report, chain, cmdline_of(&xml))
}

/// The guest node of `chain`'s cell: the SRAT memory range whose PXM is the cell, exactly the
/// cell's size; and the stand-in on that node behind the expander's root port.
fn check_guest_node(report: &GuestReport, chain: &HbmChain) -> (u32, u64) {
    let ctx = || report.console.clone();
    let srat: Vec<_> = report
        .srat_memory()
        .into_iter()
        .filter(|m| m.pxm == chain.cell)
        .collect();
    assert_eq!(srat.len(), 1, "one SRAT range for PXM {}\n{}", chain.cell, ctx());
    assert_eq!(srat[0].end - srat[0].start + 1, chain.cell_bytes, "{}", ctx());
    let node = srat[0].node;
    assert!(report.nodes_online.contains(&node), "node {node} online\n{}", ctx());
    assert!(report.nodes[&node].cpus.is_empty(), "{}", ctx());
    let (vendor, device) = StandIn::Rng.guest_ids();
    let stand_in = report.pci_by_id(vendor, device);
    assert_eq!(stand_in.len(), 1, "{}", ctx());
    assert_eq!(
        stand_in[0].numa_node,
        i32::try_from(node).unwrap(),
        "stand-in on the HBM node\n{}",
        ctx()
    );
    assert_eq!(
        stand_in[0].bus,
        chain.bus_nr + 1,
        "behind the expander's root port\n{}",
        ctx()
    );
    assert!(report.nodes_generic_initiator.contains(&node), "{}", ctx());
    (node, srat[0].start)
}

#[test]
fn virt_launcher_like_boot_on_an_spm_online_host_shows_the_soft_reserved_hbm_node() {
    let (report, chain, cmdline) = boot_direct(HostKind::SpmOnline);
    let (node, start) = check_guest_node(&report, &chain);
    let ctx = || report.console.clone();
    assert_eq!(report.cmdline, cmdline, "{}", ctx());
    let params = soft_reserved_params(&cmdline).unwrap();
    assert_eq!(params.len(), 1, "{cmdline}");
    assert_eq!((params[0].start, params[0].size), (start, BOOT_HBM_BYTES), "{cmdline}");
    assert_eq!(report.nodes[&node].mem_total_kb, 0, "SPM: no usable memory\n{}", ctx());
    assert!(
        report.hmem_at(start, start + BOOT_HBM_BYTES - 1).is_some(),
        "hmem over the cell\n{}",
        ctx()
    );
}

#[test]
fn virt_launcher_like_boot_on_a_normal_memory_host_shows_the_hbm_node_with_its_memory() {
    let (report, chain, cmdline) = boot_direct(HostKind::Normal);
    let (node, _) = check_guest_node(&report, &chain);
    let ctx = || report.console.clone();
    assert!(!cmdline.contains("memmap="), "{cmdline}");
    // The SRAT range is exactly the cell (checked above); MemTotal is what the kernel left
    // usable: less its own allocations, which it places top-down, i.e. in this highest node
    // (struct pages, early allocations; 459 of 512 MiB seen).
    let total_kb = report.nodes[&node].mem_total_kb;
    let cell_kb = BOOT_HBM_BYTES / 1024;
    assert!(
        total_kb <= cell_kb && total_kb >= cell_kb * 3 / 4,
        "node {node} MemTotal {total_kb} kB, cell {cell_kb} kB\n{}",
        ctx()
    );
    assert!(report.nodes_has_memory.contains(&node), "{}", ctx());
    assert!(report.iomem_named("Soft Reserved").is_empty(), "{}", ctx());
}
