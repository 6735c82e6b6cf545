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
    let mut out = Vec::new();
    for part in parts.filter(|p| !p.is_empty()) {
        let (kind, fields) = part.split_once(':').unwrap_or((part, ""));
        let field_err = |why: String| InstructionError::Field {
            kind: kind.to_string(),
            why,
        };
        let mut cell = None;
        let mut size = None;
        let mut memmap = None;
        let mut path = None;
        let mut align = None;
        for kv in fields.split(',').filter(|f| !f.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| field_err(format!("field {kv:?} is not key=value")))?;
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| field_err(format!("{k}={v:?} is not a number")))
            };
            match k {
                "cell" => cell = Some(u32::try_from(num(v)?).map_err(|_| field_err(format!("cell={v} out of range")))?),
                "size" => size = Some(num(v)?),
                "type" => {
                    memmap = Some(
                        MemmapType::parse(v)
                            .ok_or_else(|| field_err(format!("type={v:?} (expected spm, reserved or normal)")))?,
                    )
                }
                "path" => path = Some(v.to_string()),
                "align" => align = Some(num(v)?),
                _ => return Err(field_err(format!("unknown field {k:?}"))),
            }
        }
        let cell = cell.ok_or_else(|| field_err("missing cell=".into()))?;
        let size_bytes = size.ok_or_else(|| field_err("missing size=".into()))?;
        out.push(match kind {
            "memmap-type" => Instruction::MemmapType {
                cell,
                size_bytes,
                memmap: memmap.ok_or_else(|| field_err("missing type=".into()))?,
            },
            "sp-mem" => Instruction::SpMem { cell, size_bytes },
            "dax" => Instruction::Dax {
                cell,
                size_bytes,
                path: path.ok_or_else(|| field_err("missing path=".into()))?,
                align: align.ok_or_else(|| field_err("missing align=".into()))?,
            },
            other => return Err(InstructionError::UnknownKind(other.to_string())),
        });
    }
    Ok(out)
}

/// The wire form of `instructions` (inverse of [`parse`]).
pub fn render(instructions: &[Instruction]) -> String {
    let mut s = String::from(VERSION);
    for i in instructions {
        s.push(';');
        s.push_str(&i.to_string());
    }
    s
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
}
