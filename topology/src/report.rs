//! The human table `discover` prints by default.

use std::fmt::Write as _;

use crate::{Health, Inventory, Memmap};

/// `64 GiB`, `512 MiB`, `1.50 GiB`, `4096 B`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, scale) in UNITS {
        if bytes >= scale {
            return if bytes.is_multiple_of(scale) {
                format!("{} {unit}", bytes / scale)
            } else {
                format!("{:.2} {unit}", bytes as f64 / scale as f64)
            };
        }
    }
    format!("{bytes} B")
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ", w = width[i]);
            }
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(header.iter().map(|h| h.to_string()).collect()));
    for r in rows {
        let _ = writeln!(out, "{}", line(r.clone()));
    }
}

/// Renders GPUs, regions and warnings as aligned text tables.
pub fn render_table(inv: &Inventory) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "sysfs root: {}", inv.root);
    let _ = writeln!(out);
    if inv.gpus.is_empty() {
        let _ = writeln!(out, "GPUs: none");
    } else {
        let rows: Vec<Vec<String>> = inv
            .gpus
            .iter()
            .map(|g| {
                vec![
                    g.address.to_string(),
                    if g.vendor.is_empty() && g.device.is_empty() {
                        "-".to_string()
                    } else {
                        format!("{}:{}", g.vendor, g.device)
                    },
                    g.class.clone(),
                    g.driver.clone().unwrap_or_else(|| "-".into()),
                    opt(g.iommu_group),
                    opt(g.numa_node),
                    opt(g.cpu_node),
                    inv.regions_of(g.address).count().to_string(),
                ]
            })
            .collect();
        table(
            &mut out,
            &["GPU", "ID", "CLASS", "DRIVER", "IOMMU", "NUMA", "CPU-NODE", "REGIONS"],
            &rows,
        );
    }
    let _ = writeln!(out);
    if inv.regions.is_empty() {
        let _ = writeln!(out, "HBM regions: none");
    } else {
        let rows: Vec<Vec<String>> = inv
            .regions
            .iter()
            .map(|r| {
                vec![
                    r.id.clone(),
                    opt(r.host_node),
                    human_size(r.size_bytes),
                    r.source.as_str().to_string(),
                    match r.memmap {
                        Memmap::Spm => "spm".into(),
                        Memmap::Normal => "normal".into(),
                    },
                    r.dax.clone().unwrap_or_else(|| "-".into()),
                    if r.online { "yes".into() } else { "no".into() },
                    opt(r.cpu_node),
                    match (&r.health, &r.reason) {
                        (Health::Healthy, _) => "healthy".into(),
                        (Health::Unhealthy, Some(why)) => format!("UNHEALTHY: {why}"),
                        (Health::Unhealthy, None) => "UNHEALTHY".into(),
                    },
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "REGION", "NODE", "SIZE", "SOURCE", "MEMMAP", "DAX", "ONLINE", "CPU-NODE", "HEALTH",
            ],
            &rows,
        );
    }
    if !inv.warnings.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "warnings:");
        for w in &inv.warnings {
            let _ = writeln!(out, "  - {w}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_size(64 << 30), "64 GiB");
        assert_eq!(human_size(512 << 20), "512 MiB");
        assert_eq!(human_size(0x3_f000_0000), "15.75 GiB");
        assert_eq!(human_size(100), "100 B");
    }
}
