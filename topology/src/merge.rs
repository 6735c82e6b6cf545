//! From the facts every source read to the regions: each source makes claims ("GPU g owns node
//! n / dax device d"), then precedence decides — config > nvidia > dax > cpuless-node > srat:
//! - a GPU named in the config gets exactly its configured regions;
//! - otherwise, per (GPU, node), the claims of the best source win (a dax source may hold
//!   several devices on one node);
//! - a node claimed by several GPUs goes to the best source; an even tie is ambiguous and
//!   dropped with a warning asking for a config entry.
//!
//! Then each winning claim becomes a [`Region`] with its health checked.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::DiscoveryConfig;
use crate::dax::{DaxDevice, DaxScan};
use crate::iomem::Iomem;
use crate::memmap::MemmapEntry;
use crate::node::{NODE_DIR, NodeTable};
use crate::nvidia::NvidiaScan;
use crate::pci::{PciGpu, PciScan};
use crate::srat::Srat;
use crate::sysfs::Sysfs;
use crate::{Health, Memmap, PciAddress, Region, Source};

/// Everything the sources read.
pub(crate) struct Facts {
    pub pci: PciScan,
    pub nodes: NodeTable,
    pub dax: DaxScan,
    pub nvidia: NvidiaScan,
    pub srat: Option<Srat>,
    pub iomem: Option<Iomem>,
    pub memmap: Vec<MemmapEntry>,
    /// `(function, PXM)` of each enabled SRAT Generic Initiator naming a PCI function
    /// ([`initiator_devices`]).
    pub initiator_devices: Vec<(PciAddress, u32)>,
}

/// The PCI function and PXM of each enabled, non-port SRAT Generic Initiator, its handle
/// resolved against the functions present.
pub(crate) fn initiator_devices(fs: &Sysfs, pci: &PciScan, srat: Option<&Srat>) -> Vec<(PciAddress, u32)> {
    let Some(srat) = srat else { return Vec::new() };
    srat.initiators
        .iter()
        .filter(|gi| gi.enabled && !gi.port)
        .map(|gi| (gi.resolve(|address| pci.is_present(fs, address)), gi.pxm))
        .collect()
}

#[derive(Clone, Debug)]
struct Claim {
    gpu: PciAddress,
    source: Source,
    host_node: Option<u32>,
    /// Index into `facts.dax.devices` when the claim is a dax device.
    dax: Option<usize>,
    /// A configured dax name that is not present.
    missing_dax: Option<String>,
    size: Option<u64>,
    base: Option<u64>,
    /// SRAT flags the node's memory specific-purpose.
    srat_spm: bool,
    /// For nvidia claims: the driver says the memory is online.
    nvidia_online: Option<bool>,
    problems: Vec<String>,
}

impl Claim {
    fn new(gpu: PciAddress, source: Source, host_node: Option<u32>) -> Self {
        Self {
            gpu,
            source,
            host_node,
            dax: None,
            missing_dax: None,
            size: None,
            base: None,
            srat_spm: false,
            nvidia_online: None,
            problems: Vec::new(),
        }
    }
}

/// Nodes a GPU points at: its `numa_node` plus the nodes of SRAT Generic Initiators naming it.
fn gpu_nodes(g: &PciGpu, facts: &Facts) -> BTreeSet<u32> {
    let mut s: BTreeSet<u32> = g.numa_node.into_iter().collect();
    if let Some(srat) = &facts.srat {
        for (_, pxm) in facts
            .initiator_devices
            .iter()
            .filter(|(device, _)| *device == g.address)
        {
            s.extend(srat.node_of(*pxm));
        }
    }
    s
}

fn node_size(facts: &Facts, node: u32) -> Option<u64> {
    if let Some(m) = facts.nodes.mem_total(node).filter(|m| *m > 0) {
        return Some(m);
    }
    let srat = facts.srat.as_ref()?;
    let total = srat.memory_of_node(node).fold(0u64, |a, m| a.saturating_add(m.length));
    (total > 0).then_some(total)
}

fn srat_base(facts: &Facts, node: u32) -> Option<u64> {
    facts.srat.as_ref()?.memory_of_node(node).map(|m| m.base).min()
}

fn srat_spm(facts: &Facts, node: u32) -> bool {
    facts
        .srat
        .as_ref()
        .is_some_and(|s| s.memory_of_node(node).any(|m| m.specific_purpose()))
}

fn config_claims(fs: &Sysfs, cfg: &DiscoveryConfig, facts: &Facts) -> Vec<Claim> {
    let mut out = Vec::new();
    for m in &cfg.gpus {
        let present = facts.pci.gpus.iter().any(|g| g.address == m.gpu);
        let gpu_problem = (!present).then(|| {
            format!(
                "GPU {} named in the discovery config is not under {}",
                m.gpu,
                fs.path("sys/bus/pci/devices").display()
            )
        });
        let mut covered = BTreeSet::new();
        for name in &m.dax {
            match facts.dax.devices.iter().position(|d| &d.name == name) {
                Some(i) => {
                    let d = &facts.dax.devices[i];
                    let mut c = Claim::new(m.gpu, Source::Config, d.target_node);
                    c.dax = Some(i);
                    c.size = d.size.as_ref().ok().copied();
                    c.base = d.base;
                    if let Some(n) = d.target_node {
                        covered.insert(n);
                        c.srat_spm = srat_spm(facts, n);
                    }
                    c.problems.extend(gpu_problem.clone());
                    out.push(c);
                }
                None => {
                    let mut c = Claim::new(m.gpu, Source::Config, None);
                    c.missing_dax = Some(name.clone());
                    c.problems.push(format!(
                        "{}: missing (dax device named in the discovery config)",
                        fs.path(&format!("sys/bus/dax/devices/{name}")).display()
                    ));
                    c.problems.extend(gpu_problem.clone());
                    out.push(c);
                }
            }
        }
        for &n in m.nodes.iter().filter(|n| !covered.contains(n)) {
            let mut c = Claim::new(m.gpu, Source::Config, Some(n));
            c.size = node_size(facts, n);
            c.base = srat_base(facts, n);
            c.srat_spm = srat_spm(facts, n);
            if c.size.is_none() {
                c.problems.push(format!(
                    "node {n} has no memory ({}/node{n}/meminfo) and no SRAT range gives its size",
                    fs.path(NODE_DIR).display()
                ));
            }
            c.problems.extend(gpu_problem.clone());
            out.push(c);
        }
    }
    out
}

fn nvidia_claims(fs: &Sysfs, facts: &Facts, warnings: &mut Vec<String>) -> Vec<Claim> {
    let mut out = Vec::new();
    for e in &facts.nvidia.entries {
        let path = fs.path(&e.file);
        let Some(n) = e.node else {
            warnings.push(format!(
                "{}: Node -1 (no coherent GPU memory), no region",
                path.display()
            ));
            continue;
        };
        if !facts.nodes.in_range(n) {
            warnings.push(format!(
                "{}: node {n} is out of range ({}/possible), region skipped",
                path.display(),
                fs.path(NODE_DIR).display()
            ));
            continue;
        }
        let mut c = Claim::new(e.gpu, Source::Nvidia, Some(n));
        c.size = e
            .size
            .filter(|s| *s > 0)
            .or_else(|| facts.nodes.mem_total(n).filter(|m| *m > 0));
        c.base = e.address;
        c.srat_spm = srat_spm(facts, n);
        let online = e.status == "online";
        c.nvidia_online = Some(online);
        if !online {
            c.problems
                .push(format!("{}: Status is {:?}, not online", path.display(), e.status));
        }
        if !facts.pci.gpus.iter().any(|g| g.address == e.gpu) {
            c.problems.push(format!(
                "GPU {} of {} is not under sys/bus/pci/devices",
                e.gpu,
                path.display()
            ));
        }
        out.push(c);
    }
    out
}

fn dax_claims(facts: &Facts, warnings: &mut Vec<String>) -> Vec<Claim> {
    let mut out = Vec::new();
    let owners_of: BTreeMap<u32, Vec<PciAddress>> = facts.pci.gpus.iter().fold(BTreeMap::new(), |mut m, g| {
        for n in gpu_nodes(g, facts) {
            m.entry(n).or_insert_with(Vec::new).push(g.address);
        }
        m
    });
    for (i, d) in facts.dax.devices.iter().enumerate() {
        let Some(t) = d.target_node else { continue };
        if !d.origin.is_specific_purpose() || facts.nodes.has_cpus(t) {
            continue;
        }
        let Some(owners) = owners_of.get(&t) else { continue };
        if owners.len() > 1 {
            warnings.push(format!(
                "dax device {} (target node {t}) is near several GPUs ({}); name its owner in the discovery config",
                d.name,
                owners.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
            ));
            continue;
        }
        let mut c = Claim::new(owners[0], Source::Dax, Some(t));
        c.dax = Some(i);
        c.size = d.size.as_ref().ok().copied();
        c.base = d.base;
        c.srat_spm = srat_spm(facts, t);
        out.push(c);
    }
    out
}

fn cpuless_claims(facts: &Facts) -> Vec<Claim> {
    let mut out = Vec::new();
    for g in &facts.pci.gpus {
        let Some(n) = g.numa_node else { continue };
        if facts.nodes.has_cpus(n) || !facts.nodes.is_online(n) {
            continue;
        }
        let Some(mem) = facts.nodes.mem_total(n).filter(|m| *m > 0) else {
            continue;
        };
        let mut c = Claim::new(g.address, Source::CpulessNode, Some(n));
        c.size = Some(mem);
        c.base = srat_base(facts, n);
        c.srat_spm = srat_spm(facts, n);
        out.push(c);
    }
    out
}

fn srat_claims(facts: &Facts) -> Vec<Claim> {
    let mut out = Vec::new();
    if facts.srat.is_none() {
        return out;
    }
    for g in &facts.pci.gpus {
        for n in gpu_nodes(g, facts) {
            if facts.nodes.has_cpus(n) {
                continue;
            }
            let Some(size) = node_size(facts, n) else { continue };
            let mut c = Claim::new(g.address, Source::Srat, Some(n));
            c.size = Some(size);
            c.base = srat_base(facts, n);
            c.srat_spm = srat_spm(facts, n);
            out.push(c);
        }
    }
    out
}

/// Applies the precedence; returns the winning claims.
fn resolve(mut claims: Vec<Claim>, cfg: &DiscoveryConfig, warnings: &mut Vec<String>) -> Vec<Claim> {
    // 1. Configured GPUs take only their config claims.
    claims.retain(|c| c.source == Source::Config || cfg.mapping(c.gpu).is_none());
    // 2. Per (gpu, node): the best source.
    let mut best: BTreeMap<(PciAddress, Option<u32>), Source> = BTreeMap::new();
    for c in &claims {
        let e = best.entry((c.gpu, c.host_node)).or_insert(c.source);
        *e = (*e).min(c.source);
    }
    claims.retain(|c| c.host_node.is_none() || best.get(&(c.gpu, c.host_node)) == Some(&c.source));
    // Keep one claim per (gpu, node, dax).
    let mut seen = BTreeSet::new();
    claims.retain(|c| seen.insert((c.gpu, c.host_node, c.dax, c.missing_dax.clone())));
    // 3. Per node across GPUs.
    let mut by_node: BTreeMap<u32, Vec<(PciAddress, Source)>> = BTreeMap::new();
    for c in &claims {
        if let Some(n) = c.host_node {
            let v = by_node.entry(n).or_default();
            if !v.iter().any(|(g, _)| *g == c.gpu) {
                v.push((c.gpu, c.source));
            }
        }
    }
    let mut drop: BTreeSet<(PciAddress, u32)> = BTreeSet::new();
    for (n, v) in &by_node {
        if v.len() < 2 {
            continue;
        }
        let top = v.iter().map(|(_, s)| *s).min().unwrap_or(Source::Srat);
        let winners: Vec<&(PciAddress, Source)> = v.iter().filter(|(_, s)| *s == top).collect();
        let names = |l: &[&(PciAddress, Source)]| l.iter().map(|(g, _)| g.to_string()).collect::<Vec<_>>().join(", ");
        if top == Source::Config {
            if winners.len() > 1 {
                warnings.push(format!(
                    "node {n} is configured for several GPUs ({}); each gets it",
                    names(&winners)
                ));
            }
            for (g, s) in v.iter().filter(|(_, s)| *s != top) {
                drop.insert((*g, *n));
                warnings.push(format!(
                    "node {n}: {} claim of {g} overridden by the discovery config",
                    s.as_str()
                ));
            }
        } else if winners.len() > 1 {
            warnings.push(format!(
                "node {n} is claimed by several GPUs ({}) via {}; name its owner in the discovery config",
                names(&winners),
                top.as_str()
            ));
            for (g, _) in v {
                drop.insert((*g, *n));
            }
        } else {
            for (g, s) in v.iter().filter(|(_, s)| *s != top) {
                drop.insert((*g, *n));
                warnings.push(format!(
                    "node {n}: {} claim of {g} loses to the {} claim of {}",
                    s.as_str(),
                    top.as_str(),
                    winners[0].0
                ));
            }
        }
    }
    claims.retain(|c| c.host_node.is_none_or(|n| !drop.contains(&(c.gpu, n))));
    claims
}

fn overlaps(ranges: &[(u64, u64)], base: u64, size: u64) -> bool {
    let end = base.saturating_add(size.saturating_sub(1));
    ranges.iter().any(|(s, e)| base <= *e && end >= *s)
}

/// Turns winning claims into regions.
fn to_region(
    fs: &Sysfs,
    c: Claim,
    facts: &Facts,
    gpu_cpu_node: Option<u32>,
    soft: &[(u64, u64)],
    sr_names: &[String],
) -> Region {
    let mut problems = c.problems.clone();
    let dev: Option<&DaxDevice> = c.dax.and_then(|i| facts.dax.devices.get(i));
    let attached = dev.or_else(|| only_spm_dax_of(facts, c.host_node));
    let size = c.size.unwrap_or(0);
    if let Some(d) = dev {
        dax_problems(fs, d, &mut problems);
    } else if c.missing_dax.is_none() && size == 0 && problems.is_empty() {
        problems.push("size unknown (0 bytes)".to_string());
    }
    if let Some(n) = c.host_node {
        node_problems(fs, facts, &c, n, dev.is_some(), attached.is_some(), &mut problems);
    }
    let online = match (dev, c.host_node) {
        (Some(d), _) => d.driver.as_deref() == Some("kmem"),
        (None, Some(n)) => {
            facts.nodes.is_online(n) && facts.nodes.mem_total(n).unwrap_or(0) > 0 && c.nvidia_online.unwrap_or(true)
        }
        (None, None) => false,
    };
    let spm = attached.is_some_and(|d| d.origin.is_specific_purpose())
        || c.srat_spm
        || c.base.is_some_and(|b| overlaps(soft, b, size.max(1)))
        || attached.is_some_and(|d| sr_names.iter().any(|n| n == &d.name));
    let healthy = problems.is_empty();
    Region {
        id: region_id(&c, dev),
        gpu: c.gpu,
        host_node: c.host_node,
        size_bytes: size,
        source: c.source,
        memmap: if spm { Memmap::Spm } else { Memmap::Normal },
        dax: attached.map(DaxDevice::dev_path),
        dax_align: attached.and_then(|d| d.align),
        base: c.base,
        online,
        cpu_node: c.host_node.and_then(|n| nearest_cpu(&facts.nodes, n, gpu_cpu_node)),
        health: if healthy { Health::Healthy } else { Health::Unhealthy },
        reason: (!healthy).then(|| problems.join("; ")),
    }
}

/// A node-level region picks up the dax device when exactly one Soft Reserved device targets
/// its node.
fn only_spm_dax_of(facts: &Facts, node: Option<u32>) -> Option<&DaxDevice> {
    let node = node?;
    let mut targeting = facts
        .dax
        .devices
        .iter()
        .filter(|d| d.target_node == Some(node) && d.origin.is_specific_purpose());
    let first = targeting.next()?;
    targeting.next().is_none().then_some(first)
}

/// `<gpu>/<daxX.Y>` for a dax region (also a configured one that is absent), else
/// `<gpu>/node<N>`.
fn region_id(c: &Claim, dev: Option<&DaxDevice>) -> String {
    match (dev, &c.missing_dax, c.host_node) {
        (Some(d), _, _) => format!("{}/{}", c.gpu, d.name),
        (None, Some(name), _) => format!("{}/{name}", c.gpu),
        (None, None, Some(n)) => format!("{}/node{n}", c.gpu),
        (None, None, None) => format!("{}/unknown", c.gpu),
    }
}

/// What is wrong with a dax region's device: size unreadable or 0, mappings not adding up.
fn dax_problems(fs: &Sysfs, d: &DaxDevice, problems: &mut Vec<String>) {
    let dpath = fs.path(&format!("sys/bus/dax/devices/{}", d.name));
    match &d.size {
        Err(e) => problems.push(format!("{e} (dax device gone or unreadable)")),
        Ok(0) => problems.push(format!("{}/size: 0 bytes", dpath.display())),
        Ok(s) => {
            if let Some(m) = d.mapped_bytes.filter(|m| m != s) {
                problems.push(format!(
                    "{}/mapping*: ranges cover {m} bytes but size says {s}",
                    dpath.display()
                ));
            }
        }
    }
}

/// What is wrong with the region's node `n`: out of range, offline (node regions), MemTotal
/// larger than the region, or memory neither online nor reachable through a dax device.
fn node_problems(
    fs: &Sysfs,
    facts: &Facts,
    c: &Claim,
    n: u32,
    dax_region: bool,
    dax_attached: bool,
    problems: &mut Vec<String>,
) {
    let nodes_dir = fs.path(NODE_DIR);
    let size = c.size.unwrap_or(0);
    if !facts.nodes.in_range(n) {
        problems.push(format!("node {n} is out of range ({}/possible)", nodes_dir.display()));
    } else if !dax_region && !facts.nodes.is_online(n) {
        problems.push(format!("node {n} is not online ({}/online)", nodes_dir.display()));
    }
    if dax_region {
        return;
    }
    let Some(m) = facts.nodes.mem_total(n) else {
        return;
    };
    if size > 0 && m > size {
        problems.push(format!(
            "{}/node{n}/meminfo: MemTotal {m} bytes exceeds the region size {size}",
            nodes_dir.display()
        ));
    }
    if m == 0 && !dax_attached && c.nvidia_online.is_none() {
        problems.push(format!(
            "{}/node{n}/meminfo: MemTotal 0 and no dax device reaches node {n}: the memory is not usable",
            nodes_dir.display()
        ));
    }
    if c.nvidia_online == Some(true) && m == 0 {
        problems.push(format!(
            "{}/node{n}/meminfo: MemTotal 0 though numa_status says online",
            nodes_dir.display()
        ));
    }
}

/// Nearest CPU node of `node` by distance; among equally near nodes the owning GPU's own CPU
/// node is preferred, then the lowest id.
pub(crate) fn nearest_cpu(nodes: &NodeTable, node: u32, prefer: Option<u32>) -> Option<u32> {
    if nodes.has_cpus(node) {
        return Some(node);
    }
    let cands: Vec<(u32, u32)> = nodes
        .nodes
        .keys()
        .copied()
        .filter(|c| nodes.has_cpus(*c))
        .filter_map(|c| nodes.distance(node, c).map(|d| (d, c)))
        .collect();
    let best = cands.iter().map(|(d, _)| *d).min()?;
    let tied: Vec<u32> = cands.iter().filter(|(d, _)| *d == best).map(|(_, c)| *c).collect();
    match prefer {
        Some(p) if tied.contains(&p) => Some(p),
        _ => tied.into_iter().min(),
    }
}

/// GPU's nearest CPU node: its own node when it has CPUs, else by distance from it, else the node
/// whose CPUs cover `local_cpulist`.
pub(crate) fn gpu_cpu_node(nodes: &NodeTable, g: &PciGpu) -> Option<u32> {
    let by_local = nodes.node_of_cpus(&g.local_cpus);
    match g.numa_node {
        Some(n) => nearest_cpu(nodes, n, by_local).or(by_local),
        None => by_local,
    }
}

/// All regions, sorted by (gpu, host_node, id).
pub(crate) fn regions(fs: &Sysfs, cfg: &DiscoveryConfig, facts: &Facts, warnings: &mut Vec<String>) -> Vec<Region> {
    let mut claims = config_claims(fs, cfg, facts);
    claims.extend(nvidia_claims(fs, facts, warnings));
    claims.extend(dax_claims(facts, warnings));
    claims.extend(cpuless_claims(facts));
    claims.extend(srat_claims(facts));
    let winners = resolve(claims, cfg, warnings);
    let mut soft = crate::memmap::soft_reserved(&facts.memmap);
    let mut sr_names = Vec::new();
    if let Some(io) = &facts.iomem {
        soft.extend(io.soft_reserved());
        sr_names = io.soft_reserved_neighbours();
    }
    let cpu_nodes: BTreeMap<PciAddress, Option<u32>> = facts
        .pci
        .gpus
        .iter()
        .map(|g| (g.address, gpu_cpu_node(&facts.nodes, g)))
        .collect();
    let mut out: Vec<Region> = winners
        .into_iter()
        .map(|c| {
            let pref = cpu_nodes.get(&c.gpu).copied().flatten();
            to_region(fs, c, facts, pref, &soft, &sr_names)
        })
        .collect();
    out.sort_by(|a, b| (a.gpu, a.host_node, &a.id).cmp(&(b.gpu, b.host_node, &b.id)));
    out
}
