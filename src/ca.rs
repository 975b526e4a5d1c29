//! Upstream STI-CAs: one [`Upstream`] per `[[ca]]` (account, order flow, challenge answers)
//! and the [`CaPool`] that picks among them by the pool's policy, failing over on retryable
//! errors, optionally hedging, and keeping a circuit breaker and counters per CA.

mod account;
mod ari;
mod attempt;
mod authorize;
mod breaker;
mod lifecycle;
mod metrics;
mod order_flow;
mod policy;
mod pool;
pub mod preauth;
mod progress;
mod race;
mod star;
mod upstream;

pub(crate) use account::write_private;
pub use account::{AccountSource, KeyFileStamp};
pub use attempt::AttemptError;
pub use breaker::{BreakerState, Skip, SkipReason};
pub use lifecycle::{RolledOver, deactivate, roll_over, show};
pub use metrics::CaStats;
pub use order_flow::{CertKind, Issued, Tracking};
pub use pool::CaPool;
pub use progress::OrderProgress;
pub use race::Progress;
pub use upstream::Upstream;
