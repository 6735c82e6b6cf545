//! Logging set-up: `tracing` to stderr, filtered by `RUST_LOG` (else the given default), as text
//! or JSON lines. Colour only when stderr is a terminal and `NO_COLOR` is unset: what the libvirt
//! hook prints lands in libvirt's error messages, and a pod's stderr is what `kubectl logs` shows.

use std::io::IsTerminal;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether log lines may carry ANSI colour codes: stderr is a terminal and `NO_COLOR` is unset
/// or empty.
pub fn colour_allowed() -> bool {
    let no_colour = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_colour && std::io::stderr().is_terminal()
}

/// Installs the global subscriber (a second call is a no-op).
pub fn init_logging(default_filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_allowed())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
