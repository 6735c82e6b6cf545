//! The machine the guest must have (x86 q35, for the pcie-expander-bus) and the ACPI feature
//! the expander's `_PXM` needs.

use crate::RewriteError;
use crate::document::Document;
use crate::libvirt::{invalid, unsatisfiable};

/// Whether `<features><acpi/>` must be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AcpiFeature {
    Present,
    /// `<acpi/>` goes into the existing `<features>` element.
    AddTo(usize),
    /// `<features><acpi/></features>` is added to the domain.
    AddFeatures,
}

/// Checks for an x86 q35 machine; returns the `<os>` element.
pub(crate) fn check_machine(doc: &Document<'_>) -> Result<usize, RewriteError> {
    let root = doc.root;
    let os = doc
        .child(root, "os")
        .ok_or_else(|| invalid(doc, root, "no <os> element"))?;
    let os_type = doc
        .child(os, "type")
        .ok_or_else(|| invalid(doc, os, "no <type> element"))?;
    let machine = doc
        .attr(os_type, "machine")
        .map(|machine| machine.into_owned())
        .unwrap_or_default();
    if !machine.contains("q35") {
        return Err(unsatisfiable(
            doc,
            os_type,
            format!(
                "machine {machine:?} is not q35; HBM passthrough needs a PCIe (q35) machine for the pcie-expander-bus"
            ),
        ));
    }
    let arch = doc
        .attr(os_type, "arch")
        .map(|arch| arch.into_owned())
        .unwrap_or_else(|| "x86_64".into());
    if arch != "x86_64" && arch != "i686" {
        return Err(unsatisfiable(
            doc,
            os_type,
            format!("arch {arch:?}: only x86 q35 guests are supported"),
        ));
    }
    Ok(os)
}

/// Whether the domain already enables ACPI.
pub(crate) fn acpi_feature(doc: &Document<'_>) -> AcpiFeature {
    match doc.child(doc.root, "features") {
        Some(features) if doc.child(features, "acpi").is_some() => AcpiFeature::Present,
        Some(features) => AcpiFeature::AddTo(features),
        None => AcpiFeature::AddFeatures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(os: &str) -> Result<usize, RewriteError> {
        let xml = format!("<domain>{os}</domain>");
        check_machine(&Document::parse(&xml).unwrap())
    }

    #[test]
    fn q35_x86_passes_and_returns_os() {
        assert_eq!(
            machine("<os><type arch='x86_64' machine='pc-q35-8.2'>hvm</type></os>"),
            Ok(1)
        );
        assert_eq!(machine("<os><type machine='q35'>hvm</type></os>"), Ok(1));
    }

    #[test]
    fn machine_not_q35_cannot_be_satisfied() {
        assert_eq!(
            machine("<os><type arch='x86_64' machine='pc-i440fx-8.2'>hvm</type></os>"),
            Err(RewriteError::Unsatisfiable {
                line: 1,
                element: "type".into(),
                reason: "machine \"pc-i440fx-8.2\" is not q35; HBM passthrough needs a PCIe (q35) machine for the pcie-expander-bus".into()
            })
        );
    }

    #[test]
    fn non_x86_and_missing_os_are_refused() {
        let err = machine("<os><type arch='aarch64' machine='q35'>hvm</type></os>").unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert!(err.to_string().contains("arch \"aarch64\": only x86 q35 guests"));
        assert_eq!(machine("").unwrap_err().exit_code(), 2);
    }

    #[test]
    fn acpi_feature_present_missing_or_without_features() {
        let acpi = |xml: &str| acpi_feature(&Document::parse(xml).unwrap());
        assert_eq!(
            acpi("<domain><features><acpi/></features></domain>"),
            AcpiFeature::Present
        );
        assert_eq!(
            acpi("<domain><features><apic/></features></domain>"),
            AcpiFeature::AddTo(1)
        );
        assert_eq!(acpi("<domain/>"), AcpiFeature::AddFeatures);
    }
}
