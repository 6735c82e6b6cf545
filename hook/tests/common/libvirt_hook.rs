//! Helpers for the libvirt-hook tests: a fixture host whose one GPU owns an HBM region on host
//! node 0 (so libvirt's `nodeset='0'` exists on a one-node test machine), a direct-kernel-boot
//! domain asking for that region (rewritten by the real rewriter, hostdev swapped for an emulated
//! stand-in at the same guest address), the hook config, and running `hbm-hook` as the hook.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use hbm_rewrite::{Dialect, RewriteOptions, rewrite};
use topology::fixture::FixtureHost;
use topology::{DiscoveryConfig, Inventory};

use super::domain_xml::{PciAddr, StandIn, with_stand_in};
use super::guest::DirectBootDomain;
use super::hbm_chain;

pub const MIB: u64 = 1 << 20;
/// The fixture GPU (an address no other test's fixture uses).
pub const GPU: &str = "0000:e3:00.0";
/// Its region as discovery names it.
pub const REGION: &str = "0000:e3:00.0/node0";
/// Its HBM size.
pub const HBM_BYTES: u64 = 128 * MIB;

/// CPUs on node 1, the GPU's HBM as CPU-less SPM node 0 (its `_PXM`), online.
pub fn host() -> FixtureHost {
    FixtureHost::new()
        .cpu_node(1, "0-3", 8 << 30)
        .hbm_node(0, HBM_BYTES, true, true)
        .generic_initiator(0)
        .distance(0, 1, 20)
        .gpu(GPU, 0x1002, 0x74a1, Some("vfio-pci"), Some(21), Some(0))
        .with_generated_srat()
}

/// Writes [`host`] into a fresh temp dir (mode 0755, so libvirtd's hook can read it).
pub fn write_host() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    host()
        .write_to(dir.path())
        .unwrap_or_else(|e| panic!("write fixture host: {e}"));
    dir
}

/// Discovery of the fixture, as the hook sees it.
pub fn inventory(root: &Path) -> Inventory {
    let inv = topology::discover(root, &DiscoveryConfig::default()).unwrap_or_else(|e| panic!("discover: {e}"));
    let ids: Vec<&str> = inv.regions.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, [REGION], "fixture regions: {inv:?}");
    inv
}

/// A direct-kernel-boot domain `name` with a vfio hostdev for [`GPU`], rewritten for `inventory`
/// (kernel-cmdline dialect): what `hbm-hook rewrite` makes of it on a host that has the GPU. The
/// guest kernel is told to run an init that does not exist with `panic=0`, so it halts and the
/// domain keeps running until destroyed (the kit's own init would power off after its report).
pub fn domain_xml(name: &str, console_log: &Path, inventory: &Inventory) -> String {
    let host = PciAddr::parse_host(GPU).unwrap_or_else(|e| panic!("{e}"));
    let mut d = DirectBootDomain::new(name, console_log);
    d.vcpus = 1;
    d.memory_mib = 256;
    d.extra_cmdline = "rdinit=/hbm-hold init=/hbm-hold panic=0".to_string();
    d.devices = format!(
        "    <hostdev mode='subsystem' type='pci' managed='no'>
      <driver name='vfio'/>
      <source>
        <address domain='0x{:04x}' bus='0x{:02x}' slot='0x{:02x}' function='0x{:x}'/>
      </source>
    </hostdev>
",
        host.domain, host.bus, host.slot, host.function
    );
    let options = RewriteOptions {
        dialect: Dialect::KernelCmdline,
        ..RewriteOptions::default()
    };
    let out = rewrite(&d.to_xml(), inventory, &options).unwrap_or_else(|e| panic!("rewrite: {e}"));
    assert!(out.changed, "the rewriter must give the domain its HBM");
    let chain = hbm_chain::read(&out.xml, host).unwrap_or_else(|e| panic!("{e}\n{}", out.xml));
    assert_eq!(chain.cell_bytes, HBM_BYTES);
    assert_eq!(chain.memnode, Some(("strict".to_string(), "0".to_string())));
    out.xml
}

/// [`domain_xml`] as this test machine can start it: the hostdev (a GPU the machine does not have)
/// replaced by a virtio-rng stand-in at the same guest address and alias; the project's metadata,
/// cells and expander stay as the rewriter wrote them.
pub fn bootable(rewritten: &str) -> String {
    let host = PciAddr::parse_host(GPU).unwrap_or_else(|e| panic!("{e}"));
    let chain = hbm_chain::read(rewritten, host).unwrap_or_else(|e| panic!("{e}"));
    with_stand_in(rewritten, &chain.alias, StandIn::Rng).unwrap_or_else(|e| panic!("{e}"))
}

/// The hook config pointing discovery at `sysfs_root` and claims at `claims_dir`.
pub fn config_yaml(sysfs_root: &Path, claims_dir: &Path, startup_grace_secs: u64) -> String {
    format!(
        "sysfs_root: {}\nrewrite:\n  dialect: kernel-cmdline\nclaims:\n  dir: {}\n  startup_grace_secs: {startup_grace_secs}\n",
        sysfs_root.display(),
        claims_dir.display()
    )
}

/// The claim file of [`REGION`] in `claims_dir`.
pub fn claim_file(claims_dir: &Path) -> PathBuf {
    hbm_hook::libvirt::claims::ClaimStore::new(claims_dir).claim_path(REGION)
}

/// Reads the claim of [`REGION`], if any.
pub fn read_claim(claims_dir: &Path) -> Option<hbm_hook::libvirt::claims::Claim> {
    let text = std::fs::read_to_string(claim_file(claims_dir)).ok()?;
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("claim file is not a claim: {e}: {text}")))
}

/// Runs `program` (the hook) with libvirt's four arguments and `stdin`.
pub fn run_hook(program: &Path, pre_args: &[&str], call: [&str; 4], stdin: &[u8]) -> Output {
    let mut child = Command::new(program)
        .args(pre_args)
        .args(call)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    if let Some(mut i) = child.stdin.take() {
        // A hook may exit before reading (it must not, but a broken pipe is its failure to report).
        let _ = i.write_all(stdin);
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait {}: {e}", program.display()))
}
