//! The Generic Initiators: one `acpi-generic-initiator` object per HBM cell on the QEMU command
//! line (skipping ones already there), the `qemu` namespace prefix they are written with, or
//! libvirt's native `<acpi nodeset>` on the hostdev.

use crate::document::Document;
use crate::libvirt::{invalid, is_xml_name};
use crate::{RewriteError, instructions};

use super::Target;

/// libvirt's namespace for `<qemu:commandline>`.
pub(crate) const QEMU_NAMESPACE: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// The prefix `<qemu:commandline>` is written with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct QemuNamespace {
    /// `qemu:` (with the colon), or empty for the default namespace.
    pub prefix: String,
    /// `xmlns:qemu` must be declared on `<domain>`.
    pub declare: bool,
}

impl QemuNamespace {
    /// `<{prefix}commandline>`'s qualified name.
    pub(crate) fn commandline_name(&self) -> String {
        format!("{}commandline", self.prefix)
    }

    /// The definition's `<qemu:commandline>`, if any.
    pub(crate) fn commandline(&self, doc: &Document<'_>) -> Option<usize> {
        doc.child(doc.root, &self.commandline_name())
    }
}

/// One Generic Initiator object for HBM cell `cell` of the GPU aliased `alias`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GenericInitiator {
    pub cell: u32,
    pub alias: String,
    /// The definition already passes this object (a hand-made or half-removed setup).
    pub present: bool,
}

impl GenericInitiator {
    /// The `-object` argument.
    pub(crate) fn arg_value(&self) -> String {
        format!(
            "acpi-generic-initiator,id=hbm-gi{},pci-dev={},node={}",
            self.cell, self.alias, self.cell
        )
    }
}

/// The prefix bound to libvirt's qemu namespace; `qemu` declared when `needed` and unbound.
pub(crate) fn qemu_namespace(doc: &Document<'_>, needed: bool) -> Result<QemuNamespace, RewriteError> {
    let root = doc.root;
    let mut bound = doc.root_prefix_for(QEMU_NAMESPACE);
    let declare = needed && bound.is_none();
    if declare {
        if doc.attrs(root).iter().any(|attr| attr.name == "xmlns:qemu") {
            return Err(invalid(
                doc,
                root,
                "prefix 'qemu' is bound to another namespace; bind it to libvirt's qemu namespace",
            ));
        }
        bound = Some("qemu".into());
    }
    let prefix = match bound.as_deref() {
        Some("") | None => String::new(),
        Some(prefix) if is_xml_name(prefix) => format!("{prefix}:"),
        Some(prefix) => {
            return Err(invalid(
                doc,
                root,
                format!("namespace prefix {prefix:?} is not an XML name"),
            ));
        }
    };
    Ok(QemuNamespace { prefix, declare })
}

/// One Generic Initiator per new cell, in cell order.
pub(crate) fn generic_initiators(
    doc: &Document<'_>,
    qemu: &QemuNamespace,
    targets: &[Target<'_>],
) -> Vec<GenericInitiator> {
    let present = existing_args(doc, qemu);
    targets
        .iter()
        .flat_map(|target| {
            target.cells.iter().map(|cell| GenericInitiator {
                cell: cell.id,
                alias: target.alias.clone(),
                present: false,
            })
        })
        .map(|initiator| GenericInitiator {
            present: present.contains(&initiator.arg_value()),
            ..initiator
        })
        .collect()
}

/// Values of the `<qemu:arg>`s already in `<qemu:commandline>`.
fn existing_args(doc: &Document<'_>, qemu: &QemuNamespace) -> Vec<String> {
    let arg_name = format!("{}arg", qemu.prefix);
    qemu.commandline(doc)
        .map(|commandline| {
            doc.children_named(commandline, &arg_name)
                .filter_map(|arg| doc.attr(arg, "value").map(|value| value.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The `<qemu:env name='HBM_QEMU_INSTRUCTIONS'>` already in `<qemu:commandline>`, if any.
pub(crate) fn existing_env(doc: &Document<'_>, qemu: &QemuNamespace) -> Option<usize> {
    let env_name = format!("{}env", qemu.prefix);
    qemu.commandline(doc).and_then(|commandline| {
        doc.children_named(commandline, &env_name)
            .find(|env| doc.attr(*env, "name").is_some_and(|name| name == instructions::ENV_VAR))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(xml: &str, needed: bool) -> Result<QemuNamespace, RewriteError> {
        qemu_namespace(&Document::parse(xml).unwrap(), needed)
    }

    #[test]
    fn qemu_prefix_is_found_declared_or_refused() {
        let bound = format!("<domain xmlns:q='{QEMU_NAMESPACE}'/>");
        assert_eq!(
            namespace(&bound, true),
            Ok(QemuNamespace {
                prefix: "q:".into(),
                declare: false
            })
        );
        assert_eq!(
            namespace("<domain/>", true),
            Ok(QemuNamespace {
                prefix: "qemu:".into(),
                declare: true
            })
        );
        assert_eq!(
            namespace("<domain/>", false),
            Ok(QemuNamespace {
                prefix: String::new(),
                declare: false
            })
        );
        let other = namespace("<domain xmlns:qemu='urn:other'/>", true).unwrap_err();
        assert!(
            other
                .to_string()
                .contains("prefix 'qemu' is bound to another namespace")
        );
    }

    #[test]
    fn arg_value_names_cell_and_alias_and_present_args_are_found() {
        let initiator = GenericInitiator {
            cell: 3,
            alias: "ua-gpu".into(),
            present: false,
        };
        assert_eq!(
            initiator.arg_value(),
            "acpi-generic-initiator,id=hbm-gi3,pci-dev=ua-gpu,node=3"
        );
        let xml = format!(
            "<domain xmlns:qemu='{QEMU_NAMESPACE}'><qemu:commandline><qemu:arg value='-object'/><qemu:arg value='{}'/><qemu:env name='HBM_QEMU_INSTRUCTIONS' value='v1'/></qemu:commandline></domain>",
            initiator.arg_value()
        );
        let doc = Document::parse(&xml).unwrap();
        let qemu = qemu_namespace(&doc, true).unwrap();
        assert_eq!(
            existing_args(&doc, &qemu),
            vec!["-object".to_string(), initiator.arg_value()]
        );
        assert_eq!(existing_env(&doc, &qemu), Some(4));
    }
}
