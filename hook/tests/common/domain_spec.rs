//! A model of KubeVirt's round trip of a hook sidecar's answer: virt-launcher unmarshals the
//! returned domain XML into its `api.DomainSpec` (an unmarshal error fails the VM) and, with
//! KubeVirt's domain-hook plugins configured, marshals the domain again from that model, so what
//! the model does not hold is dropped. `<qemu:commandline>` is carried over by a namespace-aware
//! pass and survives.
//!
//! This is our own whitelist of element paths and attributes, written from two kinds of facts:
//! - [`Origin::Reference`]: what the team's reference lists as modelled by KubeVirt's schema
//!   (Aug 2026): the elements the HBM chain needs;
//! - [`Origin::KubevirtOutput`]: elements and attributes KubeVirt's own converter writes (they are
//!   in the KubeVirt-generated definitions of `tests/corpus/kubevirt/`, and virt-launcher produces
//!   that XML by marshalling `api.DomainSpec`, so the model holds them). Only those a started
//!   domain needs are listed; a test checks each one against the corpus.
//!
//! Anything else is treated as dropped (also elements KubeVirt may model that the chain does not
//! need): a test must never rely on them surviving.

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::{NsReader, XmlVersion};

/// libvirt's QEMU namespace (`<qemu:commandline>`).
pub const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";
/// KubeVirt's own `<metadata>` child (`<kubevirt xmlns="http://kubevirt.io">`).
pub const KUBEVIRT_NS: &str = "http://kubevirt.io";

/// Where the knowledge that KubeVirt models an element comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The team's reference list of what KubeVirt's `api.DomainSpec` models.
    Reference,
    /// KubeVirt's own converter writes it (seen in the corpus' KubeVirt-generated definitions).
    KubevirtOutput,
}

/// How the unmarshal reads an element's character data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Text {
    /// Not kept.
    Dropped,
    /// Kept as written.
    Kept,
    /// An unsigned integer field: anything else fails the unmarshal.
    Unsigned,
}

/// One element the model holds: its namespace and local name, the attributes kept (matched by
/// local name, as Go's `encoding/xml` does), its text, and the children it holds.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub ns: Option<&'static str>,
    pub name: &'static str,
    pub attrs: &'static [&'static str],
    /// Attributes that are unsigned integer fields (a subset of `attrs`).
    pub unsigned_attrs: &'static [&'static str],
    pub text: Text,
    /// Keeps the whole subtree (KubeVirt's own metadata).
    pub whole_subtree: bool,
    pub origin: Origin,
    pub children: &'static [Rule],
}

const fn rule(name: &'static str, attrs: &'static [&'static str], origin: Origin) -> Rule {
    Rule {
        ns: None,
        name,
        attrs,
        unsigned_attrs: &[],
        text: Text::Dropped,
        whole_subtree: false,
        origin,
        children: &[],
    }
}

const fn with_children(mut r: Rule, children: &'static [Rule]) -> Rule {
    r.children = children;
    r
}

const fn with_text(mut r: Rule, text: Text) -> Rule {
    r.text = text;
    r
}

const fn reference(name: &'static str, attrs: &'static [&'static str]) -> Rule {
    rule(name, attrs, Origin::Reference)
}

const fn kubevirt(name: &'static str, attrs: &'static [&'static str]) -> Rule {
    rule(name, attrs, Origin::KubevirtOutput)
}

const ADDRESS: Rule = reference("address", &["type", "domain", "bus", "slot", "function"]);
const ALIAS: Rule = reference("alias", &["name"]);

const OS: Rule = with_children(
    reference("os", &[]),
    &[
        with_text(reference("type", &["arch", "machine"]), Text::Kept),
        with_text(reference("kernel", &[]), Text::Kept),
        with_text(reference("initrd", &[]), Text::Kept),
        with_text(reference("cmdline", &[]), Text::Kept),
    ],
);

const CELL: Rule = Rule {
    unsigned_attrs: &["memory"],
    ..with_children(
        reference("cell", &["id", "cpus", "memory", "unit", "memAccess"]),
        &[with_children(
            reference("distances", &[]),
            &[reference("sibling", &["id", "value"])],
        )],
    )
};

const CPU: Rule = with_children(
    kubevirt("cpu", &["mode"]),
    &[
        kubevirt("topology", &["sockets", "cores", "threads"]),
        with_children(reference("numa", &[]), &[CELL]),
    ],
);

const NUMATUNE: Rule = with_children(
    reference("numatune", &[]),
    &[
        reference("memory", &["mode", "nodeset"]),
        reference("memnode", &["cellid", "mode", "nodeset"]),
    ],
);

const CONTROLLER: Rule = with_children(
    reference("controller", &["type", "index", "model"]),
    &[
        with_children(
            reference("target", &["hotplug", "busNr"]),
            &[with_text(reference("node", &[]), Text::Kept)],
        ),
        ADDRESS,
        ALIAS,
    ],
);

const HOSTDEV: Rule = with_children(
    reference("hostdev", &["type", "managed", "mode"]),
    &[
        with_children(reference("source", &[]), &[ADDRESS]),
        ADDRESS,
        ALIAS,
        reference("driver", &["iommufd"]),
        reference("acpi", &["nodeset"]),
    ],
);

const DISK: Rule = with_children(
    kubevirt("disk", &["type", "device"]),
    &[
        kubevirt("source", &["file"]),
        kubevirt("target", &["bus", "dev"]),
        kubevirt("driver", &["name", "type"]),
        kubevirt("alias", &["name"]),
    ],
);

const SERIAL: Rule = with_children(
    kubevirt("serial", &["type"]),
    &[
        kubevirt("target", &["port"]),
        kubevirt("source", &["mode", "path"]),
        kubevirt("log", &["file", "append"]),
    ],
);

const CONSOLE: Rule = with_children(kubevirt("console", &["type"]), &[kubevirt("target", &["type", "port"])]);

const DEVICES: Rule = with_children(
    reference("devices", &[]),
    &[
        with_text(reference("emulator", &[]), Text::Kept),
        CONTROLLER,
        HOSTDEV,
        DISK,
        SERIAL,
        CONSOLE,
        kubevirt("memballoon", &["model"]),
    ],
);

const METADATA: Rule = with_children(
    reference("metadata", &[]),
    &[Rule {
        ns: Some(KUBEVIRT_NS),
        whole_subtree: true,
        ..reference("kubevirt", &[])
    }],
);

const QEMU_COMMANDLINE: Rule = Rule {
    ns: Some(QEMU_NS),
    ..with_children(
        reference("commandline", &[]),
        &[
            Rule {
                ns: Some(QEMU_NS),
                ..reference("arg", &["value"])
            },
            Rule {
                ns: Some(QEMU_NS),
                ..reference("env", &["name", "value"])
            },
        ],
    )
};

/// The root: what `api.DomainSpec` holds of a `<domain>`.
pub const DOMAIN: Rule = with_children(
    kubevirt("domain", &["type"]),
    &[
        with_text(kubevirt("name", &[]), Text::Kept),
        with_text(reference("memory", &["unit"]), Text::Unsigned),
        with_text(reference("currentMemory", &["unit"]), Text::Unsigned),
        with_text(kubevirt("vcpu", &["placement"]), Text::Unsigned),
        OS,
        CPU,
        NUMATUNE,
        with_children(reference("features", &[]), &[reference("acpi", &[])]),
        DEVICES,
        METADATA,
        QEMU_COMMANDLINE,
    ],
);

/// Why the unmarshal fails (virt-launcher then fails the VM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnmarshalError(pub String);

impl std::fmt::Display for UnmarshalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "api.DomainSpec unmarshal: {}", self.0)
    }
}

/// An element as the model holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub ns: Option<String>,
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub text: String,
    pub children: Vec<Node>,
}

impl Node {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Sets (or adds) attribute `key`.
    pub fn set_attr(&mut self, key: &str, value: &str) {
        match self.attrs.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value.to_string(),
            None => self.attrs.push((key.to_string(), value.to_string())),
        }
    }

    /// Calls `edit` on every descendant reached by the local names of `path` (all matches).
    pub fn for_each_mut(&mut self, path: &[&str], edit: &mut dyn FnMut(&mut Node)) {
        let Some((first, rest)) = path.split_first() else {
            edit(self);
            return;
        };
        for child in self.children.iter_mut().filter(|c| c.name == *first) {
            child.for_each_mut(rest, edit);
        }
    }

    /// Every descendant reached by the local names of `path`.
    pub fn all(&self, path: &[&str]) -> Vec<&Node> {
        let Some((first, rest)) = path.split_first() else {
            return vec![self];
        };
        self.children
            .iter()
            .filter(|c| c.name == *first)
            .flat_map(|c| c.all(rest))
            .collect()
    }
}

/// An element being read: its node and the rule it matched (`None`: dropped, with its subtree).
struct Open {
    node: Node,
    rule: Option<&'static Rule>,
    /// Inside a whole kept subtree.
    keep_all: bool,
}

fn namespace_of(resolved: &ResolveResult<'_>) -> Option<String> {
    match resolved {
        ResolveResult::Bound(ns) => Some(ns.as_ref().to_string()),
        ResolveResult::Unbound => None,
        ResolveResult::Unknown(prefix) => Some(format!("unknown-prefix:{prefix}")),
    }
}

fn child_rule(parent: &Open, ns: Option<&str>, name: &str) -> Option<&'static Rule> {
    parent.rule?.children.iter().find(|r| r.name == name && r.ns == ns)
}

/// Reads an element's attributes; keeps those `rule` names (all of them inside a kept subtree).
fn read_attrs(
    start: &BytesStart<'_>,
    rule: Option<&Rule>,
    keep_all: bool,
) -> Result<Vec<(String, String)>, UnmarshalError> {
    let mut attrs = Vec::new();
    for attr in start.attributes() {
        let attr = attr.map_err(|e| UnmarshalError(format!("attribute: {e}")))?;
        let key = attr.key.local_name().as_ref().to_string();
        let qualified = attr.key.as_ref().to_string();
        if qualified == "xmlns" || qualified.starts_with("xmlns:") {
            continue;
        }
        let value = attr
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| UnmarshalError(format!("attribute {qualified}: {e}")))?
            .into_owned();
        if let Some(r) = rule
            && r.unsigned_attrs.contains(&key.as_str())
            && value.trim().parse::<u64>().is_err()
        {
            return Err(UnmarshalError(format!(
                "<{} {key}='{value}'>: not an unsigned integer",
                r.name
            )));
        }
        let kept = keep_all || rule.is_some_and(|r| r.attrs.contains(&key.as_str()));
        if kept {
            attrs.push((key, value));
        }
    }
    Ok(attrs)
}

fn open(stack: &[Open], resolved: &ResolveResult<'_>, start: &BytesStart<'_>) -> Result<Open, UnmarshalError> {
    let ns = namespace_of(resolved);
    let name = start.local_name().as_ref().to_string();
    let (rule, keep_all) = match stack.last() {
        None if name == DOMAIN.name && ns.is_none() => (Some(&DOMAIN), false),
        None => {
            return Err(UnmarshalError(format!(
                "expected element type <domain> but have <{name}>"
            )));
        }
        Some(parent) if parent.keep_all => (None, true),
        Some(parent) => match child_rule(parent, ns.as_deref(), &name) {
            Some(r) => (Some(r), r.whole_subtree),
            None => (None, false),
        },
    };
    let attrs = read_attrs(start, rule, keep_all)?;
    Ok(Open {
        node: Node {
            ns,
            name,
            attrs,
            text: String::new(),
            children: Vec::new(),
        },
        rule,
        keep_all,
    })
}

/// Whether `open` is held by the model (matched a rule, or inside a kept subtree).
fn held(open: &Open) -> bool {
    open.rule.is_some() || open.keep_all
}

/// Ends the element on top of the stack: checks typed text, attaches it to its parent if held.
fn close(stack: &mut Vec<Open>, root: &mut Option<Node>) -> Result<(), UnmarshalError> {
    let done = stack.pop().ok_or_else(|| UnmarshalError("unbalanced end tag".into()))?;
    let is_held = held(&done);
    let text_kind = done.rule.map_or(Text::Dropped, |r| r.text);
    let mut node = done.node;
    if text_kind == Text::Unsigned && node.text.trim().parse::<u64>().is_err() {
        return Err(UnmarshalError(format!(
            "<{}>{}</{}>: not an unsigned integer",
            node.name, node.text, node.name
        )));
    }
    let in_kept_subtree = done.keep_all || done.rule.is_some_and(|r| r.whole_subtree);
    if (text_kind == Text::Dropped && !in_kept_subtree) || node.text.trim().is_empty() {
        node.text.clear();
    }
    // A dropped element drops its subtree; its ancestors stay.
    match stack.last_mut() {
        Some(parent) if is_held && held(parent) => parent.node.children.push(node),
        Some(_) => {}
        None => *root = Some(node),
    }
    Ok(())
}

fn push_text(stack: &mut [Open], text: &str) {
    if let Some(top) = stack.last_mut() {
        top.node.text.push_str(text);
    }
}

fn resolve_entity(name: &str) -> Result<&'static str, UnmarshalError> {
    match name {
        "amp" => Ok("&"),
        "lt" => Ok("<"),
        "gt" => Ok(">"),
        "quot" => Ok("\""),
        "apos" => Ok("'"),
        other => Err(UnmarshalError(format!("unknown entity &{other};"))),
    }
}

/// Unmarshals `xml` as virt-launcher does: fails on malformed XML, a root other than `<domain>`
/// and a non-numeric value in an integer field; returns what the model holds.
pub fn unmarshal(xml: &str) -> Result<Node, UnmarshalError> {
    let mut reader = NsReader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Node> = None;
    while root.is_none() {
        let position = reader.buffer_position();
        let (resolved, event) = reader
            .read_resolved_event()
            .map_err(|e| UnmarshalError(format!("XML syntax error after byte {position}: {e}")))?;
        match event {
            Event::Start(start) => {
                let opened = open(&stack, &resolved, &start)?;
                stack.push(opened);
            }
            Event::Empty(start) => {
                let opened = open(&stack, &resolved, &start)?;
                stack.push(opened);
                close(&mut stack, &mut root)?;
            }
            Event::End(_) => close(&mut stack, &mut root)?,
            Event::Text(text) => push_text(&mut stack, &text.xml_content(XmlVersion::Implicit1_0)),
            Event::CData(text) => push_text(&mut stack, &text.xml_content(XmlVersion::Implicit1_0)),
            Event::GeneralRef(reference) => {
                let resolved_char = reference
                    .resolve_char_ref()
                    .map_err(|e| UnmarshalError(format!("character reference: {e}")))?;
                match resolved_char {
                    Some(c) => push_text(&mut stack, &c.to_string()),
                    None => push_text(&mut stack, resolve_entity(&reference)?),
                }
            }
            Event::Eof => break,
            Event::DocType(_) | Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(UnmarshalError("unexpected EOF inside an element".into()));
    }
    root.ok_or_else(|| UnmarshalError("EOF: no <domain> element".into()))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn uses_namespace(node: &Node, ns: &str) -> bool {
    node.ns.as_deref() == Some(ns) || node.children.iter().any(|c| uses_namespace(c, ns))
}

fn write_node(node: &Node, parent_ns: Option<&str>, depth: usize, out: &mut String) {
    let indent = "  ".repeat(depth);
    let qualified = match node.ns.as_deref() {
        Some(QEMU_NS) => format!("qemu:{}", node.name),
        _ => node.name.clone(),
    };
    out.push_str(&format!("{indent}<{qualified}"));
    for (key, value) in &node.attrs {
        out.push_str(&format!(" {key}=\"{}\"", escape(value)));
    }
    if depth == 0 && uses_namespace(node, QEMU_NS) {
        out.push_str(&format!(" xmlns:qemu=\"{QEMU_NS}\""));
    }
    if let Some(ns) = node.ns.as_deref()
        && ns != QEMU_NS
        && Some(ns) != parent_ns
    {
        out.push_str(&format!(" xmlns=\"{}\"", escape(ns)));
    }
    if node.children.is_empty() && node.text.is_empty() {
        out.push_str("/>\n");
        return;
    }
    out.push('>');
    out.push_str(&escape(&node.text));
    if !node.children.is_empty() {
        out.push('\n');
        for child in &node.children {
            write_node(child, node.ns.as_deref(), depth + 1, out);
        }
        out.push_str(&indent);
    }
    out.push_str(&format!("</{qualified}>\n"));
}

/// Marshals what the model holds back to domain XML (document order, two-space indent).
pub fn marshal(root: &Node) -> String {
    let mut out = String::new();
    write_node(root, None, 0, &mut out);
    out
}

/// The round trip: the domain as virt-launcher re-marshals it from `api.DomainSpec`.
pub fn project(xml: &str) -> Result<String, UnmarshalError> {
    Ok(marshal(&unmarshal(xml)?))
}
