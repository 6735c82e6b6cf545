//! The pure transform on argv captured from the real libvirt 9.0 (`virsh domxml-to-native
//! qemu-argv`, JSON `-object` form, ram and memfd backends) and on the key=value form; the
//! transformed argv are then given to the real QEMU 10, which must accept the memory layout
//! (`sp-mem` spelled `pc-dimm`, a released device with the same memdev/node properties; dax
//! backing on a regular shared-memory file) and reject `memmap-type`, which it does not speak.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::libvirt::{domxml_to_native, require_libvirt};
use hbm_hook::qemu::transform::transform;
use hbm_rewrite::instructions::parse;

use crate::common::qemu::{REAL_QEMU, caps};

/// q35, cell 0 with both vCPUs (1 GiB), CPU-less cell 1 (512 MiB) bound to host node 0.
fn domain(memory_backing: &str) -> String {
    format!(
        "<domain type='qemu'>
  <name>hbm-adapter-argv</name>
  <memory unit='MiB'>1536</memory>
  <vcpu>2</vcpu>
  {memory_backing}
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <features><acpi/></features>
  <cpu><numa>
    <cell id='0' cpus='0-1' memory='1024' unit='MiB'/>
    <cell id='1' memory='512' unit='MiB'/>
  </numa></cpu>
  <numatune><memnode cellid='1' mode='strict' nodeset='0'/></numatune>
  <devices><emulator>{REAL_QEMU}</emulator><memballoon model='none'/></devices>
</domain>"
    )
}

fn libvirt_argv(memory_backing: &str) -> Vec<String> {
    require_libvirt();
    domxml_to_native(&domain(memory_backing)).unwrap().args
}

fn position(argv: &[String], value: &str) -> usize {
    argv.iter()
        .position(|a| a == value)
        .unwrap_or_else(|| panic!("{value} not in {argv:?}"))
}

/// The libvirt argv must look as the adapter expects (guards the test's own premise).
fn assert_libvirt_shape(argv: &[String], kind: &str) {
    assert_eq!(argv[position(argv, "-m") + 1], "1536");
    assert_eq!(
        argv[position(argv, "node,nodeid=1,memdev=ram-node1") - 2],
        format!(r#"{{"qom-type":"{kind}","id":"ram-node1","size":536870912,"host-nodes":[0],"policy":"bind"}}"#)
    );
}

#[test]
fn memmap_type_on_libvirt_json_argv() {
    let argv = libvirt_argv("");
    assert_libvirt_shape(&argv, "memory-backend-ram");
    let i = parse("v1;memmap-type:cell=1,size=536870912,type=spm").unwrap();
    let out = transform(&argv, &i, &caps(true, false)).unwrap();
    let mut expected = argv.clone();
    let at = position(&argv, "node,nodeid=1,memdev=ram-node1");
    expected[at] = "node,nodeid=1,memdev=ram-node1,memmap-type=spm".into();
    assert_eq!(out, expected);
}

#[test]
fn sp_mem_on_libvirt_json_argv() {
    let argv = libvirt_argv("");
    let i = parse("v1;sp-mem:cell=1,size=536870912").unwrap();
    let out = transform(&argv, &i, &caps(false, true)).unwrap();
    let mut expected = argv.clone();
    expected[position(&argv, "-m") + 1] = "size=1048576k,slots=1,maxmem=1572864k".into();
    let at = position(&argv, "node,nodeid=1,memdev=ram-node1");
    expected[at] = "node,nodeid=1".into();
    expected.insert(at + 1, "-device".into());
    expected.insert(at + 2, "sp-mem,id=hbm-sp-mem1,memdev=ram-node1,node=1".into());
    assert_eq!(out, expected);
}

#[test]
fn dax_on_libvirt_json_argv_ram_and_memfd() {
    for (backing, kind) in [
        ("", "memory-backend-ram"),
        (
            "<memoryBacking><source type='memfd'/></memoryBacking>",
            "memory-backend-memfd",
        ),
    ] {
        let argv = libvirt_argv(backing);
        assert_libvirt_shape(&argv, kind);
        let i = parse("v1;dax:cell=1,size=536870912,path=/dev/dax0.0,align=2097152").unwrap();
        let out = transform(&argv, &i, &caps(false, false)).unwrap();
        let mut expected = argv.clone();
        let at = position(&argv, "node,nodeid=1,memdev=ram-node1") - 2;
        expected[at] = r#"{"qom-type":"memory-backend-file","id":"ram-node1","mem-path":"/dev/dax0.0","share":true,"align":2097152,"size":536870912}"#.into();
        assert_eq!(out, expected, "{kind}");
    }
}

/// Runs the real QEMU with the guest-memory part of `argv` (machine, accel, cpu, -m, -smp,
/// memory backends, -numa, -device) until QMP answers, then quits. Ok = QEMU accepted the layout.
fn real_qemu_accepts(argv: &[String]) -> Result<(), String> {
    let keep = ["-machine", "-accel", "-cpu", "-m", "-smp", "-numa", "-device"];
    let mut args: Vec<String> = Vec::new();
    for w in argv.windows(2) {
        let memory_object = w[0] == "-object" && w[1].contains("memory-backend");
        if keep.contains(&w[0].as_str()) || memory_object {
            args.push(w[0].clone());
            // A released device with sp-mem's shape (memdev + node, placed in device memory).
            args.push(w[1].replace("sp-mem,", "pc-dimm,"));
        }
    }
    let mut child = Command::new(REAL_QEMU)
        .args(&args)
        .args([
            "-accel",
            "tcg",
            "-display",
            "none",
            "-nodefaults",
            "-S",
            "-qmp",
            "stdio",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n");
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stdout.contains("host-qmp-quit") {
        Ok(())
    } else {
        Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

#[test]
fn real_qemu_accepts_the_transformed_memory_layouts() {
    let argv = libvirt_argv("");
    real_qemu_accepts(&argv).unwrap();

    let sp_mem = transform(
        &argv,
        &parse("v1;sp-mem:cell=1,size=536870912").unwrap(),
        &caps(false, true),
    )
    .unwrap();
    real_qemu_accepts(&sp_mem).unwrap();

    let (_shm, wire) = dax_stand_in();
    let dax = transform(&argv, &parse(&wire).unwrap(), &caps(false, false)).unwrap();
    real_qemu_accepts(&dax).unwrap();

    // Both at once: the sp-mem device backed by the file.
    let wire = format!("{wire};sp-mem:cell=1,size=536870912");
    let both = transform(&argv, &parse(&wire).unwrap(), &caps(false, true)).unwrap();
    real_qemu_accepts(&both).unwrap();

    // What the probe protects against: QEMU 10 does not know memmap-type.
    let memmap = parse("v1;memmap-type:cell=1,size=536870912,type=spm").unwrap();
    let err = real_qemu_accepts(&transform(&argv, &memmap, &caps(true, false)).unwrap()).unwrap_err();
    assert!(err.contains("Invalid parameter 'memmap-type'"), "{err}");
}

#[test]
fn real_qemu_accepts_the_transformed_keyval_form() {
    let argv: Vec<String> = [
        "-machine",
        "q35",
        "-m",
        "size=1572864k,slots=2,maxmem=4194304k",
        "-smp",
        "2",
        "-object",
        "memory-backend-ram,id=ram-node0,size=1073741824",
        "-numa",
        "node,nodeid=0,cpus=0-1,memdev=ram-node0",
        "-object",
        "memory-backend-memfd,id=ram-node1,size=512M,prealloc=off",
        "-numa",
        "node,nodeid=1,memdev=ram-node1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    real_qemu_accepts(&argv).unwrap();
    let out = transform(
        &argv,
        &parse("v1;sp-mem:cell=1,size=536870912").unwrap(),
        &caps(false, true),
    )
    .unwrap();
    assert_eq!(out[3], "size=1048576k,slots=3,maxmem=4194304k");
    assert_eq!(
        &out[12..16],
        [
            "-numa",
            "node,nodeid=1",
            "-device",
            "sp-mem,id=hbm-sp-mem1,memdev=ram-node1,node=1"
        ]
    );
    real_qemu_accepts(&out).unwrap();

    let (shm, wire) = dax_stand_in();
    let out = transform(&argv, &parse(&wire).unwrap(), &caps(false, false)).unwrap();
    assert_eq!(
        out[11],
        format!(
            "memory-backend-file,id=ram-node1,mem-path={},share=on,align=2097152,size=536870912,prealloc=off",
            shm.path().display()
        )
    );
    real_qemu_accepts(&out).unwrap();
}

/// Corpus definitions with guest NUMA cells that libvirt 9.0 turns into an argv on this machine
/// (the others need hugetlbfs, numad, old machine types, or are invalid: libvirt refuses them).
const CORPUS_WITH_CELLS: &[&str] = &[
    "libvirt/cpu-numa-disjoint.xml",
    "libvirt/cpu-numa-disordered.xml",
    "libvirt/cpu-numa-memory-oldstyle.xml",
    "libvirt/cpu-numa-memshared.xml",
    "libvirt/disk-vhostuser-numa.xml",
    "libvirt/fd-memory-numa-topology.xml",
    "libvirt/memory-hotplug-nvdimm-access.xml",
    "libvirt/memory-hotplug-nvdimm-label.xml",
    "libvirt/memory-hotplug-nvdimm.xml",
    "libvirt/numatune-distances.xml",
    "libvirt/numatune-hmat-none.xml",
    "libvirt/pci-expander-bus.xml",
    "libvirt/pcie-expander-bus.xml",
];

#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    cells: u32,
    memmap_ok: u32,
    dax_ok: u32,
    sp_mem_ok: u32,
    without_memdev: u32,
    file_backed_refused: u32,
    only_cell_refused: u32,
}

/// Every cell of every corpus definition above, through each transform: exact outcome per cell
/// (changed where the instruction says, refused with the right error otherwise), tallied so that
/// a corpus that stopped converting cannot pass silently.
#[test]
fn every_cell_of_the_libvirt_corpus() {
    use hbm_hook::qemu::argv::parse_qemu_size;
    use hbm_hook::qemu::transform::AdapterError;
    use hbm_rewrite::instructions::{Instruction, MemmapType};
    require_libvirt();
    let mut tally = Tally::default();
    for name in CORPUS_WITH_CELLS {
        let file = crate::common::corpus::file(name);
        let native = domxml_to_native(&file.text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let argv = native.args.clone();
        let m = argv[position(&argv, "-m") + 1].replace("size=", "");
        let ram = parse_qemu_size(m.split(',').next().unwrap(), 1 << 20).unwrap();
        for node in native.options("-numa").into_iter().filter(|o| o.kind == "node") {
            tally.cells += 1;
            let cell: u32 = node.get("nodeid").unwrap().parse().unwrap();
            let Some(memdev) = node.get("memdev") else {
                let i = [Instruction::MemmapType {
                    cell,
                    size_bytes: 1,
                    memmap: MemmapType::Spm,
                }];
                assert_eq!(
                    transform(&argv, &i, &caps(true, true)),
                    Err(AdapterError::CellWithoutMemdev { cell })
                );
                tally.without_memdev += 1;
                continue;
            };
            let backend = native.object(memdev).unwrap();
            let size: u64 = backend.get("size").unwrap().parse().unwrap();
            let at = position(&argv, &node.raw);

            let i = [Instruction::MemmapType {
                cell,
                size_bytes: size,
                memmap: MemmapType::Reserved,
            }];
            let out = transform(&argv, &i, &caps(true, false)).unwrap();
            let mut expected = argv.clone();
            expected[at] = format!("{},memmap-type=reserved", node.raw);
            assert_eq!(out, expected, "{name} cell {cell}");
            tally.memmap_ok += 1;

            let i = [Instruction::Dax {
                cell,
                size_bytes: size,
                path: "/dev/dax0.0".into(),
                align: 1 << 20,
            }];
            match transform(&argv, &i, &caps(false, false)) {
                Ok(out) => {
                    assert!(
                        matches!(backend.kind.as_str(), "memory-backend-ram" | "memory-backend-memfd"),
                        "{name}"
                    );
                    let object_at = position(&argv, &backend.raw);
                    assert_eq!(out.len(), argv.len());
                    for (n, (a, b)) in argv.iter().zip(&out).enumerate() {
                        if n != object_at {
                            assert_eq!(a, b, "{name} cell {cell}: only the backend changes");
                        }
                    }
                    let new = crate::common::libvirt::QemuOption::parse(&out[object_at]).unwrap();
                    assert_eq!(new.kind, "memory-backend-file");
                    assert_eq!((new.get("id"), new.get("size")), (Some(memdev), backend.get("size")));
                    assert_eq!(
                        (new.get("mem-path"), new.get("share")),
                        (Some("/dev/dax0.0"), Some("true"))
                    );
                    tally.dax_ok += 1;
                }
                Err(e) => {
                    assert!(matches!(e, AdapterError::BackendKind { .. }), "{name} cell {cell}: {e}");
                    assert_eq!(backend.kind, "memory-backend-file", "{name}");
                    tally.file_backed_refused += 1;
                }
            }

            let i = [Instruction::SpMem { cell, size_bytes: size }];
            match transform(&argv, &i, &caps(false, true)) {
                Ok(out) => {
                    let device = format!("sp-mem,id=hbm-sp-mem{cell},memdev={memdev},node={cell}");
                    assert_eq!(out[at + 2], device, "{name}");
                    assert!(!out[at].contains("memdev="), "{name}: {}", out[at]);
                    let m = &out[position(&out, "-m") + 1];
                    let new_size =
                        parse_qemu_size(m.split(',').next().unwrap().trim_start_matches("size="), 1 << 20).unwrap();
                    assert_eq!(new_size, ram - size, "{name}: {m}");
                    tally.sp_mem_ok += 1;
                }
                Err(AdapterError::SpMemTooLarge { ram: r, device }) => {
                    assert_eq!((r, device), (ram, size), "{name}");
                    tally.only_cell_refused += 1;
                }
                Err(e) => panic!("{name} cell {cell}: {e}"),
            }
        }
    }
    assert_eq!(
        tally,
        Tally {
            cells: 30,
            memmap_ok: 28,
            dax_ok: 24,
            sp_mem_ok: 23,
            without_memdev: 2,
            file_backed_refused: 4,
            only_cell_refused: 5,
        }
    );
}

/// A file in /dev/shm standing in for a dax device, and the instructions backing cell 1 (512 MiB)
/// with it.
fn dax_stand_in() -> (tempfile::NamedTempFile, String) {
    let shm = tempfile::Builder::new()
        .prefix("hbm-dax-stand-in-")
        .tempfile_in("/dev/shm")
        .unwrap();
    let wire = format!(
        "v1;dax:cell=1,size=536870912,path={},align=2097152",
        shm.path().display()
    );
    (shm, wire)
}
