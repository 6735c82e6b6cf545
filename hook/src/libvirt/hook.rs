//! The libvirt qemu hook: `/etc/libvirt/hooks/qemu.d/hbm-passthrough` (a symlink to `hbm-hook`;
//! the binary dispatches on that name) or `hbm-hook libvirt <domain> <operation> <sub-op> <extra>`,
//! with the full domain XML on stdin. It never calls back into libvirt.
//!
//! | call | what it does |
//! |---|---|
//! | `prepare begin` | domains whose `hbm:` metadata records regions: check each is present, healthy and the same (host node, dax device, size) on this host, then claim them all (claim files, see [`super::claims`]); refuse when another running domain holds one |
//! | `release end` | drop the domain's claims |
//! | `stopped end` | log only |
//! | `migrate begin`, `restore begin` | rewrite the definition for this host; the new XML on stdout, nothing when unchanged |
//! | anything else | exit 0 at once (stdin drained) |
//!
//! Exit codes: 0 ok / nothing to do; 1 refused (region held, missing, unhealthy, or different on
//! this host; claims directory unusable); 2 bad input (arguments, XML, metadata, config); 3 the
//! rewrite at migrate/restore cannot be satisfied on this host. On failure stderr holds exactly
//! one line, which libvirt puts into the error it reports.

use std::io::{self, Read};
use std::time::{SystemTime, UNIX_EPOCH};

use hbm_shell::ExitStatus;
use topology::{Health, Inventory};

use super::claims::{ClaimError, ClaimStore};
use crate::config::{ConfigError, HookConfig};
use crate::inventory::{self, InventoryArgs};
use hbm_rewrite::document::Document;
use hbm_rewrite::{ClaimedRegion, RewriteError, read_metadata, rewrite};

/// The hook's file name under `/etc/libvirt/hooks/qemu.d/`; `hbm-hook` run under this name is
/// the libvirt hook.
pub const HOOK_NAME: &str = "hbm-passthrough";

/// Why the hook failed (see the module docs for exit codes).
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error(
        "usage: {HOOK_NAME} <domain> <operation> <sub-operation> <extra> (got {0} arguments); libvirt calls hooks this way"
    )]
    Usage(usize),
    #[error("stdin: {0}; libvirt passes the domain XML on stdin")]
    Stdin(String),
    #[error("domain {domain}: {source}")]
    Xml {
        domain: String,
        #[source]
        source: RewriteError,
    },
    #[error("domain {domain}: no <uuid> in the domain XML; libvirt always passes one")]
    NoUuid { domain: String },
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("domain {domain}: host discovery failed: {reason}")]
    Discovery { domain: String, reason: String },
    #[error(
        "domain {domain}: HBM region {region} {problem}; rewrite the definition for this host (hbm-hook rewrite) or move the VM"
    )]
    Region {
        domain: String,
        region: String,
        problem: String,
    },
    #[error("domain {domain}: {source}")]
    Claim {
        domain: String,
        #[source]
        source: ClaimError,
    },
    #[error("domain {domain}: cannot rewrite for this host: {source}")]
    Rewrite {
        domain: String,
        #[source]
        source: RewriteError,
    },
    #[error("stdout: {0}")]
    Stdout(io::Error),
}

impl ExitStatus for HookError {
    /// 2 bad input, 1 refused, the rewriter's code at migrate/restore.
    fn exit_code(&self) -> u8 {
        match self {
            HookError::Usage(_) | HookError::Stdin(_) | HookError::Xml { .. } | HookError::NoUuid { .. } => 2,
            HookError::Config(_) => 2,
            HookError::Discovery { .. } | HookError::Region { .. } | HookError::Claim { .. } | HookError::Stdout(_) => {
                1
            }
            HookError::Rewrite { source, .. } => source.exit_code(),
        }
    }
}

/// A libvirt qemu hook call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Prepare,
    Release,
    Stopped,
    Migrate,
    Restore,
    /// A call libvirt makes that this hook has nothing to do for.
    Ignored,
    /// An operation this build does not know (a newer libvirt): nothing to do, but warned about.
    Unknown,
}

/// Operations libvirt's qemu driver calls hooks with that need nothing from this hook.
const IGNORED_OPERATIONS: [&str; 4] = ["start", "started", "reconnect", "attach"];

impl Call {
    pub fn classify(operation: &str, sub_operation: &str) -> Call {
        match (operation, sub_operation) {
            ("prepare", "begin") => Call::Prepare,
            ("release", "end") => Call::Release,
            ("stopped", "end") => Call::Stopped,
            ("migrate", "begin") => Call::Migrate,
            ("restore", "begin") => Call::Restore,
            ("prepare" | "release" | "stopped" | "migrate" | "restore", _) => Call::Ignored,
            (op, _) if IGNORED_OPERATIONS.contains(&op) => Call::Ignored,
            _ => Call::Unknown,
        }
    }
}

/// What the hook prints on stdout (only `migrate`/`restore` may print anything).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HookOutput {
    pub stdout: String,
}

/// Runs one hook call. `stdin` is read only by the calls that need the XML (and drained
/// otherwise); `load_config` is only called when the call needs the config.
pub fn run(
    args: &[String],
    stdin: &mut dyn Read,
    load_config: &dyn Fn() -> Result<HookConfig, ConfigError>,
) -> Result<HookOutput, HookError> {
    let [domain, operation, sub_operation, _extra] = args else {
        return Err(HookError::Usage(args.len()));
    };
    let call = Call::classify(operation, sub_operation);
    match call {
        Call::Ignored | Call::Stopped | Call::Unknown => {
            // libvirt writes the XML to our stdin; read it so it never sees a broken pipe.
            let _ = io::copy(stdin, &mut io::sink());
            match call {
                Call::Unknown => tracing::warn!(domain, operation, sub_operation, "unknown hook call, nothing to do"),
                Call::Stopped => tracing::info!(domain, "domain stopped"),
                _ => {}
            }
            return Ok(HookOutput::default());
        }
        Call::Prepare | Call::Release | Call::Migrate | Call::Restore => {}
    }
    let xml = read_stdin(stdin)?;
    match call {
        Call::Prepare => prepare(domain, &xml, load_config).map(|()| HookOutput::default()),
        Call::Release => release(domain, &xml, load_config).map(|()| HookOutput::default()),
        _ => rewrite_for_this_host(domain, &xml, load_config),
    }
}

fn read_stdin(stdin: &mut dyn Read) -> Result<String, HookError> {
    let mut bytes = Vec::new();
    stdin
        .read_to_end(&mut bytes)
        .map_err(|e| HookError::Stdin(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| HookError::Stdin(format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to())))
}

/// The domain's `<uuid>`.
fn domain_uuid(domain: &str, xml: &str) -> Result<String, HookError> {
    let doc = Document::parse(xml).map_err(|source| HookError::Xml {
        domain: domain.to_string(),
        source,
    })?;
    let uuid = doc
        .child(doc.root, "uuid")
        .map(|i| doc.text(i).trim().to_string())
        .unwrap_or_default();
    if uuid.is_empty() {
        return Err(HookError::NoUuid {
            domain: domain.to_string(),
        });
    }
    Ok(uuid)
}

/// This host's inventory: a scan of the config's `sysfs_root` (the hook takes no inventory flags).
fn discover(domain: &str, config: &HookConfig) -> Result<Inventory, HookError> {
    inventory::resolve(&InventoryArgs::default(), config).map_err(|e| HookError::Discovery {
        domain: domain.to_string(),
        reason: e.to_string(),
    })
}

/// Checks the recorded regions against this host's inventory: the first problem found.
pub fn check_regions(domain: &str, claimed: &[ClaimedRegion], inventory: &Inventory) -> Result<(), HookError> {
    for want in claimed {
        let problem = |problem: String| HookError::Region {
            domain: domain.to_string(),
            region: want.id.clone(),
            problem,
        };
        let Some(have) = inventory.regions.iter().find(|r| r.id == want.id) else {
            return Err(problem("is not present on this host".into()));
        };
        if have.health != Health::Healthy {
            let why = have.reason.as_deref().unwrap_or("no reason given");
            return Err(problem(format!("is unhealthy on this host ({why})")));
        }
        if have.gpu != want.gpu {
            return Err(problem(format!(
                "belongs to GPU {} here, the definition says {}",
                have.gpu, want.gpu
            )));
        }
        if want.host_node.is_some() && have.host_node != want.host_node {
            return Err(problem(format!(
                "sits on host node {} here, the definition binds node {}",
                show(have.host_node),
                show(want.host_node)
            )));
        }
        if want.dax.is_some() && have.dax != want.dax {
            return Err(problem(format!(
                "is reached through {} here, the definition uses {}",
                have.dax.as_deref().unwrap_or("no dax device"),
                want.dax.as_deref().unwrap_or("none")
            )));
        }
        if want.size_bytes > have.size_bytes {
            return Err(problem(format!(
                "has {} bytes here, the definition gives the guest {}",
                have.size_bytes, want.size_bytes
            )));
        }
    }
    Ok(())
}

fn show(node: Option<u32>) -> String {
    node.map_or_else(|| "none".to_string(), |n| n.to_string())
}

fn prepare(
    domain: &str,
    xml: &str,
    load_config: &dyn Fn() -> Result<HookConfig, ConfigError>,
) -> Result<(), HookError> {
    let xml_err = |source| HookError::Xml {
        domain: domain.to_string(),
        source,
    };
    let Some(meta) = read_metadata(xml).map_err(xml_err)? else {
        tracing::debug!(domain, "no hbm metadata: nothing to check");
        return Ok(());
    };
    if meta.claimed.is_empty() {
        tracing::debug!(domain, "hbm metadata records no regions: nothing to claim");
        return Ok(());
    }
    let uuid = domain_uuid(domain, xml)?;
    let config = load_config()?;
    let inventory = discover(domain, &config)?;
    check_regions(domain, &meta.claimed, &inventory)?;
    let ids: Vec<String> = meta.claimed.iter().map(|r| r.id.clone()).collect();
    let store = ClaimStore::new(&config.claims.dir)
        .with_startup_grace(std::time::Duration::from_secs(config.claims.startup_grace_secs));
    let outcome = store
        .claim_all(domain, &uuid, &ids, now_unix())
        .map_err(|source| HookError::Claim {
            domain: domain.to_string(),
            source,
        })?;
    tracing::info!(domain, uuid, regions = ?outcome.claimed, taken_over = outcome.taken_over.len(), "HBM regions claimed");
    Ok(())
}

fn release(
    domain: &str,
    xml: &str,
    load_config: &dyn Fn() -> Result<HookConfig, ConfigError>,
) -> Result<(), HookError> {
    let uuid = domain_uuid(domain, xml)?;
    let config = load_config()?;
    let store = ClaimStore::new(&config.claims.dir);
    let released = store.release(&uuid).map_err(|source| HookError::Claim {
        domain: domain.to_string(),
        source,
    })?;
    if !released.is_empty() {
        tracing::info!(domain, uuid, regions = ?released, "HBM claims released");
    }
    Ok(())
}

fn rewrite_for_this_host(
    domain: &str,
    xml: &str,
    load_config: &dyn Fn() -> Result<HookConfig, ConfigError>,
) -> Result<HookOutput, HookError> {
    let xml_err = |source| HookError::Xml {
        domain: domain.to_string(),
        source,
    };
    if read_metadata(xml).map_err(xml_err)?.is_none() {
        return Ok(HookOutput::default());
    }
    let config = load_config()?;
    let inventory = discover(domain, &config)?;
    let options = config.rewrite_options(crate::qemu::probe::spm_support(&config.qemu));
    let result = rewrite(xml, &inventory, &options).map_err(|source| HookError::Rewrite {
        domain: domain.to_string(),
        source,
    })?;
    if !result.changed {
        return Ok(HookOutput::default());
    }
    tracing::info!(domain, changes = ?result.summary, "definition rewritten for this host");
    for warning in hbm_rewrite::warnings(&result.summary) {
        tracing::warn!(domain, "{warning}");
    }
    Ok(HookOutput { stdout: result.xml })
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn no_config() -> Result<HookConfig, ConfigError> {
        panic!("config must not be loaded for this call")
    }

    #[test]
    fn classifies_libvirt_calls() {
        assert_eq!(Call::classify("prepare", "begin"), Call::Prepare);
        assert_eq!(Call::classify("release", "end"), Call::Release);
        assert_eq!(Call::classify("migrate", "begin"), Call::Migrate);
        assert_eq!(Call::classify("restore", "begin"), Call::Restore);
        assert_eq!(Call::classify("stopped", "end"), Call::Stopped);
        assert_eq!(Call::classify("started", "begin"), Call::Ignored);
        assert_eq!(Call::classify("prepare", "end"), Call::Ignored);
        assert_eq!(Call::classify("frobnicate", "begin"), Call::Unknown);
    }

    #[test]
    fn ignored_calls_drain_stdin_without_config() {
        for op in [
            ["start", "begin"],
            ["started", "begin"],
            ["stopped", "end"],
            ["reconnect", "begin"],
            ["weird", "-"],
        ] {
            let mut stdin: &[u8] = b"\x00garbage that is not XML";
            let out = run(&args(&["vm", op[0], op[1], "-"]), &mut stdin, &no_config).unwrap();
            assert_eq!(out, HookOutput::default());
            assert!(stdin.is_empty(), "stdin drained for {op:?}");
        }
    }

    #[test]
    fn bad_calls_and_garbage_stdin_are_bad_input() {
        let e = run(&args(&["vm", "prepare"]), &mut &b""[..], &no_config).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().starts_with("usage: hbm-passthrough"), "{e}");
        let e = run(
            &args(&["vm", "prepare", "begin", "-"]),
            &mut &b"garbage <<"[..],
            &no_config,
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().starts_with("domain vm: domain XML line 1"), "{e}");
        let e = run(
            &args(&["vm", "migrate", "begin", "-"]),
            &mut &b"\xff\xfe"[..],
            &no_config,
        )
        .unwrap_err();
        assert_eq!(
            (e.exit_code(), e.to_string()),
            (
                2,
                "stdin: not UTF-8 (byte 0); libvirt passes the domain XML on stdin".into()
            )
        );
    }

    #[test]
    fn domains_without_metadata_need_nothing() {
        let xml = "<domain type='kvm'><name>vm</name><uuid>u</uuid></domain>";
        for op in ["prepare", "migrate", "restore"] {
            let out = run(&args(&["vm", op, "begin", "-"]), &mut xml.as_bytes(), &no_config).unwrap();
            assert_eq!(out.stdout, "", "{op}");
        }
    }
}
