//! The plugin binary against a fake kubelet over real unix sockets, on fixture hosts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{FakeKubelet, PluginProcess, Serving, TestHost, Watch, health};
use proto::deviceplugin::v1beta1::device_plugin_client::DevicePluginClient;
use proto::deviceplugin::v1beta1::{
    AllocateRequest, ContainerAllocateRequest, ContainerPreferredAllocationRequest, Empty, NumaNode,
    PreferredAllocationRequest, TopologyInfo,
};
use tonic::transport::Channel;
use topology::fixture;

const RESOURCE: &str = "amd.com/gpu-74a1-hbm";
const ENDPOINT: &str = "hbm-amd.com_gpu-74a1-hbm.sock";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_lists_prefers_and_allocates_like_the_kubelet_expects() {
    let host = TestHost::new(&fixture::seed_amd_2gpu());
    let mut kubelet = FakeKubelet::start(&host.device_plugins);
    let plugin = PluginProcess::spawn(&host.args(), host.dir.path().join("plugin.log"));

    let reg = kubelet.next_registration().await;
    assert_eq!(reg.version, "v1beta1");
    assert_eq!(reg.resource_name, RESOURCE);
    assert_eq!(reg.endpoint, ENDPOINT);
    let options = reg.options.unwrap();
    assert!(options.get_preferred_allocation_available && !options.pre_start_required);

    let mut client = kubelet.dial(&reg.endpoint).await;
    let options = client.get_device_plugin_options(Empty {}).await.unwrap().into_inner();
    assert!(options.get_preferred_allocation_available && !options.pre_start_required);

    let mut watch = Watch::open(&mut client).await;
    let list = watch.next().await;
    assert_eq!(
        health(&list),
        [
            ("0000:41:00.0".to_string(), "Healthy".to_string()),
            ("0000:c1:00.0".to_string(), "Healthy".to_string())
        ]
    );
    // TopologyInfo: the GPU's nearest CPU node (0 and 1), never the CPU-less HBM node (2, 3).
    let topo: Vec<Option<TopologyInfo>> = list.devices.iter().map(|d| d.topology.clone()).collect();
    assert_eq!(
        topo,
        [
            Some(TopologyInfo {
                nodes: vec![NumaNode { id: 0 }]
            }),
            Some(TopologyInfo {
                nodes: vec![NumaNode { id: 1 }]
            })
        ]
    );

    let preferred = client
        .get_preferred_allocation(PreferredAllocationRequest {
            container_requests: vec![ContainerPreferredAllocationRequest {
                available_device_i_ds: vec!["0000:41:00.0".into(), "0000:c1:00.0".into()],
                must_include_device_i_ds: vec!["0000:c1:00.0".into()],
                allocation_size: 1,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preferred.container_responses[0].device_i_ds, ["0000:c1:00.0"]);

    let response = client
        .allocate(one_container(vec!["0000:c1:00.0".into()]))
        .await
        .unwrap()
        .into_inner();
    let c = &response.container_responses[0];
    let specs: Vec<(String, String, String)> = c
        .devices
        .iter()
        .map(|d| (d.container_path.clone(), d.host_path.clone(), d.permissions.clone()))
        .collect();
    assert_eq!(
        specs,
        [
            (
                "/dev/vfio/vfio".to_string(),
                "/dev/vfio/vfio".to_string(),
                "rw".to_string()
            ),
            ("/dev/vfio/56".to_string(), "/dev/vfio/56".to_string(), "rw".to_string()),
            ("/dev/dax1.0".to_string(), "/dev/dax1.0".to_string(), "rw".to_string()),
        ]
    );
    assert_eq!(c.envs.len(), 2);
    assert_eq!(c.envs["PCI_RESOURCE_AMD_COM_GPU-74A1-HBM"], "0000:c1:00.0");
    assert_eq!(
        c.envs["HBM_REGIONS_AMD_COM_GPU-74A1-HBM"],
        "0000:c1:00.0,3,68719476736,/dev/dax1.0"
    );

    // Garbage from the kubelet: a clear error for that call, and the plugin keeps serving.
    let invalid = |message: String| (tonic::Code::InvalidArgument, message);
    assert_eq!(
        refusal(&mut client, vec!["0000:ff:00.0".into()]).await,
        invalid(
            "resource amd.com/gpu-74a1-hbm: unknown device ID \"0000:ff:00.0\" (not advertised by this plugin)".into()
        )
    );
    // A 20 KB ID is cut to 64 bytes in the reply (and the log).
    assert_eq!(
        refusal(&mut client, vec!["x".repeat(20_000)]).await,
        invalid(format!(
            "resource amd.com/gpu-74a1-hbm: unknown device ID \"{}…\" (not advertised by this plugin)",
            "x".repeat(64)
        ))
    );
    assert!(!plugin.log_text().contains(&"x".repeat(65)));
    // The same device twice in one container: refused.
    assert_eq!(
        refusal(&mut client, vec!["0000:41:00.0".into(), "0000:41:00.0".into()]).await,
        invalid(
            "resource amd.com/gpu-74a1-hbm: device ID \"0000:41:00.0\" appears more than once in one container request"
                .into()
        )
    );
    let ok = client
        .allocate(one_container(vec!["0000:41:00.0".into()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ok.container_responses[0].envs["PCI_RESOURCE_AMD_COM_GPU-74A1-HBM"],
        "0000:41:00.0"
    );
    assert!(kubelet.pending_registrations().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_region_gets_no_dax_device_node_and_the_log_says_which_regions_kubevirt_can_use() {
    let host = TestHost::new(&common::seed_amd_2gpu_c1_online());
    assert!(!host.dev.join("dax1.0").exists() && host.dev.join("dax0.0").exists());
    let mut kubelet = FakeKubelet::start(&host.device_plugins);
    let plugin = PluginProcess::spawn(&host.args(), host.dir.path().join("plugin.log"));
    let reg = kubelet.next_registration().await;
    let mut client = kubelet.dial(&reg.endpoint).await;
    let mut watch = Watch::open(&mut client).await;
    let healthy = |id: &str| (id.to_string(), "Healthy".to_string());
    assert_eq!(
        health(&watch.next().await),
        [healthy("0000:41:00.0"), healthy("0000:c1:00.0")]
    );

    let paths = |response: &proto::deviceplugin::v1beta1::AllocateResponse| -> Vec<String> {
        let devices = &response.container_responses[0].devices;
        devices.iter().map(|d| d.container_path.clone()).collect()
    };
    let online = client
        .allocate(one_container(vec!["0000:c1:00.0".into()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paths(&online), ["/dev/vfio/vfio", "/dev/vfio/56"]);
    assert_eq!(
        online.container_responses[0].envs["HBM_REGIONS_AMD_COM_GPU-74A1-HBM"],
        "0000:c1:00.0,3,68719476736,/dev/dax1.0"
    );
    let devdax = client
        .allocate(one_container(vec!["0000:41:00.0".into()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paths(&devdax), ["/dev/vfio/vfio", "/dev/vfio/24", "/dev/dax0.0"]);

    let log = plugin.log_text();
    for line in [
        "amd.com/gpu-74a1-hbm region 0000:41:00.0/dax0.0: not usable by KubeVirt (reachable only through /dev/dax0.0, which virt-launcher's QEMU cannot use); on the host: `daxctl reconfigure-device --mode=system-ram dax0.0`",
        "amd.com/gpu-74a1-hbm region 0000:c1:00.0/dax1.0: usable by KubeVirt (online in host node 3; virt-launcher binds the guest cell there)",
    ] {
        assert_eq!(log.matches(line).count(), 1, "{line} once in:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_restarts_twenty_times_and_the_plugin_reregisters_every_time() {
    let host = TestHost::new(&fixture::seed_amd_2gpu());
    let mut kubelet = FakeKubelet::start(&host.device_plugins);
    let metrics = common::free_addr();
    let mut args = host.args();
    // A slow poll: recovery must come from inotify, not from the fallback.
    args.retain(|a| !a.starts_with("--health-poll-interval"));
    args.push("--health-poll-interval=60s".into());
    args.push(format!("--metrics-addr={metrics}"));
    let _plugin = PluginProcess::spawn(&args, host.dir.path().join("plugin.log"));
    let first = kubelet.next_registration().await;
    assert_eq!(first.resource_name, RESOURCE);

    let mut dropped_total = 0;
    for round in 1..=20 {
        dropped_total += kubelet.restart().await;
        // Served again on a fresh socket: the kubelet's dial and ListAndWatch work.
        let (reg, mut watch, dropped) = kubelet.next_working_registration().await;
        assert_eq!(
            (round, reg.resource_name.as_str(), reg.endpoint.as_str()),
            (round, RESOURCE, ENDPOINT)
        );
        assert_eq!(watch.next().await.devices.len(), 2, "round {round}");
        dropped_total += dropped;
    }
    assert!(kubelet.pending_registrations().is_empty(), "no Register left over");
    assert_eq!(host.sockets(&host.device_plugins), [ENDPOINT, "kubelet.sock"]);
    let ok = format!(
        "hbm_plugin_registrations_total{{resource=\"amd.com/gpu-74a1-hbm\",result=\"ok\"}} {}",
        21 + dropped_total
    );
    // The kubelet sees Register before the plugin sees the answer and counts it: wait for the count.
    let text = common::guarded("the registration count", async {
        loop {
            let (code, text) = common::http_get(metrics, "/metrics").await;
            assert_eq!(code, 200);
            if text.lines().any(|l| l == ok) {
                return text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        text.lines().any(|l| l == "hbm_plugin_kubelet_restarts_total 20"),
        "{text}"
    );
    common::guarded("readyz 200", async {
        while common::http_get(metrics, "/readyz").await != (200, "ready\n".to_string()) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_unbound_from_vfio_turns_unhealthy_and_recovers() {
    let host = TestHost::new(&fixture::seed_amd_2gpu());
    let mut kubelet = FakeKubelet::start(&host.device_plugins);
    let _plugin = PluginProcess::spawn(&host.args(), host.dir.path().join("plugin.log"));
    let reg = kubelet.next_registration().await;
    let mut client = kubelet.dial(&reg.endpoint).await;
    let mut watch = Watch::open(&mut client).await;
    watch
        .until("both healthy", |u| {
            u.devices.len() == 2 && u.devices.iter().all(|d| d.health == "Healthy")
        })
        .await;

    let gpu = topology::PciAddress::parse("0000:c1:00.0").unwrap();
    fixture::bind_driver(&host.root, gpu, Some("amdgpu")).unwrap();
    let update = watch
        .until("c1 unhealthy", |u| {
            health(u).contains(&("0000:c1:00.0".into(), "Unhealthy".into()))
        })
        .await;
    assert_eq!(
        health(&update),
        [
            ("0000:41:00.0".to_string(), "Healthy".to_string()),
            ("0000:c1:00.0".to_string(), "Unhealthy".to_string())
        ]
    );
    let err = client
        .allocate(one_container(vec!["0000:c1:00.0".into()]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        "resource amd.com/gpu-74a1-hbm: device 0000:c1:00.0 is unhealthy: GPU 0000:c1:00.0 is bound to amdgpu, not vfio-pci"
    );

    fixture::bind_driver(&host.root, gpu, Some("vfio-pci")).unwrap();
    let update = watch
        .until("c1 healthy again", |u| u.devices.iter().all(|d| d.health == "Healthy"))
        .await;
    assert_eq!(update.devices.len(), 2);
    let ok = client
        .allocate(one_container(vec!["0000:c1:00.0".into()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.container_responses.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_of_a_device_that_just_turned_unhealthy_fails_and_sends_an_update() {
    let host = TestHost::new(&fixture::seed_amd_2gpu());
    let mut kubelet = FakeKubelet::start(&host.device_plugins);
    let mut args = host.args();
    args.retain(|a| !a.starts_with("--health-poll-interval"));
    args.push("--health-poll-interval=60s".into());
    let plugin = PluginProcess::spawn(&args, host.dir.path().join("plugin.log"));
    let reg = kubelet.next_registration().await;
    let mut client = kubelet.dial(&reg.endpoint).await;
    let mut watch = Watch::open(&mut client).await;
    assert!(watch.next().await.devices.iter().all(|d| d.health == "Healthy"));

    // The poll is 60 s away and sysfs is not watched: only Allocate's own check can notice.
    let gpu = topology::PciAddress::parse("0000:41:00.0").unwrap();
    fixture::bind_driver(&host.root, gpu, None).unwrap();
    let err = client
        .allocate(one_container(vec!["0000:41:00.0".into()]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        "resource amd.com/gpu-74a1-hbm: device 0000:41:00.0 is unhealthy: GPU 0000:41:00.0 is not bound to vfio-pci (no driver)"
    );
    let update = watch.next().await;
    assert_eq!(
        health(&update),
        [
            ("0000:41:00.0".to_string(), "Unhealthy".to_string()),
            ("0000:c1:00.0".to_string(), "Healthy".to_string())
        ]
    );
    // Measured by Allocate first, the change is still logged once, with its reason.
    let logged = "device unhealthy resource=amd.com/gpu-74a1-hbm device=0000:41:00.0 reason=GPU 0000:41:00.0 is not bound to vfio-pci (no driver)";
    assert_eq!(plugin.log_text().matches(logged).count(), 1, "{}", plugin.log_text());

    // Rebind, and wake the plugin through /dev (watched with inotify): healthy again.
    fixture::bind_driver(&host.root, gpu, Some("vfio-pci")).unwrap();
    std::fs::write(host.dev.join("vfio/wake"), "").unwrap();
    let update = watch.next().await;
    assert!(update.devices.iter().all(|d| d.health == "Healthy"), "{update:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanishing_dax_device_or_vfio_group_makes_the_device_unhealthy_until_back() {
    let host = TestHost::new(&fixture::seed_amd_2gpu());
    let mut kubelet = FakeKubelet::start(&host.device_plugins);
    let mut args = host.args();
    // /dev is watched with inotify: no poll needed for these.
    args.retain(|a| !a.starts_with("--health-poll-interval"));
    args.push("--health-poll-interval=60s".into());
    let _plugin = PluginProcess::spawn(&args, host.dir.path().join("plugin.log"));
    let reg = kubelet.next_registration().await;
    let mut client = kubelet.dial(&reg.endpoint).await;
    let mut watch = Watch::open(&mut client).await;
    assert!(watch.next().await.devices.iter().all(|d| d.health == "Healthy"));

    let healthy = |id: &str| (id.to_string(), "Healthy".to_string());
    let unhealthy = |id: &str| (id.to_string(), "Unhealthy".to_string());

    std::fs::remove_file(host.dev.join("dax0.0")).unwrap();
    let update = watch
        .until("41 unhealthy", |u| u.devices.iter().any(|d| d.health == "Unhealthy"))
        .await;
    assert_eq!(health(&update), [unhealthy("0000:41:00.0"), healthy("0000:c1:00.0")]);
    std::fs::write(host.dev.join("dax0.0"), "").unwrap();
    let update = watch
        .until("41 healthy", |u| u.devices.iter().all(|d| d.health == "Healthy"))
        .await;
    assert_eq!(health(&update), [healthy("0000:41:00.0"), healthy("0000:c1:00.0")]);

    std::fs::remove_file(host.dev.join("vfio/56")).unwrap();
    let update = watch
        .until("c1 unhealthy", |u| u.devices.iter().any(|d| d.health == "Unhealthy"))
        .await;
    assert_eq!(health(&update), [healthy("0000:41:00.0"), unhealthy("0000:c1:00.0")]);
    let err = client
        .allocate(one_container(vec!["0000:c1:00.0".into()]))
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        format!(
            "resource amd.com/gpu-74a1-hbm: device 0000:c1:00.0 is unhealthy: {}/vfio/56 is missing",
            host.dev.display()
        )
    );
    std::fs::write(host.dev.join("vfio/56"), "").unwrap();
    let update = watch
        .until("c1 healthy", |u| u.devices.iter().all(|d| d.health == "Healthy"))
        .await;
    assert_eq!(health(&update), [healthy("0000:41:00.0"), healthy("0000:c1:00.0")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_servers_and_removes_sockets() {
    let host = TestHost::new(&fixture::seed_amd_2gpu());
    let mut kubelet = FakeKubelet::start(&host.device_plugins);
    let mut plugin = PluginProcess::spawn(&host.args(), host.dir.path().join("plugin.log"));
    let reg = kubelet.next_registration().await;
    let mut client = kubelet.dial(&reg.endpoint).await;
    let mut watch = Watch::open(&mut client).await;
    watch.next().await;
    assert_eq!(host.sockets(&host.device_plugins), [ENDPOINT, "kubelet.sock"]);

    plugin.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(plugin.wait().await, Some(0));
    assert_eq!(host.sockets(&host.device_plugins), ["kubelet.sock"]);
    // The kubelet's stream ended with the server.
    assert!(
        common::guarded("stream end", watch.stream.message())
            .await
            .map(|m| m.is_none())
            .unwrap_or(true)
    );
    assert!(plugin.log_text().contains("SIGTERM received"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_size_change_is_unhealthy_until_restored_and_an_unplugged_gpu_leaves_the_list() {
    let host = TestHost::new(&fixture::seed_amd_2gpu());
    // Every part is bound: the kubelet and the plugin live until the test ends.
    let Serving {
        kubelet: _kubelet,
        plugin: _plugin,
        mut client,
        mut watch,
    } = Serving::start(&host, &host.args()).await;

    let size = host.root.join("sys/bus/dax/devices/dax1.0/size");
    let original = std::fs::read_to_string(&size).unwrap();
    std::fs::write(&size, format!("{}\n", 32u64 << 30)).unwrap();
    let update = watch
        .until("c1 unhealthy", |u| u.devices.iter().any(|d| d.health == "Unhealthy"))
        .await;
    assert_eq!(
        health(&update),
        [
            ("0000:41:00.0".to_string(), "Healthy".to_string()),
            ("0000:c1:00.0".to_string(), "Unhealthy".to_string())
        ]
    );
    let err = client
        .allocate(one_container(vec!["0000:c1:00.0".into()]))
        .await
        .unwrap_err();
    assert!(
        err.message()
            .ends_with("changed size from 68719476736 to 34359738368 bytes"),
        "{}",
        err.message()
    );
    std::fs::write(&size, original).unwrap();
    watch
        .until("c1 healthy", |u| u.devices.iter().all(|d| d.health == "Healthy"))
        .await;

    fixture::remove_pci_function(&host.root, topology::PciAddress::parse("0000:c1:00.0").unwrap()).unwrap();
    let update = watch.until("c1 gone", |u| u.devices.len() == 1).await;
    assert_eq!(health(&update), [("0000:41:00.0".to_string(), "Healthy".to_string())]);
    let err = client
        .allocate(one_container(vec!["0000:c1:00.0".into()]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_inotify_the_poll_alone_catches_kubelet_restarts_and_health() {
    let host = TestHost::new(&fixture::seed_amd_2gpu());
    let mut kubelet = FakeKubelet::start(&host.device_plugins);
    let mut args = host.args();
    args.push("--no-inotify".into());
    let plugin = PluginProcess::spawn(&args, host.dir.path().join("plugin.log"));
    kubelet.next_registration().await;
    for round in 1..=3 {
        kubelet.restart().await;
        let (reg, mut watch, _) = kubelet.next_working_registration().await;
        assert_eq!((round, reg.resource_name.as_str()), (round, RESOURCE));
        assert_eq!(watch.next().await.devices.len(), 2);
    }
    let (_, mut watch, _) = {
        kubelet.restart().await;
        kubelet.next_working_registration().await
    };
    std::fs::remove_file(host.dev.join("dax1.0")).unwrap();
    let update = watch
        .until("c1 unhealthy", |u| u.devices.iter().any(|d| d.health == "Unhealthy"))
        .await;
    assert_eq!(
        health(&update),
        [
            ("0000:41:00.0".to_string(), "Healthy".to_string()),
            ("0000:c1:00.0".to_string(), "Unhealthy".to_string())
        ]
    );
    assert!(plugin.log_text().contains("inotify off (--no-inotify)"));
    assert!(plugin.log_text().contains("kubelet.sock replaced (poll)"));
}

/// The code and message of an Allocate of `ids` (one container) that must fail.
async fn refusal(client: &mut DevicePluginClient<Channel>, ids: Vec<String>) -> (tonic::Code, String) {
    let status = client.allocate(one_container(ids)).await.unwrap_err();
    (status.code(), status.message().to_string())
}

/// An Allocate request for one container holding `ids`, as the kubelet sends it.
fn one_container(ids: Vec<String>) -> AllocateRequest {
    AllocateRequest {
        container_requests: vec![ContainerAllocateRequest { devices_ids: ids }],
    }
}
