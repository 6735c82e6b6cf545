//! ACPI SRAT (`sys/firmware/acpi/tables/SRAT`, root-only, masked in containers): processor,
//! memory and Generic Initiator affinity, and the PXM -> Linux node numbering the kernel does.
//!
//! Layout (little endian): 36-byte header (signature, length u32 @4, checksum @9), table
//! revision u32 @36, reserved u64 @40, subtables from 48 (type u8, length u8).
//! - 0 LAPIC: PD bits 7:0 @2, flags @4 (bit0 enabled), PD bits 31:8 @9..12.
//! - 1 Memory: PD u32 @2, base u64 @8, length u64 @16, flags u32 @28 (bit0 enabled, bit1
//!   hot-pluggable, bit2 non-volatile, bit3 specific-purpose).
//! - 2 x2APIC: PD u32 @4, flags @12. 3 GICC: PD u32 @2, flags @10. 7 RINTC: PD u32 @4, flags @8.
//! - 5 Generic Initiator / 6 Generic Port: handle type @3 (1 = PCI), PD u32 @4, handle @8
//!   (PCI: segment u16, then bus and devfn — some firmware wrote the BDF devfn-first), flags @24.
//!
//! Linux (`acpi_map_pxm_to_node`) gives each PXM the first unused node number when first seen:
//! one pass over the enabled processor and initiator entries (types 0, 2, 3, 5, 7) in table
//! order, then the enabled memory entries.

use std::collections::BTreeMap;

use crate::PciAddress;

/// Memory affinity flags.
pub const MEM_ENABLED: u32 = 1;
pub const MEM_HOT_PLUGGABLE: u32 = 1 << 1;
pub const MEM_NON_VOLATILE: u32 = 1 << 2;
pub const MEM_SPECIFIC_PURPOSE: u32 = 1 << 3;

/// Highest node count the kernel supports (CONFIG_NODES_SHIFT=10).
const MAX_NUMNODES: u32 = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SratError {
    #[error("SRAT is {0} bytes, shorter than its 48-byte header")]
    TooShort(usize),
    #[error("SRAT signature is {0:?}, not \"SRAT\"")]
    Signature(String),
    #[error("SRAT header says {declared} bytes but the file holds {actual} (truncated)")]
    Truncated { declared: usize, actual: usize },
    #[error("SRAT checksum is wrong (bytes sum to {0:#04x}, not 0)")]
    Checksum(u8),
    #[error("SRAT subtable at offset {offset} (type {kind}) has length {length}, which does not fit the table")]
    BadSubtable { offset: usize, kind: u8, length: usize },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryAffinity {
    pub pxm: u32,
    pub base: u64,
    pub length: u64,
    pub flags: u32,
}

impl MemoryAffinity {
    pub fn enabled(&self) -> bool {
        self.flags & MEM_ENABLED != 0
    }
    pub fn hot_pluggable(&self) -> bool {
        self.flags & MEM_HOT_PLUGGABLE != 0
    }
    pub fn non_volatile(&self) -> bool {
        self.flags & MEM_NON_VOLATILE != 0
    }
    pub fn specific_purpose(&self) -> bool {
        self.flags & MEM_SPECIFIC_PURPOSE != 0
    }
}

/// A Generic Initiator (or Generic Port) with a PCI device handle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenericInitiator {
    pub pxm: u32,
    pub segment: u16,
    /// Handle bytes 2 and 3 as stored.
    pub handle_bytes: [u8; 2],
    pub enabled: bool,
    /// Type 6 (Generic Port) rather than 5.
    pub port: bool,
}

impl GenericInitiator {
    /// The two readings of the handle: spec order (bus, devfn) first, then devfn-first.
    pub fn candidates(&self) -> [PciAddress; 2] {
        let mk = |bus: u8, devfn: u8| PciAddress::new(self.segment, bus, devfn >> 3, devfn & 7);
        [
            mk(self.handle_bytes[0], self.handle_bytes[1]),
            mk(self.handle_bytes[1], self.handle_bytes[0]),
        ]
    }

    /// The PCI function this entry names, given the functions present: spec order when that
    /// function exists, else the devfn-first reading when that one exists, else spec order.
    pub fn resolve(&self, is_present: impl Fn(PciAddress) -> bool) -> PciAddress {
        let [spec, swapped] = self.candidates();
        if is_present(spec) || !is_present(swapped) {
            spec
        } else {
            swapped
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Srat {
    /// PXMs of enabled processor entries, in table order.
    pub processor_pxms: Vec<u32>,
    pub memory: Vec<MemoryAffinity>,
    pub initiators: Vec<GenericInitiator>,
    /// PXM -> Linux node as the kernel numbers them.
    pub pxm_to_node: BTreeMap<u32, u32>,
}

impl Srat {
    pub fn node_of(&self, pxm: u32) -> Option<u32> {
        self.pxm_to_node.get(&pxm).copied()
    }
    pub fn pxm_of(&self, node: u32) -> Option<u32> {
        self.pxm_to_node.iter().find(|(_, n)| **n == node).map(|(p, _)| *p)
    }
    /// Enabled memory ranges of the PXM that maps to `node`.
    pub fn memory_of_node(&self, node: u32) -> impl Iterator<Item = &MemoryAffinity> {
        let pxm = self.pxm_of(node);
        self.memory
            .iter()
            .filter(move |m| Some(m.pxm) == pxm && m.enabled() && m.length > 0)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Parses and checks an SRAT image.
pub fn parse(bytes: &[u8]) -> Result<Srat, SratError> {
    let table = checked_table(bytes)?;
    let mut srat = Srat::default();
    // Processor and initiator PXMs in order of first sight, for the kernel's numbering.
    let mut first_pass: Vec<u32> = Vec::new();
    let mut offset = 48;
    while offset < table.len() {
        let entry = subtable_at(table, offset)?;
        read_subtable(entry, offset, &mut srat, &mut first_pass)?;
        offset += entry.len();
    }
    srat.pxm_to_node = number_nodes(&first_pass, &srat.memory);
    Ok(srat)
}

/// The table part of `bytes` after the header checks (length, signature, checksum).
fn checked_table(bytes: &[u8]) -> Result<&[u8], SratError> {
    if bytes.len() < 48 {
        return Err(SratError::TooShort(bytes.len()));
    }
    if &bytes[0..4] != b"SRAT" {
        return Err(SratError::Signature(String::from_utf8_lossy(&bytes[0..4]).into_owned()));
    }
    let declared = u32_at(bytes, 4) as usize;
    if declared > bytes.len() || declared < 48 {
        return Err(SratError::Truncated {
            declared,
            actual: bytes.len(),
        });
    }
    let table = &bytes[..declared];
    let sum = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    if sum != 0 {
        return Err(SratError::Checksum(sum));
    }
    Ok(table)
}

/// The subtable starting at `offset`, its length checked against the table.
fn subtable_at(table: &[u8], offset: usize) -> Result<&[u8], SratError> {
    if offset + 2 > table.len() {
        return Err(SratError::BadSubtable {
            offset,
            kind: table[offset],
            length: table.len() - offset,
        });
    }
    let kind = table[offset];
    let length = table[offset + 1] as usize;
    if length < 2 || offset + length > table.len() {
        return Err(SratError::BadSubtable { offset, kind, length });
    }
    Ok(&table[offset..offset + length])
}

/// Records one subtable (`entry`, found at `offset`) in `srat`; enabled processor and initiator
/// PXMs also go to `first_pass`. Unknown types are skipped.
fn read_subtable(entry: &[u8], offset: usize, srat: &mut Srat, first_pass: &mut Vec<u32>) -> Result<(), SratError> {
    let kind = entry[0];
    let need = |min: usize| {
        if entry.len() < min {
            Err(SratError::BadSubtable {
                offset,
                kind,
                length: entry.len(),
            })
        } else {
            Ok(())
        }
    };
    // (PXM, flags) of the processor entries (types 0, 2, 3, 7); flags bit 0 is "enabled".
    let processor = match kind {
        0 => {
            need(16)?;
            let pxm = u32::from(entry[2])
                | (u32::from(entry[9]) << 8)
                | (u32::from(entry[10]) << 16)
                | (u32::from(entry[11]) << 24);
            Some((pxm, u32_at(entry, 4)))
        }
        2 => need(24).map(|()| Some((u32_at(entry, 4), u32_at(entry, 12))))?,
        3 => need(18).map(|()| Some((u32_at(entry, 2), u32_at(entry, 10))))?,
        7 => need(12).map(|()| Some((u32_at(entry, 4), u32_at(entry, 8))))?,
        _ => None,
    };
    if let Some((pxm, flags)) = processor {
        if flags & 1 != 0 {
            srat.processor_pxms.push(pxm);
            first_pass.push(pxm);
        }
        return Ok(());
    }
    match kind {
        1 => {
            need(40)?;
            srat.memory.push(MemoryAffinity {
                pxm: u32_at(entry, 2),
                base: u64_at(entry, 8),
                length: u64_at(entry, 16),
                flags: u32_at(entry, 28),
            });
        }
        5 | 6 => {
            need(28)?;
            read_initiator(entry, srat, first_pass);
        }
        _ => {}
    }
    Ok(())
}

/// A Generic Initiator (type 5) or Generic Port (type 6) entry of at least 28 bytes.
fn read_initiator(entry: &[u8], srat: &mut Srat, first_pass: &mut Vec<u32>) {
    let kind = entry[0];
    let pxm = u32_at(entry, 4);
    let enabled = u32_at(entry, 24) & 1 != 0;
    if kind == 5 && enabled {
        first_pass.push(pxm);
    }
    if entry[3] == 1 {
        srat.initiators.push(GenericInitiator {
            pxm,
            segment: u16::from_le_bytes([entry[8], entry[9]]),
            handle_bytes: [entry[10], entry[11]],
            enabled,
            port: kind == 6,
        });
    }
}

/// PXM -> node as Linux numbers them: processor/initiator PXMs first, then enabled memory.
fn number_nodes(first_pass: &[u32], memory: &[MemoryAffinity]) -> BTreeMap<u32, u32> {
    let mut map = BTreeMap::new();
    let enabled_memory = memory.iter().filter(|m| m.enabled()).map(|m| m.pxm);
    for pxm in first_pass.iter().copied().chain(enabled_memory) {
        if map.len() as u32 >= MAX_NUMNODES {
            break;
        }
        let next = map.len() as u32;
        map.entry(pxm).or_insert(next);
    }
    map
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn table(body: &[u8]) -> Vec<u8> {
        let mut t = b"SRAT".to_vec();
        t.extend_from_slice(&((48 + body.len()) as u32).to_le_bytes());
        t.extend_from_slice(&[3, 0]);
        t.extend_from_slice(&[0u8; 26]);
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(&[0u8; 8]);
        t.extend_from_slice(body);
        let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        t[9] = 0u8.wrapping_sub(sum);
        t
    }

    #[test]
    fn header_checks() {
        assert_eq!(parse(&[0u8; 10]), Err(SratError::TooShort(10)));
        let mut t = table(&[]);
        assert!(parse(&t).is_ok());
        t[20] ^= 1;
        assert!(matches!(parse(&t), Err(SratError::Checksum(_))));
        let t = table(&[1, 40, 0, 0]);
        assert!(matches!(parse(&t[..t.len() - 1]), Err(SratError::Truncated { .. })));
    }

    #[test]
    fn zero_length_subtable_is_an_error_not_a_loop() {
        let t = table(&[1, 0, 0, 0]);
        assert!(matches!(
            parse(&t),
            Err(SratError::BadSubtable {
                offset: 48,
                kind: 1,
                length: 0
            })
        ));
    }
}
