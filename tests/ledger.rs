//! Ledger tests over TCP (filled in next).
