//! Reading and editing domain XML in tests: a small element tree (with byte spans into the source
//! text, so edits are splices that leave everything else byte-for-byte alone) and the edits the
//! real-component tests need (unique name, `<driver name='vfio'/>`, hostdev -> stand-in device).

use std::ops::Range;

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

/// One element of a parsed document.
#[derive(Clone, Debug)]
pub struct Element {
    /// Qualified name as written (`qemu:arg`).
    pub name: String,
    /// Attributes in document order, values unescaped.
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    /// Concatenated character data directly inside this element (entities resolved).
    pub text: String,
    /// Bytes of the whole element (start tag to end tag) in the source text.
    pub span: Range<usize>,
    /// Byte offset just after the start tag (equal to `span.end` for an empty element).
    pub start_tag_end: usize,
}

impl Element {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Follows a path of child names (first match at each step).
    pub fn at(&self, path: &[&str]) -> Option<&Element> {
        let mut e = self;
        for p in path {
            e = e.child(p)?;
        }
        Some(e)
    }

    /// Every descendant (depth first, document order) named `name`.
    pub fn descendants(&self, name: &str) -> Vec<&Element> {
        let mut out = Vec::new();
        fn walk<'a>(e: &'a Element, name: &str, out: &mut Vec<&'a Element>) {
            for c in &e.children {
                if c.name == name {
                    out.push(c);
                }
                walk(c, name, out);
            }
        }
        walk(self, name, &mut out);
        out
    }

    /// Text trimmed of surrounding whitespace.
    pub fn trimmed_text(&self) -> &str {
        self.text.trim()
    }
}

fn start_element(e: &BytesStart<'_>, begin: usize) -> Result<Element, String> {
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|err| format!("attribute at byte {begin}: {err}"))?;
        let v = a
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|err| format!("attribute value at byte {begin}: {err}"))?;
        attrs.push((a.key.as_ref().to_string(), v.into_owned()));
    }
    Ok(Element {
        name: e.name().as_ref().to_string(),
        attrs,
        children: Vec::new(),
        text: String::new(),
        span: begin..begin,
        start_tag_end: begin,
    })
}

/// Parses a whole document and returns its root element. DOCTYPEs are refused (tests never need them).
pub fn parse(xml: &str) -> Result<Element, String> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let begin = usize::try_from(reader.buffer_position()).map_err(|e| e.to_string())?;
        let ev = reader
            .read_event()
            .map_err(|e| format!("not well-formed XML near byte {}: {e}", reader.buffer_position()))?;
        let end = usize::try_from(reader.buffer_position()).map_err(|e| e.to_string())?;
        match ev {
            Event::Start(e) => {
                let mut el = start_element(&e, begin)?;
                el.start_tag_end = end;
                stack.push(el);
            }
            Event::Empty(e) => {
                let mut el = start_element(&e, begin)?;
                el.span = begin..end;
                el.start_tag_end = end;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::End(_) => {
                let mut el = stack
                    .pop()
                    .ok_or_else(|| format!("unbalanced end tag at byte {begin}"))?;
                el.span = el.span.start..end;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                let content = t.xml_content(XmlVersion::Implicit1_0);
                match stack.last_mut() {
                    Some(top) => top.text.push_str(&content),
                    None if content.trim().is_empty() => {}
                    None => return Err(format!("text outside the root element at byte {begin}")),
                }
            }
            Event::CData(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.xml_content(XmlVersion::Implicit1_0));
                }
            }
            Event::GeneralRef(r) => {
                let resolved = match r
                    .resolve_char_ref()
                    .map_err(|e| format!("character reference at byte {begin}: {e}"))?
                {
                    Some(c) => c.to_string(),
                    None => match &*r {
                        "amp" => "&".to_string(),
                        "lt" => "<".to_string(),
                        "gt" => ">".to_string(),
                        "quot" => "\"".to_string(),
                        "apos" => "'".to_string(),
                        other => return Err(format!("unknown entity &{other}; at byte {begin}")),
                    },
                };
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&resolved);
                }
            }
            Event::DocType(_) => return Err(format!("DOCTYPE at byte {begin} (not expected in a domain)")),
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err("document ends inside an element".to_string());
    }
    root.ok_or_else(|| "no root element".to_string())
}

/// A PCI address as libvirt writes it in `<address domain= bus= slot= function=/>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddr {
    pub domain: u32,
    pub bus: u32,
    pub slot: u32,
    pub function: u32,
}

impl PciAddr {
    /// From an `<address>` element; missing parts are 0 (libvirt's default).
    pub fn from_element(e: &Element) -> Result<Self, String> {
        let num = |k: &str| -> Result<u32, String> {
            match e.attr(k) {
                None => Ok(0),
                Some(v) => parse_number(v).map_err(|err| format!("<address {k}='{v}'>: {err}")),
            }
        };
        Ok(Self {
            domain: num("domain")?,
            bus: num("bus")?,
            slot: num("slot")?,
            function: num("function")?,
        })
    }

    /// From the host form `0000:c1:00.0`.
    pub fn parse_host(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a PCI address like 0000:c1:00.0");
        let (domain, rest) = s.split_once(':').ok_or_else(bad)?;
        let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
        let (slot, function) = rest.split_once('.').ok_or_else(bad)?;
        let hex = |x: &str| u32::from_str_radix(x, 16).map_err(|_| bad());
        Ok(Self {
            domain: hex(domain)?,
            bus: hex(bus)?,
            slot: hex(slot)?,
            function: hex(function)?,
        })
    }

    /// `0000:c1:00.0`
    pub fn host_form(&self) -> String {
        format!(
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.slot, self.function
        )
    }
}

/// Parses `0x1f`, `31` or `0o17`-free decimal/hex numbers as libvirt writes them.
pub fn parse_number(v: &str) -> Result<u32, String> {
    let v = v.trim();
    let r = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => v.parse::<u32>(),
    };
    r.map_err(|e| format!("'{v}' is not a number: {e}"))
}

/// A PCI `<hostdev>` of a domain.
#[derive(Clone, Debug)]
pub struct PciHostdev {
    /// Host address from `<source><address/>`.
    pub host: PciAddr,
    pub alias: Option<String>,
    /// `<driver name='..'/>` value, if present.
    pub driver: Option<String>,
    /// The guest `<address type='pci'>` (outside `<source>`), if present.
    pub guest_address: Option<PciAddr>,
    /// The `type` of the guest `<address>` (outside `<source>`): `pci`, `unassigned`, ...
    pub guest_address_type: Option<String>,
    pub span: Range<usize>,
    pub start_tag_end: usize,
}

impl PciHostdev {
    /// `<address type='unassigned'/>`: libvirt detaches the device from the host but gives it to
    /// no guest bus (QEMU never sees it).
    pub fn is_unassigned(&self) -> bool {
        self.guest_address_type.as_deref() == Some("unassigned")
    }
}

/// The facts about a domain the real-component tests branch on.
#[derive(Clone, Debug)]
pub struct DomainFacts {
    pub name: Option<String>,
    pub arch: Option<String>,
    /// `<os><type machine=..>` as written (`q35`, `pc-q35-9.0`, `pc`, `pc-i440fx-5.0`, `virt`, ...).
    pub machine: Option<String>,
    pub pci_hostdevs: Vec<PciHostdev>,
}

impl DomainFacts {
    pub fn is_q35(&self) -> bool {
        self.machine.as_deref().is_some_and(|m| m.contains("q35"))
    }

    /// An x86 `pc`/`pc-i440fx-*` machine (libvirt's default x86 machine when none is named).
    pub fn is_i440fx(&self) -> bool {
        let x86 = matches!(self.arch.as_deref(), Some("x86_64" | "i686") | None);
        x86 && match self.machine.as_deref() {
            None => true,
            Some(m) => m == "pc" || m.starts_with("pc-i440fx") || (m.starts_with("pc-") && !m.contains("q35")),
        }
    }
}

pub fn facts(xml: &str) -> Result<DomainFacts, String> {
    let root = parse(xml)?;
    if root.name != "domain" {
        return Err(format!("root element is <{}>, not <domain>", root.name));
    }
    let os_type = root.at(&["os", "type"]);
    let mut pci_hostdevs = Vec::new();
    if let Some(devices) = root.child("devices") {
        for h in devices.children_named("hostdev") {
            if h.attr("mode").unwrap_or("subsystem") != "subsystem" || h.attr("type") != Some("pci") {
                continue;
            }
            let Some(src) = h.at(&["source", "address"]) else {
                continue;
            };
            pci_hostdevs.push(PciHostdev {
                host: PciAddr::from_element(src)?,
                alias: h.child("alias").and_then(|a| a.attr("name")).map(str::to_string),
                driver: h.child("driver").and_then(|d| d.attr("name")).map(str::to_string),
                guest_address: match h.children_named("address").find(|a| a.attr("type") == Some("pci")) {
                    Some(a) => Some(PciAddr::from_element(a)?),
                    None => None,
                },
                guest_address_type: h.child("address").and_then(|a| a.attr("type")).map(str::to_string),
                span: h.span.clone(),
                start_tag_end: h.start_tag_end,
            });
        }
    }
    Ok(DomainFacts {
        name: root.child("name").map(|n| n.trimmed_text().to_string()),
        arch: os_type.and_then(|t| t.attr("arch")).map(str::to_string),
        machine: os_type.and_then(|t| t.attr("machine")).map(str::to_string),
        pci_hostdevs,
    })
}

/// Replaces the text of `<domain><name>` (which must exist) and drops `<uuid>`, so a corpus
/// definition can be defined beside others without clashing.
pub fn with_name(xml: &str, name: &str) -> Result<String, String> {
    let root = parse(xml)?;
    let n = root.child("name").ok_or("domain has no <name>")?;
    let mut edits: Vec<(Range<usize>, String)> = vec![(n.span.clone(), format!("<name>{name}</name>"))];
    if let Some(u) = root.child("uuid") {
        edits.push((u.span.clone(), String::new()));
    }
    Ok(splice(xml, edits))
}

/// Adds `<driver name='vfio'/>` to every PCI hostdev that has no `<driver>` (domxml-to-native
/// refuses "PCI passthrough type 'default'" otherwise). Returns the new text and how many were added.
pub fn with_vfio_drivers(xml: &str) -> Result<(String, usize), String> {
    let f = facts(xml)?;
    let edits: Vec<(Range<usize>, String)> = f
        .pci_hostdevs
        .iter()
        .filter(|h| h.driver.is_none())
        .map(|h| {
            if h.start_tag_end == h.span.end {
                // <hostdev .../> cannot have a source; facts() never lists one, but stay safe.
                (h.span.end..h.span.end, String::new())
            } else {
                (h.start_tag_end..h.start_tag_end, "<driver name='vfio'/>".to_string())
            }
        })
        .collect();
    let n = edits.iter().filter(|(_, s)| !s.is_empty()).count();
    Ok((splice(xml, edits), n))
}

/// An emulated PCI device that stands in for a passed-through GPU in a booted guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StandIn {
    /// virtio-rng-pci: vendor 0x1af4, device 0x1044 in the guest.
    Rng,
    /// virtio-tablet-pci: vendor 0x1af4, device 0x1052 in the guest.
    Tablet,
    /// A libvirt `<video>` of model virtio: a display-class function (vendor 0x1af4, device
    /// 0x1050; libvirt makes the domain's first video `virtio-vga`, class 0x030000, the others
    /// `virtio-gpu-pci`, class 0x038000), so the guest counts it as a GPU.
    Gpu,
}

impl StandIn {
    /// (vendor, device) as the guest's sysfs shows them.
    pub fn guest_ids(self) -> (u16, u16) {
        match self {
            StandIn::Rng => (0x1af4, 0x1044),
            StandIn::Tablet => (0x1af4, 0x1052),
            StandIn::Gpu => (0x1af4, 0x1050),
        }
    }

    fn xml(self, alias: &str, address: &str) -> String {
        match self {
            StandIn::Rng => format!(
                "<rng model='virtio'><backend model='random'>/dev/urandom</backend><alias name='{alias}'/>{address}</rng>"
            ),
            StandIn::Tablet => {
                format!("<input type='tablet' bus='virtio'><alias name='{alias}'/>{address}</input>")
            }
            StandIn::Gpu => {
                format!("<video><model type='virtio' heads='1'/><alias name='{alias}'/>{address}</video>")
            }
        }
    }
}

/// A managed='no' vfio `<hostdev>` for host PCI address `host` (`0000:c1:00.0`), with a user
/// alias when given (none: the rewriter must name it), indented for `<devices>`.
pub fn vfio_hostdev(host: &str, alias: Option<&str>) -> String {
    let address = PciAddr::parse_host(host).unwrap_or_else(|e| panic!("host address {host}: {e}"));
    let alias = alias
        .map(|a| format!("      <alias name='{a}'/>\n"))
        .unwrap_or_default();
    format!(
        "    <hostdev mode='subsystem' type='pci' managed='no'>
      <driver name='vfio'/>
      <source>
        <address domain='0x{:04x}' bus='0x{:02x}' slot='0x{:02x}' function='0x{:x}'/>
      </source>
{alias}    </hostdev>
",
        address.domain, address.bus, address.slot, address.function
    )
}

/// Replaces the PCI hostdev whose alias is `alias` by `stand_in`, keeping the alias and the guest
/// `<address>` element exactly as written (so the pxb/root-port placement and the Generic
/// Initiator's `pci-dev=` still apply).
pub fn with_stand_in(xml: &str, alias: &str, stand_in: StandIn) -> Result<String, String> {
    let root = parse(xml)?;
    let devices = root.child("devices").ok_or("domain has no <devices>")?;
    let hostdev = devices
        .children_named("hostdev")
        .find(|h| h.child("alias").and_then(|a| a.attr("name")) == Some(alias))
        .ok_or_else(|| format!("no <hostdev> with <alias name='{alias}'/>"))?;
    let address = hostdev
        .children_named("address")
        .find(|a| a.attr("type") == Some("pci"))
        .ok_or_else(|| format!("hostdev '{alias}' has no guest <address type='pci'>"))?;
    let address_text = &xml[address.span.clone()];
    Ok(splice(
        xml,
        vec![(hostdev.span.clone(), stand_in.xml(alias, address_text))],
    ))
}

/// A size in bytes from a libvirt `value` and `unit` (default KiB), as libvirt reads `<memory>`
/// and `<cell memory=.. unit=..>`.
pub fn bytes(value: &str, unit: Option<&str>) -> Result<u64, String> {
    let v: u64 = value.trim().parse().map_err(|e| format!("size '{value}': {e}"))?;
    let mult: u64 = match unit.unwrap_or("KiB") {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1000 * 1000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1000 * 1000 * 1000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1000 * 1000 * 1000 * 1000,
        "T" | "TiB" => 1 << 40,
        other => return Err(format!("unknown unit '{other}'")),
    };
    v.checked_mul(mult)
        .ok_or_else(|| format!("size {value} {unit:?} overflows"))
}

/// Removes every element (anywhere in the document) for which `drop` is true; returns the new
/// text and the names of what was removed.
pub fn without_elements(xml: &str, drop: impl Fn(&Element) -> bool) -> Result<(String, Vec<String>), String> {
    let root = parse(xml)?;
    let mut edits = Vec::new();
    let mut removed = Vec::new();
    fn walk(
        e: &Element,
        drop: &dyn Fn(&Element) -> bool,
        edits: &mut Vec<(Range<usize>, String)>,
        removed: &mut Vec<String>,
    ) {
        for c in &e.children {
            if drop(c) {
                edits.push((c.span.clone(), String::new()));
                removed.push(c.name.clone());
            } else {
                walk(c, drop, edits, removed);
            }
        }
    }
    walk(&root, &drop, &mut edits, &mut removed);
    Ok((splice(xml, edits), removed))
}

/// Applies non-overlapping replacements (byte ranges of `text`).
pub fn splice(text: &str, mut edits: Vec<(Range<usize>, String)>) -> String {
    edits.sort_by_key(|(r, _)| (r.start, r.end));
    let mut out = String::with_capacity(text.len() + 64);
    let mut at = 0;
    for (r, s) in edits {
        out.push_str(&text[at..r.start]);
        out.push_str(&s);
        at = r.end;
    }
    out.push_str(&text[at..]);
    out
}
