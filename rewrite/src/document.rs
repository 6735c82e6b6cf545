//! A byte-range index over a domain XML document, built from quick-xml's streaming events, and
//! the edit list the rewriter applies to the original bytes. Nothing outside an edit changes, so
//! comments, attribute order, quoting and whitespace survive untouched.

use std::borrow::Cow;

use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::reader::Reader;

use super::RewriteError;

/// One element of the document, as byte offsets into the source text.
#[derive(Clone, Debug)]
pub struct Element {
    /// Offset of `<`.
    pub start: usize,
    /// Offset just after the start tag's `>` (for `<x/>` the end of the element).
    pub tag_end: usize,
    /// Offset of `</` of the end tag (== `tag_end` for `<x/>`).
    pub close_start: usize,
    /// Offset just after the element.
    pub end: usize,
    /// Qualified name range inside the start tag.
    pub name: (usize, usize),
    pub self_closing: bool,
    pub parent: Option<usize>,
    pub children: Vec<usize>,
}

/// One attribute of a start tag: name and the raw (escaped) value's byte range.
#[derive(Clone, Copy, Debug)]
pub struct Attr<'a> {
    pub name: &'a str,
    pub raw: &'a str,
    /// Offset of the name's first byte.
    pub name_start: usize,
    /// Offset just after the closing quote.
    pub end: usize,
    /// Range of the value between the quotes.
    pub value: (usize, usize),
}

impl Attr<'_> {
    pub fn value(&self) -> Cow<'_, str> {
        quick_xml::escape::unescape(self.raw).unwrap_or(Cow::Borrowed(self.raw))
    }
}

/// The indexed document.
#[derive(Debug)]
pub struct Document<'a> {
    pub src: &'a str,
    pub elements: Vec<Element>,
    pub root: usize,
}

/// An XML name with at most one namespace colon, not first or last (`domain`, `qemu:arg`,
/// `xmlns:hbm`): each part starts with a letter or `_` and goes on with letters, digits, `-`,
/// `.`, `_` (non-ASCII letters allowed).
fn is_qualified_name(name: &str) -> bool {
    if let Some(simple) = ascii_qualified_name(name.as_bytes()) {
        return simple;
    }
    let mut parts = name.split(':');
    let first = parts.next().is_some_and(is_ncname);
    let second = parts.next().is_none_or(is_ncname);
    first && second && parts.next().is_none()
}

/// [`is_qualified_name`] for an all-ASCII name without `\u{b7}` (most names), byte by byte;
/// `None` when the name holds a non-ASCII byte (the general rule decides).
fn ascii_qualified_name(name: &[u8]) -> Option<bool> {
    let mut colons = 0;
    let mut part_start = true;
    for byte in name {
        if !byte.is_ascii() {
            return None;
        }
        let fits = match byte {
            b':' => {
                colons += 1;
                if part_start {
                    return Some(false);
                }
                part_start = true;
                continue;
            }
            _ if part_start => byte.is_ascii_alphabetic() || *byte == b'_',
            _ => byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_'),
        };
        if !fits {
            return Some(false);
        }
        part_start = false;
    }
    Some(!part_start && colons <= 1)
}

/// One part of a qualified name.
fn is_ncname(part: &str) -> bool {
    let mut chars = part.chars();
    chars.next().is_some_and(|first| first.is_alphabetic() || first == '_')
        && chars.all(|rest| rest.is_alphanumeric() || matches!(rest, '-' | '.' | '_' | '\u{b7}') || !rest.is_ascii())
}

/// Refuses a character XML does not allow anywhere in the document (NUL, C0 controls).
fn check_chars(src: &str) -> Result<(), RewriteError> {
    let Some(offset) = first_non_xml_char(src.as_bytes()) else {
        return Ok(());
    };
    let ch = src[offset..].chars().next().unwrap_or('\0');
    let line_start = src[..offset].rfind('\n').map_or(0, |newline| newline + 1);
    let column = src[line_start..offset].chars().count() + 1;
    Err(malformed(
        src,
        offset,
        format!(
            "character U+{:04X} at column {column} is not allowed in XML",
            u32::from(ch)
        ),
    ))
}

/// Offset of the first character XML 1.0 does not allow (`Char`: tab, LF, CR, and from U+0020
/// on except U+FFFE and U+FFFF; a `str` holds no surrogates), byte by byte: a C0 control other
/// than tab, LF and CR, or U+FFFE / U+FFFF (UTF-8 `EF BF BE` / `EF BF BF`; `EF` only ever starts a
/// character).
pub(crate) fn first_non_xml_char(bytes: &[u8]) -> Option<usize> {
    // One branch-free pass first (the compiler vectorises it): most documents hold neither.
    let suspect = bytes.iter().fold(false, |seen, byte| {
        seen | (*byte < 0x20 && !matches!(byte, b'\t' | b'\n' | b'\r')) | (*byte == 0xef)
    });
    if !suspect {
        return None;
    }
    bytes.iter().enumerate().position(|(offset, byte)| match byte {
        b'\t' | b'\n' | b'\r' => false,
        0..0x20 => true,
        0xef => matches!(bytes.get(offset + 1..offset + 3), Some([0xbf, 0xbe | 0xbf])),
        _ => false,
    })
}

/// XML's white space: space, tab, CR, LF (not form feed or other control characters).
pub fn is_xml_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// 1-based line number of byte `offset`.
pub fn line_of(src: &str, offset: usize) -> usize {
    let end = offset.min(src.len());
    src.as_bytes()[..end].iter().filter(|b| **b == b'\n').count() + 1
}

/// The index being built while quick-xml streams the events.
struct Indexer<'a> {
    src: &'a str,
    elements: Vec<Element>,
    /// Open elements, innermost last.
    stack: Vec<usize>,
    root: Option<usize>,
}

/// A malformed-input error at byte `offset`.
fn malformed(src: &str, offset: usize, reason: impl Into<String>) -> RewriteError {
    RewriteError::Malformed {
        line: line_of(src, offset),
        reason: reason.into(),
    }
}

impl<'a> Indexer<'a> {
    /// Indexes one event spanning `[before, after)` of the source.
    fn event(&mut self, event: &Event<'_>, before: usize, after: usize) -> Result<(), RewriteError> {
        match event {
            Event::Start(start) => self.open(start, before, after, false),
            Event::Empty(start) => self.open(start, before, after, true),
            Event::End(_) => {
                let start = self.markup_start(before, after);
                if let Some(idx) = self.stack.pop() {
                    self.elements[idx].close_start = start;
                    self.elements[idx].end = after;
                }
                Ok(())
            }
            Event::Text(text) => {
                if text.as_bytes().contains(&b']') && text.as_ref().contains("]]>") {
                    return Err(malformed(self.src, before, "\"]]>\" in text (write ]]&gt;)"));
                }
                if self.stack.is_empty() && !text.as_ref().trim().is_empty() {
                    return Err(malformed(
                        self.src,
                        before,
                        format!("text {:?} outside the root element", text.as_ref().trim()),
                    ));
                }
                Ok(())
            }
            Event::GeneralRef(reference) => self.check_reference(reference, before),
            Event::DocType(_) => Err(RewriteError::Doctype {
                line: line_of(self.src, self.markup_start(before, after)),
            }),
            Event::CData(_) if self.stack.is_empty() => {
                Err(malformed(self.src, before, "CDATA outside the root element"))
            }
            Event::Comment(comment)
                if comment.as_bytes().contains(&b'-')
                    && (comment.as_ref().contains("--") || comment.as_ref().ends_with('-')) =>
            {
                Err(malformed(self.src, before, "\"--\" inside a comment"))
            }
            Event::CData(_) | Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::Eof => Ok(()),
        }
    }

    /// The event's own text starts at the first '<' at or after `before` for markup.
    fn markup_start(&self, before: usize, after: usize) -> usize {
        self.src
            .get(before..after)
            .and_then(|text| text.as_bytes().iter().position(|byte| *byte == b'<'))
            .map_or(before, |offset| before + offset)
    }

    /// Records a start tag (`self_closing`: `<x/>`).
    fn open(
        &mut self,
        tag: &BytesStart<'_>,
        before: usize,
        after: usize,
        self_closing: bool,
    ) -> Result<(), RewriteError> {
        let start = self.markup_start(before, after);
        let name = tag.name();
        let name = name.as_ref();
        if !is_qualified_name(name) {
            return Err(malformed(self.src, start, format!("{name:?} is not an XML name")));
        }
        check_attributes(self.src, tag, start)?;
        check_attribute_separation(self.src, start, after)?;
        let parent = self.stack.last().copied();
        let idx = self.elements.len();
        if parent.is_none() {
            if self.root.is_some() {
                return Err(malformed(
                    self.src,
                    start,
                    "a second top-level element after the root element",
                ));
            }
            self.root = Some(idx);
        }
        let name_len = tag.name().as_ref().len();
        self.elements.push(Element {
            start,
            tag_end: after,
            close_start: after,
            end: after,
            name: (start + 1, start + 1 + name_len),
            self_closing,
            parent,
            children: Vec::new(),
        });
        if let Some(parent) = parent {
            self.elements[parent].children.push(idx);
        }
        if !self_closing {
            self.stack.push(idx);
        }
        Ok(())
    }

    /// Accepts only the five predefined entities and valid character references, inside the root.
    fn check_reference(&self, reference: &BytesRef<'_>, before: usize) -> Result<(), RewriteError> {
        let known = reference.is_char_ref() || matches!(reference.as_ref(), "amp" | "lt" | "gt" | "quot" | "apos");
        if !known || self.stack.is_empty() {
            return Err(malformed(
                self.src,
                before,
                format!(
                    "entity reference &{}; (only the five predefined entities are allowed)",
                    reference.as_ref()
                ),
            ));
        }
        if reference.is_char_ref() && reference.resolve_char_ref().ok().flatten().is_none() {
            return Err(malformed(
                self.src,
                before,
                format!("invalid character reference &{};", reference.as_ref()),
            ));
        }
        Ok(())
    }

    /// The finished document: every element closed, one root.
    fn finish(self) -> Result<Document<'a>, RewriteError> {
        if let Some(open) = self.stack.last() {
            let element = &self.elements[*open];
            return Err(malformed(
                self.src,
                element.start,
                format!(
                    "element <{}> is never closed",
                    &self.src[element.name.0..element.name.1]
                ),
            ));
        }
        let root = self.root.ok_or(RewriteError::Malformed {
            line: 1,
            reason: "no root element".into(),
        })?;
        Ok(Document {
            src: self.src,
            elements: self.elements,
            root,
        })
    }
}

/// A reader position (counted from `base`) as an offset into the whole source.
fn offset_in(base: usize, position: u64) -> usize {
    usize::try_from(position)
        .ok()
        .and_then(|position| position.checked_add(base))
        .unwrap_or(usize::MAX)
}

/// XML wants white space between attributes (`a='1'b='2'` is not well-formed); quick-xml does
/// not check it. Scans the start tag `[start, end)`: after each closing quote comes white space,
/// `/` or `>`.
fn check_attribute_separation(src: &str, start: usize, end: usize) -> Result<(), RewriteError> {
    let tag = src.as_bytes().get(start..end).unwrap_or_default();
    let mut pos = 0;
    while let Some(open) = tag[pos..].iter().position(|byte| matches!(byte, b'\'' | b'"')) {
        let open = pos + open;
        let quote = tag[open];
        let Some(close) = tag[open + 1..].iter().position(|byte| *byte == quote) else {
            break;
        };
        let close = open + 1 + close;
        let next = tag.get(close + 1).copied().unwrap_or(b'>');
        if !is_xml_space(next) && next != b'/' && next != b'>' {
            let rest = &src[start + close + 1..end];
            let name = rest.split(['=', '/', '>']).next().unwrap_or(rest);
            return Err(malformed(
                src,
                start,
                format!("no white space before {name} (attributes are separated by white space)"),
            ));
        }
        pos = close + 1;
    }
    Ok(())
}

/// quick-xml reads attributes lazily: checks them now (syntax, duplicates, names, no `<`).
fn check_attributes(src: &str, tag: &BytesStart<'_>, start: usize) -> Result<(), RewriteError> {
    for attr in tag.attributes() {
        let bad = |why: String| {
            malformed(
                src,
                start,
                format!("element <{}>: bad attribute: {why}", tag.name().as_ref()),
            )
        };
        match attr {
            Err(err) => return Err(bad(err.to_string())),
            Ok(attr) if !is_qualified_name(attr.key.as_ref()) => {
                return Err(bad(format!("{:?} is not an attribute name", attr.key.as_ref())));
            }
            Ok(attr) if attr.value.as_bytes().contains(&b'<') => {
                return Err(bad(format!("'<' in the value of {}", attr.key.as_ref())));
            }
            Ok(attr) => {
                if attr.value.as_bytes().contains(&b'&')
                    && let Err(err) = quick_xml::escape::unescape(&attr.value)
                {
                    return Err(bad(format!("value of {}: {err} (write & as &amp;)", attr.key.as_ref())));
                }
            }
        }
    }
    Ok(())
}

impl<'a> Document<'a> {
    /// Indexes `src`. Rejects what is not one well-formed element with optional prolog/comments,
    /// any DOCTYPE (so no entity declaration can ever be expanded) and unknown entity references.
    pub fn parse(src: &'a str) -> Result<Self, RewriteError> {
        check_chars(src)?;
        // A UTF-8 byte order mark is no markup: the reader starts after it and every offset it
        // reports is moved by the mark's length, so offsets stay offsets into `src` (which
        // keeps the mark, and so does every rewrite of it).
        let (body, base) = match src.strip_prefix('\u{feff}') {
            Some(rest) => (rest, src.len() - rest.len()),
            None => (src, 0),
        };
        let mut reader = Reader::from_str(body);
        let config = reader.config_mut();
        config.check_end_names = true;
        config.expand_empty_elements = false;
        let mut indexer = Indexer {
            src,
            elements: Vec::with_capacity(src.len() / 40),
            stack: Vec::new(),
            root: None,
        };
        loop {
            let before = offset_in(base, reader.buffer_position());
            let event = reader.read_event().map_err(|err| {
                let at = offset_in(base, reader.error_position());
                malformed(src, at, err.to_string())
            })?;
            if matches!(event, Event::Eof) {
                break;
            }
            let after = offset_in(base, reader.buffer_position());
            indexer.event(&event, before, after)?;
        }
        indexer.finish()
    }

    pub fn name(&self, idx: usize) -> &'a str {
        let element = &self.elements[idx];
        &self.src[element.name.0..element.name.1]
    }

    /// Name without its namespace prefix.
    pub fn local_name(&self, idx: usize) -> &'a str {
        let name = self.name(idx);
        name.rsplit_once(':').map_or(name, |(_, local)| local)
    }

    pub fn line(&self, idx: usize) -> usize {
        line_of(self.src, self.elements[idx].start)
    }

    /// The element's full text.
    pub fn raw(&self, idx: usize) -> &'a str {
        let element = &self.elements[idx];
        &self.src[element.start..element.end]
    }

    pub fn children(&self, idx: usize) -> impl Iterator<Item = usize> + '_ {
        self.elements[idx].children.iter().copied()
    }

    /// First child named `name` (qualified name as written).
    pub fn child(&self, idx: usize, name: &str) -> Option<usize> {
        self.children(idx).find(|child| self.name(*child) == name)
    }

    pub fn children_named<'s>(&'s self, idx: usize, name: &'s str) -> impl Iterator<Item = usize> + 's {
        self.children(idx).filter(move |child| self.name(*child) == name)
    }

    /// Attributes of the start tag, in document order.
    pub fn attrs(&self, idx: usize) -> Vec<Attr<'a>> {
        self.attr_iter(idx).collect()
    }

    /// Attributes of the start tag, in document order, read as they are asked for.
    pub fn attr_iter(&self, idx: usize) -> impl Iterator<Item = Attr<'a>> + use<'a> {
        let element = &self.elements[idx];
        let src = self.src;
        let end = if element.self_closing {
            element.tag_end.saturating_sub(2)
        } else {
            element.tag_end.saturating_sub(1)
        };
        let mut pos = element.name.1;
        std::iter::from_fn(move || {
            let attr = next_attr(src, pos, end)?;
            pos = attr.end;
            Some(attr)
        })
    }

    pub fn attr(&self, idx: usize, name: &str) -> Option<Cow<'a, str>> {
        self.attr_iter(idx)
            .find(|attr| attr.name == name)
            .map(|attr| quick_xml::escape::unescape(attr.raw).unwrap_or(Cow::Borrowed(attr.raw)))
    }

    /// Text content (unescaped, comments and child elements skipped), trimmed.
    pub fn text(&self, idx: usize) -> String {
        let element = &self.elements[idx];
        if element.self_closing {
            return String::new();
        }
        let mut out = String::new();
        let mut pos = element.tag_end;
        for child in &element.children {
            out.push_str(&self.src[pos..self.elements[*child].start]);
            pos = self.elements[*child].end;
        }
        out.push_str(&self.src[pos..element.close_start]);
        let out = strip_comments(&out);
        let trimmed = out.trim();
        quick_xml::escape::unescape(trimmed)
            .map(|text| text.into_owned())
            .unwrap_or_else(|_| trimmed.to_string())
    }

    /// Range of the text between the tags (for elements without child elements).
    pub fn inner(&self, idx: usize) -> (usize, usize) {
        let element = &self.elements[idx];
        (element.tag_end, element.close_start)
    }

    /// Whitespace between the last newline and the element's `<` (its indentation), if the
    /// element starts a line.
    pub fn indent(&self, idx: usize) -> Option<&'a str> {
        let start = self.elements[idx].start;
        let before = &self.src[..start];
        let line_start = before.rfind('\n')? + 1;
        let ws = &before[line_start..];
        ws.chars().all(|ch| ch == ' ' || ch == '\t').then_some(ws)
    }

    /// Start offset of the whitespace run directly before `idx` (its indentation and newline).
    pub fn leading_ws_start(&self, idx: usize) -> usize {
        let start = self.elements[idx].start;
        let before = &self.src.as_bytes()[..start];
        let mut pos = start;
        while pos > 0 && is_xml_space(before[pos - 1]) {
            pos -= 1;
        }
        pos
    }

    /// Walks `path` (child names) from the root; `None` when a step is missing.
    pub fn path(&self, path: &[&str]) -> Option<usize> {
        let mut cur = self.root;
        for step in path {
            cur = self.child(cur, step)?;
        }
        Some(cur)
    }

    /// Prefix bound to namespace `ns` on the root element (`Some("")` for a default namespace).
    pub fn root_prefix_for(&self, ns: &str) -> Option<String> {
        self.prefix_on(self.root, ns)
    }

    pub fn prefix_on(&self, idx: usize, ns: &str) -> Option<String> {
        self.attrs(idx).into_iter().find_map(|attr| {
            if attr.value() != ns {
                return None;
            }
            if attr.name == "xmlns" {
                Some(String::new())
            } else {
                attr.name.strip_prefix("xmlns:").map(str::to_string)
            }
        })
    }
}

/// The attribute starting at or after `pos` in a start tag ending at `end`.
fn next_attr(src: &str, mut pos: usize, end: usize) -> Option<Attr<'_>> {
    let bytes = src.as_bytes();
    while pos < end && is_xml_space(bytes[pos]) {
        pos += 1;
    }
    if pos >= end {
        return None;
    }
    let name_start = pos;
    while pos < end && bytes[pos] != b'=' && !is_xml_space(bytes[pos]) {
        pos += 1;
    }
    let name_end = pos;
    while pos < end && (is_xml_space(bytes[pos]) || bytes[pos] == b'=') {
        pos += 1;
    }
    if pos >= end {
        return None;
    }
    let quote = bytes[pos];
    if quote != b'"' && quote != b'\'' {
        return None;
    }
    let value_start = pos + 1;
    let value_end = value_start + bytes[value_start..end].iter().position(|byte| *byte == quote)?;
    Some(Attr {
        name: &src[name_start..name_end],
        raw: &src[value_start..value_end],
        name_start,
        end: value_end + 1,
        value: (value_start, value_end),
    })
}

fn strip_comments(s: &str) -> Cow<'_, str> {
    if !s.contains("<!--") {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("<!--") {
        out.push_str(&rest[..i]);
        match rest[i..].find("-->") {
            Some(j) => rest = &rest[i + j + 3..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Replacements of byte ranges of the source; applied in one pass.
#[derive(Clone, Debug, Default)]
pub struct Edits {
    /// (start, end, replacement, sequence) - sequence keeps insertion order at equal offsets.
    items: Vec<(usize, usize, String, usize)>,
}

impl Edits {
    pub fn replace(&mut self, start: usize, end: usize, with: impl Into<String>) {
        let seq = self.items.len();
        self.items.push((start, end, with.into(), seq));
    }

    pub fn insert(&mut self, at: usize, text: impl Into<String>) {
        self.replace(at, at, text);
    }

    /// Rewrites the text of every edit with `map`.
    pub fn map_texts(&mut self, map: impl Fn(&str) -> String) {
        for item in &mut self.items {
            item.2 = map(&item.2);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Applies the edits to `src`. An edit lying inside an earlier-starting wider replacement is
    /// dropped (a restored or removed parent already covers it).
    pub fn apply(mut self, src: &str) -> String {
        self.items
            .sort_by(|first, second| first.0.cmp(&second.0).then(first.3.cmp(&second.3)));
        let extra: usize = self.items.iter().map(|item| item.2.len()).sum();
        let mut out = String::with_capacity(src.len() + extra);
        let mut pos = 0;
        for (start, end, text, _) in self.items {
            if start < pos {
                continue;
            }
            out.push_str(&src[pos..start]);
            out.push_str(&text);
            pos = end;
        }
        out.push_str(&src[pos..]);
        out
    }
}

/// Escapes text for an attribute value quoted with `quote`.
pub fn escape_attr(value: &str, quote: char) -> String {
    let mut out = String::with_capacity(value.len());
    push_escaped_attr(&mut out, value, quote);
    out
}

/// [`escape_attr`] written onto the end of `out`; runs without anything to escape are copied
/// whole.
pub fn push_escaped_attr(out: &mut String, value: &str, quote: char) {
    let mut copied = 0;
    for (offset, byte) in value.bytes().enumerate() {
        let escaped = match byte {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' if quote == '"' => "&quot;",
            b'\'' if quote == '\'' => "&apos;",
            b'\n' => "&#10;",
            b'\r' => "&#13;",
            b'\t' => "&#9;",
            _ => continue,
        };
        out.push_str(&value[copied..offset]);
        out.push_str(escaped);
        copied = offset + 1;
    }
    out.push_str(&value[copied..]);
}

/// Escapes element text.
pub fn escape_text(value: &str) -> String {
    value.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(xml: &str) -> String {
        Document::parse(xml).unwrap_err().to_string()
    }

    #[test]
    fn elements_are_indexed_as_byte_ranges() {
        let src = "<?xml version='1.0'?>\n<domain a='1'>\n  <x/>\n  <y b=\"2\">t</y>\n</domain>\n";
        let doc = Document::parse(src).unwrap();
        let children: Vec<usize> = doc.children(doc.root).collect();
        assert_eq!(doc.name(doc.root), "domain");
        assert_eq!(children.iter().map(|c| doc.name(*c)).collect::<Vec<_>>(), ["x", "y"]);
        assert_eq!(doc.raw(children[0]), "<x/>");
        assert!(doc.elements[children[0]].self_closing);
        assert_eq!(doc.raw(children[1]), "<y b=\"2\">t</y>");
        assert_eq!(doc.line(children[1]), 4);
        assert_eq!(doc.indent(children[1]), Some("  "));
        assert_eq!(
            &src[doc.leading_ws_start(children[1])..doc.elements[children[1]].start],
            "\n  "
        );
        let (start, end) = doc.inner(children[1]);
        assert_eq!(&src[start..end], "t");
        assert_eq!(doc.path(&["y"]), Some(children[1]));
        assert_eq!(doc.path(&["z"]), None);
    }

    #[test]
    fn attributes_and_text_are_unescaped() {
        let doc = Document::parse("<d k='a&amp;b' q = \"x\"><t>a <!-- c --> &lt;b&gt; </t></d>").unwrap();
        let attrs = doc.attrs(doc.root);
        assert_eq!(
            attrs.iter().map(|a| (a.name, a.raw)).collect::<Vec<_>>(),
            [("k", "a&amp;b"), ("q", "x")]
        );
        assert_eq!(doc.attr(doc.root, "k").as_deref(), Some("a&b"));
        assert_eq!(doc.attr(doc.root, "missing"), None);
        let text = doc.child(doc.root, "t").unwrap();
        assert_eq!(doc.text(text), "a  <b>");
    }

    #[test]
    fn namespace_prefixes_are_found_on_the_root() {
        let doc = Document::parse("<d xmlns='urn:a' xmlns:q='urn:q'><q:x/></d>").unwrap();
        assert_eq!(doc.root_prefix_for("urn:q").as_deref(), Some("q"));
        assert_eq!(doc.root_prefix_for("urn:a").as_deref(), Some(""));
        assert_eq!(doc.root_prefix_for("urn:z"), None);
        assert_eq!(doc.local_name(doc.children(doc.root).next().unwrap()), "x");
    }

    #[test]
    fn malformed_input_is_refused_with_its_line() {
        let mismatch = Document::parse("<a>\n<b>\n</a>").unwrap_err();
        assert!(
            matches!(mismatch, RewriteError::Malformed { line: 3, .. }),
            "{mismatch:?}"
        );
        assert!(reason("<a/><b/>").contains("a second top-level element"));
        assert!(reason("<a/>x").contains("text \"x\" outside the root element"));
        assert!(reason("<a>").contains("element <a> is never closed"));
        assert!(reason("").contains("no root element"));
        assert!(reason("<a>&foo;</a>").contains("entity reference &foo;"));
        assert!(reason("<a>&#0;</a>").contains("invalid character reference"));
        assert!(reason("<a b='<'/>").contains("bad attribute"));
        assert!(reason("<a b='1' b='2'/>").contains("bad attribute"));
        assert_eq!(
            Document::parse("<?xml version='1.0'?>\n<!DOCTYPE a [<!ENTITY x 'y'>]><a/>").unwrap_err(),
            RewriteError::Doctype { line: 2 }
        );
    }

    #[test]
    fn edits_apply_in_order_and_skip_edits_inside_a_wider_one() {
        let mut edits = Edits::default();
        assert!(edits.is_empty());
        edits.insert(3, "X");
        edits.insert(3, "Y");
        edits.replace(0, 2, "ab");
        edits.replace(5, 9, "-");
        edits.replace(6, 7, "never");
        assert_eq!(edits.apply("0123456789"), "ab2XY34-9");
    }

    #[test]
    fn escaping_for_attributes_and_text() {
        assert_eq!(escape_attr("a'b\"c<&>\n", '\''), "a&apos;b\"c&lt;&amp;&gt;&#10;");
        assert_eq!(escape_attr("a'b\"c\t\r", '"'), "a'b&quot;c&#9;&#13;");
        assert_eq!(escape_text("a<b>&'\""), "a&lt;b&gt;&amp;'\"");
        assert!(is_xml_space(b'\t') && !is_xml_space(0x0c));
        assert_eq!(line_of("a\nb\nc", 4), 3);
        assert_eq!(line_of("a", 99), 1);
    }

    #[test]
    fn what_xml_forbids_is_refused_with_its_line() {
        assert_eq!(
            reason("<a>\n<b>x\u{0}y</b></a>"),
            "domain XML line 2: not well-formed XML: character U+0000 at column 5 is not allowed in XML; fix the XML and retry"
        );
        assert!(reason("<a>\u{1}</a>").contains("character U+0001 at column 4"));
        assert!(reason("<a b='\u{1}'/>").contains("character U+0001"));
        assert!(reason("<a><1bad/></a>").contains("\"1bad\" is not an XML name"));
        assert!(reason("<a><a:b:c/></a>").contains("\"a:b:c\" is not an XML name"));
        assert!(reason("<a><b :x='1'/></a>").contains("\":x\" is not an attribute name"));
        assert!(reason("<a>x ]]> y</a>").contains("\"]]>\" in text"));
        assert!(reason("<a><!-- a -- b --></a>").contains("\"--\" inside a comment"));
        assert!(reason("<a><!-- a ---></a>").contains("\"--\" inside a comment"));
        assert!(reason("<a><name x=\"a&b\"/></a>").contains("bad attribute"));
        assert!(reason("<a><name x=\"&foo;\"/></a>").contains("bad attribute"));
        assert!(reason("<a><c i=' 1'm='x'/></a>").contains("no white space before m"));
        assert!(reason("<a i='1'm='x'></a>").contains("no white space before m"));
        assert!(reason("<a i=\"'\"m='x'></a>").contains("no white space before m"));
        assert!(reason("<a>\u{e9}\u{fffe}</a>").contains("character U+FFFE at column 5"));
        assert!(reason("<a b='\u{ffff}'/>").contains("character U+FFFF"));
        assert!(reason("<a><b:/></a>").contains("\"b:\" is not an XML name"));
        assert!(reason("<a><:b/></a>").contains("\":b\" is not an XML name"));
        assert!(reason("<a><\u{e9}:1/></a>").contains("is not an XML name"));
        // Still accepted: what XML allows.
        for good in [
            "<a>\t\r\n\u{e9}\u{10000}</a>",
            "<a><![CDATA[ x ]] > ]]></a>",
            "<a><!-- a - b --></a>",
            "<a:b xmlns:a='u' x='&amp;&#10;'><_c.d-e/></a:b>",
            "<a i=\"'\" j='\"'>\u{efbf}\u{fffd}\u{eeff}</a>",
            "<\u{e9}t\u{e9}:x\u{b7}y \u{e9}='1'/>",
        ] {
            assert!(Document::parse(good).is_ok(), "{good:?}");
        }
    }
}
