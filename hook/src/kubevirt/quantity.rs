//! Kubernetes quantities as byte counts, for VMI annotations (`hbm-passthrough.dev/size-cap`).
//! Written from the quantity grammar of Kubernetes' API conventions:
//!
//! ```text
//! quantity  = [sign] number [suffix]
//! number    = digits | digits "." [digits] | "." digits
//! suffix    = binary | decimal | exponent
//! binary    = Ki | Mi | Gi | Ti | Pi | Ei             (2^10 .. 2^60)
//! decimal   = m | k | M | G | T | P | E              (10^-3, 10^3 .. 10^18)
//! exponent  = ("e" | "E") [sign] digits              (10^n)
//! ```
//!
//! So `1000M` is 10^9 bytes, `64G` is 64x10^9, `64Gi` is 64x2^30, `1e9` is 10^9 and `64000m` is
//! 64 (milli). A byte count must come out whole and not negative. Command-line and config sizes
//! (`--size-cap 64GiB`) keep [`hbm_rewrite::size::parse_size`]'s syntax.

/// A quantity as an exact value: `digits x 10^exp10 x 2^exp2`.
#[derive(Debug, PartialEq, Eq)]
struct Exact {
    digits: u128,
    exp10: i32,
    exp2: u32,
}

/// The largest count of significant digits handled exactly (u128 holds 38 decimal digits).
const MAX_DIGITS: usize = 38;

/// Parses `text` as a Kubernetes quantity of bytes. The error says what is wrong with the value
/// (the caller names the annotation).
pub fn parse_byte_quantity(text: &str) -> Result<u64, String> {
    let not_quantity = || {
        format!(
            "{text:?} is not a Kubernetes quantity (a number with an optional suffix: k M G T P E, Ki Mi Gi Ti Pi Ei, m, or an exponent like 1e9)"
        )
    };
    let (negative, unsigned) = split_sign(text);
    let number_end = unsigned
        .find(|ch: char| !ch.is_ascii_digit() && ch != '.')
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_end);
    let mut exact = parse_number(number).ok_or_else(not_quantity)?;
    apply_suffix(&mut exact, suffix).ok_or_else(not_quantity)?;
    if negative && exact.digits != 0 {
        return Err(format!("{text:?} is negative; a size is a positive number of bytes"));
    }
    to_bytes(&exact).map_err(|why| format!("{text:?} {why}"))
}

/// The sign, and the rest of the text.
fn split_sign(text: &str) -> (bool, &str) {
    match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    }
}

/// `digits`, `digits.digits`, `digits.` or `.digits`, with trailing zeros folded into the
/// exponent so large round numbers stay within [`MAX_DIGITS`].
fn parse_number(number: &str) -> Option<Exact> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return None;
    }
    let all = format!("{whole}{fraction}");
    let significant = all.trim_start_matches('0');
    let trimmed = significant.trim_end_matches('0');
    let zeros = significant.len() - trimmed.len();
    if trimmed.len() > MAX_DIGITS {
        return None;
    }
    let digits = if trimmed.is_empty() { 0 } else { trimmed.parse().ok()? };
    let exp10 = i32::try_from(zeros).ok()? - i32::try_from(fraction.len()).ok()?;
    Some(Exact { digits, exp10, exp2: 0 })
}

/// Multiplies by the suffix's factor; `None` for a suffix that is not one.
fn apply_suffix(exact: &mut Exact, suffix: &str) -> Option<()> {
    let binary = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let decimal = ["k", "M", "G", "T", "P", "E"];
    if let Some(index) = binary.iter().position(|name| *name == suffix) {
        exact.exp2 = 10 * (u32::try_from(index).ok()? + 1);
    } else if let Some(index) = decimal.iter().position(|name| *name == suffix) {
        exact.exp10 += 3 * (i32::try_from(index).ok()? + 1);
    } else if suffix == "m" {
        exact.exp10 -= 3;
    } else if let Some(exponent) = suffix.strip_prefix(['e', 'E']) {
        let (negative, digits) = split_sign(exponent);
        if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
            return None;
        }
        let power: i32 = digits.parse().ok().filter(|p: &i32| *p <= 1000)?;
        exact.exp10 += if negative { -power } else { power };
    } else if !suffix.is_empty() {
        return None;
    }
    Some(())
}

/// The whole number of bytes, or why there is none.
fn to_bytes(exact: &Exact) -> Result<u64, &'static str> {
    const TOO_LARGE: &str = "is too large for a byte count";
    if exact.digits == 0 {
        return Ok(0);
    }
    let scaled = exact
        .digits
        .checked_shl(exact.exp2)
        .filter(|shifted| shifted >> exact.exp2 == exact.digits);
    let mut value = scaled.ok_or(TOO_LARGE)?;
    if exact.exp10 >= 0 {
        let factor = 10u128.checked_pow(exact.exp10.unsigned_abs()).ok_or(TOO_LARGE)?;
        value = value.checked_mul(factor).ok_or(TOO_LARGE)?;
    } else {
        let divisor = 10u128.checked_pow(exact.exp10.unsigned_abs());
        match divisor {
            Some(d) if value % d == 0 => value /= d,
            _ => return Err("is not a whole number of bytes"),
        }
    }
    u64::try_from(value).map_err(|_| TOO_LARGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_binary_milli_and_exponent_suffixes() {
        let cases: [(&str, u64); 16] = [
            ("1000M", 1_000_000_000),
            ("64G", 64_000_000_000),
            ("64000m", 64),
            ("64Gi", 64 << 30),
            ("512Mi", 512 << 20),
            ("1Ki", 1024),
            ("1k", 1000),
            ("2T", 2_000_000_000_000),
            ("1P", 1_000_000_000_000_000),
            ("1E", 1_000_000_000_000_000_000),
            ("1Ei", 1 << 60),
            ("1e9", 1_000_000_000),
            ("1E3", 1000),
            ("1.5Gi", 3 << 29),
            ("+68719476736", 64 << 30),
            ("0.5k", 500),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_byte_quantity(text), Ok(bytes), "{text}");
        }
        assert_eq!(parse_byte_quantity(".5k"), Ok(500));
        assert_eq!(
            parse_byte_quantity("15e-1"),
            Err("\"15e-1\" is not a whole number of bytes".to_string())
        );
        assert_eq!(parse_byte_quantity("20e-1"), Ok(2));
        assert_eq!(parse_byte_quantity("0"), Ok(0));
        assert_eq!(
            parse_byte_quantity("100000000000000000000000000000000000000000m"),
            Err("\"100000000000000000000000000000000000000000m\" is too large for a byte count".to_string())
        );
    }

    #[test]
    fn fractions_negatives_and_other_spellings_are_refused() {
        for (text, why) in [
            ("1500m", "is not a whole number of bytes"),
            ("0.1", "is not a whole number of bytes"),
            ("-1Gi", "is negative; a size is a positive number of bytes"),
            ("20Ei", "is too large for a byte count"),
        ] {
            assert_eq!(parse_byte_quantity(text), Err(format!("{text:?} {why}")));
        }
        for text in [
            "64GiB", "64gi", "lots", "", "1.2.3", "Gi", ".", "1e", "1e+", "5i", "1 Gi", "1KB",
        ] {
            let err = parse_byte_quantity(text).unwrap_err();
            assert!(err.ends_with("or an exponent like 1e9)"), "{text}: {err}");
        }
    }
}
