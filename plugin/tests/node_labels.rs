//! Node labelling against kube's mock service: exact server-side-apply bodies, and no request
//! when nothing changed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use plugin::config::{self, RunArgs};
use plugin::manager::{InventorySource, Manager};
use plugin::metrics::Metrics;
use plugin::node_labels::{NodeLabeler, desired};
use plugin::resources::{DeviceInfo, RegionInfo, Resource};
use serde_json::{Value, json};
use topology::{Inventory, PciAddress};

fn resources(sizes: &[u64]) -> BTreeMap<String, Resource> {
    let mut devices = BTreeMap::new();
    for (i, size) in sizes.iter().enumerate() {
        let addr = format!("0000:c{}:00.0", i + 1);
        devices.insert(
            addr.clone(),
            DeviceInfo {
                id: addr.clone(),
                gpu: PciAddress::parse(&addr).unwrap(),
                vendor: "1002".into(),
                device: "74a1".into(),
                driver: Some("vfio-pci".into()),
                iommu_group: Some(i as u32),
                cpu_node: Some(0),
                peer_group: None,
                regions: vec![RegionInfo {
                    id: format!("{addr}/dax{i}.0"),
                    host_node: Some(i as u32 + 2),
                    size_bytes: *size,
                    dax: Some(format!("/dev/dax{i}.0")),
                    // The first device's dax is in system-ram mode, the others devdax.
                    online: i == 0,
                }],
            },
        );
    }
    BTreeMap::from([(
        "amd.com/mi300x".to_string(),
        Resource {
            name: "amd.com/mi300x".into(),
            devices,
        },
    )])
}

/// Answers the next request with the Node the apply would produce; returns (method, uri, body).
async fn answer(handle: &mut tower_test::mock::Handle<Request<Body>, Response<Body>>) -> (String, String, Value) {
    let (request, send) = handle.next_request().await.expect("a request");
    let method = request.method().to_string();
    let uri = request.uri().to_string();
    let content_type = request
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(content_type, "application/apply-patch+yaml");
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": body["metadata"].clone()});
    send.send_response(
        Response::builder()
            .status(200)
            .body(Body::from(serde_json::to_vec(&node).unwrap()))
            .unwrap(),
    );
    (method, uri, body)
}

#[tokio::test]
async fn applies_exact_body_once_and_again_only_on_change() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let mut labeler = NodeLabeler::new(client, "gpu-node-1");
    let inventory = Inventory::empty("/");

    let (body, skipped) = desired(
        "gpu-node-1",
        "hbm-passthrough.dev",
        &resources(&[64 << 30, 64 << 30]),
        &inventory,
    );
    assert!(skipped.is_empty());
    let discovery = serde_json::to_string(&inventory).unwrap();
    let expected = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": "gpu-node-1",
            "labels": {
                "hbm-passthrough.dev/hbm.present": "true",
                "hbm-passthrough.dev/amd.com_mi300x.regions": "2",
                "hbm-passthrough.dev/amd.com_mi300x.hbm-gib": "128",
                "hbm-passthrough.dev/amd.com_mi300x.kubevirt-usable-regions": "1",
            },
            "annotations": { "hbm-passthrough.dev/discovery": discovery },
        },
    });
    assert_eq!(body, expected);

    let server = tokio::spawn(async move {
        let first = answer(&mut handle).await;
        (handle, first)
    });
    assert!(labeler.sync(body.clone()).await.unwrap());
    let (mut handle, (method, uri, sent)) = server.await.unwrap();
    assert_eq!(method, "PATCH");
    assert_eq!(
        uri,
        "/api/v1/nodes/gpu-node-1?&force=true&fieldManager=hbm-device-plugin"
    );
    assert_eq!(sent, expected);

    // Unchanged: sync returns without sending anything (a sent request would never be answered).
    assert!(!labeler.sync(body.clone()).await.unwrap());
    assert!(futures_util::FutureExt::now_or_never(handle.next_request()).is_none());

    // One region grows: exactly one new apply with the new totals.
    let (changed, _) = desired(
        "gpu-node-1",
        "hbm-passthrough.dev",
        &resources(&[64 << 30, 96 << 30]),
        &inventory,
    );
    let server = tokio::spawn(async move {
        let second = answer(&mut handle).await;
        (handle, second)
    });
    assert!(labeler.sync(changed).await.unwrap());
    let (mut handle, (_, _, sent)) = server.await.unwrap();
    assert_eq!(
        sent["metadata"]["labels"]["hbm-passthrough.dev/amd.com_mi300x.hbm-gib"],
        "160"
    );
    assert_eq!(
        sent["metadata"]["labels"]["hbm-passthrough.dev/amd.com_mi300x.regions"],
        "2"
    );
    assert!(futures_util::FutureExt::now_or_never(handle.next_request()).is_none());
}

#[tokio::test]
async fn no_hbm_means_present_false_and_a_failed_apply_is_retried() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let mut labeler = NodeLabeler::new(client, "plain-node");
    let (body, _) = desired("plain-node", "example.com", &BTreeMap::new(), &Inventory::empty("/"));
    assert_eq!(body["metadata"]["labels"], json!({"example.com/hbm.present": "false"}));

    let server = tokio::spawn(async move {
        let (_, send) = handle.next_request().await.unwrap();
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "nodes \"plain-node\" is forbidden", "reason": "Forbidden", "code": 403});
        send.send_response(
            Response::builder()
                .status(403)
                .body(Body::from(serde_json::to_vec(&status).unwrap()))
                .unwrap(),
        );
        let retried = answer(&mut handle).await;
        (handle, retried)
    });
    let err = labeler.sync(body.clone()).await.unwrap_err().to_string();
    assert!(
        err.starts_with("server-side apply of Node plain-node labels failed:"),
        "{err}"
    );
    assert!(
        err.contains("forbidden") && err.ends_with("(check the RBAC for nodes/patch)"),
        "{err}"
    );
    // Not remembered as applied: the next sync sends it again.
    assert!(labeler.sync(body.clone()).await.unwrap());
    let (_, (_, _, sent)) = server.await.unwrap();
    assert_eq!(sent, body);
}

struct Discovery {
    root: std::path::PathBuf,
}

impl InventorySource for Discovery {
    fn discover(&self, config: &topology::DiscoveryConfig) -> Result<Inventory, String> {
        topology::discover(&self.root, config).map_err(|e| e.to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_applies_once_and_again_only_when_discovery_changes() {
    let host = common::TestHost::new(&topology::fixture::seed_amd_2gpu());
    let mut kubelet = common::FakeKubelet::start(&host.device_plugins);
    let args = RunArgs {
        device_plugin_dir: Some(host.device_plugins.clone()),
        plugins_registry_dir: Some(host.registry.clone()),
        sysfs_root: Some(host.root.clone()),
        dev_root: Some(host.dev.clone()),
        health_poll_interval: Some("20ms".into()),
        node_name: Some("node-a".into()),
        ..RunArgs::default()
    };
    let settings = config::resolve(&args, config::LoadedConfig::default()).unwrap();
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let labeler = NodeLabeler::new(kube::Client::new(service, "default"), "node-a");
    let stop = tokio_util::sync::CancellationToken::new();
    let manager = Manager::new(
        settings,
        Arc::new(Discovery {
            root: host.root.clone(),
        }),
        Arc::new(Metrics::new(Duration::from_secs(60))),
        Some(labeler),
        stop.clone(),
    );
    let running = tokio::spawn(manager.run());

    let (method, uri, first) = common::guarded("the first apply", answer(&mut handle)).await;
    assert_eq!(
        (method.as_str(), uri.as_str()),
        (
            "PATCH",
            "/api/v1/nodes/node-a?&force=true&fieldManager=hbm-device-plugin"
        )
    );
    let inventory = topology::discover(&host.root, &topology::DiscoveryConfig::default()).unwrap();
    assert_eq!(
        first["metadata"]["labels"],
        json!({
            "hbm-passthrough.dev/hbm.present": "true",
            "hbm-passthrough.dev/amd.com_gpu-74a1-hbm.regions": "2",
            "hbm-passthrough.dev/amd.com_gpu-74a1-hbm.hbm-gib": "128",
            "hbm-passthrough.dev/amd.com_gpu-74a1-hbm.kubevirt-usable-regions": "0",
        })
    );
    assert_eq!(
        first["metadata"]["annotations"]["hbm-passthrough.dev/discovery"],
        serde_json::to_string(&inventory).unwrap()
    );
    kubelet.next_registration().await;
    // Many polls pass with nothing changed (a resend would be the next request seen below).
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some(next) = futures_util::FutureExt::now_or_never(handle.next_request()) {
        let (req, _) = next.unwrap();
        let uri = req.uri().to_string();
        let bytes = req.into_body().collect_bytes().await.unwrap();
        panic!("unexpected {uri} {}", String::from_utf8_lossy(&bytes));
    }

    // The host changes: one GPU's PCI function is hot-unplugged.
    topology::fixture::remove_pci_function(&host.root, PciAddress::parse("0000:c1:00.0").unwrap()).unwrap();
    let (_, _, second) = common::guarded("the second apply", answer(&mut handle)).await;
    assert_eq!(
        second["metadata"]["labels"]["hbm-passthrough.dev/amd.com_gpu-74a1-hbm.regions"],
        "1"
    );
    assert_eq!(
        second["metadata"]["labels"]["hbm-passthrough.dev/amd.com_gpu-74a1-hbm.hbm-gib"],
        "64"
    );
    let inventory = topology::discover(&host.root, &topology::DiscoveryConfig::default()).unwrap();
    assert_eq!(
        second["metadata"]["annotations"]["hbm-passthrough.dev/discovery"],
        serde_json::to_string(&inventory).unwrap()
    );

    stop.cancel();
    running.await.unwrap().unwrap();
    // Nothing more was sent (the client is gone with the manager, so the channel reads as closed).
    assert!(!matches!(
        futures_util::FutureExt::now_or_never(handle.next_request()),
        Some(Some(_))
    ));
}
