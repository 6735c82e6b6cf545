//! The real libvirt: schema validation (`virt-xml-validate`), the QEMU command line libvirt would
//! run (`virsh domxml-to-native qemu-argv`), and domains defined/started/destroyed/undefined under
//! unique names on `qemu:///system`. Nothing here is mocked; a missing tool or a libvirtd that
//! does not answer is a loud test failure naming the fix.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

pub const URI: &str = "qemu:///system";

/// Tools the real-component tests run, with the Debian package that brings each.
pub const TOOLS: &[(&str, &str)] = &[
    ("virsh", "libvirt-clients"),
    ("virt-xml-validate", "libvirt-clients"),
    ("xmllint", "libxml2-utils"),
    ("qemu-system-x86_64", "qemu-system-x86 (>= 9.0, bookworm-backports)"),
];

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Panics (once per process, with the fix) unless every tool is installed and libvirtd answers on
/// [`URI`]. Call at the top of every test that talks to libvirt.
pub fn require_libvirt() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let r = CHECKED.get_or_init(|| {
        for (tool, package) in TOOLS {
            if !on_path(tool) {
                return Err(format!(
                    "'{tool}' is not on PATH: install the Debian package {package} (scripts/install-deps does)"
                ));
            }
        }
        check_daemon(URI)?;
        sweep_stale_domains();
        Ok(())
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// Whether libvirtd answers on `uri`; the error says how to start it.
pub fn check_daemon(uri: &str) -> Result<(), String> {
    let out = run(Command::new("virsh").args(["-c", uri, "version"]));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "libvirtd does not answer on {uri}: start it with `bash scripts/start-services` as root ({})",
            text(&out).trim().replace('\n', " ")
        ))
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// stdout + stderr of a finished command.
pub fn text(out: &Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    s
}

fn temp_xml(xml: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .prefix("hbm-domain-")
        .suffix(".xml")
        .tempfile()
        .unwrap_or_else(|e| panic!("temp file: {e}"));
    f.write_all(xml.as_bytes())
        .unwrap_or_else(|e| panic!("write temp file: {e}"));
    f
}

/// Result of `virt-xml-validate FILE domain`.
#[derive(Clone, Debug)]
pub struct Validation {
    pub valid: bool,
    /// What the tool printed (the schema errors when invalid).
    pub output: String,
}

pub fn validate_file(path: &Path) -> Validation {
    let out = run(Command::new("virt-xml-validate").arg(path).arg("domain"));
    Validation {
        valid: out.status.success(),
        output: text(&out),
    }
}

pub fn validate(xml: &str) -> Validation {
    let f = temp_xml(xml);
    validate_file(f.path())
}

/// `virsh -c qemu:///system domxml-to-native qemu-argv` of `xml`: the parsed command line, or
/// libvirt's error text.
pub fn domxml_to_native(xml: &str) -> Result<QemuArgv, String> {
    let f = temp_xml(xml);
    let out = run(Command::new("virsh")
        .args(["-c", URI, "domxml-to-native", "qemu-argv"])
        .arg(f.path()));
    if !out.status.success() {
        return Err(text(&out).trim().to_string());
    }
    QemuArgv::parse(&String::from_utf8_lossy(&out.stdout))
}

/// One `-object`/`-device`/`-numa`... option value, split into its type and properties. Accepts
/// both spellings libvirt uses: JSON (`{"qom-type":"x","id":"y",...}`) and `type,k=v,k=v`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuOption {
    /// `qom-type` / `driver` for JSON, the leading bare word otherwise (`node` for `-numa node,...`).
    pub kind: String,
    /// Properties; JSON non-strings are kept in JSON form (`[0]`, `254`, `true`).
    pub props: BTreeMap<String, String>,
    /// The value exactly as on the command line.
    pub raw: String,
}

impl QemuOption {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut props = BTreeMap::new();
        let kind;
        if raw.starts_with('{') {
            let v: serde_json::Value =
                serde_json::from_str(raw).map_err(|e| format!("option '{raw}' is not JSON: {e}"))?;
            let obj = v
                .as_object()
                .ok_or_else(|| format!("option '{raw}' is not a JSON object"))?;
            for (k, v) in obj {
                let s = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                props.insert(k.clone(), s);
            }
            kind = props
                .get("qom-type")
                .or_else(|| props.get("driver"))
                .cloned()
                .unwrap_or_default();
        } else {
            let mut first = None;
            // QEMU's keyval: ',,' is an escaped comma.
            let mut parts = Vec::new();
            let mut cur = String::new();
            let mut chars = raw.chars().peekable();
            while let Some(c) = chars.next() {
                if c == ',' {
                    if chars.peek() == Some(&',') {
                        chars.next();
                        cur.push(',');
                    } else {
                        parts.push(std::mem::take(&mut cur));
                    }
                } else {
                    cur.push(c);
                }
            }
            parts.push(cur);
            for p in parts {
                match p.split_once('=') {
                    Some((k, v)) => {
                        props.insert(k.to_string(), v.to_string());
                    }
                    None if first.is_none() => first = Some(p),
                    None => {
                        props.insert(p, "on".to_string());
                    }
                }
            }
            kind = first.or_else(|| props.get("driver").cloned()).unwrap_or_default();
        }
        Ok(Self {
            kind,
            props,
            raw: raw.to_string(),
        })
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.props.get(k).map(String::as_str)
    }
}

/// A QEMU command line as libvirt prints it.
#[derive(Clone, Debug, Default)]
pub struct QemuArgv {
    /// Leading `NAME=value` environment assignments.
    pub env: Vec<(String, String)>,
    pub binary: String,
    pub args: Vec<String>,
}

impl QemuArgv {
    /// Parses the shell-quoted one-liner (also `\`-newline continued) of `domxml-to-native`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let words = shell_words(s)?;
        let mut argv = QemuArgv::default();
        let mut it = words.into_iter();
        for w in it.by_ref() {
            match w.split_once('=') {
                Some((k, v)) if !k.is_empty() && !k.starts_with('-') && !k.contains('/') => {
                    argv.env.push((k.to_string(), v.to_string()))
                }
                _ => {
                    argv.binary = w;
                    break;
                }
            }
        }
        argv.args = it.collect();
        if argv.binary.is_empty() {
            return Err(format!("no QEMU binary in '{s}'"));
        }
        Ok(argv)
    }

    /// The values following each occurrence of `flag` (`-numa`, `-object`, ...), in order.
    pub fn values(&self, flag: &str) -> Vec<&str> {
        self.args
            .windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    /// The parsed values of each `flag` option.
    pub fn options(&self, flag: &str) -> Vec<QemuOption> {
        self.values(flag)
            .into_iter()
            .map(|v| QemuOption::parse(v).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    /// The `-object` with `id`.
    pub fn object(&self, id: &str) -> Option<QemuOption> {
        self.options("-object").into_iter().find(|o| o.get("id") == Some(id))
    }

    /// The `-device` with `id`.
    pub fn device(&self, id: &str) -> Option<QemuOption> {
        self.options("-device").into_iter().find(|o| o.get("id") == Some(id))
    }

    /// The `-numa node,...` whose `nodeid` is `id`.
    pub fn numa_node(&self, id: u32) -> Option<QemuOption> {
        let id = id.to_string();
        self.options("-numa")
            .into_iter()
            .find(|o| o.kind == "node" && o.get("nodeid") == Some(id.as_str()))
    }

    /// The value of `-append` (the guest kernel command line), if any.
    pub fn kernel_cmdline(&self) -> Option<&str> {
        self.values("-append").into_iter().next()
    }
}

/// Splits POSIX-shell-quoted text into words (single quotes, double quotes, backslash escapes,
/// backslash-newline continuation). Enough for libvirt's argv printer.
pub fn shell_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unterminated single quote".to_string()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err("unterminated double quote".to_string()),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("unterminated double quote".to_string()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(c) => {
                    in_word = true;
                    cur.push(c);
                }
                None => return Err("trailing backslash".to_string()),
            },
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// A name no other test (or earlier run) uses: `hbm-test-<label>-<pid>-<n>`.
pub fn unique_name(label: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let label: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' })
        .take(40)
        .collect();
    format!("hbm-test-{label}-{}-{n}", std::process::id())
}

/// `virsh -c qemu:///system ARGS...` (for what the helpers here do not wrap: save, restore, migrate).
pub fn virsh(args: &[&str]) -> Output {
    run(Command::new("virsh").args(["-c", URI]).args(args))
}

/// Destroys and undefines `hbm-test-*` domains left behind by test processes that no longer run
/// (a killed run cannot undefine its own); domains of live processes are left alone.
pub fn sweep_stale_domains() {
    let out = virsh(&["list", "--all", "--name"]);
    for name in String::from_utf8_lossy(&out.stdout).lines().map(str::trim) {
        let Some(rest) = name.strip_prefix("hbm-test-") else {
            continue;
        };
        let parts: Vec<&str> = rest.rsplitn(3, '-').collect();
        let Some(pid) = parts.get(1).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = virsh(&["destroy", name]);
        let _ = virsh(&["undefine", name]);
    }
}

/// A persistent domain defined on [`URI`]; destroyed (if running) and undefined when dropped, so a
/// failing test leaves nothing behind.
#[derive(Debug)]
pub struct Domain {
    pub name: String,
}

impl Domain {
    /// `virsh define` of `xml`; its `<name>` must already be unique (see [`unique_name`] and
    /// `domain_xml::with_name`).
    pub fn define(xml: &str) -> Result<Domain, String> {
        let facts = super::domain_xml::facts(xml)?;
        let name = facts.name.ok_or("domain has no <name>")?;
        let f = temp_xml(xml);
        let path = f.path().to_string_lossy().into_owned();
        let out = virsh(&["define", &path]);
        if !out.status.success() {
            return Err(format!("virsh define of '{name}' failed: {}", text(&out).trim()));
        }
        Ok(Domain { name })
    }

    pub fn start(&self) -> Result<(), String> {
        let out = virsh(&["start", &self.name]);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("virsh start '{}' failed: {}", self.name, text(&out).trim()))
        }
    }

    /// `virsh domstate` (`running`, `shut off`, ...).
    pub fn state(&self) -> Result<String, String> {
        let out = virsh(&["domstate", &self.name]);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!("virsh domstate '{}' failed: {}", self.name, text(&out).trim()))
        }
    }

    /// Polls until the domain is shut off (the guest powered itself off); a bound, not a
    /// measurement: on expiry the domain is destroyed and an error returned.
    pub fn wait_shut_off(&self, bound: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let s = self.state()?;
            if s == "shut off" {
                return Ok(());
            }
            if start.elapsed() > bound {
                self.destroy();
                return Err(format!(
                    "domain '{}' still '{s}' after {}s: the guest did not power off",
                    self.name,
                    bound.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `virsh dumpxml` (the live definition while running, else the persistent one; `inactive`
    /// forces the persistent one).
    pub fn dumpxml(&self, inactive: bool) -> Result<String, String> {
        let mut args = vec!["dumpxml", self.name.as_str()];
        if inactive {
            args.push("--inactive");
        }
        let out = virsh(&args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("virsh dumpxml '{}' failed: {}", self.name, text(&out).trim()))
        }
    }

    pub fn destroy(&self) {
        let _ = virsh(&["destroy", &self.name]);
    }

    /// libvirt's QEMU log for the domain (`/var/log/libvirt/qemu/NAME.log`), for failure messages.
    pub fn qemu_log(&self) -> String {
        std::fs::read_to_string(format!("/var/log/libvirt/qemu/{}.log", self.name)).unwrap_or_default()
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        if self.state().map(|s| s != "shut off").unwrap_or(false) {
            self.destroy();
        }
        let _ = virsh(&["undefine", &self.name]);
        let _ = std::fs::remove_file(format!("/var/log/libvirt/qemu/{}.log", self.name));
    }
}

/// libvirtd is shared by the tests of this binary, and the libvirt-hook test installs the
/// project's `qemu.d` hook into it for a while: any domain with an HBM record started then would
/// be judged against that test's fixture host. Domains of other tests start under a read guard,
/// the hook test holds the write guard while its hook is installed.
static HOOK_INSTALLED: RwLock<()> = RwLock::new(());

/// Held while starting and running a domain that the installed hook must not see.
pub fn without_installed_hook() -> RwLockReadGuard<'static, ()> {
    HOOK_INSTALLED.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Held by the libvirt-hook test while its hook is installed.
pub fn with_installed_hook() -> RwLockWriteGuard<'static, ()> {
    HOOK_INSTALLED.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads a serial console log written by `<serial type='file'>`.
pub fn read_console_log(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => format!("<console log {} unreadable: {e}>", path.display()),
    }
}
