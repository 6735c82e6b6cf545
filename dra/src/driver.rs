//! The driver's loop: discover and measure the devices every poll interval, publish the healthy
//! ones as ResourceSlices when they change, serve the kubelet's gRPC services, and bind a
//! socket again when the kubelet removed it (a kubelet restart deletes the plugin sockets).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::dra::health_v1::dra_resource_health_server::DraResourceHealthServer;
use proto::dra::health_v1alpha1::dra_resource_health_server::DraResourceHealthServer as AlphaHealthServer;
use proto::dra::v1::dra_plugin_server::DraPluginServer;
use proto::pluginregistration::registration_server::RegistrationServer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use topology::{Inventory, PciAddress};

use crate::checkpoint::CheckpointError;
use crate::claims::ApiClaims;
use crate::config::Settings;
use crate::devices::{api_device, node_devices};
use crate::health::DeviceState;
use crate::prepare::{PrepareSettings, Preparer};
use crate::server::SocketServer;
use crate::service::{DraService, HealthService, HealthServiceV1alpha1, RegistrationService};
use crate::slices::SlicePublisher;

/// Every this many polls the stored slices are read again (30 s at the default 1 s poll).
pub const RESYNC_POLLS: u32 = 30;

/// Why the driver stopped before being asked to.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("cannot serve on {socket}: {source} (check --kubelet-root-dir and that the folder is writable)")]
    Bind { socket: String, source: std::io::Error },
}

impl hbm_shell::ExitStatus for DriverError {
    fn exit_code(&self) -> u8 {
        hbm_shell::exit::FAILURE
    }
}

/// Each GPU's PCIe root bus (`pci0000:c0`), read from where its sysfs link leads.
pub fn read_pcie_roots(sysfs_root: &Path, inventory: &Inventory) -> BTreeMap<PciAddress, String> {
    let devices = sysfs_root.join("sys/bus/pci/devices");
    inventory
        .gpus
        .iter()
        .filter_map(|gpu| {
            let target = std::fs::read_link(devices.join(gpu.address.to_string())).ok()?;
            let root = target
                .components()
                .filter_map(|part| part.as_os_str().to_str())
                .find(|part| part.starts_with("pci") && part.contains(':'))?;
            Some((gpu.address, root.to_string()))
        })
        .collect()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// Discovers and measures the node's devices once; `None` when discovery cannot run.
pub fn measure(settings: &Settings, previous: &DeviceState) -> Option<DeviceState> {
    let inventory = match topology::discover(&settings.sysfs_root, &settings.discovery) {
        Ok(inventory) => inventory,
        Err(error) => {
            tracing::warn!(%error, "discovery failed; keeping the last device list");
            return None;
        }
    };
    let roots = read_pcie_roots(&settings.sysfs_root, &inventory);
    let (devices, problems) = node_devices(&inventory, &settings.rules, &roots);
    for problem in problems {
        tracing::warn!(%problem, "resource rule problem");
    }
    Some(DeviceState::measure(&settings.health_roots(), devices, previous, now()))
}

/// What the kubelet last said about the registration: `None` before any word (or after a new
/// registration socket), `Some(Ok)` registered, `Some(Err)` refused with its reason.
type RegistrationStatus = Option<Result<(), String>>;

/// The running driver: its state channel and its two sockets.
struct Running {
    state: watch::Sender<DeviceState>,
    dra: SocketServer,
    registration: SocketServer,
    dra_routes: Routes,
    registration_routes: Routes,
    status: watch::Sender<RegistrationStatus>,
    /// Refusals in a row: the next registration attempt waits [`plugin::registration::Backoff`].
    backoff: plugin::registration::Backoff,
    retry_at: Option<tokio::time::Instant>,
}

fn routes(
    settings: &Settings,
    preparer: Arc<Preparer>,
    state: &watch::Sender<DeviceState>,
    status: &watch::Sender<RegistrationStatus>,
    stop: &CancellationToken,
) -> (Routes, Routes) {
    let health = HealthService {
        state: state.subscribe(),
        pool: settings.node_name.clone(),
        timeout: (settings.poll_interval * 5).max(Duration::from_secs(10)),
        stop: stop.clone(),
    };
    let dra = Routes::new(DraPluginServer::new(DraService { preparer }))
        .add_service(DraResourceHealthServer::new(health.clone()))
        .add_service(AlphaHealthServer::new(HealthServiceV1alpha1(health)));
    let registration = RegistrationService {
        driver: settings.driver_name.clone(),
        endpoint: settings.dra_socket().display().to_string(),
        status: status.clone(),
    };
    (dra, Routes::new(RegistrationServer::new(registration)))
}

fn bind_error(socket: &Path, source: std::io::Error) -> DriverError {
    DriverError::Bind {
        socket: socket.display().to_string(),
        source,
    }
}

fn bind(socket: &Path, routes: Routes, stop: &CancellationToken) -> Result<SocketServer, DriverError> {
    SocketServer::start(socket, routes, stop).map_err(|source| bind_error(socket, source))
}

async fn start(settings: &Settings, client: kube::Client, stop: &CancellationToken) -> Result<Running, DriverError> {
    let first = measure(settings, &DeviceState::default()).unwrap_or_default();
    let (state, receiver) = watch::channel(first);
    let prepare_settings = PrepareSettings {
        driver: settings.driver_name.clone(),
        pool: settings.node_name.clone(),
        plugin_dir: settings.plugin_dir(),
        cdi_root: settings.cdi_root.clone(),
        roots: settings.health_roots(),
    };
    let preparer = Arc::new(Preparer::new(
        prepare_settings,
        receiver,
        Arc::new(ApiClaims { client }),
    )?);
    let (status, _) = watch::channel(None);
    let (dra_routes, registration_routes) = routes(settings, preparer, &state, &status, stop);
    // The DRA socket first: the kubelet dials it as soon as it sees the registration socket.
    let dra = bind(&settings.dra_socket(), dra_routes.clone(), stop)?;
    let registration = bind(&settings.registration_socket(), registration_routes.clone(), stop)?;
    Ok(Running {
        state,
        dra,
        registration,
        dra_routes,
        registration_routes,
        status,
        backoff: plugin::registration::Backoff { failures: 0 },
        retry_at: None,
    })
}

impl Running {
    /// After the kubelet refused the registration, binds the registration socket again once the
    /// backoff has passed, so the plugin watcher asks again.
    fn registration_due(&mut self) -> bool {
        let refused = match &*self.status.borrow() {
            Some(Ok(())) => {
                self.backoff.failures = 0;
                false
            }
            Some(Err(_)) => true,
            None => false,
        };
        if !refused {
            return false;
        }
        let now = tokio::time::Instant::now();
        let retry_at = *self.retry_at.get_or_insert_with(|| now + self.backoff.next_delay());
        if now < retry_at {
            return false;
        }
        self.retry_at = None;
        self.status.send_replace(None);
        true
    }

    /// Binds again any socket the kubelet removed, and the registration socket after a refusal.
    async fn keep_sockets(&mut self, settings: &Settings, stop: &CancellationToken) -> Result<(), DriverError> {
        if !self.dra.socket_intact() {
            tracing::warn!(socket = %self.dra.socket.display(), "DRA socket removed; serving it again");
            self.dra
                .restart(self.dra_routes.clone(), stop)
                .await
                .map_err(|source| bind_error(&settings.dra_socket(), source))?;
        }
        let retry = self.registration_due();
        if retry || !self.registration.socket_intact() {
            tracing::warn!(socket = %self.registration.socket.display(), retry, "registration socket removed (kubelet restart?) or registration refused; registering again");
            self.registration
                .restart(self.registration_routes.clone(), stop)
                .await
                .map_err(|source| bind_error(&settings.registration_socket(), source))?;
        }
        Ok(())
    }

    /// Measures again (the health stream sends when devices or verdicts changed) and publishes
    /// the healthy devices (the publisher skips the API when they are unchanged, and retries a
    /// failed publication on the next call).
    async fn refresh(&self, settings: &Settings, publisher: &mut SlicePublisher) {
        let previous = self.state.borrow().clone();
        if let Some(next) = measure(settings, &previous) {
            self.state.send_if_modified(|current| {
                let changed = current.devices != next.devices || current.verdicts != next.verdicts;
                if changed {
                    *current = next;
                }
                changed
            });
        }
        let devices = self.state.borrow().healthy().map(api_device).collect();
        if let Err(error) = publisher.publish(devices).await {
            tracing::warn!(%error, "ResourceSlice publication failed; retrying next poll");
        }
    }
}

/// Runs until `stop` is cancelled; deletes the node's slices at the end when `settings.cleanup`.
pub async fn run(settings: Settings, client: kube::Client, stop: CancellationToken) -> Result<(), DriverError> {
    let mut publisher = SlicePublisher::new(client.clone(), &settings.driver_name, &settings.node_name);
    let mut running = start(&settings, client, &stop).await?;
    running.refresh(&settings, &mut publisher).await;
    let mut polls: u32 = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(settings.poll_interval) => {}
        }
        running.keep_sockets(&settings, &stop).await?;
        polls += 1;
        if polls.is_multiple_of(RESYNC_POLLS) {
            publisher.resync();
        }
        running.refresh(&settings, &mut publisher).await;
    }
    let Running { dra, registration, .. } = running;
    registration.stop().await;
    dra.stop().await;
    if settings.cleanup
        && let Err(error) = publisher.delete_all().await
    {
        tracing::error!(%error, "could not delete this node's ResourceSlices");
    }
    Ok(())
}
