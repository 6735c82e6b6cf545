//! Test support: a fixture host on disk, the API-server and kubelet stand-ins, and the driver
//! running in-process against them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod apiserver;
pub mod kubelet;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hbm_dra_driver::config::Settings;
use tokio_util::sync::CancellationToken;

pub const DRIVER: &str = "hbm.passthrough.dev";
pub const NODE: &str = "node-a";
/// The two GPUs of `seed_amd_2gpu` as published device names.
pub const GPU_41: &str = "gpu-0000-41-00-0";
pub const GPU_C1: &str = "gpu-0000-c1-00-0";

/// `seed_amd_2gpu` written under `<dir>/root`, its device nodes under `<dir>/dev`.
pub struct Host {
    pub dir: tempfile::TempDir,
    pub settings: Settings,
}

impl Host {
    pub fn new() -> Self {
        Self::new_in(&std::env::temp_dir())
    }

    /// The host under a fresh folder in `parent` (e.g. a tmpfs, where fsync costs nothing).
    pub fn new_in(parent: &Path) -> Self {
        let dir = tempfile::tempdir_in(parent).unwrap();
        let root = dir.path().join("root");
        topology::fixture::seed_amd_2gpu().write_to(&root).unwrap();
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(dev.join("vfio")).unwrap();
        for node in ["vfio/vfio", "vfio/24", "vfio/56", "dax0.0", "dax1.0"] {
            std::fs::write(dev.join(node), "").unwrap();
        }
        let settings = Settings {
            node_name: NODE.into(),
            driver_name: DRIVER.into(),
            kubelet_root_dir: dir.path().join("kubelet"),
            sysfs_root: root,
            dev_root: dev,
            host_dev_root: "/dev".into(),
            cdi_root: dir.path().join("cdi"),
            poll_interval: Duration::from_millis(50),
            cleanup: false,
            rules: Vec::new(),
            discovery: topology::DiscoveryConfig::default(),
        };
        Self { dir, settings }
    }

    /// The same host after `daxctl reconfigure-device --mode=system-ram dax1.0`: GPU
    /// 0000:c1:00.0's SPM HBM online (movable) in node 3, no `/dev/dax1.0` any more.
    pub fn c1_online() -> Self {
        let host = Self::new();
        let root = &host.settings.sysfs_root;
        std::fs::remove_dir_all(root).unwrap();
        topology::fixture::seed_amd_2gpu()
            .dax_in_system_ram("dax1.0", 3, 64 << 30)
            .write_to(root)
            .unwrap();
        std::fs::remove_file(host.dev("dax1.0")).unwrap();
        host
    }

    pub fn dev(&self, name: &str) -> PathBuf {
        self.settings.dev_root.join(name)
    }

    pub fn cdi_files(&self) -> Vec<String> {
        list(&self.settings.cdi_root)
    }

    /// The CDI spec prepare wrote for claim `uid`, after the CDI project's own reader
    /// (`container-device-interface`: schema, version, vendor/class, device names and edits) has
    /// accepted the file and found exactly the devices the spec names.
    pub fn cdi_spec(&self, uid: &str) -> hbm_dra_driver::cdi::Spec {
        let path = self.settings.cdi_root.join(format!("{DRIVER}-claim-{uid}.json"));
        let spec: hbm_dra_driver::cdi::Spec = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let checked = container_device_interface::spec::read_spec(&path, 0)
            .unwrap_or_else(|e| panic!("the CDI crate refuses {}: {e:#}", path.display()));
        assert_eq!(checked.get_vendor(), DRIVER);
        assert_eq!(checked.get_class(), "gpu");
        let names: Vec<String> = checked.get_devices().into_keys().collect();
        let mut wanted: Vec<String> = spec.devices.iter().map(|d| d.name.clone()).collect();
        wanted.sort();
        assert_eq!(names, wanted);
        spec
    }

    /// The host file of the metadata of request `gpu` of claim `uid`.
    pub fn metadata_file(&self, uid: &str) -> PathBuf {
        self.settings
            .plugin_dir()
            .join(format!("metadata/{uid}/gpu/{DRIVER}-metadata.json"))
    }

    /// The real binary, `run` with this host's paths, `KUBECONFIG` naming `api`, and `extra` flags.
    pub fn spawn_binary(&self, api: &apiserver::ApiServer, extra: &[&str]) -> std::process::Child {
        let kubeconfig = self.dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
        let settings = &self.settings;
        std::process::Command::new(env!("CARGO_BIN_EXE_hbm-dra-driver"))
            .args(["run", "--node-name", NODE])
            .args(extra)
            .arg("--kubelet-root-dir")
            .arg(&settings.kubelet_root_dir)
            .arg("--sysfs-root")
            .arg(&settings.sysfs_root)
            .arg("--dev-root")
            .arg(&settings.dev_root)
            .arg("--cdi-root")
            .arg(&settings.cdi_root)
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }
}

/// A JSON file's contents.
pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// An API-server stand-in, the fixture host, and the driver running against both.
pub async fn running() -> (apiserver::ApiServer, Host, Driver) {
    let api = apiserver::ApiServer::start().await;
    let host = Host::new();
    let driver = Driver::start(&host.settings, api.client()).await;
    (api, host, driver)
}

/// File names in `dir`, sorted (none when it does not exist).
pub fn list(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The driver running in-process.
pub struct Driver {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), hbm_dra_driver::driver::DriverError>>,
}

impl Driver {
    /// Starts the driver and waits (bounded) until both sockets exist.
    pub async fn start(settings: &Settings, client: kube::Client) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(hbm_dra_driver::driver::run(settings.clone(), client, stop.clone()));
        let (dra, reg) = (settings.dra_socket(), settings.registration_socket());
        wait_until("both sockets exist", || dra.exists() && reg.exists()).await;
        Self { stop, task }
    }

    /// Stops the driver and returns its result.
    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// Polls `ready` every 10 ms for at most 5 s.
pub async fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
