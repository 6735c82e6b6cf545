//! Removes what an earlier rewrite recorded in the `hbm:applied` metadata record.

use topology::PciAddress;

use super::document::{Document, Edits};
use super::libvirt::{hostdev_source, is_pci_hostdev};
use super::metadata::{self, HbmMetadata, UndoOp};

/// Splits an undo path into steps (`/` inside `[...]` does not split).
fn steps(path: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in path.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            '/' if depth == 0 => {
                out.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < path.len() {
        out.push(&path[start..]);
    }
    out
}

/// Finds the element a recorded path names. Every step takes the first match (as the rewriter
/// finds the elements it changes in place), except the last step with `last_match`: additions are
/// appended, so the rewriter's own element is the last one matching.
pub(crate) fn resolve(doc: &Document<'_>, path: &str, last_match: bool) -> Option<usize> {
    let mut cur = doc.root;
    let all = steps(path);
    for (i, step) in all.iter().enumerate() {
        let step = *step;
        let last = last_match && i + 1 == all.len();
        let (name, keys) = match step.split_once('[') {
            Some((n, rest)) => (
                n,
                rest.trim_end_matches(']')
                    .split("][")
                    .filter_map(|k| k.split_once('='))
                    .collect(),
            ),
            None => (step, Vec::new()),
        };
        cur = match name {
            "{hbm}" => metadata::element(doc).filter(|e| doc.elements[*e].parent == Some(cur))?,
            "{applied}" => metadata::child(doc, cur, "applied")?,
            _ => {
                let mut matching = doc.children(cur).filter(|c| {
                    doc.name(*c) == name
                        && keys.iter().all(|(k, v)| match *k {
                            "source" => {
                                is_pci_hostdev(doc, *c)
                                    && PciAddress::parse(v)
                                        .ok()
                                        .is_some_and(|want| hostdev_source(doc, *c) == Some(want))
                            }
                            k => doc.attr(*c, k).is_some_and(|a| a == *v),
                        })
                });
                if last { matching.last()? } else { matching.next()? }
            }
        };
    }
    Some(cur)
}

/// The `qemu:arg` right before `idx` when its value is `value` (the `-object` of a pair).
fn previous_arg(doc: &Document<'_>, idx: usize, value: Option<&str>) -> Option<usize> {
    let value = value?;
    let parent = doc.elements[idx].parent?;
    let sibs = &doc.elements[parent].children;
    let pos = sibs.iter().position(|c| *c == idx)?;
    let prev = *sibs.get(pos.checked_sub(1)?)?;
    (doc.local_name(prev) == "arg" && doc.attr(prev, "value").is_some_and(|v| v == value)).then_some(prev)
}

/// The document without the recorded additions and without the record itself.
pub(crate) fn undo(doc: &Document<'_>, meta: &HbmMetadata) -> String {
    let mut edits = Edits::default();
    // Elements this undo removes (for the collapse ops).
    let mut removed: Vec<usize> = Vec::new();
    for op in &meta.undo {
        if let UndoOp::Remove { at, previous } = op
            && let Some(idx) = resolve(doc, at, true)
        {
            removed.push(idx);
            if let Some(prev) = previous_arg(doc, idx, previous.as_deref()) {
                removed.push(prev);
            }
        }
    }
    if let Some(ours) = metadata::element(doc)
        && let Some(applied) = metadata::child(doc, ours, "applied")
    {
        removed.push(applied);
    }
    for op in &meta.undo {
        match op {
            UndoOp::Remove { at, previous } => {
                let Some(idx) = resolve(doc, at, true) else {
                    tracing::debug!(at = %at, "recorded addition not found; nothing to remove");
                    continue;
                };
                let from = match previous_arg(doc, idx, previous.as_deref()) {
                    Some(prev) => doc.leading_ws_start(prev),
                    None => doc.leading_ws_start(idx),
                };
                edits.replace(from, doc.elements[idx].end, "");
            }
            UndoOp::Restore { at, raw } => {
                let Some(idx) = resolve(doc, at, false) else {
                    tracing::debug!(at = %at, "recorded element not found; nothing to restore");
                    continue;
                };
                let e = &doc.elements[idx];
                edits.replace(e.start, e.end, raw.clone());
            }
            UndoOp::Collapse { at, tail } => {
                let Some(idx) = resolve(doc, at, false) else { continue };
                let e = &doc.elements[idx];
                if e.self_closing || !e.children.iter().all(|c| removed.contains(c)) {
                    continue;
                }
                // Only white space may be left between the children.
                let mut pos = e.tag_end;
                let mut blank = true;
                for c in &e.children {
                    blank &= doc.src[pos..doc.elements[*c].start]
                        .bytes()
                        .all(super::document::is_xml_space);
                    pos = doc.elements[*c].end;
                }
                blank &= doc.src[pos..e.close_start].bytes().all(super::document::is_xml_space);
                if blank {
                    edits.replace(e.tag_end - 1, e.end, tail.clone());
                }
            }
            UndoOp::StripText { at, text } => {
                let Some(idx) = resolve(doc, at, false) else { continue };
                let e = &doc.elements[idx];
                if e.self_closing || text.is_empty() {
                    continue;
                }
                let (s, en) = doc.inner(idx);
                if let Some(pos) = doc.src[s..en].rfind(text.as_str()) {
                    edits.replace(s + pos, s + pos + text.len(), "");
                }
            }
            UndoOp::RemoveRootAttr { name } => {
                if let Some(a) = doc.attrs(doc.root).into_iter().find(|a| a.name == name) {
                    let bytes = doc.src.as_bytes();
                    let mut from = a.name_start;
                    while from > 0 && super::document::is_xml_space(bytes[from - 1]) {
                        from -= 1;
                    }
                    edits.replace(from, a.end, "");
                }
            }
        }
    }
    // The record itself.
    if let Some(ours) = metadata::element(doc)
        && let Some(applied) = metadata::child(doc, ours, "applied")
    {
        edits.replace(doc.leading_ws_start(applied), doc.elements[applied].end, "");
    }
    edits.apply(doc.src)
}
