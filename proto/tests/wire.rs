//! The wire facts the kubelet and KubeVirt rely on: gRPC service paths and field numbers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use prost::Message;
use proto::deviceplugin::v1beta1 as dp;
use proto::kubevirt::hooks::{info, v1alpha1, v1alpha2, v1alpha3};
use proto::{pluginregistration as pr, podresources::v1 as podres};

#[test]
fn service_names_decide_the_grpc_paths() {
    assert_eq!(dp::registration_server::SERVICE_NAME, "v1beta1.Registration");
    assert_eq!(dp::device_plugin_server::SERVICE_NAME, "v1beta1.DevicePlugin");
    assert_eq!(pr::registration_server::SERVICE_NAME, "pluginregistration.Registration");
    assert_eq!(
        podres::pod_resources_lister_server::SERVICE_NAME,
        "v1.PodResourcesLister"
    );
    assert_eq!(info::info_server::SERVICE_NAME, "kubevirt.hooks.info.Info");
    assert_eq!(
        v1alpha1::callbacks_server::SERVICE_NAME,
        "kubevirt.hooks.v1alpha1.Callbacks"
    );
    assert_eq!(
        v1alpha2::callbacks_server::SERVICE_NAME,
        "kubevirt.hooks.v1alpha2.Callbacks"
    );
    assert_eq!(
        v1alpha3::callbacks_server::SERVICE_NAME,
        "kubevirt.hooks.v1alpha3.Callbacks"
    );
}

#[test]
fn field_numbers_match_the_reference() {
    // tag = field << 3 | wire type (0 varint, 2 length-delimited)
    let device = dp::Device {
        id: "a".into(),
        health: "b".into(),
        topology: Some(dp::TopologyInfo {
            nodes: vec![dp::NumaNode { id: 1 }],
        }),
    };
    assert_eq!(
        device.encode_to_vec(),
        [0x0a, 1, b'a', 0x12, 1, b'b', 0x1a, 4, 0x0a, 2, 0x08, 1]
    );
    let preferred = dp::ContainerPreferredAllocationRequest {
        available_device_i_ds: vec!["x".into()],
        must_include_device_i_ds: vec!["y".into()],
        allocation_size: 2,
    };
    assert_eq!(preferred.encode_to_vec(), [0x0a, 1, b'x', 0x12, 1, b'y', 0x18, 2]);
    let register = dp::RegisterRequest {
        version: "v".into(),
        endpoint: "e".into(),
        resource_name: "r".into(),
        options: Some(dp::DevicePluginOptions {
            pre_start_required: true,
            get_preferred_allocation_available: true,
        }),
    };
    assert_eq!(
        register.encode_to_vec(),
        [0x0a, 1, b'v', 0x12, 1, b'e', 0x1a, 1, b'r', 0x22, 4, 0x08, 1, 0x10, 1]
    );
    let spec = dp::DeviceSpec {
        container_path: "c".into(),
        host_path: "h".into(),
        permissions: "rw".into(),
    };
    assert_eq!(
        spec.encode_to_vec(),
        [0x0a, 1, b'c', 0x12, 1, b'h', 0x1a, 2, b'r', b'w']
    );
    let plugin_info = pr::PluginInfo {
        r#type: "t".into(),
        name: "n".into(),
        endpoint: "e".into(),
        supported_versions: vec!["v".into()],
    };
    assert_eq!(
        plugin_info.encode_to_vec(),
        [0x0a, 1, b't', 0x12, 1, b'n', 0x1a, 1, b'e', 0x22, 1, b'v']
    );
    let status = pr::RegistrationStatus {
        plugin_registered: true,
        error: "x".into(),
    };
    assert_eq!(status.encode_to_vec(), [0x08, 1, 0x12, 1, b'x']);
    let result = info::InfoResult {
        name: "n".into(),
        hook_points: vec![info::HookPoint {
            name: "h".into(),
            priority: 1,
        }],
        versions: vec!["v".into()],
    };
    assert_eq!(
        result.encode_to_vec(),
        [0x0a, 1, b'n', 0x1a, 5, 0x0a, 1, b'h', 0x10, 1, 0x22, 1, b'v']
    );
    let iso = v1alpha3::PreCloudInitIsoResult {
        cloud_init_no_cloud_source: b"s".to_vec(),
        cloud_init_data: b"d".to_vec(),
    };
    assert_eq!(iso.encode_to_vec(), [0x0a, 1, b's', 0x1a, 1, b'd']);
    let define = v1alpha1::OnDefineDomainParams {
        domain_xml: b"x".to_vec(),
        vmi: b"v".to_vec(),
    };
    assert_eq!(define.encode_to_vec(), [0x0a, 1, b'x', 0x12, 1, b'v']);
}
