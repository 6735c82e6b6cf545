//! QEMU capability probe: which SPM dialect the installed QEMU speaks.
//!
//! Runs `<qemu> -machine none -qmp stdio -nodefaults -display none` and asks QMP
//! `query-qmp-schema` (does the `node` variant of `set-numa-node`'s arguments, i.e.
//! `NumaNodeOptions`, have a `memmap-type` member?) and `qom-list-types` (`sp-mem`,
//! `acpi-generic-initiator`). The whole exchange is bounded ([`PROBE_TIMEOUT`]); a QEMU that does
//! not answer in time is killed. Results are cached per binary path + mtime in
//! `<probe_cache_dir>/qemu-probe-<hash>.json` (written atomically), so the adapter pays for a
//! probe once per QEMU install.
//!
//! [`capabilities_from_qmp`] is the pure part (QMP replies in, [`Capabilities`] out).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hbm_shell::Durability;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Bound on one probe: spawn to last answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on what the probe reads from the binary's stdout (QEMU 10's answers are well under
/// 1 MiB); a binary that prints more is not answering QMP and is killed.
pub const PROBE_OUTPUT_CAP: u64 = 32 << 20;
/// Bound on the stderr kept for the error of a binary that exits early (a binary flooding it
/// loses its stderr pipe at this point).
const STDERR_CAP: u64 = 64 << 10;
/// Characters of that stderr's last line quoted in the error.
const STDERR_LINE_CHARS: usize = 200;

/// What one QEMU binary speaks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The binary probed, as given.
    pub binary: String,
    /// `major.minor.micro` from the QMP greeting, followed by the package string in parentheses
    /// when there is one.
    pub version: String,
    /// `-numa node,...,memmap-type=` (series v5-v7).
    pub memmap_type: bool,
    /// `-device sp-mem` (series v8-v10).
    pub sp_mem: bool,
    /// `-object acpi-generic-initiator` (QEMU >= 9.0).
    pub acpi_generic_initiator: bool,
}

impl Capabilities {
    /// The SPM dialects spoken, for messages: "memmap-type", "sp-mem", "memmap-type and sp-mem"
    /// or "neither memmap-type nor sp-mem".
    pub fn dialects(&self) -> String {
        match (self.memmap_type, self.sp_mem) {
            (true, true) => "memmap-type and sp-mem".into(),
            (true, false) => "memmap-type".into(),
            (false, true) => "sp-mem".into(),
            (false, false) => "neither memmap-type nor sp-mem".into(),
        }
    }
}

/// Why a probe gave no answer. Messages name the binary and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("probe of {binary}: cannot read the binary: {why}; check the qemu.emulator setting")]
    Binary { binary: String, why: String },
    #[error("probe of {binary}: cannot start it: {why}")]
    Spawn { binary: String, why: String },
    #[error(
        "probe of {binary}: no answer within {seconds} s to `-machine none -qmp stdio` (killed); check that the binary is a QEMU system emulator"
    )]
    Timeout { binary: String, seconds: u64 },
    #[error("probe of {binary}: it exited before answering: {stderr}")]
    Exited { binary: String, stderr: String },
    #[error(
        "probe of {binary}: more than {mib} MiB on stdout without the QMP answers (killed); check that the binary is a QEMU system emulator"
    )]
    Flood { binary: String, mib: u64 },
    #[error("probe of {binary}: unexpected QMP reply: {why}")]
    Protocol { binary: String, why: String },
}

/// Pure part: the QMP greeting, the `query-qmp-schema` return value and the `qom-list-types`
/// return value in, capabilities out.
pub fn capabilities_from_qmp(
    binary: &str,
    greeting: &Value,
    schema: &Value,
    types: &Value,
) -> Result<Capabilities, ProbeError> {
    let protocol = |why: &str| ProbeError::Protocol {
        binary: binary.to_string(),
        why: why.to_string(),
    };
    let v = &greeting["QMP"]["version"];
    let number = |k: &str| v["qemu"][k].as_u64();
    let (Some(major), Some(minor), Some(micro)) = (number("major"), number("minor"), number("micro")) else {
        return Err(protocol("greeting without QMP.version.qemu"));
    };
    let mut version = format!("{major}.{minor}.{micro}");
    if let Some(package) = v["package"].as_str().filter(|p| !p.is_empty()) {
        version.push_str(&format!(" ({package})"));
    }

    let schema = schema
        .as_array()
        .ok_or_else(|| protocol("query-qmp-schema did not return a list"))?;
    let by_name = |name: &str| schema.iter().find(|e| e["name"].as_str() == Some(name));
    // Type names are masked (numbers) in the schema; command names and member names are not.
    let command = by_name("set-numa-node").ok_or_else(|| protocol("schema has no set-numa-node command"))?;
    let options = command["arg-type"]
        .as_str()
        .and_then(by_name)
        .ok_or_else(|| protocol("set-numa-node has no argument type"))?;
    let node_type = options["variants"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["case"].as_str() == Some("node")))
        .and_then(|v| v["type"].as_str())
        .and_then(by_name)
        .ok_or_else(|| protocol("NumaOptions has no `node` variant"))?;
    let memmap_type = node_type["members"]
        .as_array()
        .is_some_and(|ms| ms.iter().any(|m| m["name"].as_str() == Some("memmap-type")));

    let types = types
        .as_array()
        .ok_or_else(|| protocol("qom-list-types did not return a list"))?;
    let has_type = |name: &str| types.iter().any(|t| t["name"].as_str() == Some(name));
    Ok(Capabilities {
        binary: binary.to_string(),
        version,
        memmap_type,
        sp_mem: has_type("sp-mem"),
        acpi_generic_initiator: has_type("acpi-generic-initiator"),
    })
}

/// Runs the probe against `binary`, bounded by `timeout`.
pub fn probe(binary: &Path, timeout: Duration) -> Result<Capabilities, ProbeError> {
    let name = binary.display().to_string();
    let started = Instant::now();
    let (mut child, stdin, stdout, stderr) = spawn_qmp(binary, &name)?;
    ask(stdin);
    let answers_rx = read_answers(stdout);
    let stderr_rx = read_stderr(stderr);
    let answers = answers_rx.recv_timeout(timeout.saturating_sub(started.elapsed()));
    let Ok(answers) = answers else {
        kill_and_reap(&mut child);
        return Err(ProbeError::Timeout {
            binary: name,
            seconds: timeout.as_secs(),
        });
    };
    if answers.flooded {
        kill_and_reap(&mut child);
        return Err(ProbeError::Flood {
            binary: name,
            mib: PROBE_OUTPUT_CAP >> 20,
        });
    }
    let (Some(greeting), Some(schema), Some(types)) = (answers.greeting, answers.schema, answers.types) else {
        kill_and_reap(&mut child);
        let stderr = stderr_rx.recv_timeout(Duration::from_millis(500)).unwrap_or_default();
        return Err(ProbeError::Exited {
            binary: name,
            stderr: last_line_for_message(&stderr),
        });
    };
    // It was asked to quit; give it the rest of the bound, then make sure.
    wait_until(&mut child, started + timeout);
    capabilities_from_qmp(&name, &greeting, &schema, &types)
}

/// `<binary> -machine none -qmp stdio ...` with its three stdio pipes.
fn spawn_qmp(binary: &Path, name: &str) -> Result<(Child, ChildStdin, ChildStdout, ChildStderr), ProbeError> {
    let mut child = Command::new(binary)
        .args(["-machine", "none", "-qmp", "stdio", "-nodefaults", "-display", "none"])
        .env_remove(hbm_rewrite::instructions::ENV_VAR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ProbeError::Spawn {
            binary: name.to_string(),
            why: e.to_string(),
        })?;
    match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
        (Some(stdin), Some(stdout), Some(stderr)) => Ok((child, stdin, stdout, stderr)),
        _ => {
            kill_and_reap(&mut child);
            Err(ProbeError::Spawn {
                binary: name.to_string(),
                why: "no stdio pipes".into(),
            })
        }
    }
}

/// Sends every question at once and closes stdin.
fn ask(mut stdin: ChildStdin) {
    // QMP answers pipelined commands in order; `id` ties each answer to its question.
    let questions = concat!(
        r#"{"execute":"qmp_capabilities","id":"caps"}"#,
        "\n",
        r#"{"execute":"query-qmp-schema","id":"schema"}"#,
        "\n",
        r#"{"execute":"qom-list-types","id":"types"}"#,
        "\n",
        r#"{"execute":"quit","id":"quit"}"#,
        "\n"
    );
    // A QEMU that died at once makes this fail with EPIPE; the reader reports why.
    let _ = stdin.write_all(questions.as_bytes());
}

/// The greeting, the schema and the type list, as they arrive (a thread reads stdout), and
/// whether reading stopped at [`PROBE_OUTPUT_CAP`].
#[derive(Default)]
struct Answers {
    greeting: Option<Value>,
    schema: Option<Value>,
    types: Option<Value>,
    flooded: bool,
}

impl Answers {
    fn complete(&self) -> bool {
        self.greeting.is_some() && self.schema.is_some() && self.types.is_some()
    }
}

fn read_answers(stdout: ChildStdout) -> mpsc::Receiver<Answers> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut answers = Answers::default();
        let mut capped = stdout.take(PROBE_OUTPUT_CAP);
        for line in BufReader::new(&mut capped).lines() {
            let Ok(line) = line else { break };
            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if value.get("QMP").is_some() {
                answers.greeting = Some(value);
            } else if value["id"] == "schema" {
                answers.schema = Some(value["return"].clone());
            } else if value["id"] == "types" {
                answers.types = Some(value["return"].clone());
            }
            if answers.complete() {
                break;
            }
        }
        answers.flooded = !answers.complete() && capped.limit() == 0;
        let _ = tx.send(answers);
    });
    rx
}

/// Everything the binary writes on stderr (a thread reads it), for the error when it exits early.
fn read_stderr(stderr: ChildStderr) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.take(STDERR_CAP).read_to_end(&mut bytes);
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

/// The last line of `stderr` as the error quotes it: at most [`STDERR_LINE_CHARS`] characters,
/// control characters shown as `?`.
fn last_line_for_message(stderr: &str) -> String {
    let line = stderr.lines().last().unwrap_or("no output");
    line.chars()
        .take(STDERR_LINE_CHARS)
        .map(|ch| if ch.is_control() { '?' } else { ch })
        .collect()
}

/// Waits for the child to exit until `deadline`, then kills it.
fn wait_until(child: &mut Child, deadline: Instant) {
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                kill_and_reap(child);
                break;
            }
        }
    }
}

fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// One cache file's content.
#[derive(Debug, Serialize, Deserialize)]
struct CacheEntry {
    binary: String,
    mtime_ns: i128,
    size: u64,
    capabilities: Capabilities,
}

/// Identity of a binary for the cache: modification time (ns) and size.
fn identity(binary: &Path) -> Result<(i128, u64), ProbeError> {
    let meta = std::fs::metadata(binary).map_err(|e| ProbeError::Binary {
        binary: binary.display().to_string(),
        why: e.to_string(),
    })?;
    Ok((
        i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        meta.size(),
    ))
}

/// The cache file for `binary` in `cache_dir` (FNV-1a of the path, so any path fits a file name).
pub fn cache_file(cache_dir: &Path, binary: &Path) -> PathBuf {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in binary.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    cache_dir.join(format!("qemu-probe-{hash:016x}.json"))
}

/// The cached capabilities of `binary`, if a cache entry matches its path, mtime and size.
pub fn cached(binary: &Path, cache_dir: &Path) -> Result<Option<Capabilities>, ProbeError> {
    let (mtime_ns, size) = identity(binary)?;
    let Ok(text) = std::fs::read(cache_file(cache_dir, binary)) else {
        return Ok(None);
    };
    let Ok(entry) = serde_json::from_slice::<CacheEntry>(&text) else {
        return Ok(None);
    };
    let same = entry.binary == binary.display().to_string() && entry.mtime_ns == mtime_ns && entry.size == size;
    Ok(same.then_some(entry.capabilities))
}

/// Cached capabilities of `binary`, probing (and caching) when there is no current entry. A cache
/// that cannot be written is logged and skipped: the probe result is still returned.
pub fn capabilities(binary: &Path, cache_dir: &Path, timeout: Duration) -> Result<Capabilities, ProbeError> {
    if let Some(caps) = cached(binary, cache_dir)? {
        return Ok(caps);
    }
    let caps = probe(binary, timeout)?;
    if let Err(e) = store(binary, cache_dir, &caps) {
        tracing::warn!(cache_dir = %cache_dir.display(), error = %e, "probe cache not written; the next start probes again");
    }
    Ok(caps)
}

/// What dialect `auto` may use through the adapter on this libvirt host: `qemu.spm` as
/// configured, or the (cached) probe of `qemu.emulator`. A QEMU that cannot be probed counts as
/// speaking neither (logged): `auto` then falls back to the kernel command line or no marking.
pub fn spm_support(qemu: &crate::config::QemuSection) -> hbm_rewrite::SpmSupport {
    if let crate::config::QemuSpm::Known(support) = qemu.spm {
        return support;
    }
    match capabilities(&qemu.emulator, &qemu.probe_cache_dir, PROBE_TIMEOUT) {
        Ok(caps) => hbm_rewrite::SpmSupport {
            sp_mem: caps.sp_mem,
            memmap_type: caps.memmap_type,
        },
        Err(error) => {
            tracing::warn!(emulator = %qemu.emulator.display(), %error, "QEMU not probed; dialect auto assumes it speaks neither sp-mem nor memmap-type");
            hbm_rewrite::SpmSupport::default()
        }
    }
}

/// Records `caps` as the capabilities of `binary` as it is now (path, mtime, size).
pub fn store(binary: &Path, cache_dir: &Path, caps: &Capabilities) -> std::io::Result<()> {
    let (mtime_ns, size) = identity(binary).map_err(std::io::Error::other)?;
    let entry = CacheEntry {
        binary: binary.display().to_string(),
        mtime_ns,
        size,
        capabilities: caps.clone(),
    };
    write_cache_entry(&cache_file(cache_dir, binary), &entry)
}

/// Writes one cache file (creating the cache directory), atomically and durably.
fn write_cache_entry(path: &Path, entry: &CacheEntry) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_vec_pretty(entry).map_err(std::io::Error::other)?;
    hbm_shell::write_atomically(path, &text, Durability::Durable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(node_members: &[&str]) -> Value {
        let members: Vec<Value> = node_members.iter().map(|m| json!({"name": m, "type": "int"})).collect();
        json!([
            {"name": "set-numa-node", "meta-type": "command", "arg-type": "7", "ret-type": "0"},
            {"name": "7", "meta-type": "object", "tag": "type", "members": [{"name": "type", "type": "8"}],
             "variants": [{"case": "dist", "type": "10"}, {"case": "node", "type": "9"}]},
            {"name": "10", "meta-type": "object", "members": [{"name": "memmap-type", "type": "int"}]},
            {"name": "9", "meta-type": "object", "members": members}
        ])
    }

    #[test]
    fn reads_dialects_from_the_schema_and_types() {
        let greeting =
            json!({"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 2}, "package": "Debian"}}});
        let types = json!([{"name": "acpi-generic-initiator"}, {"name": "pc-dimm"}]);
        let caps = capabilities_from_qmp("q", &greeting, &schema(&["nodeid", "memdev"]), &types).unwrap();
        assert_eq!(
            caps,
            Capabilities {
                binary: "q".into(),
                version: "10.0.2 (Debian)".into(),
                memmap_type: false,
                sp_mem: false,
                acpi_generic_initiator: true
            }
        );
        let types = json!([{"name": "sp-mem"}]);
        let caps = capabilities_from_qmp("q", &greeting, &schema(&["nodeid", "memmap-type"]), &types).unwrap();
        assert!(caps.memmap_type && caps.sp_mem && !caps.acpi_generic_initiator);
        assert_eq!(caps.dialects(), "memmap-type and sp-mem");
        let err = capabilities_from_qmp("q", &greeting, &json!([]), &types).unwrap_err();
        assert_eq!(
            err.to_string(),
            "probe of q: unexpected QMP reply: schema has no set-numa-node command"
        );
    }
}
