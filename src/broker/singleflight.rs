//! Keyed coalescing of in-flight work inside one process.
//!
//! # Hidden contract
//! The work runs in its own task, so it finishes (and stores its result) even when the
//! caller that started it goes away. The entry is removed by that task after the work is
//! done, so a caller arriving later must find the result where the work put it (the cache),
//! not here.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use tracing::Instrument;

type Flight<T> = Shared<BoxFuture<'static, T>>;

/// Coalesces concurrent runs for the same key.
#[derive(Debug)]
pub(crate) struct SingleFlight<T: Clone> {
    inflight: Arc<Mutex<HashMap<String, Flight<T>>>>,
}

impl<T: Clone + Send + Sync + 'static> SingleFlight<T> {
    pub(crate) fn new() -> Self {
        Self {
            inflight: Arc::default(),
        }
    }

    /// Runs `work` for `key`, or joins the run already in flight. Returns the result and
    /// whether this call joined another's run. `on_panic` turns a panicked task into a `T`.
    pub(crate) async fn run<F>(
        &self,
        key: &str,
        work: impl FnOnce() -> F,
        on_panic: fn(String) -> T,
    ) -> (T, bool)
    where
        F: Future<Output = T> + Send + 'static,
    {
        let (flight, joined) = {
            let mut map = lock(&self.inflight);
            match map.get(key) {
                Some(flight) => (flight.clone(), true),
                None => {
                    let work = work();
                    let inflight = Arc::clone(&self.inflight);
                    let owned_key = key.to_owned();
                    // The issuance runs in the first caller's span, so traces show it
                    // under that request.
                    let task = tokio::spawn(
                        async move {
                            let out = work.await;
                            lock(&inflight).remove(&owned_key);
                            out
                        }
                        .in_current_span(),
                    );
                    let flight = async move {
                        match task.await {
                            Ok(out) => out,
                            Err(e) => on_panic(e.to_string()),
                        }
                    }
                    .boxed()
                    .shared();
                    map.insert(key.to_owned(), flight.clone());
                    (flight, false)
                }
            }
        };
        (flight.await, joined)
    }

    /// Number of keys in flight (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.inflight).len()
    }
}

fn lock<V>(m: &Mutex<V>) -> std::sync::MutexGuard<'_, V> {
    // The map stays consistent under panics: every critical section is one map operation.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_runs_share_one_execution() {
        let sf = Arc::new(SingleFlight::<usize>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(50));
        let mut tasks = vec![];
        for _ in 0..50 {
            let (sf, runs, barrier) = (sf.clone(), runs.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                sf.run(
                    "k",
                    || async move {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        runs.fetch_add(1, Ordering::SeqCst) + 7
                    },
                    |_| 0,
                )
                .await
            }));
        }
        let mut joined = 0;
        for t in tasks {
            let (v, j) = t.await.unwrap();
            assert_eq!(v, 7);
            joined += usize::from(j);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(joined, 49);
        assert_eq!(sf.len(), 0);
    }

    #[tokio::test]
    async fn work_outlives_a_cancelled_caller() {
        let sf = Arc::new(SingleFlight::<u8>::new());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let first = tokio::spawn({
            let sf = sf.clone();
            async move {
                sf.run(
                    "k",
                    || async move {
                        let _ = rx.await;
                        d.fetch_add(1, Ordering::SeqCst);
                        1
                    },
                    |_| 0,
                )
                .await
            }
        });
        tokio::task::yield_now().await;
        first.abort();
        let _ = first.await;
        tx.send(()).unwrap();
        // A new caller joins the still-running flight or finds it finished.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert_eq!(sf.len(), 0);
    }

    #[tokio::test]
    async fn panics_become_values() {
        let sf = SingleFlight::<String>::new();
        let (v, _) = sf
            .run(
                "k",
                || async { panic!("boom") },
                |e| format!("panicked: {e}"),
            )
            .await;
        assert!(v.starts_with("panicked"), "{v}");
    }
}
