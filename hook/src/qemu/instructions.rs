//! The adapter's inputs from the domain: the instructions libvirt hands the emulator in
//! `HBM_QEMU_INSTRUCTIONS` (a `<qemu:env>` entry the rewriter wrote), the dax devices they name
//! (each must be a character device on this host) and QEMU's arguments as text.

use std::ffi::OsString;
use std::os::unix::fs::FileTypeExt;

use hbm_rewrite::instructions::{self, Instruction, InstructionError};

/// Why the domain's inputs to the adapter cannot be used (all bad input, exit 2).
#[derive(Debug, thiserror::Error)]
pub enum DomainInputError {
    #[error(transparent)]
    Instructions(#[from] InstructionError),
    #[error(
        "dax device {path} for cell {cell}: {why}; create it with `daxctl create-device` or fix the domain's HBM region"
    )]
    DaxDevice { cell: u32, path: String, why: String },
    #[error("argument {index} is not UTF-8, so it cannot be checked against the instructions")]
    NotUtf8 { index: usize },
    #[error(
        "{} is not UTF-8 text; the domain's <qemu:env> entry is corrupted: rewrite the domain again",
        instructions::ENV_VAR
    )]
    InstructionsNotUtf8,
}

/// The instructions in the environment: the wire text as found (empty when unset, for the log)
/// and what it says. A value that is not UTF-8 is refused, never read as "no instructions".
pub fn from_env() -> (String, Result<Vec<Instruction>, DomainInputError>) {
    match std::env::var_os(instructions::ENV_VAR) {
        None => (String::new(), Ok(Vec::new())),
        Some(raw) => match raw.into_string() {
            Ok(wire) => {
                let parsed = instructions::parse(&wire).map_err(DomainInputError::from);
                (wire, parsed)
            }
            Err(raw) => (
                raw.to_string_lossy().into_owned(),
                Err(DomainInputError::InstructionsNotUtf8),
            ),
        },
    }
}

/// Every dax device an instruction names exists and is a character device.
pub fn check_dax_devices(instructions: &[Instruction]) -> Result<(), DomainInputError> {
    for instruction in instructions {
        if let Instruction::Dax { cell, path, .. } = instruction {
            let err = |why: String| DomainInputError::DaxDevice {
                cell: *cell,
                path: path.clone(),
                why,
            };
            let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
            if !meta.file_type().is_char_device() {
                return Err(err("not a character device".into()));
            }
        }
    }
    Ok(())
}

/// QEMU's arguments as text; argument numbers in errors count from 1 (`argv[0]` is the program).
pub fn utf8_args(qemu_args: &[OsString]) -> Result<Vec<String>, DomainInputError> {
    qemu_args
        .iter()
        .enumerate()
        .map(|(index, arg)| {
            arg.to_str()
                .map(String::from)
                .ok_or(DomainInputError::NotUtf8 { index: index + 1 })
        })
        .collect()
}
