//! The model of KubeVirt's round trip itself (`common::domain_spec`): what it keeps, what it
//! drops, when the unmarshal fails, and that its KubeVirt-output entries really are in
//! KubeVirt's own output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::corpus;
use crate::common::domain_spec::{DOMAIN, Node, Origin, QEMU_NS, Rule, project, unmarshal};
use crate::common::domain_xml::{Element, parse};

const CHAIN: &str = r#"<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>vm</name>
  <memory unit='KiB'>2097152</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type><boot dev='hd'/></os>
  <cpu mode='host-model'><numa>
    <cell id='0' cpus='0-1' memory='1048576' unit='KiB' discard='yes'/>
    <cell id='1' memory='1048576' unit='KiB'/>
  </numa></cpu>
  <numatune><memnode cellid='1' mode='strict' nodeset='3'/></numatune>
  <features><acpi/><smm/></features>
  <devices>
    <controller type='pci' index='1' model='pcie-expander-bus'>
      <model name='pxb-pcie'/>
      <target busNr='254'><node>1</node></target>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0' multifunction='on'/>
    </controller>
    <hostdev mode='subsystem' type='pci' managed='no'>
      <driver name='vfio'/>
      <source><address domain='0x0000' bus='0x81' slot='0x00' function='0x0'/></source>
      <alias name='ua-hostdevice-gpu1'/>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
      <acpi nodeset='1'/>
      <rom bar='off'/>
    </hostdev>
    <watchdog model='i6300esb' action='poweroff'/>
  </devices>
  <metadata>
    <kubevirt xmlns='http://kubevirt.io'><uid>u-1</uid><graceperiod><deletionGracePeriodSeconds>5</deletionGracePeriodSeconds></graceperiod></kubevirt>
    <hbm:passthrough xmlns:hbm='https://hbm-passthrough.dev/xmlns/domain/1' mode='auto'><hbm:applied/></hbm:passthrough>
  </metadata>
  <on_reboot>destroy</on_reboot>
  <qemu:commandline><qemu:arg value='-object'/><qemu:arg value='acpi-generic-initiator,id=gi0,pci-dev=ua-hostdevice-gpu1,node=1'/><qemu:env name='X' value='1'/></qemu:commandline>
</domain>
"#;

#[test]
fn the_model_keeps_the_chain_and_drops_what_it_does_not_model() {
    let projected = project(CHAIN).unwrap();
    assert_eq!(
        projected,
        r#"<domain type="kvm" xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0">
  <name>vm</name>
  <memory unit="KiB">2097152</memory>
  <os>
    <type arch="x86_64" machine="q35">hvm</type>
  </os>
  <cpu mode="host-model">
    <numa>
      <cell id="0" cpus="0-1" memory="1048576" unit="KiB"/>
      <cell id="1" memory="1048576" unit="KiB"/>
    </numa>
  </cpu>
  <numatune>
    <memnode cellid="1" mode="strict" nodeset="3"/>
  </numatune>
  <features>
    <acpi/>
  </features>
  <devices>
    <controller type="pci" index="1" model="pcie-expander-bus">
      <target busNr="254">
        <node>1</node>
      </target>
      <address type="pci" domain="0x0000" bus="0x00" slot="0x05" function="0x0"/>
    </controller>
    <hostdev mode="subsystem" type="pci" managed="no">
      <driver/>
      <source>
        <address domain="0x0000" bus="0x81" slot="0x00" function="0x0"/>
      </source>
      <alias name="ua-hostdevice-gpu1"/>
      <address type="pci" domain="0x0000" bus="0x02" slot="0x00" function="0x0"/>
      <acpi nodeset="1"/>
    </hostdev>
  </devices>
  <metadata>
    <kubevirt xmlns="http://kubevirt.io">
      <uid>u-1</uid>
      <graceperiod>
        <deletionGracePeriodSeconds>5</deletionGracePeriodSeconds>
      </graceperiod>
    </kubevirt>
  </metadata>
  <qemu:commandline>
    <qemu:arg value="-object"/>
    <qemu:arg value="acpi-generic-initiator,id=gi0,pci-dev=ua-hostdevice-gpu1,node=1"/>
    <qemu:env name="X" value="1"/>
  </qemu:commandline>
</domain>
"#
    );
    // The projection is what the model holds: projecting it again changes nothing.
    assert_eq!(project(&projected).unwrap(), projected);
}

#[test]
fn qemu_commandline_is_found_by_namespace_not_by_prefix() {
    let xml = format!(
        "<domain xmlns:q='{QEMU_NS}'><q:commandline><q:arg value='-S'/></q:commandline>\
         <commandline><arg value='no namespace, not libvirt'/></commandline></domain>"
    );
    assert_eq!(
        project(&xml).unwrap(),
        format!(
            "<domain xmlns:qemu=\"{QEMU_NS}\">\n  <qemu:commandline>\n    <qemu:arg value=\"-S\"/>\n  </qemu:commandline>\n</domain>\n"
        )
    );
    // A metadata child in another namespace named `kubevirt` is not KubeVirt's own.
    let foreign = "<domain><metadata><kubevirt xmlns='urn:other'><uid>x</uid></kubevirt></metadata></domain>";
    assert_eq!(project(foreign).unwrap(), "<domain>\n  <metadata/>\n</domain>\n");
}

#[test]
fn the_unmarshal_fails_where_virt_launcher_would() {
    for (xml, why) in [
        ("<domain><name>x</nam></domain>", "XML syntax error"),
        ("<domain><devices>", "unexpected EOF"),
        (
            "<network><name>x</name></network>",
            "expected element type <domain> but have <network>",
        ),
        (
            "<domain><memory unit='KiB'>lots</memory></domain>",
            "<memory>lots</memory>: not an unsigned integer",
        ),
        (
            "<domain><cpu><numa><cell id='1' memory='1G'/></numa></cpu></domain>",
            "<cell memory='1G'>: not an unsigned integer",
        ),
        ("", "no <domain> element"),
    ] {
        let e = unmarshal(xml).unwrap_err();
        assert!(e.to_string().contains(why), "{xml}: {e}");
    }
    // Go's decoder stops at the end of the root element: what follows is never read.
    let trailing = corpus::file("kubevirt/api-domain_numa_topology.xml");
    assert!(
        trailing.text.trim_end().ends_with('`'),
        "the corpus file still ends in a stray backtick"
    );
    let node = unmarshal(&trailing.text).unwrap();
    assert_eq!(node.all(&["numatune", "memnode"]).len(), 2);
}

#[test]
fn every_kubevirt_corpus_definition_unmarshals_and_keeps_its_hostdevs() {
    let mut with_hostdevs = 0;
    for file in corpus::kubevirt_files() {
        let node: Node = unmarshal(&file.text).unwrap_or_else(|e| panic!("{}: {e}", file.name));
        let hostdevs = file.text.matches("<hostdev ").count();
        assert_eq!(node.all(&["devices", "hostdev"]).len(), hostdevs, "{}", file.name);
        for hostdev in node.all(&["devices", "hostdev"]) {
            assert_eq!(hostdev.all(&["source", "address"]).len(), 1, "{}", file.name);
            let alias = hostdev.all(&["alias"])[0].attr("name").unwrap();
            assert!(alias.starts_with("ua-hostdevice-"), "{}: {alias}", file.name);
        }
        with_hostdevs += usize::from(hostdevs > 0);
        let projected = project(&file.text).unwrap();
        assert_eq!(project(&projected).unwrap(), projected, "{}: idempotent", file.name);
        assert!(
            !projected.contains("<interface"),
            "{}: interfaces are not in the model list",
            file.name
        );
        assert!(!projected.contains("<sysinfo"), "{}", file.name);
    }
    assert_eq!(with_hostdevs, 2);
}

/// Every (path, attribute) of the rules whose origin is KubeVirt's own output.
fn kubevirt_output_entries(rule: &Rule, path: &mut Vec<&'static str>, out: &mut Vec<(String, Option<String>)>) {
    path.push(rule.name);
    if rule.origin == Origin::KubevirtOutput {
        out.push((path.join("/"), None));
        for attr in rule.attrs {
            out.push((path.join("/"), Some((*attr).to_string())));
        }
    }
    for child in rule.children {
        kubevirt_output_entries(child, path, out);
    }
    path.pop();
}

fn elements_at<'a>(root: &'a Element, path: &[&'a str]) -> Vec<&'a Element> {
    let Some((first, rest)) = path.split_first() else {
        return vec![root];
    };
    root.children_named(first).flat_map(|c| elements_at(c, rest)).collect()
}

#[test]
fn kubevirt_output_entries_are_in_kubevirts_own_output() {
    let own: Vec<Element> = [
        "kubevirt/converter-domain_x86_64.xml",
        "kubevirt/hooks-domain.xml",
        "kubevirt/api-domain_x86_64.rendered.xml",
    ]
    .iter()
    .map(|name| parse(&corpus::file(name).text).unwrap_or_else(|e| panic!("{name}: {e}")))
    .collect();
    let mut entries = Vec::new();
    kubevirt_output_entries(&DOMAIN, &mut Vec::new(), &mut entries);
    assert!(entries.len() >= 30, "{entries:?}");
    for (path, attr) in entries {
        let steps: Vec<&str> = path.split('/').skip(1).collect();
        let found = own.iter().any(|root| {
            elements_at(root, &steps)
                .iter()
                .any(|e| attr.as_deref().is_none_or(|a| e.attr(a).is_some()))
        });
        assert!(found, "{path} {attr:?} is not in KubeVirt's own output");
    }
}
