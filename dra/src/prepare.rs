//! NodePrepareResources and NodeUnprepareResources. Both are idempotent and answer every claim
//! of the request (a claim's failure is its own `error`, never the call's).
//!
//! Prepare of a claim: answered from the checkpoint when it is prepared and its files are all in
//! place (present and not empty); else GET the claim (UID checked), keep this driver's results,
//! check each device is this node's, known, measured healthy now, and not prepared for another
//! claim; write the metadata file of each request and the claim's CDI spec, then the checkpoint.
//! Unprepare removes exactly the files and folders the checkpoint lists, then the entry.
//!
//! Only the checkpoint is written durably (fsync of the file and its folder): it is what a
//! restarted driver trusts. The metadata files and the CDI spec are written atomically but not
//! synced: the runtime reads them right after the call (the page cache serves it), the CDI
//! folder is usually tmpfs anyway, and a file that a power loss takes or truncates is written
//! again by the kubelet's next prepare of the claim, since a prepared claim with a missing or
//! empty file is prepared again.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use plugin::health::HealthRoots;
use proto::dra::v1::{Claim, Device, NodePrepareResourceResponse, NodeUnprepareResourceResponse};
use tokio::sync::{Mutex, watch};

use crate::api::{self, AllocationResult};
use crate::cdi;
use crate::checkpoint::{Checkpoint, CheckpointError, PreparedClaim, PreparedDevice};
use crate::claims::{ClaimError, ClaimSource, own_results};
use crate::devices::{NodeDevice, api_device};
use crate::health::DeviceState;
use crate::metadata::{self, ClaimIdentity, Layout};

/// Where prepare writes and what it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrepareSettings {
    pub driver: String,
    /// This node's pool name (the node name).
    pub pool: String,
    /// `<kubelet root>/plugins/<driver>`: checkpoint and metadata files.
    pub plugin_dir: PathBuf,
    pub cdi_root: PathBuf,
    pub roots: HealthRoots,
}

/// Why one claim cannot be prepared or unprepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Claim(#[from] ClaimError),
    #[error("device {device} was allocated from pool {pool}, but this driver serves pool {own} (wrong node?)")]
    ForeignPool { device: String, pool: String, own: String },
    #[error("device {device} of pool {pool} is not published by this driver (gone since allocation?)")]
    UnknownDevice { device: String, pool: String },
    #[error("device {device} is unhealthy: {reason}")]
    Unhealthy { device: String, reason: String },
    #[error("device {device} is already prepared for claim {holder}; unprepare that claim first")]
    Taken { device: String, holder: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot remove {path}: {source}")]
    Remove { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// The prepare/unprepare state machine behind the DRAPlugin service.
pub struct Preparer {
    settings: PrepareSettings,
    state: watch::Receiver<DeviceState>,
    claims: Arc<dyn ClaimSource>,
    checkpoint: Mutex<Checkpoint>,
}

/// One allocated device of a claim with the requests it answers.
struct Allocated {
    requests: Vec<String>,
    device: NodeDevice,
}

impl Preparer {
    /// Loads the checkpoint from the plugin directory (creating the directory).
    pub fn new(
        settings: PrepareSettings,
        state: watch::Receiver<DeviceState>,
        claims: Arc<dyn ClaimSource>,
    ) -> Result<Self, CheckpointError> {
        let path = settings.plugin_dir.join("checkpoint.json");
        std::fs::create_dir_all(&settings.plugin_dir).map_err(|source| CheckpointError::Write {
            path: path.clone(),
            source,
        })?;
        let checkpoint = Checkpoint::load(&path)?;
        tracing::info!(path = %path.display(), claims = checkpoint.claims.len(), "checkpoint loaded");
        Ok(Self {
            settings,
            state,
            claims,
            checkpoint: Mutex::new(checkpoint),
        })
    }

    fn checkpoint_path(&self) -> PathBuf {
        self.settings.plugin_dir.join("checkpoint.json")
    }

    /// Prepares every claim; the answer has one entry per claim UID.
    pub async fn prepare(&self, claims: &[Claim]) -> HashMap<String, NodePrepareResourceResponse> {
        let mut checkpoint = self.checkpoint.lock().await;
        let mut answers = HashMap::with_capacity(claims.len());
        for claim in claims {
            let answer = match self.prepare_claim(&mut checkpoint, claim).await {
                Ok(devices) => NodePrepareResourceResponse {
                    devices: devices.into_iter().map(wire_device).collect(),
                    error: String::new(),
                },
                Err(error) => {
                    tracing::warn!(claim = %claim.uid, namespace = %claim.namespace, name = %claim.name, %error, "prepare failed");
                    NodePrepareResourceResponse {
                        devices: Vec::new(),
                        error: error.to_string(),
                    }
                }
            };
            answers.insert(claim.uid.clone(), answer);
        }
        answers
    }

    /// Unprepares every claim; an unknown claim is already unprepared.
    pub async fn unprepare(&self, claims: &[Claim]) -> HashMap<String, NodeUnprepareResourceResponse> {
        let mut checkpoint = self.checkpoint.lock().await;
        let mut answers = HashMap::with_capacity(claims.len());
        for claim in claims {
            let error = match self.unprepare_claim(&mut checkpoint, &claim.uid) {
                Ok(()) => String::new(),
                Err(error) => {
                    tracing::warn!(claim = %claim.uid, %error, "unprepare failed");
                    error.to_string()
                }
            };
            answers.insert(claim.uid.clone(), NodeUnprepareResourceResponse { error });
        }
        answers
    }

    async fn prepare_claim(
        &self,
        checkpoint: &mut Checkpoint,
        claim: &Claim,
    ) -> Result<Vec<PreparedDevice>, PrepareError> {
        let previous = checkpoint.claims.get(&claim.uid);
        if let Some(prepared) = previous
            && prepared.files.iter().all(|file| in_place(file))
        {
            return Ok(prepared.devices.clone());
        }
        let generation = previous.map_or(1, |prepared| prepared.metadata_generation + 1);
        let stored = self.claims.get(&claim.namespace, &claim.name).await?;
        let results = own_results(
            &stored,
            &claim.namespace,
            &claim.name,
            &claim.uid,
            &self.settings.driver,
        )?;
        let allocated = self.check_devices(checkpoint, &claim.uid, &results)?;
        let identity = ClaimIdentity {
            namespace: claim.namespace.clone(),
            name: claim.name.clone(),
            uid: claim.uid.clone(),
        };
        let prepared = self.write_claim_files(&identity, &Layout::of(&stored), generation, &allocated)?;
        let devices = prepared.devices.clone();
        checkpoint.claims.insert(claim.uid.clone(), prepared);
        if let Err(error) = checkpoint.save(&self.checkpoint_path()) {
            if let Some(prepared) = checkpoint.claims.remove(&claim.uid) {
                remove_files(&prepared);
            }
            return Err(error.into());
        }
        tracing::info!(claim = %claim.uid, namespace = %claim.namespace, name = %claim.name, devices = devices.len(), generation, "prepared");
        Ok(devices)
    }

    fn check_devices(
        &self,
        checkpoint: &Checkpoint,
        uid: &str,
        results: &[AllocationResult],
    ) -> Result<Vec<Allocated>, PrepareError> {
        let state = self.state.borrow().clone();
        let mut allocated: Vec<Allocated> = Vec::new();
        for result in results {
            if result.pool != self.settings.pool {
                return Err(PrepareError::ForeignPool {
                    device: result.device.clone(),
                    pool: result.pool.clone(),
                    own: self.settings.pool.clone(),
                });
            }
            if let Some(entry) = allocated.iter_mut().find(|a| a.device.name == result.device) {
                entry.requests.push(result.request.clone());
                continue;
            }
            let device = state
                .devices
                .get(&result.device)
                .ok_or_else(|| PrepareError::UnknownDevice {
                    device: result.device.clone(),
                    pool: result.pool.clone(),
                })?;
            if let Some(reason) = self.settings.roots.measure(&device.info, &state.baseline) {
                return Err(PrepareError::Unhealthy {
                    device: result.device.clone(),
                    reason,
                });
            }
            if let Some(holder) = checkpoint.holder(&result.pool, &result.device, uid) {
                return Err(PrepareError::Taken {
                    device: result.device.clone(),
                    holder: holder.to_string(),
                });
            }
            allocated.push(Allocated {
                requests: vec![result.request.clone()],
                device: device.clone(),
            });
        }
        Ok(allocated)
    }

    fn write_claim_files(
        &self,
        claim: &ClaimIdentity,
        layout: &Layout,
        generation: u64,
        allocated: &[Allocated],
    ) -> Result<PreparedClaim, PrepareError> {
        let driver = &self.settings.driver;
        let mut prepared = PreparedClaim {
            namespace: claim.namespace.clone(),
            name: claim.name.clone(),
            devices: Vec::new(),
            files: Vec::new(),
            dirs: Vec::new(),
            metadata_generation: generation,
        };
        if allocated.is_empty() {
            return Ok(prepared);
        }
        let result = self.write_files(claim, layout, generation, allocated, &mut prepared);
        if let Err(error) = result {
            remove_files(&prepared);
            return Err(error);
        }
        prepared.devices = allocated
            .iter()
            .map(|entry| PreparedDevice {
                request_names: entry.requests.clone(),
                pool: self.settings.pool.clone(),
                device: entry.device.name.clone(),
                cdi_device_ids: vec![cdi::device_id(
                    driver,
                    &cdi::device_name(&claim.uid, &entry.device.name),
                )],
            })
            .collect();
        Ok(prepared)
    }

    fn write_files(
        &self,
        claim: &ClaimIdentity,
        layout: &Layout,
        generation: u64,
        allocated: &[Allocated],
        prepared: &mut PreparedClaim,
    ) -> Result<(), PrepareError> {
        let driver = &self.settings.driver;
        let pool = self.settings.pool.as_str();
        let by_request = by_request(allocated);
        let claim_dir = metadata::claim_dir(&self.settings.plugin_dir, &claim.uid);
        prepared.dirs.push(claim_dir.clone());
        let mut mounts = Vec::new();
        let mut files: Vec<(PathBuf, String)> = Vec::new();
        for (request, devices) in &by_request {
            let published: Vec<api::Device> = devices.iter().map(|device| api_device(device)).collect();
            let pairs: Vec<(&str, &api::Device)> = published.iter().map(|device| (pool, device)).collect();
            let text = metadata::document(claim, generation, layout, request, driver, &pairs);
            let path = metadata::host_path(&self.settings.plugin_dir, &claim.uid, request, driver);
            if let Some(dir) = path.parent() {
                prepared.dirs.insert(0, dir.to_path_buf());
            }
            mounts.push(cdi::Mount::read_only_bind(
                &path,
                &layout.container_path(request, driver),
            ));
            files.push((path, text));
        }
        let spec = self.cdi_spec(&claim.uid, allocated, &by_request, mounts);
        let path = cdi::spec_path(&self.settings.cdi_root, driver, &claim.uid);
        let text = serde_json::to_string_pretty(&spec).map_err(|e| PrepareError::Write {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        files.push((path, text));
        prepared.files.extend(files.iter().map(|(path, _)| path.clone()));
        write_all_visibly(&files)
    }

    /// The claim's CDI spec (see [`crate::cdi`]).
    fn cdi_spec(
        &self,
        uid: &str,
        allocated: &[Allocated],
        by_request: &BTreeMap<String, Vec<&NodeDevice>>,
        mounts: Vec<cdi::Mount>,
    ) -> cdi::Spec {
        let driver = &self.settings.driver;
        let roots = &self.settings.roots;
        let mut shared = cdi::ContainerEdits {
            mounts,
            ..cdi::ContainerEdits::default()
        };
        let mut devices = Vec::with_capacity(allocated.len());
        for entry in allocated {
            let response = plugin::allocate::container_response(driver, &[&entry.device.info], roots);
            let mut edits = cdi::ContainerEdits::default();
            for spec in response.devices {
                let node = cdi::DeviceNode {
                    path: spec.container_path.clone(),
                    host_path: Some(spec.host_path),
                    permissions: Some(spec.permissions),
                };
                if !cdi::is_shared_node(&spec.container_path) {
                    edits.device_nodes.push(node);
                } else if !shared.device_nodes.contains(&node) {
                    shared.device_nodes.push(node);
                }
            }
            devices.push(cdi::Device {
                name: cdi::device_name(uid, &entry.device.name),
                container_edits: edits,
            });
        }
        for (request, members) in by_request {
            let infos: Vec<_> = members.iter().map(|device| &device.info).collect();
            let response = plugin::allocate::container_response(&format!("{driver}/{request}"), &infos, roots);
            let mut envs: Vec<String> = response.envs.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
            envs.sort();
            shared.env.extend(envs);
        }
        cdi::Spec {
            cdi_version: cdi::CDI_VERSION.to_string(),
            kind: cdi::kind(driver),
            devices,
            container_edits: shared,
        }
    }

    fn unprepare_claim(&self, checkpoint: &mut Checkpoint, uid: &str) -> Result<(), PrepareError> {
        let Some(prepared) = checkpoint.claims.get(uid) else {
            return Ok(());
        };
        for file in &prepared.files {
            match std::fs::remove_file(file) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(PrepareError::Remove {
                        path: file.clone(),
                        source,
                    });
                }
            }
        }
        for dir in &prepared.dirs {
            // Only empty folders go: anything else in them is not ours.
            let _ = std::fs::remove_dir(dir);
        }
        let removed = checkpoint.claims.remove(uid);
        if let Err(error) = checkpoint.save(&self.checkpoint_path()) {
            if let Some(prepared) = removed {
                checkpoint.claims.insert(uid.to_string(), prepared);
            }
            return Err(error.into());
        }
        tracing::info!(claim = %uid, "unprepared");
        Ok(())
    }
}

/// The allocated devices grouped by request name.
fn by_request(allocated: &[Allocated]) -> BTreeMap<String, Vec<&NodeDevice>> {
    let mut groups: BTreeMap<String, Vec<&NodeDevice>> = BTreeMap::new();
    for entry in allocated {
        for request in &entry.requests {
            groups.entry(request.clone()).or_default().push(&entry.device);
        }
    }
    groups
}

/// Whether a file prepare wrote is still there with content (a power loss can leave an
/// unsynced file missing or empty).
fn in_place(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| meta.len() > 0)
}

fn write_visibly(path: &Path, bytes: &[u8]) -> Result<(), PrepareError> {
    let fail = |source| PrepareError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    hbm_shell::write_atomically(path, bytes, hbm_shell::Durability::Visible).map_err(fail)
}

/// Writes every file atomically, in order (the first error stops; the caller removes whatever
/// was written). Not synced: see the module comment.
fn write_all_visibly(files: &[(PathBuf, String)]) -> Result<(), PrepareError> {
    files
        .iter()
        .try_for_each(|(path, text)| write_visibly(path, text.as_bytes()))
}

/// Best-effort removal of what a failed prepare wrote.
fn remove_files(prepared: &PreparedClaim) {
    for file in &prepared.files {
        let _ = std::fs::remove_file(file);
    }
    for dir in &prepared.dirs {
        let _ = std::fs::remove_dir(dir);
    }
}

fn wire_device(device: PreparedDevice) -> Device {
    Device {
        request_names: device.request_names,
        pool_name: device.pool,
        device_name: device.device,
        cdi_device_ids: device.cdi_device_ids,
    }
}
