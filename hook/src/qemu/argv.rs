//! Reading and writing libvirt's QEMU arguments: the option scan (which token is whose value),
//! QEMU's key=value syntax, memory backend objects (JSON or key=value) and the `-m` option. What
//! [`super::transform`] edits, nothing more.

use serde_json::{Map, Value};

use super::transform::AdapterError;

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
pub(super) struct OptionArg<'a> {
    /// Canonical name with one leading dash (`--object` becomes `-object`).
    pub(super) name: String,
    /// Index of the argument (the option itself is at `value_index - 1`).
    pub(super) value_index: usize,
    pub(super) value: &'a str,
}

pub(super) fn scan(argv: &[String]) -> Vec<OptionArg<'_>> {
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
pub(super) struct KeyVal {
    pub(super) implied: Option<String>,
    pub(super) pairs: Vec<(String, Option<String>)>,
}

impl KeyVal {
    pub(super) fn parse(text: &str) -> KeyVal {
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

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    pub(super) fn set(&mut self, key: &str, value: String) {
        match self.pairs.iter_mut().find(|(k, _)| k == key) {
            Some(pair) => pair.1 = Some(value),
            None => self.pairs.push((key.to_string(), Some(value))),
        }
    }

    pub(super) fn remove(&mut self, key: &str) {
        self.pairs.retain(|(k, _)| k != key);
    }

    pub(super) fn render(&self) -> String {
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
pub fn parse_qemu_size(text: &str, default_unit: u64) -> Option<u64> {
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
pub(super) struct ObjectArg {
    pub(super) value_index: usize,
    form: ObjectForm,
}

impl ObjectArg {
    pub(super) fn parse(value_index: usize, value: &str) -> Option<ObjectArg> {
        let form = if value.trim_start().starts_with('{') {
            ObjectForm::Json(serde_json::from_str::<Map<String, Value>>(value).ok()?)
        } else {
            ObjectForm::KeyVal(KeyVal::parse(value))
        };
        Some(ObjectArg { value_index, form })
    }

    pub(super) fn id(&self) -> Option<&str> {
        match &self.form {
            ObjectForm::Json(map) => map.get("id").and_then(Value::as_str),
            ObjectForm::KeyVal(kv) => kv.get("id"),
        }
    }

    pub(super) fn qom_type(&self) -> Option<&str> {
        match &self.form {
            ObjectForm::Json(map) => map.get("qom-type").and_then(Value::as_str),
            ObjectForm::KeyVal(kv) => kv.implied.as_deref().or_else(|| kv.get("qom-type")),
        }
    }

    pub(super) fn size(&self, argv: &[String]) -> Result<u64, AdapterError> {
        let bad = |why: &str| AdapterError::BadOption {
            option: "-object".into(),
            value: argv.get(self.value_index).cloned().unwrap_or_default(),
            why: why.into(),
        };
        match &self.form {
            ObjectForm::Json(map) => match map.get("size") {
                Some(Value::Number(n)) => n.as_u64().ok_or_else(|| bad("size is not a whole number of bytes")),
                Some(Value::String(s)) => parse_qemu_size(s, 1).ok_or_else(|| bad("size is not a QEMU size")),
                _ => Err(bad("memory backend without a size")),
            },
            ObjectForm::KeyVal(kv) => match kv.get("size") {
                Some(s) => parse_qemu_size(s, 1).ok_or_else(|| bad("size is not a QEMU size")),
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

pub(super) fn dax_object(object: &ObjectArg, path: &str, align: u64, size: u64) -> String {
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
pub(super) struct MemoryOption {
    pub(super) value_index: usize,
    pub(super) size: u64,
    pub(super) slots: Option<u64>,
    pub(super) maxmem: Option<u64>,
}

impl MemoryOption {
    pub(super) fn parse(value_index: usize, value: &str) -> Result<MemoryOption, AdapterError> {
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
        let size =
            parse_qemu_size(size_text, 1 << 20).ok_or_else(|| bad(format!("{size_text:?} is not a QEMU size")))?;
        let slots = match kv.get("slots") {
            Some(s) => Some(s.parse().map_err(|_| bad(format!("slots={s:?} is not a number")))?),
            None => None,
        };
        let maxmem = match kv.get("maxmem") {
            Some(s) => {
                Some(parse_qemu_size(s, 1 << 20).ok_or_else(|| bad(format!("maxmem={s:?} is not a QEMU size")))?)
            }
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

    pub(super) fn render(&self) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyval_commas_round_trip() {
        let kv = KeyVal::parse("memory-backend-file,id=a,mem-path=/x,,y");
        assert_eq!(kv.get("mem-path"), Some("/x,y"));
        assert_eq!(kv.render(), "memory-backend-file,id=a,mem-path=/x,,y");
        assert_eq!(parse_qemu_size("2G", 1), Some(2 << 30));
        assert_eq!(parse_qemu_size("1536", 1 << 20), Some(1536 << 20));
        assert_eq!(parse_qemu_size("12Q", 1), None);
    }
}
