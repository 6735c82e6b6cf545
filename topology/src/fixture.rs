//! Synthetic hosts for tests, benchmarks and the bundled sample: a [`FixtureHost`] builder that
//! writes a sysfs/procfs tree (the files discovery reads, in the kernel's formats) into a
//! directory, presets for the host shapes the project cares about, an [`SratBuilder`] that
//! produces a binary ACPI SRAT, and in-place edits of a written tree ([`bind_driver`],
//! [`remove_dax_device`], ...) for tests that change a host under a running component.
//!
//! Enabled by the `fixture` cargo feature (dev-dependency use:
//! `topology = { workspace = true, features = ["fixture"] }`).
//!
//! Layout written (all paths relative to the directory given to [`FixtureHost::write_to`]):
//! `sys/devices/system/node/{possible,online,has_*,nodeN/{cpulist,meminfo,distance,accessK/...}}`,
//! `sys/devices/pciDDDD:BB/<addr>/{vendor,device,class,numa_node,local_cpulist,driver,iommu_group}`
//! with `sys/bus/pci/devices/<addr>` links, `sys/kernel/iommu_groups/N/devices/<addr>`,
//! `sys/bus/dax/devices/daxX.Y` links into `sys/devices/platform/hmem.N/...` (or CXL / NVDIMM
//! parents), `sys/firmware/memmap/N/{start,end,type}`, `proc/iomem`,
//! `proc/driver/nvidia/gpus/<addr>/numa_status`, `sys/firmware/acpi/tables/SRAT`.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::PciAddress;

const GIB: u64 = 1 << 30;

/// A PCI function to write. GPUs are functions whose class is 0x03xxxx or 0x1200xx.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciFunction {
    pub address: PciAddress,
    pub vendor: u16,
    pub device: u16,
    /// 24-bit class code, e.g. `0x120000` (processing accelerator) or `0x030200` (3D controller).
    pub class: u32,
    /// Bound driver name (`vfio-pci`, `amdgpu`, `nvidia`), `None` = unbound.
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
    /// `numa_node`; `None` writes `-1`.
    pub numa_node: Option<u32>,
    /// `local_cpulist`; `None` writes the CPUs of `numa_node` (empty when unknown).
    pub local_cpulist: Option<String>,
}

impl PciFunction {
    /// A GPU-class function (processing accelerator, AMD vendor id) with no driver, no IOMMU
    /// group and no NUMA node; adjust with the chained setters.
    pub fn gpu(address: PciAddress) -> Self {
        Self {
            address,
            vendor: 0x1002,
            device: 0x74a1,
            class: 0x120000,
            driver: None,
            iommu_group: None,
            numa_node: None,
            local_cpulist: None,
        }
    }

    /// A non-GPU function (an NVMe controller by default).
    pub fn other(address: PciAddress) -> Self {
        Self {
            vendor: 0x144d,
            device: 0xa80a,
            class: 0x010802,
            ..Self::gpu(address)
        }
    }

    pub fn vendor(mut self, vendor: u16) -> Self {
        self.vendor = vendor;
        self
    }
    pub fn device(mut self, device: u16) -> Self {
        self.device = device;
        self
    }
    pub fn class(mut self, class: u32) -> Self {
        self.class = class;
        self
    }
    pub fn driver(mut self, driver: Option<&str>) -> Self {
        self.driver = driver.map(str::to_string);
        self
    }
    pub fn iommu_group(mut self, group: Option<u32>) -> Self {
        self.iommu_group = group;
        self
    }
    pub fn numa_node(mut self, node: Option<u32>) -> Self {
        self.numa_node = node;
        self
    }
    pub fn local_cpulist(mut self, cpus: &str) -> Self {
        self.local_cpulist = Some(cpus.to_string());
        self
    }
}

/// Where a dax device hangs in the device tree, which is how discovery tells its source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DaxParent {
    /// `devices/platform/hmem.N`: Soft Reserved (EFI specific-purpose) memory.
    Hmem(u32),
    /// `devices/platform/ACPI0017:00/root0/decoder0.0/regionN/dax_regionN`: a CXL region.
    Cxl(u32),
    /// `devices/LNXSYSTM:00/LNXSYBUS:00/ACPI0012:00/ndbus0/regionN/daxN.1`: NVDIMM namespace.
    Nvdimm(u32),
}

/// A device-dax instance to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaxDevice {
    /// `daxX.Y`.
    pub name: String,
    pub target_node: u32,
    pub size: u64,
    pub align: u64,
    pub parent: DaxParent,
    /// Physical start of its range (`resource`, `mapping0/start`).
    pub base: u64,
    /// `true`: bound to `kmem` (memory onlined into `target_node`); `false`: `device_dax`.
    pub kmem: bool,
}

impl DaxDevice {
    /// A `device_dax`-bound device over Soft Reserved memory (`hmem.<X>` for `daxX.Y`), 2 MiB
    /// aligned, base to be filled in from the node's range when the host is written (0 = auto).
    pub fn hmem(name: &str, target_node: u32, size: u64) -> Self {
        let region = name
            .trim_start_matches("dax")
            .split('.')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Self {
            name: name.to_string(),
            target_node,
            size,
            align: 2 << 20,
            parent: DaxParent::Hmem(region),
            base: 0,
            kmem: false,
        }
    }
    pub fn parent(mut self, parent: DaxParent) -> Self {
        self.parent = parent;
        self
    }
    pub fn align(mut self, align: u64) -> Self {
        self.align = align;
        self
    }
    pub fn base(mut self, base: u64) -> Self {
        self.base = base;
        self
    }
    pub fn kmem(mut self, kmem: bool) -> Self {
        self.kmem = kmem;
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct NodeSpec {
    id: u32,
    cpus: String,
    /// Bytes of memory in the node's range.
    size: u64,
    /// Memory onlined in the node (MemTotal = size) vs. held back (dax / offline).
    memory_online: bool,
    /// Firmware typed the range Specific Purpose (EFI_MEMORY_SP, "Soft Reserved").
    spm: bool,
    generic_initiator: bool,
    base: u64,
    /// Access class 0/1 performance: (read_bw MB/s, write_bw, read_lat ns, write_lat).
    hmat: Option<(u64, u64, u64, u64)>,
}

/// `/proc/driver/nvidia/gpus/<addr>/numa_status` content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvidiaNumaStatus {
    pub gpu: PciAddress,
    /// `-1` when the driver has no node for the GPU.
    pub node: i64,
    /// `online`, `offline`, `online_in_progress`, ...
    pub status: String,
    pub address: u64,
    pub size: u64,
}

/// A synthetic host. Build with the methods, then [`FixtureHost::write_to`] a directory that
/// then serves as `--sysfs-root`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FixtureHost {
    nodes: BTreeMap<u32, NodeSpec>,
    pci: BTreeMap<PciAddress, PciFunction>,
    dax: Vec<DaxDevice>,
    nvidia: Vec<NvidiaNumaStatus>,
    distances: BTreeMap<(u32, u32), u32>,
    srat: Option<Vec<u8>>,
    extra_memmap: Vec<(u64, u64, String)>,
    write_iomem: bool,
    write_memmap: bool,
    next_base: u64,
}

impl FixtureHost {
    /// An empty host (no nodes, no devices). `proc/iomem` and `sys/firmware/memmap` are written.
    pub fn new() -> Self {
        Self {
            write_iomem: true,
            write_memmap: true,
            next_base: 4 * GIB,
            ..Default::default()
        }
    }

    fn alloc_range(&mut self, size: u64) -> u64 {
        let base = self.next_base;
        self.next_base = (base + size.max(1)).div_ceil(GIB) * GIB;
        base
    }

    /// A node with CPUs (`cpus` in cpulist form, e.g. `0-31`) and `mem_bytes` of System RAM.
    pub fn cpu_node(mut self, id: u32, cpus: &str, mem_bytes: u64) -> Self {
        let base = self.alloc_range(mem_bytes);
        self.nodes.insert(
            id,
            NodeSpec {
                id,
                cpus: cpus.to_string(),
                size: mem_bytes,
                memory_online: true,
                spm: false,
                generic_initiator: false,
                base,
                hmat: None,
            },
        );
        self
    }

    /// A CPU-less node holding `size_bytes` of HBM. `spm`: firmware typed it Specific Purpose
    /// (Soft Reserved in memmap/iomem). `online`: the memory is onlined in the node (MemTotal =
    /// size, node listed in `online`/`has_memory`); otherwise the node is offline and only a dax
    /// device (if added) reaches the memory — unless it is also a generic initiator, which keeps
    /// the node online with MemTotal 0.
    pub fn hbm_node(mut self, id: u32, size_bytes: u64, spm: bool, online: bool) -> Self {
        let base = self.alloc_range(size_bytes);
        self.nodes.insert(
            id,
            NodeSpec {
                id,
                cpus: String::new(),
                size: size_bytes,
                memory_online: online,
                spm,
                generic_initiator: false,
                base,
                hmat: None,
            },
        );
        self
    }

    /// A generic-initiator node without memory (e.g. a Grace Hopper MIG node before use).
    pub fn gi_node(mut self, id: u32) -> Self {
        self.nodes.insert(
            id,
            NodeSpec {
                id,
                cpus: String::new(),
                size: 0,
                memory_online: false,
                spm: false,
                generic_initiator: true,
                base: 0,
                hmat: None,
            },
        );
        self
    }

    /// Lists node `id` (already added) in `has_generic_initiator`; keeps it online.
    pub fn generic_initiator(mut self, id: u32) -> Self {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.generic_initiator = true;
        }
        self
    }

    /// HMAT access0/access1 figures for node `id` (bandwidth MB/s, latency ns).
    pub fn hmat(mut self, id: u32, read_bw: u64, write_bw: u64, read_lat: u64, write_lat: u64) -> Self {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.hmat = Some((read_bw, write_bw, read_lat, write_lat));
        }
        self
    }

    /// Symmetric SLIT distance between two nodes (default: 10 to self, 20 CPU-CPU, 30 otherwise).
    pub fn distance(mut self, a: u32, b: u32, d: u32) -> Self {
        self.distances.insert((a, b), d);
        self.distances.insert((b, a), d);
        self
    }

    /// Adds (or replaces) a GPU or other PCI function.
    pub fn pci(mut self, f: PciFunction) -> Self {
        self.pci.insert(f.address, f);
        self
    }

    /// Shorthand for a GPU: [`PciFunction::gpu`] with vendor, device, driver, group and node.
    pub fn gpu(
        self,
        address: &str,
        vendor: u16,
        device: u16,
        driver: Option<&str>,
        iommu_group: Option<u32>,
        numa_node: Option<u32>,
    ) -> Self {
        let Ok(addr) = PciAddress::parse(address) else {
            return self;
        };
        self.pci(
            PciFunction::gpu(addr)
                .vendor(vendor)
                .device(device)
                .driver(driver)
                .iommu_group(iommu_group)
                .numa_node(numa_node),
        )
    }

    /// Removes a PCI function (no-op when absent).
    pub fn without_pci(mut self, address: PciAddress) -> Self {
        self.pci.remove(&address);
        self
    }

    /// Changes the driver binding of a function already added.
    pub fn set_driver(mut self, address: PciAddress, driver: Option<&str>) -> Self {
        if let Some(f) = self.pci.get_mut(&address) {
            f.driver = driver.map(str::to_string);
        }
        self
    }

    /// Adds a dax device. A `base` of 0 takes the target node's range start.
    pub fn dax(mut self, dev: DaxDevice) -> Self {
        self.dax.push(dev);
        self
    }

    /// Removes a dax device by name (no-op when absent).
    pub fn without_dax(mut self, name: &str) -> Self {
        self.dax.retain(|d| d.name != name);
        self
    }

    /// Adds `/proc/driver/nvidia/gpus/<gpu>/numa_status`.
    pub fn nvidia_numa_status(mut self, status: NvidiaNumaStatus) -> Self {
        self.nvidia.push(status);
        self
    }

    /// Writes these bytes as `sys/firmware/acpi/tables/SRAT`.
    pub fn srat(mut self, bytes: Vec<u8>) -> Self {
        self.srat = Some(bytes);
        self
    }

    /// Builds an SRAT from the nodes added so far with PXM = node id: a LAPIC entry per CPU of
    /// each CPU node, a PCI Generic Initiator for every GPU whose `numa_node` is a GI node, and a
    /// memory entry per node (specific-purpose flag for SPM nodes). The kernel's numbering
    /// reproduces the node ids when CPU/GI nodes have lower ids than memory-only ones.
    pub fn with_generated_srat(mut self) -> Self {
        let mut b = SratBuilder::new();
        let mut apic = 0u32;
        for n in self.nodes.values() {
            for _ in expand_cpulist(&n.cpus) {
                b = b.lapic(n.id, apic);
                apic += 1;
            }
        }
        for n in self.nodes.values().filter(|n| n.generic_initiator) {
            for f in self
                .pci
                .values()
                .filter(|f| f.numa_node == Some(n.id) && is_gpu_class(f.class))
            {
                b = b.generic_initiator_pci(n.id, f.address, true);
            }
        }
        for n in self.nodes.values().filter(|n| n.size > 0) {
            let flags = MEM_ENABLED | if n.spm { MEM_SPECIFIC_PURPOSE } else { 0 };
            b = b.memory(n.id, n.base, n.size, flags);
        }
        self.srat = Some(b.build());
        self
    }

    /// Adds a raw `sys/firmware/memmap` entry (start, inclusive end, type string).
    pub fn memmap_entry(mut self, start: u64, end: u64, kind: &str) -> Self {
        self.extra_memmap.push((start, end, kind.to_string()));
        self
    }

    /// Omits `proc/iomem` (as in a container without procfs bind).
    pub fn without_iomem(mut self) -> Self {
        self.write_iomem = false;
        self
    }

    /// Omits `sys/firmware/memmap` (as on arm64).
    pub fn without_memmap(mut self) -> Self {
        self.write_memmap = false;
        self
    }

    /// Node ids, PCI functions and dax devices of this host (for assertions).
    pub fn pci_functions(&self) -> impl Iterator<Item = &PciFunction> {
        self.pci.values()
    }
    pub fn dax_devices(&self) -> &[DaxDevice] {
        &self.dax
    }

    fn node_online(n: &NodeSpec) -> bool {
        !n.cpus.is_empty() || n.memory_online || n.generic_initiator
    }

    fn default_distance(&self, a: &NodeSpec, b: &NodeSpec) -> u32 {
        if let Some(d) = self.distances.get(&(a.id, b.id)) {
            return *d;
        }
        if a.id == b.id {
            10
        } else if !a.cpus.is_empty() && !b.cpus.is_empty() {
            20
        } else {
            30
        }
    }

    /// Writes the tree into `dir` (created if missing). Writing into a non-empty directory adds
    /// and overwrites files; use a fresh directory per host.
    pub fn write_to(&self, dir: &Path) -> io::Result<()> {
        let w = TreeWriter {
            root: dir.to_path_buf(),
        };
        let nodes: Vec<&NodeSpec> = self.nodes.values().collect();
        let online: Vec<u32> = nodes.iter().filter(|n| Self::node_online(n)).map(|n| n.id).collect();
        let ids = |pred: &dyn Fn(&NodeSpec) -> bool| -> String {
            format_cpulist(&nodes.iter().filter(|n| pred(n)).map(|n| n.id).collect::<Vec<_>>())
        };
        let nd = "sys/devices/system/node";
        let max_id = nodes.iter().map(|n| n.id).max().unwrap_or(0);
        w.file(
            &format!("{nd}/possible"),
            &format!("{}\n", format_cpulist(&(0..=max_id).collect::<Vec<_>>())),
        )?;
        w.file(&format!("{nd}/online"), &format!("{}\n", format_cpulist(&online)))?;
        w.file(&format!("{nd}/has_cpu"), &format!("{}\n", ids(&|n| !n.cpus.is_empty())))?;
        w.file(
            &format!("{nd}/has_memory"),
            &format!("{}\n", ids(&|n| n.memory_online && n.size > 0)),
        )?;
        w.file(
            &format!("{nd}/has_normal_memory"),
            &format!("{}\n", ids(&|n| !n.cpus.is_empty() && n.memory_online && n.size > 0)),
        )?;
        w.file(
            &format!("{nd}/has_generic_initiator"),
            &format!("{}\n", ids(&|n| n.generic_initiator)),
        )?;
        let online_nodes: Vec<&NodeSpec> = nodes.iter().copied().filter(|n| Self::node_online(n)).collect();
        for n in &online_nodes {
            let dir = format!("{nd}/node{}", n.id);
            w.file(&format!("{dir}/cpulist"), &format!("{}\n", n.cpus))?;
            let kb = if n.memory_online { n.size / 1024 } else { 0 };
            w.file(
                &format!("{dir}/meminfo"),
                &format!(
                    "Node {id} MemTotal:       {kb:>8} kB\nNode {id} MemFree:        {kb:>8} kB\nNode {id} MemUsed:               0 kB\n",
                    id = n.id
                ),
            )?;
            let dist: Vec<String> = online_nodes
                .iter()
                .map(|m| self.default_distance(n, m).to_string())
                .collect();
            w.file(&format!("{dir}/distance"), &format!("{}\n", dist.join(" ")))?;
            if let Some((rbw, wbw, rl, wl)) = n.hmat {
                for access in ["access0", "access1"] {
                    let base = format!("{dir}/{access}/initiators");
                    w.file(&format!("{base}/read_bandwidth"), &format!("{rbw}\n"))?;
                    w.file(&format!("{base}/write_bandwidth"), &format!("{wbw}\n"))?;
                    w.file(&format!("{base}/read_latency"), &format!("{rl}\n"))?;
                    w.file(&format!("{base}/write_latency"), &format!("{wl}\n"))?;
                }
            }
        }
        self.write_pci(&w)?;
        self.write_dax(&w)?;
        self.write_memory_maps(&w)?;
        for s in &self.nvidia {
            w.file(
                &format!("proc/driver/nvidia/gpus/{}/numa_status", s.gpu),
                &format!(
                    "Node:      {}\nStatus:    {}\nAddress:   {:x}\nSize:      {:x}\n",
                    s.node, s.status, s.address, s.size
                ),
            )?;
        }
        if let Some(srat) = &self.srat {
            w.bytes("sys/firmware/acpi/tables/SRAT", srat)?;
        }
        Ok(())
    }

    fn write_pci(&self, w: &TreeWriter) -> io::Result<()> {
        w.dir("sys/bus/pci/devices")?;
        for f in self.pci.values() {
            let addr = f.address.to_string();
            let dev = format!("sys/devices/pci{:04x}:{:02x}/{addr}", f.address.domain, f.address.bus);
            w.file(&format!("{dev}/vendor"), &format!("0x{:04x}\n", f.vendor))?;
            w.file(&format!("{dev}/device"), &format!("0x{:04x}\n", f.device))?;
            w.file(&format!("{dev}/class"), &format!("0x{:06x}\n", f.class))?;
            let node = f.numa_node.map_or("-1".to_string(), |n| n.to_string());
            w.file(&format!("{dev}/numa_node"), &format!("{node}\n"))?;
            let local = match (&f.local_cpulist, f.numa_node.and_then(|n| self.nodes.get(&n))) {
                (Some(c), _) => c.clone(),
                (None, Some(n)) if !n.cpus.is_empty() => n.cpus.clone(),
                _ => self.nearest_cpus(f.numa_node),
            };
            w.file(&format!("{dev}/local_cpulist"), &format!("{local}\n"))?;
            if let Some(drv) = &f.driver {
                w.driver_dir(&format!("sys/bus/pci/drivers/{drv}"))?;
                w.link(&format!("{dev}/driver"), &format!("../../../bus/pci/drivers/{drv}"))?;
            }
            if let Some(g) = f.iommu_group {
                w.link(
                    &format!("{dev}/iommu_group"),
                    &format!("../../../kernel/iommu_groups/{g}"),
                )?;
                w.link(
                    &format!("sys/kernel/iommu_groups/{g}/devices/{addr}"),
                    &format!(
                        "../../../../devices/pci{:04x}:{:02x}/{addr}",
                        f.address.domain, f.address.bus
                    ),
                )?;
            }
            w.link(
                &format!("sys/bus/pci/devices/{addr}"),
                &format!(
                    "../../../devices/pci{:04x}:{:02x}/{addr}",
                    f.address.domain, f.address.bus
                ),
            )?;
        }
        Ok(())
    }

    /// CPUs of the CPU node nearest to `node` (what the kernel prints as a CPU-less device's
    /// `local_cpulist` is all CPUs; nearest is what firmware topologies usually give).
    fn nearest_cpus(&self, node: Option<u32>) -> String {
        let Some(n) = node.and_then(|n| self.nodes.get(&n)) else {
            return String::new();
        };
        self.nodes
            .values()
            .filter(|c| !c.cpus.is_empty())
            .min_by_key(|c| (self.default_distance(n, c), c.id))
            .map(|c| c.cpus.clone())
            .unwrap_or_default()
    }

    fn dax_base(&self, d: &DaxDevice) -> u64 {
        if d.base != 0 {
            return d.base;
        }
        self.nodes.get(&d.target_node).map_or(0, |n| n.base)
    }

    fn write_dax(&self, w: &TreeWriter) -> io::Result<()> {
        if self.dax.is_empty() {
            return Ok(());
        }
        w.dir("sys/bus/dax/devices")?;
        w.driver_dir("sys/bus/dax/drivers/device_dax")?;
        w.driver_dir("sys/bus/dax/drivers/kmem")?;
        for d in &self.dax {
            let parent = match &d.parent {
                DaxParent::Hmem(n) => format!("sys/devices/platform/hmem.{n}"),
                DaxParent::Cxl(r) => {
                    format!("sys/devices/platform/ACPI0017:00/root0/decoder0.0/region{r}/dax_region{r}")
                }
                DaxParent::Nvdimm(r) => {
                    format!("sys/devices/LNXSYSTM:00/LNXSYBUS:00/ACPI0012:00/ndbus0/region{r}/dax{r}.1")
                }
            };
            let dev = format!("{parent}/{}", d.name);
            let base = self.dax_base(d);
            let numa_node = self.nearest_cpu_node(d.target_node).unwrap_or(0);
            w.file(&format!("{dev}/size"), &format!("{}\n", d.size))?;
            w.file(&format!("{dev}/target_node"), &format!("{}\n", d.target_node))?;
            w.file(&format!("{dev}/numa_node"), &format!("{numa_node}\n"))?;
            w.file(&format!("{dev}/align"), &format!("{}\n", d.align))?;
            w.file(&format!("{dev}/resource"), &format!("{base:#x}\n"))?;
            w.file(&format!("{dev}/mapping0/start"), &format!("{base:#x}\n"))?;
            w.file(
                &format!("{dev}/mapping0/end"),
                &format!("{:#x}\n", base + d.size.saturating_sub(1)),
            )?;
            w.file(&format!("{dev}/mapping0/page_offset"), "0x0\n")?;
            // From the device folder, `depth` levels up is `sys/`.
            let depth = dev.matches('/').count();
            let drv = if d.kmem { "kmem" } else { "device_dax" };
            let rel = dev.trim_start_matches("sys/");
            w.link(
                &format!("{dev}/driver"),
                &format!("{}bus/dax/drivers/{drv}", "../".repeat(depth)),
            )?;
            w.link(
                &format!("sys/bus/dax/drivers/{drv}/{}", d.name),
                &format!("../../../../{rel}"),
            )?;
            w.link(&format!("sys/bus/dax/devices/{}", d.name), &format!("../../../{rel}"))?;
        }
        Ok(())
    }

    fn nearest_cpu_node(&self, node: u32) -> Option<u32> {
        let n = self.nodes.get(&node)?;
        if !n.cpus.is_empty() {
            return Some(node);
        }
        self.nodes
            .values()
            .filter(|c| !c.cpus.is_empty())
            .min_by_key(|c| (self.default_distance(n, c), c.id))
            .map(|c| c.id)
    }

    fn write_memory_maps(&self, w: &TreeWriter) -> io::Result<()> {
        // (start, inclusive end, memmap type, iomem lines nested under it)
        let mut ranges: Vec<(u64, u64, String, Vec<String>)> = vec![
            (0, 0xfff, "Reserved".into(), vec![]),
            (0x1000, 0x9fbff, "System RAM".into(), vec![]),
            (0x100000, 0x7fffffff, "System RAM".into(), vec![]),
        ];
        for n in self.nodes.values().filter(|n| n.size > 0) {
            let end = n.base + n.size - 1;
            if n.spm {
                let mut nested = Vec::new();
                for d in self.dax.iter().filter(|d| d.target_node == n.id) {
                    let b = self.dax_base(d);
                    nested.push(format!("    {:x}-{:x} : {}", b, b + d.size.saturating_sub(1), d.name));
                    if d.kmem {
                        nested.push(format!(
                            "      {:x}-{:x} : System RAM (kmem)",
                            b,
                            b + d.size.saturating_sub(1)
                        ));
                    }
                }
                ranges.push((n.base, end, "Soft Reserved".into(), nested));
            } else {
                ranges.push((n.base, end, "System RAM".into(), vec![]));
            }
        }
        for (s, e, t) in &self.extra_memmap {
            ranges.push((*s, *e, t.clone(), vec![]));
        }
        ranges.sort_by_key(|r| r.0);
        if self.write_memmap {
            for (i, (s, e, t, _)) in ranges.iter().enumerate() {
                let d = format!("sys/firmware/memmap/{i}");
                w.file(&format!("{d}/start"), &format!("{s:#x}\n"))?;
                w.file(&format!("{d}/end"), &format!("{e:#x}\n"))?;
                w.file(&format!("{d}/type"), &format!("{t}\n"))?;
            }
        }
        if self.write_iomem {
            let mut text = String::new();
            let mut hmem = 0;
            for (s, e, t, nested) in &ranges {
                if t == "Soft Reserved" {
                    // The kernel's hmem platform device claims the range, Soft Reserved below it.
                    text.push_str(&format!(
                        "{s:08x}-{e:08x} : hmem.{hmem}\n  {s:08x}-{e:08x} : Soft Reserved\n"
                    ));
                    hmem += 1;
                    for l in nested {
                        text.push_str(l);
                        text.push('\n');
                    }
                } else {
                    text.push_str(&format!("{s:08x}-{e:08x} : {t}\n"));
                }
            }
            w.file("proc/iomem", &text)?;
        }
        Ok(())
    }
}

pub use crate::pci::is_gpu_class;

struct TreeWriter {
    root: PathBuf,
}

impl TreeWriter {
    fn dir(&self, rel: &str) -> io::Result<()> {
        fs::create_dir_all(self.root.join(rel))
    }
    /// A driver folder with its `bind`/`unbind` attributes (so the folder is never empty and
    /// survives in git for committed sample hosts).
    fn driver_dir(&self, rel: &str) -> io::Result<()> {
        self.file(&format!("{rel}/bind"), "")?;
        self.file(&format!("{rel}/unbind"), "")
    }
    fn file(&self, rel: &str, content: &str) -> io::Result<()> {
        self.bytes(rel, content.as_bytes())
    }
    fn bytes(&self, rel: &str, content: &[u8]) -> io::Result<()> {
        let p = self.root.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(p, content)
    }
    fn link(&self, rel: &str, target: &str) -> io::Result<()> {
        let p = self.root.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        match fs::symlink_metadata(&p) {
            Ok(_) => fs::remove_file(&p)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::os::unix::fs::symlink(target, p)
    }
}

/// `0-3,8` for `[0,1,2,3,8]` (input sorted or not; duplicates ignored).
pub fn format_cpulist(ids: &[u32]) -> String {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        let mut end = start;
        while i + 1 < v.len() && v[i + 1] == end + 1 {
            i += 1;
            end = v[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

fn expand_cpulist(s: &str) -> Vec<u32> {
    let mut v = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    v.extend(a..=b);
                }
            }
            None => v.extend(part.parse::<u32>().ok()),
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------
// SRAT

/// Memory affinity flag bits (ACPI 6.6 5.2.16.2).
pub use crate::srat::{MEM_ENABLED, MEM_HOT_PLUGGABLE, MEM_NON_VOLATILE, MEM_SPECIFIC_PURPOSE};

/// Builds a binary ACPI SRAT (revision 3) with a correct checksum.
#[derive(Clone, Debug, Default)]
pub struct SratBuilder {
    body: Vec<u8>,
}

impl SratBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Type 0 Processor Local APIC affinity, enabled.
    pub fn lapic(mut self, pxm: u32, apic_id: u32) -> Self {
        let mut e = [0u8; 16];
        e[0] = 0;
        e[1] = 16;
        e[2] = (pxm & 0xff) as u8;
        e[3] = (apic_id & 0xff) as u8;
        e[4..8].copy_from_slice(&1u32.to_le_bytes());
        e[9] = ((pxm >> 8) & 0xff) as u8;
        e[10] = ((pxm >> 16) & 0xff) as u8;
        e[11] = ((pxm >> 24) & 0xff) as u8;
        self.body.extend_from_slice(&e);
        self
    }

    /// Type 2 Processor Local x2APIC affinity, enabled.
    pub fn x2apic(mut self, pxm: u32, x2apic_id: u32) -> Self {
        let mut e = [0u8; 24];
        e[0] = 2;
        e[1] = 24;
        e[4..8].copy_from_slice(&pxm.to_le_bytes());
        e[8..12].copy_from_slice(&x2apic_id.to_le_bytes());
        e[12..16].copy_from_slice(&1u32.to_le_bytes());
        self.body.extend_from_slice(&e);
        self
    }

    /// Type 1 Memory affinity with the given flags ([`MEM_ENABLED`], [`MEM_SPECIFIC_PURPOSE`], ...).
    pub fn memory(mut self, pxm: u32, base: u64, length: u64, flags: u32) -> Self {
        let mut e = [0u8; 40];
        e[0] = 1;
        e[1] = 40;
        e[2..6].copy_from_slice(&pxm.to_le_bytes());
        e[8..16].copy_from_slice(&base.to_le_bytes());
        e[16..24].copy_from_slice(&length.to_le_bytes());
        e[28..32].copy_from_slice(&flags.to_le_bytes());
        self.body.extend_from_slice(&e);
        self
    }

    /// Type 5 Generic Initiator affinity with a PCI device handle, enabled. `spec_order`: true
    /// writes segment, bus, devfn (bytes 2 = bus, 3 = devfn of the handle); false writes the BDF
    /// as a little-endian u16 (devfn first), as older QEMU did.
    pub fn generic_initiator_pci(mut self, pxm: u32, addr: PciAddress, spec_order: bool) -> Self {
        let mut e = [0u8; 32];
        e[0] = 5;
        e[1] = 32;
        e[3] = 1; // PCI handle
        e[4..8].copy_from_slice(&pxm.to_le_bytes());
        e[8..10].copy_from_slice(&addr.domain.to_le_bytes());
        if spec_order {
            e[10] = addr.bus;
            e[11] = addr.devfn();
        } else {
            e[10] = addr.devfn();
            e[11] = addr.bus;
        }
        e[24..28].copy_from_slice(&1u32.to_le_bytes());
        self.body.extend_from_slice(&e);
        self
    }

    /// Appends raw subtable bytes (for malformed-input tests).
    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.body.extend_from_slice(bytes);
        self
    }

    /// The table: 36-byte header, revision u32, reserved u64, subtables; checksum fixed up.
    pub fn build(&self) -> Vec<u8> {
        let len = 48 + self.body.len();
        let mut t = Vec::with_capacity(len);
        t.extend_from_slice(b"SRAT");
        t.extend_from_slice(&(len as u32).to_le_bytes());
        t.push(3); // revision
        t.push(0); // checksum, fixed below
        t.extend_from_slice(b"HBMPT ");
        t.extend_from_slice(b"FIXTURE ");
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(b"HBMP");
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(&1u32.to_le_bytes()); // table revision @36
        t.extend_from_slice(&0u64.to_le_bytes()); // reserved @40
        t.extend_from_slice(&self.body);
        let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        t[9] = 0u8.wrapping_sub(sum);
        t
    }
}

// ---------------------------------------------------------------------------------------------
// Presets

fn addr(s: &str) -> PciAddress {
    // Presets use literal, valid addresses.
    PciAddress::parse(s).unwrap_or(PciAddress::new(0, 0, 0, 0))
}

/// A healthy HBM region of `size_bytes` on host node `host_node`, owned by `gpu`: id
/// `<gpu>/node<N>`, SPM, online, found in the SRAT, nearest CPU node 0. The one literal tests and
/// benchmarks start from; change what a case needs with struct update syntax
/// (`Region { dax: Some(..), online: false, ..region(gpu, 2, size) }`).
pub fn region(gpu: PciAddress, host_node: u32, size_bytes: u64) -> crate::Region {
    crate::Region {
        id: format!("{gpu}/node{host_node}"),
        gpu,
        host_node: Some(host_node),
        size_bytes,
        source: crate::Source::Srat,
        memmap: crate::Memmap::Spm,
        dax: None,
        dax_align: None,
        base: None,
        online: true,
        cpu_node: Some(0),
        health: crate::Health::Healthy,
        reason: None,
    }
}

/// A seed-style AMD host: node 0 with CPUs 0-31 and 128 GiB, node 1 a CPU-less 64 GiB
/// Specific-Purpose HBM node (generic initiator, memory held by `dax0.0` on `device_dax`), GPU
/// 0000:c1:00.0 (1002:74a1, processing accelerator) bound to vfio-pci in IOMMU group 12 whose
/// `numa_node` (host-bridge `_PXM`) is node 1. Generated SRAT (PXM = node id).
pub fn seed_amd() -> FixtureHost {
    FixtureHost::new()
        .cpu_node(0, "0-31", 128 * GIB)
        .hbm_node(1, 64 * GIB, true, false)
        .generic_initiator(1)
        .distance(0, 1, 20)
        .hmat(1, 3_276_800, 3_276_800, 250, 250)
        .gpu("0000:c1:00.0", 0x1002, 0x74a1, Some("vfio-pci"), Some(12), Some(1))
        .pci(
            PciFunction::other(addr("0000:01:00.0"))
                .driver(Some("nvme"))
                .iommu_group(Some(3))
                .numa_node(Some(0)),
        )
        .dax(DaxDevice::hmem("dax0.0", 1, 64 * GIB))
        .with_generated_srat()
}

/// The bundled sample host (`examples/hosts/seed-amd`): two sockets (node 0 CPUs 0-31, node 1
/// CPUs 32-63, 256 GiB each), GPU 0000:41:00.0 near socket 0 and 0000:c1:00.0 near socket 1,
/// each a vfio-pci-bound 1002:74a1 in its own IOMMU group whose `numa_node` is its own 64 GiB
/// SPM HBM node (2 and 3, generic initiators) held by dax0.0 / dax1.0.
pub fn seed_amd_2gpu() -> FixtureHost {
    FixtureHost::new()
        .cpu_node(0, "0-31", 256 * GIB)
        .cpu_node(1, "32-63", 256 * GIB)
        .hbm_node(2, 64 * GIB, true, false)
        .hbm_node(3, 64 * GIB, true, false)
        .generic_initiator(2)
        .generic_initiator(3)
        .distance(0, 1, 32)
        .distance(0, 2, 20)
        .distance(1, 2, 32)
        .distance(0, 3, 32)
        .distance(1, 3, 20)
        .distance(2, 3, 40)
        .gpu("0000:41:00.0", 0x1002, 0x74a1, Some("vfio-pci"), Some(24), Some(2))
        .gpu("0000:c1:00.0", 0x1002, 0x74a1, Some("vfio-pci"), Some(56), Some(3))
        .pci(
            PciFunction::other(addr("0000:01:00.0"))
                .driver(Some("nvme"))
                .iommu_group(Some(3))
                .numa_node(Some(0)),
        )
        .dax(DaxDevice::hmem("dax0.0", 2, 64 * GIB))
        .dax(DaxDevice::hmem("dax1.0", 3, 64 * GIB))
        .with_generated_srat()
}

/// A Grace-Hopper-style host: node 0 = Grace (CPUs 0-71, 480 GiB), GPU 0009:01:00.0 (10de:2342,
/// 3D controller, nvidia driver, IOMMU group 9, `numa_node` 0) with 8 generic-initiator nodes
/// 1-8 (SRAT Generic Initiator entries); the driver onlined 96 GiB of HBM into node 1 ("System
/// RAM", not SPM) and reports it in `numa_status`; nodes 2-8 stay empty (MIG nodes).
pub fn grace_hopper() -> FixtureHost {
    let gpu = addr("0009:01:00.0");
    let mut h = FixtureHost::new()
        .cpu_node(0, "0-71", 480 * GIB)
        .hbm_node(1, 96 * GIB, false, true)
        .generic_initiator(1);
    for n in 2..=8 {
        h = h.gi_node(n);
    }
    h = h
        .pci(
            PciFunction::gpu(gpu)
                .vendor(0x10de)
                .device(0x2342)
                .class(0x030200)
                .driver(Some("nvidia"))
                .iommu_group(Some(9))
                .numa_node(Some(0)),
        )
        .distance(0, 1, 80);
    let hbm_base = h.nodes.get(&1).map_or(0, |n| n.base);
    let mut srat = SratBuilder::new();
    for cpu in 0..72 {
        srat = srat.lapic(0, cpu);
    }
    for pxm in 1..=8 {
        srat = srat.generic_initiator_pci(pxm, gpu, true);
    }
    srat = srat.memory(0, 4 * GIB, 480 * GIB, MEM_ENABLED);
    h.nvidia_numa_status(NvidiaNumaStatus {
        gpu,
        node: 1,
        status: "online".into(),
        address: hbm_base,
        size: 96 * GIB,
    })
    .srat(srat.build())
}

/// A CXL memory expander: node 0 with CPUs, node 1 a CPU-less Soft Reserved 256 GiB range behind
/// a CXL region with dax0.0 on it, and no GPU at all: discovery must report no region.
pub fn cxl_expander() -> FixtureHost {
    FixtureHost::new()
        .cpu_node(0, "0-15", 64 * GIB)
        .hbm_node(1, 256 * GIB, true, false)
        .pci(
            PciFunction::other(addr("0000:01:00.0"))
                .driver(Some("nvme"))
                .numa_node(Some(0)),
        )
        .pci(
            PciFunction::other(addr("0000:35:00.0"))
                .vendor(0x8086)
                .device(0x0d93)
                .class(0x050210)
                .driver(Some("cxl_pci"))
                .numa_node(Some(0)),
        )
        .dax(DaxDevice::hmem("dax0.0", 1, 256 * GIB).parent(DaxParent::Cxl(0)))
        .with_generated_srat()
}

/// A plain two-socket host with a display GPU on node 0 and no HBM anywhere.
pub fn no_hbm() -> FixtureHost {
    FixtureHost::new()
        .cpu_node(0, "0-15", 64 * GIB)
        .cpu_node(1, "16-31", 64 * GIB)
        .distance(0, 1, 21)
        .pci(
            PciFunction::gpu(addr("0000:03:00.0"))
                .vendor(0x1a03)
                .device(0x2000)
                .class(0x030000)
                .numa_node(Some(0)),
        )
        .pci(
            PciFunction::other(addr("0000:01:00.0"))
                .driver(Some("nvme"))
                .numa_node(Some(1)),
        )
        .with_generated_srat()
}

/// A large host for benchmarks: `nodes` NUMA nodes (the first half with CPUs, the rest HBM
/// nodes), one GPU per HBM node with a dax device, and `devices` PCI functions in total (the
/// rest NVMe-class functions spread over the CPU nodes).
pub fn large_host(devices: u32, nodes: u32) -> FixtureHost {
    let cpu_nodes = (nodes / 2).max(1);
    let mut h = FixtureHost::new();
    for n in 0..cpu_nodes {
        h = h.cpu_node(n, &format!("{}-{}", n * 8, n * 8 + 7), 16 * GIB);
    }
    let mut gpus = 0u32;
    for n in cpu_nodes..nodes {
        let i = n - cpu_nodes;
        h = h.hbm_node(n, 64 * GIB, true, false).generic_initiator(n);
        let a = PciAddress::new(1, (i & 0xff) as u8, 0, 0);
        h = h.pci(
            PciFunction::gpu(a)
                .driver(Some("vfio-pci"))
                .iommu_group(Some(1000 + i))
                .numa_node(Some(n)),
        );
        h = h.dax(DaxDevice::hmem(&format!("dax{i}.0"), n, 64 * GIB));
        gpus += 1;
    }
    for i in 0..devices.saturating_sub(gpus) {
        let a = PciAddress::new(2 + (i / 8192) as u16, ((i / 32) % 256) as u8, (i % 32) as u8, 0);
        h = h.pci(PciFunction::other(a).numa_node(Some(i % cpu_nodes)));
    }
    h
}

// ---------------------------------------------------------------------------------------------
// In-place edits of a written tree

/// Binds `addr` to `driver` (or unbinds it with `None`) in a tree written by [`FixtureHost`].
pub fn bind_driver(root: &Path, addr: PciAddress, driver: Option<&str>) -> io::Result<()> {
    let w = TreeWriter {
        root: root.to_path_buf(),
    };
    let dev = format!("sys/devices/pci{:04x}:{:02x}/{addr}", addr.domain, addr.bus);
    let link = root.join(&dev).join("driver");
    match fs::remove_file(&link) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(drv) = driver {
        w.driver_dir(&format!("sys/bus/pci/drivers/{drv}"))?;
        w.link(&format!("{dev}/driver"), &format!("../../../bus/pci/drivers/{drv}"))?;
    }
    Ok(())
}

/// Removes dax device `name` (its `sys/bus/dax/devices` link, driver links and device folder),
/// as when the device is destroyed with `daxctl destroy-device`.
pub fn remove_dax_device(root: &Path, name: &str) -> io::Result<()> {
    let link = root.join("sys/bus/dax/devices").join(name);
    let target = fs::read_link(&link)
        .ok()
        .map(|t| link.parent().map(|p| p.join(t)).unwrap_or_default());
    for l in [
        link.clone(),
        root.join("sys/bus/dax/drivers/device_dax").join(name),
        root.join("sys/bus/dax/drivers/kmem").join(name),
    ] {
        match fs::remove_file(&l) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(t) = target {
        match fs::remove_dir_all(&t) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Removes PCI function `addr` from a written tree (hot-unplug).
pub fn remove_pci_function(root: &Path, addr: PciAddress) -> io::Result<()> {
    let link = root.join("sys/bus/pci/devices").join(addr.to_string());
    match fs::remove_file(&link) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let dev = root.join(format!("sys/devices/pci{:04x}:{:02x}/{addr}", addr.domain, addr.bus));
    match fs::remove_dir_all(dev) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Takes node `id` offline in a written tree: drops it from `online` and `has_memory` and
/// removes its `nodeN` folder.
pub fn offline_node(root: &Path, id: u32) -> io::Result<()> {
    let nd = root.join("sys/devices/system/node");
    for f in ["online", "has_memory", "has_normal_memory"] {
        let p = nd.join(f);
        let Ok(text) = fs::read_to_string(&p) else { continue };
        let ids: Vec<u32> = expand_cpulist(text.trim()).into_iter().filter(|n| *n != id).collect();
        fs::write(&p, format!("{}\n", format_cpulist(&ids)))?;
    }
    match fs::remove_dir_all(nd.join(format!("node{id}"))) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
