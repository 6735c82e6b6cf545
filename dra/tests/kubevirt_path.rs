//! The path a DRA-allocated GPU takes into a KubeVirt VM: the driver prepares the claim, the
//! metadata file names the GPU's PCI address (as virt-launcher reads it), virt-launcher puts a
//! `<hostdev>` with that address and an alias of its own into the domain, and the hook sidecar's
//! rewriter, with KubeVirt's defaults (dialect auto, no argv adapter), gives that hostdev its HBM
//! cell bound to the HBM's host node when the HBM is online, and refuses a devdax-only region with
//! the host-side fix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use support::kubelet::{self, claim};
use support::{DRIVER, GPU_C1, NODE, read_json};

/// KubeVirt's corpus definition with one GPU hostdev, its address and alias replaced by a
/// DRA-allocated GPU's (virt-launcher names a DRA GPU `ua-gpu-<name>`).
fn dra_domain(address: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus/kubevirt/gpu1.rendered.xml");
    let xml = std::fs::read_to_string(path).unwrap();
    let (domain, rest) = address.split_once(':').unwrap();
    let (bus, rest) = rest.split_once(':').unwrap();
    let (slot, function) = rest.split_once('.').unwrap();
    let corpus_address = r#"<address type="pci" domain="0x0000" bus="0x81" slot="0x00" function="0x0"></address>"#;
    assert!(xml.contains(corpus_address) && xml.contains("ua-hostdevice-gpu1"));
    xml.replace(
        corpus_address,
        &format!(r#"<address type="pci" domain="0x{domain}" bus="0x{bus}" slot="0x{slot}" function="0x{function}"></address>"#),
    )
    .replace("ua-hostdevice-gpu1", "ua-gpu-gpu0")
}

/// What the KubeVirt front ends rewrite with by default: dialect auto, and no argv adapter
/// (virt-launcher runs its own QEMU).
fn kubevirt_defaults() -> hbm_rewrite::RewriteOptions {
    hbm_rewrite::RewriteOptions {
        adapter_path: None,
        ..hbm_rewrite::RewriteOptions::default()
    }
}

/// Prepares a claim for GPU c1 on `host` and returns the domain virt-launcher would build for it
/// (the address read from the metadata file) and the host's inventory.
async fn prepared_domain(host: support::Host) -> (String, topology::Inventory) {
    let api = support::apiserver::ApiServer::start().await;
    let driver = support::Driver::start(&host.settings, api.client()).await;
    api.put_claim(
        "vms",
        "vm-1-hbm-gpu-x",
        "uid-1",
        json!({"resource.kubernetes.io/pod-claim-name": "hbm-gpu"}),
        &[("gpu", DRIVER, NODE, GPU_C1)],
    );
    let answers = kubelet::prepare(
        &host.settings.dra_socket(),
        vec![claim("vms", "vm-1-hbm-gpu-x", "uid-1")],
    )
    .await;
    assert_eq!(answers["uid-1"].error, "");
    driver.stop().await;

    let document = read_json(&host.metadata_file("uid-1"));
    let address = document["requests"][0]["devices"][0]["attributes"]["resource.kubernetes.io/pciBusID"]["string"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(address, "0000:c1:00.0");
    let inventory = topology::discover(&host.settings.sysfs_root, &topology::DiscoveryConfig::default()).unwrap();
    (dra_domain(&address), inventory)
}

#[tokio::test]
async fn a_dra_allocated_gpu_with_online_hbm_is_rewritten_with_kubevirts_defaults() {
    let (xml, inventory) = prepared_domain(support::Host::c1_online()).await;
    let options = kubevirt_defaults();
    let rewritten = hbm_rewrite::rewrite(&xml, &inventory, &options).unwrap();
    assert!(rewritten.changed, "{:?}", rewritten.summary);
    assert_eq!(
        rewritten.summary[1..4],
        [
            "cell 1: 64 GiB CPU-less for GPU 0000:c1:00.0 region 0000:c1:00.0/dax1.0 (host node 3), none (auto)",
            "pcie-expander-bus index 1 (busNr 254, node 1) + pcie-root-port index 2; hostdev 0000:c1:00.0 moved behind it",
            "Generic Initiator hbm-gi1 for ua-gpu-gpu0 on node 1",
        ]
    );
    // SPM HBM, a disk-booted guest: no marking, and a warning that says so.
    let warnings: Vec<&String> = rewritten
        .summary
        .iter()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 1, "{:?}", rewritten.summary);
    let hostdevs = hbm_rewrite::pci_hostdevs(&rewritten.xml).unwrap();
    assert_eq!(hostdevs, [topology::PciAddress::parse("0000:c1:00.0").unwrap()]);
    assert!(rewritten.xml.contains("ua-gpu-gpu0"), "the hostdev keeps its alias");
    assert!(rewritten.xml.contains("pcie-expander-bus"), "{}", rewritten.xml);
    assert!(
        rewritten
            .xml
            .contains(r#"<memnode cellid="1" mode="strict" nodeset="3"/>"#),
        "{}",
        rewritten.xml
    );
    // Nothing virt-launcher lacks: no emulator change, no adapter instructions; the dax path is
    // only in the rewriter's record, never in what QEMU gets.
    for absent in ["<emulator>", "HBM_QEMU_INSTRUCTIONS"] {
        assert!(!rewritten.xml.contains(absent), "{absent} in {}", rewritten.xml);
    }
    let dax_lines: Vec<&str> = rewritten.xml.lines().filter(|l| l.contains("/dev/dax1.0")).collect();
    assert_eq!(dax_lines.len(), 1, "{dax_lines:?}");
    assert!(dax_lines[0].trim_start().starts_with("<hbm:region "), "{dax_lines:?}");
    let again = hbm_rewrite::rewrite(&rewritten.xml, &inventory, &options).unwrap();
    assert!(!again.changed, "a second pass changes nothing");
}

#[tokio::test]
async fn a_dra_allocated_gpu_with_devdax_hbm_is_refused_with_the_daxctl_fix() {
    let (xml, inventory) = prepared_domain(support::Host::new()).await;
    let error = hbm_rewrite::rewrite(&xml, &inventory, &kubevirt_defaults()).unwrap_err();
    assert_eq!(error.exit_code(), 3, "{error}");
    assert!(
        error
            .to_string()
            .contains("on the host run `daxctl reconfigure-device --mode=system-ram dax1.0`"),
        "{error}"
    );
}
