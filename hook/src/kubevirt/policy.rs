//! The pure core of the KubeVirt front end: VMI JSON + domain XML + host inventory in, the
//! domain XML to hand to libvirt out. No gRPC, no async, no filesystem: the sidecar server
//! ([`super::sidecar`]) and the sidecar-shim convention (`onDefineDomain --vmi .. --domain ..`) both
//! call [`define_domain`].
//!
//! The policy comes from VMI annotations in the project's domain:
//!
//! | annotation | values | default |
//! |---|---|---|
//! | `hbm-passthrough.dev/policy` | `off`, `auto`, `required` | the hook config's `rewrite.policy` |
//! | `hbm-passthrough.dev/dialect` | `auto`, `kernel-cmdline`, `memmap-type[=spm\|reserved\|normal]`, `sp-mem`, `none` | config |
//! | `hbm-passthrough.dev/size-cap` | a Kubernetes quantity of bytes (`64Gi`, `64G` = 64x10^9, `1e9`; see [`super::quantity`]) | config |
//!
//! Any other key under `hbm-passthrough.dev/` is refused (a typo must not silently mean "auto").

use std::collections::BTreeMap;

use hbm_shell::ExitStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use topology::Inventory;

use super::quantity::parse_byte_quantity;
use hbm_rewrite::{Dialect, PolicyMode, RewriteError, RewriteOptions, rewrite};

/// Prefix of the project's VMI annotations.
pub const ANNOTATION_PREFIX: &str = "hbm-passthrough.dev/";
/// `off|auto|required`.
pub const POLICY_ANNOTATION: &str = "hbm-passthrough.dev/policy";
/// A dialect string (see `docs/rewrite.md`).
pub const DIALECT_ANNOTATION: &str = "hbm-passthrough.dev/dialect";
/// Largest guest cell per region: a Kubernetes quantity of bytes (`64Gi`).
pub const SIZE_CAP_ANNOTATION: &str = "hbm-passthrough.dev/size-cap";

/// Why a definition could not be produced. Its [`ExitStatus`] code is the documented exit code of the
/// shim convention; the sidecar maps it to a gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum KubevirtError {
    #[error("VMI is not valid JSON with an object `metadata`: {0}; virt-launcher sends the VMI object as JSON")]
    VmiNotJson(#[source] serde_json::Error),
    #[error("VMI {vmi}: annotation {key}={value:?}: {reason}")]
    Annotation {
        vmi: String,
        key: String,
        value: String,
        reason: String,
    },
    #[error("VMI {vmi}: the domain XML is not UTF-8 (byte {offset}); virt-launcher sends UTF-8 XML")]
    DomainNotUtf8 { vmi: String, offset: usize },
    #[error("VMI {vmi} requires HBM ({POLICY_ANNOTATION}=required) but host discovery failed: {reason}")]
    Discovery { vmi: String, reason: String },
    #[error("VMI {vmi} requires HBM ({POLICY_ANNOTATION}=required): {source}")]
    Rewrite {
        vmi: String,
        #[source]
        source: RewriteError,
    },
}

impl ExitStatus for KubevirtError {
    /// 2 = bad input (VMI, annotations, XML), 3 = `required` but this node cannot give the HBM.
    fn exit_code(&self) -> u8 {
        match self {
            KubevirtError::VmiNotJson(_) | KubevirtError::Annotation { .. } | KubevirtError::DomainNotUtf8 { .. } => 2,
            KubevirtError::Discovery { .. } => 3,
            KubevirtError::Rewrite { source, .. } => source.exit_code(),
        }
    }
}

impl KubevirtError {
    /// Whether the fault is in the caller's input (as opposed to what this node can give).
    pub fn is_bad_input(&self) -> bool {
        self.exit_code() == 2
    }
}

/// The parts of a VMI the front end reads: `metadata` typed, the rest kept as JSON.
#[derive(Clone, Debug, Deserialize)]
pub struct Vmi {
    pub metadata: ObjectMeta,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

impl Vmi {
    pub fn parse(json: &[u8]) -> Result<Self, KubevirtError> {
        serde_json::from_slice(json).map_err(KubevirtError::VmiNotJson)
    }

    /// `namespace/name` (or what of it is known), for messages.
    pub fn display_name(&self) -> String {
        let name = self.metadata.name.as_deref().unwrap_or("<unnamed>");
        match self.metadata.namespace.as_deref() {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_string(),
        }
    }
}

/// What the VMI's annotations ask for; `None` = use the host default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmiPolicy {
    pub policy: Option<PolicyMode>,
    pub dialect: Option<Dialect>,
    pub size_cap_bytes: Option<u64>,
}

impl VmiPolicy {
    /// Reads the project's annotations of `vmi`.
    pub fn from_vmi(vmi: &Vmi) -> Result<Self, KubevirtError> {
        let empty = BTreeMap::new();
        let annotations = vmi.metadata.annotations.as_ref().unwrap_or(&empty);
        let bad = |key: &str, value: &str, reason: String| KubevirtError::Annotation {
            vmi: vmi.display_name(),
            key: key.to_string(),
            value: value.to_string(),
            reason,
        };
        let mut out = VmiPolicy::default();
        for (key, value) in annotations.range(ANNOTATION_PREFIX.to_string()..) {
            if !key.starts_with(ANNOTATION_PREFIX) {
                break;
            }
            let v = value.trim();
            match key.as_str() {
                POLICY_ANNOTATION => out.policy = Some(v.parse::<PolicyMode>().map_err(|r| bad(key, value, r))?),
                DIALECT_ANNOTATION => out.dialect = Some(v.parse::<Dialect>().map_err(|r| bad(key, value, r))?),
                SIZE_CAP_ANNOTATION => {
                    let cap = parse_byte_quantity(v).map_err(|reason| bad(key, value, reason))?;
                    if cap == 0 {
                        return Err(bad(
                            key,
                            value,
                            "a size cap of 0 gives no HBM; use policy off instead".into(),
                        ));
                    }
                    out.size_cap_bytes = Some(cap);
                }
                _ => {
                    return Err(bad(
                        key,
                        value,
                        format!(
                            "unknown annotation (known: {POLICY_ANNOTATION}, {DIALECT_ANNOTATION}, {SIZE_CAP_ANNOTATION})"
                        ),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// `base` (the host defaults) with this VMI's choices applied.
    pub fn apply(&self, base: &RewriteOptions) -> RewriteOptions {
        let mut o = base.clone();
        if let Some(p) = self.policy {
            o.policy = p;
        }
        if let Some(d) = self.dialect {
            o.dialect = d;
        }
        if let Some(c) = self.size_cap_bytes {
            o.size_cap_bytes = Some(c);
        }
        o
    }
}

/// The result of [`define_domain`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DefineOutcome {
    /// The rewriter changed the definition; `summary` has one line per change.
    Rewritten { xml: String, summary: Vec<String> },
    /// The definition goes to libvirt as it came; `why` says why (for the log).
    Unchanged { why: String },
    /// `auto` policy and the rewrite failed: the definition goes unchanged, `warning` is logged.
    UnchangedWithWarning { warning: String },
}

/// OnDefineDomain: decides the policy from the VMI, gets the inventory (only when needed) and
/// rewrites. `required` failures are errors; `auto` failures come back as
/// [`DefineOutcome::UnchangedWithWarning`].
pub fn define_domain<F>(
    domain_xml: &[u8],
    vmi_json: &[u8],
    base: &RewriteOptions,
    inventory: F,
) -> Result<DefineOutcome, KubevirtError>
where
    F: FnOnce() -> Result<Inventory, String>,
{
    let vmi = Vmi::parse(vmi_json)?;
    let policy = VmiPolicy::from_vmi(&vmi)?;
    let options = policy.apply(base);
    let name = vmi.display_name();
    let xml = std::str::from_utf8(domain_xml).map_err(|e| KubevirtError::DomainNotUtf8 {
        vmi: name.clone(),
        offset: e.valid_up_to(),
    })?;
    if options.policy == PolicyMode::Off {
        return Ok(DefineOutcome::Unchanged {
            why: format!("VMI {name}: policy off"),
        });
    }
    let inventory = match inventory() {
        Ok(inv) => inv,
        Err(reason) if options.policy == PolicyMode::Required => {
            return Err(KubevirtError::Discovery { vmi: name, reason });
        }
        Err(reason) => {
            return Ok(DefineOutcome::UnchangedWithWarning {
                warning: format!("VMI {name}: host discovery failed, domain left without HBM: {reason}"),
            });
        }
    };
    match rewrite(xml, &inventory, &options) {
        Ok(r) if r.changed => Ok(DefineOutcome::Rewritten {
            xml: r.xml,
            summary: r.summary,
        }),
        Ok(_) => Ok(DefineOutcome::Unchanged {
            why: format!("VMI {name}: nothing to add on this node"),
        }),
        Err(source) if options.policy == PolicyMode::Required => Err(KubevirtError::Rewrite { vmi: name, source }),
        Err(e) => Ok(DefineOutcome::UnchangedWithWarning {
            warning: format!("VMI {name}: domain left without HBM: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn vmi(annotations: &[(&str, &str)]) -> Vec<u8> {
        let ann: serde_json::Map<String, serde_json::Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {"name": "vm1", "namespace": "ns", "annotations": ann},
            "spec": {"domain": {"devices": {}}}
        }))
        .unwrap()
    }

    fn policy(annotations: &[(&str, &str)]) -> Result<VmiPolicy, KubevirtError> {
        VmiPolicy::from_vmi(&Vmi::parse(&vmi(annotations)).unwrap())
    }

    #[test]
    fn annotations_map_to_options() {
        assert_eq!(policy(&[]).unwrap(), VmiPolicy::default());
        let p = policy(&[
            (POLICY_ANNOTATION, "required"),
            (DIALECT_ANNOTATION, "sp-mem"),
            (SIZE_CAP_ANNOTATION, "16Gi"),
            ("other.io/x", "y"),
        ])
        .unwrap();
        assert_eq!(
            p,
            VmiPolicy {
                policy: Some(PolicyMode::Required),
                dialect: Some(Dialect::SpMem),
                size_cap_bytes: Some(16 << 30)
            }
        );
        let o = p.apply(&RewriteOptions::default());
        assert_eq!(
            (o.policy, o.dialect, o.size_cap_bytes),
            (PolicyMode::Required, Dialect::SpMem, Some(16 << 30))
        );
    }

    #[test]
    fn unknown_values_and_keys_are_refused_with_the_key() {
        let e = policy(&[(POLICY_ANNOTATION, "sometimes")]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            e.to_string(),
            "VMI ns/vm1: annotation hbm-passthrough.dev/policy=\"sometimes\": unknown policy \"sometimes\" (expected off, auto or required)"
        );
        assert!(
            policy(&[(DIALECT_ANNOTATION, "spm")])
                .unwrap_err()
                .to_string()
                .contains("unknown dialect")
        );
        assert!(
            policy(&[(SIZE_CAP_ANNOTATION, "lots")])
                .unwrap_err()
                .to_string()
                .contains("size-cap")
        );
        assert!(
            policy(&[(SIZE_CAP_ANNOTATION, "0")])
                .unwrap_err()
                .to_string()
                .contains("policy off")
        );
        assert_eq!(
            policy(&[(SIZE_CAP_ANNOTATION, "64Gi")]).unwrap().size_cap_bytes,
            Some(64 << 30)
        );
        assert_eq!(
            policy(&[(SIZE_CAP_ANNOTATION, "512Mi")]).unwrap().size_cap_bytes,
            Some(512 << 20)
        );
        assert!(policy(&[(SIZE_CAP_ANNOTATION, "5i")]).is_err());
        // Kubernetes quantities: decimal SI, exponents and milli, not the CLI's binary `M` / `G`.
        for (value, bytes) in [
            ("1000M", 1_000_000_000),
            ("64G", 64_000_000_000),
            ("64000m", 64),
            ("1e9", 1_000_000_000),
        ] {
            assert_eq!(
                policy(&[(SIZE_CAP_ANNOTATION, value)]).unwrap().size_cap_bytes,
                Some(bytes),
                "{value}"
            );
        }
        assert_eq!(
            policy(&[(SIZE_CAP_ANNOTATION, "1500m")]).unwrap_err().to_string(),
            "VMI ns/vm1: annotation hbm-passthrough.dev/size-cap=\"1500m\": \"1500m\" is not a whole number of bytes"
        );
        let e = policy(&[("hbm-passthrough.dev/polcy", "off")]).unwrap_err();
        assert!(e.to_string().contains("unknown annotation"), "{e}");
    }

    #[test]
    fn vmi_that_is_not_json_is_bad_input() {
        let e = define_domain(b"<domain/>", b"not json", &RewriteOptions::default(), || unreachable!()).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().starts_with("VMI is not valid JSON"), "{e}");
        let e = define_domain(b"<domain/>", b"[1,2]", &RewriteOptions::default(), || unreachable!()).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn policy_off_skips_discovery() {
        let out = define_domain(
            b"<domain/>",
            &vmi(&[(POLICY_ANNOTATION, "off")]),
            &RewriteOptions::default(),
            || panic!("discovery must not run for policy off"),
        )
        .unwrap();
        assert_eq!(
            out,
            DefineOutcome::Unchanged {
                why: "VMI ns/vm1: policy off".into()
            }
        );
    }

    #[test]
    fn discovery_failure_is_an_error_only_when_required() {
        let fail = || Err("sysfs root /nope: not a directory".to_string());
        let out = define_domain(b"<domain/>", &vmi(&[]), &RewriteOptions::default(), fail).unwrap();
        assert!(matches!(out, DefineOutcome::UnchangedWithWarning { ref warning } if warning.contains("/nope")));
        let e = define_domain(
            b"<domain/>",
            &vmi(&[(POLICY_ANNOTATION, "required")]),
            &RewriteOptions::default(),
            fail,
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 3);
        assert_eq!(
            e.to_string(),
            "VMI ns/vm1 requires HBM (hbm-passthrough.dev/policy=required) but host discovery failed: sysfs root /nope: not a directory"
        );
    }
    const DISK_BOOT_GPU: &str = "<domain type='kvm'><memory unit='GiB'>2</memory><os><type arch='x86_64' machine='q35'>hvm</type></os><devices><hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0xc1' slot='0x00' function='0x0'/></source></hostdev></devices></domain>";

    /// virt-launcher's options: no adapter.
    fn kubevirt_options() -> RewriteOptions {
        RewriteOptions {
            adapter_path: None,
            ..RewriteOptions::default()
        }
    }

    fn devdax_only_inventory() -> Inventory {
        let gpu = topology::PciAddress::new(0, 0xc1, 0, 0);
        let mut inventory = Inventory::empty("/");
        inventory.regions = vec![topology::Region {
            online: false,
            dax: Some("/dev/dax1.0".into()),
            ..topology::fixture::region(gpu, 3, 1 << 30)
        }];
        inventory
    }

    #[test]
    fn a_devdax_only_region_is_refused_on_kubevirt_with_the_daxctl_fix() {
        let auto = define_domain(DISK_BOOT_GPU.as_bytes(), &vmi(&[]), &kubevirt_options(), || {
            Ok(devdax_only_inventory())
        })
        .unwrap();
        let DefineOutcome::UnchangedWithWarning { warning } = auto else {
            panic!("auto: unchanged with a warning, got {auto:?}");
        };
        assert!(
            warning.starts_with("VMI ns/vm1: domain left without HBM: domain XML line 1: <hostdev>: cannot satisfy: region 0000:c1:00.0/node3 is reachable only through the device-dax device /dev/dax1.0"),
            "{warning}"
        );
        assert!(
            warning.contains("daxctl reconfigure-device --mode=system-ram dax1.0"),
            "{warning}"
        );
        let required = define_domain(
            DISK_BOOT_GPU.as_bytes(),
            &vmi(&[(POLICY_ANNOTATION, "required")]),
            &kubevirt_options(),
            || Ok(devdax_only_inventory()),
        )
        .unwrap_err();
        assert_eq!(required.exit_code(), 3);
        assert!(
            required
                .to_string()
                .contains("daxctl reconfigure-device --mode=system-ram dax1.0")
        );
    }

    #[test]
    fn an_online_spm_region_on_a_disk_boot_gets_an_unmarked_cell_and_a_warning() {
        let gpu = topology::PciAddress::new(0, 0xc1, 0, 0);
        let mut inventory = Inventory::empty("/");
        inventory.regions = vec![topology::fixture::region(gpu, 3, 1 << 30)];
        let out = define_domain(DISK_BOOT_GPU.as_bytes(), &vmi(&[]), &kubevirt_options(), || {
            Ok(inventory)
        })
        .unwrap();
        let DefineOutcome::Rewritten { xml, summary } = out else {
            panic!("rewritten expected, got {out:?}");
        };
        assert!(xml.contains("<memnode cellid='1' mode='strict' nodeset='3'/>"), "{xml}");
        assert!(!xml.contains("<emulator>"), "{xml}");
        assert!(!xml.contains("HBM_QEMU_INSTRUCTIONS"), "{xml}");
        assert!(
            xml.contains("acpi-generic-initiator,id=hbm-gi1,pci-dev=ua-hbm-0000-c1-00-0,node=1"),
            "{xml}"
        );
        assert_eq!(hbm_rewrite::warnings(&summary).count(), 1, "{summary:?}");
    }
}
