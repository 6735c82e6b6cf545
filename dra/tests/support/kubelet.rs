//! A kubelet stand-in: gRPC clients over the driver's real unix sockets (`:authority localhost`,
//! as grpc-go sends).

use std::path::Path;

use proto::dra::health_v1::dra_resource_health_client::DraResourceHealthClient;
use proto::dra::health_v1::{NodeWatchResourcesRequest, NodeWatchResourcesResponse};
use proto::dra::v1::dra_plugin_client::DraPluginClient;
use proto::dra::v1::{Claim, NodePrepareResourceResponse, NodePrepareResourcesRequest, NodeUnprepareResourcesRequest};
use proto::pluginregistration::registration_client::RegistrationClient;
use proto::pluginregistration::{InfoRequest, PluginInfo, RegistrationStatus};
use std::collections::HashMap;

use tonic::transport::Channel;

pub fn claim(namespace: &str, name: &str, uid: &str) -> Claim {
    Claim {
        namespace: namespace.into(),
        name: name.into(),
        uid: uid.into(),
    }
}

pub async fn get_info(socket: &Path) -> PluginInfo {
    let channel = plugin::registration::dial_unix(socket).await.unwrap();
    let mut client = RegistrationClient::new(channel);
    let info = client.get_info(InfoRequest {}).await.unwrap().into_inner();
    client
        .notify_registration_status(RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await
        .unwrap();
    info
}

/// A DRAPlugin client on `dra.sock`, kept open as the kubelet keeps its connection.
pub async fn dra_client(socket: &Path) -> DraPluginClient<Channel> {
    DraPluginClient::new(plugin::registration::dial_unix(socket).await.unwrap())
}

pub async fn prepare_with(
    client: &mut DraPluginClient<Channel>,
    claims: Vec<Claim>,
) -> HashMap<String, NodePrepareResourceResponse> {
    let response = client
        .node_prepare_resources(NodePrepareResourcesRequest { claims })
        .await
        .unwrap();
    response.into_inner().claims
}

pub async fn unprepare_with(client: &mut DraPluginClient<Channel>, claims: Vec<Claim>) -> HashMap<String, String> {
    let response = client
        .node_unprepare_resources(NodeUnprepareResourcesRequest { claims })
        .await
        .unwrap();
    response
        .into_inner()
        .claims
        .into_iter()
        .map(|(uid, answer)| (uid, answer.error))
        .collect()
}

/// One NodePrepareResources call on a new connection.
pub async fn prepare(socket: &Path, claims: Vec<Claim>) -> HashMap<String, NodePrepareResourceResponse> {
    prepare_with(&mut dra_client(socket).await, claims).await
}

/// One NodeUnprepareResources call on a new connection; the error of each claim.
pub async fn unprepare(socket: &Path, claims: Vec<Claim>) -> HashMap<String, String> {
    unprepare_with(&mut dra_client(socket).await, claims).await
}

pub async fn watch_health(socket: &Path) -> tonic::Streaming<NodeWatchResourcesResponse> {
    let channel = plugin::registration::dial_unix(socket).await.unwrap();
    DraResourceHealthClient::new(channel)
        .node_watch_resources(NodeWatchResourcesRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// The health stream as a kubelet before 1.36 opens it (`v1alpha1`).
pub async fn watch_health_v1alpha1(socket: &Path) -> tonic::Streaming<NodeWatchResourcesResponse> {
    use proto::dra::health_v1alpha1::dra_resource_health_client::DraResourceHealthClient as AlphaClient;
    let channel = plugin::registration::dial_unix(socket).await.unwrap();
    AlphaClient::new(channel)
        .node_watch_resources(NodeWatchResourcesRequest {})
        .await
        .unwrap()
        .into_inner()
}
