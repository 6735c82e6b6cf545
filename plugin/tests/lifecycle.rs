//! Config hot reload (ConfigMap symlink swap), plugin-watcher mode, metrics/health endpoints and
//! bad inputs, against the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{
    FakeKubelet, PluginProcess, Serving, TestHost, Watch, exit_and_last_line, guarded, health, http_get, wait_for_file,
};
use proto::deviceplugin::v1beta1::Empty;
use proto::pluginregistration::registration_client::RegistrationClient;
use proto::pluginregistration::{InfoRequest, RegistrationStatus};
use topology::fixture;

/// Writes `text` as a ConfigMap volume does: a timestamped directory, `..data` pointing at it,
/// `plugin.yaml -> ..data/plugin.yaml`; a later call swaps `..data` atomically.
fn configmap_write(dir: &Path, version: u32, text: &str) {
    let data = dir.join(format!("..2026_11_27_{version:02}"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("plugin.yaml"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(data.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if !dir.join("plugin.yaml").exists() {
        std::os::unix::fs::symlink("..data/plugin.yaml", dir.join("plugin.yaml")).unwrap();
    }
    if version > 1 {
        let old = dir.join(format!("..2026_11_27_{:02}", version - 1));
        std::fs::remove_dir_all(old).unwrap();
    }
}

async fn wait_for_gone(path: &Path) {
    guarded(&format!("{} to go", path.display()), async {
        while path.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
}

const RULE_74A1: &str =
    "resources:\n  - name: example.com/mi300x\n    selector:\n      vendor: \"1002\"\n      device: \"74a1\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_adds_and_removes_resources_and_keeps_the_running_config_on_bad_input() {
    // Two GPU models: 1002:74a1 at 41:00.0, 1002:74a5 at c1:00.0.
    let host = TestHost::new(&fixture::seed_amd_2gpu().gpu(
        "0000:c1:00.0",
        0x1002,
        0x74a5,
        Some("vfio-pci"),
        Some(56),
        Some(3),
    ));
    let config_dir = host.dir.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    configmap_write(&config_dir, 1, RULE_74A1);
    let mut kubelet = FakeKubelet::start(&host.device_plugins);
    let metrics = common::free_addr();
    let mut args = host.args();
    args.retain(|a| !a.starts_with("--health-poll-interval"));
    // Reload must come from inotify on the config directory, not from the poll.
    args.push("--health-poll-interval=60s".into());
    args.push(format!("--config={}", config_dir.join("plugin.yaml").display()));
    args.push(format!("--metrics-addr={metrics}"));
    let _plugin = PluginProcess::spawn(&args, host.dir.path().join("plugin.log"));

    let mut names = vec![
        kubelet.next_registration().await.resource_name,
        kubelet.next_registration().await.resource_name,
    ];
    names.sort();
    assert_eq!(names, ["amd.com/gpu-74a5-hbm", "example.com/mi300x"]);
    assert_eq!(
        host.sockets(&host.device_plugins),
        [
            "hbm-amd.com_gpu-74a5-hbm.sock",
            "hbm-example.com_mi300x.sock",
            "kubelet.sock"
        ]
    );

    // Add a rule for the second model: a new resource appears, the default-named one goes.
    let both = format!(
        "{RULE_74A1}  - name: example.com/mi300a\n    selector:\n      vendor: \"0x1002\"\n      devices: [\"74A5\"]\n"
    );
    configmap_write(&config_dir, 2, &both);
    let reg = kubelet.next_registration().await;
    assert_eq!(reg.resource_name, "example.com/mi300a");
    let mut client = kubelet.dial(&reg.endpoint).await;
    let list = common::Watch::open(&mut client).await.next().await;
    assert_eq!(
        common::health(&list),
        [("0000:c1:00.0".to_string(), "Healthy".to_string())]
    );
    wait_for_gone(&host.device_plugins.join("hbm-amd.com_gpu-74a5-hbm.sock")).await;
    assert_eq!(
        host.sockets(&host.device_plugins),
        [
            "hbm-example.com_mi300a.sock",
            "hbm-example.com_mi300x.sock",
            "kubelet.sock"
        ]
    );

    // An invalid config is rejected; the running one stays.
    configmap_write(
        &config_dir,
        3,
        "resources:\n  - name: mi300x\n    selector: {vendor: \"1002\"}\n",
    );
    let reload_error = "hbm_plugin_config_reloads_total{result=\"error\"} 1";
    guarded("the rejected reload to be counted", async {
        while !http_get(metrics, "/metrics").await.1.lines().any(|l| l == reload_error) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        host.sockets(&host.device_plugins),
        [
            "hbm-example.com_mi300a.sock",
            "hbm-example.com_mi300x.sock",
            "kubelet.sock"
        ]
    );
    let list = common::Watch::open(&mut client).await.next().await;
    assert_eq!(list.devices.len(), 1);

    // Back to one rule: example.com/mi300a is removed, the default name returns.
    configmap_write(&config_dir, 4, RULE_74A1);
    let reg = kubelet.next_registration().await;
    assert_eq!(reg.resource_name, "amd.com/gpu-74a5-hbm");
    wait_for_gone(&host.device_plugins.join("hbm-example.com_mi300a.sock")).await;
    assert_eq!(
        host.sockets(&host.device_plugins),
        [
            "hbm-amd.com_gpu-74a5-hbm.sock",
            "hbm-example.com_mi300x.sock",
            "kubelet.sock"
        ]
    );
    let text = http_get(metrics, "/metrics").await.1;
    assert!(
        text.lines()
            .any(|l| l == "hbm_plugin_config_reloads_total{result=\"ok\"} 2"),
        "{text}"
    );
    assert!(kubelet.pending_registrations().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_watcher_mode_serves_getinfo_and_the_device_plugin_on_one_socket() {
    let host = TestHost::new(&fixture::seed_amd_2gpu());
    std::fs::create_dir_all(&host.registry).unwrap();
    let metrics = common::free_addr();
    let mut args = host.args();
    // auto: the plugins registry directory exists, so plugin-watcher is chosen.
    args.push("--registration=auto".into());
    args.push(format!("--metrics-addr={metrics}"));
    let mut plugin = PluginProcess::spawn(&args, host.dir.path().join("plugin.log"));
    let socket = host.registry.join("hbm-amd.com_gpu-74a1-hbm.sock");
    wait_for_file(&socket).await;
    assert_eq!(host.sockets(&host.device_plugins), Vec::<String>::new());
    assert_eq!(http_get(metrics, "/readyz").await.0, 503);

    let channel = common::dial_fresh(&socket).await;
    let mut registration = RegistrationClient::new(channel.clone());
    let info = registration.get_info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.r#type, "DevicePlugin");
    assert_eq!(info.name, "amd.com/gpu-74a1-hbm");
    assert_eq!(info.endpoint, socket.display().to_string());
    assert_eq!(info.supported_versions, ["v1beta1"]);
    registration
        .notify_registration_status(RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await
        .unwrap();
    guarded("readyz 200", async {
        while http_get(metrics, "/readyz").await.0 != 200 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;

    let mut client = common::dial_plugin(Path::new(&info.endpoint)).await;
    let options = client.get_device_plugin_options(Empty {}).await.unwrap().into_inner();
    assert!(options.get_preferred_allocation_available);
    let list = common::Watch::open(&mut client).await.next().await;
    assert_eq!(list.devices.len(), 2);

    // The kubelet's plugin watcher lost the socket (e.g. directory wiped): served again.
    std::fs::remove_file(&socket).unwrap();
    wait_for_file(&socket).await;
    let channel = common::dial_fresh(&socket).await;
    let info = RegistrationClient::new(channel)
        .get_info(InfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "amd.com/gpu-74a1-hbm");

    plugin.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(plugin.wait().await, Some(0));
    assert!(!socket.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_socket_appearing_late_is_retried_counted_and_then_registered() {
    let host = TestHost::new(&fixture::seed_amd_2gpu());
    let metrics = common::free_addr();
    let mut args = host.args();
    args.push(format!("--metrics-addr={metrics}"));
    args.push("--registration=kubelet-socket".into());
    let plugin = PluginProcess::spawn(&args, host.dir.path().join("plugin.log"));
    let failed = "hbm_plugin_registrations_total{resource=\"amd.com/gpu-74a1-hbm\",result=\"error\"}";
    guarded("failed registrations to be counted", async {
        loop {
            let text = http_get(metrics, "/metrics").await.1;
            let count = text
                .lines()
                .find_map(|l| l.strip_prefix(failed))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            if count >= 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        http_get(metrics, "/readyz").await,
        (503, "not registered with the kubelet yet\n".to_string())
    );
    assert_eq!(http_get(metrics, "/healthz").await, (200, "ok\n".to_string()));
    assert!(plugin.log_text().contains("registration failed"));

    let mut kubelet = FakeKubelet::start(&host.device_plugins);
    let reg = kubelet.next_registration().await;
    assert_eq!(reg.resource_name, "amd.com/gpu-74a1-hbm");
    guarded("readyz 200", async {
        while http_get(metrics, "/readyz").await.0 != 200 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let text = http_get(metrics, "/metrics").await.1;
    for line in [
        "hbm_plugin_devices{resource=\"amd.com/gpu-74a1-hbm\",health=\"Healthy\"} 2",
        "hbm_plugin_devices{resource=\"amd.com/gpu-74a1-hbm\",health=\"Unhealthy\"} 0",
        "hbm_plugin_registrations_total{resource=\"amd.com/gpu-74a1-hbm\",result=\"ok\"} 1",
        "hbm_plugin_kubelet_restarts_total 0",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line} in {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_and_bad_flags_exit_2_with_one_clear_line() {
    let host = TestHost::new(&fixture::seed_amd());
    let config = host.dir.path().join("plugin.yaml");
    for (text, want) in [
        (
            "resources:\n  - name: mi300x\n    selector: {vendor: \"1002\"}\n",
            format!(
                "hbm-device-plugin: config file {}: resource rule 0 (\"mi300x\"): resource name \"mi300x\" must be <domain>/<name>, e.g. amd.com/mi300x-hbm",
                config.display()
            ),
        ),
        (
            "resources:\n  - name: a.io/b\n    selector: {vendor: \"1002\"}\n    idPrefix: pppppppppppppppppppppppppppppppppppppppppppppppppppp\n",
            format!(
                "hbm-device-plugin: config file {}: resource rule 0 (\"a.io/b\"): idPrefix \"pppppppppppppppppppppppppppppppppppppppppppppppppppp\" makes device IDs longer than 63 characters",
                config.display()
            ),
        ),
    ] {
        std::fs::write(&config, text).unwrap();
        let mut args = host.args();
        args.push(format!("--config={}", config.display()));
        let mut plugin = PluginProcess::spawn(&args, host.dir.path().join("bad.log"));
        assert_eq!(plugin.wait().await, Some(2));
        assert_eq!(plugin.log_text().trim_end(), want);
        assert_eq!(
            host.sockets(&host.device_plugins),
            Vec::<String>::new(),
            "nothing half-started"
        );
    }
    let mut args = host.args();
    args.retain(|a| !a.starts_with("--sysfs-root"));
    let missing = host.dir.path().join("nothing-here");
    args.push(format!("--sysfs-root={}", missing.display()));
    let mut plugin = PluginProcess::spawn(&args, host.dir.path().join("bad.log"));
    assert_eq!(plugin.wait().await, Some(2));
    assert_eq!(
        plugin.log_text().trim_end(),
        format!(
            "hbm-device-plugin: --sysfs-root {} holds no sys/ directory (mount the host's /sys at <root>/sys and pass <root>)",
            missing.display()
        )
    );

    let mut args = host.args();
    args.retain(|a| !a.starts_with("--health-poll-interval"));
    args.push("--health-poll-interval=5ms".into());
    let mut plugin = PluginProcess::spawn(&args, host.dir.path().join("bad.log"));
    assert_eq!(plugin.wait().await, Some(2));
    assert_eq!(
        plugin.log_text().trim_end(),
        "hbm-device-plugin: health poll interval \"5ms\" is not a duration between 10ms and 60s (write e.g. 500ms or 2s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_that_matches_nothing_is_logged_and_the_rest_is_served() {
    let host = TestHost::new(&fixture::seed_amd());
    let config = host.dir.path().join("plugin.yaml");
    std::fs::write(
        &config,
        "resources:\n  - name: example.com/h100\n    selector: {vendor: \"10de\", device: \"2330\"}\n",
    )
    .unwrap();
    let mut kubelet = FakeKubelet::start(&host.device_plugins);
    let metrics = common::free_addr();
    let mut args = host.args();
    args.push(format!("--config={}", config.display()));
    args.push(format!("--metrics-addr={metrics}"));
    args.push("--log-format=json".into());
    let plugin = PluginProcess::spawn(&args, host.dir.path().join("plugin.log"));
    let reg = kubelet.next_registration().await;
    assert_eq!(reg.resource_name, "amd.com/gpu-74a1-hbm");
    let text = http_get(metrics, "/metrics").await.1;
    assert!(text.lines().any(|l| l == "hbm_plugin_resource_problems 1"), "{text}");
    // Structured logs: one JSON object per line, the problem in its own field. The kubelet sees
    // Register before the plugin logs its answer: wait for that line.
    guarded("the registration log line", async {
        while !plugin.log_text().contains("registered with the kubelet") {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let log = plugin.log_text();
    let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let problem = lines
        .iter()
        .find(|l| l["fields"]["message"] == "resource problem")
        .expect("a resource problem line");
    assert_eq!(problem["level"], "WARN");
    assert_eq!(
        problem["fields"]["problem"],
        "resource rule \"example.com/h100\" (vendor 10de, devices [\"2330\"]) matches no GPU with HBM on this host"
    );
    let registered = lines
        .iter()
        .find(|l| l["fields"]["message"] == "registered with the kubelet")
        .unwrap();
    assert_eq!(registered["fields"]["resource"], "amd.com/gpu-74a1-hbm");
}

fn make_fifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let made = std::process::Command::new("mkfifo").arg(path).status().unwrap();
    assert!(made.success(), "mkfifo {} failed", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifos_where_files_are_expected_are_refused_and_signals_keep_working() {
    let host = TestHost::new(&fixture::seed_amd_2gpu());
    let config = host.dir.path().join("plugin.yaml");
    make_fifo(&config);
    let mut args = host.args();
    args.push(format!("--config={}", config.display()));
    let line = format!(
        "hbm-device-plugin: cannot read config file {}: a FIFO, not a regular file; only regular files are read (check --config / HBM_CONFIG)",
        config.display()
    );
    assert_eq!(exit_and_last_line(&host, &args).await, (Some(2), line));

    // One GPU's `class` is a FIFO: that GPU is skipped, the other served, SIGTERM still stops it.
    make_fifo(&host.root.join("sys/devices/pci0000:41/0000:41:00.0/class"));
    let mut kubelet = FakeKubelet::start(&host.device_plugins);
    let mut plugin = PluginProcess::spawn(&host.args(), host.dir.path().join("plugin.log"));
    let reg = kubelet.next_registration().await;
    let mut client = kubelet.dial(&reg.endpoint).await;
    let mut watch = Watch::open(&mut client).await;
    assert_eq!(
        health(&watch.next().await),
        [("0000:c1:00.0".to_string(), "Healthy".to_string())]
    );
    plugin.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(plugin.wait().await, Some(0));
}

/// `host.args()` with `--device-plugin-dir` replaced by `dir`.
fn args_with_device_plugin_dir(host: &TestHost, dir: &Path) -> Vec<String> {
    let mut args = host.args();
    args.retain(|a| !a.starts_with("--device-plugin-dir"));
    args.push(format!("--device-plugin-dir={}", dir.display()));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_plugin_dir_too_long_for_a_socket_path_exits_2_naming_it() {
    let host = TestHost::new(&fixture::seed_amd());
    let base = host.dir.path().display().to_string();
    // kubelet.sock itself does not fit; then it fits but the resource's socket does not.
    for (dir_len, socket) in [(100, "kubelet.sock"), (90, "hbm-amd.com_gpu-74a1-hbm.sock")] {
        let dir = host.dir.path().join("d".repeat(dir_len - base.len() - 1));
        assert_eq!(dir.as_os_str().len(), dir_len);
        let args = args_with_device_plugin_dir(&host, &dir);
        let line = format!(
            "hbm-device-plugin: --device-plugin-dir {}: socket path {}/{socket} is {} bytes, over the 107-byte limit of a unix socket path (choose a shorter directory)",
            dir.display(),
            dir.display(),
            dir_len + 1 + socket.len()
        );
        assert_eq!(exit_and_last_line(&host, &args).await, (Some(2), line));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_kubelet_socket_is_warned_about_naming_the_dir_and_still_awaited() {
    let host = TestHost::new(&fixture::seed_amd());
    let dir = host.dir.path().join("not-the-kubelet-dir");
    let mut args = args_with_device_plugin_dir(&host, &dir);
    args.push("--kubelet-wait-warning=200ms".into());
    let plugin = PluginProcess::spawn(&args, host.dir.path().join("plugin.log"));
    let warning = format!(
        "no kubelet.sock in the device plugin directory yet; check that --device-plugin-dir is the kubelet's device-plugins directory (kubeletRootDir in the chart); still waiting dir={} waited=200ms",
        dir.display()
    );
    guarded("the kubelet wait warning", async {
        while !plugin.log_text().contains(&warning) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(dir.is_dir());
    // Still waiting: a kubelet that shows up now gets the registration.
    let mut kubelet = FakeKubelet::start(&dir);
    assert_eq!(kubelet.next_registration().await.resource_name, "amd.com/gpu-74a1-hbm");
    assert_eq!(plugin.log_text().matches("no kubelet.sock").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_discovery_failure_keeps_the_resource_with_its_devices_unhealthy() {
    let host = TestHost::new(&fixture::seed_amd_2gpu());
    let Serving {
        mut kubelet,
        plugin,
        client: _client,
        mut watch,
    } = Serving::start(&host, &host.args()).await;

    // sys/bus/pci/devices cannot be listed for a while.
    let devices = host.root.join("sys/bus/pci/devices");
    let away = host.root.join("sys/bus/pci/devices.away");
    std::fs::rename(&devices, &away).unwrap();
    std::fs::write(&devices, "").unwrap();
    let update = watch
        .until("both devices unhealthy", |u| {
            u.devices.iter().all(|d| d.health == "Unhealthy")
        })
        .await;
    assert_eq!(update.devices.len(), 2);
    assert_eq!(
        host.sockets(&host.device_plugins),
        ["hbm-amd.com_gpu-74a1-hbm.sock", "kubelet.sock"]
    );
    let reason = format!(
        "reason=discovery failed: cannot read {}: Not a directory (os error 20)",
        devices.display()
    );
    assert!(plugin.log_text().contains(&reason), "{}", plugin.log_text());

    std::fs::remove_file(&devices).unwrap();
    std::fs::rename(&away, &devices).unwrap();
    watch
        .until("both devices healthy again", |u| {
            u.devices.len() == 2 && u.devices.iter().all(|d| d.health == "Healthy")
        })
        .await;
    assert!(
        kubelet.pending_registrations().is_empty(),
        "registered once, never withdrawn"
    );
}
