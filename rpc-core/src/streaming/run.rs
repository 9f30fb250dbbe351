//! Runs of items: many small items of one stream in one `StreamItems` frame, each its body's
//! length (a varint) and then the body. A stream of small items costs a frame head, a
//! transport write, a read and a hand-over to its consumer per run instead of per item.
//! Credit still counts each item (its body plus [`super::ITEM_OVERHEAD`]), so the
//! receiver's bound is the same as with one frame per item.

use bytes::{Buf, Bytes};

use crate::varint;

/// The flag a side sets in its announcement (next to [`super::BYTE_CREDIT`]) to say it
/// reads `StreamItems`: the client in its announcement, the server in its answer, and
/// only if the client set it. Each side sends runs only to a peer that set it.
pub(crate) const ITEM_RUNS: u32 = 1 << 9;

/// The largest item body sent in a run; a larger one gets a frame of its own, as does one
/// with a byte buffer spliced in or one worth compressing. Runs copy their items once,
/// where a frame of its own would be written from its own buffer past this size.
pub(super) const RUN_ITEM_MAX: usize = crate::codec::SPLICE_MIN;

/// What a run's frame head takes at most: the tag, the stream id and the run's length.
pub(super) const RUN_HEAD_MAX: usize = 1 + 9 + 5;

/// What an item of `body` bytes takes in a run: its length, then the body.
#[inline]
pub(super) fn item_len(body: usize) -> usize {
    varint::len(body as u64) + body
}

/// Splits the next item's body off the front of `run`; `None` when it is cut short.
pub(crate) fn next<'a>(run: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(varint::read(run, u64::MAX)?).ok()?;
    if len > run.len() {
        return None;
    }
    let (item, rest) = run.split_at(len);
    *run = rest;
    Some(item)
}

/// What a run holds: how many items, and their body bytes (without their lengths).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct RunStats {
    pub(crate) items: u64,
    pub(crate) body: usize,
}

/// Checks that a received run is a whole number of items, before any of it is taken in;
/// counts them on the way, so the receiver can take a run in at once.
pub(crate) fn check(run: &[u8]) -> Result<RunStats, String> {
    let mut rest = run;
    let mut stats = RunStats::default();
    while !rest.is_empty() {
        let Some(item) = next(&mut rest) else {
            return Err(format!(
                "a StreamItems frame whose item at byte {} of {} is cut short",
                run.len() - rest.len(),
                run.len()
            ));
        };
        stats.items += 1;
        stats.body += item.len();
    }
    Ok(stats)
}

/// Takes the next item off the front of `run` (which [`check`] accepted) as bytes of its
/// own; the last one takes `run`'s own handle on the buffer.
#[inline]
pub(super) fn split_next(run: &mut Bytes) -> Option<Bytes> {
    let mut rest = &run[..];
    let len = usize::try_from(varint::read(&mut rest, u64::MAX)?).ok()?;
    let head = run.len() - rest.len();
    if len >= rest.len() {
        if len > rest.len() {
            return None;
        }
        run.advance(head);
        return Some(std::mem::take(run));
    }
    let item = run.slice(head..head + len);
    run.advance(head + len);
    Some(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(items: &[&[u8]]) -> Vec<u8> {
        let mut run = Vec::new();
        for item in items {
            let mut len = [0; 9];
            let n = varint::write(&mut len, 0, item.len() as u64);
            run.extend_from_slice(&len[..n]);
            run.extend_from_slice(item);
        }
        run
    }

    #[test]
    fn items_come_out_whole_and_in_order() {
        let big = vec![7u8; 300];
        let items: [&[u8]; 4] = [b"", b"one", &big, b"x"];
        let run = run_of(&items);
        assert_eq!(
            check(&run),
            Ok(RunStats {
                items: 4,
                body: 304
            })
        );
        let mut bytes = Bytes::from(run);
        for item in items {
            assert_eq!(split_next(&mut bytes).as_deref(), Some(item));
        }
        assert!(bytes.is_empty());
        assert_eq!(split_next(&mut bytes), None);
    }

    #[test]
    fn a_run_cut_short_is_refused() {
        let run = run_of(&[b"abc", b"defg"]);
        for cut in 1..run.len() {
            if cut == 4 {
                continue; // a whole first item
            }
            assert!(check(&run[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(check(&run[..4]), Ok(RunStats { items: 1, body: 3 }));
        assert!(check(&[251, 1]).is_err());
    }
}
