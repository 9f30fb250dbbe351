//! Micro-benchmark of the codec on the hot path: a call's arguments encoded into a request
//! frame by the client and decoded by the server, for a small call and a 64 KiB payload.
//!
//! `cargo bench -p rpc-core --bench codec`

use divan::{black_box, Bencher};
use rpc_core::__private::bench::{decode_request, encode_request};
use rpc_core::__private::{AsBytes, ByteBuf};

fn main() {
    divan::main();
}

/// `add(a: u64, b: u64)`: encode + decode.
#[divan::bench]
fn small_request() -> (u64, u64) {
    let frame = encode_request(black_box(7), 0, &(black_box(1u64), black_box(2u64))).unwrap();
    decode_request::<(u64, u64)>(&frame).unwrap()
}

/// A `Vec<u8>` of 64 KiB, as generated code sends it: encode + decode.
#[divan::bench]
fn payload_64_kib(bencher: Bencher) {
    let data = vec![0xa5u8; 64 << 10];
    bencher
        .counter(divan::counter::BytesCount::new(data.len()))
        .bench(|| {
            let frame = encode_request(7, 1, &(AsBytes(black_box(&data)),)).unwrap();
            decode_request::<(ByteBuf,)>(&frame).unwrap()
        });
}

/// A `Vec<u8>` of 64 KiB through serde's default sequence encoding, for comparison: what the
/// bytes path saves.
#[divan::bench]
fn payload_64_kib_as_sequence(bencher: Bencher) {
    let data = vec![0xa5u8; 64 << 10];
    bencher
        .counter(divan::counter::BytesCount::new(data.len()))
        .bench(|| {
            let frame = encode_request(7, 1, &(black_box(&data),)).unwrap();
            decode_request::<(Vec<u8>,)>(&frame).unwrap()
        });
}
