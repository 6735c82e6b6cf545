//! Plans of small definitions, whole: every decision with its exact outcome.

use topology::fixture::region;
use topology::{Inventory, PciAddress};

use super::*;
use crate::instructions::Instruction;
use crate::metadata::HbmMetadata;
use crate::{Dialect, PolicyMode};

const GIB: u64 = 1 << 30;
const GPU: PciAddress = PciAddress::new(0, 0x41, 0, 0);

fn domain(extra: &str, hostdev_extra: &str) -> String {
    format!(
        "<domain type='kvm'>\n  <memory unit='GiB'>2</memory>\n  <currentMemory unit='GiB'>2</currentMemory>\n  <vcpu>4</vcpu>\n  <os>\n    <type arch='x86_64' machine='q35'>hvm</type>\n    <kernel>/k</kernel>\n  </os>\n  <devices>\n    <controller type='pci' index='0' model='pcie-root'/>\n    <hostdev mode='subsystem' type='pci'>\n      <source><address domain='0x0000' bus='0x41' slot='0x00' function='0x0'/></source>{hostdev_extra}\n    </hostdev>\n  </devices>{extra}\n</domain>\n"
    )
}

fn plan_of<'i>(
    xml: &str,
    inventory: &'i Inventory,
    options: &RewriteOptions,
) -> Result<Option<Plan<'i>>, RewriteError> {
    let doc = Document::parse(xml).unwrap();
    let policy = Policy::resolve(options, None);
    plan(&doc, inventory, &policy, options)
}

#[test]
fn one_gpu_on_a_domain_without_numa() {
    let inv = inventory_of(vec![region(GPU, 2, GIB)]);
    let xml = domain("", "");
    let plan = plan_of(&xml, &inv, &RewriteOptions::default()).unwrap().unwrap();
    assert_eq!(
        plan.cells,
        GuestCells {
            existing: vec![(0, 2 * GIB)],
            created_cell0: Some(2 * GIB),
            first_new_id: 1,
        }
    );
    assert_eq!(plan.memory_bytes, 3 * GIB);
    assert_eq!(plan.targets.len(), 1);
    let target = &plan.targets[0];
    assert_eq!(
        (target.addr, target.dialect, target.alias.as_str(), target.alias_change),
        (GPU, Dialect::Auto, "ua-hbm-0000-41-00-0", AliasChange::Add)
    );
    assert_eq!(
        target.placement,
        Placement::New {
            expander_index: 1,
            root_port_index: 2,
            bus_nr: 254,
        }
    );
    assert_eq!(plan.acpi_feature, AcpiFeature::AddFeatures);
    assert_eq!(
        plan.qemu,
        QemuNamespace {
            prefix: "qemu:".into(),
            declare: true,
        }
    );
    assert_eq!(
        plan.marking.kernel_cmdline,
        vec!["memmap=1G%4G-1+0xefffffff".to_string()]
    );
    assert_eq!(plan.marking.instructions, vec![]);
    assert_eq!(plan.emulator, EmulatorChange::Unchanged);
    assert_eq!(
        plan.summary(),
        vec![
            "cell 0: 2 GiB with all vCPUs (the existing memory)",
            "<features><acpi/> added (the pxb's _PXM needs ACPI)",
            "cell 1: 1 GiB CPU-less for GPU 0000:41:00.0 region 0000:41:00.0/node2 (host node 2), kernel-cmdline (auto)",
            "pcie-expander-bus index 1 (busNr 254, node 1) + pcie-root-port index 2; hostdev 0000:41:00.0 moved behind it",
            "hostdev 0000:41:00.0 alias ua-hbm-0000-41-00-0 added",
            "Generic Initiator hbm-gi1 for ua-hbm-0000-41-00-0 on node 1",
            "guest kernel command line += memmap=1G%4G-1+0xefffffff",
        ]
    );
    assert_eq!(
        plan.record(),
        vec![ClaimedRegion {
            id: "0000:41:00.0/node2".into(),
            gpu: GPU,
            host_node: Some(2),
            dax: None,
            size_bytes: GIB,
            guest_cell: 1,
            dialect: Some(Dialect::KernelCmdline),
        }]
    );
}

#[test]
fn sp_mem_with_native_generic_initiator_needs_the_adapter_not_the_gi_objects() {
    let inv = inventory_of(vec![region(GPU, 2, GIB), region(GPU, 3, GIB)]);
    let options = RewriteOptions {
        dialect: Dialect::SpMem,
        native_generic_initiator: true,
        adapter_path: Some("/opt/hbm-qemu".into()),
        ..RewriteOptions::default()
    };
    let xml = domain("\n  <features><acpi/></features>", "\n      <alias name='ua-gpu'/>");
    let plan = plan_of(&xml, &inv, &options).unwrap().unwrap();
    assert_eq!(plan.generic_initiators, vec![]);
    assert_eq!(plan.targets[0].nodeset(), "1,2");
    assert_eq!(plan.targets[0].alias_change, AliasChange::Keep);
    assert_eq!(
        plan.marking.instructions,
        vec![
            Instruction::SpMem {
                cell: 1,
                size_bytes: GIB
            },
            Instruction::SpMem {
                cell: 2,
                size_bytes: GIB
            }
        ]
    );
    assert_eq!(plan.emulator, EmulatorChange::Add);
    assert!(plan.qemu.declare);
    assert_eq!(
        plan.summary()[4..],
        [
            "Generic Initiator (libvirt <acpi nodeset='1,2'/>) for ua-gpu",
            "HBM_QEMU_INSTRUCTIONS=v1;sp-mem:cell=1,size=1073741824;sp-mem:cell=2,size=1073741824 for the QEMU argv adapter",
            "<emulator> /opt/hbm-qemu added (the adapter)",
        ]
    );
}

#[test]
fn native_generic_initiator_without_instructions_declares_no_namespace() {
    let inv = inventory_of(vec![region(GPU, 2, GIB)]);
    let options = RewriteOptions {
        dialect: Dialect::None,
        native_generic_initiator: true,
        ..RewriteOptions::default()
    };
    let plan = plan_of(&domain("", ""), &inv, &options).unwrap().unwrap();
    assert_eq!(
        plan.qemu,
        QemuNamespace {
            prefix: String::new(),
            declare: false,
        }
    );
}

#[test]
fn nothing_selected_is_no_plan_and_a_wrong_root_is_bad_input() {
    let options = RewriteOptions::default();
    let empty = Inventory::empty("/");
    assert_eq!(plan_of(&domain("", ""), &empty, &options), Ok(None));
    let off = RewriteOptions {
        policy: PolicyMode::Off,
        ..RewriteOptions::default()
    };
    let inv = inventory_of(vec![region(GPU, 2, GIB)]);
    assert_eq!(plan_of(&domain("", ""), &inv, &off), Ok(None));
    assert_eq!(plan_of("<domain/>", &inv, &options), Ok(None));
    let err = plan_of("<network/>", &inv, &options).unwrap_err();
    assert!(err.to_string().contains("the root element must be <domain>"));
}

#[test]
fn metadata_policy_overrides_the_host_defaults() {
    let options = RewriteOptions::default();
    let meta = HbmMetadata {
        mode: Some(PolicyMode::Required),
        dialect: Some(Dialect::SpMem),
        size_cap_bytes: Some(GIB),
        ..HbmMetadata::default()
    };
    let policy = Policy::resolve(&options, Some(&meta));
    let xml = domain("", "");
    let doc = Document::parse(&xml).unwrap();
    let inv = inventory_of(vec![region(GPU, 2, 4 * GIB)]);
    let planned = plan(&doc, &inv, &policy, &options).unwrap().unwrap();
    assert_eq!(
        (planned.targets[0].dialect, planned.targets[0].cells[0].size),
        (Dialect::SpMem, GIB)
    );
    let err = plan(&doc, &Inventory::empty("/"), &policy, &options).unwrap_err();
    assert_eq!(err.exit_code(), 3);
}
