//! Drives the broker core with several clients doing anything in any order
//! (connect with or without a will, publish, subscribe, acknowledge, send
//! raw bytes, drop, let time pass) and checks its invariants after every
//! step: every packet that asks for an answer gets it, what a session
//! holds stays within its limits, the ACL is never bypassed, no panic.
//! The operations and checks live in `src/broker/drive.rs`, which the unit
//! tests also run on random input.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = roost::fuzzing::drive_core(data);
});
