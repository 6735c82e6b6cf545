//! The kubelet's side of the plugin-watcher registration, on the host side of the mounted socket
//! directory: find the plugin's socket, GetInfo, NotifyRegistrationStatus, then ListAndWatch and
//! Allocate on the endpoint it named.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::deviceplugin::v1beta1::device_plugin_client::DevicePluginClient;
use proto::deviceplugin::v1beta1::{AllocateRequest, ContainerAllocateRequest, ContainerAllocateResponse, Empty};
use proto::pluginregistration::registration_client::RegistrationClient;
use proto::pluginregistration::{InfoRequest, PluginInfo, RegistrationStatus};
use tonic::transport::Channel;

use super::guarded;
use super::podman::Container;

/// Where the kubelet keeps plugin-watcher sockets, inside the container.
const REGISTRY_IN_CONTAINER: &str = "/var/lib/kubelet/plugins_registry/";

/// The host side of the DaemonSet's hostPath volumes: a fixture host (two MI300X-like GPUs with
/// 64 GiB SPM HBM each, vfio-bound) with `/dev` stand-ins, and the kubelet's socket directories.
pub struct HostDirs {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub device_plugins: PathBuf,
    pub registry: PathBuf,
}

impl HostDirs {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let fixture = topology::fixture::seed_amd_2gpu();
        fixture.write_to(&root).unwrap();
        let dev = root.join("dev");
        std::fs::create_dir_all(dev.join("vfio")).unwrap();
        std::fs::write(dev.join("vfio/vfio"), "").unwrap();
        for function in fixture.pci_functions() {
            if let (Some("vfio-pci"), Some(group)) = (function.driver.as_deref(), function.iommu_group) {
                std::fs::write(dev.join(format!("vfio/{group}")), "").unwrap();
            }
        }
        for dax in fixture.dax_devices() {
            std::fs::write(dev.join(&dax.name), "").unwrap();
        }
        let device_plugins = dir.path().join("device-plugins");
        let registry = dir.path().join("plugins_registry");
        std::fs::create_dir_all(&device_plugins).unwrap();
        std::fs::create_dir_all(&registry).unwrap();
        Self {
            dir,
            root,
            device_plugins,
            registry,
        }
    }

    /// The test directory standing in for a hostPath of the DaemonSet.
    pub fn map_host_path(&self, host_path: &str) -> PathBuf {
        match host_path {
            "/var/lib/kubelet/device-plugins" => self.device_plugins.clone(),
            "/var/lib/kubelet/plugins_registry" => self.registry.clone(),
            "/sys" => self.root.join("sys"),
            "/dev" => self.root.join("dev"),
            other => panic!("the DaemonSet mounts hostPath {other}, which this test does not map"),
        }
    }

    /// Writes a ConfigMap's data as files into a directory named after the volume.
    pub fn write_config_map(&self, volume: &str, data: &BTreeMap<String, String>) -> PathBuf {
        let dir = self.dir.path().join(format!("configmap-{volume}"));
        std::fs::create_dir_all(&dir).unwrap();
        for (file, text) in data {
            std::fs::write(dir.join(file), text).unwrap();
        }
        dir
    }
}

/// A plugin the kubelet stand-in accepted.
pub struct Registered {
    pub info: PluginInfo,
    pub client: DevicePluginClient<Channel>,
}

async fn first_socket(dir: &Path) -> PathBuf {
    loop {
        let sockets: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sock"))
            .collect();
        if let Some(socket) = sockets.into_iter().next() {
            return socket;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn dial(path: &Path) -> Channel {
    loop {
        match plugin::registration::dial_unix(path).await {
            Ok(channel) => return channel,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Waits for the plugin's socket in the registry directory and registers it as the kubelet does.
pub async fn register_next_plugin(registry: &Path, container: &Container) -> Registered {
    let socket = guarded("the plugin's registration socket", container, first_socket(registry)).await;
    let channel = guarded("the registration socket to accept", container, dial(&socket)).await;
    let mut registration = RegistrationClient::new(channel);
    let info = registration.get_info(InfoRequest {}).await.unwrap().into_inner();
    registration
        .notify_registration_status(RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await
        .unwrap();
    let file = info
        .endpoint
        .strip_prefix(REGISTRY_IN_CONTAINER)
        .unwrap_or_else(|| panic!("endpoint {} is not in {REGISTRY_IN_CONTAINER}", info.endpoint));
    let endpoint = guarded("the plugin endpoint", container, dial(&registry.join(file))).await;
    Registered {
        info,
        client: DevicePluginClient::new(endpoint),
    }
}

/// (id, health) of the first ListAndWatch message, sorted by id.
pub async fn first_list(client: &mut DevicePluginClient<Channel>, container: &Container) -> Vec<(String, String)> {
    let mut stream = client.list_and_watch(Empty {}).await.unwrap().into_inner();
    let first = guarded("the first device list", container, stream.message())
        .await
        .unwrap()
        .expect("ListAndWatch ended before its first message");
    let mut devices: Vec<(String, String)> = first.devices.into_iter().map(|d| (d.id, d.health)).collect();
    devices.sort();
    devices
}

/// Allocate of one device for one container.
pub async fn allocate(
    client: &mut DevicePluginClient<Channel>,
    device: &str,
    container: &Container,
) -> ContainerAllocateResponse {
    let request = AllocateRequest {
        container_requests: vec![ContainerAllocateRequest {
            devices_ids: vec![device.to_string()],
        }],
    };
    let response = guarded("Allocate", container, client.allocate(request))
        .await
        .unwrap()
        .into_inner();
    response.container_responses.into_iter().next().unwrap()
}
