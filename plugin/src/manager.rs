//! The manager: derives resources from discovery + config, runs one gRPC server per resource,
//! keeps each registered with the kubelet, measures health, reloads the config, labels the Node.
//!
//! One loop, woken by inotify (device plugin dir, registry dir, `/dev/vfio`, `/dev`, the config's
//! directory), by registration retry deadlines, and by the health poll interval.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use proto::deviceplugin::v1beta1::KUBELET_SOCKET;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use topology::Inventory;
use tracing::{debug, error, info, warn};

use crate::config::{self, RegistrationMode, ResourceRule, Settings};
use crate::health::HealthRoots;
use crate::metrics::Metrics;
use crate::node_labels::{self, NodeLabeler};
use crate::registration::{self, Backoff, PluginWatcherService};
use crate::resources::{self, Resource, ResourceProblem};
use crate::server::{ResourceService, Snapshot, SocketServer};

/// Where the manager gets the host inventory from.
pub trait InventorySource: Send + Sync {
    /// Scans the host with the config file's `discovery` section.
    fn discover(&self, discovery: &topology::DiscoveryConfig) -> Result<Inventory, String>;
}

/// How long device-node events are coalesced before the refresh they trigger.
pub const REFRESH_DEBOUNCE: Duration = Duration::from_millis(20);

/// Why the manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("cannot create directory {path}: {source} (check --device-plugin-dir / --plugins-registry-dir)")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot set up inotify: {0}")]
    Inotify(std::io::Error),
    #[error(
        "{flag} {}: socket path {} is {length} bytes, over the {SOCKET_PATH_MAX}-byte limit of a unix socket path (choose a shorter directory)",
        dir.display(), path.display()
    )]
    SocketPathTooLong {
        flag: &'static str,
        dir: PathBuf,
        path: PathBuf,
        length: usize,
    },
}

/// Longest unix socket path in bytes (`sun_path` holds 108 with the terminating NUL).
pub const SOCKET_PATH_MAX: usize = 107;

/// `dir/name` when that path fits a unix socket address.
fn socket_path(flag: &'static str, dir: &Path, name: &str) -> Result<PathBuf, ManagerError> {
    let path = dir.join(name);
    let length = path.as_os_str().len();
    if length > SOCKET_PATH_MAX {
        return Err(ManagerError::SocketPathTooLong {
            flag,
            dir: dir.to_path_buf(),
            path,
            length,
        });
    }
    Ok(path)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WatchedDir {
    DevicePlugins,
    Registry,
    /// `<dev>/vfio`: every change matters.
    Vfio,
    /// `<dev>`: only `iommu` and `dax*` matter (a real /dev sees many unrelated events).
    Dev,
    Config,
}

struct Served {
    service: ResourceService,
    server: Option<SocketServer>,
    registered: bool,
    /// Identity of the `kubelet.sock` the last successful Register went to.
    registered_with: Option<Identity>,
    backoff: Backoff,
    next_attempt: Instant,
    watcher_status: Option<watch::Receiver<Option<Result<(), String>>>>,
}

impl Served {
    /// In plugin-watcher mode: registered is what the kubelet last reported.
    fn take_watcher_status(&mut self) {
        if let Some(rx) = &mut self.watcher_status {
            let status = rx.borrow_and_update().clone();
            self.registered = matches!(status, Some(Ok(())));
        }
    }

    /// Our socket was deleted (kubelet restart): never register an endpoint that is gone.
    fn drop_server_if_socket_gone(&mut self, name: &str) {
        if self.server.as_ref().is_some_and(|s| !s.socket_intact()) {
            info!(resource = %name, "own socket removed; serving again");
            self.registered = false;
            if let Some(server) = self.server.take() {
                tokio::spawn(server.stop());
            }
        }
    }

    /// Starts the server on `socket_dir/<socket name>`; on failure schedules a retry with
    /// backoff and returns false.
    fn serve(
        &mut self,
        name: &str,
        socket_dir: &Path,
        mode: RegistrationMode,
        metrics: &Arc<Metrics>,
        now: Instant,
    ) -> bool {
        let socket = socket_dir.join(resources::socket_name(name));
        let watcher = (mode == RegistrationMode::PluginWatcher).then(|| {
            let (tx, rx) = watch::channel(None);
            self.watcher_status = Some(rx);
            PluginWatcherService {
                resource: name.to_string(),
                endpoint: socket.to_string_lossy().into_owned(),
                status: tx,
                metrics: metrics.clone(),
            }
        });
        match SocketServer::start(&socket, self.service.clone(), watcher) {
            Ok(server) => {
                info!(resource = %name, socket = %socket.display(), "serving");
                self.server = Some(server);
                self.registered = false;
                true
            }
            Err(error) => {
                let delay = self.backoff.next_delay();
                error!(resource = %name, socket = %socket.display(), %error, retry_in = ?delay, "cannot serve");
                self.next_attempt = now + delay;
                false
            }
        }
    }

    /// Calls the kubelet's Register for this resource; a failure schedules a retry with backoff.
    async fn register(&mut self, name: &str, device_plugin_dir: &Path, metrics: &Metrics) {
        let endpoint = resources::socket_name(name);
        let kubelet = identity(&device_plugin_dir.join(KUBELET_SOCKET));
        match registration::register_with_kubelet(device_plugin_dir, &endpoint, name).await {
            Ok(()) if self.server.as_ref().is_some_and(|s| !s.socket_intact()) => {
                // The kubelet restarted while we registered and deleted our socket: the
                // kubelet cannot dial it, so serve and register once more right away.
                metrics.registration(name, true);
                info!(resource = %name, "socket removed during registration; registering again");
                self.next_attempt = Instant::now();
            }
            Ok(()) => {
                metrics.registration(name, true);
                info!(resource = %name, endpoint = %endpoint, "registered with the kubelet");
                self.registered = true;
                self.registered_with = kubelet;
                self.backoff = Backoff { failures: 0 };
            }
            Err(error) => {
                metrics.registration(name, false);
                let delay = self.backoff.next_delay();
                warn!(resource = %name, %error, attempt = self.backoff.failures, retry_in = ?delay, "registration failed");
                self.next_attempt = Instant::now() + delay;
            }
        }
    }

    /// A resource not served yet: the registration pass serves it right away.
    fn new(service: ResourceService) -> Self {
        Self {
            service,
            server: None,
            registered: false,
            registered_with: None,
            backoff: Backoff { failures: 0 },
            next_attempt: Instant::now(),
            watcher_status: None,
        }
    }
}

/// The running plugin.
pub struct Manager {
    settings: Settings,
    mode: RegistrationMode,
    rules: Vec<ResourceRule>,
    label_domain: String,
    discovery: topology::DiscoveryConfig,
    config_text: Option<String>,
    source: Arc<dyn InventorySource>,
    metrics: Arc<Metrics>,
    roots: HealthRoots,
    served: BTreeMap<String, Served>,
    labeler: Option<NodeLabeler>,
    problems: Vec<ResourceProblem>,
    /// Per region, whether KubeVirt can use it, as last logged.
    kubevirt_use: Vec<resources::KubevirtUse>,
    /// The last discovery error, logged once per distinct message.
    discovery_error: Option<String>,
    inventory: Option<Inventory>,
    /// Identity of the `kubelet.sock` last seen; a different one means the kubelet restarted.
    kubelet_seen: Option<Identity>,
    /// When `kubelet.sock` is still absent at this instant, warn (once).
    kubelet_warn_at: Option<Instant>,
    /// An error that ends [`Manager::run`] (a new resource whose socket path cannot be bound).
    fatal: Option<ManagerError>,
    stop: CancellationToken,
}

/// Identity of a file: (device, inode, ctime). A recreated socket can reuse the inode number,
/// never also the ctime.
type Identity = (u64, u64, i64, i64);

fn identity(path: &Path) -> Option<Identity> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

impl Manager {
    pub fn new(
        settings: Settings,
        source: Arc<dyn InventorySource>,
        metrics: Arc<Metrics>,
        labeler: Option<NodeLabeler>,
        stop: CancellationToken,
    ) -> Self {
        let mode = match settings.registration {
            RegistrationMode::Auto if settings.plugins_registry_dir.is_dir() => RegistrationMode::PluginWatcher,
            RegistrationMode::Auto => RegistrationMode::KubeletSocket,
            other => other,
        };
        let config_text = settings
            .config_path
            .as_ref()
            .and_then(|p| config::read_config_text(p).ok());
        Self {
            roots: HealthRoots {
                sysfs_root: settings.sysfs_root.clone(),
                dev_root: settings.dev_root.clone(),
                host_dev_root: settings.host_dev_root.clone(),
            },
            rules: settings.rules.clone(),
            label_domain: settings.label_domain.clone(),
            discovery: settings.discovery.clone(),
            config_text,
            mode,
            settings,
            source,
            metrics,
            served: BTreeMap::new(),
            labeler,
            problems: Vec::new(),
            kubevirt_use: Vec::new(),
            discovery_error: None,
            inventory: None,
            kubelet_seen: None,
            kubelet_warn_at: None,
            fatal: None,
            stop,
        }
    }

    /// The registration mode in effect (`auto` resolved).
    pub fn mode(&self) -> RegistrationMode {
        self.mode
    }

    /// The flag naming [`Self::socket_dir`].
    fn socket_dir_flag(&self) -> &'static str {
        match self.mode {
            RegistrationMode::PluginWatcher => "--plugins-registry-dir",
            _ => "--device-plugin-dir",
        }
    }

    fn socket_dir(&self) -> &Path {
        match self.mode {
            RegistrationMode::PluginWatcher => &self.settings.plugins_registry_dir,
            _ => &self.settings.device_plugin_dir,
        }
    }

    fn setup_inotify(&self) -> Result<(Inotify, HashMap<WatchDescriptor, WatchedDir>), ManagerError> {
        let inotify = Inotify::init().map_err(ManagerError::Inotify)?;
        let mut kinds = HashMap::new();
        if !self.settings.inotify {
            info!("inotify off (--no-inotify): every change waits for the poll");
            return Ok((inotify, kinds));
        }
        let dir_mask = WatchMask::CREATE | WatchMask::DELETE | WatchMask::MOVED_TO | WatchMask::MOVED_FROM;
        let mut watches: Vec<(PathBuf, WatchedDir, WatchMask)> = vec![
            (
                self.settings.device_plugin_dir.clone(),
                WatchedDir::DevicePlugins,
                dir_mask,
            ),
            (self.settings.dev_root.join("vfio"), WatchedDir::Vfio, dir_mask),
            (self.settings.dev_root.clone(), WatchedDir::Dev, dir_mask),
        ];
        if self.mode == RegistrationMode::PluginWatcher {
            watches.push((
                self.settings.plugins_registry_dir.clone(),
                WatchedDir::Registry,
                dir_mask,
            ));
        }
        if let Some(dir) = self.settings.config_path.as_ref().and_then(|p| p.parent()) {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            watches.push((
                dir.to_path_buf(),
                WatchedDir::Config,
                dir_mask | WatchMask::CLOSE_WRITE | WatchMask::MODIFY,
            ));
        }
        for (path, kind, mask) in watches {
            match inotify.watches().add(&path, mask) {
                Ok(wd) => {
                    kinds.insert(wd, kind);
                }
                // Missing directories are covered by the poll.
                Err(error) => debug!(path = %path.display(), %error, "not watching with inotify"),
            }
        }
        Ok((inotify, kinds))
    }

    /// Runs until `stop` is cancelled, then stops every server and removes its socket.
    pub async fn run(mut self) -> Result<(), ManagerError> {
        self.prepare_socket_dir()?;
        info!(mode = ?self.mode, socket_dir = %self.socket_dir().display(), "hbm-device-plugin starting");
        let (inotify, kinds) = self.setup_inotify()?;
        let mut events = inotify.into_event_stream([0u8; 4096]).map_err(ManagerError::Inotify)?;
        self.kubelet_seen = identity(&self.settings.device_plugin_dir.join(KUBELET_SOCKET));
        if self.mode == RegistrationMode::KubeletSocket && self.kubelet_seen.is_none() {
            self.kubelet_warn_at = Some(Instant::now() + self.settings.kubelet_wait_warning);
        }
        self.refresh().await;
        let mut next_poll = Instant::now() + self.settings.poll_interval;
        let mut inotify_alive = true;
        // Device-node events are coalesced briefly so a burst causes one refresh.
        let mut pending_refresh: Option<Instant> = None;
        loop {
            if let Some(error) = self.fatal.take() {
                self.shutdown().await;
                return Err(error);
            }
            self.metrics.tick();
            self.registration_pass().await;
            let deadline = self.next_deadline(next_poll, pending_refresh);
            enum Wake {
                Stop,
                Event(Option<Result<inotify::Event<OsString>, std::io::Error>>),
                Other,
            }
            let receivers: Vec<_> = self.served.values().filter_map(|s| s.watcher_status.clone()).collect();
            let wake = tokio::select! {
                () = self.stop.cancelled() => Wake::Stop,
                event = async {
                    if inotify_alive { events.next().await } else { std::future::pending().await }
                } => Wake::Event(event),
                () = any_status_change(receivers) => Wake::Other,
                () = tokio::time::sleep_until(deadline) => Wake::Other,
            };
            match wake {
                Wake::Stop => break,
                Wake::Event(Some(Ok(event))) => {
                    let kind = kinds.get(&event.wd).copied();
                    if self.on_event(kind, event.mask, event.name).await {
                        pending_refresh.get_or_insert_with(|| Instant::now() + REFRESH_DEBOUNCE);
                    }
                }
                Wake::Event(Some(Err(error))) => warn!(%error, "inotify read failed; relying on the poll"),
                Wake::Event(None) => {
                    warn!("inotify stream ended; relying on the poll");
                    inotify_alive = false;
                }
                Wake::Other => {}
            }
            let now = Instant::now();
            self.warn_if_no_kubelet(now);
            let poll_due = now >= next_poll;
            if poll_due {
                self.poll_sockets();
                self.check_config().await;
                next_poll = now + self.settings.poll_interval;
            }
            if poll_due || pending_refresh.is_some_and(|at| now >= at) {
                pending_refresh = None;
                self.refresh().await;
            }
        }
        self.shutdown().await;
        Ok(())
    }

    /// Checks that `kubelet.sock` fits a socket address (kubelet-socket mode) and creates the
    /// socket directory when missing.
    fn prepare_socket_dir(&self) -> Result<(), ManagerError> {
        if self.mode == RegistrationMode::KubeletSocket {
            socket_path("--device-plugin-dir", &self.settings.device_plugin_dir, KUBELET_SOCKET)?;
        }
        let dir = self.socket_dir();
        if dir.is_dir() {
            return Ok(());
        }
        std::fs::create_dir_all(dir).map_err(|source| ManagerError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        info!(dir = %dir.display(), "socket directory did not exist; created it");
        Ok(())
    }

    /// When the loop must wake at the latest: the next poll, a due refresh, a registration
    /// retry, the kubelet wait warning.
    fn next_deadline(&self, next_poll: Instant, pending_refresh: Option<Instant>) -> Instant {
        self.served
            .values()
            .filter(|s| !s.registered && self.mode == RegistrationMode::KubeletSocket)
            .map(|s| s.next_attempt)
            .chain([next_poll])
            .chain(pending_refresh)
            .chain(self.kubelet_warn_at)
            .min()
            .unwrap_or(next_poll)
    }

    /// Warns once when `kubelet.sock` has not appeared within the configured wait; keeps waiting.
    fn warn_if_no_kubelet(&mut self, now: Instant) {
        if self.kubelet_warn_at.is_none_or(|at| now < at) {
            return;
        }
        self.kubelet_warn_at = None;
        let dir = &self.settings.device_plugin_dir;
        if identity(&dir.join(KUBELET_SOCKET)).is_some() {
            return;
        }
        warn!(
            dir = %dir.display(),
            waited = ?self.settings.kubelet_wait_warning,
            "no kubelet.sock in the device plugin directory yet; check that --device-plugin-dir is the kubelet's device-plugins directory (kubeletRootDir in the chart); still waiting"
        );
    }

    /// Handles one inotify event; returns whether a refresh is due.
    async fn on_event(&mut self, kind: Option<WatchedDir>, mask: EventMask, name: Option<OsString>) -> bool {
        let name = name.map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        debug!(?kind, ?mask, %name, "inotify event");
        match kind {
            Some(WatchedDir::DevicePlugins) => {
                let created = mask.intersects(EventMask::CREATE | EventMask::MOVED_TO);
                if name == KUBELET_SOCKET && created {
                    self.check_kubelet("kubelet.sock created");
                    // A fresh kubelet socket: whatever failed before may succeed now.
                    let now = Instant::now();
                    for served in self.served.values_mut().filter(|s| !s.registered) {
                        served.backoff = Backoff { failures: 0 };
                        served.next_attempt = now;
                    }
                }
                self.poll_sockets();
                false
            }
            Some(WatchedDir::Registry) => {
                self.poll_sockets();
                false
            }
            Some(WatchedDir::Config) => {
                self.check_config().await;
                false
            }
            Some(WatchedDir::Vfio) => true,
            Some(WatchedDir::Dev) => name == "iommu" || name == "vfio" || name.starts_with("dax"),
            None => false,
        }
    }

    /// Notices a new `kubelet.sock` (first sight or a restart) and schedules registration now.
    fn check_kubelet(&mut self, why: &str) {
        if self.mode != RegistrationMode::KubeletSocket {
            return;
        }
        let current = identity(&self.settings.device_plugin_dir.join(KUBELET_SOCKET));
        if current.is_none() || current == self.kubelet_seen {
            return;
        }
        if self.kubelet_seen.is_some() {
            self.metrics.kubelet_restarts.inc();
            info!(why, "kubelet restart noticed; registering again");
            self.metrics.set_ready(false);
        } else {
            info!(why, "kubelet socket present; registering");
        }
        self.kubelet_seen = current;
        let now = Instant::now();
        for served in self.served.values_mut().filter(|s| s.registered_with != current) {
            served.registered = false;
            served.backoff = Backoff { failures: 0 };
            served.next_attempt = now;
        }
    }

    /// The fallback for missed events: own sockets gone, or kubelet.sock replaced.
    fn poll_sockets(&mut self) {
        self.check_kubelet("kubelet.sock replaced (poll)");
        let now = Instant::now();
        for (name, served) in &mut self.served {
            if served.server.as_ref().is_some_and(|s| !s.socket_intact()) {
                info!(resource = %name, "own socket removed; serving again");
                served.registered = false;
                served.backoff = Backoff { failures: 0 };
                served.next_attempt = now;
                // The server on the unlinked socket is replaced in the registration pass.
                if let Some(server) = served.server.take() {
                    tokio::spawn(server.stop());
                }
            }
        }
    }

    async fn check_config(&mut self) {
        let Some(path) = self.settings.config_path.clone() else {
            return;
        };
        let text = match config::read_config_text(&path) {
            Ok(text) => text,
            Err(error) => {
                // During a ConfigMap symlink swap the file can be briefly absent; the next event or
                // poll reads it again.
                debug!(path = %path.display(), %error, "config file not readable right now");
                return;
            }
        };
        if self.config_text.as_deref() == Some(text.as_str()) {
            return;
        }
        self.config_text = Some(text.clone());
        match config::parse_file(&path, &text) {
            Ok(loaded) => {
                self.metrics.config_reload(true);
                let domain = loaded
                    .file
                    .label_domain
                    .clone()
                    .unwrap_or_else(|| config::DEFAULT_LABEL_DOMAIN.to_string());
                info!(path = %path.display(), rules = loaded.rules.len(), "config reloaded");
                self.rules = loaded.rules;
                self.label_domain = domain;
                self.discovery = loaded.file.discovery;
                self.refresh().await;
            }
            Err(error) => {
                self.metrics.config_reload(false);
                error!(%error, "new config rejected; keeping the running one");
            }
        }
    }

    /// Re-discovers, re-derives, re-measures; starts/stops servers and publishes changes.
    pub async fn refresh(&mut self) {
        let inventory = self.discover_inventory();
        let derived = resources::derive(&inventory, &self.rules);
        self.note_problems(&derived.problems);
        self.note_kubevirt_use(&derived.resources);
        self.sync_servers(&derived.resources).await;
        self.publish_snapshots(&derived.resources);
        self.update_ready();
        self.sync_labels(&derived.resources, &inventory).await;
        self.inventory = Some(inventory);
    }

    /// A fresh inventory, or (discovery failing) the previous one; the error is logged once per
    /// distinct message.
    fn discover_inventory(&mut self) -> Inventory {
        match self.source.discover(&self.discovery) {
            Ok(inventory) => {
                if self.discovery_error.take().is_some() {
                    info!("discovery works again");
                }
                inventory
            }
            Err(error) => {
                if self.discovery_error.as_deref() != Some(error.as_str()) {
                    error!(%error, "discovery failed; keeping the previous inventory, its devices unhealthy");
                    self.discovery_error = Some(error);
                }
                match &self.inventory {
                    Some(previous) => previous.clone(),
                    None => Inventory::empty(self.settings.sysfs_root.to_string_lossy()),
                }
            }
        }
    }

    /// Logs the resource problems when they changed and updates their gauge.
    fn note_problems(&mut self, problems: &[ResourceProblem]) {
        if problems == self.problems.as_slice() {
            return;
        }
        for problem in problems {
            warn!(%problem, "resource problem");
        }
        self.problems = problems.to_vec();
        self.metrics.resource_problems.set(self.problems.len() as i64);
    }

    /// Logs, for each region that is new or changed since the last refresh, whether KubeVirt's
    /// virt-launcher can use it (and the host-side fix when not).
    fn note_kubevirt_use(&mut self, resources: &BTreeMap<String, Resource>) {
        let current = resources::kubevirt_use(resources);
        for entry in current.iter().filter(|entry| !self.kubevirt_use.contains(entry)) {
            info!(
                resource = %entry.resource,
                region = %entry.region,
                kubevirt_usable = entry.usable(),
                fix = entry.fix.as_deref().unwrap_or(""),
                "{entry}"
            );
        }
        self.kubevirt_use = current;
    }

    /// Stops the servers of resources that are gone and adds (unserved) entries for new ones.
    async fn sync_servers(&mut self, wanted: &BTreeMap<String, Resource>) {
        let current: BTreeMap<String, Resource> = self
            .served
            .iter()
            .map(|(name, served)| {
                let devices = served.service.state.borrow().devices.clone();
                (
                    name.clone(),
                    Resource {
                        name: name.clone(),
                        devices,
                    },
                )
            })
            .collect();
        let diff = resources::diff(&current, wanted);
        for name in &diff.removed {
            if let Some(served) = self.served.remove(name) {
                info!(resource = %name, "resource gone; stopping its server");
                served.service.stop.cancel();
                if let Some(server) = served.server {
                    server.stop().await;
                }
                self.metrics.remove_resource(name);
            }
        }
        for name in &diff.added {
            let socket = resources::socket_name(name);
            if let Err(error) = socket_path(self.socket_dir_flag(), self.socket_dir(), &socket) {
                self.fatal.get_or_insert(error);
                continue;
            }
            info!(resource = %name, "new resource");
            let service = ResourceService {
                name: name.clone(),
                state: watch::Sender::new(Snapshot::default()),
                roots: self.roots.clone(),
                metrics: self.metrics.clone(),
                stop: self.stop.child_token(),
            };
            self.served.insert(name.clone(), Served::new(service));
        }
    }

    /// Measures every device of every served resource and publishes the snapshots that changed
    /// (ListAndWatch streams wake on them).
    fn publish_snapshots(&self, wanted: &BTreeMap<String, Resource>) {
        for (name, resource) in wanted {
            let Some(served) = self.served.get(name) else { continue };
            let changed = served
                .service
                .state
                .send_if_modified(|snapshot| self.replace_snapshot(name, resource, snapshot));
            if changed {
                let (healthy, unhealthy) = served.service.state.borrow().counts();
                self.metrics.set_devices(name, healthy, unhealthy);
            }
        }
    }

    /// Replaces `snapshot` with a fresh measurement of `resource` (region size baselines kept
    /// from the first sight); logs each health change. Returns whether anything changed.
    fn replace_snapshot(&self, name: &str, resource: &Resource, snapshot: &mut Snapshot) -> bool {
        let mut next = Snapshot {
            devices: resource.devices.clone(),
            ..Snapshot::default()
        };
        for region in resource.devices.values().flat_map(|device| &device.regions) {
            let first = snapshot.baseline.get(&region.id).copied().unwrap_or(region.size_bytes);
            next.baseline.insert(region.id.clone(), first);
        }
        for device in resource.devices.values() {
            // While discovery fails, the devices of the last inventory stay listed (a transient
            // failure must not unregister the resource) but cannot be vouched for.
            let verdict = match &self.discovery_error {
                Some(error) => Some(format!("discovery failed: {error}")),
                None => self.roots.measure(device, &next.baseline),
            };
            next.verdicts.insert(device.id.clone(), verdict);
        }
        if next == *snapshot {
            return false;
        }
        for (id, verdict) in &next.verdicts {
            crate::health::log_health_change(name, id, snapshot.verdicts.get(id), verdict);
        }
        *snapshot = next;
        true
    }

    /// Applies the Node labels derived from `resources` (when a labeler is configured).
    async fn sync_labels(&mut self, resources: &BTreeMap<String, Resource>, inventory: &Inventory) {
        let Some(labeler) = self.labeler.as_mut() else {
            return;
        };
        let node = labeler.node().to_string();
        let (body, skipped) = node_labels::desired(&node, &self.label_domain, resources, inventory);
        for label in skipped {
            warn!(%label, "label name over 63 characters; left out");
        }
        if let Err(error) = labeler.sync(body).await {
            error!(%error, "Node labels not applied; retrying on the next poll");
        }
    }

    fn update_ready(&self) {
        self.metrics.set_ready(self.served.values().all(|s| s.registered));
    }

    /// Serves what is not served and registers what is not registered (when due).
    async fn registration_pass(&mut self) {
        let now = Instant::now();
        let mode = self.mode;
        let socket_dir = self.socket_dir().to_path_buf();
        let device_plugin_dir = self.settings.device_plugin_dir.clone();
        for (name, served) in &mut self.served {
            served.take_watcher_status();
            served.drop_server_if_socket_gone(name);
            if served.server.is_none()
                && served.next_attempt <= now
                && !served.serve(name, &socket_dir, mode, &self.metrics, now)
            {
                continue;
            }
            if mode != RegistrationMode::KubeletSocket || served.registered || served.next_attempt > now {
                continue;
            }
            served.register(name, &device_plugin_dir, &self.metrics).await;
        }
        self.update_ready();
    }

    async fn shutdown(&mut self) {
        info!("stopping: closing servers and removing sockets");
        for (_, served) in std::mem::take(&mut self.served) {
            served.service.stop.cancel();
            if let Some(server) = served.server {
                server.stop().await;
            }
        }
    }
}

async fn any_status_change(mut receivers: Vec<watch::Receiver<Option<Result<(), String>>>>) {
    if receivers.is_empty() {
        return std::future::pending().await;
    }
    let changes = receivers.iter_mut().map(|r| Box::pin(r.changed()));
    if futures_util::future::select_all(changes).await.0.is_err() {
        // A sender is gone (server replaced); the loop rebuilds the list next pass.
        std::future::pending::<()>().await;
    }
}

/// How long `/healthz` tolerates a silent manager loop for `poll`.
pub fn liveness_window(poll: Duration) -> Duration {
    poll * 3 + Duration::from_secs(10)
}
