//! Trace context: which trace a call belongs to, carried in W3C `traceparent` form.

use std::cell::Cell;
use std::fmt;
use std::hash::BuildHasher;
use std::num::NonZeroU64;

/// The metadata key a call's trace context travels under.
pub const TRACEPARENT: &str = "traceparent";

/// Where a call sits in a distributed trace: the trace's id, the id of the span that made
/// the call, and the W3C trace flags.
///
/// It travels in each request's metadata under `traceparent`, in the
/// [W3C Trace Context](https://www.w3.org/TR/trace-context/) form
/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`. A handler reads the one its call
/// came with through [`context::trace`](crate::context::trace); client calls made from the
/// handler continue that trace, each with a span id of its own.
///
/// ```
/// use rpc_core::context::TraceContext;
///
/// let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// let trace = TraceContext::parse(header).unwrap();
/// assert_eq!(trace.trace_id(), 0x4bf92f3577b34da6a3ce929d0e0e4736);
/// assert_eq!(trace.span_id(), 0x00f067aa0ba902b7);
/// assert!(trace.is_sampled());
/// assert_eq!(trace.to_string(), header);
///
/// // Anything malformed is no trace context at all.
/// assert!(TraceContext::parse("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").is_none());
/// assert!(TraceContext::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    // The trace id's halves rather than a `u128`, and a span id that is never zero: a
    // handler's context carries an `Option<TraceContext>`, and this keeps it at 24 bytes,
    // aligned to 8.
    trace_hi: u64,
    trace_lo: u64,
    span_id: NonZeroU64,
    flags: u8,
}

/// The `sampled` bit of the trace flags.
const SAMPLED: u8 = 0x01;

impl TraceContext {
    /// A trace context with these ids and flags; `None` if either id is zero, which the
    /// W3C format reserves for "invalid".
    pub fn new(trace_id: u128, span_id: u64, flags: u8) -> Option<TraceContext> {
        if trace_id == 0 {
            return None;
        }
        Some(TraceContext {
            trace_hi: (trace_id >> 64) as u64,
            trace_lo: trace_id as u64,
            span_id: NonZeroU64::new(span_id)?,
            flags,
        })
    }

    /// Parses a `traceparent` value strictly: lowercase hex, ids not all zeros, version
    /// `00` exactly 55 characters long (a later version may append `-` and more, which is
    /// ignored; version `ff` is invalid). Anything else is `None`, never a panic.
    pub fn parse(traceparent: &str) -> Option<TraceContext> {
        TraceContext::parse_bytes(traceparent.as_bytes())
    }

    /// [`parse`](TraceContext::parse) for a value that may not be UTF-8, as metadata values
    /// are bytes.
    pub fn parse_bytes(value: &[u8]) -> Option<TraceContext> {
        if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let version = hex(&value[0..2])? as u8;
        match version {
            0xff => return None,
            0 if value.len() != 55 => return None,
            _ if value.len() > 55 && value[55] != b'-' => return None,
            _ => {}
        }
        let trace_id = (hex(&value[3..19])? as u128) << 64 | hex(&value[19..35])? as u128;
        let span_id = hex(&value[36..52])?;
        let flags = hex(&value[53..55])? as u8;
        TraceContext::new(trace_id, span_id, flags)
    }

    /// The trace's id: the same in every process the trace passes through.
    pub fn trace_id(&self) -> u128 {
        u128::from(self.trace_hi) << 64 | u128::from(self.trace_lo)
    }

    /// The id of the span that made the call (in `traceparent`, the parent id).
    pub fn span_id(&self) -> u64 {
        self.span_id.get()
    }

    /// The W3C trace flags.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the caller recorded its part of the trace (the `sampled` flag).
    pub fn is_sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// A new trace: random ids, sampled.
    pub(crate) fn root() -> TraceContext {
        TraceContext {
            trace_hi: random().get(),
            trace_lo: random().get(),
            span_id: random(),
            flags: SAMPLED,
        }
    }

    /// The context of a call made within this one: the same trace and flags, a new span id.
    pub(crate) fn child(&self) -> TraceContext {
        TraceContext {
            span_id: random(),
            ..*self
        }
    }

    /// The trace id as 32 lowercase hex digits.
    pub(crate) fn trace_id_hex(&self) -> impl fmt::Display {
        Hex32(self.trace_id())
    }
}

/// Shows a span id (or a trace id's half) as 16 lowercase hex digits.
pub(crate) struct Hex16(pub(crate) u64);

impl fmt::Display for Hex16 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

struct Hex32(u128);

impl fmt::Display for Hex32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The `traceparent` value (version `00`).
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id(),
            self.span_id,
            self.flags
        )
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("trace_id", &format_args!("{:032x}", self.trace_id()))
            .field("span_id", &format_args!("{:016x}", self.span_id))
            .field("flags", &format_args!("{:02x}", self.flags))
            .finish()
    }
}

/// Lowercase hex digits (at most 16) as a number; `None` for any other byte.
fn hex(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |value, &digit| {
        let nibble = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            _ => return None,
        };
        Some(value << 4 | u64::from(nibble))
    })
}

/// A random, non-zero id. Ids need to be unique, not secret: a per-thread splitmix64
/// sequence, seeded from the standard library's random hash keys, is plenty.
fn random() -> NonZeroU64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id()),
        );
    }
    loop {
        let state = STATE.with(|state| {
            let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            state.set(next);
            next
        });
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        if let Some(id) = NonZeroU64::new(z) {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_the_w3c_example() {
        let trace = TraceContext::parse(VALID).unwrap();
        assert_eq!(trace.trace_id(), 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        assert_eq!(trace.span_id(), 0x00f0_67aa_0ba9_02b7);
        assert_eq!(trace.flags(), 1);
        assert_eq!(trace.to_string(), VALID);
        assert_eq!(
            trace.trace_id_hex().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(Hex16(trace.span_id()).to_string(), "00f067aa0ba902b7");
    }

    #[test]
    fn rejects_malformed_values() {
        let bad = [
            "",
            "00",
            &VALID[..54],
            &format!("{VALID}-"),
            &format!("{VALID}0"),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\u{e9}",
        ];
        for value in bad {
            assert_eq!(TraceContext::parse(value), None, "{value:?}");
        }
        assert_eq!(TraceContext::parse_bytes(&[0xff; 55]), None);
        assert_eq!(TraceContext::parse_bytes(&[b'-'; 80]), None);
    }

    #[test]
    fn later_versions_may_append_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-whatever";
        assert_eq!(
            TraceContext::parse(later),
            TraceContext::parse(VALID),
            "the known fields of a later version are read"
        );
        let exact = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(TraceContext::parse(exact).is_some());
    }

    #[test]
    fn roots_and_children() {
        let root = TraceContext::root();
        assert!(root.is_sampled());
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child.span_id(), root.span_id());
        assert_ne!(TraceContext::root().trace_id(), root.trace_id());
        assert_eq!(TraceContext::parse(&child.to_string()), Some(child));
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            let _ = TraceContext::parse_bytes(&value);
        }

        #[test]
        fn every_context_round_trips(trace_id in 1u128.., span_id in 1u64.., flags: u8) {
            let trace = TraceContext::new(trace_id, span_id, flags).unwrap();
            proptest::prop_assert_eq!(TraceContext::parse(&trace.to_string()), Some(trace));
        }
    }
}
