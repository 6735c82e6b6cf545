//! virt-launcher's side of a hook sidecar: wait for its socket, call Info, call OnDefineDomain.

use std::path::Path;
use std::time::Duration;

use proto::kubevirt::hooks::info::info_client::InfoClient;
use proto::kubevirt::hooks::info::{InfoParams, InfoResult};
use proto::kubevirt::hooks::v1alpha3::OnDefineDomainParams;
use proto::kubevirt::hooks::v1alpha3::callbacks_client::CallbacksClient;
use tonic::transport::Channel;

use super::guarded;
use super::podman::Container;

async fn dial(socket: &Path) -> Channel {
    loop {
        if socket.exists()
            && let Ok(channel) = plugin::registration::dial_unix(socket).await
        {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Info client on the sidecar's socket, once it accepts.
pub async fn connect(socket: &Path, container: &Container) -> InfoClient<Channel> {
    InfoClient::new(guarded("the sidecar's socket", container, dial(socket)).await)
}

pub async fn info(client: &mut InfoClient<Channel>) -> InfoResult {
    client.info(InfoParams {}).await.unwrap().into_inner()
}

/// OnDefineDomain (v1alpha3) of `domain` for a VMI without annotations; the answer as text.
pub async fn on_define_domain(socket: &Path, domain: &str, container: &Container) -> String {
    let channel = guarded("the sidecar's socket", container, dial(socket)).await;
    let params = OnDefineDomainParams {
        domain_xml: domain.as_bytes().to_vec(),
        vmi: br#"{"metadata":{"name":"hbm-vm","namespace":"default"}}"#.to_vec(),
    };
    let answer = CallbacksClient::new(channel)
        .on_define_domain(params)
        .await
        .unwrap()
        .into_inner();
    String::from_utf8(answer.domain_xml).unwrap()
}
