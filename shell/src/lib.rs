//! The thin-shell plumbing shared by `hbm-hook`, `hbm-device-plugin` and the other binaries:
//! the one way each of them turns an error into a line on stderr and an exit status
//! ([`exit`]), writes a file so readers never see half of it ([`atomic_write`]), and sets up
//! logging ([`logging`]). Pure crates (`topology`, `hbm-rewrite`) do not depend on it.

pub mod atomic_write;
pub mod exit;
pub mod logging;

pub use atomic_write::{Durability, write_atomically};
pub use exit::{ExitStatus, exit_with, one_line};
