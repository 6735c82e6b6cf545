//! Host HBM discovery: which GPUs have HBM that firmware exposes as its own NUMA proximity
//! domain, how big it is, and which host NUMA node / device-dax device holds it.
//!
//! Pure over its input: every function takes a sysfs/procfs root (`/` on a real host, a fixture
//! tree in tests) and returns values or typed errors. No async, no global state.
//!
//! One module per source (`pci`, `node`, `dax`, `nvidia`, `srat`, `iomem`, `memmap`, `config`),
//! `merge` applies the precedence config > nvidia > dax > cpuless-node > srat, `report` renders
//! the human table. Entry points: [`discover`] and [`render_table`].

pub mod model;
mod pci_address;

#[cfg(feature = "fixture")]
pub mod fixture;

pub use model::{Gpu, Health, Inventory, Memmap, NumaNode, Region, SCHEMA_VERSION, Source};
pub use pci_address::{PciAddress, PciAddressError};
