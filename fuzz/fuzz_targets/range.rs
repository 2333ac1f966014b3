//! `Range` headers: `ByteRange::parse` then `resolve(size)` for arbitrary
//! sizes. Never panics (overflow checks are on in the fuzz build); a
//! resolved range lies within the blob (start < end <= size) and is exactly
//! what RFC 9110 §14.1.2 says, computed here without overflow in u128.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::proxy::ByteRange;

fn expected(range: ByteRange, size: u64) -> Option<(u64, u64)> {
    let size128 = u128::from(size);
    let r = match range {
        ByteRange::FromTo(a, b) if u128::from(a) < size128 => (u128::from(a), (u128::from(b) + 1).min(size128)),
        ByteRange::From(a) if u128::from(a) < size128 => (u128::from(a), size128),
        ByteRange::Suffix(n) if n > 0 && size > 0 => (size128 - u128::from(n).min(size128), size128),
        _ => return None,
    };
    Some((u64::try_from(r.0).ok()?, u64::try_from(r.1).ok()?))
}

/// `[start, end)` of what `resolve` returned, read through `Debug` (its two
/// numbers, in order), so that the target builds whether `resolve` returns a
/// `(u64, u64)` or a slice type with `start` and `end` fields.
fn bounds(resolved: Option<impl std::fmt::Debug>) -> Option<(u64, u64)> {
    let text = format!("{:?}", resolved?);
    let numbers: Vec<u64> = text
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("a u64"))
        .collect();
    assert_eq!(numbers.len(), 2, "resolve returned {text}");
    Some((numbers[0], numbers[1]))
}

fuzz_target!(|data: &[u8]| {
    let (size, header) = match data.split_first_chunk::<8>() {
        Some((size, rest)) => (u64::from_le_bytes(*size), rest),
        None => (0, data),
    };
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    let Some(range) = ByteRange::parse(header) else {
        return;
    };
    if let ByteRange::FromTo(a, b) = range {
        assert!(a <= b, "{header:?} parsed as {range:?}");
    }
    for size in [size, 0, 1, size % 4096, u64::MAX, u64::MAX - 1] {
        let got = bounds(range.resolve(size));
        if let Some((start, end)) = got {
            assert!(start < end && end <= size, "{header:?} size {size}: [{start}, {end})");
        }
        assert_eq!(got, expected(range, size), "{header:?} size {size}");
    }
});
