//! The DRA driver's performance figures on the `seed_amd_2gpu` fixture host, against the
//! kubelet and API-server stand-ins of the tests:
//! - NodePrepareResources of a one-GPU claim over the unix socket (one connection, as the kubelet
//!   keeps it), p50/p99/max of 1,000 calls (each a fresh claim: GET from the API stand-in, health
//!   re-measure, metadata file and CDI spec written, checkpoint written durably; target p99 < 5 ms), each
//!   followed by its unprepare; once with the files in the temp dir (fsync reaches the disk) and
//!   once on /dev/shm (fsync is free there: the driver's own cost);
//! - the real binary: time from process start to a GetInfo answer on the registration socket
//!   (target < 100 ms), ResourceSlice update after a vfio group disappears (target < 2 s, poll
//!   1 s), resident memory (VmRSS, target < 30 MiB).
//!
//! Run: `cargo bench -p hbm-dra-driver --bench prepare` (prints the figures; docs/dra.md has the
//! last measured ones).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use support::apiserver::ApiServer;
use support::kubelet::{self, claim};
use support::{DRIVER, Driver, GPU_C1, Host, NODE};

const CALLS: usize = 1000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(duration: Duration) -> String {
    format!("{:.3} ms", duration.as_secs_f64() * 1000.0)
}

/// Prepare latencies with the fixture host (and so every file the driver writes) under `parent`.
async fn prepare_latencies(parent: &Path) -> Vec<Duration> {
    let api = ApiServer::start().await;
    let host = Host::new_in(parent);
    let driver = Driver::start(&host.settings, api.client()).await;
    let mut client = kubelet::dra_client(&host.settings.dra_socket()).await;
    let mut latencies = Vec::with_capacity(CALLS);
    for index in 0..CALLS {
        let uid = format!("uid-{index}");
        api.put_claim("vms", &uid, &uid, json!({}), &[("gpu", DRIVER, NODE, GPU_C1)]);
        let started = Instant::now();
        let answers = kubelet::prepare_with(&mut client, vec![claim("vms", &uid, &uid)]).await;
        latencies.push(started.elapsed());
        assert_eq!(answers[&uid].error, "");
        let errors = kubelet::unprepare_with(&mut client, vec![claim("vms", &uid, &uid)]).await;
        assert_eq!(errors[&uid], "");
    }
    driver.stop().await;
    latencies.sort();
    latencies
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// (start to GetInfo, health change to slice update, VmRSS KiB) of the real binary.
async fn binary_figures() -> (Duration, Duration, u64) {
    let api = ApiServer::start().await;
    let host = Host::new();
    let settings = &host.settings;
    let started = Instant::now();
    let mut child = host.spawn_binary(&api, &["--health-poll-interval", "1s"]);
    let socket = settings.registration_socket();
    loop {
        if socket.exists()
            && let Ok(channel) = plugin::registration::dial_unix(&socket).await
        {
            let mut client = proto::pluginregistration::registration_client::RegistrationClient::new(channel);
            if client.get_info(proto::pluginregistration::InfoRequest {}).await.is_ok() {
                break;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no registration socket");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let registration = started.elapsed();
    let devices = |api: &ApiServer| {
        api.slices()
            .values()
            .map(|slice| slice["spec"]["devices"].as_array().map_or(0, Vec::len))
            .sum::<usize>()
    };
    support::wait_until("two devices published", || devices(&api) == 2).await;
    let rss = rss_kib(child.id());
    std::fs::remove_file(host.dev("vfio/56")).unwrap();
    let changed = Instant::now();
    support::wait_until("the unhealthy device withdrawn", || devices(&api) == 1).await;
    let publication = changed.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    (registration, publication, rss)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut places = vec![("temp dir", std::env::temp_dir())];
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        places.push(("tmpfs, fsync free", shm.to_path_buf()));
    }
    for (name, parent) in places {
        let latencies = runtime.block_on(prepare_latencies(&parent));
        println!(
            "NodePrepareResources, one GPU, unix socket, files in {name} ({CALLS}): p50 {}  p99 {}  max {}",
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            ms(latencies[latencies.len() - 1])
        );
    }
    let (registration, publication, rss) = runtime.block_on(binary_figures());
    println!("start to GetInfo answered:                 {}", ms(registration));
    println!(
        "vfio group gone to ResourceSlice updated:  {} (poll 1 s)",
        ms(publication)
    );
    println!(
        "VmRSS with 2 GPUs:                         {:.1} MiB",
        rss as f64 / 1024.0
    );
}
