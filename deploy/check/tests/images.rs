//! The two container images, built offline by `deploy/images.sh` and run the way they run in a
//! cluster: the device plugin with exactly the DaemonSet's security context, args and mounts (read
//! from `deploy/kubernetes/hbm-passthrough.yaml`, which a chart test keeps equal to the chart),
//! against a kubelet stand-in on the host side of the mounted socket directories; the hook
//! sidecar with the KubeVirt wiring's args and the hooks directory mounted, as virt-launcher
//! mounts it, answering Info and OnDefineDomain over its socket (on a devdax host and on the same
//! host with its HBM onlined).
//!
//! The fixture host has two MI300X-like GPUs (0000:41:00.0 and 0000:c1:00.0, vfio-pci, IOMMU
//! groups 24 and 56), each owning a 64 GiB SPM HBM node reachable through a dax device.
//! Needs root, podman and runc (scripts/install-deps installs them). The images are built once
//! per test process (a release build of the static binaries: minutes on a cold cache).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::images::{ImageRefs, built_images};
use common::podman::{Container, run_once};
use common::{chart, kubelet, sidecar_client};

const GIB: u64 = 1 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_image_registers_lists_allocates_and_stops_cleanly_under_the_charts_security_context() {
    let ImageRefs { plugin, .. } = built_images();
    let host = kubelet::HostDirs::new();
    let daemonset = chart::plugin_daemonset();
    let run = chart::podman_run_args(&daemonset, &host);
    assert!(run.flags.contains(&"--read-only".to_string()), "{:?}", run.flags);
    assert!(run.flags.contains(&"--cap-drop=ALL".to_string()), "{:?}", run.flags);
    assert!(
        run.flags.contains(&"--security-opt=no-new-privileges".to_string()),
        "{:?}",
        run.flags
    );
    let container = Container::start("hbm-image-plugin", &plugin, &run.flags, &run.args);

    let registered = kubelet::register_next_plugin(&host.registry, &container).await;
    assert_eq!(registered.info.r#type, "DevicePlugin");
    assert_eq!(registered.info.name, "hbm-passthrough.dev/mi300x");
    assert_eq!(registered.info.supported_versions, ["v1beta1"]);
    assert_eq!(
        registered.info.endpoint,
        "/var/lib/kubelet/plugins_registry/hbm-hbm-passthrough.dev_mi300x.sock"
    );

    let mut client = registered.client;
    let listed = kubelet::first_list(&mut client, &container).await;
    assert_eq!(
        listed,
        [
            ("0000:41:00.0".to_string(), "Healthy".to_string()),
            ("0000:c1:00.0".to_string(), "Healthy".to_string())
        ]
    );
    let allocated = kubelet::allocate(&mut client, "0000:41:00.0", &container).await;
    assert_eq!(allocated.envs.len(), 2, "{:?}", allocated.envs);
    assert_eq!(
        allocated.envs["PCI_RESOURCE_HBM-PASSTHROUGH_DEV_MI300X"],
        "0000:41:00.0"
    );
    assert_eq!(
        allocated.envs["HBM_REGIONS_HBM-PASSTHROUGH_DEV_MI300X"],
        format!("0000:41:00.0,2,{},/dev/dax0.0", 64 * GIB)
    );
    let device_paths: Vec<(&str, &str, &str)> = allocated
        .devices
        .iter()
        .map(|d| (d.container_path.as_str(), d.host_path.as_str(), d.permissions.as_str()))
        .collect();
    assert_eq!(
        device_paths,
        [
            ("/dev/vfio/vfio", "/dev/vfio/vfio", "rw"),
            ("/dev/vfio/24", "/dev/vfio/24", "rw"),
            ("/dev/dax0.0", "/dev/dax0.0", "rw"),
        ]
    );

    let exit = container.stop();
    assert_eq!(exit, 0, "plugin exit status on podman stop; log:\n{}", container.logs());
    assert!(
        !host.registry.join("hbm-hbm-passthrough.dev_mi300x.sock").exists(),
        "the plugin's socket is left behind after stop"
    );
}

/// The sidecar image, started as the chart's KubeVirt wiring starts it (its args, the hooks
/// directory mounted as virt-launcher mounts it, the read-only root) on `host_root`: Info, then
/// the answer to OnDefineDomain of the sample domain, then a clean stop. Returns the answer and
/// the container's log.
async fn sidecar_answer(label: &str, host_root: &Path) -> (String, String) {
    let ImageRefs { sidecar, .. } = built_images();
    let hooks = tempfile::tempdir().unwrap();
    common::make_world_writable(hooks.path());
    let mut args = chart::sidecar_annotation_args();
    args.extend(["--sysfs-root".to_string(), "/host".to_string()]);
    let flags = vec![
        "--read-only".to_string(),
        format!("--volume={}:/var/run/kubevirt-hooks", hooks.path().display()),
        format!("--volume={}:/host:ro", host_root.display()),
    ];
    let container = Container::start(label, &sidecar, &flags, &args);

    let socket = hooks.path().join("hbm-passthrough.sock");
    let mut client = sidecar_client::connect(&socket, &container).await;
    let info = sidecar_client::info(&mut client).await;
    assert_eq!(info.name, "hbm-passthrough");
    assert_eq!(info.versions, ["v1alpha1", "v1alpha2", "v1alpha3"]);
    assert_eq!(
        info.hook_points
            .iter()
            .map(|p| (p.name.as_str(), p.priority))
            .collect::<Vec<_>>(),
        [("OnDefineDomain", 0)]
    );
    let answer = sidecar_client::on_define_domain(&socket, &sample_domain(), &container).await;
    let logs = container.logs();
    let exit = container.stop();
    assert_eq!(exit, 0, "sidecar exit status on podman stop; log:\n{logs}");
    assert!(
        !Path::new(&socket).exists(),
        "the sidecar's socket is left behind after stop"
    );
    (answer, logs)
}

fn sample_domain() -> String {
    std::fs::read_to_string(deploy_check::workspace_root().join("examples/domains/gpu-vm.xml")).unwrap()
}

/// On the bundled sample host the HBM is reachable only through dax devices, which
/// virt-launcher cannot map: with the chart's defaults (policy auto) the sidecar answers the
/// definition unchanged and logs the host-side fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_image_leaves_a_devdax_hosts_domain_alone_and_logs_the_fix() {
    let sample_host = deploy_check::workspace_root().join("examples/hosts/seed-amd");
    let (answer, logs) = sidecar_answer("hbm-image-sidecar-devdax", &sample_host).await;
    assert_eq!(
        answer,
        sample_domain(),
        "a devdax-only region gives no cell under KubeVirt"
    );
    assert!(
        logs.contains("daxctl reconfigure-device --mode=system-ram dax1.0"),
        "the log names the fix:\n{logs}"
    );
}

/// The same host after `daxctl reconfigure-device --mode=system-ram dax1.0`: the sidecar's
/// answer is the rewriter's output for the KubeVirt defaults (cell bound by node, no emulator
/// change, no adapter instructions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_image_binds_an_online_hosts_hbm_by_node() {
    let online = tempfile::tempdir().unwrap();
    topology::fixture::seed_amd_2gpu()
        .dax_in_system_ram("dax1.0", 3, 64 * GIB)
        .write_to(online.path())
        .unwrap();
    std::fs::set_permissions(online.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (answer, _logs) = sidecar_answer("hbm-image-sidecar-online", online.path()).await;

    let inventory = topology::discover(online.path(), &topology::DiscoveryConfig::default()).unwrap();
    let options = hbm_rewrite::RewriteOptions {
        adapter_path: None,
        ..hbm_rewrite::RewriteOptions::default()
    };
    let expected = hbm_rewrite::rewrite(&sample_domain(), &inventory, &options).unwrap();
    assert!(expected.changed);
    assert_eq!(
        answer, expected.xml,
        "the sidecar's answer is the rewriter's for KubeVirt"
    );
    assert!(
        answer.contains("<memnode cellid='1' mode='strict' nodeset='3'/>"),
        "{answer}"
    );
    assert!(
        answer.contains("<emulator>/usr/bin/qemu-system-x86_64</emulator>"),
        "{answer}"
    );
    assert!(!answer.contains("HBM_QEMU_INSTRUCTIONS"), "{answer}");
}

/// The DRA driver's image holds a static binary that runs under the DRA DaemonSet's security
/// context (read from `deploy/kubernetes/hbm-passthrough-dra.yaml`). Its registration, slices and
/// prepare calls are tested against stand-ins in `dra/tests/`.
#[test]
fn dra_image_runs_its_binary_under_the_dra_daemonsets_security_context() {
    let ImageRefs { dra, .. } = built_images();
    let daemonset = chart::dra_daemonset();
    let flags = chart::security_flags_of(&daemonset);
    assert!(flags.contains(&"--read-only".to_string()), "{flags:?}");
    assert!(flags.contains(&"--cap-drop=ALL".to_string()), "{flags:?}");
    let output = run_once(&dra, &flags, &["--version".to_string()]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("hbm-dra-driver {}", env!("CARGO_PKG_VERSION"))
    );
}
