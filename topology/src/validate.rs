//! Checks a `discover --json` document read back ([`crate::Inventory::from_json`]): what serde
//! cannot, before any field reaches a domain definition or the adapter's instructions. Every
//! error names the field (`regions[1].dax`) and what was expected.

use std::collections::BTreeSet;

use crate::config::is_dax_name;
use crate::model::{Health, Inventory, Region, SCHEMA_VERSION};
use crate::sysfs::cut;

/// Why a `discover --json` document was refused.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("{field}: {why}")]
    Field { field: String, why: String },
}

fn field_error(field: String, why: String) -> InventoryError {
    InventoryError::Field { field, why }
}

/// Checks the whole document; the first problem found is the error.
pub fn check(inventory: &Inventory) -> Result<(), InventoryError> {
    if inventory.schema_version != SCHEMA_VERSION {
        return Err(field_error(
            "schema_version".into(),
            format!(
                "{} is not {SCHEMA_VERSION}, the version this build reads",
                inventory.schema_version
            ),
        ));
    }
    let mut addresses = BTreeSet::new();
    for (index, gpu) in inventory.gpus.iter().enumerate() {
        if !addresses.insert(gpu.address) {
            return Err(field_error(
                format!("gpus[{index}].address"),
                format!("{} is listed twice", gpu.address),
            ));
        }
        check_hex(&format!("gpus[{index}].vendor"), &gpu.vendor, 4, true)?;
        check_hex(&format!("gpus[{index}].device"), &gpu.device, 4, true)?;
        check_hex(&format!("gpus[{index}].class"), &gpu.class, 6, false)?;
    }
    let mut ids = BTreeSet::new();
    for (index, region) in inventory.regions.iter().enumerate() {
        if !ids.insert(region.id.as_str()) {
            return Err(field_error(
                format!("regions[{index}].id"),
                format!("{:?} is listed twice; region ids are unique", cut(&region.id)),
            ));
        }
        check_region(index, region, &addresses)?;
    }
    Ok(())
}

/// `value` is `digits` lowercase hex digits (or empty, when `may_be_empty`: a missing file).
fn check_hex(field: &str, value: &str, digits: usize, may_be_empty: bool) -> Result<(), InventoryError> {
    let hex = value.len() == digits && value.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if hex || (may_be_empty && value.is_empty()) {
        return Ok(());
    }
    Err(field_error(
        field.to_string(),
        format!("{:?} is not {digits} lowercase hex digits", cut(value)),
    ))
}

fn check_region(index: usize, region: &Region, gpus: &BTreeSet<crate::PciAddress>) -> Result<(), InventoryError> {
    let field = |name: &str| format!("regions[{index}].{name}");
    let prefix = format!("{}/", region.gpu);
    if !region.id.starts_with(&prefix) || region.id.len() == prefix.len() {
        return Err(field_error(
            field("id"),
            format!(
                "{:?} is not <gpu>/<node or dax device> for gpu {}",
                cut(&region.id),
                region.gpu
            ),
        ));
    }
    if let Some(dax) = &region.dax
        && !dax.strip_prefix("/dev/").is_some_and(is_dax_name)
    {
        return Err(field_error(
            field("dax"),
            format!("{:?} is not a device-dax path like /dev/dax0.0", cut(dax)),
        ));
    }
    if let Some(align) = region.dax_align
        && !align.is_power_of_two()
    {
        return Err(field_error(
            field("dax_align"),
            format!("{align} is not a power of two greater than 0"),
        ));
    }
    if region.health == Health::Healthy {
        // Discovery reports a missing GPU or an unreadable size as an unhealthy region.
        if region.size_bytes == 0 {
            return Err(field_error(field("size_bytes"), "0 in a healthy region".into()));
        }
        if !gpus.contains(&region.gpu) {
            return Err(field_error(
                field("gpu"),
                format!("{} is not in gpus[] (a healthy region's GPU is present)", region.gpu),
            ));
        }
    }
    Ok(())
}
