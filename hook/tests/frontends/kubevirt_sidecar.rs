//! The KubeVirt hook sidecar, end to end: the real `hbm-hook kubevirt-sidecar` process serving on
//! a unix socket in a temp hook directory, a virt-launcher stand-in (tonic client) that finds the
//! socket, calls Info, picks the newest version and sends every KubeVirt corpus definition through
//! OnDefineDomain, discovery running on a fixture node whose GPUs are the corpus' hostdevs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::domain_xml::PciAddr;
use crate::common::kubevirt::{
    GPU_41, GPU_81, HBM_BYTES, SidecarProcess, connect, corpus_node, find_socket, info, newest_version,
    on_define_domain, vmi_json, write_node,
};
use crate::common::{corpus, hbm_chain, libvirt};

const POLICY: &str = "hbm-passthrough.dev/policy";
const DIALECT: &str = "hbm-passthrough.dev/dialect";
const SIZE_CAP: &str = "hbm-passthrough.dev/size-cap";

/// The GPU a corpus definition passes through, if any.
fn hostdev_of(name: &str) -> Option<&'static str> {
    match name {
        "kubevirt/gpu1.rendered.xml" => Some(GPU_81),
        "kubevirt/numa-passthrough-gpu.rendered.xml" => Some(GPU_41),
        _ => None,
    }
}

/// Host node of the fixture GPU's HBM.
fn host_node_of(gpu: &str) -> u32 {
    if gpu == GPU_81 { 1 } else { 2 }
}

fn start(socket_dir: &std::path::Path, sysfs: &std::path::Path, extra: &[&str]) -> SidecarProcess {
    let mut args = vec!["--sysfs-root", sysfs.to_str().unwrap()];
    args.extend_from_slice(extra);
    SidecarProcess::start(socket_dir, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virt_launcher_stand_in_rewrites_every_kubevirt_definition() {
    let node = write_node(&corpus_node());
    let hooks = tempfile::tempdir().unwrap();
    let mut sidecar = start(hooks.path(), node.path(), &["--priority", "7"]);
    let socket = find_socket(hooks.path(), &mut sidecar);
    assert_eq!(socket, hooks.path().join("hbm-passthrough.sock"));
    let channel = connect(&socket).await;

    let info = info(&channel).await;
    assert_eq!(info.name, "hbm-passthrough");
    assert_eq!(info.versions, ["v1alpha1", "v1alpha2", "v1alpha3"]);
    assert_eq!(info.hook_points.len(), 1);
    assert_eq!(
        (info.hook_points[0].name.as_str(), info.hook_points[0].priority),
        ("OnDefineDomain", 7)
    );
    let version = newest_version(&info);
    assert_eq!(version, "v1alpha3");

    // Without annotations the node's defaults apply (policy auto, dialect auto): the KubeVirt
    // definitions boot from disk and virt-launcher has no adapter, so the SPM regions get their
    // cells unmarked (the same definition as dialect none asks for), with a warning in the log.
    let plain = vmi_json("plain", &[]);
    let with_hbm = vmi_json("with-hbm", &[(DIALECT, "none")]);
    let mut rewritten = 0;
    for file in corpus::kubevirt_files() {
        let input = file.text.as_bytes();
        let by_default = on_define_domain(&channel, version, input, &plain).await;
        let by_default = by_default.unwrap_or_else(|e| panic!("{}: auto must not fail: {e}", file.name));

        let out = on_define_domain(&channel, version, input, &with_hbm).await;
        let out = out.unwrap_or_else(|e| panic!("{}: {e}", file.name));
        assert_eq!(
            String::from_utf8_lossy(&by_default),
            String::from_utf8_lossy(&out),
            "{}: the defaults give what dialect none gives",
            file.name
        );
        let out = String::from_utf8(out).unwrap();
        match hostdev_of(&file.name) {
            None => assert_eq!(out, file.text, "{}: no PCI hostdev: byte-identical", file.name),
            Some(gpu) => {
                rewritten += 1;
                let chain = hbm_chain::read(&out, PciAddr::parse_host(gpu).unwrap())
                    .unwrap_or_else(|e| panic!("{}: HBM chain: {e}\n{out}", file.name));
                assert_eq!(chain.cell_bytes, HBM_BYTES, "{}", file.name);
                assert_eq!(
                    chain.memnode,
                    Some(("strict".to_string(), host_node_of(gpu).to_string())),
                    "{}",
                    file.name
                );
                assert!(chain.generic_initiator_arg, "{}: Generic Initiator", file.name);
                hbm_chain::check_domain(&out).unwrap_or_else(|e| panic!("{}: {e}", file.name));
                // Valid in, valid out (KubeVirt's own output is not always schema-valid).
                let before = libvirt::validate(&file.text);
                let after = libvirt::validate(&out);
                if before.valid {
                    assert!(
                        after.valid,
                        "{}: schema-valid input, invalid output:\n{}",
                        file.name, after.output
                    );
                }
                // The sidecar's output is idempotent under a second sidecar pass.
                let again = on_define_domain(&channel, version, out.as_bytes(), &with_hbm)
                    .await
                    .unwrap();
                assert_eq!(String::from_utf8(again).unwrap(), out, "{}: second pass", file.name);
            }
        }
    }
    assert_eq!(rewritten, 2, "the corpus has two GPU definitions");

    // Every version's OnDefineDomain answers the same.
    let gpu1 = corpus::file("kubevirt/gpu1.rendered.xml");
    let newest = on_define_domain(&channel, "v1alpha3", gpu1.text.as_bytes(), &with_hbm)
        .await
        .unwrap();
    for v in ["v1alpha1", "v1alpha2"] {
        let out = on_define_domain(&channel, v, gpu1.text.as_bytes(), &with_hbm)
            .await
            .unwrap();
        assert_eq!(out, newest, "{v}");
    }

    // Size cap from the annotation, a Kubernetes quantity: `4Gi` is 4x2^30 bytes, `4G` is 4x10^9
    // (the cell rounded down to 2 MiB).
    for (cap, cell_bytes) in [("4Gi", 4u64 << 30), ("4G", 1907 * (2 << 20))] {
        let capped = vmi_json("capped", &[(DIALECT, "none"), (SIZE_CAP, cap)]);
        let out = on_define_domain(&channel, version, gpu1.text.as_bytes(), &capped)
            .await
            .unwrap();
        let chain = hbm_chain::read(&String::from_utf8(out).unwrap(), PciAddr::parse_host(GPU_81).unwrap()).unwrap();
        assert_eq!(chain.cell_bytes, cell_bytes, "{cap}");
    }

    // policy off: untouched.
    let off = vmi_json("off", &[(POLICY, "off"), (DIALECT, "none")]);
    let out = on_define_domain(&channel, version, gpu1.text.as_bytes(), &off)
        .await
        .unwrap();
    assert_eq!(out, gpu1.text.as_bytes());

    // PreCloudInitIso passes its input back.
    let echo = proto::kubevirt::hooks::v1alpha3::callbacks_client::CallbacksClient::new(channel.clone())
        .pre_cloud_init_iso(proto::kubevirt::hooks::v1alpha3::PreCloudInitIsoParams {
            cloud_init_no_cloud_source: b"{\"userData\":\"#cloud-config\"}".to_vec(),
            vmi: plain.clone(),
            cloud_init_data: b"{\"data\":1}".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(echo.cloud_init_no_cloud_source, b"{\"userData\":\"#cloud-config\"}");
    assert_eq!(echo.cloud_init_data, b"{\"data\":1}");

    // Shutdown stops the server cleanly and removes the socket.
    proto::kubevirt::hooks::v1alpha3::callbacks_client::CallbacksClient::new(channel.clone())
        .shutdown(proto::kubevirt::hooks::v1alpha3::ShutdownParams {})
        .await
        .unwrap();
    // virt-launcher may keep its connection open: the server must stop anyway.
    let (code, stderr) = sidecar.wait();
    drop(channel);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!socket.exists(), "socket removed on shutdown");
    assert!(stderr.contains("Shutdown requested"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_fails_the_vmi_with_what_is_missing_and_bad_vmis_are_refused() {
    let node = write_node(&corpus_node());
    let hooks = tempfile::tempdir().unwrap();
    let mut sidecar = start(hooks.path(), node.path(), &["--name", "hbm-required"]);
    let socket = find_socket(hooks.path(), &mut sidecar);
    let channel = connect(&socket).await;
    let version = newest_version(&info(&channel).await);

    // A GPU this node does not have (bus 0x99): required -> FAILED_PRECONDITION naming it.
    let gpu1 = corpus::file("kubevirt/gpu1.rendered.xml");
    let foreign = gpu1.text.replace("bus=\"0x81\"", "bus=\"0x99\"");
    assert_ne!(foreign, gpu1.text);
    let required = vmi_json("needs-hbm", &[(POLICY, "required"), (DIALECT, "none")]);
    let e = on_define_domain(&channel, version, foreign.as_bytes(), &required)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().starts_with(
            "hbm-passthrough: VMI hbm-test/needs-hbm requires HBM (hbm-passthrough.dev/policy=required): domain XML line"
        ),
        "{}",
        e.message()
    );
    assert!(
        e.message().contains("0000:99:00.0"),
        "message names the GPU: {}",
        e.message()
    );
    // The same with auto: unchanged.
    let auto = vmi_json("auto", &[(DIALECT, "none")]);
    assert_eq!(
        on_define_domain(&channel, version, foreign.as_bytes(), &auto)
            .await
            .unwrap(),
        foreign.as_bytes()
    );
    // required + kernel-cmdline on a disk-booted VMI: the error says why.
    let cmdline = vmi_json("cmdline", &[(POLICY, "required"), (DIALECT, "kernel-cmdline")]);
    let e = on_define_domain(&channel, version, gpu1.text.as_bytes(), &cmdline)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");

    // Bad input: VMI not JSON, annotation with an unknown value, malformed domain XML.
    let e = on_define_domain(&channel, version, gpu1.text.as_bytes(), b"{not json")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().starts_with("hbm-passthrough: VMI is not valid JSON"),
        "{}",
        e.message()
    );
    let odd = vmi_json("odd", &[(POLICY, "always")]);
    let e = on_define_domain(&channel, version, gpu1.text.as_bytes(), &odd)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "hbm-passthrough: VMI hbm-test/odd: annotation hbm-passthrough.dev/policy=\"always\": unknown policy \"always\" (expected off, auto or required)"
    );
    let malformed = corpus::file("kubevirt/api-domain_numa_topology.xml");
    let e = on_define_domain(&channel, version, malformed.text.as_bytes(), &required)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("not well-formed"), "{}", e.message());
    // auto + malformed: passed through unchanged (libvirt will report it).
    let out = on_define_domain(&channel, version, malformed.text.as_bytes(), &auto)
        .await
        .unwrap();
    assert_eq!(out, malformed.text.as_bytes());
    // The full API-fixture VMI (every field set, foreign annotations) parses.
    let full = corpus::file("kubevirt/apitesting-kubevirt.io.v1.VirtualMachineInstance.json");
    let hooks_domain = corpus::file("kubevirt/hooks-domain.xml");
    let out = on_define_domain(&channel, version, hooks_domain.text.as_bytes(), full.text.as_bytes())
        .await
        .unwrap();
    assert_eq!(out, hooks_domain.text.as_bytes());

    proto::kubevirt::hooks::v1alpha3::callbacks_client::CallbacksClient::new(channel.clone())
        .shutdown(proto::kubevirt::hooks::v1alpha3::ShutdownParams {})
        .await
        .unwrap();
    drop(channel);
    let (code, stderr) = sidecar.wait();
    assert_eq!(code, Some(0), "{stderr}");
}
