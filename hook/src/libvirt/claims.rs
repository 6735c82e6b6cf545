//! HBM region claims on a plain libvirt host: one file per claimed region under a run directory
//! (default `/run/hbm-passthrough/claims`), so two domains never hold the same region.
//!
//! A claim file `<encoded region id>.claim` holds one JSON object naming the region, the domain
//! (name + uuid) that holds it and when it was claimed. Files are written atomically (temporary
//! file in the same directory + rename) under an exclusive `flock` on `<dir>/.lock`, so a reader
//! never sees half a claim and two hooks never race on the same region.
//!
//! A claim is *live* while its holder's QEMU runs: libvirt's pid file
//! `<libvirt run dir>/<domain>.pid` names a process that is alive and whose command line carries
//! the holder's uuid (libvirt passes `-uuid <uuid>`). A claim younger than the start-up grace
//! period also counts as live (its holder is between `prepare` and the QEMU launch). Any other
//! claim is stale and is taken over (and logged).
//!
//! A writer killed between creating its temporary file and the rename (`kill -9` during
//! `prepare`) leaves `.<claim file>.<random>.tmp` behind; taking a claim sweeps such files older
//! than [`STALE_TEMP_AGE`] (every writer holds the lock, so none of them is still being written).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hbm_shell::Durability;
use serde::{Deserialize, Serialize};

/// libvirt's run directory for QEMU domains (pid files, status XML).
pub const LIBVIRT_QEMU_RUN_DIR: &str = "/run/libvirt/qemu";
/// How long a claim whose holder has no QEMU yet still counts as live.
pub const DEFAULT_STARTUP_GRACE: Duration = Duration::from_secs(30);
/// File name suffix of a claim file.
const CLAIM_SUFFIX: &str = ".claim";
/// Lock file inside the claims directory.
const LOCK_FILE: &str = ".lock";
/// A temporary claim file at least this old is a killed writer's leftover.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(60);

/// Why claiming or releasing failed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "HBM region {region} is held by running domain {holder_domain} (uuid {holder_uuid}); stop that domain or give this one another GPU"
    )]
    Held {
        region: String,
        holder_domain: String,
        holder_uuid: String,
    },
    #[error(
        "HBM region {region} was claimed {age_secs} s ago by domain {holder_domain} (uuid {holder_uuid}), which is still starting; retry once it runs or fails"
    )]
    Starting {
        region: String,
        holder_domain: String,
        holder_uuid: String,
        age_secs: u64,
    },
    #[error("claims directory {dir}: {source}; check claims.dir in the hook config and its permissions")]
    Dir { dir: PathBuf, source: io::Error },
    #[error("claim file {path}: {source}")]
    File { path: PathBuf, source: io::Error },
    #[error("domain name {0:?} cannot name a libvirt pid file (contains '/' or starts with '.')")]
    DomainName(String),
}

/// The content of one claim file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    /// Region id as discovery names it (`0000:c1:00.0/node2`).
    pub region: String,
    /// libvirt domain name of the holder.
    pub domain: String,
    /// libvirt domain uuid of the holder.
    pub uuid: String,
    /// Seconds since the Unix epoch when the claim was written.
    pub claimed_at_unix: u64,
    /// `domain (uuid)` of the stale claim this one replaced, when it took one over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_over_from: Option<String>,
}

/// What a successful [`ClaimStore::claim_all`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimOutcome {
    /// Regions newly claimed (or re-claimed by the same domain).
    pub claimed: Vec<String>,
    /// Stale claims replaced, with the claim that was there before.
    pub taken_over: Vec<Claim>,
}

/// The state of a claim's holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HolderState {
    /// Its QEMU runs.
    Running,
    /// No QEMU yet, but claimed within the start-up grace period.
    Starting { age_secs: u64 },
    /// No QEMU for that uuid; `why` says what was checked.
    Gone { why: String },
}

/// The claims directory plus where to look for libvirt's pid files and processes.
#[derive(Clone, Debug)]
pub struct ClaimStore {
    dir: PathBuf,
    libvirt_run_dir: PathBuf,
    proc_root: PathBuf,
    startup_grace: Duration,
}

impl ClaimStore {
    /// A store in `dir`, checking holders against `/run/libvirt/qemu` and `/proc`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            libvirt_run_dir: PathBuf::from(LIBVIRT_QEMU_RUN_DIR),
            proc_root: PathBuf::from("/proc"),
            startup_grace: DEFAULT_STARTUP_GRACE,
        }
    }

    /// Looks for holders' pid files in `dir` instead of `/run/libvirt/qemu`.
    pub fn with_libvirt_run_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.libvirt_run_dir = dir.into();
        self
    }

    /// Uses `grace` as the start-up grace period.
    pub fn with_startup_grace(mut self, grace: Duration) -> Self {
        self.startup_grace = grace;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The claim file path for `region`.
    pub fn claim_path(&self, region: &str) -> PathBuf {
        self.dir.join(format!("{}{CLAIM_SUFFIX}", encode_region_id(region)))
    }

    /// Claims every region in `regions` for domain `domain`/`uuid`, all or nothing: if any
    /// region is held by another live domain, nothing is written and the error names it.
    pub fn claim_all(
        &self,
        domain: &str,
        uuid: &str,
        regions: &[String],
        now_unix: u64,
    ) -> Result<ClaimOutcome, ClaimError> {
        check_domain_name(domain)?;
        let _lock = self.lock()?;
        self.sweep_stale_temp_files();
        let stale = self.stale_claims(uuid, regions, now_unix)?;
        let claimed = self.write_claims(domain, uuid, regions, &stale, now_unix)?;
        let mut outcome = ClaimOutcome {
            claimed,
            taken_over: Vec::new(),
        };
        for (existing, why) in stale {
            tracing::warn!(
                region = %existing.region,
                stale_domain = %existing.domain,
                stale_uuid = %existing.uuid,
                why = %why,
                domain = %domain,
                "took over stale HBM claim"
            );
            outcome.taken_over.push(existing);
        }
        Ok(outcome)
    }

    /// The claims on `regions` held by other domains that are gone (with why), or the error
    /// naming the first one held by a running or starting domain.
    fn stale_claims(&self, uuid: &str, regions: &[String], now_unix: u64) -> Result<Vec<(Claim, String)>, ClaimError> {
        let mut stale = Vec::new();
        for region in regions {
            let Some(existing) = read_claim(&self.claim_path(region))? else {
                continue;
            };
            if existing.uuid == uuid {
                continue;
            }
            match self.holder_state(&existing, now_unix) {
                HolderState::Running => {
                    return Err(ClaimError::Held {
                        region: region.clone(),
                        holder_domain: existing.domain,
                        holder_uuid: existing.uuid,
                    });
                }
                HolderState::Starting { age_secs } => {
                    return Err(ClaimError::Starting {
                        region: region.clone(),
                        holder_domain: existing.domain,
                        holder_uuid: existing.uuid,
                        age_secs,
                    });
                }
                HolderState::Gone { why } => stale.push((existing, why)),
            }
        }
        Ok(stale)
    }

    /// Writes one claim per region; on a failure removes what this call wrote (the claims it
    /// replaced were stale). Returns the regions claimed.
    fn write_claims(
        &self,
        domain: &str,
        uuid: &str,
        regions: &[String],
        stale: &[(Claim, String)],
        now_unix: u64,
    ) -> Result<Vec<String>, ClaimError> {
        let mut written: Vec<PathBuf> = Vec::new();
        for region in regions {
            let claim = Claim {
                region: region.clone(),
                domain: domain.to_string(),
                uuid: uuid.to_string(),
                claimed_at_unix: now_unix,
                took_over_from: stale
                    .iter()
                    .find(|(c, _)| &c.region == region)
                    .map(|(c, _)| format!("{} ({})", c.domain, c.uuid)),
            };
            let path = self.claim_path(region);
            if let Err(e) = write_claim(&path, &claim) {
                for p in &written {
                    let _ = fs::remove_file(p);
                }
                return Err(e);
            }
            written.push(path);
        }
        Ok(regions.to_vec())
    }

    /// Drops every claim held by `uuid`; returns the regions released.
    pub fn release(&self, uuid: &str) -> Result<Vec<String>, ClaimError> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let _lock = self.lock()?;
        let mut released = Vec::new();
        for (path, claim) in self.scan()? {
            if claim.uuid == uuid {
                fs::remove_file(&path).map_err(|source| ClaimError::File {
                    path: path.clone(),
                    source,
                })?;
                released.push(claim.region);
            }
        }
        released.sort();
        Ok(released)
    }

    /// Every readable claim in the directory, sorted by region.
    pub fn list(&self) -> Result<Vec<Claim>, ClaimError> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let mut claims: Vec<Claim> = self.scan()?.into_iter().map(|(_, c)| c).collect();
        claims.sort_by(|a, b| a.region.cmp(&b.region));
        Ok(claims)
    }

    /// Whether the holder of `claim` still has a QEMU (see the module docs).
    pub fn holder_state(&self, claim: &Claim, now_unix: u64) -> HolderState {
        match self.holder_qemu(claim) {
            Ok(pid) => {
                tracing::debug!(pid, domain = %claim.domain, "claim holder runs");
                HolderState::Running
            }
            Err(why) => {
                let age_secs = now_unix.saturating_sub(claim.claimed_at_unix);
                if age_secs < self.startup_grace.as_secs() {
                    HolderState::Starting { age_secs }
                } else {
                    HolderState::Gone { why }
                }
            }
        }
    }

    /// The pid of the holder's QEMU, or why there is none.
    fn holder_qemu(&self, claim: &Claim) -> Result<u32, String> {
        if check_domain_name(&claim.domain).is_err() {
            return Err(format!("holder name {:?} cannot have a pid file", claim.domain));
        }
        let pid_file = self.libvirt_run_dir.join(format!("{}.pid", claim.domain));
        let text = fs::read_to_string(&pid_file).map_err(|e| format!("{}: {e}", pid_file.display()))?;
        let pid: u32 = text
            .trim()
            .parse()
            .map_err(|_| format!("{}: not a pid: {:?}", pid_file.display(), text.trim()))?;
        let cmdline_path = self.proc_root.join(pid.to_string()).join("cmdline");
        let cmdline = fs::read(&cmdline_path).map_err(|e| format!("pid {pid} from {}: {e}", pid_file.display()))?;
        let uuid = claim.uuid.as_bytes();
        if cmdline.split(|b| *b == 0).any(|arg| arg == uuid) {
            Ok(pid)
        } else {
            Err(format!(
                "pid {pid} from {} is not a QEMU with uuid {}",
                pid_file.display(),
                claim.uuid
            ))
        }
    }

    fn lock(&self) -> Result<File, ClaimError> {
        fs::create_dir_all(&self.dir).map_err(|source| ClaimError::Dir {
            dir: self.dir.clone(),
            source,
        })?;
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| ClaimError::Dir {
                dir: self.dir.clone(),
                source,
            })?;
        rustix::fs::flock(file.as_fd(), rustix::fs::FlockOperation::LockExclusive).map_err(|e| ClaimError::File {
            path,
            source: io::Error::from(e),
        })?;
        Ok(file)
    }

    /// Removes temporary claim files older than [`STALE_TEMP_AGE`] (the caller holds the lock).
    /// Failures are logged: a leftover never blocks a claim.
    fn sweep_stale_temp_files(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            if !entry.file_name().to_str().is_some_and(is_temp_claim_name) {
                continue;
            }
            let age = entry
                .metadata()
                .and_then(|meta| meta.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok());
            if age.is_none_or(|age| age < STALE_TEMP_AGE) {
                continue;
            }
            let path = entry.path();
            match fs::remove_file(&path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed a killed writer's temporary claim file"),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale temporary claim file")
                }
            }
        }
    }

    fn scan(&self) -> Result<Vec<(PathBuf, Claim)>, ClaimError> {
        let entries = fs::read_dir(&self.dir).map_err(|source| ClaimError::Dir {
            dir: self.dir.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| ClaimError::Dir {
                dir: self.dir.clone(),
                source,
            })?;
            let path = entry.path();
            let is_claim = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(CLAIM_SUFFIX) && !n.starts_with('.'));
            if !is_claim {
                continue;
            }
            if let Some(claim) = read_claim(&path)? {
                out.push((path, claim));
            }
        }
        Ok(out)
    }
}

/// Reads a claim file; `None` when it does not exist. An unreadable or garbled claim is logged
/// and treated as absent (a crash cannot produce one: files are renamed into place).
fn read_claim(path: &Path) -> Result<Option<Claim>, ClaimError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ClaimError::File {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    match serde_json::from_str::<Claim>(&text) {
        Ok(c) => Ok(Some(c)),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring garbled claim file");
            Ok(None)
        }
    }
}

/// Writes one claim file: atomically and durably (a claim must survive a crash of the host).
fn write_claim(path: &Path, claim: &Claim) -> Result<(), ClaimError> {
    let file_err = |source| ClaimError::File {
        path: path.to_path_buf(),
        source,
    };
    let mut body = serde_json::to_string(claim).map_err(|e| file_err(io::Error::other(e)))?;
    body.push('\n');
    hbm_shell::write_atomically(path, body.as_bytes(), Durability::Durable).map_err(file_err)
}

/// A file name for a region id: ASCII letters, digits, `:`, `.` and `-` kept, any other byte
/// written as `_XX` (hex), so distinct ids never share a file.
pub fn encode_region_id(region: &str) -> String {
    let mut out = String::with_capacity(region.len() + 8);
    for b in region.bytes() {
        if b.is_ascii_alphanumeric() || b == b':' || b == b'-' || (b == b'.' && !out.is_empty()) {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// A temporary file a claim write makes: `.<region>.claim.<random>.tmp` (`write_atomically`), or
/// `.claim-<random>` from versions before it.
fn is_temp_claim_name(name: &str) -> bool {
    let atomic_write_temp = name.starts_with('.') && name.ends_with(".tmp") && name.contains(CLAIM_SUFFIX);
    atomic_write_temp || name.starts_with(".claim-")
}

fn check_domain_name(domain: &str) -> Result<(), ClaimError> {
    if domain.is_empty() || domain.contains('/') || domain.starts_with('.') {
        return Err(ClaimError::DomainName(domain.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn store(dir: &Path) -> ClaimStore {
        ClaimStore::new(dir.join("claims")).with_libvirt_run_dir(dir.join("libvirt"))
    }

    #[test]
    fn region_ids_encode_to_distinct_safe_names() {
        assert_eq!(encode_region_id("0000:c1:00.0/node2"), "0000:c1:00.0_2fnode2");
        assert_eq!(encode_region_id("0000:c1:00.0/dax0.0"), "0000:c1:00.0_2fdax0.0");
        assert_ne!(encode_region_id("a/b"), encode_region_id("a_b"));
        assert_eq!(encode_region_id("../x"), "_2e._2fx");
    }

    #[test]
    fn claim_then_release() {
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        let regions = vec!["0000:c1:00.0/node2".to_string()];
        let out = s.claim_all("vm-a", "uuid-a", &regions, NOW).unwrap();
        assert_eq!(out.claimed, regions);
        assert!(out.taken_over.is_empty());
        let text = fs::read_to_string(s.claim_path(&regions[0])).unwrap();
        assert_eq!(
            text,
            "{\"region\":\"0000:c1:00.0/node2\",\"domain\":\"vm-a\",\"uuid\":\"uuid-a\",\"claimed_at_unix\":1800000000}\n"
        );
        // Same domain again: fine.
        assert_eq!(
            s.claim_all("vm-a", "uuid-a", &regions, NOW + 5).unwrap().claimed,
            regions
        );
        assert_eq!(s.release("uuid-a").unwrap(), regions);
        assert!(s.list().unwrap().is_empty());
        assert!(s.release("uuid-a").unwrap().is_empty());
    }

    #[test]
    fn starting_holder_blocks_and_stale_holder_is_taken_over() {
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        let regions = vec!["r1".to_string(), "r2".to_string()];
        s.claim_all("vm-a", "uuid-a", &regions[..1], NOW).unwrap();
        let err = s.claim_all("vm-b", "uuid-b", &regions, NOW + 10).unwrap_err();
        assert!(
            matches!(err, ClaimError::Starting { ref region, age_secs: 10, .. } if region == "r1"),
            "{err}"
        );
        // Nothing half-written: r2 not claimed.
        assert_eq!(s.list().unwrap().len(), 1);
        let out = s.claim_all("vm-b", "uuid-b", &regions, NOW + 1000).unwrap();
        assert_eq!(out.claimed, regions);
        assert_eq!(out.taken_over.len(), 1);
        assert_eq!(out.taken_over[0].uuid, "uuid-a");
        let holders: Vec<String> = s.list().unwrap().into_iter().map(|c| c.domain).collect();
        assert_eq!(holders, ["vm-b", "vm-b"]);
        let took: Vec<Option<String>> = s.list().unwrap().into_iter().map(|c| c.took_over_from).collect();
        assert_eq!(took, [Some("vm-a (uuid-a)".to_string()), None]);
    }

    #[test]
    fn running_holder_is_detected_by_pid_file_and_cmdline() {
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        fs::create_dir_all(t.path().join("libvirt")).unwrap();
        // This test process plays the holder's QEMU: its cmdline contains the test binary path,
        // so use that path's last component as the "uuid".
        let me = std::env::args().next().unwrap();
        let claim = Claim {
            region: "r".into(),
            domain: "vm-a".into(),
            uuid: me.clone(),
            claimed_at_unix: 0,
            took_over_from: None,
        };
        fs::write(t.path().join("libvirt/vm-a.pid"), format!("{}\n", std::process::id())).unwrap();
        assert_eq!(s.holder_state(&claim, NOW), HolderState::Running);
        let other = Claim {
            uuid: "not-in-cmdline".into(),
            ..claim.clone()
        };
        assert!(matches!(s.holder_state(&other, NOW), HolderState::Gone { .. }));
        fs::write(t.path().join("libvirt/vm-a.pid"), "garbage").unwrap();
        assert!(matches!(s.holder_state(&claim, NOW), HolderState::Gone { ref why } if why.contains("not a pid")));
    }

    #[test]
    fn claiming_sweeps_stale_temporary_files_and_keeps_fresh_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let claims = store(tmp.path());
        fs::create_dir_all(claims.dir()).unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(120);
        let leftovers = [".r.claim.Ab3dE9.tmp", ".claim-x1Yz2w"];
        for name in leftovers {
            let file = File::create(claims.dir().join(name)).unwrap();
            file.set_modified(old).unwrap();
        }
        let fresh = claims.dir().join(".r.claim.Fresh1.tmp");
        fs::write(&fresh, "{").unwrap();
        let unrelated = claims.dir().join("notes.tmp");
        File::create(&unrelated).unwrap().set_modified(old).unwrap();
        claims.claim_all("vm", "u", &["r".into()], NOW).unwrap();
        for name in leftovers {
            assert!(!claims.dir().join(name).exists(), "{name} swept");
        }
        assert!(fresh.exists(), "a temporary file younger than the bound may be in use");
        assert!(unrelated.exists(), "only temporary claim files are swept");
        assert!(is_temp_claim_name(".0000:e3:00.0_2fnode0.claim.Q8kT1c.tmp"));
        assert!(!is_temp_claim_name("0000:e3:00.0_2fnode0.claim"));
        assert!(!is_temp_claim_name(".lock"));
    }

    #[test]
    fn garbled_claim_files_are_ignored_and_bad_names_refused() {
        let t = tempfile::tempdir().unwrap();
        let s = store(t.path());
        fs::create_dir_all(s.dir()).unwrap();
        fs::write(s.claim_path("r"), "{not json").unwrap();
        assert!(s.list().unwrap().is_empty());
        assert!(matches!(
            s.claim_all("../x", "u", &["r".into()], NOW),
            Err(ClaimError::DomainName(_))
        ));
        assert_eq!(s.claim_all("vm", "u", &["r".into()], NOW).unwrap().claimed, ["r"]);
    }
}
