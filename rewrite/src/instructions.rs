//! The instructions the rewriter records for the QEMU argv adapter, and their wire form.
//!
//! The rewriter cannot reach libvirt's `-numa node` options from the domain XML, so for the
//! `memmap-type` and `sp-mem` dialects and for device-dax backing it records what to change in a
//! `<qemu:env name='HBM_QEMU_INSTRUCTIONS' value='...'/>` entry and points `<emulator>` at the
//! adapter; libvirt passes the variable to the emulator process, where the adapter reads it.
//!
//! Wire form (one line, no spaces):
//! `v1;<kind>:cell=<K>,size=<bytes>[,<key>=<value>...];...`
//!
//! | kind          | extra keys                           | adapter action                                        |
//! |---------------|--------------------------------------|-------------------------------------------------------|
//! | `memmap-type` | `type=spm\|reserved\|normal`          | append `,memmap-type=<type>` to cell K's `-numa node` |
//! | `sp-mem`      | -                                    | move cell K's memdev into `-device sp-mem`            |
//! | `dax`         | `path=/dev/daxX.Y`, `align=<bytes>`  | back cell K with `memory-backend-file` on the device  |
//!
//! `size` is the cell's size as the rewriter wrote it; the adapter checks it against argv.
//! The grammar is strict: an unknown kind, a field given twice, a field of another kind, a
//! missing field or a value that does not parse is an error naming the instruction and field.

use std::fmt;

/// Name of the environment variable that carries the instructions.
pub const ENV_VAR: &str = "HBM_QEMU_INSTRUCTIONS";
/// First field of the wire form.
pub const VERSION: &str = "v1";

/// E820 type the `memmap-type` dialect asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemmapType {
    Spm,
    Reserved,
    Normal,
}

impl MemmapType {
    pub fn as_str(self) -> &'static str {
        match self {
            MemmapType::Spm => "spm",
            MemmapType::Reserved => "reserved",
            MemmapType::Normal => "normal",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "spm" => Some(MemmapType::Spm),
            "reserved" => Some(MemmapType::Reserved),
            "normal" => Some(MemmapType::Normal),
            _ => None,
        }
    }
}

/// One change to libvirt's argv for guest NUMA cell `cell`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Instruction {
    MemmapType {
        cell: u32,
        size_bytes: u64,
        memmap: MemmapType,
    },
    SpMem {
        cell: u32,
        size_bytes: u64,
    },
    Dax {
        cell: u32,
        size_bytes: u64,
        path: String,
        align: u64,
    },
}

impl Instruction {
    pub fn cell(&self) -> u32 {
        match self {
            Instruction::MemmapType { cell, .. } | Instruction::SpMem { cell, .. } | Instruction::Dax { cell, .. } => {
                *cell
            }
        }
    }
}

/// Why an instruction string cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstructionError {
    #[error("{ENV_VAR}: unsupported version {0:?} (this build understands {VERSION})")]
    Version(String),
    #[error("{ENV_VAR}: unknown instruction {0:?} (known: memmap-type, sp-mem, dax)")]
    UnknownKind(String),
    #[error("{ENV_VAR}: instruction {kind:?}: {why}")]
    Field { kind: String, why: String },
}

/// Parses the wire form. Empty input means "no instructions".
pub fn parse(text: &str) -> Result<Vec<Instruction>, InstructionError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let mut parts = text.split(';');
    let version = parts.next().unwrap_or_default();
    if version != VERSION {
        return Err(InstructionError::Version(version.to_string()));
    }
    parts.filter(|part| !part.is_empty()).map(parse_instruction).collect()
}

/// The fields of one instruction, as given.
#[derive(Default)]
struct Fields {
    cell: Option<u32>,
    size: Option<u64>,
    memmap: Option<MemmapType>,
    path: Option<String>,
    align: Option<u64>,
}

/// Every field any instruction kind has.
const ALL_FIELDS: [&str; 5] = ["cell", "size", "type", "path", "align"];

/// The fields of instruction kind `kind` (all required), `None` for an unknown kind.
fn fields_of(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "memmap-type" => Some(&["cell", "size", "type"]),
        "sp-mem" => Some(&["cell", "size"]),
        "dax" => Some(&["cell", "size", "path", "align"]),
        _ => None,
    }
}

/// One `<kind>:<key>=<value>,...` instruction: a known kind, each of its fields exactly once,
/// no field of another kind.
fn parse_instruction(part: &str) -> Result<Instruction, InstructionError> {
    let (kind, fields) = part.split_once(':').unwrap_or((part, ""));
    let allowed = fields_of(kind).ok_or_else(|| InstructionError::UnknownKind(kind.to_string()))?;
    let field_err = |why: &str| InstructionError::Field {
        kind: kind.to_string(),
        why: why.to_string(),
    };
    let given = parse_fields(kind, allowed, fields)?;
    let cell = given.cell.ok_or_else(|| field_err("missing cell="))?;
    let size_bytes = given.size.ok_or_else(|| field_err("missing size="))?;
    Ok(match kind {
        "memmap-type" => Instruction::MemmapType {
            cell,
            size_bytes,
            memmap: given.memmap.ok_or_else(|| field_err("missing type="))?,
        },
        "sp-mem" => Instruction::SpMem { cell, size_bytes },
        _ => Instruction::Dax {
            cell,
            size_bytes,
            path: given.path.ok_or_else(|| field_err("missing path="))?,
            align: given.align.ok_or_else(|| field_err("missing align="))?,
        },
    })
}

/// The `key=value` fields of an instruction of kind `kind`, whose fields are `allowed`.
fn parse_fields(kind: &str, allowed: &[&str], fields: &str) -> Result<Fields, InstructionError> {
    let field_err = |why: String| InstructionError::Field {
        kind: kind.to_string(),
        why,
    };
    let mut given = Fields::default();
    let mut seen: Vec<&str> = Vec::new();
    for field in fields.split(',').filter(|field| !field.is_empty()) {
        let (key, value) = field
            .split_once('=')
            .ok_or_else(|| field_err(format!("field {field:?} is not key=value")))?;
        if !ALL_FIELDS.contains(&key) {
            return Err(field_err(format!("unknown field {key:?}")));
        }
        if !allowed.contains(&key) {
            return Err(field_err(format!(
                "field {key:?} does not belong to {kind} (its fields: {})",
                allowed.join(", ")
            )));
        }
        if seen.contains(&key) {
            return Err(field_err(format!("field {key:?} given twice")));
        }
        seen.push(key);
        set_field(&mut given, key, value).map_err(field_err)?;
    }
    Ok(given)
}

/// Stores the value of field `key` (one of [`ALL_FIELDS`]).
fn set_field(given: &mut Fields, key: &str, value: &str) -> Result<(), String> {
    let number = |value: &str| {
        value
            .parse::<u64>()
            .map_err(|_| format!("{key}={value:?} is not a number"))
    };
    match key {
        "cell" => {
            let cell = u32::try_from(number(value)?).map_err(|_| format!("cell={value} out of range"))?;
            given.cell = Some(cell);
        }
        "size" => given.size = Some(number(value)?),
        "type" => {
            let memmap =
                MemmapType::parse(value).ok_or_else(|| format!("type={value:?} (expected spm, reserved or normal)"))?;
            given.memmap = Some(memmap);
        }
        "path" => given.path = Some(value.to_string()),
        _ => given.align = Some(number(value)?),
    }
    Ok(())
}

/// The wire form of `instructions` (inverse of [`parse`]).
pub fn render(instructions: &[Instruction]) -> String {
    let mut wire = String::from(VERSION);
    for instruction in instructions {
        wire.push(';');
        wire.push_str(&instruction.to_string());
    }
    wire
}

impl fmt::Display for Instruction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Instruction::MemmapType {
                cell,
                size_bytes,
                memmap,
            } => {
                write!(f, "memmap-type:cell={cell},size={size_bytes},type={}", memmap.as_str())
            }
            Instruction::SpMem { cell, size_bytes } => write!(f, "sp-mem:cell={cell},size={size_bytes}"),
            Instruction::Dax {
                cell,
                size_bytes,
                path,
                align,
            } => {
                write!(f, "dax:cell={cell},size={size_bytes},path={path},align={align}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let all = vec![
            Instruction::MemmapType {
                cell: 1,
                size_bytes: 1 << 30,
                memmap: MemmapType::Spm,
            },
            Instruction::SpMem {
                cell: 2,
                size_bytes: 512 << 20,
            },
            Instruction::Dax {
                cell: 3,
                size_bytes: 1 << 30,
                path: "/dev/dax0.0".into(),
                align: 2 << 20,
            },
        ];
        let wire = render(&all);
        assert_eq!(
            wire,
            "v1;memmap-type:cell=1,size=1073741824,type=spm;sp-mem:cell=2,size=536870912;dax:cell=3,size=1073741824,path=/dev/dax0.0,align=2097152"
        );
        assert_eq!(parse(&wire).unwrap(), all);
        assert_eq!(parse("").unwrap(), vec![]);
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        assert_eq!(
            parse("v2;sp-mem:cell=1,size=1"),
            Err(InstructionError::Version("v2".into()))
        );
        assert_eq!(
            parse("v1;frob:cell=1,size=1"),
            Err(InstructionError::UnknownKind("frob".into()))
        );
        assert!(
            parse("v1;sp-mem:cell=x,size=1")
                .unwrap_err()
                .to_string()
                .contains("not a number")
        );
        assert!(
            parse("v1;memmap-type:cell=1,size=1,type=odd")
                .unwrap_err()
                .to_string()
                .contains("expected spm")
        );
        assert!(
            parse("v1;dax:cell=1,size=1")
                .unwrap_err()
                .to_string()
                .contains("missing path")
        );
    }

    #[test]
    fn field_errors_name_the_kind_and_field() {
        let field = |why: &str| {
            Err(InstructionError::Field {
                kind: "sp-mem".into(),
                why: why.into(),
            })
        };
        assert_eq!(parse("v1;sp-mem:size=1"), field("missing cell="));
        assert_eq!(parse("v1;sp-mem:cell=1"), field("missing size="));
        assert_eq!(parse("v1;sp-mem:cell"), field("field \"cell\" is not key=value"));
        assert_eq!(
            parse("v1;sp-mem:cell=1,size=1,colour=red"),
            field("unknown field \"colour\"")
        );
        assert_eq!(
            parse("v1;sp-mem:cell=4294967296,size=1"),
            field("cell=4294967296 out of range")
        );
        assert_eq!(
            parse(" v1;;sp-mem:cell=1,size=2; "),
            Ok(vec![Instruction::SpMem { cell: 1, size_bytes: 2 }])
        );
    }

    #[test]
    fn the_grammar_is_strict_about_kinds_duplicates_and_foreign_fields() {
        assert_eq!(
            parse("v1;frob:cell=1"),
            Err(InstructionError::UnknownKind("frob".into()))
        );
        assert_eq!(parse("v1;frob"), Err(InstructionError::UnknownKind("frob".into())));
        assert_eq!(
            parse("v1;sp-mem:cell=1,cell=0,size=1"),
            Err(InstructionError::Field {
                kind: "sp-mem".into(),
                why: "field \"cell\" given twice".into()
            })
        );
        assert_eq!(
            parse("v1;sp-mem:cell=1,size=1,path=/x,type=spm"),
            Err(InstructionError::Field {
                kind: "sp-mem".into(),
                why: "field \"path\" does not belong to sp-mem (its fields: cell, size)".into()
            })
        );
        assert_eq!(
            parse("v1;memmap-type:cell=1,size=1,type=spm,align=2"),
            Err(InstructionError::Field {
                kind: "memmap-type".into(),
                why: "field \"align\" does not belong to memmap-type (its fields: cell, size, type)".into()
            })
        );
        assert_eq!(
            parse("v1;dax:cell=1,size=1,path=/dev/dax0.0,align=2,type=spm"),
            Err(InstructionError::Field {
                kind: "dax".into(),
                why: "field \"type\" does not belong to dax (its fields: cell, size, path, align)".into()
            })
        );
    }
}
