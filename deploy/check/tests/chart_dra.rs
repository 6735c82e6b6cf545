#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The chart in `mode: dra`, rendered by a real helm: the DRA driver's DaemonSet (flags, host
//! directories), RBAC for ResourceSlices and ResourceClaims, the DeviceClass, the admission
//! policy that keeps a driver pod to its own node's slices, the KubeVirt wiring without
//! permittedHostDevices; and the schema rejecting bad values of the new options.

use deploy_check::manifest::{self, Object};
use deploy_check::{helm, roundtrip};
use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::rbac::v1::ClusterRole;
use serde_json::{Value, json};

const DRA: &str = "charts/hbm-passthrough/ci/dra-values.yaml";

fn render(extra: &[&str]) -> Vec<Object> {
    let text = helm::template("hbm", "gpu", extra).unwrap_or_else(|e| panic!("{e}"));
    manifest::parse(&text).unwrap_or_else(|e| panic!("{e}"))
}

fn one<'a>(objects: &'a [Object], kind: &str) -> &'a Object {
    let found: Vec<&Object> = objects.iter().filter(|o| o.kind == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

fn ids(objects: &[Object]) -> Vec<String> {
    let mut ids: Vec<String> = objects.iter().map(Object::id).collect();
    ids.sort();
    ids
}

#[test]
fn mode_dra_renders_the_driver_its_class_rbac_and_admission_policy() {
    let objects = render(&["--set", "mode=dra"]);
    assert_eq!(
        ids(&objects),
        [
            "ClusterRole/hbm-hbm-passthrough",
            "ClusterRoleBinding/hbm-hbm-passthrough",
            "ConfigMap/hbm-hbm-passthrough-config",
            "ConfigMap/hbm-hbm-passthrough-kubevirt",
            "DaemonSet/hbm-hbm-passthrough",
            "DeviceClass/hbm.passthrough.dev",
            "ServiceAccount/hbm-hbm-passthrough",
            "ValidatingAdmissionPolicy/hbm-hbm-passthrough-resourceslices",
            "ValidatingAdmissionPolicyBinding/hbm-hbm-passthrough-resourceslices",
        ]
    );
    let class = one(&objects, "DeviceClass");
    assert_eq!(class.api_version, "resource.k8s.io/v1");
    assert_eq!(
        class.value["spec"],
        json!({"selectors": [{"cel": {"expression": "device.driver == \"hbm.passthrough.dev\""}}]})
    );

    let role: ClusterRole = roundtrip::typed("ClusterRole", &one(&objects, "ClusterRole").value).unwrap();
    let rules: Vec<(Vec<String>, Vec<String>, Vec<String>)> = role
        .rules
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.api_groups.unwrap_or_default(),
                r.resources.unwrap_or_default(),
                r.verbs,
            )
        })
        .collect();
    let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rules,
        [
            (
                strings(&["resource.k8s.io"]),
                strings(&["resourceslices"]),
                strings(&["get", "list", "watch", "create", "update", "delete"])
            ),
            (
                strings(&["resource.k8s.io"]),
                strings(&["resourceclaims"]),
                strings(&["get"])
            ),
            (strings(&[""]), strings(&["nodes"]), strings(&["get"])),
        ]
    );

    let policy: ValidatingAdmissionPolicy = roundtrip::typed(
        "ValidatingAdmissionPolicy",
        &one(&objects, "ValidatingAdmissionPolicy").value,
    )
    .unwrap();
    let spec = policy.spec.unwrap();
    assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
    let conditions = spec.match_conditions.unwrap();
    assert_eq!(
        conditions[0].expression,
        "request.userInfo.username == \"system:serviceaccount:gpu:hbm-hbm-passthrough\""
    );
    let rule = &spec.match_constraints.unwrap().resource_rules.unwrap()[0];
    assert_eq!(rule.resources.as_deref(), Some(&strings(&["resourceslices"])[..]));
    assert_eq!(
        rule.operations.as_deref(),
        Some(&strings(&["CREATE", "UPDATE", "DELETE"])[..])
    );
    let variables: Vec<(String, String)> = spec
        .variables
        .unwrap()
        .into_iter()
        .map(|v| (v.name, v.expression))
        .collect();
    assert_eq!(
        variables,
        [
            (
                "userNodeName".to_string(),
                "request.userInfo.extra[?'authentication.kubernetes.io/node-name'][0].orValue('')".to_string()
            ),
            (
                "objectNodeName".to_string(),
                "(request.operation == 'DELETE' ? oldObject : object).spec.?nodeName.orValue('')".to_string()
            ),
        ]
    );
    let validations: Vec<String> = spec.validations.unwrap().into_iter().map(|v| v.expression).collect();
    assert_eq!(
        validations,
        [
            "variables.userNodeName != ''",
            "variables.userNodeName == variables.objectNodeName"
        ]
    );
    let binding: ValidatingAdmissionPolicyBinding = roundtrip::typed(
        "ValidatingAdmissionPolicyBinding",
        &one(&objects, "ValidatingAdmissionPolicyBinding").value,
    )
    .unwrap();
    let binding = binding.spec.unwrap();
    assert_eq!(
        binding.policy_name.as_deref(),
        Some("hbm-hbm-passthrough-resourceslices")
    );
    assert_eq!(binding.validation_actions, Some(strings(&["Deny"])));
}

fn driver_container(objects: &[Object]) -> (k8s_openapi::api::core::v1::Container, Vec<(String, String, bool)>) {
    let daemonset: DaemonSet = roundtrip::typed("DaemonSet", &one(objects, "DaemonSet").value).unwrap();
    let pod = daemonset.spec.unwrap().template.spec.unwrap();
    let host_paths: Vec<(String, String)> = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| Some((v.name, v.host_path?.path)))
        .collect();
    let container = pod.containers.into_iter().next().unwrap();
    let mounts = container
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| {
            let host = host_paths.iter().find(|(name, _)| *name == m.name)?.1.clone();
            Some((host, m.mount_path, m.read_only.unwrap_or(false)))
        })
        .collect();
    (container, mounts)
}

#[test]
fn the_driver_gets_its_flags_and_exactly_the_host_directories_it_needs() {
    let objects = render(&["-f", DRA]);
    let (container, mounts) = driver_container(&objects);
    assert_eq!(container.name, "dra-driver");
    assert_eq!(
        container.image.as_deref(),
        Some("registry.example.invalid/gpu/hbm-dra-driver:0.1.0-rc1")
    );
    assert_eq!(
        container.args.unwrap(),
        [
            "run",
            "--driver-name=gpu.example.invalid",
            "--kubelet-root-dir=/var/lib/k0s/kubelet",
            "--sysfs-root=/host",
            "--dev-root=/host/dev",
            "--cdi-root=/etc/cdi",
            "--config=/etc/hbm-passthrough/plugin.yaml",
            "--health-poll-interval=2s",
        ]
    );
    let mount = |host: &str, path: &str, read_only: bool| (host.to_string(), path.to_string(), read_only);
    assert_eq!(
        mounts,
        [
            mount(
                "/var/lib/k0s/kubelet/plugins_registry",
                "/var/lib/k0s/kubelet/plugins_registry",
                false
            ),
            mount("/var/lib/k0s/kubelet/plugins", "/var/lib/k0s/kubelet/plugins", false),
            mount("/etc/cdi", "/etc/cdi", false),
            mount("/sys", "/host/sys", true),
            mount("/dev", "/host/dev", true),
        ]
    );
    let security = container.security_context.unwrap();
    assert_eq!(security.privileged, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let class = one(&objects, "DeviceClass");
    assert_eq!(class.name, "hbm-gpu");
    assert_eq!(
        class.value["spec"]["selectors"][0]["cel"]["expression"],
        "device.driver == \"gpu.example.invalid\""
    );
    let policy = one(&objects, "ValidatingAdmissionPolicy");
    assert_eq!(
        policy.value["spec"]["matchConditions"][0]["expression"],
        "request.userInfo.username == \"system:serviceaccount:gpu:hbm-dra-sa\""
    );
}

#[test]
fn with_dra_the_kubevirt_wiring_enables_gpus_with_dra_and_permits_no_host_devices() {
    let objects = render(&["--set", "mode=dra"]);
    let wiring = objects.iter().find(|o| o.name.ends_with("-kubevirt")).unwrap();
    let patch: Value = serde_json::from_str(wiring.value["data"]["kubevirt-cr.patch.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        patch,
        json!([
            {"op": "add", "path": "/spec/configuration/developerConfiguration/featureGates/-", "value": "Sidecar"},
            {"op": "add", "path": "/spec/configuration/developerConfiguration/featureGates/-", "value": "GPUsWithDRA"}
        ])
    );
    let fragment: Value =
        serde_yaml_ng::from_str(wiring.value["data"]["kubevirt-configuration.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(
        fragment["developerConfiguration"]["featureGates"],
        json!(["Sidecar", "GPUsWithDRA"])
    );
    assert_eq!(fragment["permittedHostDevices"]["pciHostDevices"], json!([]));
    // The switches turn the class and the policy off; cleanup adds --cleanup.
    let objects = render(&[
        "--set",
        "mode=dra",
        "--set",
        "dra.deviceClass.create=false",
        "--set",
        "dra.admissionPolicy.create=false",
    ]);
    assert!(
        objects
            .iter()
            .all(|o| o.kind != "DeviceClass" && !o.kind.starts_with("ValidatingAdmission"))
    );
    let (container, _) = driver_container(&objects);
    assert_eq!(container.args.unwrap().last().map(String::as_str), Some("--cleanup"));
}

#[test]
fn the_schema_rejects_bad_dra_values_naming_the_field() {
    for (set, field) in [
        ("mode=dra-driver", "/mode"),
        ("dra.cdiRoot=var/run/cdi", "/dra/cdiRoot"),
        ("dra.driverName=Bad_Name", "/dra/driverName"),
        ("dra.deviceClass.name=Bad_Name", "/dra/deviceClass/name"),
        ("dra.cleanup=true", "cleanup"),
    ] {
        let error = helm::template("hbm", "gpu", &["--set", set])
            .expect_err(set)
            .to_string();
        assert!(
            error.contains("values don't meet the specifications of the schema") && error.contains(field),
            "--set {set}: {error}"
        );
    }
    for values in [&["-f", DRA][..], &["--set", "mode=dra"][..]] {
        let chart = deploy_check::chart_dir();
        let mut args = vec!["lint", "--strict", chart.to_str().unwrap()];
        args.extend_from_slice(values);
        helm::run(&args).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn the_dra_examples_fit_the_chart_and_each_other() {
    let root = deploy_check::workspace_root().join("deploy/dra");
    let template: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(root.join("resourceclaimtemplate.yaml")).unwrap()).unwrap();
    let vmi: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(root.join("vmi-hbm.yaml")).unwrap()).unwrap();
    assert_eq!(
        (template["apiVersion"].as_str(), template["kind"].as_str()),
        (Some("resource.k8s.io/v1"), Some("ResourceClaimTemplate"))
    );
    let request = &template["spec"]["spec"]["devices"]["requests"][0];
    let objects = render(&["--set", "mode=dra"]);
    assert_eq!(
        request["exactly"]["deviceClassName"].as_str(),
        Some(one(&objects, "DeviceClass").name.as_str())
    );
    assert_eq!(request["exactly"]["count"], 1);
    assert_eq!(
        request["exactly"]["selectors"][0]["cel"]["expression"],
        "device.capacity[\"hbm.passthrough.dev\"].hbm.compareTo(quantity(\"128Gi\")) >= 0"
    );
    // Only GPUs whose HBM virt-launcher can use (the driver's kubevirtUsable attribute).
    assert_eq!(
        request["exactly"]["selectors"][1]["cel"]["expression"],
        "device.attributes[\"hbm.passthrough.dev\"].kubevirtUsable"
    );
    assert_eq!(request["exactly"]["selectors"].as_array().unwrap().len(), 2);
    // The VMI takes the GPU from a claim made from that template, by request name.
    assert_eq!(
        (vmi["apiVersion"].as_str(), vmi["kind"].as_str()),
        (Some("kubevirt.io/v1"), Some("VirtualMachineInstance"))
    );
    let claim = &vmi["spec"]["resourceClaims"][0];
    assert_eq!(claim["resourceClaimTemplateName"], template["metadata"]["name"]);
    let gpu = &vmi["spec"]["domain"]["devices"]["gpus"][0];
    assert_eq!(gpu["claimName"], claim["name"]);
    assert_eq!(gpu["requestName"], request["name"]);
    assert!(
        gpu.get("deviceName").is_none(),
        "with DRA the GPU names no device-plugin resource"
    );
    // Its sidecar annotation is the chart's.
    let wiring = objects.iter().find(|o| o.name.ends_with("-kubevirt")).unwrap();
    let expected: Value = serde_json::from_str(wiring.value["data"]["hook-sidecars.json"].as_str().unwrap()).unwrap();
    let actual: Value = serde_json::from_str(
        vmi["metadata"]["annotations"]["hooks.kubevirt.io/hookSidecars"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(actual, expected);
    assert_eq!(vmi["metadata"]["annotations"]["hbm-passthrough.dev/policy"], "required");
    // A disk-booted guest with the defaults: no dialect annotation, no direct kernel boot.
    assert!(
        vmi["metadata"]["annotations"]
            .get("hbm-passthrough.dev/dialect")
            .is_none()
    );
    assert!(vmi["spec"]["domain"].get("firmware").is_none());
    assert!(vmi["spec"]["volumes"][0]["containerDisk"]["image"].is_string());
}

#[test]
fn the_plain_dra_manifest_under_deploy_equals_the_chart_rendering() {
    // deploy/kubernetes/hbm-passthrough-dra.yaml = header comment + `helm template` in mode dra
    // (regenerate with deploy/render.sh).
    let path = deploy_check::workspace_root().join("deploy/kubernetes/hbm-passthrough-dra.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let (header, body) = manifest::split_generated(&text).expect("a comment header, then the rendering");
    assert!(header.contains("deploy/render.sh"));
    let rendered = helm::template("hbm-passthrough", "kube-system", &["--set", "mode=dra"]).unwrap();
    assert!(
        body == rendered,
        "deploy/kubernetes/hbm-passthrough-dra.yaml drifted from the chart: run deploy/render.sh"
    );
}
