//! The doctor's bounded looks at the host: running a program for its output and reading a file,
//! each with a time limit and a size cap, so a daemon that hangs or prints forever, or a schema
//! path that names `/dev/zero` or a FIFO, cannot hang the doctor or exhaust memory. A program
//! over either bound is killed and reaped; the caller gets a [`Cut`] to report.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long one look may take and how many bytes it may bring back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub time: Duration,
    pub bytes: u64,
}

/// Why a look was abandoned. The message completes "`<what>` ...".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Cut {
    #[error("gave no answer within {} s", .0.as_secs())]
    TimedOut(Duration),
    #[error("gave more than {} KiB", .0 / 1024)]
    TooLarge(u64),
}

/// Reads at most `bytes + 1` bytes of `source` on a thread; the receiver gets them at EOF, at
/// the cap or on the first read error (`None`).
fn read_capped<R: Read + Send + 'static>(source: R, bytes: u64) -> mpsc::Receiver<Option<Vec<u8>>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let read = source.take(bytes + 1).read_to_end(&mut buffer);
        let _ = tx.send(read.ok().map(|_| buffer));
    });
    rx
}

/// Runs `program args` (stdin and stderr closed to it) and returns what it printed on stdout
/// when it exited successfully, `Ok(None)` when it cannot be started, failed, or its output could
/// not be read. Over a bound, the program is killed and reaped.
pub fn program_output(program: &Path, args: &[&str], bounds: Bounds) -> Result<Option<Vec<u8>>, Cut> {
    let started = Instant::now();
    let Ok(mut child) = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return Ok(None);
    };
    let Some(stdout) = child.stdout.take() else {
        kill_and_reap(&mut child);
        return Ok(None);
    };
    let output = read_capped(stdout, bounds.bytes).recv_timeout(bounds.time);
    let bytes = match output {
        Err(_) => {
            kill_and_reap(&mut child);
            return Err(Cut::TimedOut(bounds.time));
        }
        Ok(Some(bytes)) if bytes.len() as u64 > bounds.bytes => {
            kill_and_reap(&mut child);
            return Err(Cut::TooLarge(bounds.bytes));
        }
        Ok(bytes) => bytes,
    };
    let succeeded = wait_until(&mut child, started + bounds.time).ok_or(Cut::TimedOut(bounds.time))?;
    Ok(bytes.filter(|_| succeeded))
}

/// Waits for the child until `deadline`: whether it exited successfully, `None` (killed and
/// reaped) when it is still running then.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<bool> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status.success()),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                kill_and_reap(child);
                return None;
            }
            Err(_) => return Some(false),
        }
    }
}

fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Reads the file at `path`: its bytes, `Ok(None)` when it cannot be opened or read. A read that
/// does not finish in time (a FIFO nobody writes) is abandoned on its thread.
pub fn file_contents(path: &Path, bounds: Bounds) -> Result<Option<Vec<u8>>, Cut> {
    let (tx, rx) = mpsc::channel();
    let owned = path.to_path_buf();
    std::thread::spawn(move || {
        let opened = std::fs::File::open(&owned).ok();
        let _ = tx.send(opened.map(|file| read_capped(file, bounds.bytes)));
    });
    let started = Instant::now();
    let reader = rx.recv_timeout(bounds.time).map_err(|_| Cut::TimedOut(bounds.time))?;
    let Some(reader) = reader else {
        return Ok(None);
    };
    let remaining = bounds.time.saturating_sub(started.elapsed());
    match reader.recv_timeout(remaining) {
        Err(_) => Err(Cut::TimedOut(bounds.time)),
        Ok(Some(bytes)) if bytes.len() as u64 > bounds.bytes => Err(Cut::TooLarge(bounds.bytes)),
        Ok(bytes) => Ok(bytes),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SMALL: Bounds = Bounds {
        time: Duration::from_secs(2),
        bytes: 4096,
    };

    #[test]
    fn a_program_printing_forever_is_cut_at_the_cap() {
        let started = Instant::now();
        let cut = program_output(Path::new("yes"), &[], SMALL);
        assert_eq!(cut, Err(Cut::TooLarge(4096)));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_program_that_sleeps_is_killed_at_the_time_limit() {
        let started = Instant::now();
        let cut = program_output(Path::new("sleep"), &["30"], SMALL);
        assert_eq!(cut, Err(Cut::TimedOut(Duration::from_secs(2))));
        assert!(started.elapsed() < Duration::from_secs(4));
        assert_eq!(
            Cut::TimedOut(Duration::from_secs(5)).to_string(),
            "gave no answer within 5 s"
        );
    }

    #[test]
    fn output_of_a_program_that_exits_and_absence() {
        assert_eq!(
            program_output(Path::new("echo"), &["libvirtd (libvirt) 9.0.0"], SMALL),
            Ok(Some(b"libvirtd (libvirt) 9.0.0\n".to_vec()))
        );
        assert_eq!(program_output(Path::new("false"), &[], SMALL), Ok(None));
        assert_eq!(program_output(Path::new("/nonexistent/libvirtd"), &[], SMALL), Ok(None));
    }

    #[test]
    fn files_are_read_up_to_the_cap() {
        assert_eq!(file_contents(Path::new("/dev/zero"), SMALL), Err(Cut::TooLarge(4096)));
        assert_eq!(file_contents(Path::new("/nonexistent/schema.rng"), SMALL), Ok(None));
        let dir = tempfile::tempdir().unwrap();
        let schema = dir.path().join("domaincommon.rng");
        std::fs::write(&schema, "<grammar/>").unwrap();
        assert_eq!(file_contents(&schema, SMALL), Ok(Some(b"<grammar/>".to_vec())));
    }
}
