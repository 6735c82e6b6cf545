//! The gRPC services the kubelet calls: `v1.DRAPlugin` (prepare/unprepare), `v1.DRAResourceHealth`
//! and `v1alpha1.DRAResourceHealth` (the health stream) and the plugin-watcher `Registration`
//! (GetInfo, NotifyRegistrationStatus).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use proto::dra::health_v1::dra_resource_health_server::DraResourceHealth;
use proto::dra::health_v1::{NodeWatchResourcesRequest, NodeWatchResourcesResponse};
use proto::dra::health_v1alpha1 as alpha;
use proto::dra::v1::dra_plugin_server::DraPlugin;
use proto::dra::v1::{
    NodePrepareResourcesRequest, NodePrepareResourcesResponse, NodeUnprepareResourcesRequest,
    NodeUnprepareResourcesResponse,
};
use proto::pluginregistration::registration_server::Registration;
use proto::pluginregistration::{InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::health::DeviceState;
use crate::prepare::Preparer;

/// `v1.DRAPlugin`.
#[derive(Clone)]
pub struct DraService {
    pub preparer: Arc<Preparer>,
}

#[tonic::async_trait]
impl DraPlugin for DraService {
    async fn node_prepare_resources(
        &self,
        request: Request<NodePrepareResourcesRequest>,
    ) -> Result<Response<NodePrepareResourcesResponse>, Status> {
        let claims = self.preparer.prepare(&request.get_ref().claims).await;
        Ok(Response::new(NodePrepareResourcesResponse {
            claims: claims.into_iter().collect(),
        }))
    }

    async fn node_unprepare_resources(
        &self,
        request: Request<NodeUnprepareResourcesRequest>,
    ) -> Result<Response<NodeUnprepareResourcesResponse>, Status> {
        let claims = self.preparer.unprepare(&request.get_ref().claims).await;
        Ok(Response::new(NodeUnprepareResourcesResponse {
            claims: claims.into_iter().collect(),
        }))
    }
}

/// `v1.DRAResourceHealth`: the full list on open and after every change.
#[derive(Clone)]
pub struct HealthService {
    pub state: watch::Receiver<DeviceState>,
    pub pool: String,
    /// How long the kubelet should trust a message (a few poll intervals).
    pub timeout: Duration,
    pub stop: CancellationToken,
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl HealthService {
    /// The full list now and after every change, until the driver stops.
    fn messages(&self, version: &'static str) -> impl Stream<Item = NodeWatchResourcesResponse> + Send + 'static {
        tracing::info!(pool = %self.pool, version, "kubelet opened NodeWatchResources");
        let pool = self.pool.clone();
        let timeout = self.timeout;
        tokio_stream::wrappers::WatchStream::new(self.state.clone())
            .map(move |state| state.health_message(&pool, timeout))
            .take_until(self.stop.clone().cancelled_owned())
    }
}

#[tonic::async_trait]
impl DraResourceHealth for HealthService {
    type NodeWatchResourcesStream = Boxed<NodeWatchResourcesResponse>;

    async fn node_watch_resources(
        &self,
        _: Request<NodeWatchResourcesRequest>,
    ) -> Result<Response<Self::NodeWatchResourcesStream>, Status> {
        Ok(Response::new(Box::pin(self.messages("v1").map(Ok))))
    }
}

/// `v1alpha1.DRAResourceHealth`: the same stream for kubelets before 1.36.
#[derive(Clone)]
pub struct HealthServiceV1alpha1(pub HealthService);

#[tonic::async_trait]
impl alpha::dra_resource_health_server::DraResourceHealth for HealthServiceV1alpha1 {
    type NodeWatchResourcesStream = Boxed<NodeWatchResourcesResponse>;

    async fn node_watch_resources(
        &self,
        _: Request<NodeWatchResourcesRequest>,
    ) -> Result<Response<Self::NodeWatchResourcesStream>, Status> {
        Ok(Response::new(Box::pin(self.0.messages("v1alpha1").map(Ok))))
    }
}

/// The plugin-watcher `Registration` service on `<driver>-reg.sock`.
#[derive(Clone, Debug)]
pub struct RegistrationService {
    pub driver: String,
    /// Full path of `dra.sock`.
    pub endpoint: String,
    /// Last status the kubelet reported: `None` before any, `Some(Ok)` registered, `Some(Err)`.
    pub status: watch::Sender<Option<Result<(), String>>>,
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        tracing::info!(driver = %self.driver, "kubelet plugin watcher asked GetInfo");
        Ok(Response::new(PluginInfo {
            r#type: proto::dra::v1::PLUGIN_TYPE.to_string(),
            name: self.driver.clone(),
            endpoint: self.endpoint.clone(),
            supported_versions: vec![proto::dra::v1::VERSION.to_string()],
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            tracing::info!(driver = %self.driver, "kubelet registered the DRA driver");
            self.status.send_replace(Some(Ok(())));
        } else {
            tracing::error!(driver = %self.driver, error = %status.error, "kubelet rejected the DRA driver; it will retry when the registration socket is recreated");
            self.status.send_replace(Some(Err(status.error)));
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}
