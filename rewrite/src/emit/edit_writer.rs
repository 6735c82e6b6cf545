//! [`EditWriter`]: the edits a rewrite makes to the source and the undo ops that take them back,
//! with new elements written in the document's own style (quote character, indentation unit,
//! one line or pretty).

use crate::document::{Document, Edits, escape_attr};
use crate::metadata::UndoOp;

/// Elements appended to one parent, written together when the groups are flushed.
#[derive(Clone)]
struct AppendGroup {
    parent: usize,
    parent_path: String,
    /// `(element text, undo op)` in append order.
    children: Vec<(String, Option<UndoOp>)>,
}

/// Where an undo op's digest comes from.
#[derive(Clone)]
enum DigestSource {
    /// The op carries none.
    None,
    Known(u64),
    /// The element written for the op: the digest of its start tag.
    Written(String),
}

/// Collects edits and their undo ops. Changes of existing elements record their undo op at
/// once; appended elements record theirs when the groups are flushed, group by group.
#[derive(Clone)]
pub(crate) struct EditWriter<'d, 'a> {
    pub doc: &'d Document<'a>,
    edits: Edits,
    undo: Vec<UndoOp>,
    /// Where the digest of each op of `undo` comes from (see `proof.rs`); read only when asked
    /// for ([`EditWriter::digests`]).
    digests: Vec<DigestSource>,
    groups: Vec<AppendGroup>,
    /// The quote character of the document's attributes.
    pub quote: char,
    /// One indentation step (empty in a one-line document).
    pub indent_unit: String,
    /// `"\n"`, or empty in a one-line document.
    pub newline: &'static str,
    /// The document ends its lines with CR LF: every LF the writer adds becomes CR LF when the
    /// edits are applied (the writer itself works with LF only).
    crlf: bool,
}

impl<'d, 'a> EditWriter<'d, 'a> {
    /// A writer in the style of `doc`: its root's first attribute's quote (else `'`), the
    /// indentation of the root's first child (else two spaces).
    pub(crate) fn new(doc: &'d Document<'a>) -> Self {
        let root = &doc.elements[doc.root];
        let pretty = doc.src[root.tag_end..root.close_start].contains('\n');
        let quote = doc
            .attrs(doc.root)
            .first()
            .and_then(|attr| doc.src[..attr.value.0].chars().last())
            .filter(|ch| *ch == '"' || *ch == '\'')
            .unwrap_or('\'');
        let indent_unit = doc
            .children(doc.root)
            .next()
            .and_then(|child| doc.indent(child))
            .filter(|indent| !indent.is_empty())
            .unwrap_or("  ")
            .to_string();
        Self {
            doc,
            edits: Edits::default(),
            undo: Vec::new(),
            digests: Vec::new(),
            groups: Vec::new(),
            quote,
            indent_unit: if pretty { indent_unit } else { String::new() },
            newline: if pretty { "\n" } else { "" },
            crlf: uses_crlf(doc.src),
        }
    }

    /// Joins `(depth, line)` pairs into one element text; `\n` marks line starts (indented later).
    pub(crate) fn block(&self, lines: &[(usize, String)]) -> String {
        let mut text = String::new();
        for (position, (depth, line)) in lines.iter().enumerate() {
            if position > 0 {
                text.push_str(self.newline);
                text.push_str(&self.indent_unit.repeat(*depth));
            }
            text.push_str(line);
        }
        text
    }

    /// ` name='value'` in the document's quote.
    pub(crate) fn attr(&self, name: &str, value: &str) -> String {
        let quote = self.quote;
        format!(" {name}={quote}{}{quote}", escape_attr(value, quote))
    }

    /// Inserts `text` at `at`; the caller records how to take it back.
    pub(crate) fn insert(&mut self, at: usize, text: String) {
        self.edits.insert(at, text);
    }

    /// Replaces `[start, end)` without recording anything (part of a change already recorded).
    pub(crate) fn replace_unrecorded(&mut self, start: usize, end: usize, text: &str) {
        self.edits.replace(start, end, text);
    }

    /// Records an undo op now.
    pub(crate) fn record(&mut self, op: UndoOp) {
        self.push_undo(op, DigestSource::None);
    }

    /// Records `op` with the digest its record entry carries.
    pub(crate) fn record_digested(&mut self, op: UndoOp, digest: u64) {
        self.push_undo(op, DigestSource::Known(digest));
    }

    /// Names the element written for the op recorded at `position` (an addition written after
    /// its op was recorded): the op's digest is that of its start tag.
    pub(crate) fn set_written(&mut self, position: usize, xml: &str) {
        if let Some(slot) = self.digests.get_mut(position) {
            *slot = DigestSource::Written(xml.to_string());
        }
    }

    fn push_undo(&mut self, op: UndoOp, source: DigestSource) {
        self.undo.push(op);
        self.digests.push(source);
    }

    /// The digests of [`EditWriter::undo_ops`], in the same order: each addition's start tag
    /// as written (read on its own), `None` for ops without a digest.
    pub(crate) fn digests(&self) -> Vec<Option<u64>> {
        self.digests
            .iter()
            .map(|source| match source {
                DigestSource::None => None,
                DigestSource::Known(digest) => Some(*digest),
                DigestSource::Written(xml) => crate::proof::written_digest(xml),
            })
            .collect()
    }

    /// The undo ops recorded so far.
    pub(crate) fn undo_ops(&self) -> &[UndoOp] {
        &self.undo
    }

    /// Appends `xml` as the last child of `parent`; `child_path` is recorded for removal
    /// (empty: nothing recorded).
    pub(crate) fn append(&mut self, parent: usize, parent_path: &str, xml: String, child_path: String) {
        let op = (!child_path.is_empty()).then_some(UndoOp::Remove {
            at: child_path,
            previous: None,
        });
        self.append_with(parent, parent_path, xml, op);
    }

    /// Appends `xml` as the last child of `parent`, recording `op` when the groups are flushed.
    pub(crate) fn append_with(&mut self, parent: usize, parent_path: &str, xml: String, op: Option<UndoOp>) {
        if let Some(group) = self.groups.iter_mut().find(|group| group.parent == parent) {
            group.children.push((xml, op));
        } else {
            self.groups.push(AppendGroup {
                parent,
                parent_path: parent_path.to_string(),
                children: vec![(xml, op)],
            });
        }
    }

    /// Replaces `[start, end)` inside element `idx`, recording how to put `idx` back.
    pub(crate) fn modify(&mut self, idx: usize, path: &str, start: usize, end: usize, text: String) {
        if !self
            .undo
            .iter()
            .any(|op| matches!(op, UndoOp::Restore { at, .. } if at == path))
        {
            let op = UndoOp::Restore {
                at: path.to_string(),
                raw: self.doc.raw(idx).to_string(),
            };
            self.push_undo(op, DigestSource::None);
        }
        self.edits.replace(start, end, text);
    }

    /// Replaces the whole element `idx` with `text`, recording how to put it back.
    pub(crate) fn replace_element(&mut self, idx: usize, path: &str, text: String) {
        let element = &self.doc.elements[idx];
        let (start, end) = (element.start, element.end);
        self.modify(idx, path, start, end, text);
    }

    /// Sets the text of element `idx` (a `<x/>` becomes `<x>text</x>`), recording how to put it back.
    pub(crate) fn set_text(&mut self, idx: usize, path: &str, text: String) {
        let element = &self.doc.elements[idx];
        if element.self_closing {
            let head = &self.doc.src[element.start..element.tag_end - 2];
            let name = self.doc.name(idx);
            let (start, end) = (element.start, element.end);
            self.modify(idx, path, start, end, format!("{head}>{text}</{name}>"));
        } else {
            let (start, end) = self.doc.inner(idx);
            self.modify(idx, path, start, end, text);
        }
    }

    /// The indentation of `parent`'s children (its first child's, else its own plus one step).
    fn child_indent(&self, parent: usize) -> String {
        if self.newline.is_empty() {
            return String::new();
        }
        let doc = self.doc;
        if let Some(first) = doc.children(parent).next()
            && let Some(indent) = doc.indent(first)
        {
            return indent.to_string();
        }
        format!("{}{}", doc.indent(parent).unwrap_or(""), self.indent_unit)
    }

    /// Turns the collected appends into edits and their undo ops into records.
    pub(crate) fn flush_groups(&mut self) {
        for group in std::mem::take(&mut self.groups) {
            let separator = format!("{}{}", self.newline, self.child_indent(group.parent));
            let mut text = String::new();
            for (xml, _) in &group.children {
                text.push_str(&separator);
                text.push_str(&xml.replace('\n', &separator));
            }
            let element = &self.doc.elements[group.parent];
            if let Some(last) = element.children.last() {
                let at = self.doc.elements[*last].end;
                self.edits.insert(at, text);
            } else {
                self.open_up(&group, text);
            }
            for (xml, op) in group.children {
                if let Some(op) = op {
                    let source = if matches!(op, UndoOp::Remove { .. }) {
                        DigestSource::Written(xml)
                    } else {
                        DigestSource::None
                    };
                    self.push_undo(op, source);
                }
            }
        }
    }

    /// Writes `children_text` into a parent without children (`<x/>`, `<x></x>`), recording
    /// its original end so that, once the additions are removed again, it closes as before
    /// (changes made to its start tag since are kept).
    fn open_up(&mut self, group: &AppendGroup, children_text: String) {
        let element = &self.doc.elements[group.parent];
        let parent_indent = if self.newline.is_empty() {
            ""
        } else {
            self.doc.indent(group.parent).unwrap_or("")
        };
        let name = self.doc.name(group.parent);
        let end = element.end;
        let replacement = format!(">{children_text}{}{parent_indent}</{name}>", self.newline);
        let op = self.collapse_op(group.parent, &group.parent_path);
        if !self
            .undo
            .iter()
            .any(|recorded| matches!(recorded, UndoOp::Collapse { at, .. } if *at == group.parent_path))
        {
            self.push_undo(op, DigestSource::None);
        }
        self.edits.replace(tag_close(element), end, replacement);
    }

    /// The collapse op for a parent without children (see [`EditWriter::open_up`]).
    pub(crate) fn collapse_op(&self, idx: usize, path: &str) -> UndoOp {
        let element = &self.doc.elements[idx];
        UndoOp::Collapse {
            at: path.to_string(),
            tail: self.doc.src[tag_close(element)..element.end].to_string(),
        }
    }

    /// The edited source, with the added line ends in the document's style.
    pub(crate) fn finish(mut self) -> String {
        if self.crlf {
            self.edits.map_texts(lf_to_crlf);
        }
        self.edits.apply(self.doc.src)
    }
}

/// Whether the document's first line ends with CR LF.
fn uses_crlf(src: &str) -> bool {
    src.find('\n').is_some_and(|newline| src[..newline].ends_with('\r'))
}

/// `text` with every LF not already after a CR written as CR LF.
fn lf_to_crlf(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 16);
    let mut previous = '\0';
    for ch in text.chars() {
        if ch == '\n' && previous != '\r' {
            out.push('\r');
        }
        out.push(ch);
        previous = ch;
    }
    out
}

/// Offset of the start tag's `>` (or `/>`).
fn tag_close(element: &crate::document::Element) -> usize {
    if element.self_closing {
        element.tag_end - 2
    } else {
        element.tag_end - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn style_follows_the_document() {
        let doc = Document::parse("<domain type=\"kvm\">\n\t<name>x</name>\n</domain>").unwrap();
        let writer = EditWriter::new(&doc);
        assert_eq!(
            (writer.quote, writer.indent_unit.as_str(), writer.newline),
            ('"', "\t", "\n")
        );
        assert_eq!(writer.attr("v", "a\"b"), " v=\"a&quot;b\"");
        let doc = Document::parse("<domain><name>x</name></domain>").unwrap();
        let writer = EditWriter::new(&doc);
        assert_eq!(
            (writer.quote, writer.indent_unit.as_str(), writer.newline),
            ('\'', "", "")
        );
        assert_eq!(
            writer.block(&[(0, "<a>".into()), (1, "<b/>".into()), (0, "</a>".into())]),
            "<a><b/></a>"
        );
    }

    #[test]
    fn appends_are_indented_like_their_siblings_and_recorded_on_flush() {
        let doc = Document::parse("<domain>\n  <devices>\n    <disk/>\n  </devices>\n</domain>").unwrap();
        let mut writer = EditWriter::new(&doc);
        writer.append(1, "devices", "<a>\n  <b/>\n</a>".into(), "devices/a".into());
        writer.append(1, "devices", "<c/>".into(), String::new());
        assert!(writer.undo_ops().is_empty());
        writer.flush_groups();
        assert_eq!(
            writer.undo_ops(),
            &[UndoOp::Remove {
                at: "devices/a".into(),
                previous: None
            }]
        );
        assert_eq!(
            writer.finish(),
            "<domain>\n  <devices>\n    <disk/>\n    <a>\n      <b/>\n    </a>\n    <c/>\n  </devices>\n</domain>"
        );
    }

    #[test]
    fn a_self_closing_parent_is_opened_up_with_a_collapse_op() {
        let doc = Document::parse("<domain>\n  <cpu mode='host'/>\n</domain>").unwrap();
        let mut writer = EditWriter::new(&doc);
        writer.append(1, "cpu", "<numa/>".into(), "cpu/numa".into());
        writer.flush_groups();
        assert_eq!(
            writer.undo_ops(),
            &[
                UndoOp::Collapse {
                    at: "cpu".into(),
                    tail: "/>".into()
                },
                UndoOp::Remove {
                    at: "cpu/numa".into(),
                    previous: None
                }
            ]
        );
        assert_eq!(
            writer.finish(),
            "<domain>\n  <cpu mode='host'>\n    <numa/>\n  </cpu>\n</domain>"
        );
    }

    #[test]
    fn modifications_record_the_original_once() {
        let doc = Document::parse("<domain><memory unit='KiB'>1</memory><e/></domain>").unwrap();
        let mut writer = EditWriter::new(&doc);
        let (start, end) = doc.inner(1);
        writer.modify(1, "memory", start, end, "2".into());
        writer.set_text(2, "e", "x".into());
        assert_eq!(
            writer.undo_ops(),
            &[
                UndoOp::Restore {
                    at: "memory".into(),
                    raw: "<memory unit='KiB'>1</memory>".into()
                },
                UndoOp::Restore {
                    at: "e".into(),
                    raw: "<e/>".into()
                }
            ]
        );
        assert_eq!(
            writer.finish(),
            "<domain><memory unit='KiB'>2</memory><e>x</e></domain>"
        );
    }

    #[test]
    fn added_line_ends_follow_a_crlf_document() {
        assert!(uses_crlf("<a>\r\n</a>\n"));
        assert!(!uses_crlf("<a>\n</a>\r\n"));
        assert!(!uses_crlf("<a/>"));
        assert_eq!(lf_to_crlf("a\nb\r\nc\n"), "a\r\nb\r\nc\r\n");
    }
}
