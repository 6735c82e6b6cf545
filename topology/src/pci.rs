//! PCI functions from `sys/bus/pci/devices/<addr>/{class,vendor,device,numa_node,local_cpulist,
//! local_cpus,driver,iommu_group}`. Only GPU-like functions (class 0x03xxxx display, 0x1200xx
//! processing accelerator) are read past `class`, which keeps a 10,000-device scan cheap.

use crate::PciAddress;
use crate::sysfs::{ListError, Sysfs, SysfsError, cut, parse_cpumask, parse_hex, parse_list};

const DEVICES: &str = "sys/bus/pci/devices";

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
    /// Every function address present (GPU or not), for matching SRAT handles and config.
    pub present: Vec<PciAddress>,
    pub warnings: Vec<String>,
}

/// Whether a 24-bit class code is GPU-like.
pub fn is_gpu_class(class: u32) -> bool {
    (class >> 16) == 0x03 || (class >> 8) == 0x1200
}

/// Reads every PCI function under the root. A missing `sys/bus/pci/devices` is an empty scan; a
/// folder that cannot be listed is an error (an empty scan would report every GPU gone).
pub fn scan(fs: &Sysfs) -> Result<PciScan, SysfsError> {
    let mut out = PciScan::default();
    let names = match fs.list_dir(DEVICES) {
        Ok(n) => n,
        Err(e) if e.is_missing() => return Ok(out),
        Err(e) => return Err(e),
    };
    let classes = read_classes(fs, &names);
    for (name, class) in names.into_iter().zip(classes) {
        let Ok(address) = PciAddress::parse(&name) else {
            out.warnings.push(format!(
                "{}/{name}: not a PCI address, skipped",
                fs.path(DEVICES).display()
            ));
            continue;
        };
        out.present.push(address);
        let base = format!("{DEVICES}/{name}");
        let class = match class {
            Ok(v) => v,
            // A function that vanished between listing and reading, or a dangling link.
            Err(e) if e.is_missing() => continue,
            Err(e) => {
                out.warnings.push(format!("{e}; function skipped"));
                continue;
            }
        };
        let Some(class_code) = parse_hex(&class).filter(|c| *c <= 0xff_ffff) else {
            out.warnings.push(format!(
                "{}/class: {class:?} is not a class code; function skipped",
                fs.path(&base).display()
            ));
            continue;
        };
        if !is_gpu_class(class_code as u32) {
            continue;
        }
        out.gpus
            .push(read_gpu(fs, &base, address, class_code as u32, &mut out.warnings));
    }
    Ok(out)
}

/// Reads every function's `class` (the scan is bound by these open/read/close syscalls).
fn read_classes(fs: &Sysfs, names: &[String]) -> Vec<Result<String, SysfsError>> {
    names
        .iter()
        .map(|n| fs.read_value(&format!("{DEVICES}/{n}/class")))
        .collect()
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
