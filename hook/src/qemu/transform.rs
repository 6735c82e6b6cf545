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

use super::argv::{KeyVal, MemoryOption, ObjectArg, dax_object, scan};
use super::probe::Capabilities;
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
    let mut parsed = ParsedArgv::read(argv);
    let mut edits = Edits::default();
    for instruction in instructions {
        apply_instruction(instruction, &mut parsed, argv, &mut edits)?;
    }
    if edits.sp_mem_count > 0 {
        shrink_ram_for_sp_mem(parsed.memory, &mut edits)?;
    }
    Ok(edits.render(argv))
}

/// A `-numa node` option: where its value sits, the option as it will be written, and the memdev
/// as libvirt wrote it (an earlier instruction may drop it from `option`).
struct NumaNode {
    value_index: usize,
    option: KeyVal,
    memdev: Option<String>,
}

/// The parts of libvirt's arguments the instructions touch.
struct ParsedArgv<'a> {
    numa: Vec<NumaNode>,
    objects: Vec<ObjectArg>,
    /// The `-m` value and its index.
    memory: Option<(usize, &'a str)>,
}

impl<'a> ParsedArgv<'a> {
    fn read(argv: &'a [String]) -> ParsedArgv<'a> {
        let mut parsed = ParsedArgv {
            numa: Vec::new(),
            objects: Vec::new(),
            memory: None,
        };
        for opt in scan(argv) {
            match opt.name.as_str() {
                "-numa" => {
                    let option = KeyVal::parse(opt.value);
                    if option.implied.as_deref().or_else(|| option.get("type")) == Some("node") {
                        let memdev = option.get("memdev").map(String::from);
                        parsed.numa.push(NumaNode {
                            value_index: opt.value_index,
                            option,
                            memdev,
                        });
                    }
                }
                "-object" => parsed.objects.extend(ObjectArg::parse(opt.value_index, opt.value)),
                "-m" => parsed.memory = Some((opt.value_index, opt.value)),
                _ => {}
            }
        }
        parsed
    }
}

/// The changes to argv, applied at the end by [`Edits::render`].
#[derive(Default)]
struct Edits {
    /// (index, new value); a later entry for the same index carries all changes to it.
    replaced: Vec<(usize, String)>,
    /// Two arguments to insert after the index.
    inserted: Vec<(usize, [String; 2])>,
    sp_mem_bytes: u64,
    sp_mem_count: u64,
}

impl Edits {
    fn render(&self, argv: &[String]) -> Vec<String> {
        let mut out = Vec::with_capacity(argv.len() + self.inserted.len() * 2);
        for (i, arg) in argv.iter().enumerate() {
            // Later replacements of the same index (e.g. memmap-type then sp-mem) carry all changes.
            match self.replaced.iter().rev().find(|(at, _)| *at == i) {
                Some((_, value)) => out.push(value.clone()),
                None => out.push(arg.clone()),
            }
            for (_, pair) in self.inserted.iter().filter(|(at, _)| *at == i) {
                out.extend(pair.iter().cloned());
            }
        }
        out
    }
}

/// One instruction: finds its cell and backend, checks the recorded size, records the edit.
fn apply_instruction(
    instruction: &Instruction,
    parsed: &mut ParsedArgv<'_>,
    argv: &[String],
    edits: &mut Edits,
) -> Result<(), AdapterError> {
    let cell = instruction.cell();
    let cell_text = cell.to_string();
    let node = parsed
        .numa
        .iter_mut()
        .find(|node| node.option.get("nodeid") == Some(cell_text.as_str()))
        .ok_or(AdapterError::CellNotInArgv { cell })?;
    // The backend as libvirt named it, whatever an earlier instruction did to this node.
    let memdev = node.memdev.clone().ok_or(AdapterError::CellWithoutMemdev { cell })?;
    let object = parsed
        .objects
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
            node.option.set("memmap-type", memmap.as_str().to_string());
            edits.replaced.push((node.value_index, node.option.render()));
        }
        Instruction::SpMem { .. } => move_to_sp_mem(cell, node, &memdev, found, edits),
        Instruction::Dax { path, align, .. } => {
            let backend = dax_backend(cell, memdev, object, path, *align, found)?;
            edits.replaced.push((object.value_index, backend));
        }
    }
    Ok(())
}

/// sp-mem: the node loses its memdev, a `-device sp-mem` right after it holds the backend.
fn move_to_sp_mem(cell: u32, node: &mut NumaNode, memdev: &str, size: u64, edits: &mut Edits) {
    node.option.remove("memdev");
    edits.replaced.push((node.value_index, node.option.render()));
    edits.inserted.push((
        node.value_index,
        [
            "-device".to_string(),
            format!("sp-mem,id=hbm-sp-mem{cell},memdev={memdev},node={cell}"),
        ],
    ));
    edits.sp_mem_bytes += size;
    edits.sp_mem_count += 1;
}

/// dax: the ram/memfd backend rewritten as a file backend on the dax device.
fn dax_backend(
    cell: u32,
    memdev: String,
    object: &ObjectArg,
    path: &str,
    align: u64,
    size: u64,
) -> Result<String, AdapterError> {
    let qom_type = object.qom_type().unwrap_or_default();
    if !matches!(qom_type, "memory-backend-ram" | "memory-backend-memfd") {
        return Err(AdapterError::BackendKind {
            cell,
            memdev,
            qom_type: qom_type.to_string(),
            path: path.to_string(),
        });
    }
    Ok(dax_object(object, path, align, size))
}

/// Lowers `-m` by the bytes moved to sp-mem devices and leaves room for them as device memory.
fn shrink_ram_for_sp_mem(memory: Option<(usize, &str)>, edits: &mut Edits) -> Result<(), AdapterError> {
    let (index, value) = memory.ok_or(AdapterError::NoMemorySize)?;
    let mut m = MemoryOption::parse(index, value)?;
    if edits.sp_mem_bytes >= m.size {
        return Err(AdapterError::SpMemTooLarge {
            ram: m.size,
            device: edits.sp_mem_bytes,
        });
    }
    // Device memory is maxmem - size: lowering size by the moved bytes leaves exactly that
    // much more room; without maxmem the old size becomes the maximum. One more slot per
    // device keeps room if sp-mem counts against slots as pc-dimm does.
    m.maxmem = Some(m.maxmem.unwrap_or(m.size));
    m.size -= edits.sp_mem_bytes;
    m.slots = Some(m.slots.unwrap_or(0) + edits.sp_mem_count);
    edits.replaced.push((m.value_index, m.render()));
    Ok(())
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
}
