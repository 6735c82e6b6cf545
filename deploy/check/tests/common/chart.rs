//! The chart's settings, read from `deploy/kubernetes/hbm-passthrough.yaml` (the chart rendered
//! with default values; a chart test keeps the two equal), turned into podman flags.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec};

use super::kubelet::HostDirs;

fn objects() -> Vec<deploy_check::manifest::Object> {
    objects_of("hbm-passthrough.yaml")
}

fn objects_of(file: &str) -> Vec<deploy_check::manifest::Object> {
    let path = deploy_check::workspace_root().join("deploy/kubernetes").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    deploy_check::manifest::parse(&text).unwrap()
}

fn object<T: serde::de::DeserializeOwned>(kind: &str, name: &str) -> T {
    let found = objects()
        .into_iter()
        .find(|o| o.kind == kind && o.name == name)
        .unwrap_or_else(|| panic!("deploy/kubernetes/hbm-passthrough.yaml has no {kind}/{name}"));
    serde_json::from_value(found.value).unwrap()
}

/// The plugin DaemonSet.
pub fn plugin_daemonset() -> DaemonSet {
    object("DaemonSet", "hbm-passthrough")
}

/// The DRA driver DaemonSet (`mode: dra`).
pub fn dra_daemonset() -> DaemonSet {
    let found = objects_of("hbm-passthrough-dra.yaml")
        .into_iter()
        .find(|o| o.kind == "DaemonSet")
        .expect("deploy/kubernetes/hbm-passthrough-dra.yaml has no DaemonSet");
    serde_json::from_value(found.value).unwrap()
}

/// The security flags of a DaemonSet's one container.
pub fn security_flags_of(daemonset: &DaemonSet) -> Vec<String> {
    security_flags(&pod_and_container(daemonset).1)
}

/// The args of the first hook sidecar in the KubeVirt wiring's annotation value.
pub fn sidecar_annotation_args() -> Vec<String> {
    let wiring: ConfigMap = object("ConfigMap", "hbm-passthrough-kubevirt");
    let data = wiring.data.unwrap_or_default();
    let annotation: serde_json::Value = serde_json::from_str(&data["hook-sidecars.json"]).unwrap();
    serde_json::from_value(annotation[0]["args"].clone()).unwrap()
}

/// podman flags and image args for the DaemonSet's one container.
pub struct RunSpec {
    pub flags: Vec<String>,
    pub args: Vec<String>,
}

fn pod_and_container(daemonset: &DaemonSet) -> (PodSpec, Container) {
    let pod = daemonset.spec.clone().unwrap().template.spec.unwrap();
    assert_eq!(pod.containers.len(), 1, "one container expected");
    let container = pod.containers[0].clone();
    (pod, container)
}

/// The container's security context as podman flags: read-only root, dropped capabilities, no
/// privilege escalation, the user. Anything the test cannot mirror fails here.
fn security_flags(container: &Container) -> Vec<String> {
    let context = container.security_context.clone().unwrap();
    assert_eq!(context.privileged, Some(false));
    let mut flags = Vec::new();
    if context.read_only_root_filesystem == Some(true) {
        flags.push("--read-only".to_string());
    }
    if context.allow_privilege_escalation == Some(false) {
        flags.push("--security-opt=no-new-privileges".to_string());
    }
    for dropped in context.capabilities.and_then(|c| c.drop).unwrap_or_default() {
        flags.push(format!("--cap-drop={dropped}"));
    }
    let user = context.run_as_user.unwrap();
    let group = context.run_as_group.unwrap();
    flags.push(format!("--user={user}:{group}"));
    flags
}

/// Literal env values as flags; values from the downward API (NODE_NAME) are left out: no API
/// server runs here (node labels are tested against an API stand-in in the plugin's tests).
fn env_flags(container: &Container) -> Vec<String> {
    container
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|var| var.value.map(|value| format!("--env={}={value}", var.name)))
        .collect()
}

/// Each volume mount as a `--volume`, host paths mapped onto the test's directories and each
/// ConfigMap's data written into a directory of its own.
fn volume_flags(pod: &PodSpec, container: &Container, host: &HostDirs) -> Vec<String> {
    let volumes = pod.volumes.clone().unwrap_or_default();
    let mut flags = Vec::new();
    for mount in container.volume_mounts.clone().unwrap_or_default() {
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .unwrap_or_else(|| panic!("mount {} names no volume", mount.name));
        let source = if let Some(host_path) = &volume.host_path {
            host.map_host_path(&host_path.path)
        } else if let Some(config_map) = &volume.config_map {
            let map: ConfigMap = object("ConfigMap", &config_map.name);
            host.write_config_map(&mount.name, &map.data.unwrap_or_default())
        } else {
            panic!("volume {} is neither a hostPath nor a ConfigMap", volume.name)
        };
        let read_only = if mount.read_only == Some(true) { ":ro" } else { "" };
        flags.push(format!("--volume={}:{}{read_only}", source.display(), mount.mount_path));
    }
    flags
}

/// Everything podman needs to run the DaemonSet's container on `host`.
pub fn podman_run_args(daemonset: &DaemonSet, host: &HostDirs) -> RunSpec {
    let (pod, container) = pod_and_container(daemonset);
    assert_eq!(container.command, None, "the image's ENTRYPOINT is expected to run");
    let mut flags = security_flags(&container);
    flags.extend(env_flags(&container));
    flags.extend(volume_flags(&pod, &container, host));
    RunSpec {
        flags,
        args: container.args.unwrap_or_default(),
    }
}
