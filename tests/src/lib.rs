//! End-to-end tests of the rpc framework live in `tests/`; this crate has no code of its own.
