//! The QEMU argv adapter's pure core: libvirt's QEMU arguments plus the instructions the rewriter
//! recorded (`HBM_QEMU_INSTRUCTIONS`, see [`hbm_rewrite::instructions`]) plus what the installed QEMU
//! speaks ([`Capabilities`]) in, the arguments to exec the real QEMU with out.
//!
//! libvirt writes each guest NUMA cell K as a memory backend object `ram-nodeK` (JSON
//! `-object {"qom-type":...}` in libvirt >= 7, key=value before) and `-numa node,nodeid=K,...,
//! memdev=ram-nodeK` (always key=value, no id). The transforms:
//!
//! | instruction   | change                                                                                     |
//! |---------------|--------------------------------------------------------------------------------------------|
//! | `memmap-type` | append `,memmap-type=<type>` to cell K's `-numa node`                                      |
//! | `sp-mem`      | drop `memdev=` from cell K's `-numa node`, add `-device sp-mem,id=hbm-sp-memK,memdev=..,node=K` right after it, lower `-m` size by the cell's size and leave room for device memory (`maxmem`, `slots`) |
//! | `dax`         | replace cell K's `memory-backend-ram`/`memory-backend-memfd` object by `memory-backend-file,id=<same>,mem-path=<dev>,share=on,align=<align>,size=<same>` in the same form (JSON or key=value) |
//!
//! Every instruction's `size` must equal the size of cell K's backend in argv. No instructions:
//! the arguments come back unchanged.

use serde_json::{Map, Value};

use crate::probe::Capabilities;
use hbm_rewrite::instructions::Instruction;

/// Why libvirt's arguments cannot be transformed as the domain asks. Each message names the cell
/// or option concerned and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdapterError {
    #[error(
        "cell {cell}: the instructions name guest NUMA cell {cell} but the QEMU arguments have no `-numa node,nodeid={cell}`; redefine the domain through the rewriter so that its cells and instructions agree"
    )]
    CellNotInArgv { cell: u32 },
    #[error(
        "cell {cell}: `-numa node,nodeid={cell}` has no memdev=, so there is no memory backend to change; give the cell memory in the domain XML"
    )]
    CellWithoutMemdev { cell: u32 },
    #[error(
        "cell {cell}: memdev {memdev:?} of `-numa node,nodeid={cell}` has no `-object` with that id in the arguments"
    )]
    BackendMissing { cell: u32, memdev: String },
    #[error(
        "cell {cell}: the rewriter recorded {recorded} bytes but the cell's backend {memdev:?} has {found} bytes; the domain changed after it was rewritten: rewrite it again"
    )]
    SizeMismatch {
        cell: u32,
        memdev: String,
        recorded: u64,
        found: u64,
    },
    #[error(
        "cell {cell}: the domain asks for the {dialect} SPM dialect but {qemu} (QEMU {version}) speaks {speaks}; install a QEMU that has it, or rewrite the domain with a dialect this QEMU speaks (kernel-cmdline or none)"
    )]
    DialectUnsupported {
        cell: u32,
        dialect: &'static str,
        qemu: String,
        version: String,
        speaks: String,
    },
    #[error(
        "cell {cell}: cannot back the cell with {path}: its backend {memdev:?} is {qom_type}, only memory-backend-ram and memory-backend-memfd are replaced (drop hugepages/file backing for this cell)"
    )]
    BackendKind {
        cell: u32,
        memdev: String,
        qom_type: String,
        path: String,
    },
    #[error("cell {cell}: dax instruction has align={align}, which does not divide the cell size {size} (or is 0)")]
    DaxAlign { cell: u32, size: u64, align: u64 },
    #[error("cell {cell}: instructions {first} and {second} cannot both apply to one cell")]
    Conflict {
        cell: u32,
        first: &'static str,
        second: &'static str,
    },
    #[error("argument {option} {value:?}: {why}")]
    BadOption { option: String, value: String, why: String },
    #[error("the QEMU arguments have no -m option, so sp-mem cannot move memory out of RAM; libvirt always writes one")]
    NoMemorySize,
    #[error(
        "sp-mem: the sp-mem cells hold {device} bytes but -m gives only {ram} bytes of RAM; at least one cell must keep normal memory"
    )]
    SpMemTooLarge { ram: u64, device: u64 },
}

/// QEMU options that take no argument (everything else takes exactly one, as in QEMU's own
/// option table). Only used to keep the scan aligned on option boundaries.
const FLAGS: &[&str] = &[
    "-S",
    "-s",
    "-snapshot",
    "-nographic",
    "-no-user-config",
    "-nodefaults",
    "-nodefconfig",
    "-no-shutdown",
    "-no-reboot",
    "-no-acpi",
    "-no-hpet",
    "-enable-kvm",
    "-daemonize",
    "-full-screen",
    "-enable-sync-profile",
    "-no-quit",
    "-alt-grab",
    "-ctrl-grab",
    "-no-frame",
    "-win2k-hack",
    "-no-fd-bootchk",
    "-usb",
    "-portrait",
    "-singlestep",
    "-only-migratable",
    "-enable-fips",
    "-preconfig",
    "-xen-attach",
    "-xen-domid-restrict",
    "-version",
    "-h",
    "-help",
];

/// One option with an argument, by position in argv.
#[derive(Debug)]
struct OptionArg<'a> {
    /// Canonical name with one leading dash (`--object` becomes `-object`).
    name: String,
    /// Index of the argument (the option itself is at `value_index - 1`).
    value_index: usize,
    value: &'a str,
}

fn scan(argv: &[String]) -> Vec<OptionArg<'_>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < argv.len() {
        let token = argv[i].as_str();
        if token.starts_with('-') && token.len() > 1 {
            let name = if token.starts_with("--") { &token[1..] } else { token };
            if !FLAGS.contains(&name) && i + 1 < argv.len() {
                out.push(OptionArg {
                    name: name.to_string(),
                    value_index: i + 1,
                    value: argv[i + 1].as_str(),
                });
                i += 2;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// A QEMU key=value option argument (`node,nodeid=1,memdev=ram-node1`): the first element may be
/// a bare value for the option's implied key; `,,` is a literal comma.
#[derive(Clone, Debug, PartialEq, Eq)]
struct KeyVal {
    implied: Option<String>,
    pairs: Vec<(String, Option<String>)>,
}

impl KeyVal {
    fn parse(text: &str) -> KeyVal {
        let mut elements = Vec::new();
        let mut current = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c == ',' {
                if chars.peek() == Some(&',') {
                    chars.next();
                    current.push(',');
                } else {
                    elements.push(std::mem::take(&mut current));
                }
            } else {
                current.push(c);
            }
        }
        elements.push(current);
        let mut implied = None;
        let mut pairs = Vec::new();
        for (n, element) in elements.into_iter().enumerate() {
            match element.split_once('=') {
                Some((k, v)) => pairs.push((k.to_string(), Some(v.to_string()))),
                None if n == 0 => implied = Some(element),
                None => pairs.push((element, None)),
            }
        }
        KeyVal { implied, pairs }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    fn set(&mut self, key: &str, value: String) {
        match self.pairs.iter_mut().find(|(k, _)| k == key) {
            Some(pair) => pair.1 = Some(value),
            None => self.pairs.push((key.to_string(), Some(value))),
        }
    }

    fn remove(&mut self, key: &str) {
        self.pairs.retain(|(k, _)| k != key);
    }

    fn render(&self) -> String {
        let escape = |s: &str| s.replace(',', ",,");
        let mut parts = Vec::new();
        if let Some(implied) = &self.implied {
            parts.push(escape(implied));
        }
        for (k, v) in &self.pairs {
            match v {
                Some(v) => parts.push(format!("{k}={}", escape(v))),
                None => parts.push(k.clone()),
            }
        }
        parts.join(",")
    }
}

/// Parses a QEMU size (`1073741824`, `1024M`, `1048576k`, `1G`); `default_unit` applies when there
/// is no suffix (bytes for `-object size=`, MiB for `-m`).
pub fn parse_size(text: &str, default_unit: u64) -> Option<u64> {
    let text = text.trim();
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    let number: u64 = digits.parse().ok()?;
    let unit = match suffix.to_ascii_lowercase().as_str() {
        "" => default_unit,
        "b" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        "e" => 1 << 60,
        _ => return None,
    };
    number.checked_mul(unit)
}

/// A memory backend object as libvirt wrote it.
#[derive(Debug)]
enum ObjectForm {
    Json(Map<String, Value>),
    KeyVal(KeyVal),
}

#[derive(Debug)]
struct ObjectArg {
    value_index: usize,
    form: ObjectForm,
}

impl ObjectArg {
    fn parse(value_index: usize, value: &str) -> Option<ObjectArg> {
        let form = if value.trim_start().starts_with('{') {
            ObjectForm::Json(serde_json::from_str::<Map<String, Value>>(value).ok()?)
        } else {
            ObjectForm::KeyVal(KeyVal::parse(value))
        };
        Some(ObjectArg { value_index, form })
    }

    fn id(&self) -> Option<&str> {
        match &self.form {
            ObjectForm::Json(map) => map.get("id").and_then(Value::as_str),
            ObjectForm::KeyVal(kv) => kv.get("id"),
        }
    }

    fn qom_type(&self) -> Option<&str> {
        match &self.form {
            ObjectForm::Json(map) => map.get("qom-type").and_then(Value::as_str),
            ObjectForm::KeyVal(kv) => kv.implied.as_deref().or_else(|| kv.get("qom-type")),
        }
    }

    fn size(&self, argv: &[String]) -> Result<u64, AdapterError> {
        let bad = |why: &str| AdapterError::BadOption {
            option: "-object".into(),
            value: argv.get(self.value_index).cloned().unwrap_or_default(),
            why: why.into(),
        };
        match &self.form {
            ObjectForm::Json(map) => match map.get("size") {
                Some(Value::Number(n)) => n.as_u64().ok_or_else(|| bad("size is not a whole number of bytes")),
                Some(Value::String(s)) => parse_size(s, 1).ok_or_else(|| bad("size is not a QEMU size")),
                _ => Err(bad("memory backend without a size")),
            },
            ObjectForm::KeyVal(kv) => match kv.get("size") {
                Some(s) => parse_size(s, 1).ok_or_else(|| bad("size is not a QEMU size")),
                None => Err(bad("memory backend without a size")),
            },
        }
    }
}

/// Properties of a ram/memfd backend that a device-dax file backend must not carry: NUMA
/// placement (the device decides where its pages are) and memfd-only knobs. The rest (prealloc,
/// dump, merge, x-use-canonical-path-for-ramblock-id, ...) is kept.
const DROPPED_FOR_DAX: &[&str] = &[
    "qom-type",
    "host-nodes",
    "policy",
    "hugetlb",
    "hugetlbsize",
    "seal",
    "share",
    "mem-path",
    "align",
];

fn dax_object(object: &ObjectArg, path: &str, align: u64, size: u64) -> String {
    match &object.form {
        ObjectForm::Json(map) => {
            let mut out = Map::new();
            out.insert("qom-type".into(), Value::from("memory-backend-file"));
            out.insert("id".into(), map.get("id").cloned().unwrap_or(Value::Null));
            out.insert("mem-path".into(), Value::from(path));
            out.insert("share".into(), Value::Bool(true));
            out.insert("align".into(), Value::from(align));
            out.insert("size".into(), Value::from(size));
            for (k, v) in map {
                if !DROPPED_FOR_DAX.contains(&k.as_str()) && !out.contains_key(k) {
                    out.insert(k.clone(), v.clone());
                }
            }
            render_json_in_order(&out, &["qom-type", "id", "mem-path", "share", "align", "size"])
        }
        ObjectForm::KeyVal(kv) => {
            let mut out = KeyVal {
                implied: Some("memory-backend-file".into()),
                pairs: Vec::new(),
            };
            out.set("id", kv.get("id").unwrap_or_default().to_string());
            out.set("mem-path", path.to_string());
            out.set("share", "on".into());
            out.set("align", align.to_string());
            out.set("size", size.to_string());
            for (k, v) in &kv.pairs {
                if !DROPPED_FOR_DAX.contains(&k.as_str()) && out.pairs.iter().all(|(ok, _)| ok != k) {
                    out.pairs.push((k.clone(), v.clone()));
                }
            }
            out.render()
        }
    }
}

/// serde_json's map sorts keys; QEMU does not care, people reading the log do: `first` keys come
/// first, in that order, then the rest.
fn render_json_in_order(map: &Map<String, Value>, first: &[&str]) -> String {
    let mut parts = Vec::new();
    let key = |k: &str| Value::from(k).to_string();
    for k in first {
        if let Some(v) = map.get(*k) {
            parts.push(format!("{}:{v}", key(k)));
        }
    }
    for (k, v) in map {
        if !first.contains(&k.as_str()) {
            parts.push(format!("{}:{v}", key(k)));
        }
    }
    format!("{{{}}}", parts.join(","))
}

/// The `-m` option: RAM size, hotplug slots, maximum memory, in bytes.
#[derive(Debug, PartialEq, Eq)]
struct MemoryOption {
    value_index: usize,
    size: u64,
    slots: Option<u64>,
    maxmem: Option<u64>,
}

impl MemoryOption {
    fn parse(value_index: usize, value: &str) -> Result<MemoryOption, AdapterError> {
        let bad = |why: String| AdapterError::BadOption {
            option: "-m".into(),
            value: value.into(),
            why,
        };
        let kv = KeyVal::parse(value);
        let size_text = kv
            .get("size")
            .or(kv.implied.as_deref())
            .ok_or_else(|| bad("no RAM size".into()))?;
        let size = parse_size(size_text, 1 << 20).ok_or_else(|| bad(format!("{size_text:?} is not a QEMU size")))?;
        let slots = match kv.get("slots") {
            Some(s) => Some(s.parse().map_err(|_| bad(format!("slots={s:?} is not a number")))?),
            None => None,
        };
        let maxmem = match kv.get("maxmem") {
            Some(s) => Some(parse_size(s, 1 << 20).ok_or_else(|| bad(format!("maxmem={s:?} is not a QEMU size")))?),
            None => None,
        };
        if let Some((k, _)) = kv
            .pairs
            .iter()
            .find(|(k, _)| !matches!(k.as_str(), "size" | "slots" | "maxmem"))
        {
            return Err(bad(format!("unknown -m property {k:?}")));
        }
        Ok(MemoryOption {
            value_index,
            size,
            slots,
            maxmem,
        })
    }

    fn render(&self) -> String {
        let kib = |bytes: u64| {
            if bytes.is_multiple_of(1024) {
                format!("{}k", bytes / 1024)
            } else {
                format!("{bytes}b")
            }
        };
        let mut s = format!("size={}", kib(self.size));
        if let Some(slots) = self.slots {
            s.push_str(&format!(",slots={slots}"));
        }
        if let Some(maxmem) = self.maxmem {
            s.push_str(&format!(",maxmem={}", kib(maxmem)));
        }
        s
    }
}

fn kind_name(i: &Instruction) -> &'static str {
    match i {
        Instruction::MemmapType { .. } => "memmap-type",
        Instruction::SpMem { .. } => "sp-mem",
        Instruction::Dax { .. } => "dax",
    }
}

fn size_of(i: &Instruction) -> u64 {
    match i {
        Instruction::MemmapType { size_bytes, .. }
        | Instruction::SpMem { size_bytes, .. }
        | Instruction::Dax { size_bytes, .. } => *size_bytes,
    }
}

/// Checks that the instructions can apply together and that the QEMU in `facts` speaks the
/// dialects they ask for. Needs no argv.
pub fn check(instructions: &[Instruction], facts: &Capabilities) -> Result<(), AdapterError> {
    for (n, a) in instructions.iter().enumerate() {
        for b in &instructions[n + 1..] {
            let pair = (kind_name(a), kind_name(b));
            let compatible = matches!(
                pair,
                ("sp-mem", "dax") | ("dax", "sp-mem") | ("memmap-type", "dax") | ("dax", "memmap-type")
            );
            if a.cell() == b.cell() && !compatible {
                return Err(AdapterError::Conflict {
                    cell: a.cell(),
                    first: pair.0,
                    second: pair.1,
                });
            }
        }
        let supported = match a {
            Instruction::MemmapType { .. } => facts.memmap_type,
            Instruction::SpMem { .. } => facts.sp_mem,
            Instruction::Dax { .. } => true,
        };
        if !supported {
            return Err(AdapterError::DialectUnsupported {
                cell: a.cell(),
                dialect: kind_name(a),
                qemu: facts.binary.clone(),
                version: facts.version.clone(),
                speaks: facts.dialects(),
            });
        }
        if let Instruction::Dax {
            cell,
            size_bytes,
            align,
            ..
        } = a
            && (*align == 0 || size_bytes % align != 0)
        {
            return Err(AdapterError::DaxAlign {
                cell: *cell,
                size: *size_bytes,
                align: *align,
            });
        }
    }
    Ok(())
}

/// Applies `instructions` to libvirt's QEMU arguments `argv` (without the program name).
/// `facts` is what the installed QEMU speaks (from the probe). No instructions: `argv` unchanged.
pub fn transform(
    argv: &[String],
    instructions: &[Instruction],
    facts: &Capabilities,
) -> Result<Vec<String>, AdapterError> {
    if instructions.is_empty() {
        return Ok(argv.to_vec());
    }
    check(instructions, facts)?;
    let options = scan(argv);
    // (index, option as it will be written, memdev as libvirt wrote it)
    let mut numa: Vec<(usize, KeyVal, Option<String>)> = Vec::new();
    let mut objects: Vec<ObjectArg> = Vec::new();
    let mut memory = None;
    for opt in &options {
        match opt.name.as_str() {
            "-numa" => {
                let kv = KeyVal::parse(opt.value);
                if kv.implied.as_deref().or_else(|| kv.get("type")) == Some("node") {
                    let memdev = kv.get("memdev").map(String::from);
                    numa.push((opt.value_index, kv, memdev));
                }
            }
            "-object" => objects.extend(ObjectArg::parse(opt.value_index, opt.value)),
            "-m" => memory = Some((opt.value_index, opt.value)),
            _ => {}
        }
    }

    let mut replaced: Vec<(usize, String)> = Vec::new();
    let mut inserted: Vec<(usize, [String; 2])> = Vec::new();
    let mut sp_mem_bytes = 0u64;
    let mut sp_mem_count = 0u64;
    for instruction in instructions {
        let cell = instruction.cell();
        let cell_text = cell.to_string();
        let (numa_index, node, memdev) = numa
            .iter_mut()
            .find(|(_, kv, _)| kv.get("nodeid") == Some(cell_text.as_str()))
            .ok_or(AdapterError::CellNotInArgv { cell })?;
        // The backend as libvirt named it, whatever an earlier instruction did to this node.
        let memdev = memdev.clone().ok_or(AdapterError::CellWithoutMemdev { cell })?;
        let object = objects
            .iter()
            .find(|o| o.id() == Some(memdev.as_str()))
            .ok_or_else(|| AdapterError::BackendMissing {
                cell,
                memdev: memdev.clone(),
            })?;
        let found = object.size(argv)?;
        if found != size_of(instruction) {
            return Err(AdapterError::SizeMismatch {
                cell,
                memdev,
                recorded: size_of(instruction),
                found,
            });
        }
        match instruction {
            Instruction::MemmapType { memmap, .. } => {
                node.set("memmap-type", memmap.as_str().to_string());
                replaced.push((*numa_index, node.render()));
            }
            Instruction::SpMem { .. } => {
                node.remove("memdev");
                replaced.push((*numa_index, node.render()));
                inserted.push((
                    *numa_index,
                    [
                        "-device".to_string(),
                        format!("sp-mem,id=hbm-sp-mem{cell},memdev={memdev},node={cell}"),
                    ],
                ));
                sp_mem_bytes += found;
                sp_mem_count += 1;
            }
            Instruction::Dax { path, align, .. } => {
                let qom_type = object.qom_type().unwrap_or_default();
                if !matches!(qom_type, "memory-backend-ram" | "memory-backend-memfd") {
                    return Err(AdapterError::BackendKind {
                        cell,
                        memdev,
                        qom_type: qom_type.to_string(),
                        path: path.clone(),
                    });
                }
                replaced.push((object.value_index, dax_object(object, path, *align, found)));
            }
        }
    }

    if sp_mem_count > 0 {
        let (index, value) = memory.ok_or(AdapterError::NoMemorySize)?;
        let mut m = MemoryOption::parse(index, value)?;
        if sp_mem_bytes >= m.size {
            return Err(AdapterError::SpMemTooLarge {
                ram: m.size,
                device: sp_mem_bytes,
            });
        }
        // Device memory is maxmem - size: lowering size by the moved bytes leaves exactly that
        // much more room; without maxmem the old size becomes the maximum. One more slot per
        // device keeps room if sp-mem counts against slots as pc-dimm does.
        m.maxmem = Some(m.maxmem.unwrap_or(m.size));
        m.size -= sp_mem_bytes;
        m.slots = Some(m.slots.unwrap_or(0) + sp_mem_count);
        replaced.push((m.value_index, m.render()));
    }

    let mut out = Vec::with_capacity(argv.len() + inserted.len() * 2);
    for (i, arg) in argv.iter().enumerate() {
        // Later replacements of the same index (e.g. memmap-type then sp-mem) carry all changes.
        match replaced.iter().rev().find(|(at, _)| *at == i) {
            Some((_, value)) => out.push(value.clone()),
            None => out.push(arg.clone()),
        }
        for (_, pair) in inserted.iter().filter(|(at, _)| *at == i) {
            out.extend(pair.iter().cloned());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hbm_rewrite::instructions::{MemmapType, parse};

    fn caps(memmap_type: bool, sp_mem: bool) -> Capabilities {
        Capabilities {
            binary: "/usr/bin/qemu-system-x86_64".into(),
            version: "10.0.2".into(),
            memmap_type,
            sp_mem,
            acpi_generic_initiator: true,
        }
    }

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    const KEYVAL: &str = "-name guest=t -S -m size=1572864k,slots=2,maxmem=4194304k -object memory-backend-ram,id=ram-node0,size=1073741824,host-nodes=0,policy=bind -numa node,nodeid=0,cpus=0-1,memdev=ram-node0 -object memory-backend-memfd,id=ram-node1,size=512M,host-nodes=1,policy=bind,prealloc=on -numa node,nodeid=1,memdev=ram-node1 -nodefaults";

    #[test]
    fn keyval_memmap_type() {
        let i = vec![Instruction::MemmapType {
            cell: 1,
            size_bytes: 512 << 20,
            memmap: MemmapType::Spm,
        }];
        let out = transform(&args(KEYVAL), &i, &caps(true, false)).unwrap();
        assert_eq!(
            out,
            args(&KEYVAL.replace("memdev=ram-node1 ", "memdev=ram-node1,memmap-type=spm "))
        );
    }

    #[test]
    fn keyval_sp_mem_with_maxmem() {
        let i = vec![Instruction::SpMem {
            cell: 1,
            size_bytes: 512 << 20,
        }];
        let out = transform(&args(KEYVAL), &i, &caps(false, true)).unwrap();
        let expected = KEYVAL
            .replace(
                "size=1572864k,slots=2,maxmem=4194304k",
                "size=1048576k,slots=3,maxmem=4194304k",
            )
            .replace(
                "-numa node,nodeid=1,memdev=ram-node1 ",
                "-numa node,nodeid=1 -device sp-mem,id=hbm-sp-mem1,memdev=ram-node1,node=1 ",
            );
        assert_eq!(out, args(&expected));
    }

    #[test]
    fn plain_m_gets_maxmem_and_a_slot() {
        let argv = args(
            "-m 1536 -object memory-backend-ram,id=ram-node0,size=1G -numa node,nodeid=0,memdev=ram-node0 -object memory-backend-ram,id=ram-node1,size=512M -numa node,nodeid=1,memdev=ram-node1",
        );
        let out = transform(
            &argv,
            &[Instruction::SpMem {
                cell: 1,
                size_bytes: 512 << 20,
            }],
            &caps(false, true),
        )
        .unwrap();
        assert_eq!(out[1], "size=1048576k,slots=1,maxmem=1572864k");
    }

    #[test]
    fn keyval_dax_keeps_id_size_and_neutral_properties() {
        let i = vec![Instruction::Dax {
            cell: 1,
            size_bytes: 512 << 20,
            path: "/dev/dax0.0".into(),
            align: 2 << 20,
        }];
        let out = transform(&args(KEYVAL), &i, &caps(false, false)).unwrap();
        let expected = KEYVAL.replace(
            "memory-backend-memfd,id=ram-node1,size=512M,host-nodes=1,policy=bind,prealloc=on",
            "memory-backend-file,id=ram-node1,mem-path=/dev/dax0.0,share=on,align=2097152,size=536870912,prealloc=on",
        );
        assert_eq!(out, args(&expected));
    }

    #[test]
    fn json_dax() {
        let argv = vec![
            "-object".to_string(),
            r#"{"qom-type":"memory-backend-ram","id":"ram-node1","size":536870912,"host-nodes":[1],"policy":"bind"}"#
                .to_string(),
            "-numa".to_string(),
            "node,nodeid=1,memdev=ram-node1".to_string(),
        ];
        let i = parse("v1;dax:cell=1,size=536870912,path=/dev/dax1.0,align=2097152").unwrap();
        let out = transform(&argv, &i, &caps(false, false)).unwrap();
        assert_eq!(
            out[1],
            r#"{"qom-type":"memory-backend-file","id":"ram-node1","mem-path":"/dev/dax1.0","share":true,"align":2097152,"size":536870912}"#
        );
        assert_eq!(out[2..], argv[2..]);
    }

    #[test]
    fn dax_and_sp_mem_compose_in_either_order() {
        let i =
            parse("v1;dax:cell=1,size=536870912,path=/dev/dax0.0,align=2097152;sp-mem:cell=1,size=536870912").unwrap();
        let out = transform(&args(KEYVAL), &i, &caps(false, true)).unwrap();
        let reversed: Vec<Instruction> = i.iter().rev().cloned().collect();
        assert_eq!(transform(&args(KEYVAL), &reversed, &caps(false, true)).unwrap(), out);
        assert!(out.contains(&"sp-mem,id=hbm-sp-mem1,memdev=ram-node1,node=1".to_string()));
        assert!(
            out.iter()
                .any(|a| a.starts_with("memory-backend-file,id=ram-node1,mem-path=/dev/dax0.0"))
        );
    }

    #[test]
    fn refusals() {
        let a = args(KEYVAL);
        let spm = |cell, size_bytes| vec![Instruction::SpMem { cell, size_bytes }];
        assert_eq!(
            transform(&a, &spm(7, 1), &caps(true, true)),
            Err(AdapterError::CellNotInArgv { cell: 7 })
        );
        assert_eq!(
            transform(&a, &spm(1, 1 << 30), &caps(true, true)),
            Err(AdapterError::SizeMismatch {
                cell: 1,
                memdev: "ram-node1".into(),
                recorded: 1 << 30,
                found: 512 << 20
            })
        );
        let e = transform(&a, &spm(1, 512 << 20), &caps(false, false)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cell 1: the domain asks for the sp-mem SPM dialect but /usr/bin/qemu-system-x86_64 (QEMU 10.0.2) speaks neither memmap-type nor sp-mem; install a QEMU that has it, or rewrite the domain with a dialect this QEMU speaks (kernel-cmdline or none)"
        );
        let both = vec![
            Instruction::SpMem {
                cell: 1,
                size_bytes: 512 << 20,
            },
            Instruction::MemmapType {
                cell: 1,
                size_bytes: 512 << 20,
                memmap: MemmapType::Spm,
            },
        ];
        assert_eq!(
            transform(&a, &both, &caps(true, true)),
            Err(AdapterError::Conflict {
                cell: 1,
                first: "sp-mem",
                second: "memmap-type"
            })
        );
        let dax = vec![Instruction::Dax {
            cell: 1,
            size_bytes: 512 << 20,
            path: "/dev/dax0.0".into(),
            align: 3 << 20,
        }];
        assert_eq!(
            transform(&a, &dax, &caps(true, true)),
            Err(AdapterError::DaxAlign {
                cell: 1,
                size: 512 << 20,
                align: 3 << 20
            })
        );
        let hugepages = args(
            "-object memory-backend-file,id=ram-node1,mem-path=/dev/hugepages,size=512M -numa node,nodeid=1,memdev=ram-node1",
        );
        let dax = vec![Instruction::Dax {
            cell: 1,
            size_bytes: 512 << 20,
            path: "/dev/dax0.0".into(),
            align: 2 << 20,
        }];
        assert!(matches!(
            transform(&hugepages, &dax, &caps(true, true)),
            Err(AdapterError::BackendKind { .. })
        ));
        let no_memdev = args("-m 1024 -numa node,nodeid=1");
        assert_eq!(
            transform(&no_memdev, &spm(1, 1), &caps(true, true)),
            Err(AdapterError::CellWithoutMemdev { cell: 1 })
        );
    }

    #[test]
    fn no_instructions_is_identity_and_flags_keep_the_scan_aligned() {
        let a = args("-S -numa node,nodeid=1,memdev=m1 -object memory-backend-ram,id=m1,size=1M -append -numa");
        assert_eq!(transform(&a, &[], &caps(false, false)).unwrap(), a);
        let i = vec![Instruction::MemmapType {
            cell: 1,
            size_bytes: 1 << 20,
            memmap: MemmapType::Reserved,
        }];
        let out = transform(&a, &i, &caps(true, false)).unwrap();
        assert_eq!(out[2], "node,nodeid=1,memdev=m1,memmap-type=reserved");
        assert_eq!(out[6], "-numa");
        assert_eq!(out.len(), 7);
    }

    #[test]
    fn keyval_commas_round_trip() {
        let kv = KeyVal::parse("memory-backend-file,id=a,mem-path=/x,,y");
        assert_eq!(kv.get("mem-path"), Some("/x,y"));
        assert_eq!(kv.render(), "memory-backend-file,id=a,mem-path=/x,,y");
        assert_eq!(parse_size("2G", 1), Some(2 << 30));
        assert_eq!(parse_size("1536", 1 << 20), Some(1536 << 20));
        assert_eq!(parse_size("12Q", 1), None);
    }
}
