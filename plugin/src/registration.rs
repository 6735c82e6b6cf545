//! Telling the kubelet about a resource: the `Register` call on `kubelet.sock`, or, in
//! plugin-watcher mode, answering the kubelet's `GetInfo`/`NotifyRegistrationStatus`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use proto::deviceplugin::v1beta1::registration_client::RegistrationClient;
use proto::deviceplugin::v1beta1::{DevicePluginOptions, RegisterRequest, VERSION};
use proto::pluginregistration::registration_server::Registration;
use proto::pluginregistration::{
    DEVICE_PLUGIN_TYPE, InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;

/// Time allowed for dialing the kubelet and for one Register call.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(2);

/// Why registration with the kubelet failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("cannot dial kubelet socket {path}: {message} (is the kubelet running? check --device-plugin-dir)")]
    Dial { path: PathBuf, message: String },
    #[error("kubelet at {path} rejected Register for {resource}: {status}")]
    Rejected {
        path: PathBuf,
        resource: String,
        status: String,
    },
    #[error("Register call to {path} for {resource} timed out after {timeout:?}")]
    Timeout {
        path: PathBuf,
        resource: String,
        timeout: Duration,
    },
}

/// Dials a gRPC server on a unix socket.
pub async fn dial_unix(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The URI is required by the API but unused: the connector dials the socket.
    Endpoint::from_static("http://localhost")
        .connect_timeout(REGISTER_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
}

/// Calls `Register` on `<device_plugin_dir>/kubelet.sock` for `resource` served at the socket
/// file `endpoint` (a name relative to the directory).
pub async fn register_with_kubelet(
    device_plugin_dir: &Path,
    endpoint: &str,
    resource: &str,
) -> Result<(), RegistrationError> {
    let path = device_plugin_dir.join(proto::deviceplugin::v1beta1::KUBELET_SOCKET);
    let channel = dial_unix(&path).await.map_err(|e| RegistrationError::Dial {
        path: path.clone(),
        message: error_chain(&e),
    })?;
    let request = RegisterRequest {
        version: VERSION.to_string(),
        endpoint: endpoint.to_string(),
        resource_name: resource.to_string(),
        options: Some(DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: true,
        }),
    };
    match tokio::time::timeout(REGISTER_TIMEOUT, RegistrationClient::new(channel).register(request)).await {
        Err(_) => Err(RegistrationError::Timeout {
            path,
            resource: resource.to_string(),
            timeout: REGISTER_TIMEOUT,
        }),
        Ok(Err(status)) => Err(RegistrationError::Rejected {
            path,
            resource: resource.to_string(),
            status: format!("{}: {}", status.code(), status.message()),
        }),
        Ok(Ok(_)) => Ok(()),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Exponential backoff for registration retries: 10 ms doubling up to 5 s. The short start
/// matters: a new `kubelet.sock` appears (bind) a moment before it accepts (listen).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub failures: u32,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(10);
    pub const MAX: Duration = Duration::from_secs(5);

    pub fn next_delay(&mut self) -> Duration {
        let delay = Self::FIRST.saturating_mul(1u32 << self.failures.min(10));
        self.failures = self.failures.saturating_add(1);
        delay.min(Self::MAX)
    }
}

/// Plugin-watcher registration: the kubelet dials our socket in `plugins_registry`, calls
/// `GetInfo`, then reports the outcome with `NotifyRegistrationStatus`.
#[derive(Clone, Debug)]
pub struct PluginWatcherService {
    pub resource: String,
    /// Full path of the DevicePlugin socket (the same socket serves both services).
    pub endpoint: String,
    /// Last status the kubelet reported: `None` before any, `Some(Ok)` registered, `Some(Err)`.
    pub status: watch::Sender<Option<Result<(), String>>>,
    pub metrics: Arc<Metrics>,
}

#[tonic::async_trait]
impl Registration for PluginWatcherService {
    async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        tracing::info!(resource = %self.resource, "kubelet plugin watcher asked GetInfo");
        Ok(Response::new(PluginInfo {
            r#type: DEVICE_PLUGIN_TYPE.to_string(),
            name: self.resource.clone(),
            endpoint: self.endpoint.clone(),
            supported_versions: vec![VERSION.to_string()],
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        self.metrics.registration(&self.resource, status.plugin_registered);
        if status.plugin_registered {
            tracing::info!(resource = %self.resource, "kubelet plugin watcher registered the plugin");
            self.status.send_replace(Some(Ok(())));
        } else {
            tracing::error!(resource = %self.resource, error = %status.error, "kubelet plugin watcher rejected the plugin");
            self.status.send_replace(Some(Err(status.error)));
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff { failures: 0 };
        let delays: Vec<u64> = (0..12).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5000, 5000, 5000]);
    }
}
