//! The path a DRA-allocated GPU takes into a KubeVirt VM: the driver prepares the claim, the
//! metadata file names the GPU's PCI address (as virt-launcher reads it), virt-launcher puts a
//! `<hostdev>` with that address and an alias of its own into the domain, and the hook sidecar's
//! rewriter (unchanged) gives that hostdev its HBM cell, reading the address from the XML.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use support::kubelet::{self, claim};
use support::{DRIVER, GPU_C1, NODE, read_json, running};

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

#[tokio::test]
async fn a_dra_allocated_gpu_is_rewritten_by_the_unchanged_sidecar_rewriter() {
    let (api, host, driver) = running().await;
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

    let xml = dra_domain(&address);
    let inventory = topology::discover(&host.settings.sysfs_root, &topology::DiscoveryConfig::default()).unwrap();
    // The corpus domain boots from a disk, so a dialect that needs no kernel command line.
    let options = hbm_rewrite::RewriteOptions {
        dialect: hbm_rewrite::Dialect::None,
        ..hbm_rewrite::RewriteOptions::default()
    };
    let rewritten = hbm_rewrite::rewrite(&xml, &inventory, &options).unwrap();
    assert!(rewritten.changed, "{:?}", rewritten.summary);
    assert_eq!(
        rewritten.summary[1..4],
        [
            "cell 1: 64 GiB CPU-less for GPU 0000:c1:00.0 region 0000:c1:00.0/dax1.0 (dax /dev/dax1.0), none",
            "pcie-expander-bus index 1 (busNr 254, node 1) + pcie-root-port index 2; hostdev 0000:c1:00.0 moved behind it",
            "Generic Initiator hbm-gi1 for ua-gpu-gpu0 on node 1",
        ]
    );
    let hostdevs = hbm_rewrite::pci_hostdevs(&rewritten.xml).unwrap();
    assert_eq!(hostdevs, [topology::PciAddress::parse("0000:c1:00.0").unwrap()]);
    assert!(rewritten.xml.contains("ua-gpu-gpu0"), "the hostdev keeps its alias");
    assert!(rewritten.xml.contains("pcie-expander-bus"), "{}", rewritten.xml);
    let again = hbm_rewrite::rewrite(&rewritten.xml, &inventory, &options).unwrap();
    assert!(!again.changed, "a second pass changes nothing");
}
