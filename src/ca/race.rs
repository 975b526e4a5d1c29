//! Running a pool's attempts: one at a time with failover, or hedged (the next attempt
//! starts when the running ones have not finished after a delay). The first success wins.

use std::{
    collections::VecDeque,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use futures::{FutureExt, StreamExt, future::BoxFuture, stream::FuturesUnordered};
use tokio::sync::watch;

/// How far an attempt got; set by [`super::Upstream`] as it goes.
#[derive(Debug, Default)]
pub struct Progress {
    finalize_sent: AtomicBool,
}

impl Progress {
    /// Called right before the finalize request goes out: from then on the CA may issue
    /// whatever the client does.
    pub(crate) fn finalizing(&self) {
        self.finalize_sent.store(true, Ordering::SeqCst);
    }

    /// Whether the finalize request may have reached the CA.
    pub(crate) fn finalize_sent(&self) -> bool {
        self.finalize_sent.load(Ordering::SeqCst)
    }
}

/// Tells attempts that the race is decided.
pub(crate) type CancelRx = watch::Receiver<bool>;

/// Resolves once the race is decided.
pub(crate) async fn cancelled(rx: &mut CancelRx) {
    // A dropped sender also means the race is over.
    let _ = rx.wait_for(|decided| *decided).await;
}

/// What an attempt says about itself.
pub(crate) enum Outcome<T, E> {
    /// A certificate.
    Won(T),
    /// A failure another CA would repeat: stop.
    Fatal(E),
    /// A failure (or a skip) another CA may not share: go on.
    Retryable(E),
}

/// How the race ended, and the attempts still running (the caller drains them).
pub(crate) struct Finish<T, E> {
    /// The winner (index into the attempts) or the stopping failure.
    pub result: Result<(usize, T), Stop<E>>,
    /// Attempts still running; each must resolve promptly once the cancel signal is sent.
    pub leftovers: FuturesUnordered<BoxFuture<'static, (usize, Outcome<T, E>)>>,
}

/// Why no attempt won.
pub(crate) enum Stop<E> {
    /// A fatal failure from one attempt.
    Fatal(E),
    /// Every attempt failed retryably; their errors in completion order.
    Exhausted(Vec<(usize, E)>),
}

/// Runs `attempts` in order. Each starts when the previous ones have all failed, or, with
/// `hedge_after`, also when the running ones have not finished within that delay.
pub(crate) async fn run<T: Send + 'static, E: Send + 'static>(
    attempts: Vec<BoxFuture<'static, Outcome<T, E>>>,
    hedge_after: Option<Duration>,
) -> Finish<T, E> {
    let mut pending: VecDeque<_> = attempts.into_iter().enumerate().collect();
    let mut running = FuturesUnordered::new();
    let mut errors = vec![];
    let start = |running: &mut FuturesUnordered<_>, pending: &mut VecDeque<_>| {
        if let Some((i, fut)) = pending.pop_front() {
            let fut: BoxFuture<'static, Outcome<T, E>> = fut;
            running.push(fut.map(move |o| (i, o)).boxed());
        }
    };
    start(&mut running, &mut pending);
    loop {
        let hedge_delay = hedge_after.filter(|_| !pending.is_empty());
        let hedge = async move {
            match hedge_delay {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            next = running.next() => match next {
                Some((i, Outcome::Won(v))) => {
                    return Finish { result: Ok((i, v)), leftovers: running };
                }
                Some((_, Outcome::Fatal(e))) => {
                    return Finish { result: Err(Stop::Fatal(e)), leftovers: running };
                }
                Some((i, Outcome::Retryable(e))) => {
                    errors.push((i, e));
                    start(&mut running, &mut pending);
                }
                None => {
                    return Finish { result: Err(Stop::Exhausted(errors)), leftovers: running };
                }
            },
            () = hedge => start(&mut running, &mut pending),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn after(
        ms: u64,
        o: Outcome<&'static str, &'static str>,
    ) -> BoxFuture<'static, Outcome<&'static str, &'static str>> {
        async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            o
        }
        .boxed()
    }

    #[tokio::test]
    async fn failover_is_sequential_without_hedging() {
        let t = Instant::now();
        let f = run(
            vec![
                after(50, Outcome::Retryable("a down")),
                after(50, Outcome::Won("b")),
            ],
            None,
        )
        .await;
        assert!(matches!(f.result, Ok((1, "b"))));
        assert!(
            t.elapsed() >= Duration::from_millis(100),
            "b started after a failed"
        );
    }

    #[tokio::test]
    async fn hedging_lets_the_fast_one_win() {
        let t = Instant::now();
        let f = run(
            vec![
                after(5_000, Outcome::Won("slow")),
                after(10, Outcome::Won("fast")),
            ],
            Some(Duration::from_millis(50)),
        )
        .await;
        assert!(matches!(f.result, Ok((1, "fast"))));
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(f.leftovers.len(), 1, "the slow one is left to the caller");
    }

    #[tokio::test]
    async fn fatal_stops_and_exhaustion_collects_errors() {
        let f = run(
            vec![
                after(1, Outcome::Fatal("refused")),
                after(1, Outcome::Won("never")),
            ],
            None,
        )
        .await;
        assert!(matches!(f.result, Err(Stop::Fatal("refused"))));
        let f = run(
            vec![
                after(1, Outcome::Retryable("x")),
                after(1, Outcome::Retryable("y")),
            ],
            Some(Duration::from_millis(100)),
        )
        .await;
        match f.result {
            Err(Stop::Exhausted(errs)) => assert_eq!(errs, vec![(0, "x"), (1, "y")]),
            _ => panic!("expected exhaustion"),
        }
    }
}
