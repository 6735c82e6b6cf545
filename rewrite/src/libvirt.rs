//! Reading the libvirt elements the rewriter looks at: numbers as libvirt writes them, PCI
//! hostdevs and their host addresses, memory amounts, and the errors that name the element at
//! fault.

use topology::PciAddress;

use crate::RewriteError;
use crate::document::Document;
use crate::size::unit_factor;

/// An ASCII XML name (a namespace prefix the rewriter writes element names with).
pub(crate) fn is_xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|rest| rest.is_ascii_alphanumeric() || matches!(rest, '-' | '_' | '.'))
}

/// Parses a libvirt number attribute the way libvirt does (C `strtoul` base 0: `0x1f` hex,
/// `017` octal, `31` decimal).
pub(crate) fn parse_num(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).ok();
    }
    if text.len() > 1
        && let Some(octal) = text.strip_prefix('0')
    {
        return u64::from_str_radix(octal, 8).ok();
    }
    text.parse().ok()
}

/// A numeric attribute of element `idx` that fits a `u32` (`index`, `bus`, `busNr`).
pub(crate) fn u32_attr(doc: &Document<'_>, idx: usize, name: &str) -> Option<u32> {
    doc.attr(idx, name)
        .and_then(|value| parse_num(&value))
        .and_then(|value| u32::try_from(value).ok())
}

/// Host PCI addresses of the domain's PCI `<hostdev>`s, in document order (for front ends that
/// check or claim regions before rewriting).
pub fn pci_hostdevs(doc: &Document<'_>) -> Vec<PciAddress> {
    let Some(devices) = doc.child(doc.root, "devices") else {
        return Vec::new();
    };
    doc.children(devices)
        .filter(|device| is_pci_hostdev(doc, *device))
        .filter_map(|hostdev| hostdev_source(doc, hostdev))
        .collect()
}

/// The PCI address an `<address domain= bus= slot= function=>` element names.
fn pci_from_address(doc: &Document<'_>, address: usize) -> Option<PciAddress> {
    let get = |key: &str| doc.attr(address, key).and_then(|value| parse_num(&value));
    let domain = u16::try_from(get("domain").unwrap_or(0)).ok()?;
    let bus = u8::try_from(get("bus")?).ok()?;
    let device = u8::try_from(get("slot")?).ok()?;
    let function = u8::try_from(get("function").unwrap_or(0)).ok()?;
    (device < 32 && function < 8).then_some(PciAddress::new(domain, bus, device, function))
}

/// Host PCI address of a `<hostdev>` (its `<source><address>`).
pub(crate) fn hostdev_source(doc: &Document<'_>, hostdev: usize) -> Option<PciAddress> {
    let source = doc.child(hostdev, "source")?;
    let address = doc.child(source, "address")?;
    pci_from_address(doc, address)
}

/// A `<hostdev type='pci'>` in subsystem mode (the mode libvirt defaults to).
pub(crate) fn is_pci_hostdev(doc: &Document<'_>, idx: usize) -> bool {
    doc.name(idx) == "hostdev"
        && doc.attr(idx, "type").is_some_and(|kind| kind == "pci")
        && doc.attr(idx, "mode").is_none_or(|mode| mode == "subsystem")
}

/// Bad input at element `idx` (exit code 2).
pub(crate) fn invalid(doc: &Document<'_>, idx: usize, reason: impl Into<String>) -> RewriteError {
    RewriteError::Invalid {
        line: doc.line(idx),
        element: doc.name(idx).to_string(),
        reason: reason.into(),
    }
}

/// A definition this host or the rewriter cannot satisfy, at element `idx` (exit code 3).
pub(crate) fn unsatisfiable(doc: &Document<'_>, idx: usize, reason: impl Into<String>) -> RewriteError {
    RewriteError::Unsatisfiable {
        line: doc.line(idx),
        element: doc.name(idx).to_string(),
        reason: reason.into(),
    }
}

/// `<memory unit=..>N</memory>`-style amount in bytes; `value` replaces the element's text (a
/// `<cell memory=..>` attribute).
pub(crate) fn amount(doc: &Document<'_>, idx: usize, value: Option<String>) -> Result<u64, RewriteError> {
    let unit = doc.attr(idx, "unit").map(|unit| unit.into_owned()).unwrap_or_default();
    let factor = unit_factor(&unit).ok_or_else(|| invalid(doc, idx, format!("unknown unit {unit:?}")))?;
    let text = value.unwrap_or_else(|| doc.text(idx));
    let count: u64 = text
        .trim()
        .parse()
        .map_err(|_| invalid(doc, idx, format!("memory amount {text:?} is not a number")))?;
    count
        .checked_mul(factor)
        .ok_or_else(|| invalid(doc, idx, "memory amount too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_as_strtoul_base_0() {
        assert_eq!(parse_num("0x1f"), Some(31));
        assert_eq!(parse_num("017"), Some(15));
        assert_eq!(parse_num(" 31 "), Some(31));
        assert_eq!(parse_num("0"), Some(0));
        assert_eq!(parse_num("09"), None);
        assert_eq!(parse_num("x"), None);
    }

    #[test]
    fn xml_names_for_prefixes() {
        assert!(is_xml_name("qemu"));
        assert!(is_xml_name("_q-1.x"));
        assert!(!is_xml_name(""));
        assert!(!is_xml_name("1q"));
        assert!(!is_xml_name("q'x"));
    }

    #[test]
    fn hostdev_sources_in_document_order_skip_other_modes_and_bad_addresses() {
        let xml = "<domain><devices>\
            <hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0xc1' slot='0x00' function='0x0'/></source></hostdev>\
            <hostdev mode='capabilities' type='pci'><source><address bus='0x02' slot='0x00'/></source></hostdev>\
            <hostdev type='pci'><source><address bus='0x41' slot='0x20'/></source></hostdev>\
            <hostdev type='pci'><source><address bus='0x41' slot='0x01' function='0x1'/></source></hostdev>\
            </devices></domain>";
        let doc = Document::parse(xml).unwrap();
        assert_eq!(
            pci_hostdevs(&doc),
            vec![PciAddress::new(0, 0xc1, 0, 0), PciAddress::new(0, 0x41, 1, 1)]
        );
    }

    #[test]
    fn amounts_use_the_unit_and_default_to_kib() {
        let doc = Document::parse(
            "<domain><memory>2</memory><currentMemory unit='GiB'>3</currentMemory><x unit='parsec'>1</x></domain>",
        )
        .unwrap();
        let children: Vec<usize> = doc.children(doc.root).collect();
        assert_eq!(amount(&doc, children[0], None), Ok(2048));
        assert_eq!(amount(&doc, children[1], None), Ok(3 << 30));
        assert_eq!(amount(&doc, children[1], Some("4".into())), Ok(4 << 30));
        assert_eq!(
            amount(&doc, children[2], None),
            Err(RewriteError::Invalid {
                line: 1,
                element: "x".into(),
                reason: "unknown unit \"parsec\"".into()
            })
        );
    }
}
