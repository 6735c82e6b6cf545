//! A virt-launcher stand-in for the KubeVirt hook sidecar tests: finds the sidecar's socket in the
//! hook directory, dials it over a real unix socket, calls Info and the Callbacks of a chosen
//! version. Plus the fixture node (a sysfs tree whose GPUs are the corpus' hostdevs) and VMI JSON
//! builders.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proto::kubevirt::hooks::{info, v1alpha1, v1alpha2, v1alpha3};
use tonic::transport::{Channel, Endpoint, Uri};
use topology::fixture::FixtureHost;

pub const GIB: u64 = 1 << 30;
/// The corpus' KubeVirt hostdevs: `gpu1.rendered.xml` and `numa-passthrough-gpu.rendered.xml`.
pub const GPU_81: &str = "0000:81:00.0";
pub const GPU_41: &str = "0000:41:00.0";
/// HBM per fixture GPU.
pub const HBM_BYTES: u64 = 16 * GIB;

/// A node with CPUs on node 0 and two GPUs whose HBM is CPU-less SPM node 1 (0000:81:00.0) and
/// node 2 (0000:41:00.0), each named by the GPU's `numa_node` (its `_PXM`).
pub fn corpus_node() -> FixtureHost {
    FixtureHost::new()
        .cpu_node(0, "0-15", 64 * GIB)
        .hbm_node(1, HBM_BYTES, true, true)
        .hbm_node(2, HBM_BYTES, true, true)
        .generic_initiator(1)
        .generic_initiator(2)
        .distance(0, 1, 20)
        .distance(0, 2, 20)
        .distance(1, 2, 30)
        .gpu(GPU_81, 0x1002, 0x74a1, Some("vfio-pci"), Some(12), Some(1))
        .gpu(GPU_41, 0x1002, 0x74a1, Some("vfio-pci"), Some(13), Some(2))
        .with_generated_srat()
}

/// Writes `host` into a fresh temp dir and returns it (the sysfs root).
pub fn write_node(host: &FixtureHost) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    host.write_to(dir.path())
        .unwrap_or_else(|e| panic!("write fixture host: {e}"));
    dir
}

/// A VMI JSON object named `ns/name` with `annotations`.
pub fn vmi_json(name: &str, annotations: &[(&str, &str)]) -> Vec<u8> {
    let ann: serde_json::Map<String, serde_json::Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
        .collect();
    let mut base: serde_json::Value = serde_json::from_str(&super::corpus::file("kubevirt/examples-vmi-gpu.json").text)
        .unwrap_or_else(|e| panic!("examples-vmi-gpu.json: {e}"));
    base["metadata"]["name"] = serde_json::Value::String(name.to_string());
    base["metadata"]["namespace"] = serde_json::Value::String("hbm-test".to_string());
    if !ann.is_empty() {
        base["metadata"]["annotations"] = serde_json::Value::Object(ann);
    }
    serde_json::to_vec(&base).unwrap_or_else(|e| panic!("VMI JSON: {e}"))
}

/// The `hbm-hook` binary under test.
pub fn hbm_hook() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hbm-hook"))
}

/// A running `hbm-hook kubevirt-sidecar` child; killed on drop if still running.
pub struct SidecarProcess {
    pub child: Child,
    pub socket_dir: PathBuf,
}

impl SidecarProcess {
    /// Starts `hbm-hook kubevirt-sidecar --socket-dir DIR ARGS...`.
    pub fn start(socket_dir: &Path, args: &[&str]) -> Self {
        let child = Command::new(hbm_hook())
            .arg("kubevirt-sidecar")
            .arg("--socket-dir")
            .arg(socket_dir)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start hbm-hook kubevirt-sidecar: {e}"));
        Self {
            child,
            socket_dir: socket_dir.to_path_buf(),
        }
    }

    /// Waits for the process to end (after Shutdown); returns (exit code, stderr).
    pub fn wait(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    let mut err = String::new();
                    if let Some(mut e) = self.child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut err);
                    }
                    return (status.code(), err);
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Ok(None) => panic!("sidecar did not exit within 60 s after Shutdown"),
                Err(e) => panic!("wait for sidecar: {e}"),
            }
        }
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// As virt-launcher: polls `dir` for a `*.sock` file (fails after 60 s, or at once when
/// `sidecar` has exited) and returns its path.
pub fn find_socket(dir: &Path, sidecar: &mut SidecarProcess) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "sock"));
        if let Some(p) = found {
            return p;
        }
        if let Ok(Some(status)) = sidecar.child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = sidecar.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("sidecar exited ({status}) before creating its socket: {err}");
        }
        assert!(
            Instant::now() < deadline,
            "no socket appeared in {} within 60 s",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A gRPC channel over the unix socket at `path` (retried until the listener accepts). It sends
/// `:authority` `localhost`, as virt-launcher and the kubelet (grpc-go) do: the sidecar's HTTP/2
/// layer refuses a socket path there (docs/frontends.md).
pub async fn connect(path: &Path) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = path.to_path_buf();
        let result = Endpoint::try_from("http://localhost")
            .unwrap_or_else(|e| panic!("endpoint: {e}"))
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let p = p.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(p).await?))
                }
            }))
            .await;
        match result {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("connect {}: {e}", path.display()),
        }
    }
}

/// Info, as virt-launcher calls it first.
pub async fn info(channel: &Channel) -> info::InfoResult {
    info::info_client::InfoClient::new(channel.clone())
        .info(info::InfoParams {})
        .await
        .unwrap_or_else(|e| panic!("Info: {e}"))
        .into_inner()
}

/// virt-launcher's choice: the newest version the sidecar lists.
pub fn newest_version(info: &info::InfoResult) -> &'static str {
    for v in [v1alpha3::VERSION, v1alpha2::VERSION, v1alpha1::VERSION] {
        if info.versions.iter().any(|s| s == v) {
            return v;
        }
    }
    panic!("sidecar lists no known version: {:?}", info.versions)
}

/// OnDefineDomain over `version`: the returned XML bytes, or the gRPC status.
pub async fn on_define_domain(
    channel: &Channel,
    version: &str,
    domain_xml: &[u8],
    vmi: &[u8],
) -> Result<Vec<u8>, tonic::Status> {
    let (domain_xml, vmi) = (domain_xml.to_vec(), vmi.to_vec());
    match version {
        "v1alpha1" => v1alpha1::callbacks_client::CallbacksClient::new(channel.clone())
            .on_define_domain(v1alpha1::OnDefineDomainParams { domain_xml, vmi })
            .await
            .map(|r| r.into_inner().domain_xml),
        "v1alpha2" => v1alpha2::callbacks_client::CallbacksClient::new(channel.clone())
            .on_define_domain(v1alpha2::OnDefineDomainParams { domain_xml, vmi })
            .await
            .map(|r| r.into_inner().domain_xml),
        "v1alpha3" => v1alpha3::callbacks_client::CallbacksClient::new(channel.clone())
            .on_define_domain(v1alpha3::OnDefineDomainParams { domain_xml, vmi })
            .await
            .map(|r| r.into_inner().domain_xml),
        other => panic!("unknown version {other}"),
    }
}
