//! The per-resource DevicePlugin gRPC service and the unix-socket server around it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{Stream, StreamExt};
use proto::deviceplugin::v1beta1::device_plugin_server::{DevicePlugin, DevicePluginServer};
use proto::deviceplugin::v1beta1::{
    AllocateRequest, AllocateResponse, ContainerPreferredAllocationResponse, Device, DevicePluginOptions, Empty,
    HEALTHY, ListAndWatchResponse, NumaNode, PreStartContainerRequest, PreStartContainerResponse,
    PreferredAllocationRequest, PreferredAllocationResponse, TopologyInfo, UNHEALTHY,
};
use proto::pluginregistration::registration_server::RegistrationServer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use topology::sysfs::cut;
use tracing::{info, warn};

use crate::allocate::{self, AllocateError};
use crate::health::{HealthRoots, Verdict};
use crate::metrics::Metrics;
use crate::registration::PluginWatcherService;
use crate::resources::DeviceInfo;

/// What a resource serves right now: its devices, each one's measured health, and the region
/// sizes first seen (for the "size unchanged" check).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub devices: BTreeMap<String, DeviceInfo>,
    pub verdicts: BTreeMap<String, Verdict>,
    pub baseline: BTreeMap<String, u64>,
}

impl Snapshot {
    /// The ListAndWatch message for this snapshot.
    pub fn list(&self) -> ListAndWatchResponse {
        let devices = self
            .devices
            .values()
            .map(|d| Device {
                id: d.id.clone(),
                health: if self.verdicts.get(&d.id).is_some_and(Option::is_none) {
                    HEALTHY
                } else {
                    UNHEALTHY
                }
                .to_string(),
                topology: d.cpu_node.map(|n| TopologyInfo {
                    nodes: vec![NumaNode { id: i64::from(n) }],
                }),
            })
            .collect();
        ListAndWatchResponse { devices }
    }

    /// (healthy, unhealthy) counts.
    pub fn counts(&self) -> (usize, usize) {
        let healthy = self
            .devices
            .keys()
            .filter(|id| self.verdicts.get(*id).is_some_and(Option::is_none))
            .count();
        (healthy, self.devices.len() - healthy)
    }
}

/// The DevicePlugin service of one resource.
#[derive(Clone, Debug)]
pub struct ResourceService {
    pub name: String,
    pub state: watch::Sender<Snapshot>,
    pub roots: HealthRoots,
    pub metrics: Arc<Metrics>,
    pub stop: CancellationToken,
}

type ListStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send + 'static>>;

impl ResourceService {
    fn allocate_inner(&self, request: &AllocateRequest) -> Result<AllocateResponse, AllocateError> {
        let mut responses = Vec::with_capacity(request.container_requests.len());
        for container in &request.container_requests {
            if container.devices_ids.is_empty() {
                return Err(AllocateError::Empty {
                    resource: self.name.clone(),
                });
            }
            // Copy out only what this container needs; the lock is held for the lookups alone.
            let (devices, baseline) = {
                let snapshot = self.state.borrow();
                let mut devices = Vec::with_capacity(container.devices_ids.len());
                let mut baseline = BTreeMap::new();
                let mut seen = BTreeSet::new();
                for id in &container.devices_ids {
                    if !seen.insert(id) {
                        return Err(AllocateError::DuplicateDevice {
                            resource: self.name.clone(),
                            id: cut(id),
                        });
                    }
                    let device = snapshot.devices.get(id).ok_or_else(|| AllocateError::UnknownDevice {
                        resource: self.name.clone(),
                        id: cut(id),
                    })?;
                    for region in &device.regions {
                        if let Some(&size) = snapshot.baseline.get(&region.id) {
                            baseline.insert(region.id.clone(), size);
                        }
                    }
                    devices.push(device.clone());
                }
                (devices, baseline)
            };
            for device in &devices {
                if let Some(reason) = self.roots.measure(device, &baseline) {
                    self.mark_unhealthy(&device.id, &reason);
                    return Err(AllocateError::Unhealthy {
                        resource: self.name.clone(),
                        id: device.id.clone(),
                        reason,
                    });
                }
            }
            let refs: Vec<&DeviceInfo> = devices.iter().collect();
            responses.push(allocate::container_response(&self.name, &refs, &self.roots));
        }
        Ok(AllocateResponse {
            container_responses: responses,
        })
    }

    /// Records a failed measurement so ListAndWatch tells the kubelet at once.
    /// The change is logged with its reason, as every health change is.
    fn mark_unhealthy(&self, id: &str, reason: &str) {
        let verdict = Some(reason.to_string());
        let changed = self.state.send_if_modified(|snapshot| {
            let before = snapshot.verdicts.insert(id.to_string(), verdict.clone());
            crate::health::log_health_change(&self.name, id, before.as_ref(), &verdict);
            before.as_ref() != Some(&verdict)
        });
        if changed {
            let (healthy, unhealthy) = self.state.borrow().counts();
            self.metrics.set_devices(&self.name, healthy, unhealthy);
        }
    }
}

#[tonic::async_trait]
impl DevicePlugin for ResourceService {
    async fn get_device_plugin_options(&self, _: Request<Empty>) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: true,
        }))
    }

    type ListAndWatchStream = ListStream;

    async fn list_and_watch(&self, _: Request<Empty>) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let resource = self.name.clone();
        info!(resource = %resource, "kubelet opened ListAndWatch");
        let stream = tokio_stream::wrappers::WatchStream::new(self.state.subscribe())
            .map(|snapshot| Ok(snapshot.list()))
            .take_until(self.stop.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let snapshot = self.state.borrow().clone();
        let request = request.into_inner();
        let mut container_responses = Vec::with_capacity(request.container_requests.len());
        for c in &request.container_requests {
            let size = usize::try_from(c.allocation_size).map_err(|_| {
                Status::invalid_argument(format!(
                    "resource {}: allocation_size {} is negative",
                    self.name, c.allocation_size
                ))
            })?;
            let device_i_ds = allocate::preferred(
                &snapshot.devices,
                &c.available_device_i_ds,
                &c.must_include_device_i_ds,
                size,
            );
            container_responses.push(ContainerPreferredAllocationResponse { device_i_ds });
        }
        Ok(Response::new(PreferredAllocationResponse { container_responses }))
    }

    async fn allocate(&self, request: Request<AllocateRequest>) -> Result<Response<AllocateResponse>, Status> {
        let started = Instant::now();
        let result = self.allocate_inner(request.get_ref());
        self.metrics.allocate(&self.name, result.is_ok(), started.elapsed());
        match result {
            Ok(response) => {
                let ids: Vec<&String> = request
                    .get_ref()
                    .container_requests
                    .iter()
                    .flat_map(|c| &c.devices_ids)
                    .collect();
                info!(resource = %self.name, devices = ?ids, "allocated");
                Ok(Response::new(response))
            }
            Err(error) => {
                warn!(resource = %self.name, %error, "allocate refused");
                Err(match error {
                    AllocateError::Unhealthy { .. } => Status::failed_precondition(error.to_string()),
                    AllocateError::UnknownDevice { .. }
                    | AllocateError::DuplicateDevice { .. }
                    | AllocateError::Empty { .. } => Status::invalid_argument(error.to_string()),
                })
            }
        }
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

/// A running gRPC server on a unix socket.
#[derive(Debug)]
pub struct SocketServer {
    pub socket: PathBuf,
    /// Inode of the socket file this server created (to tell a replaced file from ours).
    pub inode: u64,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| m.ino())
}

impl SocketServer {
    /// Removes a stale file at `socket`, binds it and serves `service` (plus the plugin-watcher
    /// Registration service when given) until [`SocketServer::stop`].
    pub fn start(
        socket: &Path,
        service: ResourceService,
        watcher: Option<PluginWatcherService>,
    ) -> std::io::Result<Self> {
        match std::fs::remove_file(socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = tokio::net::UnixListener::bind(socket)?;
        let inode = inode(socket).unwrap_or_default();
        let stop = service.stop.child_token();
        let server_stop = stop.clone();
        let mut service = service;
        // ListAndWatch streams end with this server, so graceful shutdown never waits on them.
        service.stop = stop.clone();
        let resource = service.name.clone();
        let router = tonic::transport::Server::builder()
            .add_service(DevicePluginServer::new(service))
            .add_optional_service(watcher.map(RegistrationServer::new));
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            if let Err(error) = router
                .serve_with_incoming_shutdown(incoming, server_stop.cancelled_owned())
                .await
            {
                tracing::error!(resource = %resource, %error, "gRPC server failed");
            }
        });
        Ok(Self {
            socket: socket.to_path_buf(),
            inode,
            stop,
            task,
        })
    }

    /// Whether our socket file is still in place (the kubelet deletes it on restart).
    pub fn socket_intact(&self) -> bool {
        inode(&self.socket) == Some(self.inode)
    }

    /// Stops serving and removes the socket file if it is still ours.
    pub async fn stop(self) {
        self.stop.cancel();
        let intact = self.socket_intact();
        let Self { socket, mut task, .. } = self;
        if tokio::time::timeout(std::time::Duration::from_secs(2), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
        if intact {
            let _ = std::fs::remove_file(&socket);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::resources::RegionInfo;
    use topology::PciAddress;

    fn device(addr: &str, cpu_node: Option<u32>) -> DeviceInfo {
        DeviceInfo {
            id: addr.into(),
            gpu: PciAddress::parse(addr).unwrap(),
            vendor: "1002".into(),
            device: "74a1".into(),
            driver: Some("vfio-pci".into()),
            iommu_group: Some(1),
            cpu_node,
            peer_group: None,
            regions: vec![RegionInfo {
                id: format!("{addr}/node5"),
                host_node: Some(5),
                size_bytes: 1,
                dax: None,
                online: true,
            }],
        }
    }

    #[test]
    fn list_leaves_topology_out_when_the_cpu_node_is_unknown_and_reports_health() {
        let mut snapshot = Snapshot::default();
        for d in [
            device("0000:01:00.0", Some(1)),
            device("0000:02:00.0", None),
            device("0000:03:00.0", Some(0)),
        ] {
            snapshot.devices.insert(d.id.clone(), d);
        }
        snapshot.verdicts.insert("0000:01:00.0".into(), None);
        snapshot.verdicts.insert("0000:02:00.0".into(), None);
        snapshot.verdicts.insert("0000:03:00.0".into(), Some("gone".into()));
        let list = snapshot.list();
        let got: Vec<(&str, &str, Option<Vec<i64>>)> = list
            .devices
            .iter()
            .map(|d| {
                (
                    d.id.as_str(),
                    d.health.as_str(),
                    d.topology.as_ref().map(|t| t.nodes.iter().map(|n| n.id).collect()),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("0000:01:00.0", "Healthy", Some(vec![1])),
                ("0000:02:00.0", "Healthy", None),
                ("0000:03:00.0", "Unhealthy", Some(vec![0])),
            ]
        );
        assert_eq!(snapshot.counts(), (2, 1));
    }
}
