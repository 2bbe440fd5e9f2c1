//! Turning loosely typed Debezium JSON values into the bronze column types.
//!
//! Each function reads one cell: `Ok(None)` is a null (blank text counts as null), `Err` says what
//! was wrong with the value; the caller adds the row and column.

use std::borrow::Cow;

use weir_guest::columns::Value;
use weir_guest::decimal;

/// Text with leading and trailing whitespace removed and inner runs collapsed to one space; borrowed
/// when the text is already so, which it nearly always is.
pub fn normalize_whitespace(text: &str) -> Cow<'_, str> {
    if is_tidy_ascii(text.as_bytes()) || is_tidy(text) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    Cow::Owned(out)
}

fn is_tidy(text: &str) -> bool {
    let mut previous_space = true; // a leading space needs work too
    // Bytes, not chars: every byte of a multi-byte character is ≥ 0x80, and the only whitespace
    // among those characters (U+0085, U+00A0, U+2000…) is caught by the slower check below.
    text.bytes().all(|b| {
        let ok = b > b' ' && b != 0x7f || (b == b' ' && !previous_space);
        previous_space = b == b' ';
        ok
    }) && !text.ends_with(' ')
        && (text.is_ascii() || !text.chars().any(|c| c.is_whitespace() && c != ' '))
}

/// The common case, eight bytes at a time: printable ASCII with single spaces between words.
/// `false` means "look closer" (see [`is_tidy`]), not "untidy".
fn is_tidy_ascii(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const LOW: u64 = !HIGH;
    // Each mask has the high bit of every byte that is so; exact, no carries between bytes.
    let at_least =
        |word: u64, limit: u8| (((word & LOW) + ONES * u64::from(0x80 - limit)) | word) & HIGH;
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return true;
    };
    if first == b' ' || last == b' ' {
        return false;
    }
    let mut chunks = bytes.chunks_exact(8);
    let mut previous_space = 0;
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let not_space = at_least(word ^ (ONES * u64::from(b' ')), 1);
        let control = !at_least(word, b' ') & HIGH;
        let delete_or_beyond = at_least(word, 0x7f);
        let spaces = !not_space & HIGH;
        let double_space = spaces & (spaces << 8 | previous_space);
        if control | delete_or_beyond | double_space != 0 {
            return false;
        }
        previous_space = spaces >> 56;
    }
    let mut previous_space = previous_space != 0;
    chunks.remainder().iter().all(|&b| {
        let ok = (0x21..0x7f).contains(&b) || (b == b' ' && !previous_space);
        previous_space = b == b' ';
        ok
    })
}

/// A text column; numbers (a code that JSON inference saw as a number) are written out as text.
pub fn text(value: Value<'_>) -> Result<Option<Cow<'_, str>>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Str(s) => Ok(Some(normalize_whitespace(s))),
        Value::Int(i) => Ok(Some(Cow::Owned(i.to_string()))),
        Value::Float(x) if x.is_finite() => Ok(Some(Cow::Owned(match exact_integer(x) {
            Some(i) => i.to_string(),
            None => x.to_string(),
        }))),
        Value::Decimal { .. } | Value::Bool(_) => Ok(Some(Cow::Owned(value.to_string()))),
        other => Err(format!("`{other}` is not text")),
    }
}

/// An integer column; integral floats and integer text are accepted.
pub fn integer(value: Value<'_>) -> Result<Option<i64>, String> {
    let not_integer = || format!("`{value}` is not an integer");
    match value {
        Value::Null => Ok(None),
        Value::Int(i) => Ok(Some(i)),
        Value::Float(x) => exact_integer(x).map(Some).ok_or_else(not_integer),
        Value::Str(s) if s.trim().is_empty() => Ok(None),
        Value::Str(s) => s.trim().parse().map(Some).map_err(|_| not_integer()),
        Value::Decimal { unscaled, scale } => decimal::rescale(unscaled, scale, 0)
            .filter(|&whole| decimal::rescale(whole, 0, scale) == Some(unscaled))
            .and_then(|whole| i64::try_from(whole).ok())
            .map(Some)
            .ok_or_else(not_integer),
        _ => Err(not_integer()),
    }
}

fn exact_integer(x: f64) -> Option<i64> {
    // Beyond 2^53 a float no longer says which integer was meant.
    const LIMIT: f64 = 9_007_199_254_740_992.0;
    (x.fract() == 0.0 && x.abs() <= LIMIT).then_some(x as i64)
}

/// A date as days since 1970-01-01: Debezium's integer encoding of a PostgreSQL `date`, or text
/// `M/D/YYYY` (the reference data) or `YYYY-MM-DD`.
pub fn date(value: Value<'_>) -> Result<Option<i32>, String> {
    let unparseable = || {
        format!(
            "unparseable date `{value}` (expected days since 1970-01-01, M/D/YYYY or YYYY-MM-DD)"
        )
    };
    match value {
        Value::Null => Ok(None),
        Value::Int(days) => i32::try_from(days).map(Some).map_err(|_| unparseable()),
        Value::Float(x) => exact_integer(x)
            .and_then(|days| i32::try_from(days).ok())
            .map(Some)
            .ok_or_else(unparseable),
        Value::Str(s) if s.trim().is_empty() => Ok(None),
        Value::Str(s) => date_text(s.trim()).map(Some).ok_or_else(unparseable),
        _ => Err(unparseable()),
    }
}

fn date_text(text: &str) -> Option<i32> {
    // Bytes, not `str::split_once`: its general search costs more than the whole date in Wasm.
    let bytes = text.as_bytes();
    let (year, month, day) = match split3(bytes, b'/') {
        Some((month, day, year)) => (year, month, day),
        None => split3(bytes, b'-')?,
    };
    let year = digits(year, 4, 4)?;
    let month = digits(month, 1, 2)?;
    let day = digits(day, 1, 2)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    i32::try_from(days_from_civil(year, month, day)).ok()
}

/// `a<separator>b<separator>c`, with no separator in `c` either.
fn split3(bytes: &[u8], separator: u8) -> Option<(&[u8], &[u8], &[u8])> {
    let first = bytes.iter().position(|&b| b == separator)?;
    let (a, rest) = (&bytes[..first], &bytes[first + 1..]);
    let second = rest.iter().position(|&b| b == separator)?;
    let (b, c) = (&rest[..second], &rest[second + 1..]);
    (!c.contains(&separator)).then_some((a, b, c))
}

fn digits(text: &[u8], min_len: usize, max_len: usize) -> Option<i64> {
    let ok = (min_len..=max_len).contains(&text.len()) && text.iter().all(u8::is_ascii_digit);
    ok.then(|| {
        text.iter()
            .fold(0, |value, digit| value * 10 + i64::from(digit - b'0'))
    })
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a valid proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// A price as hundredths (`Decimal128(18, 2)`), rounded half away from zero past two decimals.
///
/// Text is parsed exactly. A float is read back through its shortest decimal form, which is the
/// text Debezium wrote, so `1.005` rounds to `1.01` although the nearest double is below it.
pub fn price(value: Value<'_>) -> Result<Option<i128>, String> {
    let cents = match value {
        Value::Null => return Ok(None),
        Value::Str(s) if s.trim().is_empty() => return Ok(None),
        Value::Str(s) => decimal::parse(s.trim(), 2),
        Value::Float(x) if x.is_finite() => decimal::parse(&x.to_string(), 2),
        Value::Int(i) => i128::from(i).checked_mul(100),
        Value::Decimal { unscaled, scale } => decimal::rescale(unscaled, scale, 2),
        _ => None,
    };
    match cents {
        Some(cents) if decimal::fits(cents, 18) => Ok(Some(cents)),
        Some(_) => Err(format!("`{value}` does not fit Decimal128(18, 2)")),
        None => Err(format!("`{value}` is not a decimal number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_is_trimmed_and_collapsed() {
        assert_eq!(
            normalize_whitespace("  WHITE   HANGING\tHEART \n"),
            "WHITE HANGING HEART"
        );
        assert_eq!(normalize_whitespace(" \t "), "");
        // Unicode whitespace counts too; other non-ASCII text is kept as it is, borrowed.
        assert_eq!(
            normalize_whitespace("CAFÉ\u{a0}\u{2003}CRÈME"),
            "CAFÉ CRÈME"
        );
        assert!(matches!(
            normalize_whitespace("CAFÉ CRÈME"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(normalize_whitespace("A  B"), Cow::Owned(_)));
    }

    #[test]
    fn the_eight_byte_check_agrees_with_the_byte_by_byte_one() {
        let alphabet = [" ", "A", "z", "~", "\t", "\n", "\u{7f}", "é", "\u{a0}", "0"];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..200_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 24) as usize;
            let text: String = (0..len)
                .map(|i| alphabet[((seed >> (i * 2 % 60)) as usize + i) % alphabet.len()])
                .collect();
            let fast = is_tidy_ascii(text.as_bytes());
            let exact = is_tidy(&text);
            assert!(
                !fast || exact,
                "{text:?} passed the fast check but is not tidy"
            );
            if text.is_ascii() && text.bytes().all(|b| b != b'\t' && b != b'\n' && b != 0x7f) {
                assert_eq!(fast, exact, "{text:?}");
            }
        }
    }

    #[test]
    fn numbers_read_as_text_lose_no_digits() {
        assert_eq!(text(Value::Int(85123)), Ok(Some("85123".into())));
        assert_eq!(text(Value::Float(17850.0)), Ok(Some("17850".into())));
        assert_eq!(text(Value::Float(1.5)), Ok(Some("1.5".into())));
        assert!(text(Value::Float(f64::NAN)).is_err());
    }

    #[test]
    fn dates_in_every_accepted_form() {
        assert_eq!(date(Value::Int(14944)), Ok(Some(14944)));
        assert_eq!(date(Value::Str("12/1/2010")), Ok(Some(14944)));
        assert_eq!(date(Value::Str("12/09/2019")), Ok(Some(18239)));
        assert_eq!(date(Value::Str("2019-12-09")), Ok(Some(18239)));
        assert_eq!(date(Value::Str("2/29/2000")), Ok(Some(11016)));
        assert_eq!(date(Value::Str("1969-12-31")), Ok(Some(-1)));
        assert_eq!(date(Value::Str("1970-01-01")), Ok(Some(0)));
        assert_eq!(date(Value::Str(" ")), Ok(None));
    }

    #[test]
    fn impossible_or_foreign_dates_are_rejected() {
        for bad in [
            "2/30/2019",
            "2/29/2019",
            "13/1/2019",
            "12/1/19",
            "2019-12",
            "2019-12-09T00:00:00Z",
            "today",
            "1/1/2019/1",
        ] {
            assert!(date(Value::Str(bad)).is_err(), "{bad}");
        }
        assert!(date(Value::Int(i64::MAX)).is_err());
        assert!(date(Value::Bool(true)).is_err());
    }

    #[test]
    fn price_text_rounds_half_away_from_zero() {
        assert_eq!(price(Value::Str("21.47")), Ok(Some(2147)));
        assert_eq!(price(Value::Str("21.475")), Ok(Some(2148)));
        assert_eq!(price(Value::Str("21.4749999")), Ok(Some(2147)));
        assert_eq!(price(Value::Str("-21.475")), Ok(Some(-2148)));
        assert_eq!(price(Value::Str("+.5")), Ok(Some(50)));
        assert_eq!(price(Value::Str("7.")), Ok(Some(700)));
        assert_eq!(price(Value::Str("0007")), Ok(Some(700)));
        assert_eq!(price(Value::Str("  ")), Ok(None));
    }

    #[test]
    fn price_numbers_become_cents() {
        assert_eq!(price(Value::Float(21.47)), Ok(Some(2147)));
        assert_eq!(price(Value::Float(1.005)), Ok(Some(101)));
        assert_eq!(price(Value::Float(-0.125)), Ok(Some(-13)));
        assert_eq!(price(Value::Int(3)), Ok(Some(300)));
        assert_eq!(
            price(Value::Decimal {
                unscaled: 21475,
                scale: 3
            }),
            Ok(Some(2148))
        );
    }

    #[test]
    fn garbage_and_oversized_prices_are_rejected() {
        for bad in ["12,50", "1e3", "-", ".", "1.2.3", "NaN", "$3", "1 000", "½"] {
            assert!(price(Value::Str(bad)).is_err(), "{bad}");
        }
        assert!(price(Value::Str("10000000000000000")).is_err());
        assert!(price(Value::Str(&"9".repeat(60))).is_err());
        assert!(price(Value::Float(f64::INFINITY)).is_err());
        assert_eq!(
            price(Value::Str("9999999999999999.99")),
            Ok(Some(decimal::max_unscaled(18)))
        );
    }

    #[test]
    fn integers_accept_integral_forms_only() {
        assert_eq!(integer(Value::Int(-6)), Ok(Some(-6)));
        assert_eq!(integer(Value::Float(6.0)), Ok(Some(6)));
        assert_eq!(integer(Value::Str(" 42 ")), Ok(Some(42)));
        assert_eq!(
            integer(Value::Decimal {
                unscaled: 600,
                scale: 2
            }),
            Ok(Some(6))
        );
        assert!(integer(Value::Float(6.5)).is_err());
        assert!(integer(Value::Str("6.5")).is_err());
        assert!(
            integer(Value::Decimal {
                unscaled: 650,
                scale: 2
            })
            .is_err()
        );
    }
}
