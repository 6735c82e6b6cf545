//! The DRA wire facts the kubelet relies on: gRPC service paths and field numbers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use prost::Message;
use proto::dra::{health_v1 as health, v1 as dra};

#[test]
fn service_names_decide_the_grpc_paths() {
    assert_eq!(
        dra::dra_plugin_server::SERVICE_NAME,
        "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin"
    );
    assert_eq!(health::dra_resource_health_server::SERVICE_NAME, "v1.DRAResourceHealth");
    assert_eq!(
        proto::dra::health_v1alpha1::dra_resource_health_server::SERVICE_NAME,
        "v1alpha1.DRAResourceHealth"
    );
    assert_eq!((dra::PLUGIN_TYPE, dra::VERSION), ("DRAPlugin", "v1.DRAPlugin"));
}

#[test]
fn field_numbers_match_the_kubelet() {
    let claim = dra::Claim {
        namespace: "n".into(),
        uid: "u".into(),
        name: "c".into(),
    };
    // (1 << 3 | 2) "n", (2 << 3 | 2) "u", (3 << 3 | 2) "c"
    assert_eq!(claim.encode_to_vec(), [0x0a, 1, b'n', 0x12, 1, b'u', 0x1a, 1, b'c']);
    let device = dra::Device {
        request_names: vec!["r".into()],
        pool_name: "p".into(),
        device_name: "d".into(),
        cdi_device_ids: vec!["i".into()],
    };
    assert_eq!(
        device.encode_to_vec(),
        [0x0a, 1, b'r', 0x12, 1, b'p', 0x1a, 1, b'd', 0x22, 1, b'i']
    );
    let answer = dra::NodePrepareResourceResponse {
        devices: vec![],
        error: "e".into(),
    };
    assert_eq!(answer.encode_to_vec(), [0x12, 1, b'e']);
    let unprepare = dra::NodeUnprepareResourceResponse { error: "e".into() };
    assert_eq!(unprepare.encode_to_vec(), [0x0a, 1, b'e']);
    let health = health::DeviceHealth {
        device: Some(health::DeviceIdentifier {
            pool_name: "p".into(),
            device_name: "d".into(),
        }),
        health: health::HealthStatus::Unhealthy as i32,
        last_updated_time: 1,
        health_check_timeout_seconds: 2,
        message: "m".into(),
    };
    assert_eq!(
        health.encode_to_vec(),
        [
            0x0a, 6, 0x0a, 1, b'p', 0x12, 1, b'd', 0x10, 2, 0x18, 1, 0x20, 2, 0x2a, 1, b'm'
        ]
    );
}
