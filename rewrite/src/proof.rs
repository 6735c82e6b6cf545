//! What an `hbm:applied` record proves. Before an earlier rewrite's additions are taken back,
//! every entry of its record is checked against the document; an entry the document does not
//! bear out refuses the rewrite (exit 2, naming the entry) instead of removing or splicing
//! whatever the entry names.
//!
//! - `remove`: the element must be of a kind the rewriter adds ([`ADDED`]), hold only such
//!   elements, and (a controller) be a `pcie-expander-bus` or `pcie-root-port`; with a
//!   `digest`, the element's start tag must have the recorded digest.
//! - `restore`: the element must be of a kind the rewriter changes in place ([`CHANGED`]) and
//!   `raw` exactly one element of the same name (what it was before: it may hold whatever the
//!   user had written inside, but nothing beside it).
//! - `remove-root-attr`: only an `xmlns:` declaration; with a `digest`, its `name=value` must
//!   have the recorded digest.
//! - `collapse`: the tail is `/>` or the element's own end tag after text without markup.
//! - `strip-text`: only `memmap=` fragments.
//!
//! A digest is FNV-1a 64 (hex) of the start tag's canonical form: the qualified name and each
//! attribute as `name=value` (unescaped), in order. That is what libvirt keeps when it writes a
//! definition back (it re-quotes, re-indents and fills in children such as `<alias>` and
//! `<model>`), so a definition that went through libvirt (`virsh dumpxml`, an incoming
//! migration) still undoes. A record without any digest (written by a release before digests)
//! is undone under the shape rules alone.

use crate::RewriteError;
use crate::document::Document;
use crate::metadata::{HbmMetadata, RecordEntry, UndoOp};
use crate::undo::resolve;

/// Local names of the elements the rewriter adds: what a `remove` entry may take away.
const ADDED: &[&str] = &[
    "cpu",
    "numa",
    "cell",
    "numatune",
    "memnode",
    "features",
    "acpi",
    "controller",
    "target",
    "node",
    "address",
    "alias",
    "commandline",
    "arg",
    "env",
    "emulator",
    "cmdline",
    "metadata",
    "passthrough",
];

/// Local names that may also sit inside an added element: what libvirt fills in, and the
/// project's own policy and record inside its element.
const INSIDE_ADDED: &[&str] = &["model", "gpu", "applied", "region", "undo"];

/// Local names of the elements the rewriter changes in place: what a `restore` entry may put
/// back.
const CHANGED: &[&str] = &[
    "memory",
    "currentMemory",
    "emulator",
    "cmdline",
    "node",
    "address",
    "alias",
    "acpi",
    "env",
];

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, 64 bits.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_on(FNV_OFFSET, bytes)
}

/// FNV-1a of `hash`'s input followed by `bytes` (hashing pieces in turn hashes their
/// concatenation).
fn fnv1a_on(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The canonical form of element `idx`'s start tag: name, then `\n name=value` per attribute.
#[cfg(test)]
fn start_tag_form(doc: &Document<'_>, idx: usize) -> String {
    let mut form = doc.name(idx).to_string();
    for attr in doc.attrs(idx) {
        form.push_str(&format!("\n{}={}", attr.name, attr.value()));
    }
    form
}

/// FNV-1a of the canonical form of element `idx`'s start tag, hashed piece by piece.
fn start_tag_digest(doc: &Document<'_>, idx: usize) -> u64 {
    doc.attr_iter(idx).fold(fnv1a(doc.name(idx).as_bytes()), |hash, attr| {
        let hash = fnv1a_on(hash, b"\n");
        let hash = fnv1a_on(hash, attr.name.as_bytes());
        let hash = fnv1a_on(hash, b"=");
        fnv1a_on(hash, attr.value().as_bytes())
    })
}

/// The digest a record entry carries for `op` in `doc`: `None` for ops without one, or when the
/// element or attribute is not there.
pub(crate) fn digest_of(doc: &Document<'_>, op: &UndoOp) -> Option<u64> {
    match op {
        UndoOp::Remove { at, .. } => resolve(doc, at, true).map(|idx| start_tag_digest(doc, idx)),
        UndoOp::RemoveRootAttr { name } => doc
            .attr_iter(doc.root)
            .find(|attr| attr.name == name)
            .map(|attr| attr_digest(attr.name, &attr.value())),
        _ => None,
    }
}

/// The digest of an attribute `name=value` (value unescaped), as a `remove-root-attr` carries.
pub(crate) fn attr_digest(name: &str, value: &str) -> u64 {
    fnv1a_on(fnv1a_on(fnv1a(name.as_bytes()), b"="), value.as_bytes())
}

/// The digest of the start tag of the element `xml` (an addition as the rewriter writes it),
/// read without the rest of the definition; `None` when it does not parse on its own.
pub(crate) fn written_digest(xml: &str) -> Option<u64> {
    let doc = Document::parse(xml).ok()?;
    Some(start_tag_digest(&doc, doc.root))
}

/// Refuses a record one of whose entries the document does not bear out.
pub(crate) fn check(doc: &Document<'_>, meta: &HbmMetadata) -> Result<(), RewriteError> {
    let with_digests = meta.entries.iter().any(|entry| entry.digest.is_some());
    for (position, (op, entry)) in meta.undo.iter().zip(&meta.entries).enumerate() {
        check_entry(doc, op, entry.digest, with_digests).map_err(|why| refused(position + 1, op, entry, &why))?;
    }
    Ok(())
}

/// The error for record entry number `number`.
fn refused(number: usize, op: &UndoOp, entry: &RecordEntry, why: &str) -> RewriteError {
    RewriteError::Invalid {
        line: entry.line,
        element: entry.element.clone(),
        reason: format!(
            "record entry {number} ({}): {why}; the record does not prove the earlier rewrite made this change: remove the hbm:applied record and the additions it lists by hand, then rewrite again",
            describe(op)
        ),
    }
}

/// `op=remove at=...` for an error message.
fn describe(op: &UndoOp) -> String {
    match op {
        UndoOp::Remove { at, .. } => format!("op=remove at={at}"),
        UndoOp::Restore { at, .. } => format!("op=restore at={at}"),
        UndoOp::RemoveRootAttr { name } => format!("op=remove-root-attr name={name}"),
        UndoOp::Collapse { at, .. } => format!("op=collapse at={at}"),
        UndoOp::StripText { at, .. } => format!("op=strip-text at={at}"),
    }
}

/// Checks one entry (an element that is not there any more proves nothing and changes nothing).
fn check_entry(doc: &Document<'_>, op: &UndoOp, digest: Option<u64>, with_digests: bool) -> Result<(), String> {
    match op {
        UndoOp::Remove { at, .. } => match resolve(doc, at, true) {
            Some(idx) => {
                check_added(doc, idx)?;
                check_digest(doc, op, digest, with_digests)
            }
            None => Ok(()),
        },
        UndoOp::RemoveRootAttr { name } => {
            if !name.starts_with("xmlns:") {
                return Err(format!("{name} is not a namespace declaration the rewriter adds"));
            }
            check_digest(doc, op, digest, with_digests)
        }
        UndoOp::Restore { at, raw } => resolve(doc, at, false).map_or(Ok(()), |idx| check_restore(doc, idx, raw)),
        UndoOp::Collapse { at, tail } => resolve(doc, at, false).map_or(Ok(()), |idx| check_tail(doc.name(idx), tail)),
        UndoOp::StripText { text, .. } => check_stripped(text),
    }
}

/// The digest of the entry matches the document (when the record has digests).
fn check_digest(doc: &Document<'_>, op: &UndoOp, digest: Option<u64>, with_digests: bool) -> Result<(), String> {
    let Some(recorded) = digest else {
        return if with_digests {
            Err("no digest, although the record's other entries have one".into())
        } else {
            Ok(())
        };
    };
    match digest_of(doc, op) {
        Some(actual) if actual != recorded => Err(format!(
            "the document has a different element there (digest {actual:016x}, recorded {recorded:016x})"
        )),
        _ => Ok(()),
    }
}

/// Element `idx` and everything inside it are of kinds the rewriter adds.
fn check_added(doc: &Document<'_>, idx: usize) -> Result<(), String> {
    let local = doc.local_name(idx);
    if !ADDED.contains(&local) {
        return Err(format!("<{}> is not an element the rewriter adds", doc.name(idx)));
    }
    if local == "controller"
        && !doc
            .attr(idx, "model")
            .is_some_and(|model| model == "pcie-expander-bus" || model == "pcie-root-port")
    {
        return Err("the rewriter adds only pcie-expander-bus and pcie-root-port controllers".into());
    }
    let mut inside: Vec<usize> = doc.children(idx).collect();
    while let Some(child) = inside.pop() {
        let child_local = doc.local_name(child);
        if !ADDED.contains(&child_local) && !INSIDE_ADDED.contains(&child_local) {
            return Err(format!(
                "it holds <{}> (line {}), which the rewriter does not add",
                doc.name(child),
                doc.line(child)
            ));
        }
        inside.extend(doc.children(child));
    }
    Ok(())
}

/// `raw` is one element named like `idx` (nothing before or after it), and `idx` is of a kind the
/// rewriter changes.
fn check_restore(doc: &Document<'_>, idx: usize, raw: &str) -> Result<(), String> {
    let name = doc.name(idx);
    if !CHANGED.contains(&doc.local_name(idx)) {
        return Err(format!("<{name}> is not an element the rewriter changes"));
    }
    let restored = Document::parse(raw).map_err(|err| format!("raw is not one element: {err}"))?;
    if restored.raw(restored.root) != raw {
        return Err("raw holds more than one element".into());
    }
    if restored.name(restored.root) != name {
        return Err(format!("raw is a <{}>, not a <{name}>", restored.name(restored.root)));
    }
    Ok(())
}

/// The tail is `/>`, or `>`, text without markup and `</name>`.
fn check_tail(name: &str, tail: &str) -> Result<(), String> {
    if tail == "/>" {
        return Ok(());
    }
    let text = tail
        .strip_prefix('>')
        .and_then(|rest| rest.strip_suffix('>'))
        .map(str::trim_end)
        .and_then(|rest| rest.strip_suffix(name))
        .and_then(|rest| rest.strip_suffix("</"));
    match text {
        Some(text) if !text.contains('<') => Ok(()),
        _ => Err(format!("tail {tail:?} is not \"/>\" or the end tag of <{name}>")),
    }
}

/// The stripped text is `memmap=` fragments only.
fn check_stripped(text: &str) -> Result<(), String> {
    let mut fragments = text.split_whitespace().peekable();
    if fragments.peek().is_some() && fragments.all(|fragment| fragment.starts_with("memmap=")) {
        return Ok(());
    }
    Err(format!("text {text:?} is not memmap= fragments the rewriter adds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_is_the_standard_64_bit_hash() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn the_digest_ignores_quoting_and_white_space_but_not_attributes() {
        let one = Document::parse("<d><c a='1' b=\"&amp;\"/></d>").unwrap();
        let two = Document::parse("<d>\n  <c  a=\"1\"\n b='&amp;'><alias/></c></d>").unwrap();
        let three = Document::parse("<d><c a='2' b='&amp;'/></d>").unwrap();
        let op = UndoOp::Remove {
            at: "c".into(),
            previous: None,
        };
        assert_eq!(digest_of(&one, &op), digest_of(&two, &op));
        assert_ne!(digest_of(&one, &op), digest_of(&three, &op));
        assert_eq!(start_tag_form(&one, 1), "c\na=1\nb=&");
        assert_eq!(start_tag_digest(&one, 1), fnv1a(b"c\na=1\nb=&"));
        let root_attr = Document::parse("<d xmlns:q='u&amp;v'/>").unwrap();
        let op = UndoOp::RemoveRootAttr { name: "xmlns:q".into() };
        assert_eq!(digest_of(&root_attr, &op), Some(fnv1a(b"xmlns:q=u&v")));
    }

    #[test]
    fn shapes_the_rewriter_never_writes_are_refused() {
        assert_eq!(check_tail("cpu", "/>"), Ok(()));
        assert_eq!(check_tail("cpu", ">\n  </cpu >"), Ok(()));
        assert!(check_tail("cpu", "></cpu><x/>").is_err());
        assert!(check_tail("cpu", "><x/></cpu>").is_err());
        assert_eq!(check_stripped(" memmap=1G%4G-1+0xefffffff memmap=2G%8G"), Ok(()));
        assert!(check_stripped(" root=/dev/vda1").is_err());
        assert!(check_stripped("").is_err());
        let doc = Document::parse("<d><memory>1</memory><name>x</name></d>").unwrap();
        assert_eq!(check_restore(&doc, 1, "<memory unit='GiB'>8</memory>"), Ok(()));
        assert!(check_restore(&doc, 1, "<memory>8</memory><memory>9</memory>").is_err());
        assert!(check_restore(&doc, 1, "<currentMemory>8</currentMemory>").is_err());
        assert!(check_restore(&doc, 1, "<memory>8</memory> ").is_err());
        assert!(check_restore(&doc, 1, "<!-- x --><memory>8</memory>").is_err());
        assert!(check_restore(&doc, 2, "<name>y</name>").is_err());
    }
}
