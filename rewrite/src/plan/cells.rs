//! Guest NUMA cells: the cells the definition has (or the cell 0 created for its memory), the
//! ids the new HBM cells take, and the memory total `<memory>`/`<currentMemory>` grow to.

use topology::Region;

use crate::RewriteError;
use crate::document::Document;
use crate::libvirt::{amount, invalid, unsatisfiable};

/// Highest guest NUMA cell id the rewriter assigns (QEMU's MAX_NODES is 128).
pub(crate) const MAX_CELL_ID: u32 = 127;

/// A guest NUMA cell the rewriter adds for one HBM region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NewCell<'i> {
    pub id: u32,
    pub size: u64,
    pub region: &'i Region,
}

/// The guest's cells before the HBM cells are added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GuestCells {
    /// `(id, bytes)` of each cell, sorted by id; the created cell 0 when there was none.
    pub existing: Vec<(u32, u64)>,
    /// Size of cell 0 when the rewriter creates it (a definition without NUMA cells).
    pub created_cell0: Option<u64>,
    /// The id the first HBM cell takes (one above the highest existing id).
    pub first_new_id: u32,
}

/// Reads the existing cells (or plans cell 0 from `<memory>`).
pub(crate) fn guest_cells(doc: &Document<'_>) -> Result<GuestCells, RewriteError> {
    let root = doc.root;
    let numa = numa_element(doc);
    let mut existing = match numa {
        Some(numa) => existing_cells(doc, numa)?,
        None => Vec::new(),
    };
    let mut created_cell0 = None;
    if existing.is_empty() {
        let Some(memory) = doc.child(root, "memory") else {
            return Err(invalid(doc, root, "no <memory> element and no NUMA cells"));
        };
        let size = amount(doc, memory, None)?;
        created_cell0 = Some(size);
        existing.push((0, size));
    }
    let first_new_id = existing.iter().map(|cell| cell.0).max().unwrap_or(0).saturating_add(1);
    Ok(GuestCells {
        existing,
        created_cell0,
        first_new_id,
    })
}

/// `<cpu><numa>`, if any.
pub(crate) fn numa_element(doc: &Document<'_>) -> Option<usize> {
    doc.child(doc.root, "cpu").and_then(|cpu| doc.child(cpu, "numa"))
}

/// `(id, bytes)` of the `<cell>`s under `numa`, sorted by id; a cell without `id` takes its
/// position.
fn existing_cells(doc: &Document<'_>, numa: usize) -> Result<Vec<(u32, u64)>, RewriteError> {
    let mut cells = Vec::new();
    for (position, cell) in doc.children_named(numa, "cell").enumerate() {
        let id = match doc.attr(cell, "id") {
            Some(value) => value
                .trim()
                .parse::<u32>()
                .map_err(|_| invalid(doc, cell, format!("cell id {value:?} is not a number")))?,
            None => u32::try_from(position).unwrap_or(u32::MAX),
        };
        let Some(memory) = doc.attr(cell, "memory").map(|memory| memory.into_owned()) else {
            return Err(invalid(doc, cell, "cell without memory attribute"));
        };
        cells.push((id, amount(doc, cell, Some(memory))?));
    }
    cells.sort_by_key(|cell| cell.0);
    if cells.windows(2).any(|pair| pair[0].0 == pair[1].0) {
        return Err(invalid(doc, numa, "two cells with the same id"));
    }
    Ok(cells)
}

/// One cell per region, numbered from `next_id` on (which ends one past the last id given).
pub(crate) fn number_cells<'i>(regions: Vec<(&'i Region, u64)>, next_id: &mut u32) -> Vec<NewCell<'i>> {
    regions
        .into_iter()
        .map(|(region, size)| {
            let cell = NewCell {
                id: *next_id,
                size,
                region,
            };
            *next_id = next_id.saturating_add(1);
            cell
        })
        .collect()
}

/// Refuses cell ids above [`MAX_CELL_ID`] (`next_id` is one past the last id given).
pub(crate) fn check_cell_ids(doc: &Document<'_>, next_id: u32) -> Result<(), RewriteError> {
    if next_id <= MAX_CELL_ID + 1 {
        return Ok(());
    }
    Err(unsatisfiable(
        doc,
        numa_element(doc).unwrap_or(doc.root),
        format!(
            "the HBM cells would need guest NUMA cell ids up to {}; QEMU allows 0-{MAX_CELL_ID}",
            next_id - 1
        ),
    ))
}

/// The guest's memory once the cells are added (what `<memory>`/`<currentMemory>` become),
/// after checking that their amounts and units can be read.
pub(crate) fn memory_total(doc: &Document<'_>, cell_sizes: &[u64]) -> Result<u64, RewriteError> {
    let root = doc.root;
    let memory = doc.child(root, "memory");
    let total = cell_sizes
        .iter()
        .try_fold(0u64, |sum, size| sum.checked_add(*size))
        .ok_or_else(|| invalid(doc, memory.unwrap_or(root), "total guest memory overflows 64 bits"))?;
    for element in memory_elements(doc) {
        amount(doc, element.0, None)?;
    }
    Ok(total)
}

/// `<memory>` and `<currentMemory>` with their record paths, those present.
pub(crate) fn memory_elements(doc: &Document<'_>) -> Vec<(usize, &'static str)> {
    ["memory", "currentMemory"]
        .into_iter()
        .filter_map(|name| doc.child(doc.root, name).map(|element| (element, name)))
        .collect()
}

#[cfg(test)]
mod tests {
    use topology::PciAddress;
    use topology::fixture::region;

    use super::*;

    const GIB: u64 = 1 << 30;

    fn cells_of(xml: &str) -> Result<GuestCells, RewriteError> {
        guest_cells(&Document::parse(xml).unwrap())
    }

    #[test]
    fn without_numa_cell_0_is_created_from_memory() {
        assert_eq!(
            cells_of("<domain><memory unit='GiB'>8</memory></domain>"),
            Ok(GuestCells {
                existing: vec![(0, 8 * GIB)],
                created_cell0: Some(8 * GIB),
                first_new_id: 1,
            })
        );
        assert_eq!(cells_of("<domain/>").unwrap_err().exit_code(), 2);
    }

    #[test]
    fn new_ids_follow_the_highest_existing_cell() {
        let xml = "<domain><cpu><numa><cell id='3' memory='1048576'/><cell id='0' memory='2' unit='GiB'/></numa></cpu></domain>";
        assert_eq!(
            cells_of(xml),
            Ok(GuestCells {
                existing: vec![(0, 2 * GIB), (3, GIB)],
                created_cell0: None,
                first_new_id: 4,
            })
        );
    }

    #[test]
    fn cells_without_id_take_their_position_and_duplicates_are_refused() {
        let xml = "<domain><cpu><numa><cell memory='1'/><cell memory='1'/></numa></cpu></domain>";
        assert_eq!(cells_of(xml).unwrap().existing, vec![(0, 1024), (1, 1024)]);
        let twice = "<domain><cpu><numa><cell id='1' memory='1'/><cell id='1' memory='1'/></numa></cpu></domain>";
        assert!(
            cells_of(twice)
                .unwrap_err()
                .to_string()
                .contains("two cells with the same id")
        );
        let bad = "<domain><cpu><numa><cell id='x' memory='1'/></numa></cpu></domain>";
        assert!(
            cells_of(bad)
                .unwrap_err()
                .to_string()
                .contains("cell id \"x\" is not a number")
        );
    }

    #[test]
    fn numbering_counts_on_and_the_id_limit_is_128_cells() {
        let gpu = PciAddress::new(0, 0x41, 0, 0);
        let (first, second) = (region(gpu, 2, GIB), region(gpu, 3, GIB));
        let mut next_id = 5;
        let cells = number_cells(vec![(&first, GIB), (&second, 2 * GIB)], &mut next_id);
        assert_eq!(
            cells.iter().map(|cell| (cell.id, cell.size)).collect::<Vec<_>>(),
            vec![(5, GIB), (6, 2 * GIB)]
        );
        assert_eq!(next_id, 7);
        let doc = Document::parse("<domain/>").unwrap();
        assert_eq!(check_cell_ids(&doc, 128), Ok(()));
        let err = check_cell_ids(&doc, 129).unwrap_err();
        assert!(err.to_string().contains("cell ids up to 128; QEMU allows 0-127"));
    }

    #[test]
    fn memory_total_is_the_sum_and_checks_both_elements() {
        let doc =
            Document::parse("<domain><memory>1</memory><currentMemory unit='x'>1</currentMemory></domain>").unwrap();
        assert!(
            memory_total(&doc, &[GIB])
                .unwrap_err()
                .to_string()
                .contains("unknown unit \"x\"")
        );
        let doc = Document::parse("<domain><memory>1</memory></domain>").unwrap();
        assert_eq!(memory_total(&doc, &[GIB, 2 * GIB]), Ok(3 * GIB));
        assert!(
            memory_total(&doc, &[u64::MAX, 1])
                .unwrap_err()
                .to_string()
                .contains("overflows")
        );
    }
}
