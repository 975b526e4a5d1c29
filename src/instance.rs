//! [`InstanceId`]: which object a thread-local memo entry belongs to.

use std::sync::atomic::{AtomicU64, Ordering};

/// A number no other instance in this process was given. The hit path's per-thread memos
/// (L1 reads, the renewal tracker's touches, the served-certificates metric) tag their
/// entries with their owner's, since tests and benches run several brokers in one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InstanceId(u64);

impl Default for InstanceId {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}
