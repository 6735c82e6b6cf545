#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The chart rendered by a real helm (default values, ci/full-values.yaml, ci/off-values.yaml):
//! every object survives a round trip through its typed form, the DaemonSet is as tight as
//! documented, RBAC is get/patch nodes only, the KubeVirt wiring is consistent, and the plain
//! manifests under deploy/ are exactly what the chart renders.

use std::collections::BTreeMap;

use deploy_check::manifest::{self, Object};
use deploy_check::roundtrip;
use deploy_check::servicemonitor::{ServiceMonitor, duration_seconds};
use deploy_check::{chart_dir, helm, workspace_root};
use k8s_openapi::Resource;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde_json::{Value, json};

const FULL: &str = "charts/hbm-passthrough/ci/full-values.yaml";
const OFF: &str = "charts/hbm-passthrough/ci/off-values.yaml";

/// The typed form of one rendered object.
#[allow(clippy::large_enum_variant)]
enum Typed {
    DaemonSet(DaemonSet),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    ConfigMap(ConfigMap),
    Service(Service),
    ServiceMonitor(ServiceMonitor),
}

fn typed(object: &Object) -> Typed {
    let id = object.id();
    let v = &object.value;
    let check_version = |expected: &str| {
        assert_eq!(object.api_version, expected, "{id}: apiVersion");
    };
    let result = match object.kind.as_str() {
        "DaemonSet" => {
            check_version(DaemonSet::API_VERSION);
            roundtrip::typed(&id, v).map(Typed::DaemonSet)
        }
        "ServiceAccount" => {
            check_version(ServiceAccount::API_VERSION);
            roundtrip::typed(&id, v).map(Typed::ServiceAccount)
        }
        "ClusterRole" => {
            check_version(ClusterRole::API_VERSION);
            roundtrip::typed(&id, v).map(Typed::ClusterRole)
        }
        "ClusterRoleBinding" => {
            check_version(ClusterRoleBinding::API_VERSION);
            roundtrip::typed(&id, v).map(Typed::ClusterRoleBinding)
        }
        "ConfigMap" => {
            check_version(ConfigMap::API_VERSION);
            roundtrip::typed(&id, v).map(Typed::ConfigMap)
        }
        "Service" => {
            check_version(Service::API_VERSION);
            roundtrip::typed(&id, v).map(Typed::Service)
        }
        "ServiceMonitor" => {
            check_version(ServiceMonitor::API_VERSION);
            roundtrip::typed(&id, v).map(Typed::ServiceMonitor)
        }
        other => panic!("{id}: the chart renders a kind this test has no type for: {other}"),
    };
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// A rendering and its typed objects.
struct Rendered {
    text: String,
    objects: Vec<Object>,
}

impl Rendered {
    fn new(release: &str, namespace: &str, values: Option<&str>) -> Self {
        let mut extra = Vec::new();
        if let Some(values) = values {
            extra.push("-f");
            extra.push(values);
        }
        let text = helm::template(release, namespace, &extra).unwrap_or_else(|e| panic!("{e}"));
        let objects = manifest::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        Rendered { text, objects }
    }

    fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.objects.iter().map(Object::id).collect();
        ids.sort();
        ids
    }

    fn daemonset(&self) -> DaemonSet {
        self.only("DaemonSet", |t| match t {
            Typed::DaemonSet(d) => Some(d),
            _ => None,
        })
    }

    fn configmap(&self, name: &str) -> ConfigMap {
        let object = self
            .objects
            .iter()
            .find(|o| o.kind == "ConfigMap" && o.name == name)
            .unwrap_or_else(|| panic!("no ConfigMap/{name} in {:?}", self.ids()));
        match typed(object) {
            Typed::ConfigMap(c) => c,
            _ => unreachable!(),
        }
    }

    fn only<T>(&self, kind: &str, pick: impl Fn(Typed) -> Option<T>) -> T {
        let mut found: Vec<T> = self
            .objects
            .iter()
            .filter(|o| o.kind == kind)
            .filter_map(|o| pick(typed(o)))
            .collect();
        assert_eq!(found.len(), 1, "exactly one {kind} expected in {:?}", self.ids());
        found.remove(0)
    }
}

fn default_render() -> Rendered {
    Rendered::new("hbm-passthrough", "kube-system", None)
}

fn full_render() -> Rendered {
    Rendered::new("hbm", "gpu", Some(FULL))
}

fn off_render() -> Rendered {
    Rendered::new("hbm", "gpu", Some(OFF))
}

fn pod_spec(ds: &DaemonSet) -> PodSpec {
    ds.spec.clone().unwrap().template.spec.unwrap()
}

fn container(ds: &DaemonSet) -> Container {
    let spec = pod_spec(ds);
    assert_eq!(spec.containers.len(), 1, "one container");
    assert!(spec.init_containers.is_none(), "no init containers");
    spec.containers[0].clone()
}

fn values_file(path: &str) -> Value {
    let text = std::fs::read_to_string(workspace_root().join(path)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

#[test]
fn default_values_render_exactly_these_objects() {
    let r = default_render();
    assert_eq!(
        r.ids(),
        [
            "ClusterRole/hbm-passthrough",
            "ClusterRoleBinding/hbm-passthrough",
            "ConfigMap/hbm-passthrough-config",
            "ConfigMap/hbm-passthrough-kubevirt",
            "DaemonSet/hbm-passthrough",
            "Service/hbm-passthrough-metrics",
            "ServiceAccount/hbm-passthrough",
        ]
    );
    for object in &r.objects {
        typed(object);
    }
}

#[test]
fn full_values_render_exactly_these_objects_and_all_round_trip() {
    let r = full_render();
    assert_eq!(
        r.ids(),
        [
            "ClusterRole/hbm-dp",
            "ClusterRoleBinding/hbm-dp",
            "ConfigMap/hbm-dp-config",
            "ConfigMap/hbm-dp-kubevirt",
            "DaemonSet/hbm-dp",
            "Service/hbm-dp-metrics",
            "ServiceAccount/hbm-dp-sa",
            "ServiceMonitor/hbm-dp",
        ]
    );
    for object in &r.objects {
        typed(object);
        if object.kind != "ClusterRole" && object.kind != "ClusterRoleBinding" {
            assert_eq!(
                object.value.pointer("/metadata/namespace"),
                Some(&json!("gpu")),
                "{}",
                object.id()
            );
        }
    }
}

#[test]
fn off_values_render_only_the_daemonset_and_its_config() {
    let r = off_render();
    assert_eq!(
        r.ids(),
        ["ConfigMap/hbm-hbm-passthrough-config", "DaemonSet/hbm-hbm-passthrough"]
    );
    let ds = r.daemonset();
    let spec = pod_spec(&ds);
    assert_eq!(spec.service_account_name.as_deref(), Some("preexisting-sa"));
    assert_eq!(spec.priority_class_name, None);
    assert_eq!(spec.node_selector, None);
    assert_eq!(spec.tolerations, None);
}

#[test]
fn round_trip_catches_a_misplaced_key() {
    // The check itself: a key the type does not know must be reported, not silently dropped.
    let r = default_render();
    let mut object = r.objects.iter().find(|o| o.kind == "DaemonSet").unwrap().clone();
    let spec = object.value.pointer_mut("/spec/template/spec").unwrap();
    spec.as_object_mut().unwrap().insert("tolerration".into(), json!([]));
    let err = roundtrip::typed::<DaemonSet>(&object.id(), &object.value)
        .expect_err("a misspelt key must fail the round trip");
    assert!(
        err.to_string().contains("/spec/template/spec/tolerration: dropped"),
        "{err}"
    );
}

fn assert_tight_security(ds: &DaemonSet) {
    let spec = pod_spec(ds);
    assert_eq!(spec.host_network, None, "no hostNetwork");
    assert_eq!(spec.host_pid, None, "no hostPID");
    assert_eq!(spec.host_ipc, None, "no hostIPC");
    let pod_sc = spec.security_context.clone().unwrap();
    assert_eq!(pod_sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    let c = container(ds);
    let sc = c.security_context.unwrap();
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    assert_eq!(caps.add, None, "no capability added back");
    assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    // The one remaining privilege, documented in values.yaml: uid 0 (owner of the kubelet dirs).
    assert_eq!(sc.run_as_user, Some(0));
    assert!(sc.proc_mount.is_none() && sc.se_linux_options.is_none());
    let values = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    for reason in [
        "runAsUser 0",
        "hostPath <kubeletRootDir>/device-plugins",
        "hostPath <kubeletRootDir>/plugins_registry",
        "hostPath /sys (read-only)",
        "hostPath /dev (read-only)",
    ] {
        assert!(values.contains(reason), "values.yaml must explain: {reason}");
    }
}

#[test]
fn daemonset_security_is_tight_with_default_and_full_values() {
    assert_tight_security(&default_render().daemonset());
    assert_tight_security(&full_render().daemonset());
}

/// (mountPath, readOnly, hostPath, hostPath type) of every hostPath volume; config separately.
fn host_mounts(ds: &DaemonSet) -> BTreeMap<String, (String, bool, String)> {
    let spec = pod_spec(ds);
    let c = container(ds);
    let volumes = spec.volumes.unwrap();
    let mut out = BTreeMap::new();
    for m in c.volume_mounts.unwrap() {
        let v = volumes.iter().find(|v| v.name == m.name).unwrap();
        assert!(
            m.sub_path.is_none(),
            "{}: subPath would break hot reload / socket watch",
            m.name
        );
        if let Some(hp) = &v.host_path {
            out.insert(
                hp.path.clone(),
                (
                    m.mount_path.clone(),
                    m.read_only.unwrap_or(false),
                    hp.type_.clone().unwrap(),
                ),
            );
        } else {
            let cm = v.config_map.as_ref().expect("non-hostPath volumes are the ConfigMap");
            assert!(cm.name.ends_with("-config"));
            assert_eq!(m.mount_path, "/etc/hbm-passthrough");
            assert_eq!(m.read_only, Some(true));
        }
    }
    assert_eq!(volumes.len(), out.len() + 1, "hostPaths and the config, all mounted");
    out
}

fn owned(rows: &[(&str, &str, bool, &str)]) -> BTreeMap<String, (String, bool, String)> {
    rows.iter()
        .map(|(h, m, ro, t)| (h.to_string(), (m.to_string(), *ro, t.to_string())))
        .collect()
}

#[test]
fn daemonset_mounts_kubelet_dirs_sys_dev_and_config() {
    assert_eq!(
        host_mounts(&default_render().daemonset()),
        owned(&[
            ("/dev", "/host/dev", true, "Directory"),
            ("/sys", "/host/sys", true, "Directory"),
            (
                "/var/lib/kubelet/device-plugins",
                "/var/lib/kubelet/device-plugins",
                false,
                "Directory"
            ),
            (
                "/var/lib/kubelet/plugins_registry",
                "/var/lib/kubelet/plugins_registry",
                false,
                "DirectoryOrCreate"
            ),
        ])
    );
    // kubeletRootDir moves both kubelet dirs; the container sees them at the host's path.
    assert_eq!(
        host_mounts(&full_render().daemonset()),
        owned(&[
            ("/dev", "/node/dev", true, "Directory"),
            ("/proc/driver/nvidia", "/node/proc/driver/nvidia", true, "Directory"),
            ("/sys", "/node/sys", true, "Directory"),
            (
                "/var/lib/k0s/kubelet/device-plugins",
                "/var/lib/k0s/kubelet/device-plugins",
                false,
                "Directory"
            ),
            (
                "/var/lib/k0s/kubelet/plugins_registry",
                "/var/lib/k0s/kubelet/plugins_registry",
                false,
                "DirectoryOrCreate"
            ),
        ])
    );
}

#[test]
fn daemonset_args_env_probes_and_scheduling_follow_the_values() {
    let ds = default_render().daemonset();
    let c = container(&ds);
    assert_eq!(c.image.as_deref(), Some("hbm-passthrough/hbm-device-plugin:0.1.0"));
    assert_eq!(
        c.args.unwrap(),
        [
            "run",
            "--device-plugin-dir=/var/lib/kubelet/device-plugins",
            "--plugins-registry-dir=/var/lib/kubelet/plugins_registry",
            "--registration=auto",
            "--sysfs-root=/host",
            "--dev-root=/host/dev",
            "--config=/etc/hbm-passthrough/plugin.yaml",
            "--metrics-addr=0.0.0.0:9472",
        ]
    );
    assert!(c.command.is_none(), "the image's entrypoint is the plugin binary");
    let env = c.env.unwrap();
    let node_name = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    let field = node_name.value_from.clone().unwrap().field_ref.unwrap();
    assert_eq!(field.field_path, "spec.nodeName");
    assert_eq!(
        env.iter().find(|e| e.name == "RUST_LOG").unwrap().value.as_deref(),
        Some("info")
    );
    let port = &c.ports.unwrap()[0];
    assert_eq!((port.name.as_deref(), port.container_port), (Some("metrics"), 9472));
    let live = c.liveness_probe.unwrap().http_get.unwrap();
    let ready = c.readiness_probe.unwrap().http_get.unwrap();
    assert_eq!(live.path.as_deref(), Some("/healthz"));
    assert_eq!(ready.path.as_deref(), Some("/readyz"));
    let spec = pod_spec(&ds);
    assert_eq!(spec.priority_class_name.as_deref(), Some("system-node-critical"));
    assert_eq!(
        spec.node_selector.unwrap(),
        BTreeMap::from([("kubernetes.io/os".to_string(), "linux".to_string())])
    );
    let strategy = ds.spec.unwrap().update_strategy.unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));

    // Full values: every knob shows up where it belongs.
    let ds = full_render().daemonset();
    let c = container(&ds);
    assert_eq!(
        c.image.as_deref(),
        Some(
            "registry.example.invalid/gpu/hbm-device-plugin@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        )
    );
    assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
    let args = c.args.unwrap();
    for expected in [
        "--registration=plugin-watcher",
        "--metrics-addr=0.0.0.0:19472",
        "--health-poll-interval=2s",
        "--sysfs-root=/node",
        "--dev-root=/node/dev",
    ] {
        assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
    }
    let resources = c.resources.unwrap();
    assert_eq!(resources.limits.unwrap()["memory"].0, "48Mi");
    let spec = pod_spec(&ds);
    assert_eq!(spec.priority_class_name.as_deref(), Some("gpu-node-critical"));
    assert_eq!(spec.service_account_name.as_deref(), Some("hbm-dp-sa"));
    assert_eq!(spec.image_pull_secrets.unwrap()[0].name, "regcred");
    assert_eq!(spec.tolerations.unwrap().len(), 2);
    assert!(spec.affinity.unwrap().node_affinity.is_some());
    let template_meta = ds.spec.clone().unwrap().template.metadata.unwrap();
    assert_eq!(template_meta.labels.unwrap()["team"], "gpu");
    assert_eq!(template_meta.annotations.unwrap()["example.invalid/scrape"], "true");
    let strategy = ds.spec.unwrap().update_strategy.unwrap();
    let max_unavailable = strategy.rolling_update.unwrap().max_unavailable.unwrap();
    assert_eq!(
        max_unavailable,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("10%".into())
    );
}

#[test]
fn rbac_grants_get_and_patch_on_nodes_and_nothing_else() {
    for r in [default_render(), full_render()] {
        let role = r.only("ClusterRole", |t| match t {
            Typed::ClusterRole(x) => Some(x),
            _ => None,
        });
        let rules = role.rules.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].api_groups, Some(vec![String::new()]));
        assert_eq!(rules[0].resources, Some(vec!["nodes".to_string()]));
        assert_eq!(rules[0].verbs, ["get", "patch"]);
        assert!(rules[0].resource_names.is_none() && rules[0].non_resource_urls.is_none());
        let binding = r.only("ClusterRoleBinding", |t| match t {
            Typed::ClusterRoleBinding(x) => Some(x),
            _ => None,
        });
        assert_eq!(binding.role_ref.kind, "ClusterRole");
        assert_eq!(binding.role_ref.name, role.metadata.name.unwrap());
        let sa = r.only("ServiceAccount", |t| match t {
            Typed::ServiceAccount(x) => Some(x),
            _ => None,
        });
        let subjects = binding.subjects.unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].name, sa.metadata.name.clone().unwrap());
        assert_eq!(subjects[0].namespace, sa.metadata.namespace);
        assert_eq!(
            pod_spec(&r.daemonset()).service_account_name,
            sa.metadata.name,
            "the pod runs as the bound ServiceAccount"
        );
    }
}

#[test]
fn configmap_carries_the_values_config_verbatim() {
    for (r, values) in [
        (default_render(), values_file("charts/hbm-passthrough/values.yaml")),
        (full_render(), values_file(FULL)),
    ] {
        let name = format!("{}-config", r.daemonset().metadata.name.unwrap());
        let cm = r.configmap(&name);
        let data = cm.data.unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["plugin.yaml"]);
        let rendered: Value = serde_yaml_ng::from_str(&data["plugin.yaml"]).unwrap();
        assert_eq!(rendered, values["config"]);
        // PCI ids stay strings (an unquoted 2342 would turn into a number).
        for rule in rendered["resources"].as_array().unwrap() {
            assert!(rule["selector"]["vendor"].is_string(), "{rule}");
        }
    }
}

#[test]
fn service_selects_the_plugin_pods_and_servicemonitor_selects_the_service() {
    let r = full_render();
    let ds = r.daemonset();
    let pod_labels = ds.spec.clone().unwrap().template.metadata.unwrap().labels.unwrap();
    let svc = r.only("Service", |t| match t {
        Typed::Service(x) => Some(x),
        _ => None,
    });
    let svc_spec = svc.spec.unwrap();
    assert_eq!(
        svc_spec.cluster_ip.as_deref(),
        Some("None"),
        "headless: one target per node"
    );
    let selector = svc_spec.selector.unwrap();
    for (k, v) in &selector {
        assert_eq!(pod_labels.get(k), Some(v), "Service selector {k} matches the pods");
    }
    let port = &svc_spec.ports.unwrap()[0];
    assert_eq!(port.port, 19472);
    assert_eq!(port.name.as_deref(), Some("metrics"));
    assert_eq!(
        port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
            "metrics".into()
        ))
    );
    let svc_labels = svc.metadata.labels.unwrap();

    let sm = r.only("ServiceMonitor", |t| match t {
        Typed::ServiceMonitor(x) => Some(x),
        _ => None,
    });
    assert_eq!(sm.kind, ServiceMonitor::KIND);
    assert_eq!(sm.metadata.labels.unwrap()["release"], "prometheus");
    for (k, v) in sm.spec.selector.match_labels.unwrap() {
        assert_eq!(
            svc_labels.get(&k),
            Some(&v),
            "ServiceMonitor selector {k} matches the Service"
        );
    }
    assert_eq!(sm.spec.namespace_selector.unwrap().match_names, ["gpu"]);
    assert_eq!(sm.spec.endpoints.len(), 1);
    let ep = &sm.spec.endpoints[0];
    assert_eq!(ep.port, "metrics");
    assert_eq!(ep.path.as_deref(), Some("/metrics"));
    let interval = duration_seconds(ep.interval.as_deref().unwrap()).unwrap();
    let timeout = duration_seconds(ep.scrape_timeout.as_deref().unwrap()).unwrap();
    assert_eq!((interval, timeout), (15.0, 5.0));
    assert!(
        timeout <= interval,
        "Prometheus rejects a scrapeTimeout above the interval"
    );
}

#[test]
fn servicemonitor_type_rejects_unknown_keys() {
    let r = full_render();
    let mut object = r.objects.iter().find(|o| o.kind == "ServiceMonitor").unwrap().clone();
    object.value["spec"]["endpoints"][0]
        .as_object_mut()
        .unwrap()
        .insert("intervall".into(), json!("15s"));
    let err = roundtrip::typed::<ServiceMonitor>(&object.id(), &object.value).expect_err("unknown key");
    assert!(err.to_string().contains("intervall"), "{err}");
}

fn wiring(r: &Rendered, fullname: &str) -> BTreeMap<String, String> {
    r.configmap(&format!("{fullname}-kubevirt")).data.unwrap()
}

#[test]
fn kubevirt_wiring_has_the_feature_gate_permitted_devices_and_sidecar_annotation() {
    let r = default_render();
    let data = wiring(&r, "hbm-passthrough");
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        [
            "hook-sidecars.json",
            "kubevirt-configuration.yaml",
            "kubevirt-cr.patch.json"
        ]
    );
    let patch: Value = serde_json::from_str(&data["kubevirt-cr.patch.json"]).unwrap();
    assert_eq!(
        patch,
        json!([
            {"op": "add", "path": "/spec/configuration/developerConfiguration/featureGates/-", "value": "Sidecar"},
            {"op": "add", "path": "/spec/configuration/permittedHostDevices/pciHostDevices/-",
             "value": {"pciVendorSelector": "1002:74a1", "resourceName": "hbm-passthrough.dev/mi300x", "externalResourceProvider": true}},
            {"op": "add", "path": "/spec/configuration/permittedHostDevices/pciHostDevices/-",
             "value": {"pciVendorSelector": "10de:2342", "resourceName": "hbm-passthrough.dev/gh200", "externalResourceProvider": true}},
        ])
    );
    let configuration: Value = serde_yaml_ng::from_str(&data["kubevirt-configuration.yaml"]).unwrap();
    assert_eq!(
        configuration,
        json!({
            "developerConfiguration": {"featureGates": ["Sidecar"]},
            "permittedHostDevices": {"pciHostDevices": [
                {"pciVendorSelector": "1002:74a1", "resourceName": "hbm-passthrough.dev/mi300x", "externalResourceProvider": true},
                {"pciVendorSelector": "10de:2342", "resourceName": "hbm-passthrough.dev/gh200", "externalResourceProvider": true},
            ]}
        })
    );
    let sidecars: Value = serde_json::from_str(&data["hook-sidecars.json"]).unwrap();
    assert_eq!(
        sidecars,
        json!([{
            "image": "hbm-passthrough/hbm-hook-sidecar:0.1.0",
            "imagePullPolicy": "IfNotPresent",
            "args": ["kubevirt-sidecar", "--socket-dir", "/var/run/kubevirt-hooks", "--name", "hbm-passthrough", "--dialect", "auto", "--generic-initiator=qemu-commandline"],
        }])
    );

    // Full values: 0x prefixes and upper case normalised, a vendor-only rule gets no
    // pciHostDevices entry (KubeVirt's selector needs vendor:device), sidecar knobs applied.
    let r = full_render();
    let data = wiring(&r, "hbm-dp");
    let configuration: Value = serde_yaml_ng::from_str(&data["kubevirt-configuration.yaml"]).unwrap();
    assert_eq!(
        configuration["permittedHostDevices"]["pciHostDevices"],
        json!([
            {"pciVendorSelector": "1002:74a1", "resourceName": "example.invalid/mi300x-hbm", "externalResourceProvider": true},
            {"pciVendorSelector": "1002:74a0", "resourceName": "example.invalid/mi300a-mi250x", "externalResourceProvider": true},
            {"pciVendorSelector": "1002:740c", "resourceName": "example.invalid/mi300a-mi250x", "externalResourceProvider": true},
        ])
    );
    let sidecars: Value = serde_json::from_str(&data["hook-sidecars.json"]).unwrap();
    assert_eq!(
        sidecars,
        json!([{
            "image": "registry.example.invalid/gpu/hbm-hook-sidecar:0.1.0-rc1",
            "imagePullPolicy": "Always",
            "args": ["kubevirt-sidecar", "--socket-dir", "/var/run/kubevirt-hooks", "--name", "hbm-gpu", "--dialect", "sp-mem", "--generic-initiator=acpi-nodeset", "--priority=10"],
        }])
    );
}

#[test]
fn plain_manifests_under_deploy_equal_the_chart_rendering() {
    // deploy/kubernetes/hbm-passthrough.yaml = header comment + `helm template` with the release
    // name and namespace the header names (regenerate with deploy/render.sh).
    let path = workspace_root().join("deploy/kubernetes/hbm-passthrough.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let (header, body) = manifest::split_generated(&text).expect("a comment header, then the rendering");
    assert!(header.contains("deploy/render.sh"));
    let rendered = default_render();
    assert!(
        body == rendered.text,
        "deploy/kubernetes/hbm-passthrough.yaml drifted from the chart: run deploy/render.sh"
    );
}

#[test]
fn kubevirt_example_vm_uses_the_rendered_annotation_and_a_configured_resource() {
    let text = std::fs::read_to_string(workspace_root().join("deploy/kubevirt/vm-hbm.yaml")).unwrap();
    let vm: Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(vm["apiVersion"], "kubevirt.io/v1");
    assert_eq!(vm["kind"], "VirtualMachine");
    let template = &vm["spec"]["template"];
    let annotations = template["metadata"]["annotations"].as_object().unwrap();
    let data = wiring(&default_render(), "hbm-passthrough");
    let expected: Value = serde_json::from_str(&data["hook-sidecars.json"]).unwrap();
    let actual: Value = serde_json::from_str(annotations["hooks.kubevirt.io/hookSidecars"].as_str().unwrap()).unwrap();
    assert_eq!(actual, expected, "the example's hookSidecars annotation is the chart's");
    assert_eq!(annotations["hbm-passthrough.dev/policy"], "required");
    let values = values_file("charts/hbm-passthrough/values.yaml");
    let resource_names: Vec<&Value> = values["config"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["name"])
        .collect();
    let gpus = template["spec"]["domain"]["devices"]["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 1);
    assert!(resource_names.contains(&&gpus[0]["deviceName"]), "{}", gpus[0]);
    // An ordinary VM: the chart's defaults (no dialect annotation), booted from a container disk
    // with cloud-init, no direct kernel boot, a Burstable pod (no dedicated CPUs, no hugepages).
    let mut keys: Vec<&String> = annotations.keys().collect();
    keys.sort();
    assert_eq!(keys, ["hbm-passthrough.dev/policy", "hooks.kubevirt.io/hookSidecars"]);
    let domain = &template["spec"]["domain"];
    assert!(domain.get("firmware").is_none(), "{domain}");
    assert!(domain["cpu"].get("dedicatedCpuPlacement").is_none(), "{domain}");
    assert!(domain["memory"].get("hugepages").is_none(), "{domain}");
    let volumes: Vec<(&str, &str)> = template["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let kind = v.as_object().unwrap().keys().find(|k| *k != "name").unwrap();
            (v["name"].as_str().unwrap(), kind.as_str())
        })
        .collect();
    assert_eq!(
        volumes,
        [("rootdisk", "containerDisk"), ("cloudinitdisk", "cloudInitNoCloud")]
    );
    let disks: Vec<&str> = domain["devices"]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(disks, ["rootdisk", "cloudinitdisk"]);
}

/// NOTES.txt as `helm install --dry-run=client` prints it (no cluster needed).
fn notes(values: Option<&str>) -> String {
    let chart = chart_dir();
    let chart = chart.to_string_lossy();
    let mut args = vec![
        "install",
        "hbm",
        chart.as_ref(),
        "--dry-run=client",
        "--namespace",
        "gpu",
    ];
    if let Some(v) = values {
        args.extend(["-f", v]);
    }
    let out = helm::run(&args).unwrap();
    let start = out.find("\nNOTES:\n").expect("helm prints NOTES") + "\nNOTES:\n".len();
    out[start..].to_string()
}

#[test]
fn notes_say_how_to_list_resources_wire_kubevirt_and_annotate_a_vm() {
    let text = notes(None);
    let sidecars = wiring(&Rendered::new("hbm", "gpu", None), "hbm-hbm-passthrough")["hook-sidecars.json"].clone();
    for line in [
        "kubectl get nodes -l hbm-passthrough.dev/hbm.present=true -o custom-columns='NODE:.metadata.name,hbm-passthrough.dev/mi300x:.status.allocatable.hbm-passthrough\\.dev/mi300x,hbm-passthrough.dev/gh200:.status.allocatable.hbm-passthrough\\.dev/gh200'",
        "kubectl -n gpu logs ds/hbm-hbm-passthrough",
        "kubectl -n gpu get configmap hbm-hbm-passthrough-kubevirt -o jsonpath='{.data.kubevirt-cr\\.patch\\.json}' > hbm-kubevirt.patch.json",
        "kubectl -n kubevirt patch kubevirt kubevirt --type=json --patch-file hbm-kubevirt.patch.json",
        &format!("hooks.kubevirt.io/hookSidecars: '{sidecars}'"),
        "hbm-passthrough.dev/policy: auto        # auto | required | off",
        "spec.template.spec.domain.devices.gpus: [{name: gpu0, deviceName: hbm-passthrough.dev/mi300x}]",
        "The sidecar's default dialect (auto) works for any boot method (container disks, DataVolumes);",
        "hbm-passthrough.dev/<resource with '/' as '_'>.kubevirt-usable-regions counts the usable regions; a region",
        "reachable only through a devdax device needs, on the node: daxctl reconfigure-device --mode=system-ram daxX.Y",
    ] {
        assert!(
            text.lines().any(|l| l.trim() == line),
            "NOTES lack the line\n  {line}\nNOTES:\n{text}"
        );
    }
    // Without wiring and rules: no KubeVirt steps, and a listing that needs no resource names.
    let text = notes(Some(OFF));
    assert!(
        !text.contains("hookSidecars") && !text.contains("patch kubevirt"),
        "{text}"
    );
    assert!(text.contains("{.status.allocatable}"), "{text}");
    // A custom label domain is what the NOTES select on.
    let text = notes(Some(FULL));
    assert!(
        text.contains("kubectl get nodes -l gpu.example.invalid/hbm.present=true"),
        "{text}"
    );
    // Another default dialect is named as such.
    assert!(
        text.lines()
            .any(|l| l.trim() == "The sidecar's default dialect is sp-mem (auto would work for any boot method);"),
        "{text}"
    );
    // In mode dra: the selector for GPUs whose HBM KubeVirt can use, in the driver's domain.
    let text = notes(Some("charts/hbm-passthrough/ci/dra-values.yaml"));
    let selector = r#"selectors: [{cel: {expression: 'device.attributes["gpu.example.invalid"].kubevirtUsable'}}]"#;
    assert!(text.lines().any(|l| l.trim() == selector), "{text}");
}

/// Every property path the schema defines (`a/b`, `a/[]/c` inside array items), `global` aside.
fn schema_paths(node: &Value, prefix: &str, out: &mut Vec<String>) {
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (key, sub) in props {
            if prefix.is_empty() && key == "global" {
                continue;
            }
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}/{key}")
            };
            out.push(path.clone());
            schema_paths(sub, &path, out);
            if let Some(items) = sub.get("items") {
                schema_paths(items, &format!("{path}/[]"), out);
            }
        }
    }
}

/// Every key path a values document sets (array elements merged under `[]`).
fn value_paths(node: &Value, prefix: &str, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            for (key, sub) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}/{key}")
                };
                out.push(path.clone());
                value_paths(sub, &path, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                value_paths(item, &format!("{prefix}/[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn full_values_set_every_option_the_schema_knows() {
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap()).unwrap();
    let mut known = Vec::new();
    schema_paths(&schema, "", &mut known);
    let mut set = Vec::new();
    value_paths(&values_file(FULL), "", &mut set);
    let missing: Vec<&String> = known.iter().filter(|p| !set.contains(p)).collect();
    assert!(
        missing.is_empty(),
        "ci/full-values.yaml leaves these options unset: {missing:?}"
    );
    // And the defaults document every top-level option.
    let mut defaults = Vec::new();
    value_paths(&values_file("charts/hbm-passthrough/values.yaml"), "", &mut defaults);
    let undocumented: Vec<&String> = known
        .iter()
        .filter(|p| !p.contains('/') && !defaults.contains(p))
        .collect();
    assert!(undocumented.is_empty(), "values.yaml lacks: {undocumented:?}");
}
