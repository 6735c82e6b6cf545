//! Booted guests: the guest kit (Debian guest kernel + busybox initramfs from `scripts/guest-kit`),
//! direct-kernel-boot q35 domains with the serial console in a file, booting them through libvirt
//! (TCG) until the guest powers itself off, and the guest's printed report parsed into a struct.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::libvirt::{Domain, read_console_log, require_libvirt};

/// Upper bound for one boot (about 6 s alone under TCG; generous for a busy 2-core CI machine).
pub const BOOT_BOUND: Duration = Duration::from_secs(240);

/// Kernel parameters every kit guest gets: serial console, reboot on panic (-> domain destroyed),
/// quiet console so kernel messages do not interleave with the report.
pub const BASE_CMDLINE: &str = "console=ttyS0 panic=-1 loglevel=1";

/// The built guest kit.
#[derive(Clone, Debug)]
pub struct Kit {
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
}

fn kit_dir() -> PathBuf {
    match std::env::var_os("HBM_GUEST_KIT") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from("/var/cache/hbm-passthrough/guest-kit"),
    }
}

/// The guest kit, built by `scripts/guest-kit` when absent or of an older version (needs apt
/// network access as root).
pub fn kit() -> &'static Kit {
    static KIT: OnceLock<Result<Kit, String>> = OnceLock::new();
    let r = KIT.get_or_init(|| {
        let dir = kit_dir();
        let kit = Kit {
            vmlinuz: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            dir: dir.clone(),
        };
        let ready = |k: &Kit| k.vmlinuz.is_file() && k.initrd.is_file() && k.dir.join("kit.env").is_file();
        // Always asked: the script returns at once when the cached kit is of its KIT_VERSION and
        // rebuilds an older one.
        let script = super::repo_root().join("scripts/guest-kit");
        let out = Command::new("bash")
            .arg(&script)
            .env("HBM_GUEST_KIT", &dir)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() || !ready(&kit) {
            return Err(format!(
                "guest kit missing in {} and {} failed (it needs apt-get with network, as root): {}",
                dir.display(),
                script.display(),
                super::libvirt::text(&out).trim()
            ));
        }
        Ok(kit)
    });
    match r {
        Ok(k) => k,
        Err(e) => panic!("{e}"),
    }
}

/// A direct-kernel-boot q35 TCG domain around the kit, serial console into `console_log`, every
/// lifecycle event ending in "shut off".
#[derive(Clone, Debug)]
pub struct DirectBootDomain {
    pub name: String,
    pub console_log: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Appended to [`BASE_CMDLINE`].
    pub extra_cmdline: String,
    /// Whether to write `<features><acpi/></features>` (the rewriter must add it when absent).
    pub acpi: bool,
    /// Top-level elements placed after `<features>` (`<cpu>`, `<numatune>`, ...).
    pub extra_top: String,
    /// Devices placed after the emulator, serial console and `<memballoon model='none'/>`.
    pub devices: String,
    /// Placed last (`<qemu:commandline>`); the root declares the `qemu:` namespace.
    pub tail: String,
    /// The initramfs to boot instead of the kit's (e.g. [`initrd_with_hbm_hook`]).
    pub initrd: Option<PathBuf>,
}

impl DirectBootDomain {
    pub fn new(name: &str, console_log: &Path) -> Self {
        Self {
            name: name.to_string(),
            console_log: console_log.to_path_buf(),
            vcpus: 2,
            memory_mib: 1024,
            extra_cmdline: String::new(),
            acpi: true,
            extra_top: String::new(),
            devices: String::new(),
            tail: String::new(),
            initrd: None,
        }
    }

    pub fn to_xml(&self) -> String {
        let kit = kit();
        let cmdline = if self.extra_cmdline.is_empty() {
            BASE_CMDLINE.to_string()
        } else {
            format!("{BASE_CMDLINE} {}", self.extra_cmdline)
        };
        let features = if self.acpi {
            "  <features>\n    <acpi/>\n  </features>\n"
        } else {
            ""
        };
        format!(
            "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>{mem}</memory>
  <currentMemory unit='MiB'>{mem}</currentMemory>
  <vcpu placement='static'>{vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
{features}{extra_top}  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='file'>
      <source path='{log}'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
{devices}  </devices>
{tail}</domain>
",
            name = self.name,
            mem = self.memory_mib,
            vcpus = self.vcpus,
            kernel = kit.vmlinuz.display(),
            initrd = self.initrd.as_deref().unwrap_or(&kit.initrd).display(),
            log = self.console_log.display(),
            extra_top = self.extra_top,
            devices = self.devices,
            tail = self.tail,
        )
    }
}

/// Defines `xml` (its name must be unique), starts it, waits for the guest to power off, and
/// parses the report it printed to `console_log`. The domain is undefined afterwards either way.
/// Errors carry the console and QEMU logs.
pub fn boot(xml: &str, console_log: &Path) -> Result<GuestReport, String> {
    require_libvirt();
    let _no_hook = super::libvirt::without_installed_hook();
    let _ = std::fs::remove_file(console_log);
    let domain = Domain::define(xml)?;
    let logs = |d: &Domain| {
        format!(
            "\n--- console ({}) ---\n{}\n--- qemu log ---\n{}",
            console_log.display(),
            read_console_log(console_log),
            d.qemu_log()
        )
    };
    domain.start().map_err(|e| format!("{e}{}", logs(&domain)))?;
    domain
        .wait_shut_off(BOOT_BOUND)
        .map_err(|e| format!("{e}{}", logs(&domain)))?;
    let log = read_console_log(console_log);
    GuestReport::parse(&log).map_err(|e| format!("{e}{}", logs(&domain)))
}

/// A NUMA node as the guest sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestNode {
    pub cpus: Vec<u32>,
    pub mem_total_kb: u64,
}

/// A PCI function as the guest sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestPci {
    /// `0000:ff:00.0`
    pub bdf: String,
    /// Guest bus number.
    pub bus: u32,
    /// `numa_node` (-1 = none).
    pub numa_node: i32,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
}

/// One `/proc/iomem` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IomemEntry {
    /// Nesting depth (two spaces per level).
    pub depth: usize,
    pub start: u64,
    pub end: u64,
    pub name: String,
}

/// An `ACPI: SRAT: Node N PXM P [mem S-E]` memory affinity line of the guest's kernel log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SratMemory {
    pub node: u32,
    pub pxm: u32,
    pub start: u64,
    pub end: u64,
}

/// What the guest printed between `HBM-GUEST-REPORT-BEGIN` and `-END` (format: scripts/guest-kit).
#[derive(Clone, Debug, Default)]
pub struct GuestReport {
    pub cmdline: String,
    pub nodes_online: Vec<u32>,
    pub nodes_possible: Vec<u32>,
    pub nodes_has_cpu: Vec<u32>,
    pub nodes_has_memory: Vec<u32>,
    pub nodes_generic_initiator: Vec<u32>,
    pub nodes: BTreeMap<u32, GuestNode>,
    pub pci: Vec<GuestPci>,
    pub iomem: Vec<IomemEntry>,
    pub dmesg: Vec<String>,
    /// What `hbm-hook verify-guest --json` printed, when the initramfs held it.
    pub verify: Option<VerifyOutput>,
    /// The whole console log, for failure messages.
    pub console: String,
}

/// The guest-side check's output (between `HBM-VERIFY-BEGIN` and `-END`).
#[derive(Clone, Debug)]
pub struct VerifyOutput {
    pub exit: i32,
    pub report: serde_json::Value,
}

impl VerifyOutput {
    /// The block after the report, `None` when the guest printed none.
    fn parse(console: &str) -> Result<Option<Self>, String> {
        let Some(begin) = console.find("HBM-VERIFY-BEGIN") else {
            return Ok(None);
        };
        let body = &console[begin..];
        let end = body
            .find("HBM-VERIFY-END")
            .ok_or("verify-guest output cut short (no END marker)")?;
        let mut json = String::new();
        let mut exit = None;
        for line in body[..end].lines().skip(1) {
            let line = line.trim_end_matches('\r');
            match line.strip_prefix("HBM-VERIFY-EXIT\t") {
                Some(code) => exit = Some(code.trim().parse().map_err(|e| format!("exit status '{code}': {e}"))?),
                None => {
                    json.push_str(line);
                    json.push('\n');
                }
            }
        }
        let report = serde_json::from_str(&json).map_err(|e| format!("verify-guest JSON: {e}\n{json}"))?;
        Ok(Some(Self {
            exit: exit.ok_or("verify-guest printed no exit status")?,
            report,
        }))
    }
}

/// The static `hbm-hook` (`deploy/build-static.sh`, built once per test process: a release build,
/// minutes on a cold cache).
pub fn static_hbm_hook() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = super::repo_root().join("deploy/build-static.sh");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed: {}",
            script.display(),
            super::libvirt::text(&out)
        );
        let dir = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        super::repo_root().join(dir).join("hbm-hook")
    })
}

/// The kit's initramfs with a second cpio archive appended holding the static `/bin/hbm-hook`
/// (the kernel unpacks concatenated archives in order); the kit's `/init` then runs
/// `hbm-hook verify-guest --json` after its report.
pub fn initrd_with_hbm_hook() -> &'static Path {
    static INITRD: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = INITRD.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::copy(static_hbm_hook(), root.join("bin/hbm-hook")).unwrap_or_else(|e| panic!("copy hbm-hook: {e}"));
        let extra = dir.path().join("hbm-hook.cpio.gz");
        let script = format!(
            "cd '{}' && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -1 > '{}'",
            root.display(),
            extra.display()
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(out.status.success(), "cpio: {}", super::libvirt::text(&out));
        let mut image = std::fs::read(&kit().initrd).unwrap_or_else(|e| panic!("kit initrd: {e}"));
        image.extend(std::fs::read(&extra).unwrap_or_else(|e| panic!("{e}")));
        let path = dir.path().join("initrd-with-hbm-hook.img");
        std::fs::write(&path, image).unwrap_or_else(|e| panic!("{e}"));
        (dir, path)
    });
    path
}

/// Parses a cpulist (`0-1,4`, empty = none).
pub fn parse_cpulist(s: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let num = |x: &str| {
            x.trim()
                .parse::<u32>()
                .map_err(|e| format!("cpulist '{s}': '{x}': {e}"))
        };
        match part.split_once('-') {
            Some((a, b)) => out.extend(num(a)?..=num(b)?),
            None => out.push(num(part)?),
        }
    }
    Ok(out)
}

fn hex_u64(s: &str) -> Result<u64, String> {
    let s = s.trim();
    u64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| format!("'{s}' is not hex: {e}"))
}

impl GuestReport {
    pub fn parse(console: &str) -> Result<Self, String> {
        let begin = console
            .find("HBM-GUEST-REPORT-BEGIN v1")
            .ok_or("the guest printed no report (no BEGIN marker)")?;
        let body = &console[begin..];
        let end = body
            .find("HBM-GUEST-REPORT-END")
            .ok_or("the guest report is cut short (no END marker)")?;
        let body = &body[..end];
        let mut r = GuestReport {
            verify: VerifyOutput::parse(console)?,
            console: console.to_string(),
            ..Default::default()
        };
        for line in body.lines().skip(1) {
            let line = line.trim_end_matches('\r');
            let f: Vec<&str> = line.split('\t').collect();
            let bad = || format!("malformed report line '{line}'");
            match f[0] {
                "cmdline" => r.cmdline = f.get(1).unwrap_or(&"").to_string(),
                "nodes-online" => r.nodes_online = parse_cpulist(f.get(1).unwrap_or(&""))?,
                "nodes-possible" => r.nodes_possible = parse_cpulist(f.get(1).unwrap_or(&""))?,
                "nodes-has-cpu" => r.nodes_has_cpu = parse_cpulist(f.get(1).unwrap_or(&""))?,
                "nodes-has-memory" => r.nodes_has_memory = parse_cpulist(f.get(1).unwrap_or(&""))?,
                "nodes-generic-initiator" => r.nodes_generic_initiator = parse_cpulist(f.get(1).unwrap_or(&""))?,
                "node" => {
                    if f.len() != 4 {
                        return Err(bad());
                    }
                    let id: u32 = f[1].parse().map_err(|_| bad())?;
                    let n = r.nodes.entry(id).or_default();
                    match f[2] {
                        "cpulist" => n.cpus = parse_cpulist(f[3])?,
                        "memtotal-kb" => n.mem_total_kb = f[3].trim().parse().map_err(|_| bad())?,
                        _ => return Err(bad()),
                    }
                }
                "pci" => {
                    if f.len() != 6 {
                        return Err(bad());
                    }
                    let bus = f[1].split(':').nth(1).ok_or_else(bad)?;
                    r.pci.push(GuestPci {
                        bdf: f[1].to_string(),
                        bus: u32::from_str_radix(bus, 16).map_err(|_| bad())?,
                        numa_node: f[2].trim().parse().map_err(|_| bad())?,
                        vendor: u16::try_from(hex_u64(f[3])?).map_err(|_| bad())?,
                        device: u16::try_from(hex_u64(f[4])?).map_err(|_| bad())?,
                        class: u32::try_from(hex_u64(f[5])?).map_err(|_| bad())?,
                    });
                }
                "iomem" => {
                    let raw = f[1..].join("\t");
                    let depth = (raw.len() - raw.trim_start().len()) / 2;
                    let (range, name) = raw.trim_start().split_once(" : ").ok_or_else(bad)?;
                    let (s, e) = range.split_once('-').ok_or_else(bad)?;
                    r.iomem.push(IomemEntry {
                        depth,
                        start: hex_u64(s)?,
                        end: hex_u64(e)?,
                        name: name.to_string(),
                    });
                }
                "dmesg" => r.dmesg.push(f[1..].join("\t")),
                _ => return Err(bad()),
            }
        }
        Ok(r)
    }

    /// `/proc/iomem` entries whose name equals `name` (`Soft Reserved`) or, for a name ending in
    /// `.`, starts with it (`hmem.`).
    pub fn iomem_named(&self, name: &str) -> Vec<&IomemEntry> {
        self.iomem
            .iter()
            .filter(|e| {
                if name.ends_with('.') {
                    e.name.starts_with(name)
                } else {
                    e.name == name
                }
            })
            .collect()
    }

    /// The SRAT memory affinity ranges the guest kernel logged.
    pub fn srat_memory(&self) -> Vec<SratMemory> {
        let mut out = Vec::new();
        for l in &self.dmesg {
            let Some(rest) = l.split("ACPI: SRAT: Node ").nth(1) else {
                continue;
            };
            // "1 PXM 1 [mem 0x40000000-0x5fffffff]" (possibly followed by " hotplug")
            let mut it = rest.split_whitespace();
            let node = it.next().and_then(|x| x.parse().ok());
            let pxm = match (it.next(), it.next()) {
                (Some("PXM"), Some(p)) => p.parse().ok(),
                _ => None,
            };
            let range = rest.split("[mem ").nth(1).and_then(|x| x.split(']').next());
            if let (Some(node), Some(pxm), Some(range)) = (node, pxm, range)
                && let Some((s, e)) = range.split_once('-')
                && let (Ok(start), Ok(end)) = (hex_u64(s), hex_u64(e))
            {
                out.push(SratMemory { node, pxm, start, end });
            }
        }
        out
    }

    /// The guest NUMA node whose SRAT memory range is exactly `[start, end]`.
    pub fn node_with_memory(&self, start: u64, end: u64) -> Option<u32> {
        self.srat_memory()
            .into_iter()
            .find(|m| m.start == start && m.end == end)
            .map(|m| m.node)
    }

    /// PCI functions with this vendor:device.
    pub fn pci_by_id(&self, vendor: u16, device: u16) -> Vec<&GuestPci> {
        self.pci
            .iter()
            .filter(|p| p.vendor == vendor && p.device == device)
            .collect()
    }

    /// Whether `[start, end]` is covered by a `Soft Reserved` entry under an `hmem.N` entry
    /// starting at `start` (the guest's firmware/BIOS may keep the last few KiB of low RAM, so
    /// the entry may end a little below `end`).
    pub fn hmem_at(&self, start: u64, end: u64) -> Option<&IomemEntry> {
        self.iomem_named("hmem.")
            .into_iter()
            .find(|e| e.start == start && e.end <= end && e.end > start)
    }
}

/// A guest `memmap=<size>%<offset>-1+0xefffffff` parameter, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftReservedParam {
    pub start: u64,
    pub size: u64,
}

impl SoftReservedParam {
    pub fn end(&self) -> u64 {
        self.start + self.size - 1
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1u64 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1u64 << 30),
        Some('T' | 't') => (&s[..s.len() - 1], 1u64 << 40),
        _ => (s, 1),
    };
    let n = match num.strip_prefix("0x").or_else(|| num.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => num.parse::<u64>(),
    }
    .map_err(|e| format!("size '{s}': {e}"))?;
    n.checked_mul(mult).ok_or_else(|| format!("size '{s}' overflows"))
}

/// Every `memmap=SIZE%OFFSET-1+0xefffffff` (soft reserved) parameter of a kernel command line.
pub fn soft_reserved_params(cmdline: &str) -> Result<Vec<SoftReservedParam>, String> {
    let mut out = Vec::new();
    for w in cmdline.split_whitespace() {
        let Some(v) = w.strip_prefix("memmap=") else { continue };
        // Several ranges may be comma-separated in one parameter.
        for one in v.split(',') {
            let Some((size, rest)) = one.split_once('%') else {
                continue;
            };
            let Some((offset, types)) = rest.split_once('-') else {
                continue;
            };
            if !types.eq_ignore_ascii_case("1+0xefffffff") {
                continue;
            }
            out.push(SoftReservedParam {
                start: parse_size(offset)?,
                size: parse_size(size)?,
            });
        }
    }
    Ok(out)
}
