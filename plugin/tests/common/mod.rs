//! Test support: a fake kubelet over real unix sockets (the Registration server the kubelet runs,
//! and a DevicePlugin client doing what the kubelet does), fixture hosts with `/dev` stand-ins,
//! and the real `hbm-device-plugin` binary as a child process.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use proto::deviceplugin::v1beta1::device_plugin_client::DevicePluginClient;
use proto::deviceplugin::v1beta1::registration_server::{Registration, RegistrationServer};
use proto::deviceplugin::v1beta1::{Empty, ListAndWatchResponse, RegisterRequest};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};
use topology::fixture::FixtureHost;

/// Upper bound for any wait in these tests: a guard against hanging, never an assertion on speed.
pub const GUARD: Duration = Duration::from_secs(30);

pub async fn guarded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(GUARD, f).await {
        Ok(v) => v,
        Err(_) => panic!("gave up waiting for {what}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Fake kubelet

struct RegistrationService {
    tx: mpsc::UnboundedSender<RegisterRequest>,
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        if request.version != "v1beta1" {
            return Err(Status::invalid_argument(format!(
                "unsupported version {}",
                request.version
            )));
        }
        let _ = self.tx.send(request);
        Ok(Response::new(Empty {}))
    }
}

/// The kubelet side: `kubelet.sock` in `dir` with the Registration service.
pub struct FakeKubelet {
    pub dir: PathBuf,
    tx: mpsc::UnboundedSender<RegisterRequest>,
    rx: mpsc::UnboundedReceiver<RegisterRequest>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FakeKubelet {
    pub fn start(dir: &Path) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut k = Self {
            dir: dir.to_path_buf(),
            tx,
            rx,
            stop: CancellationToken::new(),
            task: None,
        };
        k.serve();
        k
    }

    fn serve(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let socket = self.dir.join("kubelet.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        self.stop = CancellationToken::new();
        let stop = self.stop.clone();
        let service = RegistrationServer::new(RegistrationService { tx: self.tx.clone() });
        self.task = Some(tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    stop.cancelled_owned(),
                )
                .await
                .unwrap();
        }));
    }

    /// The next Register call the kubelet received.
    pub async fn next_registration(&mut self) -> RegisterRequest {
        guarded("a Register call", self.rx.recv()).await.unwrap()
    }

    /// What the kubelet does with each Register: dial the endpoint and open ListAndWatch. A
    /// Register whose endpoint cannot be dialed (the plugin registered just as the kubelet
    /// restarted and deleted its socket) is dropped, as the kubelet drops it, and the next one is
    /// taken. Returns the working registration, its first list, and how many were dropped.
    pub async fn next_working_registration(&mut self) -> (RegisterRequest, Watch, usize) {
        let mut dropped = 0;
        loop {
            let reg = self.next_registration().await;
            let Ok(channel) = plugin::registration::dial_unix(&self.dir.join(&reg.endpoint)).await else {
                dropped += 1;
                continue;
            };
            let mut client = DevicePluginClient::new(channel);
            let Ok(stream) = client.list_and_watch(Empty {}).await else {
                dropped += 1;
                continue;
            };
            return (
                reg,
                Watch {
                    stream: stream.into_inner(),
                },
                dropped,
            );
        }
    }

    /// Register calls received so far and not yet taken.
    pub fn pending_registrations(&mut self) -> Vec<RegisterRequest> {
        let mut out = Vec::new();
        while let Ok(r) = self.rx.try_recv() {
            out.push(r);
        }
        out
    }

    /// What a kubelet restart does: stop, delete every socket in the directory, serve a new
    /// `kubelet.sock`.
    /// Returns how many Register calls the old instance had received but nobody had taken
    /// (they belong to the kubelet that is gone and are dropped).
    pub async fn restart(&mut self) -> usize {
        self.shutdown().await;
        let stale = self.pending_registrations().len();
        for entry in std::fs::read_dir(&self.dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "sock") {
                std::fs::remove_file(&path).unwrap();
            }
        }
        self.serve();
        stale
    }

    pub async fn shutdown(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    /// Dials a plugin endpoint (a file name in the directory, as Register reports it).
    pub async fn dial(&self, endpoint: &str) -> DevicePluginClient<Channel> {
        dial_plugin(&self.dir.join(endpoint)).await
    }
}

/// Dials a DevicePlugin socket.
pub async fn dial_plugin(path: &Path) -> DevicePluginClient<Channel> {
    let channel = guarded("dialing the plugin", plugin::registration::dial_unix(path))
        .await
        .unwrap();
    DevicePluginClient::new(channel)
}

/// Dials a socket that was just seen appearing: a socket file exists between bind() and
/// listen(), so a refused connection is retried (guarded).
pub async fn dial_fresh(path: &Path) -> Channel {
    guarded("a fresh socket to accept", async {
        loop {
            match plugin::registration::dial_unix(path).await {
                Ok(channel) => return channel,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await
}

/// A ListAndWatch stream as the kubelet keeps it.
pub struct Watch {
    pub stream: Streaming<ListAndWatchResponse>,
}

impl Watch {
    pub async fn open(client: &mut DevicePluginClient<Channel>) -> Self {
        let stream = client.list_and_watch(Empty {}).await.unwrap().into_inner();
        Self { stream }
    }

    pub async fn next(&mut self) -> ListAndWatchResponse {
        guarded("a ListAndWatch update", self.stream.message())
            .await
            .unwrap()
            .expect("stream still open")
    }

    /// Reads updates until `pred` holds; returns that update.
    pub async fn until(&mut self, what: &str, pred: impl Fn(&ListAndWatchResponse) -> bool) -> ListAndWatchResponse {
        guarded(what, async {
            loop {
                let update = self.stream.message().await.unwrap().expect("stream still open");
                if pred(&update) {
                    return update;
                }
            }
        })
        .await
    }
}

/// (id, health) pairs of an update.
pub fn health(update: &ListAndWatchResponse) -> Vec<(String, String)> {
    update
        .devices
        .iter()
        .map(|d| (d.id.clone(), d.health.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Hosts

/// The bundled two-GPU seed host after `daxctl reconfigure-device --mode=system-ram dax1.0`:
/// GPU 0000:c1:00.0's SPM HBM is online (movable) in node 3, GPU 0000:41:00.0's stays devdax.
pub fn seed_amd_2gpu_c1_online() -> FixtureHost {
    topology::fixture::seed_amd_2gpu().dax_in_system_ram("dax1.0", 3, 64 << 30)
}

/// A temp dir with `root/` (fixture sysfs), `dev/` (stand-ins), `device-plugins/`,
/// `plugins_registry/`.
pub struct TestHost {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub dev: PathBuf,
    pub device_plugins: PathBuf,
    pub registry: PathBuf,
}

impl TestHost {
    /// Writes `host` and a `/dev` stand-in for every vfio-pci GPU's group and every dax device.
    pub fn new(host: &FixtureHost) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let dev = dir.path().join("dev");
        host.write_to(&root).unwrap();
        std::fs::create_dir_all(dev.join("vfio")).unwrap();
        std::fs::write(dev.join("vfio/vfio"), "").unwrap();
        for f in host.pci_functions() {
            if let (Some("vfio-pci"), Some(group)) = (f.driver.as_deref(), f.iommu_group) {
                std::fs::write(dev.join(format!("vfio/{group}")), "").unwrap();
            }
        }
        // A dax device in system-ram mode (kmem) has no character device.
        for d in host.dax_devices().iter().filter(|d| !d.kmem) {
            std::fs::write(dev.join(&d.name), "").unwrap();
        }
        let device_plugins = dir.path().join("device-plugins");
        let registry = dir.path().join("plugins_registry");
        std::fs::create_dir_all(&device_plugins).unwrap();
        Self {
            dir,
            root,
            dev,
            device_plugins,
            registry,
        }
    }

    /// Sockets in the device plugin directory, sorted.
    pub fn sockets(&self, dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sock"))
            .collect();
        names.sort();
        names
    }

    /// The common flags for a plugin on this host.
    pub fn args(&self) -> Vec<String> {
        vec![
            "run".into(),
            format!("--device-plugin-dir={}", self.device_plugins.display()),
            format!("--plugins-registry-dir={}", self.registry.display()),
            format!("--sysfs-root={}", self.root.display()),
            format!("--dev-root={}", self.dev.display()),
            "--health-poll-interval=100ms".into(),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// The real binary

pub struct PluginProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl PluginProcess {
    pub fn spawn(args: &[String], log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_hbm-device-plugin"))
            .args(args)
            .env_remove("NODE_NAME")
            .env("RUST_LOG", "info,plugin=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Self { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// Waits for exit (guarded) and returns the exit code.
    pub async fn wait(&mut self) -> Option<i32> {
        guarded("the plugin to exit", async {
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    return status.code();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- plugin log ----\n{}", self.log_text());
        }
    }
}

/// A plugin serving `host`, registered with a fake kubelet, its ListAndWatch open and its first
/// list (every device healthy) read.
pub struct Serving {
    pub kubelet: FakeKubelet,
    pub plugin: PluginProcess,
    pub client: DevicePluginClient<Channel>,
    pub watch: Watch,
}

impl Serving {
    pub async fn start(host: &TestHost, args: &[String]) -> Self {
        let mut kubelet = FakeKubelet::start(&host.device_plugins);
        let plugin = PluginProcess::spawn(args, host.dir.path().join("plugin.log"));
        let reg = kubelet.next_registration().await;
        let mut client = kubelet.dial(&reg.endpoint).await;
        let mut watch = Watch::open(&mut client).await;
        let first = watch.next().await;
        assert!(first.devices.iter().all(|d| d.health == "Healthy"), "{first:?}");
        Self {
            kubelet,
            plugin,
            client,
            watch,
        }
    }
}

/// Runs the plugin with `args`, which must make it exit: its exit code and its log's last line.
pub async fn exit_and_last_line(host: &TestHost, args: &[String]) -> (Option<i32>, String) {
    let mut plugin = PluginProcess::spawn(args, host.dir.path().join("exit.log"));
    let code = plugin.wait().await;
    let text = plugin.log_text();
    (code, text.lines().last().unwrap_or_default().to_string())
}

/// Polls (guarded) until `path` exists.
pub async fn wait_for_file(path: &Path) {
    guarded(&format!("{} to appear", path.display()), async {
        while !path.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// A plain HTTP/1.0 GET; returns (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = guarded("connecting to the metrics port", async {
        loop {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => return s,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// A free local TCP port.
pub fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
