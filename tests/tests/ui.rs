//! Compile-time tests of `#[service]`: every `ui/*.rs` must fail to compile with exactly the
//! errors in its `.stderr` snapshot, and every `ui-pass/*.rs` must compile.
//!
//! After a deliberate change to the macro's errors (or a new case), regenerate the
//! snapshots and review the diff:
//!
//! ```text
//! TRYBUILD=overwrite cargo test -p rpc-tests --test ui
//! ```

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/*.rs");
    t.pass("ui-pass/*.rs");
}
