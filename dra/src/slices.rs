//! ResourceSlice publication: the node's pool (named after the node) as slices of at most 128
//! devices, named `<node>-<driver>-<index>`. The pool generation is bumped whenever the device
//! list changes; slices no longer needed are deleted; `resync` makes the next publication compare
//! with the stored slices again (repairing edits and deletions by others); `delete_all` removes
//! the node's slices (on uninstall, `--cleanup`).

use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};

use crate::api::{self, ResourceSlice};
use crate::devices::{slice_name, slice_specs};

/// Why the slices could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot list the ResourceSlices of node {node}: {message} (check the RBAC rule for resourceslices list)")]
    List { node: String, message: String },
    #[error("cannot {verb} ResourceSlice {name}: {message} (check RBAC and the admission policy for this node)")]
    Write {
        verb: &'static str,
        name: String,
        message: String,
    },
}

/// Publishes one node's pool for one driver.
pub struct SlicePublisher {
    api: Api<ResourceSlice>,
    driver: String,
    node: String,
    /// The devices and generation last published, to skip the API when nothing changed.
    published: Option<(Vec<api::Device>, i64)>,
    /// The highest generation this publisher wrote: slices deleted behind its back come back
    /// with a higher one, never an old number.
    last_generation: Option<i64>,
}

impl SlicePublisher {
    pub fn new(client: kube::Client, driver: &str, node: &str) -> Self {
        Self {
            api: Api::all(client),
            driver: driver.to_string(),
            node: node.to_string(),
            published: None,
            last_generation: None,
        }
    }

    /// The node's slices of this driver, as stored, in name order.
    pub async fn existing(&self) -> Result<Vec<ResourceSlice>, PublishError> {
        let params = ListParams::default().fields(&format!("spec.nodeName={}", self.node));
        let list = self.api.list(&params).await.map_err(|error| PublishError::List {
            node: self.node.clone(),
            message: error.to_string(),
        })?;
        let mut slices: Vec<ResourceSlice> = list
            .items
            .into_iter()
            .filter(|slice| slice.spec.driver == self.driver && slice.spec.node_name == self.node)
            .collect();
        slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        Ok(slices)
    }

    /// Makes the node's slices hold exactly `devices`; returns the pool generation.
    pub async fn publish(&mut self, devices: Vec<api::Device>) -> Result<i64, PublishError> {
        if let Some((published, generation)) = &self.published
            && *published == devices
        {
            return Ok(*generation);
        }
        let existing = self.existing().await?;
        let stored_generation = existing.iter().map(|s| s.spec.pool.generation).max();
        let known_generation = stored_generation.max(self.last_generation);
        let stored_devices: Vec<api::Device> = existing.iter().flat_map(|s| s.spec.devices.clone()).collect();
        let wanted_count = slice_specs(&self.node, &self.driver, 0, &devices).len();
        let current = stored_devices == devices && existing.len() == wanted_count;
        let generation = match (stored_generation, known_generation) {
            (Some(stored), _) if current => stored,
            (_, Some(known)) => known + 1,
            (_, None) => 1,
        };
        self.write_slices(&existing, generation, &devices).await?;
        tracing::info!(node = %self.node, generation, devices = devices.len(), "ResourceSlices published");
        self.published = Some((devices, generation));
        self.last_generation = Some(generation);
        Ok(generation)
    }

    /// Forgets what was published, so the next [`SlicePublisher::publish`] reads the stored
    /// slices again and repairs any that were changed or deleted behind its back.
    pub fn resync(&mut self) {
        self.published = None;
    }

    async fn write_slices(
        &self,
        existing: &[ResourceSlice],
        generation: i64,
        devices: &[api::Device],
    ) -> Result<(), PublishError> {
        let specs = slice_specs(&self.node, &self.driver, generation, devices);
        let mut wanted_names = Vec::with_capacity(specs.len());
        for (index, spec) in specs.into_iter().enumerate() {
            let name = slice_name(&self.node, &self.driver, index);
            let mut slice = ResourceSlice::new(&name, spec);
            let stored = existing
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(name.as_str()));
            let result = match stored {
                Some(stored) if stored.spec == slice.spec => Ok(()),
                Some(stored) => {
                    slice.metadata.resource_version = stored.metadata.resource_version.clone();
                    self.api.replace(&name, &PostParams::default(), &slice).await.map(drop)
                }
                None => self.api.create(&PostParams::default(), &slice).await.map(drop),
            };
            result.map_err(|error| PublishError::Write {
                verb: if stored.is_some() { "update" } else { "create" },
                name: name.clone(),
                message: error.to_string(),
            })?;
            wanted_names.push(name);
        }
        for stale in existing {
            let Some(name) = stale.metadata.name.as_deref() else {
                continue;
            };
            if !wanted_names.iter().any(|wanted| wanted == name) {
                self.delete(name).await?;
            }
        }
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<(), PublishError> {
        match self.api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(PublishError::Write {
                verb: "delete",
                name: name.to_string(),
                message: error.to_string(),
            }),
        }
    }

    /// Deletes every slice of this node and driver; returns how many there were.
    pub async fn delete_all(&mut self) -> Result<usize, PublishError> {
        let existing = self.existing().await?;
        for slice in &existing {
            if let Some(name) = slice.metadata.name.as_deref() {
                self.delete(name).await?;
            }
        }
        self.published = None;
        tracing::info!(node = %self.node, slices = existing.len(), "ResourceSlices deleted");
        Ok(existing.len())
    }
}
