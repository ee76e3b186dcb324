//! Topic names and filters: validation and matching (section 4.7).
//!
//! Pure string logic; no I/O.

mod validate;

pub use validate::{valid_filter, valid_name};
