//! ResourceSlice publication against the API-server stand-in, checked field by field: the
//! fixture host's devices, a generation bump when a device turns unhealthy (withdrawn), comes
//! back, or is unplugged; no write when a restarted driver finds its slices current; deletion on
//! shutdown with `--cleanup`, also through the binary with KUBECONFIG.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::apiserver::ApiServer;
use support::{DRIVER, Driver, GPU_41, GPU_C1, Host, NODE, running, wait_until};

const SLICE: &str = "node-a-hbm-passthrough-dev-0";

fn device_json(name: &str, bus: &str, root: &str, numa: u32, node: u32, group: u32) -> Value {
    json!({
        "name": name,
        "attributes": {
            "resource.kubernetes.io/pciBusID": {"string": bus},
            "resource.kubernetes.io/pcieRoot": {"string": root},
            "resource.kubernetes.io/numaNode": {"int": numa},
            "vendor": {"string": "1002"},
            "device": {"string": "74a1"},
            "model": {"string": "gpu-74a1-hbm"},
            "hbmRegions": {"int": 1},
            "hbmNumaNodes": {"string": node.to_string()},
            "hbmMemmap": {"string": "spm"},
            "kubevirtUsable": {"bool": false},
            "iommuGroup": {"int": group}
        },
        "capacity": {"hbm": {"value": "64Gi"}}
    })
}

fn gpu_41() -> Value {
    device_json(GPU_41, "0000:41:00.0", "pci0000:41", 0, 2, 24)
}

fn gpu_c1() -> Value {
    device_json(GPU_C1, "0000:c1:00.0", "pci0000:c1", 1, 3, 56)
}

/// (generation, device names) of node-a's one slice, when it has exactly one.
fn pool(api: &ApiServer) -> Option<(i64, Vec<String>)> {
    let slices = api.slices();
    let own = slices.values().filter(|s| s["spec"]["nodeName"] == NODE).count();
    let slice = slices.get(SLICE)?;
    let names = slice["spec"]["devices"]
        .as_array()?
        .iter()
        .map(|d| d["name"].as_str().unwrap_or_default().to_string())
        .collect();
    (own == 1).then(|| (slice["spec"]["pool"]["generation"].as_i64().unwrap_or(-1), names))
}

async fn wait_for_pool(api: &ApiServer, generation: i64, names: &[&str]) {
    let wanted = Some((generation, names.iter().map(|n| n.to_string()).collect::<Vec<_>>()));
    wait_until(&format!("generation {generation} with {names:?}"), || {
        pool(api) == wanted
    })
    .await;
}

fn writes(api: &ApiServer) -> Vec<String> {
    api.log()
        .into_iter()
        .filter(|line| !line.starts_with("GET "))
        .map(|line| line.split('?').next().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn the_pool_is_published_field_by_field_and_follows_health_and_hot_unplug() {
    let (api, host, driver) = running().await;
    wait_for_pool(&api, 1, &[GPU_41, GPU_C1]).await;
    let slice = api.slices()[SLICE].clone();
    assert_eq!(slice["apiVersion"], "resource.k8s.io/v1");
    assert_eq!(slice["kind"], "ResourceSlice");
    assert_eq!(
        slice["spec"],
        json!({
            "driver": DRIVER,
            "nodeName": NODE,
            "pool": {"name": NODE, "generation": 1, "resourceSliceCount": 1},
            "devices": [gpu_41(), gpu_c1()]
        })
    );
    assert_eq!(
        api.log()[0],
        "GET /apis/resource.k8s.io/v1/resourceslices?&fieldSelector=spec.nodeName%3Dnode-a"
    );

    std::fs::remove_file(host.dev("vfio/56")).unwrap();
    wait_for_pool(&api, 2, &[GPU_41]).await;
    std::fs::write(host.dev("vfio/56"), "").unwrap();
    wait_for_pool(&api, 3, &[GPU_41, GPU_C1]).await;
    assert_eq!(api.slices()[SLICE]["spec"]["devices"], json!([gpu_41(), gpu_c1()]));
    let gpu = topology::PciAddress::parse("0000:41:00.0").unwrap();
    topology::fixture::remove_pci_function(&host.settings.sysfs_root, gpu).unwrap();
    wait_for_pool(&api, 4, &[GPU_C1]).await;
    let path = format!("/apis/resource.k8s.io/v1/resourceslices/{SLICE}");
    assert_eq!(
        writes(&api),
        [
            "POST /apis/resource.k8s.io/v1/resourceslices".to_string(),
            format!("PUT {path}"),
            format!("PUT {path}"),
            format!("PUT {path}"),
        ]
    );
    driver.stop().await;
    assert_eq!(
        pool(&api),
        Some((4, vec![GPU_C1.to_string()])),
        "without --cleanup the slices stay"
    );

    let driver = Driver::start(&host.settings, api.client()).await;
    tokio::time::sleep(host.settings.poll_interval * 4).await;
    assert_eq!(
        writes(&api).len(),
        4,
        "a restarted driver with the same devices writes nothing"
    );
    driver.stop().await;
}

#[tokio::test]
async fn cleanup_deletes_the_nodes_slices_and_leaves_other_nodes_alone() {
    let api = ApiServer::start().await;
    let mut host = Host::new();
    let other = json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
        "metadata": {"name": "node-b-hbm-passthrough-dev-0", "resourceVersion": "1"},
        "spec": {"driver": DRIVER, "nodeName": "node-b", "pool": {"name": "node-b", "generation": 1, "resourceSliceCount": 1}, "devices": []}});
    api.store
        .lock()
        .unwrap()
        .slices
        .insert("node-b-hbm-passthrough-dev-0".into(), other);
    host.settings.cleanup = true;
    let driver = Driver::start(&host.settings, api.client()).await;
    wait_for_pool(&api, 1, &[GPU_41, GPU_C1]).await;
    driver.stop().await;
    let names: Vec<String> = api.slices().into_keys().collect();
    assert_eq!(names, ["node-b-hbm-passthrough-dev-0"]);
}

#[tokio::test]
async fn the_binary_reads_kubeconfig_publishes_and_cleans_up_on_sigterm() {
    let api = ApiServer::start().await;
    let host = Host::new();
    let settings = &host.settings;
    let mut child = host.spawn_binary(&api, &["--health-poll-interval", "50ms", "--cleanup"]);
    wait_for_pool(&api, 1, &[GPU_41, GPU_C1]).await;
    assert!(settings.registration_socket().exists());
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut exit = None;
    wait_until("the driver exits", || {
        exit = child.try_wait().unwrap();
        exit.is_some()
    })
    .await;
    assert_eq!(exit.unwrap().code(), Some(0));
    assert!(api.slices().is_empty());
    assert!(!settings.registration_socket().exists());
}

#[tokio::test]
async fn slices_deleted_behind_the_drivers_back_come_back_with_a_higher_generation() {
    let (api, _host, driver) = running().await;
    wait_for_pool(&api, 1, &[GPU_41, GPU_C1]).await;
    api.store.lock().unwrap().slices.clear();
    // The resync runs every 30 polls: 1.5 s at the tests' 50 ms.
    wait_for_pool(&api, 2, &[GPU_41, GPU_C1]).await;
    driver.stop().await;
}
