//! A frame on its way out: one protocol message, made of one or more parts.

use std::fmt;

use bytes::{Bytes, BytesMut};

/// One frame to send: one protocol message, as one or more parts written one after another.
///
/// Most frames are a single part. A frame carrying a large [`Bytes`] argument, result or
/// stream item is made of several: the message's head (and the value's length), the value's
/// own buffer, and whatever follows it. A transport writes the parts back to back, so the
/// bytes on the wire are exactly those of the whole message; a byte-stream transport writes
/// a large part from its own buffer (with `writev`) instead of copying it into a frame.
///
/// ```
/// use bytes::Bytes;
/// use rpc_core::Frame;
///
/// let mut frame = Frame::from(Bytes::from_static(b"head "));
/// frame.push(Bytes::from(vec![b'x'; 3]));
/// assert_eq!(frame.len(), 8);
/// assert_eq!(frame.parts().count(), 2);
/// assert_eq!(frame.into_bytes(), Bytes::from_static(b"head xxx"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    repr: Repr,
}

/// One part, the common case, as small as a `Bytes` (a frame is moved through queues on
/// every call); several behind one pointer.
#[derive(Clone, PartialEq, Eq)]
enum Repr {
    One(Bytes),
    // Boxed on purpose: a `Vec` inline would make every frame 8 bytes larger.
    #[allow(clippy::box_collection)]
    Parts(Box<Vec<Bytes>>),
}

impl Default for Frame {
    fn default() -> Frame {
        Frame::new(Bytes::new())
    }
}

impl Frame {
    /// A frame of one part.
    #[inline]
    pub fn new(bytes: Bytes) -> Frame {
        Frame {
            repr: Repr::One(bytes),
        }
    }

    /// Appends a part (an empty one is left out).
    pub fn push(&mut self, part: Bytes) {
        if part.is_empty() {
            return;
        }
        match &mut self.repr {
            Repr::One(only) if only.is_empty() => *only = part,
            Repr::One(only) => {
                let first = std::mem::take(only);
                self.repr = Repr::Parts(Box::new(vec![first, part]));
            }
            Repr::Parts(parts) => parts.push(part),
        }
    }

    /// The frame's length in bytes: all its parts together.
    #[inline]
    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::One(only) => only.len(),
            Repr::Parts(parts) => parts.iter().map(Bytes::len).sum(),
        }
    }

    /// Whether the frame has no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the frame is one part: [`into_bytes`](Frame::into_bytes) copies nothing.
    pub fn is_single(&self) -> bool {
        matches!(self.repr, Repr::One(_))
    }

    /// The frame's only part, or the frame itself when it has several.
    #[inline]
    pub fn into_single(self) -> Result<Bytes, Frame> {
        match self.repr {
            Repr::One(only) => Ok(only),
            repr => Err(Frame { repr }),
        }
    }

    /// The parts, in order.
    pub fn parts(&self) -> std::slice::Iter<'_, Bytes> {
        match &self.repr {
            Repr::One(only) => std::slice::from_ref(only).iter(),
            Repr::Parts(parts) => parts.iter(),
        }
    }

    /// The parts, in order, taken out of the frame.
    #[inline]
    pub fn into_parts(self) -> IntoParts {
        IntoParts(match self.repr {
            Repr::One(only) => PartsRepr::One(Some(only)),
            Repr::Parts(parts) => PartsRepr::Many(parts.into_iter()),
        })
    }

    /// The frame as one buffer: its only part as it is, or its parts joined (one copy).
    #[inline]
    pub fn into_bytes(self) -> Bytes {
        match self.repr {
            Repr::One(only) => only,
            Repr::Parts(parts) => join(&parts),
        }
    }
}

/// The parts of a [`Frame`], taken out of it ([`Frame::into_parts`]).
#[derive(Debug)]
pub struct IntoParts(PartsRepr);

#[derive(Debug)]
enum PartsRepr {
    One(Option<Bytes>),
    Many(std::vec::IntoIter<Bytes>),
}

impl Iterator for IntoParts {
    type Item = Bytes;

    #[inline]
    fn next(&mut self) -> Option<Bytes> {
        match &mut self.0 {
            PartsRepr::One(only) => only.take(),
            PartsRepr::Many(parts) => parts.next(),
        }
    }
}

/// Parts copied into one buffer.
#[cold]
fn join(parts: &[Bytes]) -> Bytes {
    let mut joined = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
    for part in parts {
        joined.extend_from_slice(part);
    }
    joined.freeze()
}

impl Frame {
    /// The last `len` bytes of the frame, as parts sharing its buffers (no copy).
    pub(crate) fn suffix(&self, len: usize) -> Frame {
        let mut skip = self.len().saturating_sub(len);
        let mut suffix = Frame::default();
        for part in self.parts() {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            suffix.push(part.slice(skip..));
            skip = 0;
        }
        suffix
    }
}

impl From<Bytes> for Frame {
    #[inline]
    fn from(bytes: Bytes) -> Frame {
        Frame::new(bytes)
    }
}

impl From<Vec<u8>> for Frame {
    fn from(bytes: Vec<u8>) -> Frame {
        Frame::new(Bytes::from(bytes))
    }
}

impl From<&'static [u8]> for Frame {
    fn from(bytes: &'static [u8]) -> Frame {
        Frame::new(Bytes::from_static(bytes))
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("len", &self.len())
            .field("parts", &self.parts().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_of_one_part_is_as_small_as_its_bytes() {
        assert_eq!(std::mem::size_of::<Frame>(), std::mem::size_of::<Bytes>());
    }

    #[test]
    fn parts_keep_their_order_and_empty_ones_are_left_out() {
        let mut frame = Frame::default();
        frame.push(Bytes::new());
        frame.push(Bytes::from_static(b"ab"));
        frame.push(Bytes::new());
        frame.push(Bytes::from_static(b"cd"));
        assert_eq!(frame.parts().count(), 2);
        assert!(!frame.is_single());
        assert_eq!(frame.len(), 4);
        let parts: Vec<Bytes> = frame.clone().into_parts().collect();
        assert_eq!(parts, [&b"ab"[..], &b"cd"[..]]);
        assert_eq!(frame.into_bytes(), Bytes::from_static(b"abcd"));
    }

    #[test]
    fn a_suffix_shares_the_parts() {
        let mut frame = Frame::from(Bytes::from_static(b"head"));
        frame.push(Bytes::from_static(b"body"));
        frame.push(Bytes::from_static(b"!"));
        for len in 0..=9 {
            let whole = frame.clone().into_bytes();
            assert_eq!(
                frame.suffix(len).into_bytes(),
                whole.slice(9 - len..),
                "{len}"
            );
        }
        assert_eq!(frame.suffix(100).len(), 9);
    }

    #[test]
    fn a_single_part_is_handed_back_without_a_copy() {
        let bytes = Bytes::from(vec![7u8; 100]);
        let frame = Frame::from(bytes.clone());
        assert!(frame.is_single());
        assert_eq!(frame.into_bytes().as_ptr(), bytes.as_ptr());
    }
}
