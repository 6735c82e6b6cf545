//! gRPC definitions generated at build time from the `.proto` files in `proto/proto/`
//! (pure Rust: protox compiles them, tonic-prost-build generates the code; no system protoc).
//!
//! The proto package names decide the gRPC paths (`/v1beta1.Registration/Register`,
//! `/pluginregistration.Registration/GetInfo`, `/kubevirt.hooks.info.Info/Info`, ...).

#![allow(clippy::unwrap_used, clippy::expect_used)]

/// Kubelet device plugin API (`package v1beta1`).
pub mod deviceplugin {
    /// `/v1beta1.Registration/*` and `/v1beta1.DevicePlugin/*`.
    pub mod v1beta1 {
        tonic::include_proto!("v1beta1");

        /// The API version string sent in `RegisterRequest.version`.
        pub const VERSION: &str = "v1beta1";
        /// `Device.health` of a usable device.
        pub const HEALTHY: &str = "Healthy";
        /// `Device.health` of a device the kubelet must not hand out.
        pub const UNHEALTHY: &str = "Unhealthy";
        /// The kubelet's device plugin directory.
        pub const DEVICE_PLUGIN_PATH: &str = "/var/lib/kubelet/device-plugins/";
        /// The kubelet's registration socket file name inside [`DEVICE_PLUGIN_PATH`].
        pub const KUBELET_SOCKET: &str = "kubelet.sock";
    }
}

/// Kubelet plugin-watcher registration API (`package pluginregistration`).
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");

    /// `PluginInfo.type` of a device plugin.
    pub const DEVICE_PLUGIN_TYPE: &str = "DevicePlugin";
    /// The kubelet's plugin-watcher directory.
    pub const PLUGINS_REGISTRY_PATH: &str = "/var/lib/kubelet/plugins_registry/";
}

/// Kubelet PodResources API.
pub mod podresources {
    /// `package v1`: `/v1.PodResourcesLister/*`.
    pub mod v1 {
        tonic::include_proto!("v1");
    }
}

/// Kubelet Dynamic Resource Allocation (DRA) kubelet-plugin APIs.
pub mod dra {
    /// `package k8s.io.kubelet.pkg.apis.dra.v1`: `/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/*`.
    pub mod v1 {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");

        /// The version string a DRA driver lists in `PluginInfo.supported_versions`.
        pub const VERSION: &str = "v1.DRAPlugin";
        /// `PluginInfo.type` of a DRA driver.
        pub const PLUGIN_TYPE: &str = "DRAPlugin";
    }

    /// `/v1.DRAResourceHealth/NodeWatchResources`. Its proto package is `v1`, the same package
    /// as PodResources v1, so the generated code lives in [`crate::podresources::v1`]; this
    /// module names the health items.
    pub mod health_v1 {
        pub use crate::podresources::v1::{
            DeviceHealth, DeviceIdentifier, HealthStatus, NodeWatchResourcesRequest, NodeWatchResourcesResponse,
            dra_resource_health_client, dra_resource_health_server,
        };
    }

    /// `/v1alpha1.DRAResourceHealth/NodeWatchResources` for kubelets before 1.36, speaking the
    /// [`health_v1`] messages.
    pub use crate::dra_health::v1alpha1 as health_v1alpha1;
}

/// Where the generated `package v1alpha1` code lives: beside `v1` (PodResources v1 and the DRA
/// health messages), which it names as `super::v1`. Use it as [`dra::health_v1alpha1`].
pub mod dra_health {
    pub use crate::podresources::v1;

    /// `package v1alpha1`: the `DRAResourceHealth` service alone.
    pub mod v1alpha1 {
        tonic::include_proto!("v1alpha1");
    }
}

/// KubeVirt hook sidecar APIs.
pub mod kubevirt {
    /// `kubevirt.hooks.*`
    pub mod hooks {
        /// `package kubevirt.hooks.info`: the Info service virt-launcher calls first.
        pub mod info {
            tonic::include_proto!("kubevirt.hooks.info");

            /// Hook point name: called with the domain XML before libvirt defines it.
            pub const ON_DEFINE_DOMAIN: &str = "OnDefineDomain";
            /// Hook point name: called before the cloud-init ISO is built.
            pub const PRE_CLOUD_INIT_ISO: &str = "PreCloudInitIso";
            /// Hook point name: called on VMI shutdown.
            pub const SHUTDOWN: &str = "Shutdown";
        }
        /// `package kubevirt.hooks.v1alpha1`.
        pub mod v1alpha1 {
            tonic::include_proto!("kubevirt.hooks.v1alpha1");
            /// Version string listed in `InfoResult.versions`.
            pub const VERSION: &str = "v1alpha1";
        }
        /// `package kubevirt.hooks.v1alpha2`.
        pub mod v1alpha2 {
            tonic::include_proto!("kubevirt.hooks.v1alpha2");
            /// Version string listed in `InfoResult.versions`.
            pub const VERSION: &str = "v1alpha2";
        }
        /// `package kubevirt.hooks.v1alpha3`.
        pub mod v1alpha3 {
            tonic::include_proto!("kubevirt.hooks.v1alpha3");
            /// Version string listed in `InfoResult.versions`.
            pub const VERSION: &str = "v1alpha3";
        }
    }
}
