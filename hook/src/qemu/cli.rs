//! The QEMU argv adapter's shell: `hbm-qemu ARGS...` (the binary invoked under a name starting
//! with `hbm-qemu`, which is what libvirt runs as `<emulator>`) or `hbm-hook qemu [--emulator P]
//! [--probe-cache-dir D] [--config F] -- ARGS...`. Settings: flag or environment
//! (`HBM_QEMU_EMULATOR`, `HBM_PROBE_CACHE_DIR`, `HBM_HOOK_CONFIG`), else the config file's `qemu`
//! section, else the defaults (`/usr/bin/qemu-system-x86_64`, `/var/cache/hbm-passthrough`).
//!
//! Reads the instructions from `HBM_QEMU_INSTRUCTIONS` (libvirt passes `<qemu:env>` entries to the
//! emulator), checks each dax device, asks the probe what the real QEMU speaks (cached), applies
//! [`super::transform::transform`], logs the argv seen and the argv exec'd to stderr (libvirt puts it
//! in `/var/log/libvirt/qemu/<domain>.log`), then `exec`s the real QEMU: same pid, stdio and every
//! inherited fd untouched, so libvirt's monitor socket and log pipe keep working. Without
//! instructions the arguments pass through untouched and nothing is probed.
//!
//! Exit codes (only when QEMU is not exec'd; one line on stderr says why):
//! 2 bad input (instructions, argv, dax device, config file), 3 the QEMU cannot do what the domain asks
//! (dialect missing, probe failed or timed out), 4 the real QEMU cannot be exec'd.

use std::convert::Infallible;
use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use hbm_shell::ExitStatus;

use super::instructions::{self, DomainInputError};
use super::probe::{self, ProbeError};
use super::transform::{self, AdapterError};
use crate::config::{ConfigError, HookConfig};

/// Environment variable naming the real emulator (overrides the config's `qemu.emulator`).
pub const EMULATOR_ENV: &str = "HBM_QEMU_EMULATOR";
/// Environment variable naming the probe cache directory (overrides `qemu.probe_cache_dir`).
pub const PROBE_CACHE_ENV: &str = "HBM_PROBE_CACHE_DIR";
/// Environment variable naming the config file (default [`crate::config::DEFAULT_PATH`]).
pub const CONFIG_ENV: &str = "HBM_HOOK_CONFIG";

/// `hbm-hook qemu`: run as the QEMU adapter with explicit settings. Each setting not given here
/// comes from the config file's `qemu` section, else its default.
#[derive(Debug, clap::Args)]
pub struct QemuArgs {
    /// The real QEMU to exec [default: config qemu.emulator, /usr/bin/qemu-system-x86_64].
    #[arg(long, env = EMULATOR_ENV)]
    pub emulator: Option<PathBuf>,
    /// Where probe results are cached, per binary path + mtime [default: config
    /// qemu.probe_cache_dir, /var/cache/hbm-passthrough].
    #[arg(long, env = PROBE_CACHE_ENV)]
    pub probe_cache_dir: Option<PathBuf>,
    /// Config file [default: /etc/hbm-passthrough/hook.yaml when it exists].
    #[arg(long, env = CONFIG_ENV)]
    pub config: Option<PathBuf>,
    /// How the adapter was invoked (`argv[0]`), for the log; `None` for the subcommand.
    #[arg(skip)]
    pub invoked_as: Option<PathBuf>,
    /// QEMU's arguments, as libvirt would pass them.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<OsString>,
}

/// Settings after the config file filled the gaps.
#[derive(Debug)]
struct Settings {
    emulator: PathBuf,
    probe_cache_dir: PathBuf,
}

fn settings(args: &QemuArgs) -> Result<Settings, ConfigError> {
    if let (Some(emulator), Some(cache)) = (&args.emulator, &args.probe_cache_dir) {
        return Ok(Settings {
            emulator: emulator.clone(),
            probe_cache_dir: cache.clone(),
        });
    }
    let config = HookConfig::load(args.config.as_deref())?;
    Ok(Settings {
        emulator: args.emulator.clone().unwrap_or(config.qemu.emulator),
        probe_cache_dir: args.probe_cache_dir.clone().unwrap_or(config.qemu.probe_cache_dir),
    })
}

/// Why the adapter did not exec QEMU.
#[derive(Debug, thiserror::Error)]
pub enum AdapterCommandError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    DomainInput(#[from] DomainInputError),
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("cannot exec {emulator}: {why}; set the real QEMU with {EMULATOR_ENV} or the config's qemu.emulator")]
    Exec { emulator: String, why: String },
    #[error("the real emulator {emulator} is this adapter itself; point it at the real QEMU binary")]
    Loop { emulator: String },
}

/// The adapter's own code for "the real QEMU cannot be exec'd".
pub const EXEC_FAILED: u8 = 4;

impl ExitStatus for AdapterCommandError {
    /// 2 bad input, 3 this QEMU cannot do what the domain asks, 4 the real QEMU cannot be exec'd.
    fn exit_code(&self) -> u8 {
        match self {
            AdapterCommandError::DomainInput(_) | AdapterCommandError::Config(_) => 2,
            AdapterCommandError::Adapter(AdapterError::DialectUnsupported { .. }) | AdapterCommandError::Probe(_) => 3,
            AdapterCommandError::Adapter(_) => 2,
            AdapterCommandError::Exec { .. } | AdapterCommandError::Loop { .. } => EXEC_FAILED,
        }
    }
}

/// True when `argv0` names the adapter (`hbm-qemu`, `hbm-qemu-system-x86_64`, ...).
pub fn invoked_as_adapter(argv0: &OsStr) -> bool {
    Path::new(argv0)
        .file_name()
        .is_some_and(|n| n.as_encoded_bytes().starts_with(b"hbm-qemu"))
}

/// Entry point when invoked as `hbm-qemu`: settings from the environment and the config file,
/// everything after `argv[0]` is QEMU's. Returns only when QEMU was not exec'd.
pub fn main_as_emulator(args: Vec<OsString>) -> ExitCode {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    run(QemuArgs {
        emulator: env(EMULATOR_ENV),
        probe_cache_dir: env(PROBE_CACHE_ENV),
        config: env(CONFIG_ENV),
        invoked_as: std::env::args_os().next().map(PathBuf::from),
        args,
    })
}

/// `hbm-hook qemu ...`. Returns only when QEMU was not exec'd.
pub fn run(args: QemuArgs) -> ExitCode {
    // Scoped, so the adapter logs the same way whether or not main set a global subscriber.
    let outcome = tracing::dispatcher::with_default(&stderr_log(), || {
        settings(&args).map_err(AdapterCommandError::from).and_then(|s| {
            exec_adapted(
                &s,
                args.invoked_as.as_deref().unwrap_or(Path::new("hbm-hook")),
                &args.args,
            )
        })
    });
    match outcome {
        Ok(never) => match never {},
        // One line, the last on stderr: libvirt shows it as the start error.
        Err(e) => hbm_shell::exit_with("hbm-qemu", &e),
    }
}

/// Log lines go to stderr, which libvirt appends to the domain's log.
fn stderr_log() -> tracing::Dispatch {
    let fmt = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    // A directive filter only when asked for: the plain level filter keeps the start-up path short.
    match std::env::var("HBM_LOG") {
        Ok(spec) => tracing::Dispatch::new(fmt.with_env_filter(tracing_subscriber::EnvFilter::new(spec)).finish()),
        Err(_) => tracing::Dispatch::new(fmt.with_max_level(tracing::Level::INFO).finish()),
    }
}

/// Shell-like rendering for the log: arguments with spaces or quotes are single-quoted.
pub fn render_argv<S: AsRef<OsStr>>(program: &Path, args: &[S]) -> String {
    let quote = |s: &str| {
        if !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || ",._+:@%/=-[]".contains(c))
        {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    let mut out = quote(&program.to_string_lossy());
    for a in args {
        out.push(' ');
        out.push_str(&quote(&a.as_ref().to_string_lossy()));
    }
    out
}

fn exec_adapted(
    settings: &Settings,
    invoked_as: &Path,
    qemu_args: &[OsString],
) -> Result<Infallible, AdapterCommandError> {
    let emulator = &settings.emulator;
    let seen = render_argv(invoked_as, qemu_args);
    tracing::info!(pid = std::process::id(), argv = %seen, "hbm-qemu: argv seen");
    let (wire, parsed) = instructions::from_env();
    let instructions = parsed?;
    refuse_self(emulator)?;
    if instructions.is_empty() {
        tracing::info!(argv = %render_argv(emulator, qemu_args), "hbm-qemu: no instructions, argv exec'd unchanged");
        return exec(emulator, qemu_args);
    }
    let argv = instructions::utf8_args(qemu_args)?;
    instructions::check_dax_devices(&instructions)?;
    let facts = probe::capabilities(emulator, &settings.probe_cache_dir, probe::PROBE_TIMEOUT)?;
    let out = transform::transform(&argv, &instructions, &facts)?;
    // argv last: it runs to the end of the line.
    tracing::info!(
        instructions = %wire,
        dialects = %facts.dialects(),
        argv = %render_argv(emulator, &out),
        "hbm-qemu: argv exec'd"
    );
    exec(emulator, &out)
}

fn refuse_self(emulator: &Path) -> Result<(), AdapterCommandError> {
    let me = std::env::current_exe().and_then(std::fs::canonicalize);
    let target = std::fs::canonicalize(emulator);
    if let (Ok(me), Ok(target)) = (me, target)
        && me == target
    {
        return Err(AdapterCommandError::Loop {
            emulator: emulator.display().to_string(),
        });
    }
    Ok(())
}

fn exec<S: AsRef<OsStr>>(emulator: &Path, args: &[S]) -> Result<Infallible, AdapterCommandError> {
    let e = Command::new(emulator).args(args).exec();
    Err(AdapterCommandError::Exec {
        emulator: emulator.display().to_string(),
        why: e.to_string(),
    })
}
