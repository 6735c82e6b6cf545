//! The real QEMU the tests run (`qemu-system-x86_64` 10 from bookworm-backports) and the
//! capabilities the adapter's transform is given for it in tests.

use hbm_hook::qemu::probe::Capabilities;

/// The installed QEMU system emulator.
pub const REAL_QEMU: &str = "/usr/bin/qemu-system-x86_64";

/// Capabilities of [`REAL_QEMU`] speaking the chosen SPM dialects (with the Generic Initiator).
pub fn caps(memmap_type: bool, sp_mem: bool) -> Capabilities {
    Capabilities {
        binary: REAL_QEMU.into(),
        version: "test".into(),
        memmap_type,
        sp_mem,
        acpi_generic_initiator: true,
    }
}
