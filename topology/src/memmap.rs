//! `/sys/firmware/memmap/N/{start,end,type}` (x86): the firmware memory map as the kernel got it
//! at boot. `end` is inclusive; "Soft Reserved" marks EFI specific-purpose memory.

use crate::sysfs::Sysfs;

const MEMMAP: &str = "sys/firmware/memmap";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemmapEntry {
    pub start: u64,
    /// Inclusive.
    pub end: u64,
    pub kind: String,
}

/// Reads all entries, sorted by start. Absent folder (arm64, containers): empty.
pub fn scan(fs: &Sysfs, warnings: &mut Vec<String>) -> Vec<MemmapEntry> {
    let Ok(names) = fs.list_dir(MEMMAP) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for n in names {
        let d = format!("{MEMMAP}/{n}");
        let read = || -> Result<MemmapEntry, crate::sysfs::SysfsError> {
            Ok(MemmapEntry {
                start: fs.read_hex(&format!("{d}/start"))?,
                end: fs.read_hex(&format!("{d}/end"))?,
                kind: fs.read_value(&format!("{d}/type"))?,
            })
        };
        match read() {
            Ok(e) => out.push(e),
            Err(e) => warnings.push(format!("{e}; memmap entry {n} ignored")),
        }
    }
    out.sort_by_key(|e| e.start);
    out
}

/// Soft Reserved ranges (start, inclusive end).
pub fn soft_reserved(entries: &[MemmapEntry]) -> Vec<(u64, u64)> {
    entries
        .iter()
        .filter(|e| e.kind == "Soft Reserved")
        .map(|e| (e.start, e.end))
        .collect()
}
