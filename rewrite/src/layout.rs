//! Where QEMU's q35 machine puts each guest NUMA cell in guest-physical address space.
//!
//! QEMU lays the cells' memory out in cell order as one RAM block. On q35 the part below 4 GiB
//! is all of it when the RAM is smaller than 2.75 GiB (0xb0000000), else the first 2 GiB; the
//! rest starts at 4 GiB. A cell that crosses that split gets two ranges.

/// RAM size from which q35 keeps only 2 GiB below 4 GiB.
pub const Q35_LOWMEM_LIMIT: u64 = 0xb000_0000;
/// Below-4G RAM of a q35 guest with at least [`Q35_LOWMEM_LIMIT`] of RAM.
pub const Q35_LOWMEM_LARGE: u64 = 0x8000_0000;
pub const FOUR_GIB: u64 = 0x1_0000_0000;

/// One guest-physical range `[start, start + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpaRange {
    pub start: u64,
    pub size: u64,
}

/// The guest-physical ranges of every cell, given the cells' sizes in cell order; `None` when
/// the layout would end beyond the 64-bit guest-physical address space (every sum is checked, so
/// absurd sizes are refused in every build instead of wrapping or panicking).
pub fn guest_ranges(cell_sizes: &[u64]) -> Option<Vec<Vec<GpaRange>>> {
    let total = cell_sizes.iter().try_fold(0u64, |sum, size| sum.checked_add(*size))?;
    let below_4g = if total >= Q35_LOWMEM_LIMIT {
        Q35_LOWMEM_LARGE
    } else {
        total
    };
    // The highest address: what is above `below_4g` moves up to start at 4 GiB.
    total.checked_add(FOUR_GIB - below_4g.min(FOUR_GIB))?;
    let mut offset = 0u64;
    let mut out = Vec::with_capacity(cell_sizes.len());
    for size in cell_sizes {
        let start = offset;
        let end = offset.checked_add(*size)?;
        offset = end;
        out.push(cell_ranges(start, end, below_4g)?);
    }
    Some(out)
}

/// The ranges of the RAM block part `[start, end)`: below `below_4g` as is, the rest moved up.
fn cell_ranges(start: u64, end: u64, below_4g: u64) -> Option<Vec<GpaRange>> {
    let mut ranges = Vec::new();
    if start < below_4g {
        let low_end = end.min(below_4g);
        ranges.push(GpaRange {
            start,
            size: low_end.checked_sub(start)?,
        });
    }
    if end > below_4g {
        let high_start = start.max(below_4g);
        ranges.push(GpaRange {
            start: (high_start - below_4g).checked_add(FOUR_GIB)?,
            size: end.checked_sub(high_start)?,
        });
    }
    Some(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_all_below_4g() {
        let r = guest_ranges(&[1 << 30, 512 << 20]).unwrap();
        assert_eq!(
            r[0],
            vec![GpaRange {
                start: 0,
                size: 1 << 30
            }]
        );
        assert_eq!(
            r[1],
            vec![GpaRange {
                start: 1 << 30,
                size: 512 << 20
            }]
        );
    }

    #[test]
    fn large_guest_splits_at_2g_and_the_crossing_cell_gets_two_ranges() {
        // 1.5 GiB + 2 GiB = 3.5 GiB >= 2.75 GiB: 2 GiB below 4G.
        let r = guest_ranges(&[3 << 29, 2 << 30]).unwrap();
        assert_eq!(
            r[0],
            vec![GpaRange {
                start: 0,
                size: 3 << 29
            }]
        );
        assert_eq!(
            r[1],
            vec![
                GpaRange {
                    start: 3 << 29,
                    size: 1 << 29
                },
                GpaRange {
                    start: FOUR_GIB,
                    size: 3 << 29
                }
            ]
        );
    }

    #[test]
    fn cell_entirely_above_4g() {
        let r = guest_ranges(&[4 << 30, 64 << 30]).unwrap();
        assert_eq!(
            r[0],
            vec![
                GpaRange {
                    start: 0,
                    size: 2 << 30
                },
                GpaRange {
                    start: FOUR_GIB,
                    size: 2 << 30
                }
            ]
        );
        assert_eq!(
            r[1],
            vec![GpaRange {
                start: FOUR_GIB + (2 << 30),
                size: 64 << 30
            }]
        );
    }

    #[test]
    fn sizes_beyond_the_address_space_give_none_instead_of_wrapping() {
        assert_eq!(guest_ranges(&[u64::MAX, 1]), None);
        // Fits as a RAM block, but the part above 2 GiB moved up to 4 GiB would not.
        assert_eq!(guest_ranges(&[u64::MAX - (1 << 30)]), None);
        let top = u64::MAX - FOUR_GIB + Q35_LOWMEM_LARGE;
        assert_eq!(
            guest_ranges(&[top]).unwrap()[0][1],
            GpaRange {
                start: FOUR_GIB,
                size: top - Q35_LOWMEM_LARGE
            }
        );
    }
}
