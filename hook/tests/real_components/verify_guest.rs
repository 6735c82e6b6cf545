//! `hbm-hook verify-guest` inside booted guests (libvirt + QEMU TCG, the kit's kernel, the static
//! `hbm-hook` appended to its initramfs): definitions rewritten from a host inventory, each GPU
//! replaced by a display-class stand-in at the same guest address and alias, booted; the guest's
//! JSON verdict must match the inventory the rewriter was given (one node per GPU, the region's
//! size, the marking of the dialect) — and must fail, naming the Generic Initiator, when the GI is
//! taken out by hand.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;

use crate::common::domain_xml::{PciAddr, StandIn, vfio_hostdev, with_stand_in};
use crate::common::guest::{self, DirectBootDomain, VerifyOutput, initrd_with_hbm_hook};
use crate::common::hbm_chain::{self, HbmChain};
use crate::common::inventory::{HbmSpec, MIB, hbm_inventory};
use crate::common::libvirt::{require_libvirt, unique_name};
use hbm_rewrite::{Dialect, RewriteOptions, rewrite};

/// The base definition: direct kernel boot, one vfio hostdev per GPU with alias `ua-gpuN`, no
/// NUMA and no ACPI element (the rewriter adds both).
fn base_domain(label: &str, console_log: &std::path::Path, specs: &[HbmSpec]) -> DirectBootDomain {
    let mut domain = DirectBootDomain::new(&unique_name(label), console_log);
    domain.memory_mib = 1024;
    domain.acpi = false;
    domain.initrd = Some(initrd_with_hbm_hook().to_path_buf());
    domain.devices = specs
        .iter()
        .enumerate()
        .map(|(index, spec)| vfio_hostdev(&spec.gpu, Some(&format!("ua-gpu{index}"))))
        .collect();
    domain
}

/// A rewritten, stand-in-swapped definition and the chains the rewriter built.
struct Prepared {
    xml: String,
    chains: Vec<HbmChain>,
}

fn prepare(base: &str, specs: &[HbmSpec], dialect: Dialect) -> Prepared {
    let options = RewriteOptions {
        dialect,
        ..RewriteOptions::default()
    };
    let rewritten = rewrite(base, &hbm_inventory(specs), &options).unwrap_or_else(|e| panic!("rewrite: {e}"));
    let mut xml = rewritten.xml.clone();
    let mut chains = Vec::new();
    for spec in specs {
        let host = PciAddr::parse_host(&spec.gpu).unwrap();
        let chain = hbm_chain::read(&rewritten.xml, host).unwrap_or_else(|e| panic!("{e}\n{}", rewritten.xml));
        xml = with_stand_in(&xml, &chain.alias, StandIn::Gpu).unwrap();
        chains.push(chain);
    }
    Prepared { xml, chains }
}

fn boot_and_verify(xml: &str, console_log: &std::path::Path) -> (VerifyOutput, String) {
    let report = guest::boot(xml, console_log).unwrap_or_else(|e| panic!("{e}\n--- definition ---\n{xml}"));
    let context = format!("{}\n--- definition ---\n{xml}", report.console);
    let verify = report
        .verify
        .clone()
        .unwrap_or_else(|| panic!("the guest printed no verify-guest output\n{context}"));
    (verify, context)
}

/// The guest address of the stand-in behind `chain`'s expander: bus busNr+1, slot 0.
fn guest_address(chain: &HbmChain) -> String {
    format!("0000:{:02x}:00.0", chain.bus_nr + 1)
}

fn verdict<'a>(report: &'a Value, address: &str, context: &str) -> &'a Value {
    report["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["address"] == address)
        .unwrap_or_else(|| panic!("verify-guest lists no GPU at {address}\n{context}"))
}

/// Every GPU passes, on a node of its own that is online, CPU-less and held online by a Generic
/// Initiator, with exactly the HBM the host inventory gave it, marked as the dialect marks it.
fn assert_matches_inventory(
    verify: &VerifyOutput,
    prepared: &Prepared,
    specs: &[HbmSpec],
    marking: &str,
    context: &str,
) {
    assert_eq!(verify.exit, 0, "verify-guest exit status\n{context}");
    assert_eq!(verify.report["ok"], true, "{context}");
    assert_eq!(
        verify.report["gpus"].as_array().unwrap().len(),
        specs.len(),
        "one GPU each\n{context}"
    );
    let mut nodes = Vec::new();
    for (chain, spec) in prepared.chains.iter().zip(specs) {
        let gpu = verdict(&verify.report, &guest_address(chain), context);
        assert_eq!(gpu["ok"], true, "{}: {gpu}\n{context}", spec.gpu);
        assert_eq!(gpu["hbm_bytes"], spec.size_bytes, "{}: HBM size\n{context}", spec.gpu);
        assert_eq!(gpu["marking"], marking, "{}: marking\n{context}", spec.gpu);
        let node = &gpu["node"];
        assert_eq!(node["online"], true, "{context}");
        assert_eq!(node["cpu_less"], true, "{context}");
        assert_eq!(node["generic_initiator"], true, "{context}");
        assert_eq!(gpu["numa_node"], node["id"], "{context}");
        nodes.push(node["id"].as_u64().unwrap());
    }
    nodes.sort_unstable();
    nodes.dedup();
    assert_eq!(nodes.len(), specs.len(), "one guest node per GPU: {nodes:?}\n{context}");
}

fn gpus(count: u8, size_bytes: u64) -> Vec<HbmSpec> {
    (0..count)
        .map(|index| HbmSpec::new(&format!("0000:{:02x}:00.0", 0xc1 + index), size_bytes))
        .collect()
}

fn scenario(label: &str, specs: &[HbmSpec], dialect: Dialect, marking: &str) {
    require_libvirt();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("console.log");
    let base = base_domain(label, &log, specs).to_xml();
    let prepared = prepare(&base, specs, dialect);
    let (verify, context) = boot_and_verify(&prepared.xml, &log);
    assert_matches_inventory(&verify, &prepared, specs, marking, &context);
}

#[test]
fn one_gpu_kernel_cmdline_guest_finds_its_spm_hbm() {
    scenario("verify-1", &gpus(1, 512 * MIB), Dialect::KernelCmdline, "spm");
}

#[test]
fn two_gpu_guest_with_normal_hbm_cells_finds_each_gpus_hbm() {
    scenario("verify-2", &gpus(2, 256 * MIB), Dialect::None, "normal");
}

#[test]
fn eight_gpu_guest_finds_each_gpus_spm_hbm_on_its_own_node() {
    scenario("verify-8", &gpus(8, 64 * MIB), Dialect::KernelCmdline, "spm");
}

/// The Generic Initiator removed by hand: the CPU-less soft-reserved node stays offline, Linux
/// drops the `_PXM`, the device's `numa_node` is -1, and verify-guest fails naming the GI.
#[test]
fn without_the_generic_initiator_verify_guest_fails_and_names_it() {
    require_libvirt();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("console.log");
    let specs = gpus(1, 512 * MIB);
    let base = base_domain("verify-no-gi", &log, &specs).to_xml();
    let prepared = prepare(&base, &specs, Dialect::KernelCmdline);
    let without_gi: String = prepared
        .xml
        .lines()
        .filter(|line| !line.contains("acpi-generic-initiator") && !line.contains("<qemu:arg value='-object'/>"))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_ne!(without_gi, prepared.xml, "the GI arguments were found and removed");
    let (verify, context) = boot_and_verify(&without_gi, &log);
    assert_eq!(verify.exit, 1, "verify-guest exit status\n{context}");
    assert_eq!(verify.report["ok"], false, "{context}");
    let gpu = verdict(&verify.report, &guest_address(&prepared.chains[0]), &context);
    assert_eq!(gpu["numa_node"], Value::Null, "{context}");
    let problems = gpu["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{gpu}\n{context}");
    assert_eq!(problems[0]["check"], "numa-node", "{context}");
    assert!(
        problems[0]["message"]
            .as_str()
            .unwrap()
            .contains("no Generic Initiator"),
        "{context}"
    );
}
