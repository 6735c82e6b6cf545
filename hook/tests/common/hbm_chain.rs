//! The chain the rewriter must build for one HBM-owning PCI hostdev, read back from a rewritten
//! definition (hostdev -> root port -> pcie-expander-bus -> `<node>K` -> CPU-less cell K with the
//! region's size -> `<memnode cellid=K>` -> Generic Initiator naming the hostdev's alias), and
//! checked against the QEMU command line libvirt makes of it.

use super::domain_xml::{Element, PciAddr, bytes, parse};
use super::libvirt::QemuArgv;

/// One hostdev's HBM chain as the rewritten definition spells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HbmChain {
    pub host: PciAddr,
    /// The hostdev's alias (`ua-...`), which is its QEMU id.
    pub alias: String,
    /// Index of the `pcie-root-port` the hostdev sits on.
    pub root_port: u32,
    /// Index of the `pcie-expander-bus` the root port sits on.
    pub expander: u32,
    /// The expander's `<target busNr>`.
    pub bus_nr: u32,
    /// The guest NUMA cell (`<target><node>`), `cellid` of the memnode.
    pub cell: u32,
    pub cell_bytes: u64,
    /// `<memnode cellid=K mode=.. nodeset=..>`: (mode, nodeset).
    pub memnode: Option<(String, String)>,
    /// Whether a `<qemu:arg>` carries `acpi-generic-initiator,...,pci-dev=<alias>,node=K`.
    pub generic_initiator_arg: bool,
}

fn controller<'a>(devices: &'a Element, index: u32, model: &str) -> Option<&'a Element> {
    devices.children_named("controller").find(|c| {
        c.attr("type") == Some("pci")
            && c.attr("model") == Some(model)
            && c.attr("index").and_then(|i| super::domain_xml::parse_number(i).ok()) == Some(index)
    })
}

fn pci_bus_of(e: &Element) -> Result<u32, String> {
    let a = e
        .children_named("address")
        .find(|a| a.attr("type") == Some("pci"))
        .ok_or_else(|| format!("<{}> has no guest <address type='pci'>", e.name))?;
    Ok(PciAddr::from_element(a)?.bus)
}

/// Reads the chain of the hostdev whose `<source><address>` is `host` from a rewritten definition.
pub fn read(out_xml: &str, host: PciAddr) -> Result<HbmChain, String> {
    let root = parse(out_xml)?;
    let devices = root.child("devices").ok_or("no <devices>")?;
    let hostdev = devices
        .children_named("hostdev")
        .find(|h| h.at(&["source", "address"]).and_then(|a| PciAddr::from_element(a).ok()) == Some(host))
        .ok_or_else(|| format!("no hostdev for {}", host.host_form()))?;
    let alias = hostdev
        .child("alias")
        .and_then(|a| a.attr("name"))
        .ok_or_else(|| format!("hostdev {} has no <alias>", host.host_form()))?
        .to_string();
    let root_port = pci_bus_of(hostdev)?;
    let port = controller(devices, root_port, "pcie-root-port").ok_or_else(|| {
        format!(
            "hostdev {}: bus {root_port} is not a pcie-root-port's index",
            host.host_form()
        )
    })?;
    let expander = pci_bus_of(port)?;
    let pxb = controller(devices, expander, "pcie-expander-bus").ok_or_else(|| {
        format!(
            "root port {root_port}: bus {expander} is not a pcie-expander-bus's index (hostdev {})",
            host.host_form()
        )
    })?;
    let target = pxb
        .child("target")
        .ok_or_else(|| format!("expander {expander} has no <target>"))?;
    let bus_nr = super::domain_xml::parse_number(target.attr("busNr").ok_or("expander <target> has no busNr")?)?;
    let cell = super::domain_xml::parse_number(
        target
            .child("node")
            .ok_or_else(|| format!("expander {expander} has no <target><node>"))?
            .trimmed_text(),
    )?;
    let cell_el = root
        .at(&["cpu", "numa"])
        .and_then(|n| {
            n.children_named("cell")
                .find(|c| c.attr("id") == Some(cell.to_string().as_str()))
        })
        .ok_or_else(|| format!("expander {expander} names node {cell} but there is no <cell id='{cell}'>"))?;
    if cell_el.attr("cpus").is_some_and(|c| !c.trim().is_empty()) {
        return Err(format!(
            "HBM cell {cell} has cpus='{}'; it must be CPU-less",
            cell_el.attr("cpus").unwrap_or("")
        ));
    }
    let cell_bytes = bytes(
        cell_el.attr("memory").ok_or("cell without memory")?,
        cell_el.attr("unit"),
    )?;
    let memnode = root
        .child("numatune")
        .and_then(|n| {
            n.children_named("memnode")
                .find(|m| m.attr("cellid") == Some(cell.to_string().as_str()))
        })
        .map(|m| {
            (
                m.attr("mode").unwrap_or("").to_string(),
                m.attr("nodeset").unwrap_or("").to_string(),
            )
        });
    let gi_needle_pci = format!("pci-dev={alias}");
    let gi_needle_node = format!("node={cell}");
    let generic_initiator_arg = root.descendants("qemu:arg").iter().any(|a| {
        a.attr("value").is_some_and(|v| {
            v.starts_with("acpi-generic-initiator,")
                && v.split(',').any(|p| p == gi_needle_pci)
                && v.split(',').any(|p| p == gi_needle_node)
        })
    });
    Ok(HbmChain {
        host,
        alias,
        root_port,
        expander,
        bus_nr,
        cell,
        cell_bytes,
        memnode,
        generic_initiator_arg,
    })
}

/// Domain-level checks on a rewritten definition: ACPI on, `<memory>` equal to the cells' sum.
pub fn check_domain(out_xml: &str) -> Result<(), String> {
    let root = parse(out_xml)?;
    if root.at(&["features", "acpi"]).is_none() {
        return Err("no <features><acpi/>".to_string());
    }
    let cells: Vec<&Element> = root
        .at(&["cpu", "numa"])
        .map(|n| n.children_named("cell").collect())
        .unwrap_or_default();
    if cells.is_empty() {
        return Err("no <cpu><numa><cell>".to_string());
    }
    let mut sum = 0u64;
    for c in cells {
        sum += bytes(c.attr("memory").ok_or("cell without memory")?, c.attr("unit"))?;
    }
    let m = root.child("memory").ok_or("no <memory>")?;
    let memory = bytes(m.trimmed_text(), m.attr("unit"))?;
    if memory != sum {
        return Err(format!("<memory> is {memory} bytes but the cells add up to {sum}"));
    }
    if let Some(c) = root.child("currentMemory") {
        let current = bytes(c.trimmed_text(), c.attr("unit"))?;
        if current != sum {
            return Err(format!(
                "<currentMemory> is {current} bytes but the cells add up to {sum}"
            ));
        }
    }
    Ok(())
}

/// Checks libvirt's QEMU command line for `chain`: `-numa node,nodeid=K,memdev=M` without CPUs,
/// backend M of the cell's size bound to `host_node` (`host-nodes`/`policy=bind`),
/// `pxb-pcie` with `bus_nr` and `numa_node=K`, the root port on it, the `vfio-pci` device of the
/// host address on that root port with the alias as id, and the Generic Initiator object.
pub fn check_argv(argv: &QemuArgv, chain: &HbmChain, host_node: u32) -> Result<(), String> {
    let k = chain.cell;
    let numa = argv.numa_node(k).ok_or_else(|| format!("no -numa node,nodeid={k}"))?;
    if numa.get("cpus").is_some() {
        return Err(format!("-numa node,nodeid={k} has cpus: {}", numa.raw));
    }
    let memdev = numa
        .get("memdev")
        .ok_or_else(|| format!("-numa node,nodeid={k} has no memdev: {}", numa.raw))?;
    let backend = argv
        .object(memdev)
        .ok_or_else(|| format!("no -object with id {memdev}"))?;
    if !backend.kind.starts_with("memory-backend-") {
        return Err(format!("{memdev} is not a memory backend: {}", backend.raw));
    }
    if backend.get("size") != Some(chain.cell_bytes.to_string().as_str()) {
        return Err(format!(
            "{memdev} size is not {} bytes: {}",
            chain.cell_bytes, backend.raw
        ));
    }
    if backend.get("host-nodes") != Some(format!("[{host_node}]").as_str()) || backend.get("policy") != Some("bind") {
        return Err(format!(
            "{memdev} is not bound to host node {host_node}: {}",
            backend.raw
        ));
    }
    let pxb_id = format!("pci.{}", chain.expander);
    let pxb = argv
        .device(&pxb_id)
        .ok_or_else(|| format!("no -device with id {pxb_id}"))?;
    if pxb.kind != "pxb-pcie"
        || pxb.get("numa_node") != Some(k.to_string().as_str())
        || pxb.get("bus_nr") != Some(chain.bus_nr.to_string().as_str())
    {
        return Err(format!(
            "{pxb_id} is not pxb-pcie,bus_nr={},numa_node={k}: {}",
            chain.bus_nr, pxb.raw
        ));
    }
    let port_id = format!("pci.{}", chain.root_port);
    let port = argv
        .device(&port_id)
        .ok_or_else(|| format!("no -device with id {port_id}"))?;
    if port.kind != "pcie-root-port" || port.get("bus") != Some(pxb_id.as_str()) {
        return Err(format!("{port_id} is not a pcie-root-port on {pxb_id}: {}", port.raw));
    }
    let dev = argv
        .device(&chain.alias)
        .ok_or_else(|| format!("no -device with id {}", chain.alias))?;
    if dev.kind != "vfio-pci"
        || dev.get("host") != Some(chain.host.host_form().as_str())
        || dev.get("bus") != Some(port_id.as_str())
    {
        return Err(format!(
            "{} is not vfio-pci,host={} on {port_id}: {}",
            chain.alias,
            chain.host.host_form(),
            dev.raw
        ));
    }
    let gi = argv.options("-object").into_iter().find(|o| {
        o.kind == "acpi-generic-initiator"
            && o.get("pci-dev") == Some(chain.alias.as_str())
            && o.get("node") == Some(k.to_string().as_str())
    });
    let gi = gi.ok_or_else(|| format!("no -object acpi-generic-initiator,pci-dev={},node={k}", chain.alias))?;
    if gi.get("id").is_none_or(str::is_empty) {
        return Err(format!("Generic Initiator object has no id: {}", gi.raw));
    }
    if argv.args.iter().any(|a| a == "-no-acpi") || argv.values("-machine").iter().any(|m| m.contains("acpi=off")) {
        return Err("ACPI is off on the QEMU command line".to_string());
    }
    Ok(())
}
