//! Byte sizes as people write them (`68719476736`, `64GiB`, `512M`), and libvirt's units.

/// Parses a size: a plain number of bytes or a number with a binary (`KiB`, `MiB`, `GiB`, `TiB`,
/// also `K`, `M`, `G`, `T`) or decimal (`KB`, `MB`, `GB`, `TB`) suffix.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed.find(|ch: char| !ch.is_ascii_digit()).unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "size {text:?} does not start with a number (e.g. 68719476736 or 64GiB)"
        ));
    }
    let count: u64 = digits.parse().map_err(|_| format!("size {text:?} is too large"))?;
    let unit = unit.trim();
    let factor = if unit.is_empty() { Some(1) } else { unit_factor(unit) };
    let factor = factor.ok_or_else(|| format!("size {text:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB)"))?;
    count
        .checked_mul(factor)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// Multiplier of a libvirt memory unit (`unit=` attribute); `""` is libvirt's default, KiB.
pub fn unit_factor(unit: &str) -> Option<u64> {
    Some(match unit {
        "b" | "B" | "bytes" => 1,
        "" | "k" | "K" | "KiB" => 1 << 10,
        "KB" => 1000,
        "m" | "M" | "MiB" => 1 << 20,
        "MB" => 1_000_000,
        "g" | "G" | "GiB" => 1 << 30,
        "GB" => 1_000_000_000,
        "t" | "T" | "TiB" => 1 << 40,
        "TB" => 1_000_000_000_000,
        "p" | "P" | "PiB" => 1 << 50,
        "PB" => 1_000_000_000_000_000,
        "e" | "E" | "EiB" => 1 << 60,
        "EB" => 1_000_000_000_000_000_000,
        _ => return None,
    })
}

/// A size with the largest binary suffix that divides it (`512M`, `1G`), as the Linux kernel's
/// `memparse` reads it.
pub fn kernel_size(bytes: u64) -> String {
    for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("64GiB"), Ok(64 << 30));
        assert_eq!(parse_size("68719476736"), Ok(64 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn kernel_sizes() {
        assert_eq!(kernel_size(512 << 20), "512M");
        assert_eq!(kernel_size(1 << 30), "1G");
        assert_eq!(kernel_size(0x1_0000_0000 + (512 << 20)), "4608M");
        assert_eq!(kernel_size(0), "0");
    }
}
