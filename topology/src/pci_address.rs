//! `PciAddress`: a PCI function address (`0000:c1:00.0`), parsed once and validated in its
//! constructor so the rest of the code never re-checks strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A PCI function address: segment (domain), bus, device (slot), function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    pub domain: u16,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

/// Why a string is not a PCI address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid PCI address {input:?}: {why} (expected DDDD:BB:SS.F, e.g. 0000:c1:00.0)")]
pub struct PciAddressError {
    pub input: String,
    pub why: &'static str,
}

impl PciAddress {
    pub const fn new(domain: u16, bus: u8, device: u8, function: u8) -> Self {
        Self {
            domain,
            bus,
            device,
            function,
        }
    }

    /// Parses `DDDD:BB:SS.F` (also accepts `BB:SS.F`, domain 0). Hex digits in either case.
    pub fn parse(s: &str) -> Result<Self, PciAddressError> {
        let err = |why| PciAddressError {
            input: s.to_string(),
            why,
        };
        let (rest, function) = s.rsplit_once('.').ok_or_else(|| err("missing '.function'"))?;
        let mut parts = rest.split(':').collect::<Vec<_>>();
        let domain = match parts.len() {
            3 => parts.remove(0),
            2 => "0",
            _ => return Err(err("wrong number of ':' separated fields")),
        };
        let hex16 = |v: &str, max: u32, why| {
            if v.is_empty() || v.len() > 4 {
                return Err(err(why));
            }
            match u32::from_str_radix(v, 16) {
                Ok(n) if n <= max => Ok(n),
                _ => Err(err(why)),
            }
        };
        let domain = hex16(domain, 0xffff, "bad domain")? as u16;
        let bus = hex16(parts[0], 0xff, "bad bus")? as u8;
        let device = hex16(parts[1], 0x1f, "bad device (slot 00-1f)")? as u8;
        let function = hex16(function, 7, "bad function (0-7)")? as u8;
        Ok(Self {
            domain,
            bus,
            device,
            function,
        })
    }

    /// `devfn` as the PCI spec packs it: slot << 3 | function.
    pub const fn devfn(&self) -> u8 {
        (self.device << 3) | self.function
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl FromStr for PciAddress {
    type Err = PciAddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for PciAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PciAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_canonical_form() {
        let a = PciAddress::parse("0000:C1:00.0").unwrap();
        assert_eq!(a, PciAddress::new(0, 0xc1, 0, 0));
        assert_eq!(a.to_string(), "0000:c1:00.0");
        assert_eq!(PciAddress::parse("05:1f.7").unwrap().to_string(), "0000:05:1f.7");
        assert_eq!(PciAddress::new(0, 0, 0x1f, 7).devfn(), 0xff);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "0000:c1:00",
            "0000:c1:20.0",
            "0000:c1:00.8",
            "x:y:z.0",
            "00000:00:00.0",
            "0:0:0:0.0",
        ] {
            assert!(PciAddress::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
