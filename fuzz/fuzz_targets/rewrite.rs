//! Fuzzes the domain-XML rewriter with the check in `check.rs`: never a panic, every accepted
//! input rewrites idempotently, and a rewrite for a host without HBM removes the additions.
#![no_main]

mod check;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check::check(data));
