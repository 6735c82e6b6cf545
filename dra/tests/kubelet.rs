//! The driver as the kubelet sees it: plugin-watcher registration, NodePrepareResources /
//! NodeUnprepareResources over the real unix socket against an API-server stand-in, the files
//! prepare writes (CDI spec, device metadata, checkpoint), restarts, and the health stream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use hbm_dra_driver::cdi;
use proto::dra::health_v1::HealthStatus;
use proto::dra::v1::Device;
use serde_json::{Value, json};
use support::apiserver::ApiServer;
use support::kubelet::{self, claim};
use support::{DRIVER, Driver, GPU_41, GPU_C1, NODE, list, read_json, running, wait_until};

const METADATA_DIR: &str = "/var/run/kubernetes.io/dra-device-attributes";

fn claim_gets(api: &ApiServer) -> usize {
    api.log()
        .iter()
        .filter(|line| line.contains("/resourceclaims/"))
        .count()
}

/// The PCI addresses of a request's devices, read the way virt-launcher reads the metadata file:
/// a stream of DeviceMetadata objects, the v1alpha1 one, the request by name, each device's
/// `resource.kubernetes.io/pciBusID`.
fn pci_bus_ids(text: &str, request: &str) -> Vec<String> {
    let objects: Vec<Value> = serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .map(Result::unwrap)
        .collect();
    let object = objects
        .iter()
        .find(|object| {
            object["apiVersion"] == "metadata.resource.k8s.io/v1alpha1" && object["kind"] == "DeviceMetadata"
        })
        .expect("a v1alpha1 DeviceMetadata object");
    let request = object["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == request)
        .expect("the request");
    request["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|device| {
            device["attributes"]["resource.kubernetes.io/pciBusID"]["string"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn registration_answers_get_info_with_the_dra_endpoint() {
    let (_api, host, driver) = running().await;
    let info = kubelet::get_info(&host.settings.registration_socket()).await;
    assert_eq!(info.r#type, "DRAPlugin");
    assert_eq!(info.name, DRIVER);
    assert_eq!(info.endpoint, host.settings.dra_socket().display().to_string());
    assert_eq!(info.supported_versions, ["v1.DRAPlugin"]);
    driver.stop().await;
    assert!(!host.settings.registration_socket().exists());
    assert!(!host.settings.dra_socket().exists());
}

#[tokio::test]
async fn an_online_region_gets_no_dax_device_node_in_the_cdi_spec() {
    let api = ApiServer::start().await;
    let host = support::Host::c1_online();
    let driver = Driver::start(&host.settings, api.client()).await;
    api.put_claim("vms", "vm-gpu", "uid-1", json!({}), &[("gpu", DRIVER, NODE, GPU_C1)]);
    api.put_claim("vms", "vm-other", "uid-2", json!({}), &[("gpu", DRIVER, NODE, GPU_41)]);
    let socket = host.settings.dra_socket();
    let answers = kubelet::prepare(
        &socket,
        vec![claim("vms", "vm-gpu", "uid-1"), claim("vms", "vm-other", "uid-2")],
    )
    .await;
    assert_eq!(
        (answers["uid-1"].error.as_str(), answers["uid-2"].error.as_str()),
        ("", "")
    );
    let nodes = |uid: &str| -> (Vec<String>, Vec<String>) {
        let spec = host.cdi_spec(uid);
        let own = spec.devices[0]
            .container_edits
            .device_nodes
            .iter()
            .map(|n| n.path.clone())
            .collect();
        (own, spec.container_edits.env.clone())
    };
    assert_eq!(
        nodes("uid-1"),
        (
            vec!["/dev/vfio/56".to_string()],
            vec![
                "HBM_REGIONS_HBM_PASSTHROUGH_DEV_GPU=0000:c1:00.0,3,68719476736,/dev/dax1.0".to_string(),
                "PCI_RESOURCE_HBM_PASSTHROUGH_DEV_GPU=0000:c1:00.0".to_string(),
            ]
        )
    );
    assert_eq!(nodes("uid-2").0, ["/dev/vfio/24", "/dev/dax0.0"]);
    wait_until("the slice is published", || !api.slices().is_empty()).await;
    let slices = api.slices();
    let devices = slices.values().next().unwrap()["spec"]["devices"]
        .as_array()
        .unwrap()
        .clone();
    let usable: Vec<(&str, &Value)> = devices
        .iter()
        .map(|d| (d["name"].as_str().unwrap(), &d["attributes"]["kubevirtUsable"]))
        .collect();
    assert_eq!(
        usable,
        [(GPU_41, &json!({"bool": false})), (GPU_C1, &json!({"bool": true}))]
    );
    driver.stop().await;
}

#[tokio::test]
async fn one_claim_is_prepared_once_answered_again_and_unprepared_to_nothing() {
    let (api, host, driver) = running().await;
    api.put_claim("vms", "vm-gpu", "uid-1", json!({}), &[("gpu", DRIVER, NODE, GPU_C1)]);
    let socket = host.settings.dra_socket();

    let answers = kubelet::prepare(&socket, vec![claim("vms", "vm-gpu", "uid-1")]).await;
    let expected = Device {
        request_names: vec!["gpu".into()],
        pool_name: NODE.into(),
        device_name: GPU_C1.into(),
        cdi_device_ids: vec![format!("{DRIVER}/gpu=uid-1-{GPU_C1}")],
    };
    assert_eq!(answers["uid-1"].error, "");
    assert_eq!(answers["uid-1"].devices, std::slice::from_ref(&expected));

    assert_eq!(host.cdi_files(), ["hbm.passthrough.dev-claim-uid-1.json"]);
    let spec = host.cdi_spec("uid-1");
    assert_eq!(cdi::validate(&spec), Ok(()));
    let metadata_file = host.metadata_file("uid-1");
    let node = |path: &str| cdi::DeviceNode {
        path: path.into(),
        host_path: Some(path.into()),
        permissions: Some("rw".into()),
    };
    let wanted = cdi::Spec {
        cdi_version: "0.6.0".into(),
        kind: "hbm.passthrough.dev/gpu".into(),
        devices: vec![cdi::Device {
            name: format!("uid-1-{GPU_C1}"),
            container_edits: cdi::ContainerEdits {
                device_nodes: vec![node("/dev/vfio/56"), node("/dev/dax1.0")],
                ..cdi::ContainerEdits::default()
            },
        }],
        container_edits: cdi::ContainerEdits {
            env: vec![
                "HBM_REGIONS_HBM_PASSTHROUGH_DEV_GPU=0000:c1:00.0,3,68719476736,/dev/dax1.0".into(),
                "PCI_RESOURCE_HBM_PASSTHROUGH_DEV_GPU=0000:c1:00.0".into(),
            ],
            device_nodes: vec![node("/dev/vfio/vfio")],
            mounts: vec![cdi::Mount::read_only_bind(
                &metadata_file,
                &format!("{METADATA_DIR}/resourceclaims/vm-gpu/gpu/hbm.passthrough.dev-metadata.json"),
            )],
        },
    };
    assert_eq!(spec, wanted);
    let metadata = std::fs::read_to_string(&metadata_file).unwrap();
    assert_eq!(pci_bus_ids(&metadata, "gpu"), ["0000:c1:00.0"]);
    let document: Value = serde_json::from_str(&metadata).unwrap();
    assert_eq!(
        document["metadata"],
        json!({"name": "vm-gpu", "namespace": "vms", "uid": "uid-1", "generation": 1})
    );
    assert_eq!(document.get("podClaimName"), None);

    let again = kubelet::prepare(&socket, vec![claim("vms", "vm-gpu", "uid-1")]).await;
    assert_eq!(again["uid-1"].devices, [expected]);
    assert_eq!(claim_gets(&api), 1, "a prepared claim is answered from the checkpoint");

    let errors = kubelet::unprepare(&socket, vec![claim("vms", "vm-gpu", "uid-1")]).await;
    assert_eq!(errors["uid-1"], "");
    assert!(host.cdi_files().is_empty());
    assert!(list(&host.settings.plugin_dir().join("metadata")).is_empty());
    let checkpoint = read_json(&host.settings.plugin_dir().join("checkpoint.json"));
    assert_eq!(checkpoint, json!({"version": 1, "claims": {}}));
    let errors = kubelet::unprepare(&socket, vec![claim("vms", "vm-gpu", "uid-1")]).await;
    assert_eq!(errors["uid-1"], "", "unprepare is idempotent");
    driver.stop().await;
}

#[tokio::test]
async fn every_claim_gets_its_own_answer() {
    let (api, host, driver) = running().await;
    api.put_claim(
        "vms",
        "a",
        "uid-a",
        json!({}),
        &[("gpu", DRIVER, NODE, GPU_41), ("nic", "nic.example.com", NODE, "nic-0")],
    );
    api.put_claim(
        "vms",
        "vm-1-hbm-gpu-x7k2p",
        "uid-b",
        json!({"resource.kubernetes.io/pod-claim-name": "hbm-gpu"}),
        &[("gpu", DRIVER, NODE, GPU_C1)],
    );
    api.put_claim(
        "vms",
        "recreated",
        "uid-new",
        json!({}),
        &[("gpu", DRIVER, NODE, GPU_C1)],
    );
    api.put_claim("vms", "second", "uid-e", json!({}), &[("gpu", DRIVER, NODE, GPU_41)]);
    let socket = host.settings.dra_socket();

    let answers = kubelet::prepare(
        &socket,
        vec![
            claim("vms", "a", "uid-a"),
            claim("vms", "vm-1-hbm-gpu-x7k2p", "uid-b"),
            claim("vms", "recreated", "uid-old"),
            claim("vms", "missing", "uid-m"),
        ],
    )
    .await;
    assert_eq!(answers.len(), 4);
    let names = |uid: &str| -> Vec<String> { answers[uid].devices.iter().map(|d| d.device_name.clone()).collect() };
    assert_eq!(
        (answers["uid-a"].error.as_str(), names("uid-a")),
        ("", vec![GPU_41.to_string()])
    );
    assert_eq!(
        (answers["uid-b"].error.as_str(), names("uid-b")),
        ("", vec![GPU_C1.to_string()])
    );
    assert_eq!(
        answers["uid-old"].error,
        "ResourceClaim vms/recreated has UID uid-new, the kubelet asked for uid-old (the claim was deleted and recreated)"
    );
    assert!(
        answers["uid-m"]
            .error
            .starts_with("cannot get ResourceClaim vms/missing from the API server"),
        "{}",
        answers["uid-m"].error
    );
    assert_eq!(
        host.cdi_files(),
        [
            "hbm.passthrough.dev-claim-uid-a.json",
            "hbm.passthrough.dev-claim-uid-b.json"
        ]
    );
    let template_spec = host.cdi_spec("uid-b");
    assert_eq!(
        template_spec.container_edits.mounts[0].container_path,
        format!("{METADATA_DIR}/resourceclaimtemplates/hbm-gpu/gpu/hbm.passthrough.dev-metadata.json")
    );
    let metadata = read_json(&host.metadata_file("uid-b"));
    assert_eq!(metadata["podClaimName"], "hbm-gpu");

    let taken = kubelet::prepare(&socket, vec![claim("vms", "second", "uid-e")]).await;
    assert_eq!(
        taken["uid-e"].error,
        format!("device {GPU_41} is already prepared for claim uid-a; unprepare that claim first")
    );
    let errors = kubelet::unprepare(&socket, vec![claim("vms", "a", "uid-a"), claim("vms", "x", "uid-b")]).await;
    assert_eq!((errors["uid-a"].as_str(), errors["uid-b"].as_str()), ("", ""));
    assert!(host.cdi_files().is_empty());
    driver.stop().await;
}

#[tokio::test]
async fn an_unhealthy_device_is_refused_with_the_cause() {
    let (api, host, driver) = running().await;
    api.put_claim("vms", "c", "uid-1", json!({}), &[("gpu", DRIVER, NODE, GPU_C1)]);
    std::fs::remove_file(host.dev("vfio/56")).unwrap();
    let answers = kubelet::prepare(&host.settings.dra_socket(), vec![claim("vms", "c", "uid-1")]).await;
    assert_eq!(
        answers["uid-1"].error,
        format!(
            "device {GPU_C1} is unhealthy: {} is missing",
            host.dev("vfio/56").display()
        )
    );
    assert!(host.cdi_files().is_empty());
    driver.stop().await;
}

#[tokio::test]
async fn a_driver_restart_between_prepare_and_unprepare_keeps_the_claim() {
    let (api, host, driver) = running().await;
    api.put_claim("vms", "c", "uid-1", json!({}), &[("gpu", DRIVER, NODE, GPU_41)]);
    let first = kubelet::prepare(&host.settings.dra_socket(), vec![claim("vms", "c", "uid-1")]).await;
    driver.stop().await;
    assert_eq!(host.cdi_files(), ["hbm.passthrough.dev-claim-uid-1.json"]);

    let driver = Driver::start(&host.settings, api.client()).await;
    let again = kubelet::prepare(&host.settings.dra_socket(), vec![claim("vms", "c", "uid-1")]).await;
    assert_eq!(again, first);
    assert_eq!(claim_gets(&api), 1, "the restarted driver answered from its checkpoint");
    // A metadata file lost meanwhile is written again, with the next generation.
    let metadata = host.metadata_file("uid-1");
    std::fs::remove_file(&metadata).unwrap();
    let rewritten = kubelet::prepare(&host.settings.dra_socket(), vec![claim("vms", "c", "uid-1")]).await;
    assert_eq!(rewritten, first);
    assert_eq!(read_json(&metadata)["metadata"]["generation"], 2);
    // So is one a power loss left empty (the metadata files and CDI spec are not synced).
    std::fs::write(&metadata, "").unwrap();
    let refilled = kubelet::prepare(&host.settings.dra_socket(), vec![claim("vms", "c", "uid-1")]).await;
    assert_eq!(refilled, first);
    assert_eq!(read_json(&metadata)["metadata"]["generation"], 3);
    assert_eq!(claim_gets(&api), 3, "each rewrite GETs the claim again");

    let errors = kubelet::unprepare(&host.settings.dra_socket(), vec![claim("vms", "c", "uid-1")]).await;
    assert_eq!(errors["uid-1"], "");
    assert!(host.cdi_files().is_empty());
    assert!(list(&host.settings.plugin_dir().join("metadata")).is_empty());
    driver.stop().await;
}

#[tokio::test]
async fn the_health_stream_follows_a_vfio_group_and_a_dax_device() {
    let (_api, host, driver) = running().await;
    let mut stream = kubelet::watch_health(&host.settings.dra_socket()).await;
    let mut next = async || {
        let message = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("a health message within 5 s")
            .unwrap()
            .unwrap();
        message
            .devices
            .iter()
            .map(|d| {
                let id = d.device.clone().unwrap();
                assert_eq!(id.pool_name, NODE);
                assert_eq!(d.health_check_timeout_seconds, 10);
                (
                    id.device_name,
                    HealthStatus::try_from(d.health).unwrap(),
                    d.message.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let healthy = vec![
        (GPU_41.to_string(), HealthStatus::Healthy, String::new()),
        (GPU_C1.to_string(), HealthStatus::Healthy, String::new()),
    ];
    assert_eq!(next().await, healthy);
    std::fs::remove_file(host.dev("vfio/56")).unwrap();
    let missing = format!("{} is missing", host.dev("vfio/56").display());
    assert_eq!(
        next().await,
        [
            (GPU_41.to_string(), HealthStatus::Healthy, String::new()),
            (GPU_C1.to_string(), HealthStatus::Unhealthy, missing),
        ]
    );
    std::fs::write(host.dev("vfio/56"), "").unwrap();
    assert_eq!(next().await, healthy);
    std::fs::remove_file(host.dev("dax0.0")).unwrap();
    let gone = format!(
        "dax device {} of region 0000:41:00.0/dax0.0 is missing",
        host.dev("dax0.0").display()
    );
    let unhealthy = next().await;
    assert_eq!(unhealthy[0], (GPU_41.to_string(), HealthStatus::Unhealthy, gone));
    std::fs::write(host.dev("dax0.0"), "").unwrap();
    assert_eq!(next().await, healthy);
    driver.stop().await;
}

#[tokio::test]
async fn a_removed_registration_socket_is_served_again() {
    let (_api, host, driver) = running().await;
    let socket = host.settings.registration_socket();
    std::fs::remove_file(&socket).unwrap();
    wait_until("the registration socket is back", || socket.exists()).await;
    let info = kubelet::get_info(&socket).await;
    assert_eq!(info.name, DRIVER);
    driver.stop().await;
}

#[tokio::test]
async fn a_refused_registration_is_offered_again_on_a_new_socket() {
    use std::os::unix::fs::MetadataExt;
    let (_api, host, driver) = running().await;
    let socket = host.settings.registration_socket();
    let identity = |meta: std::fs::Metadata| (meta.ino(), meta.ctime(), meta.ctime_nsec());
    let first = identity(std::fs::metadata(&socket).unwrap());
    let channel = plugin::registration::dial_unix(&socket).await.unwrap();
    proto::pluginregistration::registration_client::RegistrationClient::new(channel)
        .notify_registration_status(proto::pluginregistration::RegistrationStatus {
            plugin_registered: false,
            error: "no supported version".into(),
        })
        .await
        .unwrap();
    wait_until("a new registration socket", || {
        std::fs::metadata(&socket).is_ok_and(|meta| identity(meta) != first)
    })
    .await;
    assert_eq!(kubelet::get_info(&socket).await.name, DRIVER);
    driver.stop().await;
}

#[tokio::test]
async fn a_failed_write_leaves_nothing_behind() {
    let (api, host, driver) = running().await;
    // A file where the CDI folder should be: the spec cannot be written.
    std::fs::write(&host.settings.cdi_root, "").unwrap();
    api.put_claim("vms", "c", "uid-1", json!({}), &[("gpu", DRIVER, NODE, GPU_C1)]);
    let answers = kubelet::prepare(&host.settings.dra_socket(), vec![claim("vms", "c", "uid-1")]).await;
    let spec = host.settings.cdi_root.join("hbm.passthrough.dev-claim-uid-1.json");
    assert!(
        answers["uid-1"]
            .error
            .starts_with(&format!("cannot write {}: ", spec.display())),
        "{}",
        answers["uid-1"].error
    );
    assert!(answers["uid-1"].devices.is_empty());
    assert!(!host.metadata_file("uid-1").exists());
    assert!(list(&host.settings.plugin_dir().join("metadata")).is_empty());
    assert!(
        !host.settings.plugin_dir().join("checkpoint.json").exists(),
        "nothing was checkpointed"
    );
    // Once the folder can be made, the same claim prepares.
    std::fs::remove_file(&host.settings.cdi_root).unwrap();
    let answers = kubelet::prepare(&host.settings.dra_socket(), vec![claim("vms", "c", "uid-1")]).await;
    assert_eq!(answers["uid-1"].error, "");
    driver.stop().await;
}

#[tokio::test]
async fn a_kubelet_before_1_36_gets_the_same_health_list_through_v1alpha1() {
    let (_api, host, driver) = running().await;
    let socket = host.settings.dra_socket();
    std::fs::remove_file(host.dev("vfio/56")).unwrap();
    let unhealthy = |devices: Vec<(String, i32, String)>| devices.into_iter().filter(|d| d.1 == 2).count();
    // Both streams open on the current list; wait (bounded) until it shows the missing group.
    let mut alpha = kubelet::watch_health_v1alpha1(&socket).await;
    let alpha_list = loop {
        let message = tokio::time::timeout(Duration::from_secs(5), alpha.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let list: Vec<(String, i32, String)> = message
            .devices
            .into_iter()
            .map(|d| (d.device.unwrap().device_name, d.health, d.message))
            .collect();
        if unhealthy(list.clone()) == 1 {
            break list;
        }
    };
    let mut current = kubelet::watch_health(&socket).await;
    let message = tokio::time::timeout(Duration::from_secs(5), current.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let current_list: Vec<(String, i32, String)> = message
        .devices
        .into_iter()
        .map(|d| (d.device.unwrap().device_name, d.health, d.message))
        .collect();
    assert_eq!(alpha_list, current_list);
    assert_eq!(
        alpha_list[1],
        (
            GPU_C1.to_string(),
            2,
            format!("{} is missing", host.dev("vfio/56").display())
        )
    );
    driver.stop().await;
}

/// The CDI crate's reader is a real judge: the spec prepare wrote, with its kind or a device name
/// broken, is refused.
#[tokio::test]
async fn the_cdi_crate_refuses_a_spec_with_a_bad_kind_or_device_name() {
    let (api, host, driver) = running().await;
    api.put_claim("vms", "vm-gpu", "uid-1", json!({}), &[("gpu", DRIVER, NODE, GPU_C1)]);
    let answers = kubelet::prepare(&host.settings.dra_socket(), vec![claim("vms", "vm-gpu", "uid-1")]).await;
    assert_eq!(answers["uid-1"].error, "");
    let written = host.settings.cdi_root.join(format!("{DRIVER}-claim-uid-1.json"));
    let text = std::fs::read_to_string(&written).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let dir = tempfile::tempdir().unwrap();

    value["kind"] = json!("not a kind");
    let bad_kind = dir.path().join("bad-kind.json");
    std::fs::write(&bad_kind, value.to_string()).unwrap();
    assert!(container_device_interface::spec::read_spec(&bad_kind, 0).is_err());

    let mut bad_name: serde_json::Value = serde_json::from_str(&text).unwrap();
    bad_name["devices"][0]["name"] = json!("not a name!");
    let named = dir.path().join("bad-name.json");
    std::fs::write(&named, bad_name.to_string()).unwrap();
    assert!(container_device_interface::spec::read_spec(&named, 0).is_err());
    assert!(container_device_interface::spec::read_spec(&written, 0).is_ok());
    driver.stop().await;
}
