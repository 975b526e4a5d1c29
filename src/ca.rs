//! Upstream STI-CAs: one [`Upstream`] per `[[ca]]` (account, order flow, challenge answers)
//! and the [`CaPool`] that tries them in priority order, failing over on retryable errors.

mod attempt;
mod pool;
mod progress;
mod upstream;

pub use attempt::AttemptError;
pub use pool::CaPool;
pub use progress::OrderProgress;
pub(crate) use upstream::write_private;
pub use upstream::{Issued, Tracking, Upstream};
