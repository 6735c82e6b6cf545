//! `/proc/iomem`: `start-end : name` lines, nested by two spaces. Soft Reserved ranges are found
//! at any depth, so both nesting orders seen in the field work ("Soft Reserved > dax0.0 > System
//! RAM (kmem)" and "hmem.0 > Soft Reserved > dax0.0"). Without CAP_SYS_ADMIN the kernel prints
//! every address as zero: then the file says nothing about addresses and is reported so.

use crate::sysfs::{Sysfs, parse_hex};

pub(crate) const IOMEM: &str = "proc/iomem";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IomemEntry {
    pub start: u64,
    /// Inclusive.
    pub end: u64,
    pub name: String,
    pub depth: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Iomem {
    pub entries: Vec<IomemEntry>,
    /// All addresses read as zero (no privilege): ranges are unknown.
    pub zeroed: bool,
}

impl Iomem {
    /// Soft Reserved ranges (start, inclusive end), when addresses are known.
    pub fn soft_reserved(&self) -> Vec<(u64, u64)> {
        if self.zeroed {
            return Vec::new();
        }
        self.entries
            .iter()
            .filter(|e| e.name == "Soft Reserved")
            .map(|e| (e.start, e.end))
            .collect()
    }

    /// Names of the entries nested anywhere under or above a Soft Reserved entry (e.g. `dax0.0`,
    /// `hmem.0`), which tells which dax devices sit on Soft Reserved memory even when addresses
    /// are zeroed.
    pub fn soft_reserved_neighbours(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if e.name != "Soft Reserved" {
                continue;
            }
            // Children: following entries deeper than e.
            for c in self.entries[i + 1..].iter().take_while(|c| c.depth > e.depth) {
                out.push(c.name.clone());
            }
            // Ancestors: nearest preceding entries with smaller depth.
            let mut d = e.depth;
            for p in self.entries[..i].iter().rev() {
                if p.depth < d {
                    out.push(p.name.clone());
                    d = p.depth;
                }
            }
        }
        out
    }
}

/// Parses the text; lines that do not fit the format are returned as errors (1-based line).
pub fn parse(text: &str) -> (Iomem, Vec<usize>) {
    let mut io = Iomem::default();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start_matches(' ').len();
        let Some((range, name)) = line.trim_start().split_once(" : ") else {
            bad.push(i + 1);
            continue;
        };
        let Some((s, e)) = range.split_once('-') else {
            bad.push(i + 1);
            continue;
        };
        let (Some(start), Some(end)) = (parse_hex(s), parse_hex(e)) else {
            bad.push(i + 1);
            continue;
        };
        io.entries.push(IomemEntry {
            start,
            end,
            name: name.trim().to_string(),
            depth: indent / 2,
        });
    }
    io.zeroed = !io.entries.is_empty() && io.entries.iter().all(|e| e.start == 0 && e.end == 0);
    (io, bad)
}

/// Reads `proc/iomem`; `None` when absent (a container without /proc bound).
pub fn scan(fs: &Sysfs, warnings: &mut Vec<String>) -> Option<Iomem> {
    match fs.read_text(IOMEM) {
        Ok(t) => {
            let (io, bad) = parse(&t);
            if let Some(first) = bad.first() {
                warnings.push(format!(
                    "{}: {} line(s) not of the form 'start-end : name' (first: line {first}), ignored",
                    fs.path(IOMEM).display(),
                    bad.len()
                ));
            }
            Some(io)
        }
        Err(e) if e.is_missing() => None,
        Err(e) => {
            warnings.push(e.to_string());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_nesting_orders() {
        let a = "20000000-3fffffff : hmem.0\n  20000000-3fffffff : Soft Reserved\n    20000000-3fffffff : dax0.0\n";
        let b = "140000000-1bfffffff : Soft Reserved\n  140000000-1bfffffff : dax1.0\n    140000000-1bfffffff : System RAM (kmem)\n";
        let (ia, _) = parse(a);
        assert_eq!(ia.soft_reserved(), vec![(0x2000_0000, 0x3fff_ffff)]);
        assert_eq!(
            ia.soft_reserved_neighbours(),
            vec!["dax0.0".to_string(), "hmem.0".to_string()]
        );
        let (ib, _) = parse(b);
        assert_eq!(ib.soft_reserved(), vec![(0x1_4000_0000, 0x1_bfff_ffff)]);
        assert_eq!(
            ib.soft_reserved_neighbours(),
            vec!["dax1.0".to_string(), "System RAM (kmem)".to_string()]
        );
    }

    #[test]
    fn zeroed_without_privilege() {
        let (io, bad) = parse(
            "00000000-00000000 : System RAM\n  00000000-00000000 : Soft Reserved\n    00000000-00000000 : dax0.0\n",
        );
        assert!(io.zeroed);
        assert!(bad.is_empty());
        assert!(io.soft_reserved().is_empty());
        assert_eq!(
            io.soft_reserved_neighbours(),
            vec!["dax0.0".to_string(), "System RAM".to_string()]
        );
    }
}
