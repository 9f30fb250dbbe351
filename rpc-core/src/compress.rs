//! Compression of bodies: the [`Compression`] a client offers and a server accepts, and the
//! packing and unpacking of one body.
//!
//! On the wire (see `docs/protocol.md`, "Compression"): the client offers its codecs in an
//! entry of its `Hello`, the server names the one it picked in its announcement, and a
//! compressed message is a `PackedRequest`, `PackedResponse` or `PackedStreamItem` whose
//! body is a *packed body*: the codec's byte, the uncompressed length (a varint), then the
//! compressed bytes. Every packed body says how large it will be, so the receiver refuses
//! one that would not fit its frame size limit before it decompresses anything, and
//! decompresses into a buffer of exactly that size, never more.

use std::fmt;

use bytes::{Bytes, BytesMut};

use crate::error::RpcError;
use crate::protocol::FrameBuilder;
use crate::varint;

/// A compression codec.
///
/// Each is compiled in by a cargo feature of `rpc-core` (`zstd`, `lz4`); naming one that is
/// not makes [`CompressionBuilder::build`] fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// Zstandard (feature `zstd`): a good ratio at a good speed; the level applies to it.
    Zstd,
    /// LZ4 block format (feature `lz4`): less ratio, the least CPU.
    Lz4,
}

impl Codec {
    /// Every codec, in the default order of preference.
    const ALL: [Codec; 2] = [Codec::Zstd, Codec::Lz4];

    /// The codec's name in a `Hello` offer: `zstd` or `lz4`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Lz4 => "lz4",
        }
    }

    /// Whether this build has it (its cargo feature is on).
    pub fn is_available(self) -> bool {
        match self {
            Codec::Zstd => cfg!(feature = "zstd"),
            Codec::Lz4 => cfg!(feature = "lz4"),
        }
    }

    /// The byte that names it in a packed body and in the server's answer (0 is "none").
    pub(crate) fn to_wire(self) -> u8 {
        match self {
            Codec::Zstd => 1,
            Codec::Lz4 => 2,
        }
    }

    pub(crate) fn from_wire(byte: u8) -> Option<Codec> {
        Codec::ALL.into_iter().find(|c| c.to_wire() == byte)
    }

    pub(crate) fn from_name(name: &str) -> Option<Codec> {
        Codec::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The feature that compiles it in, for error messages.
    fn feature(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Lz4 => "lz4",
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The default level: zstd's own default, a good trade of speed for ratio.
const DEFAULT_LEVEL: i32 = 3;
/// The default threshold: below about 1 KiB, compression saves a few bytes for its cost.
const DEFAULT_THRESHOLD: usize = 1024;

/// How a client or server compresses: the codecs it has, in order of preference, the zstd
/// level, and the size from which a body is compressed. Off unless given to
/// [`Server::compression`](crate::Server::compression),
/// [`ClientBuilder::compression`](crate::ClientBuilder::compression) or
/// [`Client::with_compression`](crate::Client::with_compression).
///
/// Made only by [`CompressionBuilder::build`], which checks it. A connection compresses
/// when its client offered a codec the server has; the server picks, by its own order of
/// preference. Request bodies, response bodies and stream items of at least `threshold`
/// bytes are then compressed, each on its own, and sent compressed only if that made
/// them smaller. See `docs/compression.md`.
///
/// ```
/// use rpc_core::compress::{Codec, Compression};
///
/// let built = Compression::builder()
///     .codecs([Codec::Zstd, Codec::Lz4])
///     .level(3)
///     .threshold(4096)
///     .build();
/// // Whether it builds depends on the codecs compiled in (features `zstd`, `lz4`).
/// assert_eq!(built.is_ok(), Codec::Zstd.is_available() && Codec::Lz4.is_available());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compression {
    codecs: Vec<Codec>,
    level: i32,
    threshold: usize,
}

impl Compression {
    /// A builder: every codec compiled in (zstd first), level 3, threshold 1 KiB.
    pub fn builder() -> CompressionBuilder {
        CompressionBuilder {
            codecs: Codec::ALL
                .into_iter()
                .filter(|c| c.is_available())
                .collect(),
            level: DEFAULT_LEVEL,
            threshold: DEFAULT_THRESHOLD,
        }
    }

    /// The codecs, most preferred first.
    pub fn codecs(&self) -> &[Codec] {
        &self.codecs
    }

    /// The zstd compression level.
    pub fn level(&self) -> i32 {
        self.level
    }

    /// The smallest body, in bytes, that is compressed.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// The `Hello` entry that offers these codecs (see [`OFFER_ENTRY`]).
    pub(crate) fn offer_entry(&self) -> String {
        let names: Vec<&str> = self.codecs.iter().map(|c| c.name()).collect();
        format!("{OFFER_ENTRY}{}", names.join(","))
    }

    /// The codec a server with this configuration picks from a client's offer: its own
    /// most preferred one that the client offered too.
    pub(crate) fn pick(&self, offer: &str) -> Option<Codec> {
        let offered: Vec<Codec> = offer.split(',').filter_map(Codec::from_name).collect();
        self.codecs.iter().copied().find(|c| offered.contains(c))
    }

    /// What a connection that agreed on `codec` sends with.
    pub(crate) fn packer(&self, codec: Codec) -> Packer {
        Packer {
            codec,
            level: self.level,
            threshold: self.threshold,
        }
    }
}

/// Builds a [`Compression`]; see [`Compression::builder`].
#[derive(Clone, Debug)]
pub struct CompressionBuilder {
    codecs: Vec<Codec>,
    level: i32,
    threshold: usize,
}

impl CompressionBuilder {
    /// The codecs to offer (a client) or accept (a server), most preferred first.
    pub fn codecs(mut self, codecs: impl IntoIterator<Item = Codec>) -> CompressionBuilder {
        self.codecs = codecs.into_iter().collect();
        self
    }

    /// The zstd level (3 by default; zstd's range, 1 to 22, and its negative fast levels).
    /// LZ4 has no level.
    pub fn level(mut self, level: i32) -> CompressionBuilder {
        self.level = level;
        self
    }

    /// The smallest body, in bytes, to compress (1024 by default); at least 1.
    pub fn threshold(mut self, bytes: usize) -> CompressionBuilder {
        self.threshold = bytes;
        self
    }

    /// The configuration, or what is wrong with it: no codec, a codec twice or not compiled
    /// in, a zstd level out of range, a threshold of 0.
    pub fn build(self) -> Result<Compression, CompressionError> {
        if self.codecs.is_empty() {
            return Err(CompressionError(
                "no compression codec: enable rpc-core's feature `zstd` or `lz4`, and name \
                 at least one codec"
                    .to_string(),
            ));
        }
        for (i, codec) in self.codecs.iter().enumerate() {
            if self.codecs[..i].contains(codec) {
                return Err(CompressionError(format!(
                    "the codec `{codec}` is listed twice"
                )));
            }
            if !codec.is_available() {
                return Err(CompressionError(format!(
                    "the codec `{codec}` is not compiled in: enable rpc-core's feature `{}`",
                    codec.feature()
                )));
            }
        }
        if self.codecs.contains(&Codec::Zstd) {
            check_zstd_level(self.level)?;
        }
        if self.threshold == 0 {
            return Err(CompressionError(
                "a compression threshold of 0 bytes would compress empty bodies, which \
                 cannot shrink: use at least 1 (1024 is the default)"
                    .to_string(),
            ));
        }
        Ok(Compression {
            codecs: self.codecs,
            level: self.level,
            threshold: self.threshold,
        })
    }
}

#[cfg(feature = "zstd")]
fn check_zstd_level(level: i32) -> Result<(), CompressionError> {
    let range = zstd::compression_level_range();
    if range.contains(&level) {
        Ok(())
    } else {
        Err(CompressionError(format!(
            "zstd level {level} is out of range: zstd takes {} to {}",
            range.start(),
            range.end()
        )))
    }
}

#[cfg(not(feature = "zstd"))]
fn check_zstd_level(_: i32) -> Result<(), CompressionError> {
    // Not reached: a list naming zstd without the feature failed before.
    Ok(())
}

/// Why a [`Compression`] could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompressionError(String);

impl fmt::Display for CompressionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CompressionError {}

/// The prefix of the `Hello` entry that offers codecs: then their names, comma-separated,
/// most preferred first. A server that does not know it takes it for a method it lacks.
pub(crate) const OFFER_ENTRY: &str = "rpc.compression:";
/// The fingerprint of that entry: FNV-1a 64 of `rpc.compression`.
pub(crate) const OFFER_ENTRY_FINGERPRINT: u64 = crate::descriptor::fnv1a(b"rpc.compression");

/// A body at most this large is compressed on the task that encoded it, even when that is a
/// connection's I/O task: zstd level 3 takes some tens of microseconds for it, less than a
/// batch of writes. A larger one is compressed on tokio's blocking pool, so that the
/// connection's other calls are not held up behind it.
pub(crate) const INLINE_PACK_LIMIT: usize = 64 << 10;

/// How one connection compresses what it sends, once a codec is agreed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Packer {
    pub(crate) codec: Codec,
    level: i32,
    pub(crate) threshold: usize,
}

impl Packer {
    /// Whether a body of `len` bytes is worth compressing.
    pub(crate) fn wants(&self, len: usize) -> bool {
        len >= self.threshold
    }

    /// A builder holding the packed form of `body`, or `None` when compressing did not
    /// make it smaller (or failed, which leaves it to be sent as it is).
    pub(crate) fn pack(&self, body: &[u8]) -> Option<FrameBuilder> {
        let compressed = self.compress(body)?;
        let mut builder = FrameBuilder::new();
        let out = builder.body_mut();
        out.reserve(compressed.len() + 10);
        out.extend_from_slice(&[self.codec.to_wire()]);
        put_varint(out, body.len() as u64);
        out.extend_from_slice(&compressed);
        if builder.body_len() >= body.len() {
            return None;
        }
        metrics::counter!("rpc_compression_input_bytes_total", "codec" => self.codec.name())
            .increment(body.len() as u64);
        metrics::counter!("rpc_compression_output_bytes_total", "codec" => self.codec.name())
            .increment(builder.body_len() as u64);
        Some(builder)
    }

    pub(crate) fn compress(&self, body: &[u8]) -> Option<Vec<u8>> {
        match self.codec {
            #[cfg(feature = "zstd")]
            Codec::Zstd => zstd::bulk::compress(body, self.level).ok(),
            #[cfg(feature = "lz4")]
            Codec::Lz4 => Some(lz4_flex::block::compress(body)),
            // Only codecs compiled in are ever agreed on.
            #[allow(unreachable_patterns)]
            _ => {
                let _ = (self.level, body);
                None
            }
        }
    }
}

/// A varint appended to `out`.
fn put_varint(out: &mut BytesMut, value: u64) {
    let mut bytes = [0; 9];
    let len = varint::write(&mut bytes, 0, value);
    out.extend_from_slice(&bytes[..len]);
}

/// A body as received: as it was sent, or packed and not yet opened. Packed bodies are
/// opened by their consumer (the caller decoding its response, the reader of a stream),
/// not by the connection's I/O task, which only routes them.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    Plain(Bytes),
    /// Boxed, so that a body is no larger than the plain `Bytes` every call carries.
    Packed(Box<Packed>),
}

/// A compressed body as received.
#[derive(Debug, Clone)]
pub(crate) struct Packed {
    data: Bytes,
    /// The most bytes the body field may take once unpacked (its length's varint
    /// included): what the receiver's frame size limit leaves beside the rest of the
    /// message, whose head is the same packed or not.
    room: usize,
}

impl Body {
    /// The packed body `body`, part of `frame`, received under a frame size limit of
    /// `limit` bytes.
    pub(crate) fn packed(frame: &Bytes, body: &[u8], limit: usize) -> Body {
        let data = frame.slice_ref(body);
        let head = frame
            .len()
            .saturating_sub(data.len() + varint::len(data.len() as u64));
        Body::Packed(Box::new(Packed {
            data,
            room: limit.saturating_sub(head),
        }))
    }

    /// Its size on the wire.
    pub(crate) fn wire_len(&self) -> usize {
        match self {
            Body::Plain(bytes) => bytes.len(),
            Body::Packed(packed) => packed.data.len(),
        }
    }

    /// The body as the sender encoded it: decompressed if it was packed.
    #[inline]
    pub(crate) fn open(self) -> Result<Bytes, RpcError> {
        match self {
            Body::Plain(bytes) => Ok(bytes),
            Body::Packed(packed) => open_packed(&packed.data, packed.room),
        }
    }
}

/// Out of line: plain bodies, the common case, must not pay for the code of this one.
#[inline(never)]
fn open_packed(data: &[u8], room: usize) -> Result<Bytes, RpcError> {
    unpack(data, room).map(Bytes::from)
}

/// Decompresses a packed body whose unpacked body field may take at most `room` bytes.
/// The claimed size is checked before anything is allocated or decompressed, and the
/// output can never grow beyond it.
pub(crate) fn unpack(packed: &[u8], room: usize) -> Result<Vec<u8>, RpcError> {
    let mut rest = packed;
    let (&codec_byte, after) = rest
        .split_first()
        .ok_or_else(|| RpcError::protocol("a compressed body is empty"))?;
    rest = after;
    let codec = Codec::from_wire(codec_byte)
        .filter(|c| c.is_available())
        .ok_or_else(|| {
            RpcError::protocol(format!(
                "a compressed body uses codec {codec_byte}, which this side does not have"
            ))
        })?;
    let size = varint::read(&mut rest, u64::MAX).ok_or_else(|| {
        RpcError::protocol("a compressed body's uncompressed length is malformed")
    })?;
    let fits = usize::try_from(size)
        .ok()
        .and_then(|size| size.checked_add(varint::len(size as u64)))
        .is_some_and(|field| field <= room);
    if !fits {
        return Err(RpcError::protocol(format!(
            "a compressed ({codec}) body claims {size} bytes uncompressed, more than the frame \
             size limit allows ({room} bytes for the body); refused without decompressing it"
        )));
    }
    let size = size as usize;
    let out = decompress(codec, rest, size)?;
    if out.len() != size {
        return Err(RpcError::protocol(format!(
            "a compressed ({codec}) body claims {size} bytes uncompressed but holds {}",
            out.len()
        )));
    }
    Ok(out)
}

/// More than an LZ4 block can expand: each further byte of a match's length adds 255.
#[cfg(feature = "lz4")]
const LZ4_MAX_RATIO: usize = 256;

/// Decompresses `data` into at most `size` bytes: more is an error, not a larger buffer.
fn decompress(codec: Codec, data: &[u8], size: usize) -> Result<Vec<u8>, RpcError> {
    let failed = |err: &dyn fmt::Display| {
        RpcError::protocol(format!(
            "a compressed ({codec}) body does not decompress to its claimed {size} bytes: {err}"
        ))
    };
    match codec {
        #[cfg(feature = "zstd")]
        Codec::Zstd => {
            // A zstd frame states its size in its header (ours always do): one that says
            // otherwise than the claim is refused before any buffer is made for it.
            if let Ok(Some(stated)) = zstd::zstd_safe::get_frame_content_size(data) {
                if stated != size as u64 {
                    return Err(failed(&format!("its zstd frame says {stated} bytes")));
                }
            }
            zstd::bulk::decompress(data, size).map_err(|err| failed(&err))
        }
        #[cfg(feature = "lz4")]
        Codec::Lz4 => {
            // An LZ4 block expands at most about 255 times (a match's length grows by 255
            // per byte): a larger claim is a lie, refused before a buffer is made for it.
            if size > data.len().saturating_mul(LZ4_MAX_RATIO).saturating_add(64) {
                return Err(failed(&format!(
                    "an LZ4 block of {} bytes cannot expand that far",
                    data.len()
                )));
            }
            let mut out = vec![0; size];
            let written =
                lz4_flex::block::decompress_into(data, &mut out).map_err(|err| failed(&err))?;
            out.truncate(written);
            Ok(out)
        }
        #[allow(unreachable_patterns)]
        _ => {
            let _ = (data, size, failed);
            Err(RpcError::protocol(format!(
                "a compressed body uses {codec}, which this side does not have"
            )))
        }
    }
}

/// The codec offer of a `Hello` method table (without its schema entry): the table without
/// the offer, and the offer's codec list if it has one (its last entry).
pub(crate) fn split_offer<'m, 'a>(
    methods: &'m [crate::protocol::WireMethod<'a>],
) -> (&'m [crate::protocol::WireMethod<'a>], Option<&'a str>) {
    crate::protocol::split_entry(methods, OFFER_ENTRY, OFFER_ENTRY_FINGERPRINT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for value in [0, 250, 251, 65_535, 65_536, u64::from(u32::MAX), u64::MAX] {
            let mut out = BytesMut::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint::len(value));
            let mut slice = &out[..];
            assert_eq!(varint::read(&mut slice, u64::MAX), Some(value));
            assert!(slice.is_empty());
        }
    }

    #[test]
    fn a_claim_beyond_the_room_is_refused_before_decompressing() {
        // Codec byte, then a claim of 2^40 bytes, then garbage.
        let mut packed = BytesMut::new();
        packed.extend_from_slice(&[Codec::Lz4.to_wire()]);
        put_varint(&mut packed, 1 << 40);
        packed.extend_from_slice(b"xx");
        let err = unpack(&packed, 1 << 20).unwrap_err();
        assert!(
            err.message().contains("claims") || err.message().contains("does not have"),
            "{err}"
        );
    }

    #[cfg(any(feature = "zstd", feature = "lz4"))]
    #[test]
    fn bodies_round_trip_and_lies_are_caught() {
        let body = vec![7u8; 100_000];
        for codec in Codec::ALL.into_iter().filter(|c| c.is_available()) {
            let packer = Compression::builder()
                .codecs([codec])
                .build()
                .unwrap()
                .packer(codec);
            let mut packed = packer.pack(&body).unwrap();
            let data = packed.body();
            assert!(data.len() < body.len() / 10);
            assert_eq!(unpack(data, 200_000).unwrap(), body);
            // Exactly the room needed, and one byte less.
            let field = body.len() + varint::len(body.len() as u64);
            assert!(unpack(data, field).is_ok());
            assert!(unpack(data, field - 1).is_err());
            // A body that claims less than it holds cannot expand beyond the claim.
            let mut lying = BytesMut::new();
            lying.extend_from_slice(&[codec.to_wire()]);
            put_varint(&mut lying, 1000);
            lying.extend_from_slice(&data[1 + varint::len(body.len() as u64)..]);
            assert!(unpack(&lying, 200_000).is_err(), "{codec}");
        }
    }

    #[test]
    fn bad_configurations_say_what_is_wrong() {
        let err = Compression::builder().codecs([]).build().unwrap_err();
        assert!(err.to_string().contains("no compression codec"), "{err}");
        let err = Compression::builder()
            .codecs([Codec::Lz4, Codec::Lz4])
            .build()
            .unwrap_err();
        assert!(
            err.to_string().contains("twice") || err.to_string().contains("not compiled"),
            "{err}"
        );
    }
}
