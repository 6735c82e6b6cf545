//! Finding and running the `helm` binary.
//!
//! `HBM_HELM` names the binary (scripts/test.d/30-helm.sh sets it). When it is unset, the same
//! script's install step (`--install-only`) installs helm into a cache directory and prints its
//! path; a failing install is an error, never a skipped test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Environment variable naming the helm binary.
pub const HELM_ENV: &str = "HBM_HELM";

#[derive(Debug, thiserror::Error)]
pub enum HelmError {
    #[error("{HELM_ENV}={path}: not an executable file; unset it to let scripts/test.d/30-helm.sh install helm")]
    NotExecutable { path: String },
    #[error("running {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("scripts/test.d/30-helm.sh --install-only failed (exit {code:?}): {stderr}")]
    Install { code: Option<i32>, stderr: String },
    #[error("helm {args}: exit {code:?}: {stderr}")]
    Failed {
        args: String,
        code: Option<i32>,
        stderr: String,
    },
    #[error("helm {args}: output is not UTF-8")]
    NotUtf8 { args: String },
}

/// The helm binary: `$HBM_HELM`, else installed once per process by the test script.
pub fn helm_binary() -> Result<PathBuf, HelmError> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| locate().map_err(|e| e.to_string()));
    match found {
        Ok(path) => Ok(path.clone()),
        Err(message) => Err(HelmError::Install {
            code: None,
            stderr: message.clone(),
        }),
    }
}

fn locate() -> Result<PathBuf, HelmError> {
    if let Some(path) = std::env::var_os(HELM_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !is_executable(&path) {
            return Err(HelmError::NotExecutable {
                path: path.display().to_string(),
            });
        }
        return Ok(path);
    }
    let script = crate::workspace_root()
        .join("scripts")
        .join("test.d")
        .join("30-helm.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg("--install-only")
        .output()
        .map_err(|source| HelmError::Spawn {
            what: script.display().to_string(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = stdout.lines().last().map(str::trim).unwrap_or_default();
    if !output.status.success() || path.is_empty() || !is_executable(Path::new(path)) {
        return Err(HelmError::Install {
            code: output.status.code(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(PathBuf::from(path))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `helm <args>` and returns its stdout; a non-zero exit is an error carrying stderr.
pub fn run(args: &[&str]) -> Result<String, HelmError> {
    let helm = helm_binary()?;
    let joined = args.join(" ");
    let output = Command::new(&helm)
        .args(args)
        .current_dir(crate::workspace_root())
        .output()
        .map_err(|source| HelmError::Spawn {
            what: helm.display().to_string(),
            source,
        })?;
    if !output.status.success() {
        return Err(HelmError::Failed {
            args: joined,
            code: output.status.code(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    String::from_utf8(output.stdout).map_err(|_| HelmError::NotUtf8 { args: joined })
}

/// `helm template <release> charts/hbm-passthrough --namespace <ns> [extra...]`.
pub fn template(release: &str, namespace: &str, extra: &[&str]) -> Result<String, HelmError> {
    let chart = crate::chart_dir();
    let chart = chart.to_string_lossy();
    let mut args = vec!["template", release, chart.as_ref(), "--namespace", namespace];
    args.extend_from_slice(extra);
    run(&args)
}
