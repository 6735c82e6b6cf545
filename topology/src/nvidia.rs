//! NVIDIA coherent GPU memory from `proc/driver/nvidia/gpus/<bdf>/numa_status`:
//! `Node: N`, `Status: online|offline|...`, `Address: <hex>`, `Size: <hex>` (hex without `0x`).

use crate::PciAddress;
use crate::sysfs::{Sysfs, parse_hex};

const GPUS: &str = "proc/driver/nvidia/gpus";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumaStatus {
    pub gpu: PciAddress,
    /// Root-relative path of the file (for reasons).
    pub file: String,
    /// `None` for `-1` (the driver has no node for this GPU).
    pub node: Option<u32>,
    pub status: String,
    pub address: Option<u64>,
    pub size: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct NvidiaScan {
    pub entries: Vec<NumaStatus>,
    pub warnings: Vec<String>,
}

/// Parses one `numa_status` text. `Err` names what is wrong.
pub fn parse(gpu: PciAddress, file: &str, text: &str) -> Result<NumaStatus, String> {
    let mut node = None;
    let mut status = None;
    let mut address = None;
    let mut size = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        let v = v.trim();
        match k.trim() {
            "Node" => node = Some(v.parse::<i64>().map_err(|_| format!("Node {v:?} is not a number"))?),
            "Status" => status = Some(v.to_string()),
            "Address" => address = Some(parse_hex(v).ok_or_else(|| format!("Address {v:?} is not hex"))?),
            "Size" => size = Some(parse_hex(v).ok_or_else(|| format!("Size {v:?} is not hex"))?),
            _ => {}
        }
    }
    let node = match node {
        None => return Err("no Node line".into()),
        Some(-1) => None,
        Some(n) if (0..=i64::from(crate::sysfs::MAX_LIST_ID)).contains(&n) => Some(n as u32),
        Some(n) => return Err(format!("Node {n} is out of range")),
    };
    Ok(NumaStatus {
        gpu,
        file: file.to_string(),
        node,
        status: status.unwrap_or_default(),
        address,
        size,
    })
}

/// Reads every `numa_status`. Absent `proc/driver/nvidia` (no driver, a container) is empty.
pub fn scan(fs: &Sysfs) -> NvidiaScan {
    let mut out = NvidiaScan::default();
    let Ok(names) = fs.list_dir(GPUS) else { return out };
    for name in names {
        let file = format!("{GPUS}/{name}/numa_status");
        let Ok(gpu) = PciAddress::parse(&name) else {
            out.warnings.push(format!(
                "{}: {name:?} is not a PCI address, skipped",
                fs.path(GPUS).display()
            ));
            continue;
        };
        let text = match fs.read_text(&file) {
            Ok(t) => t,
            Err(e) if e.is_missing() => continue, // older drivers / non-coherent GPUs
            Err(e) => {
                out.warnings.push(e.to_string());
                continue;
            }
        };
        match parse(gpu, &file, &text) {
            Ok(s) => out.entries.push(s),
            Err(why) => out
                .warnings
                .push(format!("{}: {why}; entry skipped", fs.path(&file).display())),
        }
    }
    out
}
