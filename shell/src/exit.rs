//! Errors to exit statuses, the same for every command of every binary.
//!
//! The documented codes: 0 done (also "nothing to do"), 1 I/O or internal error (for `doctor`:
//! something required is missing; for the libvirt hook: refused), 2 bad input (one line on
//! stderr naming what, where and what to do; nothing written), 3 cannot satisfy.

use std::fmt::Display;
use std::process::ExitCode;

/// Done, or nothing to do.
pub const SUCCESS: u8 = 0;
/// An I/O or internal error.
pub const FAILURE: u8 = 1;
/// Bad input: nothing was written.
pub const BAD_INPUT: u8 = 2;
/// The input is fine but this host (or QEMU) cannot satisfy it.
pub const CANNOT_SATISFY: u8 = 3;

/// An error that knows its process exit status.
pub trait ExitStatus: Display {
    /// One of [`FAILURE`], [`BAD_INPUT`], [`CANNOT_SATISFY`].
    fn exit_code(&self) -> u8;
}

/// The error's message folded onto one line (newlines and carriage returns become spaces).
pub fn one_line(message: &str) -> String {
    message.replace(['\r', '\n'], " ")
}

/// Prints `<command>: <error>` as one line on stderr and returns the error's exit status.
pub fn exit_with<E: ExitStatus + ?Sized>(command: &str, error: &E) -> ExitCode {
    eprintln!("{}", one_line(&format!("{command}: {error}")));
    ExitCode::from(error.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_folds_line_breaks() {
        assert_eq!(one_line("a\nb\r\nc"), "a b  c");
        assert_eq!(one_line("plain"), "plain");
    }
}
