//! The kernel edge: observe (dump and parse), diff (pure), apply (batched),
//! and targeted drift repair (pure).
//!
//! ```text
//!   RouteSocket ──dump──▶ observe::parse_* ──▶ Observed ┐
//!                                                      ├─ diff() ─▶ [Op] ─▶ messages ─▶ batch send
//!   plan::DesiredState ────────────────────────────────┘
//!
//!   monitor ──notification──▶ repair::repairs() ─▶ [Op] (or: diff everything)
//! ```

pub mod apply;
pub mod diff;
pub mod messages;
pub mod monitor;
pub mod observe;
pub mod offload;
pub mod repair;
pub mod socket;

pub use apply::{Applier, ApplyError, ApplyReport};
pub use diff::{Op, diff};
pub use observe::Observed;
