//! One container run with podman (runtime runc, no network, rlimits within this machine's hard
//! limits), removed when dropped.

use std::process::Command;

/// A started, detached container.
pub struct Container {
    pub name: String,
}

fn podman(args: &[String]) -> std::process::Output {
    Command::new("podman")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run podman {args:?}: {e} (Debian package podman)"))
}

/// `podman --runtime runc run MODE` with no network and rlimits within this machine's hard limits.
fn run_argv(mode: &str) -> Vec<String> {
    [
        "--runtime",
        "runc",
        "run",
        mode,
        "--network=none",
        "--ulimit=nofile=1024:1024",
        "--ulimit=nproc=1024:1024",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl Container {
    /// `podman run -d` of `image` with the test's `flags` and the image's arguments `args`.
    pub fn start(prefix: &str, image: &str, flags: &[String], args: &[String]) -> Self {
        let name = format!("{prefix}-{}", std::process::id());
        let _ = podman(&["rm".into(), "-f".into(), name.clone()]);
        let mut argv = run_argv("--detach");
        argv.push(format!("--name={name}"));
        argv.extend(flags.iter().cloned());
        argv.push(image.to_string());
        argv.extend(args.iter().cloned());
        let output = podman(&argv);
        assert!(
            output.status.success(),
            "podman {argv:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Self { name }
    }

    /// What the container wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        let output = podman(&["logs".into(), self.name.clone()]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    /// `podman stop` (SIGTERM, then SIGKILL after 10 s) and the container's exit status.
    pub fn stop(&self) -> i32 {
        let stop = podman(&["stop".into(), "--time=10".into(), self.name.clone()]);
        assert!(
            stop.status.success(),
            "podman stop: {}",
            String::from_utf8_lossy(&stop.stderr)
        );
        let inspect = podman(&[
            "inspect".into(),
            "--format={{.State.ExitCode}}".into(),
            self.name.clone(),
        ]);
        String::from_utf8_lossy(&inspect.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("podman inspect exit code: {e}"))
    }
}

/// `podman run --rm` of `image` in the foreground (same runtime, network and rlimits as
/// [`Container::start`]); its output.
pub fn run_once(image: &str, flags: &[String], args: &[String]) -> std::process::Output {
    let mut argv = run_argv("--rm");
    argv.extend(flags.iter().cloned());
    argv.push(image.to_string());
    argv.extend(args.iter().cloned());
    podman(&argv)
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.logs());
        }
        let _ = podman(&["rm".into(), "-f".into(), self.name.clone()]);
    }
}
