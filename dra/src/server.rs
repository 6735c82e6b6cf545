//! gRPC servers on unix sockets: `dra.sock` (DRAPlugin + DRAResourceHealth) and
//! `<driver>-reg.sock` in the plugin-watcher directory (Registration). A server knows the identity
//! (inode and change time) of the socket file it bound, so the driver can tell when the kubelet
//! removed it (kubelet restart) and bind it again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

/// A running gRPC server on a unix socket.
#[derive(Debug)]
pub struct SocketServer {
    pub socket: PathBuf,
    identity: Option<FileIdentity>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Inode and change time: a file made at the same path later differs in one of them even when
/// the filesystem reuses the inode number.
type FileIdentity = (u64, i64, i64);

fn identity(path: &Path) -> Option<FileIdentity> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|meta| (meta.ino(), meta.ctime(), meta.ctime_nsec()))
}

impl SocketServer {
    /// Removes a stale file at `socket` (creating its folder), binds it and serves `routes`
    /// until [`SocketServer::stop`] or `parent` is cancelled.
    pub fn start(socket: &Path, routes: Routes, parent: &CancellationToken) -> std::io::Result<Self> {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(socket) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let listener = tokio::net::UnixListener::bind(socket)?;
        let identity = identity(socket);
        let stop = parent.child_token();
        let server_stop = stop.clone();
        let name = socket.display().to_string();
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let served = tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, server_stop.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::error!(socket = %name, %error, "gRPC server failed");
            }
        });
        tracing::info!(socket = %socket.display(), "serving");
        Ok(Self {
            socket: socket.to_path_buf(),
            identity,
            stop,
            task,
        })
    }

    /// Whether our socket file is still in place (the kubelet deletes it on restart).
    pub fn socket_intact(&self) -> bool {
        self.identity.is_some() && identity(&self.socket) == self.identity
    }

    /// Stops serving (removing the socket file if it is still ours), then binds the same path
    /// again and serves `routes`: stopping first, so the old server never removes the new file.
    pub async fn restart(&mut self, routes: Routes, parent: &CancellationToken) -> std::io::Result<()> {
        self.stop.cancel();
        if tokio::time::timeout(Duration::from_secs(2), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
        if self.socket_intact() {
            let _ = std::fs::remove_file(&self.socket);
        }
        *self = Self::start(&self.socket.clone(), routes, parent)?;
        Ok(())
    }

    /// Stops serving and removes the socket file if it is still ours.
    pub async fn stop(self) {
        self.stop.cancel();
        let intact = self.socket_intact();
        let Self { socket, mut task, .. } = self;
        if tokio::time::timeout(Duration::from_secs(2), &mut task).await.is_err() {
            task.abort();
        }
        if intact {
            let _ = std::fs::remove_file(&socket);
        }
    }
}
