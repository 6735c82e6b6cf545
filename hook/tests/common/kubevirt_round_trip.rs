//! What the KubeVirt round-trip tests share: the three kinds of fixture host (SPM HBM behind
//! device-dax, SPM HBM onlined, HBM that is ordinary node memory), the KubeVirt corpus
//! definitions that pass a GPU through, their direct-kernel-boot variants, the sidecar-shim call
//! (`hbm-hook onDefineDomain`) and the checks of an answer's HBM chain, in the answer and in what
//! KubeVirt's model ([`super::domain_spec`]) keeps of it.

use std::process::{Command, Output};

use super::domain_spec::{Node, project, unmarshal};
use super::domain_xml::{PciAddr, parse};
use super::hbm_chain::{self, HbmChain};
use super::kubevirt::{GIB, GPU_41, GPU_81, hbm_hook};
use topology::fixture::{DaxDevice, FixtureHost};

/// The host kinds a KubeVirt node can be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// SPM HBM held back by the firmware and reachable only through `device_dax` devices
    /// (`dax0.0`, `dax1.0`); the nodes have no online memory.
    SpmDax,
    /// The same SPM HBM after `daxctl reconfigure-device --mode=system-ram`: the dax devices are
    /// bound to `kmem` and the memory is online in the CPU-less nodes.
    SpmOnline,
    /// HBM the firmware gives as ordinary memory (not SPM) of CPU-less nodes.
    Normal,
}

pub const HOST_KINDS: [HostKind; 3] = [HostKind::SpmDax, HostKind::SpmOnline, HostKind::Normal];

/// A GPU of the corpus: its host address, the corpus file passing it through, the host node of
/// its HBM on the fixture hosts and the dax device holding it.
#[derive(Clone, Copy, Debug)]
pub struct CorpusGpu {
    pub file: &'static str,
    pub host: &'static str,
    pub host_node: u32,
    pub dax: &'static str,
    /// The hostdev's alias as KubeVirt wrote it.
    pub alias: &'static str,
}

/// Every KubeVirt corpus definition with a PCI hostdev (a test checks the list is complete).
pub const CORPUS_GPUS: [CorpusGpu; 2] = [
    CorpusGpu {
        file: "kubevirt/gpu1.rendered.xml",
        host: GPU_81,
        host_node: 1,
        dax: "dax0.0",
        alias: "ua-hostdevice-gpu1",
    },
    CorpusGpu {
        file: "kubevirt/numa-passthrough-gpu.rendered.xml",
        host: GPU_41,
        host_node: 2,
        dax: "dax1.0",
        alias: "ua-hostdevice-gpu1",
    },
];

/// A node with CPUs on node 0 and the corpus' two GPUs, each owning `hbm_bytes` of HBM in its
/// own CPU-less node (GPU 0000:81:00.0 node 1, 0000:41:00.0 node 2, each the GPU's `numa_node`
/// and a Generic Initiator node), held as `kind` says.
pub fn fixture_host(kind: HostKind, hbm_bytes: u64) -> FixtureHost {
    let (spm, online) = match kind {
        HostKind::SpmDax => (true, false),
        HostKind::SpmOnline => (true, true),
        HostKind::Normal => (false, true),
    };
    let mut host = FixtureHost::new().cpu_node(0, "0-15", 64 * GIB).distance(1, 2, 30);
    for (group, gpu) in (12..).zip(CORPUS_GPUS) {
        host = host
            .hbm_node(gpu.host_node, hbm_bytes, spm, online)
            .generic_initiator(gpu.host_node)
            .distance(0, gpu.host_node, 20)
            .gpu(
                gpu.host,
                0x1002,
                0x74a1,
                Some("vfio-pci"),
                Some(group),
                Some(gpu.host_node),
            );
        if spm {
            let dax = DaxDevice::hmem(gpu.dax, gpu.host_node, hbm_bytes).kmem(kind == HostKind::SpmOnline);
            host = host.dax(dax);
        }
    }
    host.with_generated_srat()
}

/// `xml` with `<kernel>` and `<initrd>` added after `<os><type>` (a direct-kernel-boot VM).
pub fn direct_boot_variant(xml: &str, kernel: &str, initrd: &str) -> String {
    let root = parse(xml).unwrap_or_else(|e| panic!("{e}"));
    let os_type = root
        .at(&["os", "type"])
        .unwrap_or_else(|| panic!("definition has no <os><type>"));
    let at = os_type.span.end;
    format!(
        "{}\n    <kernel>{kernel}</kernel>\n    <initrd>{initrd}</initrd>{}",
        &xml[..at],
        &xml[at..]
    )
}

/// `hbm-hook onDefineDomain --vmi VMI --domain DOMAIN --sysfs-root ROOT FLAGS...`, as KubeVirt's
/// sidecar shim runs a hook binary.
pub fn shim_on_define_domain(vmi: &[u8], domain: &str, sysfs_root: &std::path::Path, flags: &[&str]) -> Output {
    let vmi = String::from_utf8(vmi.to_vec()).unwrap_or_else(|e| panic!("VMI JSON: {e}"));
    Command::new(hbm_hook())
        .args(["onDefineDomain", "--vmi", &vmi, "--domain", domain, "--sysfs-root"])
        .arg(sysfs_root)
        .args(flags)
        .env("RUST_LOG", "info")
        .output()
        .unwrap_or_else(|e| panic!("run hbm-hook onDefineDomain: {e}"))
}

/// How the Generic Initiator is spelled in the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiStyle {
    /// `<qemu:commandline>` `-object acpi-generic-initiator,...,pci-dev=<alias>,node=K`.
    QemuCommandline,
    /// libvirt's hostdev `<acpi nodeset='K'/>`.
    AcpiNodeset,
}

/// The `<devices><emulator>` of a definition, if any.
pub fn emulator_of(xml: &str) -> Option<String> {
    let root = parse(xml).unwrap_or_else(|e| panic!("{e}"));
    root.at(&["devices", "emulator"]).map(|e| e.trimmed_text().to_string())
}

/// The `<acpi nodeset>` of the hostdev whose alias is `alias`.
fn acpi_nodeset(xml: &str, alias: &str) -> Option<String> {
    let root = parse(xml).unwrap_or_else(|e| panic!("{e}"));
    let devices = root.child("devices")?;
    let hostdev = devices
        .children_named("hostdev")
        .find(|h| h.child("alias").and_then(|a| a.attr("name")) == Some(alias))?;
    hostdev
        .child("acpi")
        .and_then(|a| a.attr("nodeset"))
        .map(str::to_string)
}

/// Checks the HBM chain of `gpu` in one definition (`what` names it in messages): the CPU-less
/// cell of `hbm_bytes`, the strict memnode on the GPU's host node, the hostdev with its alias
/// behind a pcie-expander-bus naming the cell, the Generic Initiator in `gi` style, ACPI on and
/// `<memory>` equal to the cells' sum. Returns the chain.
fn check_one(what: &str, xml: &str, gpu: &CorpusGpu, hbm_bytes: u64, gi: GiStyle) -> HbmChain {
    let host = PciAddr::parse_host(gpu.host).unwrap_or_else(|e| panic!("{e}"));
    let chain = hbm_chain::read(xml, host).unwrap_or_else(|e| panic!("{what}: HBM chain: {e}\n{xml}"));
    assert_eq!(chain.cell_bytes, hbm_bytes, "{what}: cell size\n{xml}");
    assert_eq!(
        chain.memnode,
        Some(("strict".to_string(), gpu.host_node.to_string())),
        "{what}: memnode\n{xml}"
    );
    assert_eq!(chain.alias, gpu.alias, "{what}: the hostdev keeps KubeVirt's alias");
    let nodeset = acpi_nodeset(xml, gpu.alias);
    match gi {
        GiStyle::QemuCommandline => {
            assert!(
                chain.generic_initiator_arg,
                "{what}: -object acpi-generic-initiator\n{xml}"
            );
            assert_eq!(nodeset, None, "{what}: no hostdev <acpi nodeset>\n{xml}");
        }
        GiStyle::AcpiNodeset => {
            assert!(
                !chain.generic_initiator_arg,
                "{what}: no GI object in qemu:commandline\n{xml}"
            );
            assert_eq!(
                nodeset,
                Some(chain.cell.to_string()),
                "{what}: hostdev <acpi nodeset>\n{xml}"
            );
        }
    }
    hbm_chain::check_domain(xml).unwrap_or_else(|e| panic!("{what}: {e}\n{xml}"));
    chain
}

/// The checks of an answer that must carry the chain: it unmarshals into KubeVirt's model; the
/// chain is in the answer and in the model's re-marshalled form (the same chain); the answer
/// keeps the input's `<emulator>` (none for KubeVirt) and carries no adapter instructions.
/// Returns the projected answer.
pub fn check_chain_survives(
    what: &str,
    input: &str,
    answer: &str,
    gpu: &CorpusGpu,
    hbm_bytes: u64,
    gi: GiStyle,
) -> String {
    let projected = project(answer).unwrap_or_else(|e| panic!("{what}: {e}\n{answer}"));
    let in_answer = check_one(&format!("{what} (answer)"), answer, gpu, hbm_bytes, gi);
    let in_model = check_one(
        &format!("{what} (KubeVirt's re-marshal)"),
        &projected,
        gpu,
        hbm_bytes,
        gi,
    );
    assert_eq!(in_answer, in_model, "{what}: the same chain survives the round trip");
    assert_eq!(
        emulator_of(answer),
        emulator_of(input),
        "{what}: <emulator> unchanged\n{answer}"
    );
    assert!(
        !answer.contains("HBM_QEMU_INSTRUCTIONS") && !answer.contains("hbm-qemu"),
        "{what}: no argv adapter in a KubeVirt answer\n{answer}"
    );
    projected
}

/// The guest kernel command line of a definition (`<os><cmdline>`), empty when absent.
pub fn cmdline_of(xml: &str) -> String {
    let root = parse(xml).unwrap_or_else(|e| panic!("{e}"));
    root.at(&["os", "cmdline"]).map(|c| c.text.clone()).unwrap_or_default()
}

/// The model's view of `xml` edited for a real libvirt on this machine: every `<numatune>`
/// nodeset names host node 0 (the fixture's HBM nodes do not exist here), PCI hostdevs get
/// `<driver name='vfio'/>` (libvirt refuses to build an argv without it), and KubeVirt's
/// placeholder `<controller type='raw'>` (rejected by libvirt 9.0) and disks other than files
/// (the model lists only a file disk's attributes, so a network disk comes out incomplete) are
/// removed.
pub fn for_this_machine(projected: &str) -> String {
    let mut root: Node = unmarshal(projected).unwrap_or_else(|e| panic!("{e}"));
    for path in [["numatune", "memnode"], ["numatune", "memory"]] {
        root.for_each_mut(&path, &mut |n| n.set_attr("nodeset", "0"));
    }
    root.for_each_mut(&["devices", "hostdev"], &mut |hostdev| {
        if hostdev.all(&["driver"]).is_empty() {
            hostdev.children.insert(
                0,
                Node {
                    ns: None,
                    name: "driver".into(),
                    attrs: vec![],
                    text: String::new(),
                    children: vec![],
                },
            );
        }
        hostdev.for_each_mut(&["driver"], &mut |d| d.set_attr("name", "vfio"));
    });
    root.for_each_mut(&["devices"], &mut |devices| {
        devices.children.retain(|c| {
            let raw_controller = c.name == "controller" && c.attr("type") == Some("raw");
            let not_a_file_disk = c.name == "disk" && c.attr("type") != Some("file");
            !raw_controller && !not_a_file_disk
        });
    });
    super::domain_spec::marshal(&root)
}

/// The log's warnings that SPM HBM reaches the guest unmarked (one `WARN` line each, saying what
/// the guest sees).
pub fn spm_warnings(log: &str) -> usize {
    log.lines()
        .filter(|l| {
            l.contains(" WARN ")
                && l.contains("warning: region")
                && l.contains("is not marked SPM in the guest")
                && l.contains("the guest sees it as ordinary memory of a CPU-less NUMA node")
        })
        .count()
}
