//! Front-end figures:
//! - `kubevirt/on_define_domain_grpc`: one OnDefineDomain (v1alpha3) over a real unix socket to
//!   the sidecar served in-process, including host discovery on a fixture node and the rewrite of
//!   the corpus GPU definition (target: p99 < 5 ms).
//! - `libvirt_hook/ignored_call_process`: a whole `hbm-passthrough <vm> started begin -` process
//!   (the qemu.d hook for a call it ignores) with a domain XML on stdin (target: < 2 ms wall).
//! - `libvirt_hook/prepare_no_metadata_process`: the same for `prepare begin` of a domain without
//!   the project's metadata (parses the XML, no discovery).
//!
//! Besides criterion's estimates, each prints p50/p99 over a fixed number of samples, since the
//! targets are tail latencies:
//! `cargo bench -p hook --bench frontends -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use hbm_hook::kubevirt::sidecar::{Sidecar, SidecarSettings};
use hbm_rewrite::RewriteOptions;
use proto::kubevirt::hooks::v1alpha3;
use topology::fixture::FixtureHost;

const GIB: u64 = 1 << 30;

fn corpus(name: &str) -> String {
    // The corpus ships in the repository (`tests/corpus`).
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/corpus")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("corpus file {}: {e}", path.display()))
}

fn node() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    FixtureHost::new()
        .cpu_node(0, "0-15", 64 * GIB)
        .hbm_node(1, 16 * GIB, true, true)
        .generic_initiator(1)
        .distance(0, 1, 20)
        .gpu("0000:81:00.0", 0x1002, 0x74a1, Some("vfio-pci"), Some(12), Some(1))
        .with_generated_srat()
        .write_to(dir.path())
        .unwrap();
    dir
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}

fn on_define_domain(c: &mut Criterion) {
    let node = node();
    let hooks = tempfile::tempdir().unwrap();
    let root = node.path().to_path_buf();
    let settings = SidecarSettings {
        name: "hbm-bench".into(),
        priority: 0,
        options: RewriteOptions::default(),
        inventory: Arc::new(move || {
            topology::discover(&root, &topology::DiscoveryConfig::default()).map_err(|e| e.to_string())
        }),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sidecar = rt.block_on(Sidecar::bind(hooks.path(), settings)).unwrap();
    let socket = sidecar.socket().to_path_buf();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(sidecar.serve(async {
        let _ = stop_rx.await;
    }));
    let channel = rt.block_on(async {
        let p = socket.clone();
        tonic::transport::Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let p = p.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(p).await?))
                }
            }))
            .await
            .unwrap()
    });
    let domain = corpus("kubevirt/gpu1.rendered.xml").into_bytes();
    let vmi = br#"{"apiVersion":"kubevirt.io/v1","kind":"VirtualMachineInstance","metadata":{"name":"bench","namespace":"ns","annotations":{"hbm-passthrough.dev/policy":"required","hbm-passthrough.dev/dialect":"none"}},"spec":{}}"#.to_vec();
    let call = || {
        let mut client = v1alpha3::callbacks_client::CallbacksClient::new(channel.clone());
        let params = v1alpha3::OnDefineDomainParams {
            domain_xml: domain.clone(),
            vmi: vmi.clone(),
        };
        rt.block_on(async move { client.on_define_domain(params).await.unwrap().into_inner().domain_xml })
    };
    let out = call();
    assert_ne!(out, domain, "the bench must measure a real rewrite");
    let samples: Vec<Duration> = (0..1000)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(call());
            t.elapsed()
        })
        .collect();
    let (p50, p99) = percentiles(samples);
    println!("kubevirt/on_define_domain_grpc (incl. discovery + rewrite): p50 {p50:?} p99 {p99:?} over 1000 calls");
    c.bench_function("kubevirt/on_define_domain_grpc", |b| {
        b.iter(|| std::hint::black_box(call()))
    });
    let _ = stop_tx.send(());
    rt.block_on(server).unwrap().unwrap();
}

fn hook_process(program: &Path, call: [&str; 4], stdin: &[u8]) {
    let mut child = Command::new(program)
        .args(call)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
}

fn libvirt_hook(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let hook = dir.path().join("hbm-passthrough");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_hbm-hook"), &hook).unwrap();
    let xml = corpus("kubevirt/hooks-domain.xml");
    for (label, call) in [
        ("libvirt_hook/ignored_call_process", ["vm", "started", "begin", "-"]),
        (
            "libvirt_hook/prepare_no_metadata_process",
            ["vm", "prepare", "begin", "-"],
        ),
    ] {
        hook_process(&hook, call, xml.as_bytes());
        let samples: Vec<Duration> = (0..300)
            .map(|_| {
                let t = Instant::now();
                hook_process(&hook, call, xml.as_bytes());
                t.elapsed()
            })
            .collect();
        let (p50, p99) = percentiles(samples);
        println!("{label}: p50 {p50:?} p99 {p99:?} wall over 300 processes");
        c.bench_function(label, |b| b.iter(|| hook_process(&hook, call, xml.as_bytes())));
    }
}

fn claims(c: &mut Criterion) {
    c.bench_function("claims/encode_region_id", |b| {
        b.iter(|| hbm_hook::libvirt::claims::encode_region_id(std::hint::black_box("0000:c1:00.0/node2")))
    });
}

criterion_group!(benches, on_define_domain, libvirt_hook, claims);
criterion_main!(benches);
