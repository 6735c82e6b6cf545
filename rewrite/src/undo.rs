//! Removes what an earlier rewrite recorded in the `hbm:applied` metadata record.

use topology::PciAddress;

use super::document::{Document, Edits, is_xml_space};
use super::libvirt::{hostdev_source, is_pci_hostdev, parse_num};
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
    let mut current = doc.root;
    let all_steps = steps(path);
    for (position, step) in all_steps.iter().enumerate() {
        let step = *step;
        let is_last = last_match && position + 1 == all_steps.len();
        let (name, keys) = match step.split_once('[') {
            Some((element_name, keys_text)) => (
                element_name,
                keys_text
                    .trim_end_matches(']')
                    .split("][")
                    .filter_map(|key| key.split_once('='))
                    .collect(),
            ),
            None => (step, Vec::new()),
        };
        current = match name {
            "{hbm}" => metadata::element(doc).filter(|ours| doc.elements[*ours].parent == Some(current))?,
            "{applied}" => metadata::child(doc, current, "applied")?,
            _ => {
                let mut matching = doc.children(current).filter(|child| {
                    doc.name(*child) == name
                        && keys.iter().all(|(key, value)| match *key {
                            "source" => {
                                is_pci_hostdev(doc, *child)
                                    && PciAddress::parse(value)
                                        .ok()
                                        .is_some_and(|want| hostdev_source(doc, *child) == Some(want))
                            }
                            key => doc.attr(*child, key).is_some_and(|actual| same_value(&actual, value)),
                        })
                });
                if is_last { matching.last()? } else { matching.next()? }
            }
        };
    }
    Some(current)
}

/// A path key's value names an attribute value: the same text, or the same number as libvirt
/// reads numbers (the plan finds controllers by `index=' 1'` or `index='0x1'` as index 1).
fn same_value(actual: &str, recorded: &str) -> bool {
    actual == recorded || parse_num(actual).is_some_and(|number| parse_num(recorded) == Some(number))
}

/// The `qemu:arg` right before `idx` when its value is `value` (the `-object` of a pair).
fn previous_arg(doc: &Document<'_>, idx: usize, value: Option<&str>) -> Option<usize> {
    let value = value?;
    let parent = doc.elements[idx].parent?;
    let sibs = &doc.elements[parent].children;
    let pos = sibs.iter().position(|sibling| *sibling == idx)?;
    let prev = *sibs.get(pos.checked_sub(1)?)?;
    (doc.local_name(prev) == "arg" && doc.attr(prev, "value").is_some_and(|arg_value| arg_value == value))
        .then_some(prev)
}

/// The document without the recorded additions and without the record itself.
pub(crate) fn undo(doc: &Document<'_>, meta: &HbmMetadata) -> String {
    let mut edits = Edits::default();
    let removed = removed_elements(doc, meta);
    for op in &meta.undo {
        match op {
            UndoOp::Remove { at, previous } => remove(doc, &mut edits, at, previous.as_deref()),
            UndoOp::Restore { at, raw } => restore(doc, &mut edits, at, raw),
            UndoOp::Collapse { at, tail } => collapse(doc, &mut edits, at, tail, &removed),
            UndoOp::StripText { at, text } => strip_text(doc, &mut edits, at, text),
            UndoOp::RemoveRootAttr { name } => remove_root_attr(doc, &mut edits, name),
        }
    }
    // The record itself.
    if let Some(applied) = record(doc) {
        edits.replace(doc.leading_ws_start(applied), doc.elements[applied].end, "");
    }
    edits.apply(doc.src)
}

/// The `hbm:applied` element, if any.
fn record(doc: &Document<'_>) -> Option<usize> {
    metadata::element(doc).and_then(|ours| metadata::child(doc, ours, "applied"))
}

/// Elements this undo removes (for the collapse ops): the recorded additions, the `-object`
/// before a Generic Initiator, the record.
fn removed_elements(doc: &Document<'_>, meta: &HbmMetadata) -> Vec<usize> {
    let mut removed = Vec::new();
    for op in &meta.undo {
        if let UndoOp::Remove { at, previous } = op
            && let Some(idx) = resolve(doc, at, true)
        {
            removed.push(idx);
            removed.extend(previous_arg(doc, idx, previous.as_deref()));
        }
    }
    removed.extend(record(doc));
    removed
}

/// Removes the element at `at` (and the `-object` before it) with the white space before it.
fn remove(doc: &Document<'_>, edits: &mut Edits, at: &str, previous: Option<&str>) {
    let Some(idx) = resolve(doc, at, true) else {
        tracing::debug!(at = %at, "recorded addition not found; nothing to remove");
        return;
    };
    let from = match previous_arg(doc, idx, previous) {
        Some(prev) => doc.leading_ws_start(prev),
        None => doc.leading_ws_start(idx),
    };
    edits.replace(from, doc.elements[idx].end, "");
}

/// Puts the element at `at` back as `raw`.
fn restore(doc: &Document<'_>, edits: &mut Edits, at: &str, raw: &str) {
    let Some(idx) = resolve(doc, at, false) else {
        tracing::debug!(at = %at, "recorded element not found; nothing to restore");
        return;
    };
    let element = &doc.elements[idx];
    edits.replace(element.start, element.end, raw);
}

/// Ends the element at `at` with `tail` again when all its children are removed and only white
/// space is left between them.
fn collapse(doc: &Document<'_>, edits: &mut Edits, at: &str, tail: &str, removed: &[usize]) {
    let Some(idx) = resolve(doc, at, false) else { return };
    let element = &doc.elements[idx];
    if element.self_closing || !element.children.iter().all(|child| removed.contains(child)) {
        return;
    }
    let mut pos = element.tag_end;
    let mut blank = true;
    for child in &element.children {
        blank &= doc.src[pos..doc.elements[*child].start].bytes().all(is_xml_space);
        pos = doc.elements[*child].end;
    }
    blank &= doc.src[pos..element.close_start].bytes().all(is_xml_space);
    if blank {
        edits.replace(element.tag_end - 1, element.end, tail);
    }
}

/// Removes the last occurrence of `text` from the text of the element at `at`.
fn strip_text(doc: &Document<'_>, edits: &mut Edits, at: &str, text: &str) {
    let Some(idx) = resolve(doc, at, false) else { return };
    if doc.elements[idx].self_closing || text.is_empty() {
        return;
    }
    let (start, end) = doc.inner(idx);
    if let Some(pos) = doc.src[start..end].rfind(text) {
        edits.replace(start + pos, start + pos + text.len(), "");
    }
}

/// Removes attribute `name` (and the white space before it) from the root element.
fn remove_root_attr(doc: &Document<'_>, edits: &mut Edits, name: &str) {
    let Some(attr) = doc.attrs(doc.root).into_iter().find(|attr| attr.name == name) else {
        return;
    };
    let bytes = doc.src.as_bytes();
    let mut from = attr.name_start;
    while from > 0 && is_xml_space(bytes[from - 1]) {
        from -= 1;
    }
    edits.replace(from, attr.end, "");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{NAMESPACE, render_applied};

    /// `xml` with a record of `ops` appended to its `<metadata>`, undone.
    fn undone(domain: &str, ops: Vec<UndoOp>) -> String {
        let record = render_applied("hbm", &[], &ops, &[], '\'');
        let xml = domain.replace(
            "<metadata/>",
            &format!("<metadata><hbm:passthrough xmlns:hbm='{NAMESPACE}'>{record}</hbm:passthrough></metadata>"),
        );
        let doc = Document::parse(&xml).unwrap();
        let meta = metadata::find(&doc).unwrap().unwrap().1;
        undo(&doc, &meta)
    }

    const EMPTY_RECORD: &str = "<metadata><hbm:passthrough xmlns:hbm='https://hbm-passthrough.dev/xmlns/domain/1'></hbm:passthrough></metadata>";

    fn remove_op(at: &str, previous: Option<&str>) -> UndoOp {
        UndoOp::Remove {
            at: at.into(),
            previous: previous.map(str::to_string),
        }
    }

    #[test]
    fn paths_split_outside_brackets_and_resolve_last_match_for_additions() {
        assert_eq!(steps("a/b[v=x/y]/c"), ["a", "b[v=x/y]", "c"]);
        let doc = Document::parse("<d><c k='1'>a</c><c k='1'>b</c><c k='2'/></d>").unwrap();
        assert_eq!(resolve(&doc, "c[k=1]", false), Some(1));
        assert_eq!(resolve(&doc, "c[k=1]", true), Some(2));
        assert_eq!(resolve(&doc, "c[k=3]", true), None);
        // Numbers as libvirt reads them: the path's index=1 names index=' 1' and index='0x1'.
        let doc = Document::parse("<d><c i=' 1'/><c i='0x2'/><c i='x'/></d>").unwrap();
        assert_eq!(resolve(&doc, "c[i=1]", false), Some(1));
        assert_eq!(resolve(&doc, "c[i=2]", false), Some(2));
        assert_eq!(resolve(&doc, "c[i=x]", false), Some(3));
    }

    #[test]
    fn remove_takes_the_element_and_its_object_argument() {
        let domain = "<domain>\n  <q:commandline>\n    <q:arg value='-object'/>\n    <q:arg value='gi'/>\n  </q:commandline>\n  <x/>\n<metadata/></domain>";
        let out = undone(
            domain,
            vec![
                remove_op("q:commandline/q:arg[value=gi]", Some("-object")),
                remove_op("x", None),
            ],
        );
        assert_eq!(
            out,
            format!("<domain>\n  <q:commandline>\n  </q:commandline>\n{EMPTY_RECORD}</domain>")
        );
    }

    #[test]
    fn restore_puts_the_original_text_back() {
        let out = undone(
            "<domain><memory>3</memory><metadata/></domain>",
            vec![UndoOp::Restore {
                at: "memory".into(),
                raw: "<memory unit='GiB'>1</memory>".into(),
            }],
        );
        assert_eq!(
            out,
            format!("<domain><memory unit='GiB'>1</memory>{EMPTY_RECORD}</domain>")
        );
    }

    #[test]
    fn collapse_ends_an_emptied_parent_as_before_but_not_one_with_other_children() {
        let ops = vec![
            remove_op("cpu/numa", None),
            UndoOp::Collapse {
                at: "cpu".into(),
                tail: "/>".into(),
            },
        ];
        let out = undone(
            "<domain><cpu mode='x'>\n  <numa/>\n</cpu><metadata/></domain>",
            ops.clone(),
        );
        assert_eq!(out, format!("<domain><cpu mode='x'/>{EMPTY_RECORD}</domain>"));
        let out = undone("<domain><cpu mode='x'><numa/><model/></cpu><metadata/></domain>", ops);
        assert_eq!(
            out,
            format!("<domain><cpu mode='x'><model/></cpu>{EMPTY_RECORD}</domain>")
        );
    }

    #[test]
    fn strip_text_removes_the_last_occurrence_only() {
        let out = undone(
            "<domain><os><cmdline>a m=1 b m=1</cmdline></os><metadata/></domain>",
            vec![UndoOp::StripText {
                at: "os/cmdline".into(),
                text: " m=1".into(),
            }],
        );
        assert_eq!(
            out,
            format!("<domain><os><cmdline>a m=1 b</cmdline></os>{EMPTY_RECORD}</domain>")
        );
    }

    #[test]
    fn remove_root_attr_takes_the_space_before_it() {
        let out = undone(
            "<domain type='kvm'\n  xmlns:qemu='urn:q'><metadata/></domain>",
            vec![UndoOp::RemoveRootAttr {
                name: "xmlns:qemu".into(),
            }],
        );
        assert_eq!(out, format!("<domain type='kvm'>{EMPTY_RECORD}</domain>"));
    }

    #[test]
    fn ops_whose_element_is_gone_change_nothing() {
        let ops = vec![
            remove_op("devices/hostdev[source=0000:41:00.0]/alias", None),
            UndoOp::Restore {
                at: "currentMemory".into(),
                raw: "<currentMemory/>".into(),
            },
            UndoOp::StripText {
                at: "os/cmdline".into(),
                text: "x".into(),
            },
            UndoOp::RemoveRootAttr {
                name: "xmlns:qemu".into(),
            },
        ];
        assert_eq!(
            undone("<domain><metadata/></domain>", ops),
            format!("<domain>{EMPTY_RECORD}</domain>")
        );
    }
}
