//! The plugin's performance figures, measured on the real binary against the fake kubelet over
//! unix sockets, on a 16-GPU fixture host:
//! - time from process start to the kubelet receiving Register (target < 100 ms);
//! - Allocate latency over the unix socket, p50/p99/max of 5,000 calls (target p99 < 1 ms), and
//!   the plugin's own work per Allocate without IPC (health re-measure + response);
//! - steady-state resident memory (VmRSS) with 16 GPUs (target < 20 MiB);
//! - re-registration after a kubelet restart, from the new kubelet.sock to Register (target < 1 s).
//!
//! Run: `cargo bench -p plugin --bench plugin_figures` (prints the figures; docs/plugin.md has
//! the last measured ones).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{FakeKubelet, PluginProcess, TestHost};
use proto::deviceplugin::v1beta1::{AllocateRequest, ContainerAllocateRequest};
use topology::PciAddress;
use topology::fixture::{DaxDevice, FixtureHost, PciFunction};

const GIB: u64 = 1 << 30;

/// Two sockets (nodes 0, 1), 16 GPUs (1002:74a1, vfio-pci), each with its own 64 GiB SPM HBM node
/// (2..=17) held by a dax device; GPUs 0-7 near socket 0, 8-15 near socket 1.
fn sixteen_gpu_host() -> FixtureHost {
    let mut h = FixtureHost::new()
        .cpu_node(0, "0-63", 512 * GIB)
        .cpu_node(1, "64-127", 512 * GIB)
        .distance(0, 1, 32);
    for i in 0..16u32 {
        let node = 2 + i;
        let socket = i / 8;
        h = h.hbm_node(node, 64 * GIB, true, false).generic_initiator(node);
        h = h.distance(socket, node, 20).distance(1 - socket, node, 32);
        let address = PciAddress::new(0, 0x10 + i as u8 * 0x08, 0, 0);
        h = h.pci(
            PciFunction::gpu(address)
                .driver(Some("vfio-pci"))
                .iommu_group(Some(100 + i))
                .numa_node(Some(node)),
        );
        h = h.dax(DaxDevice::hmem(&format!("dax{i}.0"), node, 64 * GIB));
    }
    h
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo test --benches` passes --bench-less flags; only run when asked to benchmark.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let fixture = sixteen_gpu_host();

    // 1. Start -> Register, 5 fresh processes.
    let mut starts = Vec::new();
    for _ in 0..5 {
        let host = TestHost::new(&fixture);
        let mut kubelet = FakeKubelet::start(&host.device_plugins);
        let started = Instant::now();
        let plugin = PluginProcess::spawn(&host.args(), host.dir.path().join("plugin.log"));
        let reg = kubelet.next_registration().await;
        starts.push(started.elapsed());
        assert_eq!(reg.resource_name, "amd.com/gpu-74a1-hbm");
        drop(plugin);
    }
    starts.sort();

    // 2.-4. One long-running process.
    let host = TestHost::new(&fixture);
    let mut kubelet = FakeKubelet::start(&host.device_plugins);
    let mut args = host.args();
    args.retain(|a| !a.starts_with("--health-poll-interval"));
    args.push("--health-poll-interval=1s".into());
    let plugin = PluginProcess::spawn(&args, host.dir.path().join("plugin.log"));
    let reg = kubelet.next_registration().await;
    let mut client = kubelet.dial(&reg.endpoint).await;
    let list = common::Watch::open(&mut client).await.next().await;
    assert_eq!(list.devices.len(), 16);
    let ids: Vec<String> = list.devices.iter().map(|d| d.id.clone()).collect();

    let mut latencies = Vec::with_capacity(5000);
    for i in 0..5000 {
        let request = AllocateRequest {
            container_requests: vec![ContainerAllocateRequest {
                devices_ids: vec![ids[i % ids.len()].clone()],
            }],
        };
        let t = Instant::now();
        let response = client.allocate(request).await.unwrap().into_inner();
        latencies.push(t.elapsed());
        assert_eq!(response.container_responses.len(), 1);
    }
    latencies.sort();

    // The plugin's own work per Allocate (health re-measure + response), without IPC.
    let inventory = topology::discover(&host.root, &topology::DiscoveryConfig::default()).unwrap();
    let derived = plugin::resources::derive(&inventory, &[]);
    let resource = derived.resources.values().next().unwrap();
    let roots = plugin::health::HealthRoots {
        sysfs_root: host.root.clone(),
        dev_root: host.dev.clone(),
        host_dev_root: "/dev".into(),
    };
    let baseline = std::collections::BTreeMap::new();
    let mut own = Vec::with_capacity(5000);
    for i in 0..5000 {
        let device = &resource.devices[&ids[i % ids.len()]];
        let t = Instant::now();
        assert!(roots.measure(device, &baseline).is_none());
        let response = plugin::allocate::container_response(&resource.name, &[device], &roots);
        own.push(t.elapsed());
        assert_eq!(response.devices.len(), 3);
    }
    own.sort();

    // Steady state: a few health polls after the load.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss, hwm) = rss_kib(plugin.child.id());

    let mut reregs = Vec::new();
    for _ in 0..20 {
        kubelet.restart().await;
        let t = Instant::now();
        let (_, _, _) = kubelet.next_working_registration().await;
        reregs.push(t.elapsed());
        if t.elapsed() > Duration::from_millis(50) && std::env::var_os("HBM_BENCH_DEBUG").is_some() {
            let log = plugin.log_text();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!(
                "slow re-registration {:?}:\n{}",
                t.elapsed(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
    reregs.sort();

    let profile = if cfg!(debug_assertions) {
        "debug build: figures not representative"
    } else {
        "release build"
    };
    println!("hbm-device-plugin figures (16-GPU fixture host, {profile})");
    println!(
        "start -> Register (5 runs):          min {}  median {}  max {}",
        ms(starts[0]),
        ms(percentile(&starts, 0.5)),
        ms(starts[starts.len() - 1])
    );
    println!(
        "Allocate over unix socket (5000):    p50 {}  p99 {}  max {}",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies[latencies.len() - 1])
    );
    println!(
        "Allocate work in-process (5000):     p50 {}  p99 {}  max {}",
        ms(percentile(&own, 0.5)),
        ms(percentile(&own, 0.99)),
        ms(own[own.len() - 1])
    );
    println!(
        "resident memory, steady state:       VmRSS {:.1} MiB  (peak VmHWM {:.1} MiB)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "kubelet restart -> Register (20):    median {}  p95 {}  max {}",
        ms(percentile(&reregs, 0.5)),
        ms(percentile(&reregs, 0.95)),
        ms(reregs[reregs.len() - 1])
    );
}
