//! The QEMU argv adapter (`hbm-qemu`, what a rewritten domain's `<emulator>` names):
//! [`transform`] (pure: libvirt's QEMU arguments + the domain's instructions + what the QEMU
//! speaks in, the arguments to exec out; [`argv`] reads and writes QEMU's option syntax),
//! [`instructions`] (the instructions from the environment and the dax devices they name),
//! [`probe`] (which SPM dialects the installed QEMU speaks, cached per binary) and [`cli`]
//! (settings, logging, the exec and the exit codes).

pub mod argv;
pub mod cli;
pub mod instructions;
pub mod probe;
pub mod transform;
