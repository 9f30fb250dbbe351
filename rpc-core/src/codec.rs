//! The one bincode configuration, and bounded encoding and decoding of message bodies.
//!
//! Every byte on the wire is bincode 2 with [`CONFIG`]: little-endian, variable-length
//! integers (`varint`), no trailing bytes allowed. Changing it is a protocol version change.
//!
//! Decoding is bounded by the message: bincode allocates a string or byte buffer from the
//! length the input claims, before it reads the bytes, and hands claimed sequence lengths to
//! serde as capacity hints, so a 9-byte frame could ask for 2^60 bytes (and abort the
//! process). Bodies (arguments and results) are decoded through an adapter (`bounded`) that
//! reads strings and bytes borrowed from the input and caps every capacity hint at the
//! input's length in elements (each takes at least a byte on the wire): a string or byte
//! buffer is never larger than the message it came in, and a sequence's reservation never
//! larger than that many elements. The protocol's own
//! envelope, decoded by bincode's derive, runs with a bincode limit chosen from the frame's
//! length instead (`with_limit_for`). A lying length fails that decode with
//! [`ErrorKind::Protocol`].

use bincode::config::{Configuration, LittleEndian, Varint};
use bincode::error::{DecodeError, EncodeError};
use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{ErrorKind, RpcError};

mod bounded;

/// The wire format's bincode configuration: little-endian, varint integers.
pub(crate) const CONFIG: Configuration<LittleEndian, Varint> = bincode::config::standard();

/// Runs `$decode` with `$config` set to [`CONFIG`] with a limit fitting `$len` input bytes:
/// for bincode's derived decoders, which the `bounded` adapter cannot reach.
///
/// bincode counts every primitive at its in-memory size (a one-byte varint `u128` claims 16
/// bytes), so valid input of `n` bytes claims at most `16 n`: the limit is the smallest of
/// the steps below that is at least that.
macro_rules! with_limit_for {
    ($len:expr, |$config:ident| $decode:expr) => {{
        let claim: u64 = ($len as u64).saturating_mul(16);
        if claim <= 4 << 10 {
            let $config = CONFIG.with_limit::<{ 4 << 10 }>();
            $decode
        } else if claim <= 32 << 10 {
            let $config = CONFIG.with_limit::<{ 32 << 10 }>();
            $decode
        } else if claim <= 256 << 10 {
            let $config = CONFIG.with_limit::<{ 256 << 10 }>();
            $decode
        } else if claim <= 2 << 20 {
            let $config = CONFIG.with_limit::<{ 2 << 20 }>();
            $decode
        } else if claim <= 16 << 20 {
            let $config = CONFIG.with_limit::<{ 16 << 20 }>();
            $decode
        } else if claim <= 128 << 20 {
            let $config = CONFIG.with_limit::<{ 128 << 20 }>();
            $decode
        } else if claim <= 1 << 30 {
            let $config = CONFIG.with_limit::<{ 1 << 30 }>();
            $decode
        } else if claim <= 8 << 30 {
            let $config = CONFIG.with_limit::<{ 8 << 30 }>();
            $decode
        } else {
            let $config = CONFIG.with_limit::<{ 64 << 30 }>();
            $decode
        }
    }};
}
pub(crate) use with_limit_for;

/// Decodes a whole serde value from `bytes`, bounded as the module docs say.
pub(crate) fn decode_serde<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let seed = bounded::Seed::<T> {
        limit: bytes.len(),
        value: std::marker::PhantomData,
    };
    let (value, used) = bincode::serde::seed_decode_from_slice(seed, bytes, CONFIG)?;
    if used != bytes.len() {
        return Err(DecodeError::OtherString(format!(
            "{} trailing bytes after the value",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// Appends the encoding of a serde value to `buf`.
pub(crate) fn encode_serde<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    // Measure first, so a large value is written into a buffer of the right size instead of
    // one that is reallocated (and copied) as it grows. Measuring a byte array is O(1).
    let mut size = SizeWriter(0);
    bincode::serde::encode_into_writer(value, &mut size, CONFIG)?;
    buf.reserve(size.0);
    bincode::serde::encode_into_writer(value, BufWriter(buf), CONFIG)
}

/// Counts what would be written.
struct SizeWriter(usize);

impl bincode::enc::write::Writer for SizeWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        self.0 += bytes.len();
        Ok(())
    }
}

/// Lets bincode write straight into a frame buffer: no intermediate `Vec`.
struct BufWriter<'a>(&'a mut BytesMut);

impl bincode::enc::write::Writer for BufWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        // Most of what bincode writes is one byte at a time (small integers, lengths, enum
        // tags): those are stored directly, not copied by a call to `memcpy`.
        if let [byte] = bytes {
            self.0.put_u8(*byte);
        } else {
            self.0.put_slice(bytes);
        }
        Ok(())
    }
}

/// Decodes a method's arguments or result; the error names the type and what to check.
///
/// It takes any bytes (`&[u8]`, `&Bytes`), so that it is also the decoder of a call's
/// result (`fn(&Bytes) -> Result<T, RpcError>`).
pub fn decode_value<T: DeserializeOwned>(
    body: &(impl AsRef<[u8]> + ?Sized),
) -> Result<T, RpcError> {
    let body = body.as_ref();
    decode_serde(body).map_err(|err| decode_error(body.len(), std::any::type_name::<T>(), err))
}

/// The error of a message body of `len` bytes that does not decode as `ty`.
#[cold]
fn decode_error(len: usize, ty: &str, err: DecodeError) -> RpcError {
    RpcError::new(
        ErrorKind::Protocol,
        format!(
            "a message body of {len} bytes does not decode as `{ty}`: {err}; client and server \
             may have been built with different definitions of that type"
        ),
    )
}

/// Encodes a method's arguments or result into `buf`.
pub fn encode_value<T: Serialize + ?Sized>(value: &T, buf: &mut BytesMut) -> Result<(), RpcError> {
    encode_serde(value, buf).map_err(|err| {
        RpcError::new(
            ErrorKind::Protocol,
            format!(
                "a value of type `{}` could not be encoded: {err}",
                std::any::type_name::<T>()
            ),
        )
    })
}

/// Byte buffers at least this large are sent as parts of their own (not copied into the
/// frame); smaller ones are copied, which costs less than another part to write.
pub(crate) const SPLICE_MIN: usize = 4 << 10;

/// A message body being encoded, for code that `#[service]` generates: values encoded in
/// place, and byte buffers (`Bytes`, large `Vec<u8>`s) written as bincode writes bytes (a
/// varint length, then the bytes) but handed over as parts of the frame instead of copied.
/// Bincode encodes a tuple as its elements one after another, so encoding arguments one by
/// one gives the same bytes as encoding their tuple.
pub struct BodyWriter<'a> {
    frame: &'a mut crate::protocol::FrameBuilder,
}

impl<'a> BodyWriter<'a> {
    pub(crate) fn new(frame: &'a mut crate::protocol::FrameBuilder) -> BodyWriter<'a> {
        BodyWriter { frame }
    }

    /// The buffer the body is written into (after any spliced buffer).
    pub fn buf(&mut self) -> &mut BytesMut {
        self.frame.body_mut()
    }

    /// Encodes a serde value.
    pub fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), RpcError> {
        encode_value(value, self.frame.body_mut())
    }

    /// Writes a byte buffer, without copying it if it is large.
    pub fn bytes(&mut self, bytes: Bytes) {
        self.length(bytes.len());
        self.bytes_raw(bytes);
    }

    /// Appends `bytes` as they are (an encoded body), without copying them if they are large.
    pub(crate) fn bytes_raw(&mut self, bytes: Bytes) {
        if bytes.len() >= SPLICE_MIN {
            self.frame.splice(bytes);
        } else {
            self.frame.body_mut().extend_from_slice(&bytes);
        }
    }

    /// Writes a byte vector, without copying it if it is large.
    pub fn byte_vec(&mut self, bytes: Vec<u8>) {
        if bytes.len() >= SPLICE_MIN {
            self.bytes(Bytes::from(bytes));
        } else {
            self.length(bytes.len());
            self.frame.body_mut().extend_from_slice(&bytes);
        }
    }

    /// The length in front of bytes: a varint `u64`, as bincode writes a `usize`.
    fn length(&mut self, len: usize) {
        let mut buf = [0; 10];
        let n = crate::varint::write(&mut buf, 0, len as u64);
        self.frame.body_mut().extend_from_slice(&buf[..n]);
    }
}

/// Encodes a stream item with serde (the encoder `#[service]` gives streams of most types).
pub fn encode_item<T: Serialize>(item: T, body: &mut BodyWriter<'_>) -> Result<(), RpcError> {
    body.value(&item)
}

/// Encodes a `Bytes` stream item: a large one is a part of the frame of its own.
pub fn encode_bytes_item(item: Bytes, body: &mut BodyWriter<'_>) -> Result<(), RpcError> {
    body.bytes(item);
    Ok(())
}

/// Encodes a `Vec<u8>` stream item: a large one is a part of the frame of its own.
pub fn encode_byte_vec_item(item: Vec<u8>, body: &mut BodyWriter<'_>) -> Result<(), RpcError> {
    body.byte_vec(item);
    Ok(())
}

/// What a request body is encoded from, for code that `#[service]` generates: a reference
/// to the arguments' tuple (encoded by serde), or [`WriteArgs`], which writes them one by
/// one (and hands byte buffers over without copying them).
pub trait EncodeArgs {
    /// Writes the body.
    fn encode_args(self, body: &mut BodyWriter<'_>) -> Result<(), RpcError>;
}

impl<T: Serialize + ?Sized> EncodeArgs for &T {
    #[inline]
    fn encode_args(self, body: &mut BodyWriter<'_>) -> Result<(), RpcError> {
        body.value(self)
    }
}

/// Arguments written one by one by a closure; see [`EncodeArgs`].
pub struct WriteArgs<F>(pub F);

impl<F> EncodeArgs for WriteArgs<F>
where
    F: FnOnce(&mut BodyWriter<'_>) -> Result<(), RpcError>,
{
    fn encode_args(self, body: &mut BodyWriter<'_>) -> Result<(), RpcError> {
        (self.0)(body)
    }
}

/// A message body being decoded value by value, for code that `#[service]` generates: byte
/// buffers are taken out of the received frame without copying (`Bytes`), or with one copy
/// (`Vec<u8>`). The counterpart of [`BodyWriter`].
pub struct BodyReader<'a> {
    rest: &'a [u8],
    /// The buffer `rest` lies in.
    frame: &'a Bytes,
    len: usize,
    ty: &'static str,
}

impl<'a> BodyReader<'a> {
    /// Reads `body`, which lies in `frame`, as a value of type `ty` (for error messages).
    pub fn new(body: &'a [u8], frame: &'a Bytes, ty: &'static str) -> BodyReader<'a> {
        BodyReader {
            rest: body,
            frame,
            len: body.len(),
            ty,
        }
    }

    /// Decodes the next serde value.
    pub fn value<T: DeserializeOwned>(&mut self) -> Result<T, RpcError> {
        let seed = bounded::Seed::<T> {
            limit: self.rest.len(),
            value: std::marker::PhantomData,
        };
        match bincode::serde::seed_decode_from_slice(seed, self.rest, CONFIG) {
            Ok((value, used)) => {
                self.rest = &self.rest[used..];
                Ok(value)
            }
            Err(err) => Err(self.error(err)),
        }
    }

    /// Takes the next byte buffer, without copying it.
    pub fn bytes(&mut self) -> Result<Bytes, RpcError> {
        let bytes = self.slice()?;
        let (frame, part) = (self.frame.as_ptr_range(), bytes.as_ptr_range());
        Ok(if bytes.is_empty() {
            Bytes::new()
        } else if frame.start <= part.start && part.end <= frame.end {
            self.frame.slice_ref(bytes)
        } else {
            // The body should lie in `frame` (see `new`), but `slice_ref` panics when it does
            // not, and a panic must never be reachable from a peer's input: should a caller
            // ever pass another buffer, the bytes are copied instead.
            Bytes::copy_from_slice(bytes)
        })
    }

    /// Takes the next byte vector (one copy).
    pub fn byte_vec(&mut self) -> Result<Vec<u8>, RpcError> {
        self.slice().map(crate::buffers::to_vec)
    }

    /// Checks that nothing is left.
    pub fn finish(self) -> Result<(), RpcError> {
        if self.rest.is_empty() {
            return Ok(());
        }
        let trailing = self.rest.len();
        Err(self.error(DecodeError::OtherString(format!(
            "{trailing} trailing bytes after the value"
        ))))
    }

    fn slice(&mut self) -> Result<&'a [u8], RpcError> {
        let mut rest = self.rest;
        let len = crate::varint::read(&mut rest, u64::MAX)
            .and_then(|len| usize::try_from(len).ok())
            .filter(|&len| len <= rest.len());
        match len {
            Some(len) => {
                let (bytes, rest) = rest.split_at(len);
                self.rest = rest;
                Ok(bytes)
            }
            None => Err(self.error(DecodeError::OtherString(
                "a byte array's length is missing or longer than the message".to_string(),
            ))),
        }
    }

    fn error(&self, err: DecodeError) -> RpcError {
        decode_error(self.len, self.ty, err)
    }
}

/// Decodes a `Bytes` result or stream item out of the buffer it arrived in: no copy.
pub fn decode_bytes(body: &Bytes) -> Result<Bytes, RpcError> {
    let mut reader = BodyReader::new(body, body, "Bytes");
    let bytes = reader.bytes()?;
    reader.finish()?;
    Ok(bytes)
}

/// Serializes a byte vector through serde's bytes path: one length and one block copy,
/// instead of a call per element. The bytes on the wire are the same as `Vec<u8>`'s.
#[derive(Debug, Clone, Copy)]
pub struct AsBytes<'a>(pub &'a Vec<u8>);

impl Serialize for AsBytes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// Deserializes a byte vector through serde's bytes path; the counterpart of [`AsBytes`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ByteBuf(pub Vec<u8>);

impl ByteBuf {
    /// The bytes.
    pub fn into_inner(self) -> Vec<u8> {
        self.0
    }
}

impl<'de> serde::Deserialize<'de> for ByteBuf {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<ByteBuf, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte array")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(bytes.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(bytes))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ByteBuf, A::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element()? {
                    bytes.push(b);
                }
                Ok(ByteBuf(bytes))
            }
        }
        // `bytes`, not `byte_buf`: the decoder lends the bytes from the frame and they are
        // copied once, instead of into a zeroed buffer of its own first.
        deserializer.deserialize_bytes(Visitor)
    }
}

/// Encodes a byte vector the way `#[service]` sends `Vec<u8>`: as bytes, not a sequence.
/// For the fuzz targets and property tests (`__fuzz::codec`) only: generated code writes
/// byte vectors with `BodyWriter::byte_vec` or `AsBytes`.
#[cfg(feature = "__internal-hooks")]
#[allow(clippy::ptr_arg)] // `&Vec<u8>`, as `AsBytes` takes it
pub fn encode_byte_vec(value: &Vec<u8>, buf: &mut BytesMut) -> Result<(), RpcError> {
    encode_value(&AsBytes(value), buf)
}

/// Decodes a `Vec<u8>` result through the bytes path.
pub fn decode_byte_vec(body: &(impl AsRef<[u8]> + ?Sized)) -> Result<Vec<u8>, RpcError> {
    // A length and exactly that many bytes, read by hand (a stream of small `Vec<u8>` items
    // decodes one per item); anything else goes to bincode, for its error.
    let whole = body.as_ref();
    let mut rest = whole;
    match crate::varint::read(&mut rest, u64::MAX) {
        Some(len) if len == rest.len() as u64 => Ok(crate::buffers::to_vec(rest)),
        _ => decode_value::<ByteBuf>(whole).map(ByteBuf::into_inner),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_trailing_bytes() {
        let mut buf = BytesMut::new();
        encode_value(&(7i64, String::from("hi")), &mut buf).unwrap();
        let back: (i64, String) = decode_value(&buf).unwrap();
        assert_eq!(back, (7, "hi".to_string()));
        buf.put_u8(0);
        let err = decode_value::<(i64, String)>(&buf).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
        assert!(err.message().contains("trailing"), "{err}");
    }

    #[test]
    fn a_lying_length_fails_without_allocating_it() {
        // varint 0xFF then a u64 of 2^60: a string claiming 2^60 bytes, in a 9-byte body.
        let mut body = vec![0xFF];
        body.extend_from_slice(&(1u64 << 60).to_le_bytes());
        let err = decode_value::<String>(&body).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
        let err = decode_value::<Vec<u8>>(&body).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
        let err = decode_value::<Vec<String>>(&body).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
    }

    #[test]
    fn body_reader_slices_the_frame_or_copies() {
        // A byte array of 3 bytes: its length, then the bytes.
        let whole = Bytes::from_static(&[3, 1, 2, 3]);
        let take = |body: &[u8], frame: &Bytes| {
            let mut reader = BodyReader::new(body, frame, "Bytes");
            let bytes = reader.bytes().unwrap();
            reader.finish().unwrap();
            bytes
        };
        // In the frame: a slice of it.
        let bytes = take(&whole, &whole);
        assert_eq!(&bytes[..], [1, 2, 3]);
        assert_eq!(bytes.as_ptr(), whole[1..].as_ptr());
        // Not in the frame, or partly: a copy, where `slice_ref` would panic.
        let copy = whole.to_vec();
        for (body, frame) in [(&copy[..], &whole), (&whole[..], &whole.slice(..2))] {
            let bytes = take(body, frame);
            assert_eq!(&bytes[..], [1, 2, 3]);
            assert_ne!(bytes.as_ptr(), body[1..].as_ptr());
        }
    }

    #[test]
    fn bytes_and_vec_u8_share_an_encoding() {
        // `Vec<u8>` goes through serialize_bytes without a wire change.
        let data: Vec<u8> = (0..=255).collect();
        let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
        encode_value(&data, &mut a).unwrap();
        encode_value(&super::AsBytes(&data), &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(decode_value::<Vec<u8>>(&b).unwrap(), data);
        assert_eq!(decode_byte_vec(&a).unwrap(), data);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decoding_arbitrary_bodies_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_value::<(i64, String)>(&body);
            let _ = decode_value::<Vec<String>>(&body);
            let _ = decode_value::<Option<Vec<u8>>>(&body);
            let _ = decode_value::<std::collections::HashMap<String, Vec<u64>>>(&body);
            let _ = decode_value::<(u128, char, bool, f64)>(&body);
        }

        #[test]
        fn values_round_trip(a in any::<i64>(), s in ".{0,40}", v in proptest::collection::vec(any::<u64>(), 0..50)) {
            let mut buf = BytesMut::new();
            encode_value(&(a, &s, &v), &mut buf).unwrap();
            let back: (i64, String, Vec<u64>) = decode_value(&buf).unwrap();
            prop_assert_eq!(back, (a, s, v));
        }
    }
}
