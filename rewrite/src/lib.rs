//! The pure domain-XML rewriter: a libvirt domain definition plus a host [`Inventory`] in, a
//! definition in which each HBM-owning PCI hostdev gets guest NUMA cells (SPM-marked in the
//! chosen dialect), a pcie-expander-bus naming the cell, a root port, and an ACPI Generic
//! Initiator out.
//!
//! API contract used by the front ends (CLI, KubeVirt sidecar, libvirt hook):
//! `rewrite(xml, &inventory, &options) -> Result<Rewritten, RewriteError>`.
//!
//! Where to start reading: [`rewrite`] (below) indexes the document ([`document`]), checks that
//! the document bears out what an earlier run recorded (`proof`) and takes it back (`undo`), then calls `plan::plan`, which decides everything that
//! will be added (one small function per decision, under `plan/`) and returns a `Plan`; then
//! `emit::emit` writes that plan into the definition, one file per addition under `emit/`
//! (cells, host binding, expander, Generic Initiator, SPM marking, the record in [`metadata`]).
//! The summary lines come from the plan (`plan/summary.rs`). `libvirt` reads the elements the
//! decisions look at, `layout` is the q35 guest-physical layout, [`instructions`] the wire form
//! the QEMU argv adapter reads.

use std::fmt;
use std::str::FromStr;

use topology::Inventory;

use crate::instructions::MemmapType;

pub mod document;
mod emit;
pub mod instructions;
mod layout;
mod libvirt;
pub mod metadata;
mod plan;
mod proof;
pub mod size;
mod undo;

pub use layout::{GpaRange, guest_ranges};

/// Host PCI addresses of the PCI `<hostdev>`s in a domain definition, in document order.
pub fn pci_hostdevs(xml: &str) -> Result<Vec<topology::PciAddress>, RewriteError> {
    Ok(libvirt::pci_hostdevs(&document::Document::parse(xml)?))
}
pub use metadata::{ClaimedRegion, GpuPolicy, HbmMetadata, NAMESPACE, read_metadata};

/// Per-domain policy: which hostdevs get their HBM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PolicyMode {
    /// Leave the domain alone.
    Off,
    /// Every PCI hostdev that owns HBM regions gets them.
    #[default]
    Auto,
    /// As `auto`, and fail when a PCI hostdev owns no region.
    Required,
}

/// How the HBM cells are marked as Specific Purpose Memory in the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Dialect {
    /// Per region, what the host firmware presents: a `normal` region gets no marking; an `spm`
    /// region gets the best marking the QEMU that runs the domain speaks through the argv adapter
    /// (`sp-mem`, then `memmap-type=spm`), else `kernel-cmdline` for a direct-kernel-boot
    /// domain, else none (with a warning in the summary). See `plan/dialect.rs`.
    #[default]
    Auto,
    /// QEMU series v5-v7: `-numa node,...,memmap-type=<type>` (applied by the argv adapter).
    MemmapType(MemmapType),
    /// QEMU series v8-v10: `-device sp-mem,memdev=..,node=K` (applied by the argv adapter).
    SpMem,
    /// Direct-kernel-boot guests: `memmap=<size>%<gpa>-1+0xefffffff` on the guest command line.
    KernelCmdline,
    /// A normal NUMA node (no SPM marking); pxb and Generic Initiator still added.
    None,
}

/// Where the libvirt host install puts the QEMU argv adapter.
pub const DEFAULT_ADAPTER_PATH: &str = "/usr/local/bin/hbm-qemu";

/// Which SPM dialects of the argv adapter the domain's QEMU accepts (from the capability probe
/// on libvirt hosts; none known by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SpmSupport {
    /// `-device sp-mem` (QEMU series v8-v10).
    pub sp_mem: bool,
    /// `-numa node,memmap-type=` (QEMU series v5-v7).
    pub memmap_type: bool,
}

/// Host-wide defaults (from the config file and CLI flags); the domain's metadata overrides them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewriteOptions {
    pub policy: PolicyMode,
    pub dialect: Dialect,
    /// Largest cell the rewriter creates per region, in bytes.
    pub size_cap_bytes: Option<u64>,
    /// Emulator path written to `<emulator>` when the argv adapter must act; `None` when the
    /// QEMU runs without the adapter (KubeVirt's virt-launcher): no `<emulator>` change, no
    /// adapter instructions, so device-dax-only regions and the `sp-mem`/`memmap-type`
    /// dialects are refused.
    pub adapter_path: Option<String>,
    /// The SPM dialects the QEMU that will run the domain speaks (`auto` picks from them).
    pub qemu_spm: SpmSupport,
    /// Use libvirt's native `<acpi nodeset=..>` on the hostdev instead of `<qemu:commandline>`.
    pub native_generic_initiator: bool,
}

impl Default for RewriteOptions {
    fn default() -> Self {
        Self {
            policy: PolicyMode::Auto,
            dialect: Dialect::Auto,
            size_cap_bytes: None,
            adapter_path: Some(DEFAULT_ADAPTER_PATH.to_string()),
            qemu_spm: SpmSupport::default(),
            native_generic_initiator: false,
        }
    }
}

/// The result of a rewrite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewritten {
    pub xml: String,
    /// `false` when `xml` is byte-identical to the input.
    pub changed: bool,
    /// One human line per change made (for the CLI's diff summary on stderr).
    pub summary: Vec<String>,
}

/// Prefix of the summary lines that say what the guest will not get (see [`warnings`]).
pub const WARNING_PREFIX: &str = "warning: ";

/// The summary lines that warn (front ends log them at warn level).
pub fn warnings(summary: &[String]) -> impl Iterator<Item = &str> {
    summary
        .iter()
        .filter(|line| line.starts_with(WARNING_PREFIX))
        .map(String::as_str)
}

impl PolicyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Off => "off",
            PolicyMode::Auto => "auto",
            PolicyMode::Required => "required",
        }
    }
}

impl FromStr for PolicyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(PolicyMode::Off),
            "auto" => Ok(PolicyMode::Auto),
            "required" => Ok(PolicyMode::Required),
            other => Err(format!("unknown policy {other:?} (expected off, auto or required)")),
        }
    }
}

impl fmt::Display for PolicyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Dialect {
    /// The canonical spelling (`memmap-type` is written out as `memmap-type=spm`).
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Auto => "auto",
            Dialect::MemmapType(MemmapType::Spm) => "memmap-type=spm",
            Dialect::MemmapType(MemmapType::Reserved) => "memmap-type=reserved",
            Dialect::MemmapType(MemmapType::Normal) => "memmap-type=normal",
            Dialect::SpMem => "sp-mem",
            Dialect::KernelCmdline => "kernel-cmdline",
            Dialect::None => "none",
        }
    }
}

impl FromStr for Dialect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Dialect::Auto),
            "kernel-cmdline" => Ok(Dialect::KernelCmdline),
            "memmap-type" | "memmap-type=spm" => Ok(Dialect::MemmapType(MemmapType::Spm)),
            "memmap-type=reserved" => Ok(Dialect::MemmapType(MemmapType::Reserved)),
            "memmap-type=normal" => Ok(Dialect::MemmapType(MemmapType::Normal)),
            "sp-mem" => Ok(Dialect::SpMem),
            "none" => Ok(Dialect::None),
            other => Err(format!(
                "unknown dialect {other:?} (expected auto, kernel-cmdline, memmap-type, memmap-type=spm, memmap-type=reserved, memmap-type=normal, sp-mem or none)"
            )),
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a definition cannot be rewritten. Every message names the line of the element at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    #[error("domain XML line {line}: not well-formed XML: {reason}; fix the XML and retry")]
    Malformed { line: usize, reason: String },
    #[error(
        "domain XML line {line}: DOCTYPE/entity declarations are not accepted (no entity is ever expanded); remove the DOCTYPE"
    )]
    Doctype { line: usize },
    #[error("domain XML line {line}: <{element}>: {reason}")]
    Invalid {
        line: usize,
        element: String,
        reason: String,
    },
    #[error("domain XML line {line}: <{element}>: {reason}")]
    Collision {
        line: usize,
        element: String,
        reason: String,
    },
    #[error("domain XML line {line}: <{element}>: cannot satisfy: {reason}")]
    Unsatisfiable {
        line: usize,
        element: String,
        reason: String,
    },
}

impl RewriteError {
    /// Process exit code: 2 = bad input, 3 = cannot satisfy.
    pub fn exit_code(&self) -> u8 {
        match self {
            RewriteError::Malformed { .. }
            | RewriteError::Doctype { .. }
            | RewriteError::Invalid { .. }
            | RewriteError::Collision { .. } => 2,
            RewriteError::Unsatisfiable { .. } => 3,
        }
    }
}

/// Rewrites `xml` for the host described by `inventory`.
///
/// First removes what an earlier run recorded in the domain's `hbm:passthrough` metadata (so a
/// second run, or a run on another host, replaces its own additions), then adds one guest NUMA
/// cell per HBM region of every PCI hostdev the policy selects. With nothing to do the input
/// comes back byte-identical; `rewrite(output) == output`.
pub fn rewrite(xml: &str, inventory: &Inventory, options: &RewriteOptions) -> Result<Rewritten, RewriteError> {
    let doc = document::Document::parse(xml)?;
    let found = metadata::find(&doc)?;
    let mut summary = Vec::new();
    let undone = match &found {
        Some((_, meta)) if meta.applied => {
            proof::check(&doc, meta)?;
            let text = undo::undo(&doc, meta);
            summary.push(format!(
                "removed the additions recorded by an earlier rewrite ({} regions)",
                meta.claimed.len()
            ));
            Some(text)
        }
        _ => None,
    };
    let meta = found.map(|(_, m)| m);
    let base_doc;
    let base: &document::Document<'_> = match &undone {
        Some(text) => {
            base_doc = document::Document::parse(text)?;
            &base_doc
        }
        None => &doc,
    };
    let policy = plan::select::Policy::resolve(options, meta.as_ref());
    match plan::plan(base, inventory, &policy, options)? {
        Some(plan) => {
            let out = emit::emit(base, &plan, undone.is_some().then_some(&doc));
            let lines = plan.summary();
            if undone.is_some() && out == xml {
                summary.clear();
            }
            summary.extend(lines);
            let changed = out != xml;
            if !changed {
                summary = vec!["unchanged: the definition already carries these additions".to_string()];
            }
            Ok(Rewritten {
                xml: out,
                changed,
                summary,
            })
        }
        None => {
            let out = undone.unwrap_or_else(|| xml.to_string());
            let changed = out != xml;
            if !changed {
                summary.push("nothing to do: no PCI hostdev with HBM selected".to_string());
            }
            Ok(Rewritten {
                xml: out,
                changed,
                summary,
            })
        }
    }
}
