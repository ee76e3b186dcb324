//! Topic names and filters: validation and matching (section 4.7).
//!
//! Pure string logic; no I/O.

mod matching;
mod shared;
#[cfg(test)]
pub(crate) mod strategy;
mod validate;

pub use matching::matches;
pub use shared::{parse_filter, SharedFilter};
pub use validate::{valid_filter, valid_name};
