//! bincode's varint, the protocol's integer encoding, written and read by hand where a
//! message is built or parsed without bincode (frame heads, compressed bodies): one byte
//! below 251, else a marker (251, 252, 253) and the value as a little-endian `u16`, `u32`
//! or `u64`.

/// Writes `value` into `out` at `at` (which must leave room for it: up to 9 bytes) and
/// gives how many bytes it took.
#[inline]
pub(crate) fn write(out: &mut [u8], at: usize, value: u64) -> usize {
    if value < 251 {
        out[at] = value as u8;
        1
    } else if value <= u64::from(u16::MAX) {
        out[at] = 251;
        out[at + 1..at + 3].copy_from_slice(&(value as u16).to_le_bytes());
        3
    } else if value <= u64::from(u32::MAX) {
        out[at] = 252;
        out[at + 1..at + 5].copy_from_slice(&(value as u32).to_le_bytes());
        5
    } else {
        out[at] = 253;
        out[at + 1..at + 9].copy_from_slice(&value.to_le_bytes());
        9
    }
}

/// How many bytes [`write`] takes for `value`.
#[inline]
pub(crate) fn len(value: u64) -> usize {
    if value < 251 {
        1
    } else if value <= u64::from(u16::MAX) {
        3
    } else if value <= u64::from(u32::MAX) {
        5
    } else {
        9
    }
}

/// Reads a varint from the front of `buf`, advancing it: of a `u32` field when `max` is
/// `u32::MAX` (the 9-byte form is refused, as bincode refuses it there), of a `u64` when it
/// is `u64::MAX`. `None` if it is cut short or malformed.
#[inline]
pub(crate) fn read(buf: &mut &[u8], max: u64) -> Option<u64> {
    let (&first, rest) = buf.split_first()?;
    let (value, used) = match first {
        0..=250 => (u64::from(first), 0),
        251 => (
            u64::from(u16::from_le_bytes(rest.get(..2)?.try_into().ok()?)),
            2,
        ),
        252 => (
            u64::from(u32::from_le_bytes(rest.get(..4)?.try_into().ok()?)),
            4,
        ),
        253 if max == u64::MAX => (u64::from_le_bytes(rest.get(..8)?.try_into().ok()?), 8),
        _ => return None,
    };
    *buf = &rest[used..];
    Some(value)
}
