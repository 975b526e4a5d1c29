//! Keyed coalescing of in-flight work inside one process.
//!
//! # Hidden contract
//! The work is polled in the task of the caller that started it: an L2 hit, the common
//! flight, costs no task of its own and no hand-over between tasks. Callers that come while
//! it runs wait for its result only, woken once when it is there (not on each of the work's
//! own wake-ups, which a thousand waiters would otherwise share). If the caller that started
//! it goes away before the work is done, the rest of the work moves to a task of its own, so
//! it still finishes (and stores its result) without anyone waiting. The entry is removed
//! when the work is done, so a caller arriving later must find the result where the work put
//! it (the cache), not here.

use std::{
    future::Future,
    hash::Hash,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
};

use foldhash::HashMap;
use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use tokio::sync::oneshot;
use tracing::Instrument;

/// What the callers that join a run wait for: its result, sent once.
type Outcome<T> = Shared<oneshot::Receiver<T>>;

/// Coalesces concurrent runs for the same key.
#[derive(Debug)]
pub(crate) struct SingleFlight<K, T: Clone> {
    inflight: Arc<Mutex<HashMap<K, Outcome<T>>>>,
}

impl<K, T> SingleFlight<K, T>
where
    K: Hash + Eq + Clone + Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    pub(crate) fn new() -> Self {
        Self {
            inflight: Arc::default(),
        }
    }

    /// Runs `work` for `key`, or joins the run already in flight. Returns the result and
    /// whether this call joined another's run. `work` is called only by the caller that
    /// starts the run. `on_panic` turns a panic of the work (or a run dropped unfinished,
    /// as at shutdown) into a `T`, which every caller of the run gets.
    pub(crate) async fn run<F>(
        &self,
        key: &K,
        work: impl FnOnce() -> F,
        on_panic: fn(String) -> T,
    ) -> (T, bool)
    where
        F: Future<Output = T> + Send + 'static,
    {
        let started = {
            let mut map = lock(&self.inflight);
            match map.get(key) {
                Some(outcome) => Err(outcome.clone()),
                None => {
                    let (tx, rx) = oneshot::channel();
                    // Made under the lock: another caller cannot start the same run meanwhile.
                    let work = work();
                    map.insert(key.clone(), rx.shared());
                    Ok((tx, work))
                }
            }
        };
        let (tx, work) = match started {
            Ok(started) => started,
            Err(outcome) => {
                let out = match outcome.await {
                    Ok(out) => out,
                    Err(_) => on_panic("the run ended without a result".to_owned()),
                };
                return (out, true);
            }
        };
        let entry = Entry {
            inflight: Arc::clone(&self.inflight),
            key: key.clone(),
        };
        // The work runs in the first caller's span, so traces show it under that request,
        // in whichever task it ends.
        let run = Starter(Some(
            async move {
                let out = match AssertUnwindSafe(work).catch_unwind().await {
                    Ok(out) => out,
                    Err(panic) => on_panic(panic_message(panic.as_ref())),
                };
                drop(entry);
                let _ = tx.send(out.clone());
                out
            }
            .in_current_span()
            .boxed(),
        ));
        (run.await, false)
    }

    /// Number of keys in flight (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.inflight).len()
    }
}

/// A run's place in the map, given up when the run is done or dropped unfinished (then its
/// waiters get `on_panic`'s value and the next caller starts anew).
struct Entry<K: Hash + Eq, T: Clone> {
    inflight: Arc<Mutex<HashMap<K, Outcome<T>>>>,
    key: K,
}

impl<K: Hash + Eq, T: Clone> Drop for Entry<K, T> {
    fn drop(&mut self) {
        lock(&self.inflight).remove(&self.key);
    }
}

/// The starting caller's run, polled by that caller: dropped before the work is done (the
/// caller went away), it hands the rest of the work to a task of its own.
struct Starter<T: Send + 'static>(Option<BoxFuture<'static, T>>);

impl<T: Send + 'static> Future for Starter<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(work) = self.0.as_mut() else {
            // Done already: a future is not polled again after `Ready`.
            return Poll::Pending;
        };
        let out = ready!(work.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(out)
    }
}

impl<T: Send + 'static> Drop for Starter<T> {
    fn drop(&mut self) {
        if let Some(work) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(work);
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_owned()
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
        let sf = Arc::new(SingleFlight::<&str, usize>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(50));
        let mut tasks = vec![];
        for _ in 0..50 {
            let (sf, runs, barrier) = (sf.clone(), runs.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                sf.run(
                    &"k",
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
        let sf = Arc::new(SingleFlight::<&str, u8>::new());
        let (tx, rx) = oneshot::channel::<()>();
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let first = tokio::spawn({
            let sf = sf.clone();
            async move {
                sf.run(
                    &"k",
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
        // Nobody waits for the run any more: it finishes in a task of its own.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while done.load(Ordering::SeqCst) == 0 || sf.len() != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the run never finished"
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_starter_polls_the_work_in_its_own_task() {
        let sf = SingleFlight::<&str, Option<tokio::task::Id>>::new();
        let caller = tokio::spawn(async move {
            let (ran_in, joined) = sf
                .run(&"k", || async { tokio::task::try_id() }, |_| None)
                .await;
            (ran_in, joined, tokio::task::id())
        });
        let (ran_in, joined, caller_id) = caller.await.unwrap();
        assert!(!joined);
        assert_eq!(ran_in, Some(caller_id));
    }

    #[test]
    fn a_run_dropped_unfinished_without_a_runtime_frees_its_key() {
        let sf = SingleFlight::<&str, u8>::new();
        let mut run = Box::pin(sf.run(&"k", std::future::pending::<u8>, |_| 0));
        let first = futures::executor::block_on(async { futures::poll!(run.as_mut()) });
        assert!(first.is_pending());
        assert_eq!(sf.len(), 1);
        // No runtime to finish it in (as at shutdown): the work is dropped, and its key
        // with it, so the next caller starts anew instead of joining a dead run.
        drop(run);
        assert_eq!(sf.len(), 0);
        let next = futures::executor::block_on(sf.run(&"k", || async { 5 }, |_| 0));
        assert_eq!(next, (5, false));
    }

    #[tokio::test]
    async fn panics_become_values() {
        let sf = SingleFlight::<&str, String>::new();
        let (v, _) = sf
            .run(
                &"k",
                || async { panic!("boom") },
                |e| format!("panicked: {e}"),
            )
            .await;
        assert_eq!(v, "panicked: boom");
        assert_eq!(sf.len(), 0);
    }
}
