//! A reader rooted at a sysfs/procfs root (`/` on a host, a fixture tree in tests): paths are
//! given relative to the root (`sys/bus/pci/devices`), reads are typed, and every error names
//! the file it concerns. Only regular files are read ([`open_regular`]): a FIFO, device node or
//! directory where a file is expected is an error naming the path, never a hang.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Largest id accepted in a cpulist/nodelist (guards against `0-4294967295` blowing up memory).
pub const MAX_LIST_ID: u32 = 65_535;

/// Most ids one cpulist/nodelist may name in total, counting repeats (a list naming every
/// possible id once names 65,536). Guards against `0-65535,` repeated: each range is fine on its
/// own, together they would expand to hundreds of megabytes.
pub const MAX_LIST_IDS: u64 = MAX_LIST_ID as u64 + 1;

/// Largest file read, in bytes (sysfs attributes are a page; `/proc/iomem` and SRAT are small).
const MAX_READ: u64 = 16 << 20;

/// Why a sysfs file could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    #[error("{path}: missing")]
    Missing { path: PathBuf },
    #[error("{path}: unreadable: {source}")]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("{path}: {why}")]
    Refused { path: PathBuf, why: String },
    #[error("{path}: {value:?} is not {expected}")]
    Garbage {
        path: PathBuf,
        value: String,
        expected: &'static str,
    },
}

impl SysfsError {
    /// The file the error concerns.
    pub fn path(&self) -> &Path {
        match self {
            SysfsError::Missing { path }
            | SysfsError::Unreadable { path, .. }
            | SysfsError::Refused { path, .. }
            | SysfsError::Garbage { path, .. } => path,
        }
    }

    pub fn is_missing(&self) -> bool {
        matches!(self, SysfsError::Missing { .. })
    }
}

/// A sysfs/procfs root.
#[derive(Clone, Debug)]
pub struct Sysfs {
    root: PathBuf,
}

impl Sysfs {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Absolute path of `rel` under the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn io_error(&self, rel: &str, e: io::Error) -> SysfsError {
        let path = self.path(rel);
        if e.kind() == io::ErrorKind::NotFound {
            SysfsError::Missing { path }
        } else {
            SysfsError::Unreadable { path, source: e }
        }
    }

    /// Whether `rel` exists (following links).
    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }

    /// Raw bytes of `rel` (at most 16 MiB). Sysfs attributes come in one read of a page, so
    /// under `sys/` a short first read ends the file without a second syscall; procfs files
    /// (`proc/iomem`, `proc/bus/pci/devices`) hand out whole lines per read and are read to the
    /// end.
    pub fn read_bytes(&self, rel: &str) -> Result<Vec<u8>, SysfsError> {
        let mut f = open_regular(&self.path(rel)).map_err(|e| self.io_error(rel, e))?;
        let mut page = [0u8; 4096];
        let n = loop {
            match f.read(&mut page) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_error(rel, e)),
            }
        };
        let mut buf = page[..n].to_vec();
        let one_read = rel.starts_with("sys/") && n < page.len();
        if n > 0 && !one_read {
            f.take(MAX_READ)
                .read_to_end(&mut buf)
                .map_err(|e| self.io_error(rel, e))?;
        }
        Ok(buf)
    }

    /// Whole text of `rel` (lossy UTF-8), untrimmed.
    pub fn read_text(&self, rel: &str) -> Result<String, SysfsError> {
        let b = self.read_bytes(rel)?;
        Ok(match String::from_utf8(b) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// Text of `rel` with surrounding whitespace trimmed (one-value attributes).
    pub fn read_value(&self, rel: &str) -> Result<String, SysfsError> {
        // Some kernels/snapshots end attributes with a NUL after the newline.
        let s = self.read_text(rel)?;
        Ok(s.trim_matches(|c: char| c.is_whitespace() || c == '\0').to_string())
    }

    fn garbage(&self, rel: &str, value: &str, expected: &'static str) -> SysfsError {
        SysfsError::Garbage {
            path: self.path(rel),
            value: cut(value),
            expected,
        }
    }

    /// A decimal u64 (`size`, `align`).
    pub fn read_u64(&self, rel: &str) -> Result<u64, SysfsError> {
        let v = self.read_value(rel)?;
        v.parse().map_err(|_| self.garbage(rel, &v, "a decimal number"))
    }

    /// A hex u64 with or without `0x` (`resource`, `mapping0/start`, memmap `start`).
    pub fn read_hex(&self, rel: &str) -> Result<u64, SysfsError> {
        let v = self.read_value(rel)?;
        parse_hex(&v).ok_or_else(|| self.garbage(rel, &v, "a hex number"))
    }

    /// A node number where `-1` means none (`numa_node`, `target_node`): `Ok(None)` for -1.
    pub fn read_node(&self, rel: &str) -> Result<Option<u32>, SysfsError> {
        let v = self.read_value(rel)?;
        match v.parse::<i64>() {
            Ok(-1) => Ok(None),
            Ok(n) if (0..=i64::from(MAX_LIST_ID)).contains(&n) => Ok(Some(n as u32)),
            Ok(_) => Err(self.garbage(rel, &v, "a node number (-1 or 0..65535)")),
            Err(_) => Err(self.garbage(rel, &v, "a node number")),
        }
    }

    /// A cpulist/nodelist (`0-3,8`); empty text is an empty list.
    pub fn read_list(&self, rel: &str) -> Result<Vec<u32>, SysfsError> {
        let v = self.read_value(rel)?;
        parse_list(&v).map_err(|error| match error {
            ListError::Syntax => self.garbage(rel, &v, "a list like 0-3,8"),
            ListError::TooMany => SysfsError::Refused {
                path: self.path(rel),
                why: error.to_string(),
            },
        })
    }

    /// The last component of the link `rel` points at (`driver` -> `vfio-pci`); `Ok(None)` when
    /// there is no such link.
    pub fn read_link_name(&self, rel: &str) -> Result<Option<String>, SysfsError> {
        match fs::read_link(self.path(rel)) {
            Ok(t) => Ok(t.file_name().map(|n| n.to_string_lossy().into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io_error(rel, e)),
        }
    }

    /// The link target of `rel` as written (relative), `Ok(None)` when `rel` is not a link.
    pub fn read_link(&self, rel: &str) -> Result<Option<PathBuf>, SysfsError> {
        match fs::read_link(self.path(rel)) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(self.io_error(rel, e)),
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(None),
            Err(e) => Err(self.io_error(rel, e)),
        }
    }

    /// Entry names of the folder `rel`, sorted; a missing folder is `Missing`.
    /// Opens the folder `rel` without listing it: the error `list_dir` would give, for the
    /// price of an open.
    pub fn check_dir(&self, rel: &str) -> Result<(), SysfsError> {
        fs::read_dir(self.path(rel))
            .map(drop)
            .map_err(|e| self.io_error(rel, e))
    }

    pub fn list_dir(&self, rel: &str) -> Result<Vec<String>, SysfsError> {
        let rd = fs::read_dir(self.path(rel)).map_err(|e| self.io_error(rel, e))?;
        let mut names = Vec::new();
        for e in rd {
            let e = e.map_err(|e| self.io_error(rel, e))?;
            names.push(e.file_name().to_string_lossy().into_owned());
        }
        names.sort_unstable();
        Ok(names)
    }
}

/// Opens `path` for reading when it is a regular file. The open does not wait (`O_NONBLOCK`: a
/// FIFO opens without a writer) and the opened file's own type is checked, so a FIFO, device
/// node or directory is refused with [`io::ErrorKind::InvalidInput`] instead of hanging the
/// caller or streaming without end.
pub fn open_regular(path: &Path) -> io::Result<fs::File> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{}, not a regular file; only regular files are read", describe(kind)),
    ))
}

/// Reads the regular file `path` ([`open_regular`]) when it holds at most `limit` bytes; a
/// larger file is refused with [`io::ErrorKind::InvalidInput`]. For config files.
pub fn read_regular_file(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("larger than {limit} bytes; refused"),
        ));
    }
    Ok(bytes)
}

/// Reads a config or input file named on a command line: a regular file of at most `limit` bytes
/// ([`read_regular_file`]), or the null device, which reads as empty (`--config /dev/null`: no
/// settings). Anything else that is not a regular file is refused, so a FIFO cannot hang the
/// caller and `/dev/zero` cannot fill its memory.
pub fn read_config_file(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    if is_null_device(path) {
        return Ok(Vec::new());
    }
    read_regular_file(path, limit)
}

/// Whether `path` is the null device (a character device with `/dev/null`'s device number).
fn is_null_device(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(meta), Ok(null)) = (fs::metadata(path), fs::metadata("/dev/null")) else {
        return false;
    };
    meta.file_type().is_char_device() && meta.rdev() == null.rdev()
}

fn describe(kind: fs::FileType) -> &'static str {
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device node"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "something else"
    }
}

/// Hex with optional `0x`/`0X` prefix.
pub fn parse_hex(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    if digits.is_empty() {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// Why a cpulist/nodelist was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("not a list like 0-3,8 (ids up to 65535)")]
    Syntax,
    #[error("names more than {MAX_LIST_IDS} ids in total (ranges repeated?); list refused")]
    TooMany,
}

/// Parses a cpulist/nodelist (`0-3,8,10-11`), ids up to [`MAX_LIST_ID`], at most
/// [`MAX_LIST_IDS`] named in total. Sorted, deduplicated.
pub fn parse_list(s: &str) -> Result<Vec<u32>, ListError> {
    let s = s.trim();
    let mut out = Vec::new();
    if s.is_empty() {
        return Ok(out);
    }
    let mut named = 0u64;
    for part in s.split(',') {
        let (first, last) = list_range(part.trim()).ok_or(ListError::Syntax)?;
        named += u64::from(last - first) + 1;
        if named > MAX_LIST_IDS {
            return Err(ListError::TooMany);
        }
        out.extend(first..=last);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// One element of a list: `a-b` or `a`, as (first, last) with first <= last <= [`MAX_LIST_ID`].
fn list_range(part: &str) -> Option<(u32, u32)> {
    let (first, last) = match part.split_once('-') {
        Some((a, b)) => (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?),
        None => {
            let n = part.parse::<u32>().ok()?;
            (n, n)
        }
    };
    (first <= last && last <= MAX_LIST_ID).then_some((first, last))
}

/// `value` cut to its first 64 bytes (on a character boundary) with `…` appended when longer:
/// what messages quote of a file's content.
pub fn cut(value: &str) -> String {
    if value.len() <= 64 {
        return value.to_string();
    }
    let mut end = 64;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &value[..end])
}

/// Parses a hex CPU mask as in `local_cpus` (`ffff,00000000`, 32-bit words, most significant
/// first) into CPU ids.
pub fn parse_cpumask(s: &str) -> Option<Vec<u32>> {
    let words: Vec<&str> = s.trim().split(',').collect();
    let mut out = Vec::new();
    for (i, w) in words.iter().rev().enumerate() {
        let w = w.trim();
        if w.is_empty() || w.len() > 8 {
            return None;
        }
        let bits = u32::from_str_radix(w, 16).ok()?;
        for b in 0..32u32 {
            if bits & (1 << b) != 0 {
                let id = u32::try_from(i).ok()?.checked_mul(32)?.checked_add(b)?;
                if id > MAX_LIST_ID {
                    return None;
                }
                out.push(id);
            }
        }
    }
    out.sort_unstable();
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn config_files_are_regular_files_or_the_null_device() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "a: 1\n").unwrap();
        assert_eq!(read_config_file(&file, 100).unwrap(), b"a: 1\n");
        assert_eq!(read_config_file(Path::new("/dev/null"), 100).unwrap(), b"");
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(status.success());
        let refused = read_config_file(&fifo, 100).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            refused.to_string(),
            "a FIFO, not a regular file; only regular files are read"
        );
        let zero = read_config_file(Path::new("/dev/zero"), 100).unwrap_err();
        assert_eq!(
            zero.to_string(),
            "a device node, not a regular file; only regular files are read"
        );
        assert_eq!(
            read_config_file(dir.path(), 100).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            read_config_file(&file, 2).unwrap_err().to_string(),
            "larger than 2 bytes; refused"
        );
    }

    #[test]
    fn lists_parse_and_reject_garbage() {
        assert_eq!(parse_list("0-3,8").unwrap(), vec![0, 1, 2, 3, 8]);
        assert_eq!(parse_list("").unwrap(), Vec::<u32>::new());
        assert_eq!(parse_list("250-255").unwrap().len(), 6);
        assert_eq!(parse_list("0-65535").unwrap().len(), 65_536);
        for bad in ["x", "3-1", "0-4294967295", "1,,2", "-1", "1-"] {
            assert_eq!(parse_list(bad), Err(ListError::Syntax), "{bad}");
        }
    }

    #[test]
    fn a_list_naming_more_than_65536_ids_in_total_is_refused() {
        // 16 KB of `0-65535,` would expand to 134 million ids.
        let repeated = "0-65535,".repeat(2048);
        assert_eq!(parse_list(repeated.trim_end_matches(',')), Err(ListError::TooMany));
        assert_eq!(parse_list("0-65535,0"), Err(ListError::TooMany));
        assert_eq!(parse_list("0-65534,0").unwrap().len(), 65_535);
    }

    #[test]
    fn cut_keeps_64_bytes_and_marks_the_cut() {
        assert_eq!(cut("short"), "short");
        assert_eq!(cut(&"a".repeat(100)), format!("{}…", "a".repeat(64)));
        assert_eq!(cut(&"é".repeat(40)), format!("{}…", "é".repeat(32)));
    }

    #[test]
    fn only_regular_files_are_opened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("class");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let err = open_regular(&fifo).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            err.to_string(),
            "a FIFO, not a regular file; only regular files are read"
        );
        let err = open_regular(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a directory, not a regular file; only regular files are read"
        );
        let err = open_regular(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a device node, not a regular file; only regular files are read"
        );
        let file = dir.path().join("plain");
        fs::write(&file, "0x120000\n").unwrap();
        assert_eq!(read_regular_file(&file, 9).unwrap(), b"0x120000\n");
        let err = read_regular_file(&file, 8).unwrap_err();
        assert_eq!(err.to_string(), "larger than 8 bytes; refused");
    }

    #[test]
    fn hex_and_masks() {
        assert_eq!(parse_hex("0x20000000"), Some(0x2000_0000));
        assert_eq!(parse_hex("3f0000000"), Some(0x3_f000_0000));
        assert_eq!(parse_hex("0x"), None);
        assert_eq!(parse_cpumask("00000000,0000000f").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_cpumask("1,00000000").unwrap(), vec![32]);
        assert_eq!(parse_cpumask("zz"), None);
    }
}
