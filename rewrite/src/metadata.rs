//! The project's element under the domain's `<metadata>`: the HBM policy (mode, dialect, size
//! cap, per-GPU overrides) and the record of what the rewriter added, so a later run can remove
//! its own additions before applying again.
//!
//! ```xml
//! <metadata>
//!   <hbm:passthrough xmlns:hbm="https://hbm-passthrough.dev/xmlns/domain/1" mode="auto" dialect="kernel-cmdline" size-cap="64GiB">
//!     <hbm:gpu address="0000:c1:00.0" mode="required" dialect="none" size-cap="16GiB" regions="0000:c1:00.0/node2"/>
//!     <hbm:applied>
//!       <hbm:region id="0000:c1:00.0/node2" gpu="0000:c1:00.0" host-node="2" size="68719476736" cell="1"/>
//!       <hbm:undo op="remove" at="cpu/numa/cell[id=1]"/>
//!       <hbm:undo op="restore" at="memory" raw="&lt;memory unit='KiB'&gt;1048576&lt;/memory&gt;"/>
//!     </hbm:applied>
//!   </hbm:passthrough>
//! </metadata>
//! ```

use topology::PciAddress;

use super::document::{Document, escape_attr};
use super::size::parse_size;
use super::{Dialect, PolicyMode, RewriteError};

/// The project's XML namespace for domain metadata.
pub const NAMESPACE: &str = "https://hbm-passthrough.dev/xmlns/domain/1";
/// Local name of the project's metadata element.
pub const ELEMENT: &str = "passthrough";

/// Per-GPU policy override.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuPolicy {
    pub address: PciAddress,
    pub mode: Option<PolicyMode>,
    pub dialect: Option<Dialect>,
    pub size_cap_bytes: Option<u64>,
    /// Region ids this GPU may use; `None` = all of its regions.
    pub regions: Option<Vec<String>>,
}

/// A region the rewriter gave the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedRegion {
    pub id: String,
    pub gpu: PciAddress,
    pub host_node: Option<u32>,
    pub dax: Option<String>,
    /// Size of the guest cell (after the size cap), in bytes.
    pub size_bytes: u64,
    pub guest_cell: u32,
}

/// One step that undoes an addition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UndoOp {
    /// Remove the element at `at` (with the whitespace before it); when `previous` is set, also
    /// the element right before it if that is a `qemu:arg` with that value.
    Remove { at: String, previous: Option<String> },
    /// Put back the element at `at` as it was written.
    Restore { at: String, raw: String },
    /// Remove attribute `name` from the root element.
    RemoveRootAttr { name: String },
    /// Remove the text `text` the rewriter appended to the element at `at` (its last
    /// occurrence), keeping whatever else was written there since.
    StripText { at: String, text: String },
    /// The element at `at` had no children before the rewriter added some: once they are all
    /// removed, end it with `tail` again (`/>` or `></x>`), whatever its start tag says now.
    Collapse { at: String, tail: String },
}

/// What the domain's metadata says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HbmMetadata {
    pub mode: Option<PolicyMode>,
    pub dialect: Option<Dialect>,
    pub size_cap_bytes: Option<u64>,
    pub gpus: Vec<GpuPolicy>,
    /// Regions claimed by the last rewrite (empty when never rewritten).
    pub claimed: Vec<ClaimedRegion>,
    /// Whether an `hbm:applied` record is present.
    pub applied: bool,
    pub undo: Vec<UndoOp>,
}

impl HbmMetadata {
    /// The override for `gpu`, if any.
    pub fn gpu(&self, gpu: PciAddress) -> Option<&GpuPolicy> {
        self.gpus.iter().find(|g| g.address == gpu)
    }
}

/// Reads the project's metadata element from a domain definition.
pub fn read_metadata(xml: &str) -> Result<Option<HbmMetadata>, RewriteError> {
    let doc = Document::parse(xml)?;
    Ok(find(&doc)?.map(|(_, m)| m))
}

/// The `hbm:passthrough` element under `<metadata>`, if any.
pub(crate) fn element(doc: &Document<'_>) -> Option<usize> {
    let metadata = doc.child(doc.root, "metadata")?;
    doc.children(metadata).find(|c| is_ours(doc, *c))
}

fn is_ours(doc: &Document<'_>, idx: usize) -> bool {
    if doc.local_name(idx) != ELEMENT {
        return false;
    }
    let name = doc.name(idx);
    let prefix = name.split_once(':').map_or("", |(p, _)| p);
    if !prefix.is_empty() && !super::libvirt::is_xml_name(prefix) {
        return false;
    }
    let wanted = if prefix.is_empty() {
        "xmlns".to_string()
    } else {
        format!("xmlns:{prefix}")
    };
    doc.attrs(idx)
        .iter()
        .any(|a| a.name == wanted && a.value() == NAMESPACE)
}

/// Child of our element with local name `local`.
pub(crate) fn child(doc: &Document<'_>, ours: usize, local: &str) -> Option<usize> {
    let prefix = doc.name(ours).split_once(':').map(|(p, _)| p);
    doc.children(ours).find(|c| {
        let n = doc.name(*c);
        let (p, l) = n.split_once(':').map_or((None, n), |(p, l)| (Some(p), l));
        p == prefix && l == local
    })
}

fn bad(doc: &Document<'_>, idx: usize, reason: String) -> RewriteError {
    RewriteError::Invalid {
        line: doc.line(idx),
        element: doc.name(idx).to_string(),
        reason,
    }
}

pub(crate) fn find(doc: &Document<'_>) -> Result<Option<(usize, HbmMetadata)>, RewriteError> {
    let Some(ours) = element(doc) else { return Ok(None) };
    let mut meta = HbmMetadata {
        mode: parse_attr(doc, ours, "mode", |s| s.parse::<PolicyMode>())?,
        dialect: parse_attr(doc, ours, "dialect", |s| s.parse::<Dialect>())?,
        size_cap_bytes: parse_attr(doc, ours, "size-cap", parse_size)?,
        ..HbmMetadata::default()
    };
    let prefix = doc.name(ours).split_once(':').map(|(p, _)| p);
    let local_of = |c: usize| {
        let n = doc.name(c);
        match n.split_once(':') {
            Some((p, l)) if Some(p) == prefix => Some(l),
            None if prefix.is_none() => Some(n),
            _ => None,
        }
    };
    for c in doc.children(ours) {
        match local_of(c) {
            Some("gpu") => {
                let address = required(doc, c, "address", |s| PciAddress::parse(s).map_err(|e| e.to_string()))?;
                if meta.gpus.iter().any(|g| g.address == address) {
                    return Err(bad(
                        doc,
                        c,
                        format!("GPU {address} listed twice; keep one hbm:gpu per GPU"),
                    ));
                }
                meta.gpus.push(GpuPolicy {
                    address,
                    mode: parse_attr(doc, c, "mode", |s| s.parse::<PolicyMode>())?,
                    dialect: parse_attr(doc, c, "dialect", |s| s.parse::<Dialect>())?,
                    size_cap_bytes: parse_attr(doc, c, "size-cap", parse_size)?,
                    regions: doc.attr(c, "regions").map(|r| {
                        r.split([' ', ','])
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    }),
                });
            }
            Some("applied") => {
                meta.applied = true;
                for r in doc.children(c) {
                    match local_of(r) {
                        Some("region") => meta.claimed.push(ClaimedRegion {
                            id: required(doc, r, "id", |s| Ok::<_, String>(s.to_string()))?,
                            gpu: required(doc, r, "gpu", |s| PciAddress::parse(s).map_err(|e| e.to_string()))?,
                            host_node: parse_attr(doc, r, "host-node", |s| {
                                s.parse::<u32>().map_err(|e| e.to_string())
                            })?,
                            dax: doc.attr(r, "dax").map(|s| s.into_owned()),
                            size_bytes: required(doc, r, "size", |s| s.parse::<u64>().map_err(|e| e.to_string()))?,
                            guest_cell: required(doc, r, "cell", |s| s.parse::<u32>().map_err(|e| e.to_string()))?,
                        }),
                        Some("undo") => {
                            let op = required(doc, r, "op", |s| Ok::<_, String>(s.to_string()))?;
                            meta.undo.push(match op.as_str() {
                                "remove" => UndoOp::Remove {
                                    at: required(doc, r, "at", |s| Ok::<_, String>(s.to_string()))?,
                                    previous: doc.attr(r, "previous").map(|s| s.into_owned()),
                                },
                                "restore" => UndoOp::Restore {
                                    at: required(doc, r, "at", |s| Ok::<_, String>(s.to_string()))?,
                                    raw: required(doc, r, "raw", |s| Ok::<_, String>(s.to_string()))?,
                                },
                                "remove-root-attr" => UndoOp::RemoveRootAttr {
                                    name: required(doc, r, "name", |s| Ok::<_, String>(s.to_string()))?,
                                },
                                "collapse" => UndoOp::Collapse {
                                    at: required(doc, r, "at", |s| Ok::<_, String>(s.to_string()))?,
                                    tail: required(doc, r, "tail", |s| Ok::<_, String>(s.to_string()))?,
                                },
                                "strip-text" => UndoOp::StripText {
                                    at: required(doc, r, "at", |s| Ok::<_, String>(s.to_string()))?,
                                    text: required(doc, r, "text", |s| Ok::<_, String>(s.to_string()))?,
                                },
                                other => return Err(bad(doc, r, format!("unknown undo op {other:?}"))),
                            });
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(Some((ours, meta)))
}

fn parse_attr<T, E: std::fmt::Display>(
    doc: &Document<'_>,
    idx: usize,
    name: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Option<T>, RewriteError> {
    match doc.attr(idx, name) {
        None => Ok(None),
        Some(v) => parse(&v)
            .map(Some)
            .map_err(|e| bad(doc, idx, format!("attribute {name}: {e}"))),
    }
}

fn required<T, E: std::fmt::Display>(
    doc: &Document<'_>,
    idx: usize,
    name: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<T, RewriteError> {
    parse_attr(doc, idx, name, parse)?.ok_or_else(|| bad(doc, idx, format!("missing attribute {name}")))
}

/// Renders the `applied` record (one line per entry; `\n` marks where indentation goes).
pub(crate) fn render_applied(prefix: &str, claimed: &[ClaimedRegion], undo: &[UndoOp], q: char) -> String {
    let p = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}:")
    };
    let a = |v: &str| escape_attr(v, q);
    let mut s = format!("<{p}applied>");
    for r in claimed {
        s.push_str(&format!("\n  <{p}region id={q}{}{q} gpu={q}{}{q}", a(&r.id), r.gpu));
        if let Some(n) = r.host_node {
            s.push_str(&format!(" host-node={q}{n}{q}"));
        }
        if let Some(d) = &r.dax {
            s.push_str(&format!(" dax={q}{}{q}", a(d)));
        }
        s.push_str(&format!(" size={q}{}{q} cell={q}{}{q}/>", r.size_bytes, r.guest_cell));
    }
    for op in undo {
        match op {
            UndoOp::Remove { at, previous } => {
                s.push_str(&format!("\n  <{p}undo op={q}remove{q} at={q}{}{q}", a(at)));
                if let Some(prev) = previous {
                    s.push_str(&format!(" previous={q}{}{q}", a(prev)));
                }
                s.push_str("/>");
            }
            UndoOp::Restore { at, raw } => {
                s.push_str(&format!(
                    "\n  <{p}undo op={q}restore{q} at={q}{}{q} raw={q}{}{q}/>",
                    a(at),
                    a(raw)
                ));
            }
            UndoOp::RemoveRootAttr { name } => {
                s.push_str(&format!(
                    "\n  <{p}undo op={q}remove-root-attr{q} name={q}{}{q}/>",
                    a(name)
                ));
            }
            UndoOp::Collapse { at, tail } => {
                s.push_str(&format!(
                    "\n  <{p}undo op={q}collapse{q} at={q}{}{q} tail={q}{}{q}/>",
                    a(at),
                    a(tail)
                ));
            }
            UndoOp::StripText { at, text } => {
                s.push_str(&format!(
                    "\n  <{p}undo op={q}strip-text{q} at={q}{}{q} text={q}{}{q}/>",
                    a(at),
                    a(text)
                ));
            }
        }
    }
    s.push_str(&format!("\n</{p}applied>"));
    s
}
