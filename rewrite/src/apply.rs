//! Plans and writes the additions for the hostdevs the policy selects.

use topology::{Health, Inventory, PciAddress, Region};

use super::document::{Document, Edits, escape_attr, escape_text};
use super::layout::{FOUR_GIB, guest_ranges};
use super::metadata::{self, ClaimedRegion, GpuPolicy, HbmMetadata, NAMESPACE, UndoOp, render_applied};
use super::size::{kernel_size, unit_factor};
use super::{Dialect, PolicyMode, RewriteError, RewriteOptions};
use crate::instructions::{self, Instruction};

/// libvirt's namespace for `<qemu:commandline>`.
pub const QEMU_NAMESPACE: &str = "http://libvirt.org/schemas/domain/qemu/1.0";
/// Cells are sized in multiples of this (the common huge page size).
pub const CELL_ALIGN: u64 = 2 << 20;
/// Highest PCI bus number a pcie-expander-bus may take.
pub const MAX_BUS_NR: u32 = 254;
/// Highest guest NUMA cell id the rewriter assigns (QEMU's MAX_NODES is 128).
pub const MAX_CELL_ID: u32 = 127;
/// Alignment assumed for a device-dax region whose `align` is unknown.
pub const DEFAULT_DAX_ALIGN: u64 = 2 << 20;

/// The policy in force: host defaults overridden by the domain's metadata.
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    mode: PolicyMode,
    dialect: Dialect,
    size_cap: Option<u64>,
    gpus: Vec<GpuPolicy>,
}

impl Policy {
    pub(crate) fn resolve(options: &RewriteOptions, meta: Option<&HbmMetadata>) -> Self {
        Self {
            mode: meta.and_then(|m| m.mode).unwrap_or(options.policy),
            dialect: meta.and_then(|m| m.dialect).unwrap_or(options.dialect),
            size_cap: meta.and_then(|m| m.size_cap_bytes).or(options.size_cap_bytes),
            gpus: meta.map(|m| m.gpus.clone()).unwrap_or_default(),
        }
    }
}

/// An ASCII XML name (a namespace prefix the rewriter writes element names with).
pub(crate) fn is_xml_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Parses a libvirt number attribute the way libvirt does (C `strtoul` base 0: `0x1f` hex,
/// `017` octal, `31` decimal).
fn parse_num(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).ok();
    }
    if s.len() > 1
        && let Some(oct) = s.strip_prefix('0')
    {
        return u64::from_str_radix(oct, 8).ok();
    }
    s.parse().ok()
}

/// Host PCI addresses of the domain's PCI `<hostdev>`s, in document order (for front ends that
/// check or claim regions before rewriting).
pub fn pci_hostdevs(doc: &Document<'_>) -> Vec<PciAddress> {
    let Some(devices) = doc.child(doc.root, "devices") else {
        return Vec::new();
    };
    doc.children(devices)
        .filter(|c| is_pci_hostdev(doc, *c))
        .filter_map(|h| hostdev_source(doc, h))
        .collect()
}

fn pci_from_address(doc: &Document<'_>, addr: usize) -> Option<PciAddress> {
    let get = |k: &str| doc.attr(addr, k).and_then(|v| parse_num(&v));
    let domain = u16::try_from(get("domain").unwrap_or(0)).ok()?;
    let bus = u8::try_from(get("bus")?).ok()?;
    let device = u8::try_from(get("slot")?).ok()?;
    let function = u8::try_from(get("function").unwrap_or(0)).ok()?;
    (device < 32 && function < 8).then_some(PciAddress::new(domain, bus, device, function))
}

/// Host PCI address of a `<hostdev>` (its `<source><address>`).
pub(crate) fn hostdev_source(doc: &Document<'_>, hostdev: usize) -> Option<PciAddress> {
    let source = doc.child(hostdev, "source")?;
    let addr = doc.child(source, "address")?;
    pci_from_address(doc, addr)
}

pub(crate) fn is_pci_hostdev(doc: &Document<'_>, idx: usize) -> bool {
    doc.name(idx) == "hostdev"
        && doc.attr(idx, "type").is_some_and(|t| t == "pci")
        && doc.attr(idx, "mode").is_none_or(|m| m == "subsystem")
}

fn invalid(doc: &Document<'_>, idx: usize, reason: impl Into<String>) -> RewriteError {
    RewriteError::Invalid {
        line: doc.line(idx),
        element: doc.name(idx).to_string(),
        reason: reason.into(),
    }
}

fn unsatisfiable(doc: &Document<'_>, idx: usize, reason: impl Into<String>) -> RewriteError {
    RewriteError::Unsatisfiable {
        line: doc.line(idx),
        element: doc.name(idx).to_string(),
        reason: reason.into(),
    }
}

/// `<memory unit=..>N</memory>`-style amount in bytes.
fn amount(doc: &Document<'_>, idx: usize, value: Option<String>) -> Result<u64, RewriteError> {
    let unit = doc.attr(idx, "unit").map(|u| u.into_owned()).unwrap_or_default();
    let factor = unit_factor(&unit).ok_or_else(|| invalid(doc, idx, format!("unknown unit {unit:?}")))?;
    let text = value.unwrap_or_else(|| doc.text(idx));
    let n: u64 = text
        .trim()
        .parse()
        .map_err(|_| invalid(doc, idx, format!("memory amount {text:?} is not a number")))?;
    n.checked_mul(factor)
        .ok_or_else(|| invalid(doc, idx, "memory amount too large"))
}

/// A selected hostdev: element, host address, dialect, (region, cell size) pairs.
type Selected<'i> = (usize, PciAddress, Dialect, Vec<(&'i Region, u64)>);

struct NewCell<'i> {
    id: u32,
    size: u64,
    region: &'i Region,
}

struct Target<'i> {
    hostdev: usize,
    addr: PciAddress,
    dialect: Dialect,
    cells: Vec<NewCell<'i>>,
    /// Existing pcie-expander-bus the hostdev already sits behind (KubeVirt's layout).
    reuse_expander: Option<usize>,
    expander_index: u32,
    root_port_index: u32,
    bus_nr: u32,
    alias: String,
}

struct Group {
    parent: usize,
    parent_path: String,
    children: Vec<(String, Option<UndoOp>)>,
}

struct Writer<'d, 'a> {
    doc: &'d Document<'a>,
    edits: Edits,
    undo: Vec<UndoOp>,
    groups: Vec<Group>,
    q: char,
    unit: String,
    nl: &'static str,
}

impl<'d, 'a> Writer<'d, 'a> {
    fn new(doc: &'d Document<'a>) -> Self {
        let root = &doc.elements[doc.root];
        let pretty = doc.src[root.tag_end..root.close_start].contains('\n');
        let q = doc
            .attrs(doc.root)
            .first()
            .and_then(|a| doc.src[..a.value.0].chars().last())
            .filter(|c| *c == '"' || *c == '\'')
            .unwrap_or('\'');
        let unit = doc
            .children(doc.root)
            .next()
            .and_then(|c| doc.indent(c))
            .filter(|s| !s.is_empty())
            .unwrap_or("  ")
            .to_string();
        Self {
            doc,
            edits: Edits::default(),
            undo: Vec::new(),
            groups: Vec::new(),
            q,
            unit: if pretty { unit } else { String::new() },
            nl: if pretty { "\n" } else { "" },
        }
    }

    /// Joins `(depth, line)` pairs into one element text; `\n` marks line starts (indented later).
    fn block(&self, lines: &[(usize, String)]) -> String {
        let mut s = String::new();
        for (i, (depth, line)) in lines.iter().enumerate() {
            if i > 0 {
                s.push_str(self.nl);
                s.push_str(&self.unit.repeat(*depth));
            }
            s.push_str(line);
        }
        s
    }

    fn attr(&self, name: &str, value: &str) -> String {
        let q = self.q;
        format!(" {name}={q}{}{q}", escape_attr(value, q))
    }

    /// Appends `xml` as the last child of `parent`; `child_path` is recorded for removal
    /// (empty: nothing recorded).
    fn append(&mut self, parent: usize, parent_path: &str, xml: String, child_path: String) {
        let op = (!child_path.is_empty()).then_some(UndoOp::Remove {
            at: child_path,
            previous: None,
        });
        self.append_with(parent, parent_path, xml, op);
    }

    fn append_with(&mut self, parent: usize, parent_path: &str, xml: String, op: Option<UndoOp>) {
        if let Some(g) = self.groups.iter_mut().find(|g| g.parent == parent) {
            g.children.push((xml, op));
        } else {
            self.groups.push(Group {
                parent,
                parent_path: parent_path.to_string(),
                children: vec![(xml, op)],
            });
        }
    }

    /// Replaces `[start, end)` inside element `idx`, recording how to put `idx` back.
    fn modify(&mut self, idx: usize, path: &str, start: usize, end: usize, text: String) {
        if !self
            .undo
            .iter()
            .any(|u| matches!(u, UndoOp::Restore { at, .. } if at == path))
        {
            self.undo.push(UndoOp::Restore {
                at: path.to_string(),
                raw: self.doc.raw(idx).to_string(),
            });
        }
        self.edits.replace(start, end, text);
    }

    /// Sets the text of element `idx` (a `<x/>` becomes `<x>text</x>`), recording how to put it back.
    fn set_text(&mut self, idx: usize, path: &str, text: String) {
        let e = &self.doc.elements[idx];
        if e.self_closing {
            let head = &self.doc.src[e.start..e.tag_end - 2];
            let name = self.doc.name(idx);
            let (s, en) = (e.start, e.end);
            self.modify(idx, path, s, en, format!("{head}>{text}</{name}>"));
        } else {
            let (s, en) = self.doc.inner(idx);
            self.modify(idx, path, s, en, text);
        }
    }

    fn child_indent(&self, parent: usize) -> String {
        if self.nl.is_empty() {
            return String::new();
        }
        let doc = self.doc;
        if let Some(first) = doc.children(parent).next()
            && let Some(ind) = doc.indent(first)
        {
            return ind.to_string();
        }
        format!("{}{}", doc.indent(parent).unwrap_or(""), self.unit)
    }

    /// Turns the collected appends into edits.
    fn flush_groups(&mut self) {
        let groups = std::mem::take(&mut self.groups);
        for g in groups {
            let ci = self.child_indent(g.parent);
            let sep = format!("{}{ci}", self.nl);
            let mut text = String::new();
            for (xml, _) in &g.children {
                text.push_str(&sep);
                text.push_str(&xml.replace('\n', &sep));
            }
            let e = &self.doc.elements[g.parent];
            if let Some(last) = e.children.last() {
                let at = self.doc.elements[*last].end;
                self.edits.insert(at, text);
                self.undo.extend(g.children.into_iter().filter_map(|(_, op)| op));
            } else {
                // A parent without children (`<x/>`, `<x></x>`) is opened up; its original end is
                // recorded so that, once the additions are removed again, it closes as before
                // (changes made to its start tag since are kept).
                let pi = if self.nl.is_empty() {
                    ""
                } else {
                    self.doc.indent(g.parent).unwrap_or("")
                };
                let name = self.doc.name(g.parent);
                let gt = if e.self_closing { e.tag_end - 2 } else { e.tag_end - 1 };
                let end = e.end;
                let replacement = format!(">{text}{}{pi}</{name}>", self.nl);
                let tail = self.doc.src[gt..end].to_string();
                if !self
                    .undo
                    .iter()
                    .any(|u| matches!(u, UndoOp::Collapse { at, .. } if *at == g.parent_path))
                {
                    self.undo.push(UndoOp::Collapse {
                        at: g.parent_path.clone(),
                        tail,
                    });
                }
                self.undo.extend(g.children.into_iter().filter_map(|(_, op)| op));
                self.edits.replace(gt, end, replacement);
            }
        }
    }

    /// The collapse op for a parent without children (see [`Writer::flush_groups`]).
    fn collapse_op(&self, idx: usize, path: &str) -> UndoOp {
        let e = &self.doc.elements[idx];
        let gt = if e.self_closing { e.tag_end - 2 } else { e.tag_end - 1 };
        UndoOp::Collapse {
            at: path.to_string(),
            tail: self.doc.src[gt..e.end].to_string(),
        }
    }
}

fn gib(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// Writes the additions; `None` when no hostdev is selected.
pub(crate) fn apply(
    doc: &Document<'_>,
    inventory: &Inventory,
    policy: &Policy,
    options: &RewriteOptions,
) -> Result<Option<(String, Vec<String>)>, RewriteError> {
    let root = doc.root;
    if doc.name(root) != "domain" {
        return Err(invalid(
            doc,
            root,
            "the root element must be <domain> (a libvirt domain definition)",
        ));
    }
    let Some(devices) = doc.child(root, "devices") else {
        return Ok(None);
    };
    let hostdevs: Vec<usize> = doc.children(devices).filter(|c| is_pci_hostdev(doc, *c)).collect();
    if hostdevs.is_empty() {
        return Ok(None);
    }

    // 1. Which hostdevs get which regions.
    let mut selected: Vec<Selected<'_>> = Vec::new();
    for &h in &hostdevs {
        let Some(addr) = hostdev_source(doc, h) else {
            if doc.child(h, "source").and_then(|s| doc.child(s, "address")).is_some() {
                return Err(invalid(
                    doc,
                    h,
                    "source <address> is not a PCI address (domain/bus/slot/function)",
                ));
            }
            continue;
        };
        // `<address type='unassigned'/>`: bound to vfio on the host but never shown to the guest.
        if doc
            .child(h, "address")
            .is_some_and(|a| doc.attr(a, "type").is_some_and(|t| t == "unassigned"))
        {
            continue;
        }
        let gp = policy.gpus.iter().find(|g| g.address == addr);
        let mode = gp.and_then(|g| g.mode).unwrap_or(policy.mode);
        if mode == PolicyMode::Off {
            continue;
        }
        let dialect = gp.and_then(|g| g.dialect).unwrap_or(policy.dialect);
        let cap = gp.and_then(|g| g.size_cap_bytes).or(policy.size_cap);
        let regions: Vec<(&Region, u64)> = inventory
            .regions_of(addr)
            .filter(|r| r.health == Health::Healthy)
            .filter(|r| (r.online && r.host_node.is_some()) || r.dax.is_some())
            .filter(|r| {
                gp.and_then(|g| g.regions.as_ref())
                    .is_none_or(|ids| ids.contains(&r.id))
            })
            .map(|r| {
                let size = cap.map_or(r.size_bytes, |c| c.min(r.size_bytes));
                (r, size - size % CELL_ALIGN)
            })
            .collect();
        if regions.is_empty() {
            if mode == PolicyMode::Required {
                return Err(unsatisfiable(
                    doc,
                    h,
                    format!("PCI hostdev {addr} owns no usable HBM region on this host and the policy is 'required'"),
                ));
            }
            continue;
        }
        if let Some((r, _)) = regions.iter().find(|(_, s)| *s == 0) {
            return Err(invalid(
                doc,
                h,
                format!("size cap leaves region {} smaller than 2 MiB; raise the cap", r.id),
            ));
        }
        if let Some(&other) = hostdevs
            .iter()
            .find(|o| **o != h && hostdev_source(doc, **o) == Some(addr))
        {
            return Err(RewriteError::Collision {
                line: doc.line(other),
                element: "hostdev".into(),
                reason: format!(
                    "PCI device {addr} is passed through twice (also at line {}); keep one",
                    doc.line(h)
                ),
            });
        }
        selected.push((h, addr, dialect, regions));
    }
    if selected.is_empty() {
        return Ok(None);
    }

    // 2. Machine.
    let os = doc
        .child(root, "os")
        .ok_or_else(|| invalid(doc, root, "no <os> element"))?;
    let os_type = doc
        .child(os, "type")
        .ok_or_else(|| invalid(doc, os, "no <type> element"))?;
    let machine = doc.attr(os_type, "machine").map(|m| m.into_owned()).unwrap_or_default();
    if !machine.contains("q35") {
        return Err(unsatisfiable(
            doc,
            os_type,
            format!(
                "machine {machine:?} is not q35; HBM passthrough needs a PCIe (q35) machine for the pcie-expander-bus"
            ),
        ));
    }
    let arch = doc
        .attr(os_type, "arch")
        .map(|a| a.into_owned())
        .unwrap_or_else(|| "x86_64".into());
    if arch != "x86_64" && arch != "i686" {
        return Err(unsatisfiable(
            doc,
            os_type,
            format!("arch {arch:?}: only x86 q35 guests are supported"),
        ));
    }

    // 3. Cells.
    let memory = doc.child(root, "memory");
    let current_memory = doc.child(root, "currentMemory");
    let cpu = doc.child(root, "cpu");
    let numa = cpu.and_then(|c| doc.child(c, "numa"));
    let mut existing: Vec<(u32, u64)> = Vec::new();
    if let Some(numa) = numa {
        for (i, cell) in doc.children_named(numa, "cell").enumerate() {
            let id = match doc.attr(cell, "id") {
                Some(v) => v
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| invalid(doc, cell, format!("cell id {v:?} is not a number")))?,
                None => u32::try_from(i).unwrap_or(u32::MAX),
            };
            let mem = doc.attr(cell, "memory").map(|m| m.into_owned());
            let Some(mem) = mem else {
                return Err(invalid(doc, cell, "cell without memory attribute"));
            };
            existing.push((id, amount(doc, cell, Some(mem))?));
        }
        existing.sort_by_key(|c| c.0);
        if existing.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(invalid(doc, numa, "two cells with the same id"));
        }
    }
    let mut cell0: Option<u64> = None;
    if existing.is_empty() {
        let Some(memory) = memory else {
            return Err(invalid(doc, root, "no <memory> element and no NUMA cells"));
        };
        let size = amount(doc, memory, None)?;
        cell0 = Some(size);
        existing.push((0, size));
    }
    let mut next_id = existing.iter().map(|c| c.0).max().unwrap_or(0).saturating_add(1);

    // 4. PCI controllers.
    let controllers: Vec<usize> = doc
        .children_named(devices, "controller")
        .filter(|c| doc.attr(*c, "type").is_some_and(|t| t == "pci"))
        .collect();
    let index_of = |c: usize| {
        doc.attr(c, "index")
            .and_then(|v| parse_num(&v))
            .and_then(|v| u32::try_from(v).ok())
    };
    let model_of = |c: usize| doc.attr(c, "model").map(|m| m.into_owned()).unwrap_or_default();
    let by_index = |i: u32| controllers.iter().copied().find(|c| index_of(*c) == Some(i));
    let mut max_index = controllers.iter().filter_map(|c| index_of(*c)).max().unwrap_or(0);
    let mut busy_bus: Vec<u32> = controllers
        .iter()
        .filter(|c| model_of(**c).ends_with("expander-bus"))
        .filter_map(|c| {
            doc.child(*c, "target")
                .and_then(|t| doc.attr(t, "busNr"))
                .and_then(|b| parse_num(&b))
        })
        .filter_map(|b| u32::try_from(b).ok())
        .collect();
    let mut reused: Vec<usize> = Vec::new();
    let mut aliases_taken: Vec<String> = Vec::new();

    let mut targets: Vec<Target<'_>> = Vec::new();
    for (h, addr, dialect, regions) in selected {
        let cells: Vec<NewCell<'_>> = regions
            .into_iter()
            .map(|(region, size)| {
                let c = NewCell {
                    id: next_id,
                    size,
                    region,
                };
                next_id = next_id.saturating_add(1);
                c
            })
            .collect();
        // KubeVirt's layout: hostdev -> pcie-root-port -> pcie-expander-bus.
        let guest_addr = doc
            .child(h, "address")
            .filter(|a| doc.attr(*a, "type").is_none_or(|t| t == "pci"));
        let reuse = guest_addr
            .and_then(|a| doc.attr(a, "bus").and_then(|b| parse_num(&b)))
            .and_then(|b| u32::try_from(b).ok())
            .and_then(by_index)
            .filter(|p| model_of(*p) == "pcie-root-port")
            .and_then(|p| doc.child(p, "address"))
            .and_then(|a| doc.attr(a, "bus").and_then(|b| parse_num(&b)))
            .and_then(|b| u32::try_from(b).ok())
            .and_then(by_index)
            .filter(|e| {
                model_of(*e) == "pcie-expander-bus" && !reused.contains(e) && doc.child(*e, "target").is_some()
            });
        let alias = match doc.child(h, "alias").and_then(|a| doc.attr(a, "name")) {
            Some(n) if n.starts_with("ua-") => n.into_owned(),
            _ => format!(
                "ua-hbm-{:04x}-{:02x}-{:02x}-{:x}",
                addr.domain, addr.bus, addr.device, addr.function
            ),
        };
        if !alias.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(invalid(
                doc,
                h,
                format!("alias {alias:?} has characters libvirt does not allow (use A-Z, a-z, 0-9, '-', '_')"),
            ));
        }
        if aliases_taken.contains(&alias) {
            return Err(RewriteError::Collision {
                line: doc.line(h),
                element: "alias".into(),
                reason: format!("alias {alias:?} is used by two hostdevs; give each a unique ua- alias"),
            });
        }
        aliases_taken.push(alias.clone());
        let mut t = Target {
            hostdev: h,
            addr,
            dialect,
            cells,
            reuse_expander: reuse,
            expander_index: 0,
            root_port_index: 0,
            bus_nr: 0,
            alias,
        };
        if let Some(e) = reuse {
            reused.push(e);
            t.expander_index = index_of(e).unwrap_or(0);
        } else {
            t.expander_index = max_index.saturating_add(1);
            t.root_port_index = max_index.saturating_add(2);
            max_index = max_index.saturating_add(2);
            if t.root_port_index > 255 {
                return Err(unsatisfiable(
                    doc,
                    devices,
                    format!("no free PCI controller index for GPU {addr}: more than 254 PCI buses would be needed"),
                ));
            }
        }
        targets.push(t);
    }
    if next_id > MAX_CELL_ID + 1 {
        return Err(unsatisfiable(
            doc,
            numa.unwrap_or(root),
            format!(
                "the HBM cells would need guest NUMA cell ids up to {}; QEMU allows 0-{MAX_CELL_ID}",
                next_id - 1
            ),
        ));
    }
    for t in targets.iter_mut().filter(|t| t.reuse_expander.is_none()) {
        let mut b = MAX_BUS_NR;
        loop {
            if b <= max_index {
                return Err(unsatisfiable(
                    doc,
                    devices,
                    format!(
                        "no free PCI bus number for the pcie-expander-bus of GPU {} ({} controller indexes and expanders use buses up to 254); more than 254 buses would be needed",
                        t.addr, max_index
                    ),
                ));
            }
            if !busy_bus.iter().any(|e| b <= e.saturating_add(1) && *e <= b + 1) {
                break;
            }
            b -= 2;
        }
        busy_bus.push(b);
        t.bus_nr = b;
    }

    // 5. Guest-physical layout.
    let mut all_sizes: Vec<u64> = existing.iter().map(|c| c.1).collect();
    for t in &targets {
        all_sizes.extend(t.cells.iter().map(|c| c.size));
    }
    let ranges = guest_ranges(&all_sizes);
    let range_of = |id: u32| -> &[super::GpaRange] {
        let pos = existing.len()
            + targets
                .iter()
                .flat_map(|t| t.cells.iter())
                .position(|c| c.id == id)
                .unwrap_or(0);
        ranges.get(pos).map_or(&[], |r| r.as_slice())
    };
    let mut cmdline_frags: Vec<String> = Vec::new();
    let mut instructions: Vec<Instruction> = Vec::new();
    for t in &targets {
        for c in &t.cells {
            match t.dialect {
                Dialect::KernelCmdline => {
                    if doc.child(os, "kernel").is_none() {
                        return Err(unsatisfiable(
                            doc,
                            os,
                            "dialect kernel-cmdline needs direct kernel boot (<os><kernel>); use dialect memmap-type, sp-mem or none",
                        ));
                    }
                    for r in range_of(c.id) {
                        cmdline_frags.push(format!(
                            "memmap={}%{}-1+0xefffffff",
                            kernel_size(r.size),
                            kernel_size(r.start)
                        ));
                    }
                }
                Dialect::MemmapType(m) => {
                    let r = range_of(c.id);
                    if r.len() > 1
                        || r.first()
                            .is_some_and(|r| r.start < FOUR_GIB && r.start + r.size > FOUR_GIB)
                    {
                        return Err(unsatisfiable(
                            doc,
                            t.hostdev,
                            format!(
                                "cell {} would span the 4 GiB boundary, which memmap-type refuses; change the guest RAM size",
                                c.id
                            ),
                        ));
                    }
                    instructions.push(Instruction::MemmapType {
                        cell: c.id,
                        size_bytes: c.size,
                        memmap: m,
                    });
                }
                Dialect::SpMem => instructions.push(Instruction::SpMem {
                    cell: c.id,
                    size_bytes: c.size,
                }),
                Dialect::None => {}
            }
            if !c.region.online
                && let Some(path) = &c.region.dax
            {
                instructions.push(Instruction::Dax {
                    cell: c.id,
                    size_bytes: c.size,
                    path: path.clone(),
                    align: c.region.dax_align.unwrap_or(DEFAULT_DAX_ALIGN),
                });
            }
        }
    }

    // 6. Write.
    let mut w = Writer::new(doc);
    let mut summary: Vec<String> = Vec::new();
    let needs_qemu_ns = !options.native_generic_initiator || !instructions.is_empty();
    let mut qprefix = doc.root_prefix_for(QEMU_NAMESPACE);
    if needs_qemu_ns && qprefix.is_none() {
        if doc.attrs(root).iter().any(|a| a.name == "xmlns:qemu") {
            return Err(invalid(
                doc,
                root,
                "prefix 'qemu' is bound to another namespace; bind it to libvirt's qemu namespace",
            ));
        }
        let at = doc.attrs(root).last().map_or(doc.elements[root].name.1, |a| a.end);
        w.edits.insert(at, w.attr("xmlns:qemu", QEMU_NAMESPACE));
        w.undo.push(UndoOp::RemoveRootAttr {
            name: "xmlns:qemu".into(),
        });
        qprefix = Some("qemu".into());
    }
    let qp = match qprefix.as_deref() {
        Some("") | None => String::new(),
        Some(p) if is_xml_name(p) => format!("{p}:"),
        Some(p) => {
            return Err(invalid(doc, root, format!("namespace prefix {p:?} is not an XML name")));
        }
    };

    let total = all_sizes
        .iter()
        .try_fold(0u64, |a, s| a.checked_add(*s))
        .ok_or_else(|| invalid(doc, memory.unwrap_or(root), "total guest memory overflows 64 bits"))?;
    for (el, path) in [(memory, "memory"), (current_memory, "currentMemory")] {
        let Some(el) = el else { continue };
        // Checks the amount and unit (the new amount is written in the same unit when it divides).
        amount(doc, el, None)?;
        let unit = doc.attr(el, "unit").map(|u| u.into_owned());
        let factor = unit_factor(unit.as_deref().unwrap_or("")).unwrap_or(1024);
        let (s, e) = doc.inner(el);
        if total.is_multiple_of(factor) {
            let text = (total / factor).to_string();
            w.modify(el, path, s, e, text);
        } else {
            let (unit_name, f) = if total.is_multiple_of(1024) {
                ("KiB", 1024)
            } else {
                ("b", 1)
            };
            let text = (total / f).to_string();
            w.modify(el, path, s, e, text);
            match doc.attrs(el).into_iter().find(|a| a.name == "unit") {
                Some(a) => w.edits.replace(a.value.0, a.value.1, unit_name),
                None => {
                    let at = doc.elements[el].name.1;
                    let attr = w.attr("unit", unit_name);
                    w.edits.insert(at, attr);
                }
            }
        }
    }

    let cell_xml = |w: &Writer<'_, '_>, c: &NewCell<'_>| {
        format!(
            "<cell{}{}{}/>",
            w.attr("id", &c.id.to_string()),
            w.attr("memory", &(c.size / 1024).to_string()),
            w.attr("unit", "KiB")
        )
    };
    let new_cells: Vec<&NewCell<'_>> = targets.iter().flat_map(|t| t.cells.iter()).collect();
    let cell0_xml = |w: &Writer<'_, '_>, size: u64| {
        let vcpus = doc
            .child(root, "vcpu")
            .and_then(|v| doc.text(v).trim().parse::<u32>().ok())
            .unwrap_or(1)
            .max(1);
        let cpus = if vcpus == 1 {
            "0".to_string()
        } else {
            format!("0-{}", vcpus - 1)
        };
        let (mem, unit) = if size.is_multiple_of(1024) {
            (size / 1024, "KiB")
        } else {
            (size, "b")
        };
        format!(
            "<cell{}{}{}{}/>",
            w.attr("id", "0"),
            w.attr("cpus", &cpus),
            w.attr("memory", &mem.to_string()),
            w.attr("unit", unit)
        )
    };
    match (cpu, numa) {
        (Some(_), Some(numa)) => {
            for c in &new_cells {
                let x = cell_xml(&w, c);
                w.append(numa, "cpu/numa", x, format!("cpu/numa/cell[id={}]", c.id));
            }
        }
        (cpu, _) => {
            let mut lines = Vec::new();
            let depth = usize::from(cpu.is_none());
            if cpu.is_none() {
                lines.push((0, "<cpu>".to_string()));
            }
            lines.push((depth, "<numa>".to_string()));
            if let Some(size) = cell0 {
                lines.push((depth + 1, cell0_xml(&w, size)));
            }
            for c in &new_cells {
                lines.push((depth + 1, cell_xml(&w, c)));
            }
            lines.push((depth, "</numa>".to_string()));
            if let Some(cpu) = cpu {
                let x = w.block(&lines);
                w.append(cpu, "cpu", x, "cpu/numa".into());
            } else {
                lines.push((0, "</cpu>".to_string()));
                let x = w.block(&lines);
                w.append(root, "", x, "cpu".into());
            }
        }
    }
    if cell0.is_some() {
        summary.push(format!(
            "cell 0: {} with all vCPUs (the existing memory)",
            gib(existing[0].1)
        ));
    }

    // numatune
    let memnodes: Vec<String> = new_cells
        .iter()
        .filter(|c| c.region.online)
        .filter_map(|c| {
            c.region.host_node.map(|n| {
                format!(
                    "<memnode{}{}{}/>",
                    w.attr("cellid", &c.id.to_string()),
                    w.attr("mode", "strict"),
                    w.attr("nodeset", &n.to_string())
                )
            })
        })
        .collect();
    if !memnodes.is_empty() {
        match doc.child(root, "numatune") {
            Some(nt) => {
                for (m, c) in memnodes.iter().zip(
                    new_cells
                        .iter()
                        .filter(|c| c.region.online && c.region.host_node.is_some()),
                ) {
                    w.append(nt, "numatune", m.clone(), format!("numatune/memnode[cellid={}]", c.id));
                }
            }
            None => {
                let mut lines = vec![(0, "<numatune>".to_string())];
                lines.extend(memnodes.iter().map(|m| (1, m.clone())));
                lines.push((0, "</numatune>".to_string()));
                let x = w.block(&lines);
                w.append(root, "", x, "numatune".into());
            }
        }
    }

    // features/acpi
    match doc.child(root, "features") {
        Some(f) if doc.child(f, "acpi").is_some() => {}
        Some(f) => {
            w.append(f, "features", "<acpi/>".into(), "features/acpi".into());
            summary.push("<features><acpi/> added (the pxb's _PXM needs ACPI)".into());
        }
        None => {
            let x = w.block(&[
                (0, "<features>".into()),
                (1, "<acpi/>".into()),
                (0, "</features>".into()),
            ]);
            w.append(root, "", x, "features".into());
            summary.push("<features><acpi/> added (the pxb's _PXM needs ACPI)".into());
        }
    }

    // controllers, hostdev
    for t in &targets {
        let first = t.cells[0].id;
        for c in &t.cells {
            let r = c.region;
            let where_ = match (r.online, r.host_node, &r.dax) {
                (true, Some(n), _) => format!("host node {n}"),
                (_, _, Some(d)) => format!("dax {d}"),
                _ => "host".to_string(),
            };
            summary.push(format!(
                "cell {}: {} CPU-less for GPU {} region {} ({where_}), {}",
                c.id,
                gib(c.size),
                t.addr,
                r.id,
                t.dialect
            ));
        }
        if let Some(e) = t.reuse_expander {
            let path = format!("devices/controller[type=pci][index={}]", t.expander_index);
            if let Some(target) = doc.child(e, "target") {
                match doc.child(target, "node") {
                    Some(node) => w.set_text(node, &format!("{path}/target/node"), first.to_string()),
                    None => w.append(
                        target,
                        &format!("{path}/target"),
                        format!("<node>{first}</node>"),
                        format!("{path}/target/node"),
                    ),
                }
            }
            summary.push(format!(
                "existing pcie-expander-bus index {} reused, now on guest node {first}",
                t.expander_index
            ));
        } else {
            let e = t.expander_index;
            let rp = t.root_port_index;
            let x = w.block(&[
                (
                    0,
                    format!(
                        "<controller{}{}{}>",
                        w.attr("type", "pci"),
                        w.attr("index", &e.to_string()),
                        w.attr("model", "pcie-expander-bus")
                    ),
                ),
                (1, format!("<target{}>", w.attr("busNr", &t.bus_nr.to_string()))),
                (2, format!("<node>{first}</node>")),
                (1, "</target>".into()),
                (0, "</controller>".into()),
            ]);
            w.append(
                devices,
                "devices",
                x,
                format!("devices/controller[type=pci][index={e}]"),
            );
            let x = w.block(&[
                (
                    0,
                    format!(
                        "<controller{}{}{}>",
                        w.attr("type", "pci"),
                        w.attr("index", &rp.to_string()),
                        w.attr("model", "pcie-root-port")
                    ),
                ),
                (1, pci_address_xml(&w, e)),
                (0, "</controller>".into()),
            ]);
            w.append(
                devices,
                "devices",
                x,
                format!("devices/controller[type=pci][index={rp}]"),
            );
            let hpath = format!("devices/hostdev[source={}]", t.addr);
            let new_addr = pci_address_xml(&w, rp);
            match doc.child(t.hostdev, "address") {
                Some(a) => {
                    let el = &doc.elements[a];
                    let (s, en) = (el.start, el.end);
                    w.modify(a, &format!("{hpath}/address"), s, en, new_addr);
                }
                None => w.append(t.hostdev, &hpath, new_addr, format!("{hpath}/address")),
            }
            summary.push(format!(
                "pcie-expander-bus index {e} (busNr {}, node {first}) + pcie-root-port index {rp}; hostdev {} moved behind it",
                t.bus_nr, t.addr
            ));
        }
        let hpath = format!("devices/hostdev[source={}]", t.addr);
        match doc.child(t.hostdev, "alias") {
            Some(a) if doc.attr(a, "name").is_some_and(|n| n == t.alias) => {}
            Some(a) => {
                let el = &doc.elements[a];
                let (s, en) = (el.start, el.end);
                let x = format!("<alias{}/>", w.attr("name", &t.alias));
                w.modify(a, &format!("{hpath}/alias"), s, en, x);
                summary.push(format!("hostdev {} alias set to {}", t.addr, t.alias));
            }
            None => {
                let x = format!("<alias{}/>", w.attr("name", &t.alias));
                w.append(t.hostdev, &hpath, x, format!("{hpath}/alias"));
                summary.push(format!("hostdev {} alias {} added", t.addr, t.alias));
            }
        }
        if options.native_generic_initiator {
            let nodeset = t.cells.iter().map(|c| c.id.to_string()).collect::<Vec<_>>().join(",");
            let x = format!("<acpi{}/>", w.attr("nodeset", &nodeset));
            match doc.child(t.hostdev, "acpi") {
                Some(a) => {
                    let el = &doc.elements[a];
                    let (s, en) = (el.start, el.end);
                    w.modify(a, &format!("{hpath}/acpi"), s, en, x);
                }
                None => w.append(t.hostdev, &hpath, x, format!("{hpath}/acpi")),
            }
            summary.push(format!(
                "Generic Initiator (libvirt <acpi nodeset='{nodeset}'/>) for {}",
                t.alias
            ));
        }
    }

    // qemu:commandline
    let mut qemu_children: Vec<(String, Option<UndoOp>)> = Vec::new();
    let cl_name = format!("{qp}commandline");
    let existing_cl = doc.child(root, &cl_name);
    // Args already there (a hand-made or half-removed earlier setup) are not added twice.
    let existing_args: Vec<String> = existing_cl
        .map(|cl| {
            doc.children_named(cl, &format!("{qp}arg"))
                .filter_map(|a| doc.attr(a, "value").map(|v| v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    if !options.native_generic_initiator {
        for t in &targets {
            for c in &t.cells {
                let value = format!(
                    "acpi-generic-initiator,id=hbm-gi{},pci-dev={},node={}",
                    c.id, t.alias, c.id
                );
                if existing_args.contains(&value) {
                    summary.push(format!("Generic Initiator hbm-gi{} already present", c.id));
                    continue;
                }
                qemu_children.push((format!("<{qp}arg{}/>", w.attr("value", "-object")), None));
                let op = UndoOp::Remove {
                    at: format!("{cl_name}/{qp}arg[value={value}]"),
                    previous: Some("-object".into()),
                };
                qemu_children.push((format!("<{qp}arg{}/>", w.attr("value", &value)), Some(op)));
                summary.push(format!(
                    "Generic Initiator hbm-gi{} for {} on node {}",
                    c.id, t.alias, c.id
                ));
            }
        }
    }
    let existing_env = existing_cl.and_then(|cl| {
        doc.children_named(cl, &format!("{qp}env"))
            .find(|e| doc.attr(*e, "name").is_some_and(|n| n == instructions::ENV_VAR))
    });
    if !instructions.is_empty() {
        let wire = instructions::render(&instructions);
        let x = format!(
            "<{qp}env{}{}/>",
            w.attr("name", instructions::ENV_VAR),
            w.attr("value", &wire)
        );
        let env_path = format!("{cl_name}/{qp}env[name={}]", instructions::ENV_VAR);
        match existing_env {
            Some(env) => {
                let el = &doc.elements[env];
                let (s, en) = (el.start, el.end);
                w.modify(env, &env_path, s, en, x);
            }
            None => qemu_children.push((
                x,
                Some(UndoOp::Remove {
                    at: env_path,
                    previous: None,
                }),
            )),
        }
        summary.push(format!("{}={wire} for the QEMU argv adapter", instructions::ENV_VAR));
        let adapter = escape_text(&options.adapter_path);
        match doc.child(devices, "emulator") {
            Some(em) => {
                if doc.text(em) != options.adapter_path {
                    w.set_text(em, "devices/emulator", adapter);
                    summary.push(format!("<emulator> set to the adapter {}", options.adapter_path));
                }
            }
            None => {
                w.append(
                    devices,
                    "devices",
                    format!("<emulator>{adapter}</emulator>"),
                    "devices/emulator".into(),
                );
                summary.push(format!("<emulator> {} added (the adapter)", options.adapter_path));
            }
        }
    }
    if !qemu_children.is_empty() {
        match existing_cl {
            Some(cl) => {
                for (x, op) in qemu_children {
                    w.append_with(cl, &cl_name, x, op);
                }
            }
            None => {
                let mut lines = vec![(0, format!("<{cl_name}>"))];
                lines.extend(qemu_children.into_iter().map(|(x, _)| (1, x)));
                lines.push((0, format!("</{cl_name}>")));
                let x = w.block(&lines);
                w.append(root, "", x, cl_name.clone());
            }
        }
    }

    // cmdline
    if !cmdline_frags.is_empty() {
        let frag = cmdline_frags.join(" ");
        match doc.child(os, "cmdline") {
            Some(cl) => {
                let (s, e) = doc.inner(cl);
                let cur = &doc.src[s..e];
                let el = &doc.elements[cl];
                if !el.self_closing && el.children.is_empty() && (cur.is_empty() || !cur.trim().is_empty()) {
                    // Appended text is taken back by itself, so later edits of the line survive.
                    let added = if cur.is_empty() {
                        escape_text(&frag)
                    } else {
                        format!(" {}", escape_text(&frag))
                    };
                    w.edits.insert(e, added.clone());
                    w.undo.push(UndoOp::StripText {
                        at: "os/cmdline".into(),
                        text: added,
                    });
                } else {
                    let text = if cur.trim().is_empty() {
                        escape_text(&frag)
                    } else {
                        format!("{cur} {}", escape_text(&frag))
                    };
                    w.set_text(cl, "os/cmdline", text);
                }
            }
            None => w.append(
                os,
                "os",
                format!("<cmdline>{}</cmdline>", escape_text(&frag)),
                "os/cmdline".into(),
            ),
        }
        summary.push(format!("guest kernel command line += {frag}"));
    }

    w.flush_groups();

    // 7. Metadata record.
    let claimed: Vec<ClaimedRegion> = targets
        .iter()
        .flat_map(|t| {
            t.cells.iter().map(|c| ClaimedRegion {
                id: c.region.id.clone(),
                gpu: t.addr,
                host_node: c.region.host_node,
                dax: c.region.dax.clone(),
                size_bytes: c.size,
                guest_cell: c.id,
            })
        })
        .collect();
    write_metadata(&mut w, &claimed);
    Ok(Some((w.edits.apply(doc.src), summary)))
}

fn pci_address_xml(w: &Writer<'_, '_>, bus: u32) -> String {
    format!(
        "<address{}{}{}{}{}/>",
        w.attr("type", "pci"),
        w.attr("domain", "0x0000"),
        w.attr("bus", &format!("0x{bus:02x}")),
        w.attr("slot", "0x00"),
        w.attr("function", "0x0")
    )
}

fn write_metadata(w: &mut Writer<'_, '_>, claimed: &[ClaimedRegion]) {
    let doc = w.doc;
    let root = doc.root;
    let metadata_el = doc.child(root, "metadata");
    let ours = metadata::element(doc);
    match (metadata_el, ours) {
        (_, Some(ours)) => {
            let prefix = doc.name(ours).split_once(':').map_or("", |(p, _)| p).to_string();
            if doc.elements[ours].children.is_empty() {
                let op = w.collapse_op(ours, "metadata/{hbm}");
                w.undo.push(op);
            }
            let applied = render_applied(&prefix, claimed, &w.undo, w.q);
            // Not recorded as a remove op: the record is always removed with itself.
            let x = applied.replace("\n  ", &format!("\n{}", w.unit)).replace('\n', w.nl);
            w.append(ours, "metadata/{hbm}", x, String::new());
            w.flush_groups();
        }
        (Some(m), None) => {
            if doc.elements[m].children.is_empty() {
                let op = w.collapse_op(m, "metadata");
                w.undo.push(op);
            }
            w.undo.push(UndoOp::Remove {
                at: "metadata/{hbm}".into(),
                previous: None,
            });
            let x = our_element(w, claimed);
            w.append(m, "metadata", x, String::new());
            w.flush_groups();
        }
        (None, None) => {
            w.undo.push(UndoOp::Remove {
                at: "metadata".into(),
                previous: None,
            });
            let inner = our_element(w, claimed);
            let x = format!(
                "<metadata>\n{}{}\n</metadata>",
                w.unit,
                inner.replace('\n', &format!("\n{}", w.unit))
            );
            let x = if w.nl.is_empty() { x.replace('\n', "") } else { x };
            w.append(root, "", x, String::new());
            w.flush_groups();
        }
    }
}

fn our_element(w: &Writer<'_, '_>, claimed: &[ClaimedRegion]) -> String {
    let applied = render_applied("hbm", claimed, &w.undo, w.q);
    let applied = applied.replace("\n  ", &format!("\n{}", w.unit));
    let body = format!(
        "<hbm:{}{}>\n{}{}\n</hbm:{}>",
        metadata::ELEMENT,
        w.attr("xmlns:hbm", NAMESPACE),
        w.unit,
        applied.replace('\n', &format!("\n{}", w.unit)),
        metadata::ELEMENT
    );
    if w.nl.is_empty() { body.replace('\n', "") } else { body }
}
