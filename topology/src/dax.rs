//! Device-dax instances from `sys/bus/dax/devices/daxX.Y/{size,target_node,numa_node,resource,
//! align,mappingN/{start,end}}`; the link target tells the memory's origin (`platform/hmem.N`:
//! Soft Reserved; `ACPI0017`/CXL `region`: CXL; `ndbus`: NVDIMM); `driver` tells whether the
//! memory is onlined (`kmem`) or held as a character device (`device_dax`).

use crate::sysfs::{Sysfs, SysfsError};

const DEVICES: &str = "sys/bus/dax/devices";

/// Where a dax device's memory comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DaxOrigin {
    /// `platform/hmem.N`: EFI specific-purpose (Soft Reserved) memory.
    SoftReserved,
    Cxl,
    Nvdimm,
    Unknown,
}

impl DaxOrigin {
    /// Memory firmware set aside as Specific Purpose (HBM candidates).
    pub fn is_specific_purpose(self) -> bool {
        matches!(self, DaxOrigin::SoftReserved | DaxOrigin::Cxl)
    }
}

/// One dax device. `size` carries the read error when the device vanished or the file is bad,
/// so the region can be reported unhealthy naming the file.
#[derive(Debug)]
pub struct DaxDevice {
    pub name: String,
    pub origin: DaxOrigin,
    pub target_node: Option<u32>,
    pub size: Result<u64, SysfsError>,
    pub align: Option<u64>,
    /// Physical start (`resource`, root-only; else `mapping0/start`).
    pub base: Option<u64>,
    /// Sum of `mappingN` lengths, when any mapping is readable.
    pub mapped_bytes: Option<u64>,
    /// `kmem` (memory online in `target_node`), `device_dax`, or `None` when unbound.
    pub driver: Option<String>,
}

impl DaxDevice {
    /// `/dev/<name>`.
    pub fn dev_path(&self) -> String {
        format!("/dev/{}", self.name)
    }
}

#[derive(Debug, Default)]
pub struct DaxScan {
    pub devices: Vec<DaxDevice>,
    pub warnings: Vec<String>,
}

fn origin_of(target: &str) -> DaxOrigin {
    if target.contains("/platform/hmem.") {
        DaxOrigin::SoftReserved
    } else if target.contains("ACPI0017") || target.contains("/cxl") || target.contains("dax_region") {
        DaxOrigin::Cxl
    } else if target.contains("ndbus") || target.contains("ACPI0012") {
        DaxOrigin::Nvdimm
    } else {
        DaxOrigin::Unknown
    }
}

/// Reads every dax device. A device whose `target_node` cannot be read (vanished, garbage) is
/// left out with a warning naming the file; one whose `size` cannot be read is kept with the
/// error in `size`.
pub fn scan(fs: &Sysfs) -> DaxScan {
    let mut out = DaxScan::default();
    let names = match fs.list_dir(DEVICES) {
        Ok(n) => n,
        Err(e) if e.is_missing() => return out,
        Err(e) => {
            out.warnings.push(format!("dax devices not scanned: {e}"));
            return out;
        }
    };
    for name in names {
        let base = format!("{DEVICES}/{name}");
        let origin = match fs.read_link(&base) {
            Ok(Some(t)) => origin_of(&t.to_string_lossy()),
            Ok(None) => DaxOrigin::Unknown,
            Err(e) => {
                out.warnings.push(format!("{e}; dax device skipped"));
                continue;
            }
        };
        let target_node = match fs.read_node(&format!("{base}/target_node")) {
            Ok(n) => n,
            Err(e) => {
                out.warnings.push(format!("{e}; dax device {name} skipped"));
                continue;
            }
        };
        let size = fs.read_u64(&format!("{base}/size"));
        let align = fs.read_u64(&format!("{base}/align")).ok();
        let mut mapped: Option<u64> = None;
        let mut first_start = None;
        if let Ok(entries) = fs.list_dir(&base) {
            for m in entries
                .iter()
                .filter(|e| e.starts_with("mapping") && e[7..].parse::<u32>().is_ok())
            {
                let (Ok(s), Ok(e)) = (
                    fs.read_hex(&format!("{base}/{m}/start")),
                    fs.read_hex(&format!("{base}/{m}/end")),
                ) else {
                    continue;
                };
                if e < s {
                    out.warnings.push(format!(
                        "{}/{m}: end {e:#x} below start {s:#x}",
                        fs.path(&base).display()
                    ));
                    continue;
                }
                if m == "mapping0" {
                    first_start = Some(s);
                }
                mapped = Some(mapped.unwrap_or(0).saturating_add((e - s).saturating_add(1)));
            }
        }
        // `resource` is root-only (0400); unprivileged reads fail or read 0.
        let base_addr = match fs.read_hex(&format!("{base}/resource")) {
            Ok(r) if r != 0 => Some(r),
            _ => first_start,
        };
        let driver = fs.read_link_name(&format!("{base}/driver")).ok().flatten().or_else(|| {
            ["kmem", "device_dax"]
                .into_iter()
                .find(|d| fs.exists(&format!("sys/bus/dax/drivers/{d}/{name}")))
                .map(str::to_string)
        });
        out.devices.push(DaxDevice {
            name,
            origin,
            target_node,
            size,
            align,
            base: base_addr,
            mapped_bytes: mapped,
            driver,
        });
    }
    out
}
