//! Zig-zag variable-length integers, as used inside Kafka records (protobuf's `sint32`/`sint64`
//! encoding: 7 bits per byte, least significant group first, high bit set on all but the last).

/// Largest number of bytes a zig-zag `i32` takes.
pub const MAX_VARINT_LEN: usize = 5;
/// Largest number of bytes a zig-zag `i64` takes.
pub const MAX_VARLONG_LEN: usize = 10;

/// Appends `value` as a zig-zag varint.
pub fn put_varint(out: &mut Vec<u8>, value: i32) {
    put_varlong(out, i64::from(value));
}

/// Appends `value` as a zig-zag varlong.
pub fn put_varlong(out: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Number of bytes `value` takes as a zig-zag varint.
pub fn varint_len(value: i32) -> usize {
    varlong_len(i64::from(value))
}

/// Number of bytes `value` takes as a zig-zag varlong.
pub fn varlong_len(value: i64) -> usize {
    let v = ((value << 1) ^ (value >> 63)) as u64;
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarintError {
    /// The buffer ended before the last byte of the varint.
    Truncated,
    /// More bytes than the type can hold, or a value outside its range.
    Overflow,
}

/// Reads a zig-zag varint from the front of `buf`, returning the value and the bytes used.
///
/// # Errors
/// [`VarintError::Truncated`] when `buf` ends inside the varint, [`VarintError::Overflow`] when it
/// is longer than 5 bytes or does not fit an `i32`.
pub fn get_varint(buf: &[u8]) -> Result<(i32, usize), VarintError> {
    let (v, n) = get_unsigned(buf, MAX_VARINT_LEN)?;
    if v > u64::from(u32::MAX) {
        return Err(VarintError::Overflow);
    }
    let v = v as u32;
    Ok((((v >> 1) as i32) ^ -((v & 1) as i32), n))
}

/// Reads a zig-zag varlong from the front of `buf`, returning the value and the bytes used.
///
/// # Errors
/// As [`get_varint`], with a 10-byte limit.
pub fn get_varlong(buf: &[u8]) -> Result<(i64, usize), VarintError> {
    let (v, n) = get_unsigned(buf, MAX_VARLONG_LEN)?;
    Ok((((v >> 1) as i64) ^ -((v & 1) as i64), n))
}

fn get_unsigned(buf: &[u8], max_len: usize) -> Result<(u64, usize), VarintError> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().enumerate() {
        if i == max_len {
            return Err(VarintError::Overflow);
        }
        let bits = u64::from(byte & 0x7f);
        let shift = 7 * i as u32;
        if shift == 63 && bits > 1 {
            return Err(VarintError::Overflow);
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    if buf.len() >= max_len { Err(VarintError::Overflow) } else { Err(VarintError::Truncated) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings_match_kafka() {
        // Values and bytes from Kafka's ByteUtilsTest (zig-zag: 0 -> 0, -1 -> 1, 1 -> 2, ...).
        let cases: &[(i64, &[u8])] = &[
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (300, &[0xd8, 0x04]),
            (i64::from(i32::MAX), &[0xfe, 0xff, 0xff, 0xff, 0x0f]),
            (i64::from(i32::MIN), &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ];
        for &(value, bytes) in cases {
            let mut out = Vec::new();
            put_varlong(&mut out, value);
            assert_eq!(out, bytes, "encoding of {value}");
            assert_eq!(varlong_len(value), bytes.len());
            assert_eq!(get_varlong(bytes), Ok((value, bytes.len())));
        }
    }

    #[test]
    fn truncated_and_overlong_inputs_are_errors() {
        assert_eq!(get_varint(&[]), Err(VarintError::Truncated));
        assert_eq!(get_varint(&[0x80, 0x80]), Err(VarintError::Truncated));
        assert_eq!(get_varint(&[0x80; 6]), Err(VarintError::Overflow));
        // Five bytes but a value above u32::MAX.
        assert_eq!(get_varint(&[0xff, 0xff, 0xff, 0xff, 0x7f]), Err(VarintError::Overflow));
        assert_eq!(get_varlong(&[0xff; 11]), Err(VarintError::Overflow));
        assert_eq!(
            get_varlong(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            Err(VarintError::Overflow)
        );
    }

    proptest! {
        #[test]
        fn varlong_round_trips(v in any::<i64>()) {
            let mut out = Vec::new();
            put_varlong(&mut out, v);
            prop_assert_eq!(out.len(), varlong_len(v));
            prop_assert_eq!(get_varlong(&out), Ok((v, out.len())));
        }

        #[test]
        fn varint_round_trips(v in any::<i32>()) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            prop_assert_eq!(out.len(), varint_len(v));
            prop_assert_eq!(get_varint(&out), Ok((v, out.len())));
        }
    }
}
