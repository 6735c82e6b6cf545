//! KubeVirt end to end, without libvirt: every KubeVirt corpus definition that passes a GPU
//! through goes through the real sidecar (gRPC on a unix socket, the virt-launcher stand-in of
//! `common::kubevirt`) and through KubeVirt's sidecar-shim convention (`hbm-hook onDefineDomain`),
//! with the chart's default settings, on the three host kinds (SPM HBM behind device-dax, SPM HBM
//! onlined, ordinary-memory HBM). The answer must unmarshal into KubeVirt's model and the HBM chain
//! must be in the answer and in the model's re-marshal (`common::domain_spec`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use crate::common::corpus;
use crate::common::domain_spec::project;
use crate::common::guest::soft_reserved_params;
use crate::common::kubevirt::{
    GIB, SidecarProcess, connect, find_socket, info, newest_version, on_define_domain, vmi_json, write_node,
};
use crate::common::kubevirt_round_trip::{
    CORPUS_GPUS, CorpusGpu, GiStyle, HOST_KINDS, HostKind, check_chain_survives, cmdline_of, direct_boot_variant,
    fixture_host, shim_on_define_domain, spm_warnings,
};

/// HBM per GPU on the fixture hosts.
const HBM_BYTES: u64 = 16 * GIB;
/// The chart's defaults: the sidecar gets no dialect, policy or Generic Initiator flag.
const CHART_DEFAULTS: &[&str] = &[];
const REQUIRED: (&str, &str) = ("hbm-passthrough.dev/policy", "required");
/// The host-side fix the answer names on a device-dax host.
const DAXCTL_FIX: &str = "daxctl reconfigure-device --mode=system-ram";

/// A definition as virt-launcher sends it: disk-booted (the corpus file) or booting a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Boot {
    Disk,
    DirectKernel,
}

fn definition(gpu: &CorpusGpu, boot: Boot) -> String {
    let text = corpus::file(gpu.file).text;
    match boot {
        Boot::Disk => text,
        Boot::DirectKernel => direct_boot_variant(&text, "/var/lib/kubevirt/vmlinuz", "/var/lib/kubevirt/initrd.img"),
    }
}

/// What an `auto` answer must be on `kind` (the input for the dax host, else the chain);
/// returns whether this answer must come with a `warning:` (SPM HBM the guest sees unmarked).
fn check_auto_answer(kind: HostKind, gpu: &CorpusGpu, boot: Boot, input: &str, answer: &str, gi: GiStyle) -> bool {
    let what = format!("{kind:?} {} {boot:?}", gpu.file);
    if kind == HostKind::SpmDax {
        assert_eq!(
            answer, input,
            "{what}: no adapter in virt-launcher, device-dax HBM: unchanged"
        );
        return false;
    }
    let projected = check_chain_survives(&what, input, answer, gpu, HBM_BYTES, gi);
    let marks = |xml: &str| soft_reserved_params(&cmdline_of(xml)).unwrap();
    let spm_by_cmdline = kind == HostKind::SpmOnline && boot == Boot::DirectKernel;
    for (form, xml) in [("answer", answer), ("re-marshal", projected.as_str())] {
        let params = marks(xml);
        if spm_by_cmdline {
            // One range, or two when the cell straddles the guest's PCI hole below 4 GiB.
            assert!(
                (1..=2).contains(&params.len()),
                "{what} ({form}): memmap= ranges\n{xml}"
            );
            let total: u64 = params.iter().map(|p| p.size).sum();
            assert_eq!(total, HBM_BYTES, "{what} ({form}): memmap= sizes add up to the cell");
        } else {
            assert!(params.is_empty(), "{what} ({form}): no memmap=\n{xml}");
            assert!(!cmdline_of(xml).contains("memmap="), "{what} ({form})");
        }
    }
    kind == HostKind::SpmOnline && boot == Boot::Disk
}

fn sysfs(kind: HostKind) -> tempfile::TempDir {
    write_node(&fixture_host(kind, HBM_BYTES))
}

/// Each corpus GPU definition in both boot forms.
fn cases() -> Vec<(CorpusGpu, Boot)> {
    CORPUS_GPUS
        .iter()
        .flat_map(|g| [(*g, Boot::Disk), (*g, Boot::DirectKernel)])
        .collect()
}

#[test]
fn the_gpu_list_is_every_kubevirt_corpus_definition_with_a_pci_hostdev() {
    let with_hostdev: Vec<String> = corpus::kubevirt_files()
        .into_iter()
        .filter(|f| f.text.contains("<hostdev type=\"pci\"") || f.text.contains("<hostdev mode"))
        .map(|f| f.name)
        .collect();
    let listed: Vec<String> = CORPUS_GPUS.iter().map(|g| g.file.to_string()).collect();
    assert_eq!(with_hostdev, listed);
}

/// Runs every case through one sidecar on `kind` with `flags`; returns the answers (in
/// [`cases`] order), the answers to `required` VMIs, and the sidecar's log.
async fn sidecar_answers(
    kind: HostKind,
    flags: &[&str],
) -> (Vec<Vec<u8>>, Vec<Result<Vec<u8>, tonic::Status>>, String) {
    let node = sysfs(kind);
    let hooks = tempfile::tempdir().unwrap();
    let mut args = vec!["--sysfs-root", node.path().to_str().unwrap()];
    args.extend_from_slice(flags);
    let mut sidecar = SidecarProcess::start(hooks.path(), &args);
    let socket = find_socket(hooks.path(), &mut sidecar);
    let channel = connect(&socket).await;
    let version = newest_version(&info(&channel).await);
    let (mut answers, mut required) = (Vec::new(), Vec::new());
    for (gpu, boot) in cases() {
        let input = definition(&gpu, boot);
        let answer = on_define_domain(&channel, version, input.as_bytes(), &vmi_json("vm", &[])).await;
        answers.push(answer.unwrap_or_else(|e| panic!("{kind:?} {} {boot:?}: {e}", gpu.file)));
        let must = vmi_json("needs-hbm", &[REQUIRED]);
        required.push(on_define_domain(&channel, version, input.as_bytes(), &must).await);
    }
    proto::kubevirt::hooks::v1alpha3::callbacks_client::CallbacksClient::new(channel.clone())
        .shutdown(proto::kubevirt::hooks::v1alpha3::ShutdownParams {})
        .await
        .unwrap();
    drop(channel);
    let (code, log) = sidecar.wait();
    assert_eq!(code, Some(0), "{log}");
    (answers, required, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_answers_carry_the_chain_through_kubevirts_model_on_every_host_kind() {
    for kind in HOST_KINDS {
        let (answers, required, log) = sidecar_answers(kind, CHART_DEFAULTS).await;
        let mut warnings = 0;
        for (((gpu, boot), answer), must) in cases().iter().zip(&answers).zip(&required) {
            let input = definition(gpu, *boot);
            let answer = String::from_utf8(answer.clone()).unwrap();
            warnings += usize::from(check_auto_answer(
                kind,
                gpu,
                *boot,
                &input,
                &answer,
                GiStyle::QemuCommandline,
            ));
            match kind {
                HostKind::SpmDax => {
                    let e = must.as_ref().unwrap_err();
                    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
                    let fix = format!("{DAXCTL_FIX} {}", gpu.dax);
                    assert!(e.message().contains(&fix), "{}: {}", gpu.file, e.message());
                    assert!(
                        e.message()
                            .starts_with("hbm-passthrough: VMI hbm-test/needs-hbm requires HBM"),
                        "{}",
                        e.message()
                    );
                }
                _ => assert_eq!(must.as_ref().unwrap(), answer.as_bytes(), "required = auto when it can"),
            }
        }
        match kind {
            HostKind::SpmDax => {
                for gpu in CORPUS_GPUS {
                    let fix = format!("{DAXCTL_FIX} {}", gpu.dax);
                    assert_eq!(
                        log.matches(&fix).count(),
                        4,
                        "{kind:?}: auto warns twice, required fails twice per GPU\n{log}"
                    );
                }
            }
            HostKind::SpmOnline => assert_eq!(spm_warnings(&log), 2 * warnings, "{kind:?}\n{log}"),
            HostKind::Normal => assert_eq!(spm_warnings(&log), 0, "{kind:?}\n{log}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acpi_nodeset_style_puts_the_generic_initiator_on_the_hostdev() {
    let (answers, _, _) = sidecar_answers(HostKind::SpmOnline, &["--generic-initiator", "acpi-nodeset"]).await;
    for ((gpu, boot), answer) in cases().iter().zip(&answers) {
        let input = definition(gpu, *boot);
        let answer = String::from_utf8(answer.clone()).unwrap();
        check_auto_answer(HostKind::SpmOnline, gpu, *boot, &input, &answer, GiStyle::AcpiNodeset);
    }
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn shim(kind_root: &Path, vmi: &[u8], input: &str, flags: &[&str]) -> std::process::Output {
    let mut all = CHART_DEFAULTS.to_vec();
    all.extend_from_slice(flags);
    shim_on_define_domain(vmi, input, kind_root, &all)
}

#[test]
fn shim_convention_gives_the_same_answers_and_exit_codes() {
    for kind in HOST_KINDS {
        let node = sysfs(kind);
        for (gpu, boot) in cases() {
            let what = format!("{kind:?} {} {boot:?}", gpu.file);
            let input = definition(&gpu, boot);
            let out = shim(node.path(), &vmi_json("vm", &[]), &input, &[]);
            assert_eq!(out.status.code(), Some(0), "{what}: {}", stderr(&out));
            let answer = String::from_utf8(out.stdout.clone()).unwrap();
            let warns = check_auto_answer(kind, &gpu, boot, &input, &answer, GiStyle::QemuCommandline);
            let log = stderr(&out);
            match kind {
                HostKind::SpmDax => assert!(log.contains(&format!("{DAXCTL_FIX} {}", gpu.dax)), "{what}: {log}"),
                _ => assert_eq!(spm_warnings(&log), usize::from(warns), "{what}: {log}"),
            }

            let out = shim(node.path(), &vmi_json("needs-hbm", &[REQUIRED]), &input, &[]);
            if kind == HostKind::SpmDax {
                assert_eq!(out.status.code(), Some(3), "{what}: {}", stderr(&out));
                assert!(out.stdout.is_empty(), "{what}");
                let err = stderr(&out);
                assert_eq!(err.lines().count(), 1, "{what}: one line\n{err}");
                assert!(
                    err.starts_with("hbm-hook onDefineDomain: VMI hbm-test/needs-hbm requires HBM"),
                    "{err}"
                );
                assert!(err.contains(&format!("{DAXCTL_FIX} {}", gpu.dax)), "{what}: {err}");
            } else {
                assert_eq!(out.status.code(), Some(0), "{what}: {}", stderr(&out));
                assert_eq!(out.stdout, answer.as_bytes(), "{what}: required = auto when it can");
            }

            if kind == HostKind::SpmOnline {
                let out = shim(
                    node.path(),
                    &vmi_json("vm", &[]),
                    &input,
                    &["--generic-initiator", "acpi-nodeset"],
                );
                assert_eq!(out.status.code(), Some(0), "{what}: {}", stderr(&out));
                let answer = String::from_utf8(out.stdout).unwrap();
                check_auto_answer(kind, &gpu, boot, &input, &answer, GiStyle::AcpiNodeset);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_and_shim_answer_alike() {
    let kind = HostKind::SpmOnline;
    let (answers, _, _) = sidecar_answers(kind, CHART_DEFAULTS).await;
    let node = sysfs(kind);
    for ((gpu, boot), answer) in cases().iter().zip(&answers) {
        let out = shim(node.path(), &vmi_json("vm", &[]), &definition(gpu, *boot), &[]);
        assert_eq!(&out.stdout, answer, "{} {boot:?}", gpu.file);
        // The re-marshal of the answer is itself a valid answer to unmarshal again.
        let projected = project(std::str::from_utf8(answer).unwrap()).unwrap();
        assert_eq!(project(&projected).unwrap(), projected);
    }
}
