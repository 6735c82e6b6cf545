//! KubeVirt hook sidecar: serves `kubevirt.hooks.info.Info` and the `Callbacks` of
//! `kubevirt.hooks.v1alpha1`, `v1alpha2` and `v1alpha3` on a unix socket in virt-launcher's hook
//! directory (`/var/run/kubevirt-hooks/<name>.sock`). A thin shell: OnDefineDomain hands its bytes
//! to [`super::policy::define_domain`] and maps the result to gRPC.
//!
//! - Info: the name, hook point `OnDefineDomain` with the configured priority, versions
//!   `v1alpha1`, `v1alpha2`, `v1alpha3`.
//! - OnDefineDomain: the rewritten XML; for `required` a gRPC error whose message says what is
//!   missing (`FAILED_PRECONDITION`, or `INVALID_ARGUMENT` for bad VMI/annotations/XML); for
//!   `auto` failures the XML unchanged and a warning in the log.
//! - PreCloudInitIso: its input back unchanged. Shutdown: stops the server; the socket file is
//!   removed on the way out.
//!
//! The same core also serves KubeVirt's sidecar-shim convention (`onDefineDomain --vmi JSON
//! --domain XML`, new XML on stdout; `preCloudInitIso --vmi JSON --cloud-init JSON`).

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proto::kubevirt::hooks::{info, v1alpha1, v1alpha2, v1alpha3};
use tokio::net::UnixListener;
use tokio::sync::Notify;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};
use topology::Inventory;

use super::policy::{DefineOutcome, KubevirtError, define_domain};
use hbm_rewrite::RewriteOptions;

/// virt-launcher's hook socket directory.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/kubevirt-hooks";
/// Default sidecar name (also the socket file's stem).
pub const DEFAULT_NAME: &str = "hbm-passthrough";
/// Versions served, oldest first.
pub const VERSIONS: [&str; 3] = [v1alpha1::VERSION, v1alpha2::VERSION, v1alpha3::VERSION];

/// Produces the node's inventory for one OnDefineDomain call (discovery on the node's sysfs, or a
/// fixed `--topology` file read at start-up).
pub type InventoryFn = Arc<dyn Fn() -> Result<Inventory, String> + Send + Sync>;

/// Why the sidecar could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error(
        "socket directory {0}: does not exist; create it (virt-launcher shares /var/run/kubevirt-hooks) or pass --socket-dir"
    )]
    SocketDirMissing(PathBuf),
    #[error("socket directory {0}: not a directory; pass --socket-dir DIR")]
    SocketDirNotDir(PathBuf),
    #[error("socket directory {dir}: cannot create the socket: {source}; make it writable for this user")]
    SocketDirNotWritable { dir: PathBuf, source: io::Error },
    #[error("socket path {0}: exists and is not a socket; remove it or choose another --name")]
    NotASocket(PathBuf),
    #[error("socket path {0}: another sidecar is serving on it; stop it or choose another --name")]
    InUse(PathBuf),
    #[error("sidecar name {0:?}: use letters, digits, '-', '_' and '.' only")]
    BadName(String),
    #[error("socket path {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

impl hbm_shell::ExitStatus for SidecarError {
    /// 2 = bad arguments or socket directory, 1 = anything else.
    fn exit_code(&self) -> u8 {
        match self {
            SidecarError::SocketDirMissing(_)
            | SidecarError::SocketDirNotDir(_)
            | SidecarError::SocketDirNotWritable { .. }
            | SidecarError::NotASocket(_)
            | SidecarError::InUse(_)
            | SidecarError::BadName(_) => 2,
            SidecarError::Io { .. } | SidecarError::Serve(_) => 1,
        }
    }
}

/// What the sidecar needs to answer calls.
#[derive(Clone)]
pub struct SidecarSettings {
    pub name: String,
    /// `HookPoint.priority` of OnDefineDomain (higher runs first among sidecars).
    pub priority: i32,
    /// Host defaults; VMI annotations override them.
    pub options: RewriteOptions,
    pub inventory: InventoryFn,
}

/// The state shared by the Info and Callbacks services.
struct Core {
    settings: SidecarSettings,
    shutdown: Notify,
}

impl Core {
    fn on_define_domain(&self, domain_xml: Vec<u8>, vmi: &[u8], version: &'static str) -> Result<Vec<u8>, Status> {
        let inventory = Arc::clone(&self.settings.inventory);
        match define_domain(&domain_xml, vmi, &self.settings.options, move || inventory()) {
            Ok(DefineOutcome::Rewritten { xml, summary }) => {
                tracing::info!(version, changes = summary.len(), summary = ?summary, "OnDefineDomain: rewritten");
                for warning in hbm_rewrite::warnings(&summary) {
                    tracing::warn!(version, "OnDefineDomain: {warning}");
                }
                Ok(xml.into_bytes())
            }
            Ok(DefineOutcome::Unchanged { why }) => {
                tracing::info!(version, why = %why, "OnDefineDomain: unchanged");
                Ok(domain_xml)
            }
            Ok(DefineOutcome::UnchangedWithWarning { warning }) => {
                tracing::warn!(version, warning = %warning, "OnDefineDomain: unchanged (policy auto)");
                Ok(domain_xml)
            }
            Err(e) => {
                tracing::error!(version, error = %e, "OnDefineDomain refused");
                Err(status_of(&e))
            }
        }
    }
}

/// The gRPC status virt-launcher sees (its message becomes the VMI's failure reason).
pub fn status_of(e: &KubevirtError) -> Status {
    let message = format!("hbm-passthrough: {e}");
    if e.is_bad_input() {
        Status::invalid_argument(message)
    } else {
        Status::failed_precondition(message)
    }
}

struct InfoService(Arc<Core>);

#[tonic::async_trait]
impl info::info_server::Info for InfoService {
    async fn info(&self, _request: Request<info::InfoParams>) -> Result<Response<info::InfoResult>, Status> {
        tracing::debug!("Info");
        Ok(Response::new(info::InfoResult {
            name: self.0.settings.name.clone(),
            hook_points: vec![info::HookPoint {
                name: info::ON_DEFINE_DOMAIN.to_string(),
                priority: self.0.settings.priority,
            }],
            versions: VERSIONS.iter().map(|v| v.to_string()).collect(),
        }))
    }
}

struct V1alpha1(Arc<Core>);
struct V1alpha2(Arc<Core>);
struct V1alpha3(Arc<Core>);

#[tonic::async_trait]
impl v1alpha1::callbacks_server::Callbacks for V1alpha1 {
    async fn on_define_domain(
        &self,
        request: Request<v1alpha1::OnDefineDomainParams>,
    ) -> Result<Response<v1alpha1::OnDefineDomainResult>, Status> {
        let p = request.into_inner();
        let domain_xml = self.0.on_define_domain(p.domain_xml, &p.vmi, v1alpha1::VERSION)?;
        Ok(Response::new(v1alpha1::OnDefineDomainResult { domain_xml }))
    }
}

#[tonic::async_trait]
impl v1alpha2::callbacks_server::Callbacks for V1alpha2 {
    async fn on_define_domain(
        &self,
        request: Request<v1alpha2::OnDefineDomainParams>,
    ) -> Result<Response<v1alpha2::OnDefineDomainResult>, Status> {
        let p = request.into_inner();
        let domain_xml = self.0.on_define_domain(p.domain_xml, &p.vmi, v1alpha2::VERSION)?;
        Ok(Response::new(v1alpha2::OnDefineDomainResult { domain_xml }))
    }

    async fn pre_cloud_init_iso(
        &self,
        request: Request<v1alpha2::PreCloudInitIsoParams>,
    ) -> Result<Response<v1alpha2::PreCloudInitIsoResult>, Status> {
        let p = request.into_inner();
        Ok(Response::new(v1alpha2::PreCloudInitIsoResult {
            cloud_init_no_cloud_source: p.cloud_init_no_cloud_source,
            cloud_init_data: p.cloud_init_data,
        }))
    }
}

#[tonic::async_trait]
impl v1alpha3::callbacks_server::Callbacks for V1alpha3 {
    async fn on_define_domain(
        &self,
        request: Request<v1alpha3::OnDefineDomainParams>,
    ) -> Result<Response<v1alpha3::OnDefineDomainResult>, Status> {
        let p = request.into_inner();
        let domain_xml = self.0.on_define_domain(p.domain_xml, &p.vmi, v1alpha3::VERSION)?;
        Ok(Response::new(v1alpha3::OnDefineDomainResult { domain_xml }))
    }

    async fn pre_cloud_init_iso(
        &self,
        request: Request<v1alpha3::PreCloudInitIsoParams>,
    ) -> Result<Response<v1alpha3::PreCloudInitIsoResult>, Status> {
        let p = request.into_inner();
        Ok(Response::new(v1alpha3::PreCloudInitIsoResult {
            cloud_init_no_cloud_source: p.cloud_init_no_cloud_source,
            cloud_init_data: p.cloud_init_data,
        }))
    }

    async fn shutdown(
        &self,
        _request: Request<v1alpha3::ShutdownParams>,
    ) -> Result<Response<v1alpha3::ShutdownResult>, Status> {
        tracing::info!("Shutdown requested by virt-launcher");
        self.0.shutdown.notify_one();
        Ok(Response::new(v1alpha3::ShutdownResult {}))
    }
}

/// A bound sidecar socket, ready to serve.
pub struct Sidecar {
    listener: UnixListener,
    socket: PathBuf,
    core: Arc<Core>,
}

impl Sidecar {
    /// Checks `socket_dir`, removes a stale `<name>.sock` left by a previous run (refusing when a
    /// live server answers on it, or when the path is not a socket) and binds the socket.
    pub async fn bind(socket_dir: &Path, settings: SidecarSettings) -> Result<Self, SidecarError> {
        check_name(&settings.name)?;
        check_socket_dir(socket_dir)?;
        let socket = socket_dir.join(format!("{}.sock", settings.name));
        remove_stale_socket(&socket).await?;
        let listener = UnixListener::bind(&socket).map_err(|source| match source.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => SidecarError::SocketDirNotWritable {
                dir: socket_dir.to_path_buf(),
                source,
            },
            _ => SidecarError::Io {
                path: socket.clone(),
                source,
            },
        })?;
        tracing::info!(socket = %socket.display(), name = %settings.name, "KubeVirt hook sidecar listening");
        Ok(Self {
            listener,
            socket,
            core: Arc::new(Core {
                settings,
                shutdown: Notify::new(),
            }),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Serves until virt-launcher calls Shutdown or `stop` completes, then removes the socket.
    pub async fn serve(self, stop: impl std::future::Future<Output = ()> + Send) -> Result<(), SidecarError> {
        let Sidecar { listener, socket, core } = self;
        let shutdown_core = Arc::clone(&core);
        let signal = async move {
            tokio::select! {
                () = shutdown_core.shutdown.notified() => {}
                () = stop => {}
            }
        };
        let result = tonic::transport::Server::builder()
            .add_service(info::info_server::InfoServer::new(InfoService(Arc::clone(&core))))
            .add_service(v1alpha1::callbacks_server::CallbacksServer::new(V1alpha1(Arc::clone(
                &core,
            ))))
            .add_service(v1alpha2::callbacks_server::CallbacksServer::new(V1alpha2(Arc::clone(
                &core,
            ))))
            .add_service(v1alpha3::callbacks_server::CallbacksServer::new(V1alpha3(Arc::clone(
                &core,
            ))))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), signal)
            .await;
        if let Err(e) = std::fs::remove_file(&socket)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(socket = %socket.display(), error = %e, "could not remove socket");
        }
        tracing::info!(socket = %socket.display(), "KubeVirt hook sidecar stopped");
        result.map_err(SidecarError::from)
    }
}

/// A sidecar name is a socket file's stem: letters, digits, `-`, `_`, `.`, not starting with `.`.
fn check_name(name: &str) -> Result<(), SidecarError> {
    let name_ok = !name.is_empty()
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if name_ok {
        Ok(())
    } else {
        Err(SidecarError::BadName(name.to_string()))
    }
}

/// The socket directory exists and is a directory.
fn check_socket_dir(socket_dir: &Path) -> Result<(), SidecarError> {
    match std::fs::metadata(socket_dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(SidecarError::SocketDirNotDir(socket_dir.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SidecarError::SocketDirMissing(socket_dir.to_path_buf())),
        Err(source) => Err(SidecarError::Io {
            path: socket_dir.to_path_buf(),
            source,
        }),
    }
}

/// Removes a socket left by a previous run; refuses when a live server answers on it or when the
/// path is not a socket.
async fn remove_stale_socket(socket: &Path) -> Result<(), SidecarError> {
    match std::fs::symlink_metadata(socket) {
        Ok(m) if m.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(socket).await.is_ok() {
                return Err(SidecarError::InUse(socket.to_path_buf()));
            }
            tracing::info!(socket = %socket.display(), "removing stale socket from a previous run");
            std::fs::remove_file(socket).map_err(|source| SidecarError::Io {
                path: socket.to_path_buf(),
                source,
            })
        }
        Ok(_) => Err(SidecarError::NotASocket(socket.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SidecarError::Io {
            path: socket.to_path_buf(),
            source,
        }),
    }
}

/// Resolves on SIGTERM or SIGINT (how Kubernetes stops the sidecar container).
pub async fn termination_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}
