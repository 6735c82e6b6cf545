//! The whole chain up to QEMU: the README's GPU VM (`examples/domains/gpu-vm.xml`, made TCG-able
//! and 1 GiB) rewritten by the real rewriter in each adapter dialect, with and without a dax-held
//! region; libvirt 9.0 (`virsh domxml-to-native qemu-argv`) turns it into the argv and the
//! environment the adapter gets; the adapter's transform applies the recorded instructions; the
//! real QEMU 10 accepts the resulting memory layout (sp-mem spelled pc-dimm, the dax device
//! replaced by a shared-memory file) and refuses memmap-type, which it does not speak.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::inventory::{HbmSpec, MIB, hbm_inventory};
use crate::common::libvirt::{domxml_to_native, require_libvirt};
use hbm_hook::qemu::transform::transform;
use hbm_rewrite::instructions::{self, Instruction, MemmapType};
use hbm_rewrite::{Dialect, RewriteOptions, rewrite};

use crate::common::qemu::{REAL_QEMU, caps};
const GPU: &str = "0000:c1:00.0";
const HBM: u64 = 512 * MIB;

fn input() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/domains/gpu-vm.xml");
    let xml = std::fs::read_to_string(path).unwrap();
    let edits = [
        ("<domain type='kvm'>", "<domain type='qemu'>"),
        ("  <cpu mode='host-passthrough'/>\n", ""),
        ("<memory unit='GiB'>8</memory>", "<memory unit='GiB'>1</memory>"),
        (
            "<currentMemory unit='GiB'>8</currentMemory>",
            "<currentMemory unit='GiB'>1</currentMemory>",
        ),
    ];
    edits.iter().fold(xml, |x, (from, to)| {
        assert!(x.contains(from), "gpu-vm.xml no longer has {from:?}");
        x.replacen(from, to, 1)
    })
}

/// Rewrites the GPU VM for `dialect` (the region held by /dev/dax0.0 when `dax`), gets libvirt's
/// argv for it, and returns (instructions from the environment libvirt passes, argv).
fn libvirt_view(dialect: Dialect, dax: bool, adapter: &Path) -> (Vec<Instruction>, Vec<String>) {
    let mut inventory = hbm_inventory(&[HbmSpec::new(GPU, HBM)]);
    if dax {
        let r = &mut inventory.regions[0];
        r.online = false;
        r.dax = Some("/dev/dax0.0".into());
        r.dax_align = Some(2 * MIB);
    }
    let options = RewriteOptions {
        dialect,
        adapter_path: Some(adapter.display().to_string()),
        ..RewriteOptions::default()
    };
    let out = rewrite(&input(), &inventory, &options).unwrap();
    assert!(
        out.xml.contains(&format!("<emulator>{}</emulator>", adapter.display())),
        "{}",
        out.xml
    );
    let native = domxml_to_native(&out.xml).unwrap();
    assert_eq!(native.binary, adapter.display().to_string());
    let wire = native
        .env
        .iter()
        .find(|(k, _)| k == instructions::ENV_VAR)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("libvirt passes no {}: {:?}", instructions::ENV_VAR, native.env));
    (instructions::parse(&wire).unwrap(), native.args)
}

/// The real QEMU with the memory part of `argv` (sp-mem as pc-dimm, /dev/dax0.0 as `shm`).
fn real_qemu(argv: &[String], shm: &Path) -> Result<(), String> {
    let mut args: Vec<String> = Vec::new();
    for w in argv.windows(2) {
        let keep = match w[0].as_str() {
            "-machine" | "-accel" | "-cpu" | "-m" | "-smp" | "-numa" => true,
            "-object" => w[1].contains("memory-backend"),
            "-device" => w[1].starts_with("sp-mem,"),
            _ => false,
        };
        if keep {
            args.push(w[0].clone());
            args.push(
                w[1].replace("sp-mem,", "pc-dimm,")
                    .replace("/dev/dax0.0", &shm.display().to_string()),
            );
        }
    }
    let mut child = Command::new(REAL_QEMU)
        .args(&args)
        .args(["-display", "none", "-nodefaults", "-S", "-qmp", "stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n");
    let out = child.wait_with_output().unwrap();
    if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("host-qmp-quit") {
        Ok(())
    } else {
        Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

fn adapter_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("hbm-qemu");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_hbm-hook"), &adapter).unwrap();
    (dir, adapter)
}

#[test]
fn sp_mem_and_dax_through_rewriter_libvirt_and_adapter() {
    require_libvirt();
    let (_dir, adapter) = adapter_dir();
    let shm = tempfile::Builder::new()
        .prefix("hbm-dax-stand-in-")
        .tempfile_in("/dev/shm")
        .unwrap();
    for dax in [false, true] {
        let (instructions, argv) = libvirt_view(Dialect::SpMem, dax, &adapter);
        let mut expected = vec![Instruction::SpMem {
            cell: 1,
            size_bytes: HBM,
        }];
        if dax {
            expected.push(Instruction::Dax {
                cell: 1,
                size_bytes: HBM,
                path: "/dev/dax0.0".into(),
                align: 2 * MIB,
            });
        }
        assert_eq!(instructions, expected);
        let out = transform(&argv, &instructions, &caps(false, true)).unwrap();
        let at = out
            .iter()
            .position(|a| a == "node,nodeid=1")
            .expect("cell 1 without memdev");
        assert_eq!(
            out[at + 1..at + 3],
            ["-device", "sp-mem,id=hbm-sp-mem1,memdev=ram-node1,node=1"]
        );
        let m = &out[out.iter().position(|a| a == "-m").unwrap() + 1];
        assert!(
            m.starts_with("size=1048576k,") && m.ends_with(",maxmem=1572864k"),
            "{m}"
        );
        let backend = out.iter().find(|a| a.contains(r#""id":"ram-node1""#)).unwrap();
        if dax {
            assert_eq!(
                backend,
                r#"{"qom-type":"memory-backend-file","id":"ram-node1","mem-path":"/dev/dax0.0","share":true,"align":2097152,"size":536870912}"#
            );
        } else {
            assert!(
                backend.starts_with(r#"{"qom-type":"memory-backend-ram","id":"ram-node1","size":536870912"#),
                "{backend}"
            );
        }
        real_qemu(&out, shm.path()).unwrap_or_else(|e| panic!("dax={dax}: {e}"));
    }
}

#[test]
fn memmap_type_through_rewriter_libvirt_and_adapter() {
    require_libvirt();
    let (_dir, adapter) = adapter_dir();
    let (instructions, argv) = libvirt_view(Dialect::MemmapType(MemmapType::Spm), false, &adapter);
    assert_eq!(
        instructions,
        vec![Instruction::MemmapType {
            cell: 1,
            size_bytes: HBM,
            memmap: MemmapType::Spm
        }]
    );
    let out = transform(&argv, &instructions, &caps(true, false)).unwrap();
    let changed: Vec<(usize, &String)> = out.iter().enumerate().filter(|(i, a)| argv[*i] != **a).collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(changed[0].1.starts_with("node,nodeid=1,") && changed[0].1.ends_with(",memdev=ram-node1,memmap-type=spm"));
    let shm = Path::new("/dev/null");
    let err = real_qemu(&out, shm).unwrap_err();
    assert!(err.contains("Invalid parameter 'memmap-type'"), "{err}");
    real_qemu(&argv, shm).unwrap();
}
