//! A length inside a message can never make the decoder allocate more than the message it
//! came in (docs/protocol.md, "Encoding": a length must not decide an allocation): measured
//! with a counting allocator around each decode.
// A global allocator can only be written with unsafe code; it forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;

use rpc_core::__fuzz::codec::{decode_value, encode_value};

/// The system allocator, recording the largest allocation made on a thread while it is
/// being watched.
struct Watching;

thread_local! {
    static WATCHED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged to the system allocator, whose contract is ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator, whose contract is ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded unchanged to the system allocator, whose contract is ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn note(size: usize) {
    // `try_with`: the allocator also runs while thread-locals are being torn down.
    let _ = WATCHED.try_with(|watched| {
        if watched.get() {
            let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
        }
    });
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// The largest single allocation `f` makes.
fn largest_allocation<R>(f: impl FnOnce() -> R) -> usize {
    LARGEST.with(|l| l.set(0));
    WATCHED.with(|w| w.set(true));
    let result = f();
    WATCHED.with(|w| w.set(false));
    drop(result);
    LARGEST.with(Cell::get)
}

/// A body whose first length claims `claim`: varint marker 253 then a u64.
fn lying(claim: u64) -> Vec<u8> {
    let mut body = vec![253];
    body.extend_from_slice(&claim.to_le_bytes());
    body
}

#[test]
fn lying_lengths_allocate_nothing_large() {
    for claim in [1u64 << 60, u64::from(u32::MAX), 1 << 20] {
        let body = lying(claim);
        let frame_bound = 64; // the 9-byte body, and small bookkeeping
        let cases: [(&str, usize); 6] = [
            (
                "String",
                largest_allocation(|| decode_value::<String>(&body).is_err()),
            ),
            (
                "Vec<u8>",
                largest_allocation(|| decode_value::<Vec<u8>>(&body).is_err()),
            ),
            (
                "Vec<u64>",
                largest_allocation(|| decode_value::<Vec<u64>>(&body).is_err()),
            ),
            (
                "Vec<String>",
                largest_allocation(|| decode_value::<Vec<String>>(&body).is_err()),
            ),
            (
                "HashMap<u64, u64>",
                largest_allocation(|| decode_value::<HashMap<u64, u64>>(&body).is_err()),
            ),
            (
                "(u8, String)",
                largest_allocation(|| {
                    let mut b = vec![1];
                    b.extend_from_slice(&body);
                    decode_value::<(u8, String)>(&b).is_err()
                }),
            ),
        ];
        for (what, largest) in cases {
            assert!(
                largest <= frame_bound * 8,
                "{what}: a 9-byte body claiming {claim} made an allocation of {largest} bytes"
            );
        }
    }
}

#[test]
fn honest_values_still_decode() {
    let mut buf = bytes::BytesMut::new();
    let value: (String, Vec<u64>, HashMap<String, Vec<u8>>) = (
        "hello".into(),
        vec![1, 2, 3, u64::MAX],
        HashMap::from([("k".to_string(), vec![9; 1000])]),
    );
    encode_value(&value, &mut buf).unwrap();
    let back: (String, Vec<u64>, HashMap<String, Vec<u8>>) = decode_value(&buf).unwrap();
    assert_eq!(back, value);
}
