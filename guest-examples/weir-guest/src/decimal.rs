//! Exact decimal arithmetic on unscaled `i128` values (`value = unscaled / 10^scale`), as stored
//! in `Decimal128` columns.

/// Largest unscaled value that fits `precision` digits (`precision` at most 38).
pub fn max_unscaled(precision: u8) -> i128 {
    POWERS_OF_TEN
        .get(usize::from(precision))
        .map_or(i128::MAX, |limit| limit - 1)
}

/// Whether `unscaled` fits `precision` digits.
pub fn fits(unscaled: i128, precision: u8) -> bool {
    unscaled.unsigned_abs() <= max_unscaled(precision).unsigned_abs()
}

/// 10^0 to 10^38: `i128` multiplication is a library call on wasm32, so powers are looked up.
const POWERS_OF_TEN: [i128; 39] = {
    let mut powers = [1_i128; 39];
    let mut i = 1;
    while i < powers.len() {
        powers[i] = powers[i - 1] * 10;
        i += 1;
    }
    powers
};

/// Changes the scale, rounding half away from zero when digits are dropped; `None` on overflow.
pub fn rescale(unscaled: i128, from: i8, to: i8) -> Option<i128> {
    let shift = i32::from(to) - i32::from(from);
    let factor = *POWERS_OF_TEN.get(usize::try_from(shift.unsigned_abs()).ok()?)?;
    if shift >= 0 {
        return unscaled.checked_mul(factor);
    }
    let (quotient, remainder) = (unscaled / factor, unscaled % factor);
    let round_away = remainder.unsigned_abs() * 2 >= factor.unsigned_abs();
    Some(if round_away {
        quotient + unscaled.signum()
    } else {
        quotient
    })
}

/// Parses `[+-]digits[.digits]` exactly to `scale` (0 to 38), rounding half away from zero past
/// it. `None` for anything else (exponents, separators, blanks) or past `i128`.
pub fn parse(text: &str, scale: u8) -> Option<i128> {
    let (negative, body) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    // A byte loop, not `str::split_once`: its general search costs more than these few digits.
    let (whole, fraction) = match body.bytes().position(|b| b == b'.') {
        Some(point) => (&body[..point], &body[point + 1..]),
        None => (body, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    let mut digits = whole.bytes().chain(
        (0..usize::from(scale)).map(|i| fraction.as_bytes().get(i).copied().unwrap_or(b'0')),
    );
    // Up to 18 digits fit an `i64`, whose arithmetic is native on every target; `i128` is not.
    let units = if whole.len() + usize::from(scale) <= 18 {
        i128::from(digits.fold(0_i64, |units, digit| units * 10 + i64::from(digit - b'0')))
    } else {
        digits.try_fold(0_i128, |units, digit| {
            units.checked_mul(10)?.checked_add(i128::from(digit - b'0'))
        })?
    };
    let round_away = fraction
        .as_bytes()
        .get(usize::from(scale))
        .is_some_and(|&digit| digit >= b'5');
    let units = if round_away {
        units.checked_add(1)?
    } else {
        units
    };
    Some(if negative { -units } else { units })
}

/// Writes `unscaled` at `scale` as plain decimal text, e.g. `(-2147, 2)` as `-21.47`.
pub fn format(unscaled: i128, scale: i8) -> String {
    let digits = unscaled.unsigned_abs().to_string();
    let sign = if unscaled < 0 { "-" } else { "" };
    if scale <= 0 {
        let zeros = if unscaled == 0 {
            0
        } else {
            scale.unsigned_abs() as usize
        };
        return format!("{sign}{digits}{}", "0".repeat(zeros));
    }
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    format!("{sign}{whole}.{fraction}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_is_exact_and_rounds_half_away_from_zero() {
        assert_eq!(parse("21.47", 2), Some(2147));
        assert_eq!(parse("21.475", 2), Some(2148));
        assert_eq!(parse("-21.475", 2), Some(-2148));
        assert_eq!(parse("21.4749", 2), Some(2147));
        assert_eq!(parse(".5", 0), Some(1));
        assert_eq!(parse("7.", 2), Some(700));
        for bad in ["", "-", ".", "1e3", "1,5", "1.2.3", " 1", "NaN"] {
            assert_eq!(parse(bad, 2), None, "{bad}");
        }
        assert_eq!(parse(&"9".repeat(40), 2), None);
    }

    #[test]
    fn rescaling_rounds_half_away_from_zero() {
        assert_eq!(rescale(21475, 3, 2), Some(2148));
        assert_eq!(rescale(-21475, 3, 2), Some(-2148));
        assert_eq!(rescale(21474, 3, 2), Some(2147));
        assert_eq!(rescale(3, 0, 2), Some(300));
        assert_eq!(rescale(i128::MAX, 0, 2), None);
    }

    #[test]
    fn precision_limits() {
        assert_eq!(max_unscaled(2), 99);
        assert!(fits(-99, 2) && !fits(100, 2));
        assert!(fits(max_unscaled(38), 38));
    }

    #[test]
    fn formatting_places_the_point() {
        assert_eq!(format(-2147, 2), "-21.47");
        assert_eq!(format(5, 2), "0.05");
        assert_eq!(format(0, 2), "0.00");
        assert_eq!(format(12, -2), "1200");
    }
}
