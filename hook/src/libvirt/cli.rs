//! The libvirt hook's shell: `hbm-hook libvirt [--config FILE] <domain> <operation> <sub-op>
//! <extra>`, or the binary run under the name [`HOOK_NAME`] with libvirt's four arguments. Real
//! stdin, stdout and stderr around [`super::hook::run`]; on failure one line on stderr (libvirt
//! puts it into the error it reports) and the code [`HookError`]'s `ExitStatus` gives.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::hook::{Call, HOOK_NAME, HookError, run};
use crate::config::HookConfig;

/// `hbm-hook libvirt`: the libvirt hook call, as libvirt makes it.
#[derive(Debug, Clone, clap::Args)]
pub struct LibvirtArgs {
    /// Config file (default /etc/hbm-passthrough/hook.yaml when it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The domain name, operation, sub-operation and extra argument libvirt passes.
    #[arg(required = true, num_args = 4, value_names = ["DOMAIN", "OPERATION", "SUB_OP", "EXTRA"], allow_hyphen_values = true)]
    pub call: Vec<String>,
}

/// Runs the hook with real stdin/stdout/stderr; returns the exit code.
pub fn main(args: &[String], config_path: Option<&Path>) -> ExitCode {
    let load = || HookConfig::load(config_path);
    let result = run(args, &mut io::stdin().lock(), &load).and_then(|out| {
        if out.stdout.is_empty() {
            return Ok(());
        }
        let mut stdout = io::stdout().lock();
        stdout
            .write_all(out.stdout.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(HookError::Stdout)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => hbm_shell::exit_with(HOOK_NAME, &e),
    }
}

/// Whether `argv[0]` names the hook (basename [`HOOK_NAME`]).
pub fn invoked_as_hook(argv0: &std::ffi::OsStr) -> bool {
    Path::new(argv0).file_name().is_some_and(|n| n == HOOK_NAME)
}

/// Entry point when the binary runs under the hook's name (`argv[0]` basename [`HOOK_NAME`]).
/// Calls the hook ignores (most of them: it runs on every state change of every domain) return
/// before `init_logging` runs, so they cost little more than the process start.
pub fn main_from_argv(argv: &[OsString], init_logging: fn()) -> ExitCode {
    let args: Vec<String> = argv.iter().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    if let [_, operation, sub_operation, _] = args.as_slice()
        && Call::classify(operation, sub_operation) == Call::Ignored
    {
        let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
        return ExitCode::SUCCESS;
    }
    init_logging();
    main(&args, None)
}
