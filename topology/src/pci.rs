//! PCI functions from `sys/bus/pci/devices/<addr>/{class,vendor,device,numa_node,local_cpulist,
//! local_cpus,driver,iommu_group}`. Only GPU-like functions (class 0x03xxxx display, 0x1200xx
//! processing accelerator) are read past `class`, which keeps a 10,000-device scan cheap.
//!
//! When `proc/bus/pci/devices` is there, one read of it gives every function's vendor, and
//! `class` is opened only for functions of a [`GPU_VENDORS`] vendor and for configured GPUs: a
//! host's NVMe drives, NICs and bridges cost no syscall. The file names no PCI domain; the
//! (domain, bus) pairs of `sys/class/pci_bus` supply them, so with both files the candidates are
//! addressed directly and `sys/bus/pci/devices` (one entry per function, the costly part of a
//! big host's scan) is not listed. Without them (some containers, snapshots) the folder is
//! listed, and without `proc/bus/pci/devices` every function's `class` is read.

use crate::PciAddress;
use crate::sysfs::{ListError, Sysfs, SysfsError, cut, parse_cpumask, parse_hex, parse_list};

const DEVICES: &str = "sys/bus/pci/devices";
/// One entry `DDDD:BB` per PCI bus.
const BUSES: &str = "sys/class/pci_bus";
/// One line per function: `BBDF\tVVVVDDDD\t...` (bus, devfn, vendor, device; no domain).
const PROC_DEVICES: &str = "proc/bus/pci/devices";

/// Vendors whose functions may be GPUs (class 0x03xxxx or 0x1200xx): AMD/ATI, NVIDIA, Intel,
/// Habana, Huawei, the server BMC display vendors ASPEED and Matrox, and the display devices of
/// virtual machines (QEMU, Red Hat/virtio, VMware). With `proc/bus/pci/devices` present, a GPU
/// of another vendor is found only when `discovery.gpus` names it.
pub const GPU_VENDORS: &[u16] = &[
    0x1002, 0x10de, 0x8086, 0x1da3, 0x19e5, 0x1a03, 0x102b, 0x1234, 0x1b36, 0x1af4, 0x15ad,
];

/// A GPU-like PCI function as sysfs shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciGpu {
    pub address: PciAddress,
    pub vendor: String,
    pub device: String,
    pub class: String,
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
    pub numa_node: Option<u32>,
    /// CPUs from `local_cpulist` (or the `local_cpus` mask), empty when unknown.
    pub local_cpus: Vec<u32>,
}

/// Result of the PCI scan: GPUs plus notes on odd inputs.
#[derive(Clone, Debug, Default)]
pub struct PciScan {
    pub gpus: Vec<PciGpu>,
    /// Every function address present (GPU or not) when `sys/bus/pci/devices` was listed;
    /// `None` when the candidates were addressed directly (see [`PciScan::is_present`]).
    pub listed: Option<Vec<PciAddress>>,
    pub warnings: Vec<String>,
}

impl PciScan {
    /// Whether the function `address` exists (for matching SRAT handles): from the listing, or
    /// one lookup of its folder.
    pub fn is_present(&self, fs: &Sysfs, address: PciAddress) -> bool {
        match &self.listed {
            Some(listed) => listed.contains(&address),
            None => fs.exists(&format!("{DEVICES}/{address}")),
        }
    }
}

/// Whether a 24-bit class code is GPU-like.
pub fn is_gpu_class(class: u32) -> bool {
    (class >> 16) == 0x03 || (class >> 8) == 0x1200
}

/// Reads every PCI function under the root (`configured`: GPUs named by the config, whose
/// `class` is always read). A missing `sys/bus/pci/devices` is an empty scan; a folder that
/// cannot be listed is an error (an empty scan would report every GPU gone).
pub fn scan(fs: &Sysfs, configured: &[PciAddress]) -> Result<PciScan, SysfsError> {
    let mut out = PciScan::default();
    let vendors = VendorMap::read(fs);
    let (addresses, listed) = match vendors.as_ref().zip(bus_domains(fs)) {
        Some((map, buses)) => {
            match fs.check_dir(DEVICES) {
                Err(e) if e.is_missing() => return Ok(out),
                Err(e) => return Err(e),
                Ok(()) => {}
            }
            (map.candidates(&buses, configured), false)
        }
        None => match list_functions(fs, &mut out.warnings)? {
            Some(listed) => (listed, true),
            None => return Ok(out),
        },
    };
    for &address in &addresses {
        if !configured.contains(&address) && vendors.as_ref().is_some_and(|map| !map.may_be_gpu(address)) {
            continue;
        }
        if let Some(gpu) = read_if_gpu(fs, address, &mut out.warnings) {
            out.gpus.push(gpu);
        }
    }
    out.listed = listed.then_some(addresses);
    Ok(out)
}

/// Every function in `sys/bus/pci/devices`, in address order; `None` when the folder is
/// missing (no PCI at all).
fn list_functions(fs: &Sysfs, warnings: &mut Vec<String>) -> Result<Option<Vec<PciAddress>>, SysfsError> {
    let names = match fs.list_dir(DEVICES) {
        Ok(n) => n,
        Err(e) if e.is_missing() => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut addresses = Vec::with_capacity(names.len());
    for name in names {
        match PciAddress::parse(&name) {
            Ok(address) => addresses.push(address),
            Err(_) => warnings.push(format!(
                "{}/{name}: not a PCI address, skipped",
                fs.path(DEVICES).display()
            )),
        }
    }
    Ok(Some(addresses))
}

/// The (domain, bus) pairs of `sys/class/pci_bus`, sorted; `None` when the folder is absent
/// or holds an entry that is not `DDDD:BB` (the functions are listed then).
fn bus_domains(fs: &Sysfs) -> Option<Vec<(u16, u8)>> {
    let names = fs.list_dir(BUSES).ok()?;
    let mut buses = Vec::with_capacity(names.len());
    for name in names {
        let (domain, bus) = name.split_once(':')?;
        let domain = u16::from_str_radix(domain, 16).ok().filter(|_| domain.len() == 4)?;
        let bus = u8::from_str_radix(bus, 16).ok().filter(|_| bus.len() == 2)?;
        buses.push((domain, bus));
    }
    buses.sort_unstable();
    Some(buses)
}

/// The GPU at `address`, or `None` when it is not GPU-like, vanished or has a bad `class`
/// (noted in `warnings`).
fn read_if_gpu(fs: &Sysfs, address: PciAddress, warnings: &mut Vec<String>) -> Option<PciGpu> {
    let base = format!("{DEVICES}/{address}");
    let class = match fs.read_value(&format!("{base}/class")) {
        Ok(v) => v,
        // A function that vanished between listing and reading, a dangling link, or a candidate
        // (bus, devfn) in a domain that does not have it.
        Err(e) if e.is_missing() => return None,
        Err(e) => {
            warnings.push(format!("{e}; function skipped"));
            return None;
        }
    };
    let Some(class_code) = parse_hex(&class).filter(|c| *c <= 0xff_ffff) else {
        warnings.push(format!(
            "{}/class: {class:?} is not a class code; function skipped",
            fs.path(&base).display()
        ));
        return None;
    };
    if !is_gpu_class(class_code as u32) {
        return None;
    }
    Some(read_gpu(fs, &base, address, class_code as u32, warnings))
}

/// What `proc/bus/pci/devices` says about each (bus, devfn): no function there, only functions
/// of other vendors, or a function of a [`GPU_VENDORS`] vendor (in some PCI domain: the file
/// does not name domains, so a (bus, devfn) counts as a candidate when any domain's is one).
struct VendorMap {
    /// Indexed by `bus << 8 | devfn`.
    seen: Vec<Seen>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    Absent,
    OtherVendors,
    Candidate,
}

impl VendorMap {
    /// `None` when the file is absent, unreadable or not in the expected form (every `class` is
    /// read then).
    fn read(fs: &Sysfs) -> Option<Self> {
        let text = fs.read_text(PROC_DEVICES).ok()?;
        let mut seen = vec![Seen::Absent; 1 << 16];
        for line in text.lines().filter(|l| !l.is_empty()) {
            let mut fields = line.split('\t');
            let (Some(slot), Some(ids)) = (fields.next(), fields.next()) else {
                return None;
            };
            let slot = u16::from_str_radix(slot, 16).ok().filter(|_| slot.len() == 4)?;
            let ids = u32::from_str_radix(ids, 16).ok().filter(|_| ids.len() == 8)?;
            let vendor = (ids >> 16) as u16;
            let entry = &mut seen[usize::from(slot)];
            if GPU_VENDORS.contains(&vendor) {
                *entry = Seen::Candidate;
            } else if *entry == Seen::Absent {
                *entry = Seen::OtherVendors;
            }
        }
        Some(Self { seen })
    }

    /// The functions whose `class` must be read, addressed in every domain that has their bus,
    /// plus the configured GPUs; in address order.
    fn candidates(&self, buses: &[(u16, u8)], configured: &[PciAddress]) -> Vec<PciAddress> {
        let mut addresses: Vec<PciAddress> = buses
            .iter()
            .flat_map(|&(domain, bus)| {
                (0..=u8::MAX)
                    .filter(move |&devfn| self.seen[usize::from(bus) << 8 | usize::from(devfn)] == Seen::Candidate)
                    .map(move |devfn| PciAddress::new(domain, bus, devfn >> 3, devfn & 7))
            })
            .chain(configured.iter().copied())
            .collect();
        addresses.sort_unstable();
        addresses.dedup();
        addresses
    }

    /// Whether the function at `address` needs its `class` read: a candidate vendor, or not
    /// listed (added since, or the file is stale).
    fn may_be_gpu(&self, address: PciAddress) -> bool {
        let slot = usize::from(address.bus) << 8 | usize::from(address.devfn());
        self.seen[slot] != Seen::OtherVendors
    }
}

fn hex_id(fs: &Sysfs, rel: &str, warnings: &mut Vec<String>) -> String {
    match fs.read_hex(rel) {
        Ok(v) if v <= 0xffff => format!("{v:04x}"),
        Ok(v) => {
            warnings.push(format!("{}: {v:#x} is wider than 16 bits", fs.path(rel).display()));
            String::new()
        }
        Err(e) if e.is_missing() => String::new(),
        Err(e) => {
            warnings.push(e.to_string());
            String::new()
        }
    }
}

fn read_gpu(fs: &Sysfs, base: &str, address: PciAddress, class: u32, warnings: &mut Vec<String>) -> PciGpu {
    let vendor = hex_id(fs, &format!("{base}/vendor"), warnings);
    let device = hex_id(fs, &format!("{base}/device"), warnings);
    let driver = match fs.read_link_name(&format!("{base}/driver")) {
        Ok(d) => d,
        Err(e) => {
            warnings.push(e.to_string());
            None
        }
    };
    let iommu_group = match fs.read_link_name(&format!("{base}/iommu_group")) {
        Ok(Some(g)) => match g.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                warnings.push(format!(
                    "{}/iommu_group: link to {g:?} is not a group number",
                    fs.path(base).display()
                ));
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            warnings.push(e.to_string());
            None
        }
    };
    let numa_node = match fs.read_node(&format!("{base}/numa_node")) {
        Ok(n) => n,
        Err(e) if e.is_missing() => None,
        Err(e) => {
            warnings.push(format!("{e}; numa_node taken as unknown"));
            None
        }
    };
    let local_cpus = match fs.read_value(&format!("{base}/local_cpulist")) {
        Ok(v) => parse_list(&v).unwrap_or_else(|error| {
            let file = format!("{}/local_cpulist", fs.path(base).display());
            warnings.push(match error {
                ListError::Syntax => format!("{file}: {:?} is not a cpulist", cut(&v)),
                ListError::TooMany => format!("{file}: {error}"),
            });
            Vec::new()
        }),
        Err(_) => match fs.read_value(&format!("{base}/local_cpus")) {
            Ok(v) => parse_cpumask(&v).unwrap_or_default(),
            Err(_) => Vec::new(),
        },
    };
    PciGpu {
        address,
        vendor,
        device,
        class: format!("{class:06x}"),
        driver,
        iommu_group,
        numa_node,
        local_cpus,
    }
}
