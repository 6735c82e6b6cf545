//! The user alias each GPU's hostdev carries (the Generic Initiator names the device by it): an
//! existing `ua-` alias is kept, anything else becomes `ua-hbm-DDDD-BB-SS-F`.

use topology::PciAddress;

use crate::RewriteError;
use crate::document::Document;
use crate::libvirt::invalid;

/// What happens to the hostdev's `<alias>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AliasChange {
    /// It already has the alias.
    Keep,
    /// Its `<alias>` element (another name) is replaced.
    Replace(usize),
    /// It has none: one is added.
    Add,
}

/// The alias for the GPU at `addr`: its own when it starts with `ua-`, else one made from the
/// address.
pub(crate) fn alias_for(doc: &Document<'_>, hostdev: usize, addr: PciAddress) -> String {
    match doc.child(hostdev, "alias").and_then(|alias| doc.attr(alias, "name")) {
        Some(name) if name.starts_with("ua-") => name.into_owned(),
        _ => format!(
            "ua-hbm-{:04x}-{:02x}-{:02x}-{:x}",
            addr.domain, addr.bus, addr.device, addr.function
        ),
    }
}

/// Refuses an alias libvirt would refuse or another hostdev already takes; records it as taken.
pub(crate) fn claim_alias(
    doc: &Document<'_>,
    hostdev: usize,
    alias: &str,
    taken: &mut Vec<String>,
) -> Result<(), RewriteError> {
    if !alias
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    {
        return Err(invalid(
            doc,
            hostdev,
            format!("alias {alias:?} has characters libvirt does not allow (use A-Z, a-z, 0-9, '-', '_')"),
        ));
    }
    if taken.iter().any(|other| other == alias) {
        return Err(RewriteError::Collision {
            line: doc.line(hostdev),
            element: "alias".into(),
            reason: format!("alias {alias:?} is used by two hostdevs; give each a unique ua- alias"),
        });
    }
    taken.push(alias.to_string());
    Ok(())
}

/// How the hostdev's `<alias>` changes to carry `alias`.
pub(crate) fn alias_change(doc: &Document<'_>, hostdev: usize, alias: &str) -> AliasChange {
    match doc.child(hostdev, "alias") {
        Some(element) if doc.attr(element, "name").is_some_and(|name| name == alias) => AliasChange::Keep,
        Some(element) => AliasChange::Replace(element),
        None => AliasChange::Add,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPU: PciAddress = PciAddress::new(0, 0xc1, 0, 0);

    fn hostdev_with(alias: &str) -> (Document<'_>, usize) {
        let doc = Document::parse(alias).unwrap();
        let root = doc.root;
        (doc, root)
    }

    #[test]
    fn a_ua_alias_is_reused_and_kept() {
        let (doc, hostdev) = hostdev_with("<hostdev><alias name='ua-gpu0'/></hostdev>");
        assert_eq!(alias_for(&doc, hostdev, GPU), "ua-gpu0");
        assert_eq!(alias_change(&doc, hostdev, "ua-gpu0"), AliasChange::Keep);
    }

    #[test]
    fn another_alias_is_replaced_and_a_missing_one_added() {
        let (doc, hostdev) = hostdev_with("<hostdev><alias name='hostdev0'/></hostdev>");
        assert_eq!(alias_for(&doc, hostdev, GPU), "ua-hbm-0000-c1-00-0");
        assert_eq!(
            alias_change(&doc, hostdev, "ua-hbm-0000-c1-00-0"),
            AliasChange::Replace(1)
        );
        let (doc, hostdev) = hostdev_with("<hostdev/>");
        assert_eq!(
            alias_for(&doc, hostdev, PciAddress::new(1, 2, 3, 4)),
            "ua-hbm-0001-02-03-4"
        );
        assert_eq!(alias_change(&doc, hostdev, "ua-x"), AliasChange::Add);
    }

    #[test]
    fn bad_characters_and_a_second_use_are_refused() {
        let (doc, hostdev) = hostdev_with("<hostdev/>");
        let mut taken = Vec::new();
        assert_eq!(claim_alias(&doc, hostdev, "ua-a", &mut taken), Ok(()));
        assert_eq!(taken, vec!["ua-a".to_string()]);
        let twice = claim_alias(&doc, hostdev, "ua-a", &mut taken).unwrap_err();
        assert_eq!(twice.exit_code(), 2);
        assert!(twice.to_string().contains("alias \"ua-a\" is used by two hostdevs"));
        let bad = claim_alias(&doc, hostdev, "ua-a b", &mut taken).unwrap_err();
        assert!(bad.to_string().contains("has characters libvirt does not allow"));
    }
}
