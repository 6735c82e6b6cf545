//! The project's element under the domain's `<metadata>`: the HBM policy (mode, dialect, size
//! cap, per-GPU overrides) and the record of what the rewriter added, so a later run can remove
//! its own additions before applying again.
//!
//! ```xml
//! <metadata>
//!   <hbm:passthrough xmlns:hbm="https://hbm-passthrough.dev/xmlns/domain/1" mode="auto" dialect="kernel-cmdline" size-cap="64GiB">
//!     <hbm:gpu address="0000:c1:00.0" mode="required" dialect="none" size-cap="16GiB" regions="0000:c1:00.0/node2"/>
//!     <hbm:applied>
//!       <hbm:region id="0000:c1:00.0/node2" gpu="0000:c1:00.0" host-node="2" size="68719476736" cell="1" dialect="none"/>
//!       <hbm:undo op="remove" at="cpu/numa/cell[id=1]"/>
//!       <hbm:undo op="restore" at="memory" raw="&lt;memory unit='KiB'&gt;1048576&lt;/memory&gt;"/>
//!     </hbm:applied>
//!   </hbm:passthrough>
//! </metadata>
//! ```

use std::borrow::Cow;

use topology::PciAddress;

use super::document::{Document, push_escaped_attr};
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
    /// The dialect the cell was marked in (`auto` resolved); absent in records of older
    /// versions.
    pub dialect: Option<Dialect>,
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

/// Where one `undo` entry of the record is, and the digest it carries (see `proof.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordEntry {
    /// FNV-1a 64 of what the addition wrote; `None` in records written before digests.
    pub digest: Option<u64>,
    /// Line of the entry's element.
    pub line: usize,
    /// The entry's element name as written (`hbm:undo`).
    pub element: String,
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
    /// One per `undo` op, in the same order: where it is written and its digest.
    pub entries: Vec<RecordEntry>,
}

impl HbmMetadata {
    /// The override for `gpu`, if any.
    pub fn gpu(&self, gpu: PciAddress) -> Option<&GpuPolicy> {
        self.gpus.iter().find(|policy| policy.address == gpu)
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
    doc.children(metadata).find(|child| is_ours(doc, *child))
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
        .any(|attr| attr.name == wanted && attr.value() == NAMESPACE)
}

/// Child of our element with local name `local`.
pub(crate) fn child(doc: &Document<'_>, ours: usize, local: &str) -> Option<usize> {
    let prefix = doc.name(ours).split_once(':').map(|(own, _)| own);
    doc.children(ours).find(|candidate| {
        let name = doc.name(*candidate);
        let (own, candidate_local) = name
            .split_once(':')
            .map_or((None, name), |(own, rest)| (Some(own), rest));
        own == prefix && candidate_local == local
    })
}

fn bad(doc: &Document<'_>, idx: usize, reason: String) -> RewriteError {
    RewriteError::Invalid {
        line: doc.line(idx),
        element: doc.name(idx).to_string(),
        reason,
    }
}

/// Our element's policy and record, with its element index; `None` when the domain has none.
pub(crate) fn find(doc: &Document<'_>) -> Result<Option<(usize, HbmMetadata)>, RewriteError> {
    let Some(ours) = element(doc) else { return Ok(None) };
    let mut meta = HbmMetadata {
        mode: parse_attr(doc, ours, "mode", |text| text.parse::<PolicyMode>())?,
        dialect: parse_attr(doc, ours, "dialect", |text| text.parse::<Dialect>())?,
        size_cap_bytes: parse_attr(doc, ours, "size-cap", parse_size)?,
        ..HbmMetadata::default()
    };
    refuse_a_second_element(doc, ours)?;
    for child in doc.children(ours) {
        match local_name_in(doc, ours, child) {
            Some("gpu") => {
                let gpu = read_gpu(doc, child, &meta.gpus)?;
                meta.gpus.push(gpu);
            }
            Some("applied") if meta.applied => {
                return Err(bad(
                    doc,
                    child,
                    "a second record of an earlier rewrite; keep one (or remove both and the additions they list)"
                        .into(),
                ));
            }
            Some("applied") => {
                meta.applied = true;
                read_applied(doc, ours, child, &mut meta)?;
            }
            _ => {}
        }
    }
    Ok(Some((ours, meta)))
}

/// Refuses a second project element under `<metadata>` (only the first would be read).
fn refuse_a_second_element(doc: &Document<'_>, ours: usize) -> Result<(), RewriteError> {
    let Some(metadata) = doc.elements[ours].parent else {
        return Ok(());
    };
    match doc
        .children(metadata)
        .find(|other| *other != ours && is_ours(doc, *other))
    {
        Some(second) => Err(bad(
            doc,
            second,
            format!(
                "a second {ELEMENT} element of the project's namespace; merge it into the first (line {})",
                doc.line(ours)
            ),
        )),
        None => Ok(()),
    }
}

/// The local name of `idx` when it has the prefix of our element `ours` (none if ours has none).
fn local_name_in<'a>(doc: &Document<'a>, ours: usize, idx: usize) -> Option<&'a str> {
    let prefix = doc.name(ours).split_once(':').map(|(prefix, _)| prefix);
    let name = doc.name(idx);
    match name.split_once(':') {
        Some((own, local)) if Some(own) == prefix => Some(local),
        None if prefix.is_none() => Some(name),
        _ => None,
    }
}

/// One `hbm:gpu` override; a GPU already in `known` is refused.
fn read_gpu(doc: &Document<'_>, gpu: usize, known: &[GpuPolicy]) -> Result<GpuPolicy, RewriteError> {
    let address = required(doc, gpu, "address", parse_pci)?;
    if known.iter().any(|other| other.address == address) {
        return Err(bad(
            doc,
            gpu,
            format!("GPU {address} listed twice; keep one hbm:gpu per GPU"),
        ));
    }
    Ok(GpuPolicy {
        address,
        mode: parse_attr(doc, gpu, "mode", |text| text.parse::<PolicyMode>())?,
        dialect: parse_attr(doc, gpu, "dialect", |text| text.parse::<Dialect>())?,
        size_cap_bytes: parse_attr(doc, gpu, "size-cap", parse_size)?,
        regions: doc.attr(gpu, "regions").map(|regions| {
            regions
                .split([' ', ','])
                .filter(|id| !id.is_empty())
                .map(str::to_string)
                .collect()
        }),
    })
}

/// The `hbm:region`s and `hbm:undo`s of the `hbm:applied` record.
fn read_applied(doc: &Document<'_>, ours: usize, applied: usize, meta: &mut HbmMetadata) -> Result<(), RewriteError> {
    // Entries come in document order: each line is counted on from the one before.
    let (mut counted_to, mut line) = (doc.elements[applied].start, doc.line(applied));
    for entry in doc.children(applied) {
        match local_name_in(doc, ours, entry) {
            Some("region") => meta.claimed.push(read_region(doc, entry)?),
            Some("undo") => {
                meta.undo.push(read_undo(doc, entry)?);
                let start = doc.elements[entry].start;
                line += doc.src.as_bytes()[counted_to..start]
                    .iter()
                    .filter(|byte| **byte == b'\n')
                    .count();
                counted_to = start;
                meta.entries.push(RecordEntry {
                    digest: parse_attr(doc, entry, "digest", parse_digest)?,
                    line,
                    element: doc.name(entry).to_string(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

fn parse_pci(text: &str) -> Result<PciAddress, String> {
    PciAddress::parse(text).map_err(|err| err.to_string())
}

/// A digest: 16 hexadecimal digits.
fn parse_digest(text: &str) -> Result<u64, String> {
    if text.len() != 16 {
        return Err(format!("{text:?} is not 16 hexadecimal digits"));
    }
    u64::from_str_radix(text, 16).map_err(|_| format!("{text:?} is not 16 hexadecimal digits"))
}

fn parse_text(text: &str) -> Result<String, String> {
    Ok(text.to_string())
}

fn parse_number<T: std::str::FromStr<Err = std::num::ParseIntError>>(text: &str) -> Result<T, String> {
    text.parse::<T>().map_err(|err| err.to_string())
}

/// One `hbm:region` of the record.
fn read_region(doc: &Document<'_>, region: usize) -> Result<ClaimedRegion, RewriteError> {
    Ok(ClaimedRegion {
        id: required(doc, region, "id", parse_text)?,
        gpu: required(doc, region, "gpu", parse_pci)?,
        host_node: parse_attr(doc, region, "host-node", parse_number::<u32>)?,
        dax: doc.attr(region, "dax").map(|dax| dax.into_owned()),
        size_bytes: required(doc, region, "size", parse_number::<u64>)?,
        guest_cell: required(doc, region, "cell", parse_number::<u32>)?,
        dialect: parse_attr(doc, region, "dialect", |text| text.parse::<Dialect>())?,
    })
}

/// One `hbm:undo` of the record.
fn read_undo(doc: &Document<'_>, undo: usize) -> Result<UndoOp, RewriteError> {
    let text = |name: &str| required(doc, undo, name, parse_text);
    let op = text("op")?;
    Ok(match op.as_str() {
        "remove" => UndoOp::Remove {
            at: text("at")?,
            previous: doc.attr(undo, "previous").map(|previous| previous.into_owned()),
        },
        "restore" => UndoOp::Restore {
            at: text("at")?,
            raw: text("raw")?,
        },
        "remove-root-attr" => UndoOp::RemoveRootAttr { name: text("name")? },
        "collapse" => UndoOp::Collapse {
            at: text("at")?,
            tail: text("tail")?,
        },
        "strip-text" => UndoOp::StripText {
            at: text("at")?,
            text: text("text")?,
        },
        other => return Err(bad(doc, undo, format!("unknown undo op {other:?}"))),
    })
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
            .map_err(|err| bad(doc, idx, format!("attribute {name}: {err}"))),
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

/// Renders the `applied` record (one line per entry; `\n` marks where indentation goes);
/// `digests[i]`, when there, is written on the entry of `undo[i]`.
pub(crate) fn render_applied(
    prefix: &str,
    claimed: &[ClaimedRegion],
    undo: &[UndoOp],
    digests: &[Option<u64>],
    quote: char,
) -> String {
    let qualifier = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}:")
    };
    let mut out = String::with_capacity(256 + 160 * (claimed.len() + undo.len()));
    out.push('<');
    out.push_str(&qualifier);
    out.push_str("applied>");
    for region in claimed {
        push_entry(&mut out, &qualifier, "region", &region_attrs(region), quote);
    }
    for (position, op) in undo.iter().enumerate() {
        let digest = digests.get(position).copied().flatten();
        push_entry(&mut out, &qualifier, "undo", &undo_attrs(op, digest), quote);
    }
    out.push_str("\n</");
    out.push_str(&qualifier);
    out.push_str("applied>");
    out
}

/// `\n  <{qualifier}{name} name='value'.../>` onto the end of `out`, values escaped for `quote`.
fn push_entry(out: &mut String, qualifier: &str, name: &str, pairs: &[(&str, Cow<'_, str>)], quote: char) {
    out.push_str("\n  <");
    out.push_str(qualifier);
    out.push_str(name);
    for (attr_name, value) in pairs {
        out.push(' ');
        out.push_str(attr_name);
        out.push('=');
        out.push(quote);
        push_escaped_attr(out, value, quote);
        out.push(quote);
    }
    out.push_str("/>");
}

/// The attributes of one `region` entry.
fn region_attrs(region: &ClaimedRegion) -> Vec<(&'static str, Cow<'_, str>)> {
    let mut pairs = vec![
        ("id", Cow::Borrowed(region.id.as_str())),
        ("gpu", Cow::Owned(region.gpu.to_string())),
    ];
    if let Some(node) = region.host_node {
        pairs.push(("host-node", Cow::Owned(node.to_string())));
    }
    if let Some(dax) = &region.dax {
        pairs.push(("dax", Cow::Borrowed(dax.as_str())));
    }
    pairs.push(("size", Cow::Owned(region.size_bytes.to_string())));
    pairs.push(("cell", Cow::Owned(region.guest_cell.to_string())));
    if let Some(dialect) = region.dialect {
        pairs.push(("dialect", Cow::Borrowed(dialect.as_str())));
    }
    pairs
}

/// The attributes of one `undo` entry.
fn undo_attrs(op: &UndoOp, digest: Option<u64>) -> Vec<(&'static str, Cow<'_, str>)> {
    let borrowed: Vec<(&'static str, &str)> = match op {
        UndoOp::Remove { at, previous } => {
            let mut pairs = vec![("op", "remove"), ("at", at.as_str())];
            pairs.extend(previous.as_deref().map(|previous| ("previous", previous)));
            pairs
        }
        UndoOp::Restore { at, raw } => vec![("op", "restore"), ("at", at), ("raw", raw)],
        UndoOp::RemoveRootAttr { name } => vec![("op", "remove-root-attr"), ("name", name)],
        UndoOp::Collapse { at, tail } => vec![("op", "collapse"), ("at", at), ("tail", tail)],
        UndoOp::StripText { at, text } => vec![("op", "strip-text"), ("at", at), ("text", text)],
    };
    let mut pairs: Vec<(&'static str, Cow<'_, str>)> = borrowed
        .into_iter()
        .map(|(name, value)| (name, Cow::Borrowed(value)))
        .collect();
    pairs.extend(digest.map(|digest| ("digest", Cow::Owned(format!("{digest:016x}")))));
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPU: PciAddress = PciAddress::new(0, 0xc1, 0, 0);

    fn every_undo_op() -> Vec<UndoOp> {
        vec![
            UndoOp::Remove {
                at: "qemu:commandline/qemu:arg[value=a,b]".into(),
                previous: Some("-object".into()),
            },
            UndoOp::Remove {
                at: "cpu/numa/cell[id=1]".into(),
                previous: None,
            },
            UndoOp::Restore {
                at: "memory".into(),
                raw: "<memory unit='KiB'>1</memory>".into(),
            },
            UndoOp::RemoveRootAttr {
                name: "xmlns:qemu".into(),
            },
            UndoOp::StripText {
                at: "os/cmdline".into(),
                text: " memmap=1G%4G-1+0xefffffff & \"x\"".into(),
            },
            UndoOp::Collapse {
                at: "cpu".into(),
                tail: "/>".into(),
            },
        ]
    }

    fn claimed() -> Vec<ClaimedRegion> {
        vec![
            ClaimedRegion {
                id: "0000:c1:00.0/node2".into(),
                gpu: GPU,
                host_node: Some(2),
                dax: None,
                size_bytes: 1 << 30,
                guest_cell: 1,
                dialect: None,
            },
            ClaimedRegion {
                id: "0000:c1:00.0/dax1.0".into(),
                gpu: GPU,
                host_node: None,
                dax: Some("/dev/dax1.0".into()),
                size_bytes: 2 << 30,
                guest_cell: 2,
                dialect: Some(Dialect::SpMem),
            },
        ]
    }

    fn wrapped(body: &str) -> String {
        format!(
            "<domain><metadata><hbm:passthrough xmlns:hbm='{NAMESPACE}'>{body}</hbm:passthrough></metadata></domain>"
        )
    }

    #[test]
    fn record_entries_carry_their_own_lines() {
        let xml = format!(
            "<domain>\n<metadata>\n<hbm:passthrough xmlns:hbm='{NAMESPACE}'>\n<hbm:applied>\n<hbm:undo op='remove' at='cpu'/>\n\n<hbm:region id='r' gpu='0000:c1:00.0' size='1' cell='1'/>\n<hbm:undo op='remove' at='numatune'/><hbm:undo op='remove' at='features'/>\n</hbm:applied>\n</hbm:passthrough>\n</metadata>\n</domain>"
        );
        let doc = Document::parse(&xml).unwrap();
        let (_, meta) = find(&doc).unwrap().unwrap();
        let lines: Vec<usize> = meta.entries.iter().map(|entry| entry.line).collect();
        assert_eq!(lines, [5, 8, 8]);
    }

    #[test]
    fn the_record_reads_back_as_written_in_either_quote() {
        for quote in ['\'', '"'] {
            let applied = render_applied("hbm", &claimed(), &every_undo_op(), &[None, Some(0xab)], quote);
            let meta = read_metadata(&wrapped(&applied)).unwrap().unwrap();
            assert!(meta.applied);
            assert_eq!(meta.claimed, claimed());
            assert_eq!(meta.undo, every_undo_op());
            let digests: Vec<Option<u64>> = meta.entries.iter().map(|entry| entry.digest).collect();
            assert_eq!(digests, [None, Some(0xab), None, None, None, None]);
        }
    }

    #[test]
    fn the_record_is_one_entry_per_line() {
        let applied = render_applied("p", &claimed()[..1], &every_undo_op()[3..4], &[], '\'');
        assert_eq!(
            applied,
            "<p:applied>\n  <p:region id='0000:c1:00.0/node2' gpu='0000:c1:00.0' host-node='2' size='1073741824' cell='1'/>\n  <p:undo op='remove-root-attr' name='xmlns:qemu'/>\n</p:applied>"
        );
        assert_eq!(render_applied("", &[], &[], &[], '"'), "<applied>\n</applied>");
    }

    #[test]
    fn policy_and_gpu_overrides_are_read() {
        let xml = format!(
            "<domain><metadata><x:passthrough xmlns:x='{NAMESPACE}' mode='required' dialect='sp-mem' size-cap='16GiB'><x:gpu address='0000:c1:00.0' mode='off' regions='a, b'/><gpu address='0000:41:00.0'/></x:passthrough></metadata></domain>"
        );
        let meta = read_metadata(&xml).unwrap().unwrap();
        assert_eq!(
            meta,
            HbmMetadata {
                mode: Some(PolicyMode::Required),
                dialect: Some(Dialect::SpMem),
                size_cap_bytes: Some(16 << 30),
                gpus: vec![GpuPolicy {
                    address: GPU,
                    mode: Some(PolicyMode::Off),
                    dialect: None,
                    size_cap_bytes: None,
                    regions: Some(vec!["a".into(), "b".into()]),
                }],
                ..HbmMetadata::default()
            }
        );
        assert_eq!(meta.gpu(GPU).map(|gpu| gpu.mode), Some(Some(PolicyMode::Off)));
    }

    #[test]
    fn elements_of_other_namespaces_are_not_ours() {
        assert_eq!(
            read_metadata("<domain><metadata><hbm:passthrough xmlns:hbm='urn:other'/></metadata></domain>"),
            Ok(None)
        );
        assert_eq!(read_metadata("<domain/>"), Ok(None));
    }

    #[test]
    fn bad_metadata_names_the_element_and_attribute() {
        let twice = wrapped("<hbm:gpu address='0000:c1:00.0'/><hbm:gpu address='0000:c1:00.0' mode='bad'/>");
        assert!(
            read_metadata(&twice)
                .unwrap_err()
                .to_string()
                .contains("GPU 0000:c1:00.0 listed twice")
        );
        let unknown = wrapped("<hbm:applied><hbm:undo op='explode'/></hbm:applied>");
        assert!(
            read_metadata(&unknown)
                .unwrap_err()
                .to_string()
                .contains("unknown undo op \"explode\"")
        );
        let missing = wrapped("<hbm:applied><hbm:region id='r' gpu='0000:c1:00.0' cell='1'/></hbm:applied>");
        assert!(
            read_metadata(&missing)
                .unwrap_err()
                .to_string()
                .contains("missing attribute size")
        );
        let mode = format!(
            "<domain><metadata><hbm:passthrough xmlns:hbm='{NAMESPACE}' mode='sometimes'/></metadata></domain>"
        );
        assert_eq!(
            read_metadata(&mode),
            Err(RewriteError::Invalid {
                line: 1,
                element: "hbm:passthrough".into(),
                reason: "attribute mode: unknown policy \"sometimes\" (expected off, auto or required)".into()
            })
        );
    }
}
