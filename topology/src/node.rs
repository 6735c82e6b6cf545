//! NUMA nodes from `sys/devices/system/node`: the `possible`/`online`/`has_*` lists and, per
//! node, `cpulist`, `meminfo` (MemTotal), `distance` and the HMAT `access0`/`access1`
//! initiator figures.

use std::collections::BTreeMap;

use crate::sysfs::{ListError, Sysfs, cut, parse_list};

pub(crate) const NODE_DIR: &str = "sys/devices/system/node";

/// HMAT performance from `nodeN/accessK/initiators/`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// MB/s.
    pub read_bandwidth: Option<u64>,
    pub write_bandwidth: Option<u64>,
    /// ns.
    pub read_latency: Option<u64>,
    pub write_latency: Option<u64>,
}

/// One node's files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: u32,
    pub cpus: Vec<u32>,
    /// `cpulist` as written (trimmed).
    pub cpulist: String,
    /// `MemTotal` in bytes; `None` when `meminfo` is missing or unreadable.
    pub mem_total_bytes: Option<u64>,
    /// Distances in `online` order.
    pub distances: Vec<u32>,
    /// access0: best initiator incl. generic initiators; access1: CPU initiators only.
    pub access0: Option<Access>,
    pub access1: Option<Access>,
}

/// All of `sys/devices/system/node`.
#[derive(Clone, Debug, Default)]
pub struct NodeTable {
    /// `None` when `possible` is missing (then any id up to the limit is accepted).
    pub possible: Option<Vec<u32>>,
    pub online: Vec<u32>,
    pub has_cpu: Vec<u32>,
    pub has_memory: Vec<u32>,
    pub has_normal_memory: Vec<u32>,
    pub has_generic_initiator: Vec<u32>,
    pub nodes: BTreeMap<u32, NodeInfo>,
    pub warnings: Vec<String>,
}

impl NodeTable {
    pub fn is_online(&self, id: u32) -> bool {
        self.online.binary_search(&id).is_ok()
    }

    /// Whether `id` is a node number this host can have (in `possible`, or below 1024 when
    /// `possible` is unknown).
    pub fn in_range(&self, id: u32) -> bool {
        match &self.possible {
            Some(p) => p.binary_search(&id).is_ok(),
            None => id < 1024,
        }
    }

    pub fn has_cpus(&self, id: u32) -> bool {
        self.nodes.get(&id).is_some_and(|n| !n.cpus.is_empty()) || self.has_cpu.binary_search(&id).is_ok()
    }

    pub fn mem_total(&self, id: u32) -> Option<u64> {
        self.nodes.get(&id).and_then(|n| n.mem_total_bytes)
    }

    /// Distance from `from` to `to` via `from`'s distance row (indexed in `online` order).
    pub fn distance(&self, from: u32, to: u32) -> Option<u32> {
        let row = &self.nodes.get(&from)?.distances;
        let idx = self.online.binary_search(&to).ok()?;
        row.get(idx).copied()
    }

    /// The nearest node with CPUs: `id` itself when it has CPUs, else the CPU node at the
    /// smallest distance, ties to the lowest id. `None` when distances are unknown.
    pub fn nearest_cpu_node(&self, id: u32) -> Option<u32> {
        if self.has_cpus(id) {
            return Some(id);
        }
        self.nodes
            .keys()
            .copied()
            .filter(|c| self.has_cpus(*c))
            .filter_map(|c| self.distance(id, c).map(|d| (d, c)))
            .min()
            .map(|(_, c)| c)
    }

    /// The node whose CPUs include all of `cpus` (for devices without `numa_node`).
    pub fn node_of_cpus(&self, cpus: &[u32]) -> Option<u32> {
        if cpus.is_empty() {
            return None;
        }
        self.nodes
            .values()
            .find(|n| !n.cpus.is_empty() && cpus.iter().all(|c| n.cpus.binary_search(c).is_ok()))
            .map(|n| n.id)
    }
}

fn read_list_or_warn(fs: &Sysfs, rel: &str, warnings: &mut Vec<String>) -> Option<Vec<u32>> {
    match fs.read_list(rel) {
        Ok(v) => Some(v),
        Err(e) if e.is_missing() => None,
        Err(e) => {
            warnings.push(e.to_string());
            None
        }
    }
}

fn read_access(fs: &Sysfs, dir: &str) -> Option<Access> {
    if !fs.exists(dir) {
        return None;
    }
    let get = |f: &str| fs.read_u64(&format!("{dir}/initiators/{f}")).ok();
    Some(Access {
        read_bandwidth: get("read_bandwidth"),
        write_bandwidth: get("write_bandwidth"),
        read_latency: get("read_latency"),
        write_latency: get("write_latency"),
    })
}

/// Parses `MemTotal` from a node `meminfo` (`Node 0 MemTotal:  469364 kB`) into bytes.
pub fn parse_mem_total(text: &str) -> Option<u64> {
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if it.next() != Some("Node") {
            continue;
        }
        let _id = it.next()?;
        if it.next() != Some("MemTotal:") {
            continue;
        }
        let kb: u64 = it.next()?.parse().ok()?;
        return match it.next() {
            Some("kB") | None => kb.checked_mul(1024),
            Some(_) => None,
        };
    }
    None
}

/// Reads the node table. A missing `sys/devices/system/node` yields an empty table with a
/// warning (a kernel without NUMA).
pub fn scan(fs: &Sysfs) -> NodeTable {
    let mut t = NodeTable::default();
    let mut w = Vec::new();
    let entries = match fs.list_dir(NODE_DIR) {
        Ok(e) => e,
        Err(e) => {
            w.push(format!("{e}; no NUMA information"));
            t.warnings = w;
            return t;
        }
    };
    t.possible = read_list_or_warn(fs, &format!("{NODE_DIR}/possible"), &mut w);
    let dirs: Vec<u32> = entries
        .iter()
        .filter_map(|e| e.strip_prefix("node").and_then(|n| n.parse::<u32>().ok()))
        .collect();
    t.online = match read_list_or_warn(fs, &format!("{NODE_DIR}/online"), &mut w) {
        Some(v) => v,
        None => {
            w.push(format!(
                "{}/online: unusable, online nodes taken from the nodeN folders",
                fs.path(NODE_DIR).display()
            ));
            let mut d = dirs.clone();
            d.sort_unstable();
            d
        }
    };
    t.has_cpu = read_list_or_warn(fs, &format!("{NODE_DIR}/has_cpu"), &mut w).unwrap_or_default();
    t.has_memory = read_list_or_warn(fs, &format!("{NODE_DIR}/has_memory"), &mut w).unwrap_or_default();
    t.has_normal_memory = read_list_or_warn(fs, &format!("{NODE_DIR}/has_normal_memory"), &mut w).unwrap_or_default();
    t.has_generic_initiator =
        read_list_or_warn(fs, &format!("{NODE_DIR}/has_generic_initiator"), &mut w).unwrap_or_default();
    for id in dirs {
        t.nodes.insert(id, read_node(fs, id, &mut w));
    }
    t.warnings = w;
    t
}

/// One `nodeN` folder: `cpulist`, `meminfo`, `distance`, `access0`/`access1`. Missing files leave
/// the field empty; unreadable or garbled ones add a warning naming the file.
fn read_node(fs: &Sysfs, id: u32, warnings: &mut Vec<String>) -> NodeInfo {
    let dir = format!("{NODE_DIR}/node{id}");
    let mut node = NodeInfo {
        id,
        ..Default::default()
    };
    let file = |name: &str| format!("{}/{name}", fs.path(&dir).display());
    match fs.read_value(&format!("{dir}/cpulist")) {
        Ok(text) => match parse_list(&text) {
            Ok(cpus) => {
                node.cpus = cpus;
                node.cpulist = text;
            }
            Err(ListError::Syntax) => warnings.push(format!("{}: {:?} is not a cpulist", file("cpulist"), cut(&text))),
            Err(error) => warnings.push(format!("{}: {error}", file("cpulist"))),
        },
        Err(e) if e.is_missing() => {}
        Err(e) => warnings.push(e.to_string()),
    }
    match fs.read_text(&format!("{dir}/meminfo")) {
        Ok(text) => match parse_mem_total(&text) {
            Some(bytes) => node.mem_total_bytes = Some(bytes),
            None => warnings.push(format!("{}: no readable MemTotal line", file("meminfo"))),
        },
        Err(e) if e.is_missing() => {}
        Err(e) => warnings.push(e.to_string()),
    }
    match fs.read_value(&format!("{dir}/distance")) {
        Ok(text) => match text.split_whitespace().map(|d| d.parse().ok()).collect() {
            Some(distances) => node.distances = distances,
            None => warnings.push(format!(
                "{}: {:?} is not a list of numbers",
                file("distance"),
                cut(&text)
            )),
        },
        Err(e) if e.is_missing() => {}
        Err(e) => warnings.push(e.to_string()),
    }
    node.access0 = read_access(fs, &format!("{dir}/access0"));
    node.access1 = read_access(fs, &format!("{dir}/access1"));
    node
}
