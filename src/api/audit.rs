//! The audit trail of certificates handed out: who received which certificate (and with it,
//! unless they brought a CSR, its private key), without a formatted log line per cache hit.
//!
//! **What it guarantees.** Every hand-out is either a line of its own or counted in a
//! summary line:
//! - the *first* hand-out of a serial to a caller writes one `audit` line at once
//!   (`action="get_certificate"` or `"watch_certificate"`, with caller, identifiers, CA,
//!   serial, cache status and whether a private key was returned);
//! - *repeats* of the same (caller, serial) are counted, and once per
//!   `telemetry.audit_interval_secs` a background task writes one line per pair that had
//!   repeats (`action="get_certificate_repeats"`, `count`, `interval_secs`);
//! - a pair with no hand-out for two whole intervals is forgotten; its next hand-out is
//!   written as a first hand-out again (so the table holds only pairs in use);
//! - at shutdown ([`Audit::flush`], called when the server stops) pending counts are
//!   written.
//!
//! **What is lost on a crash:** the counts of the current interval (at most one interval of
//! repeats, never a first hand-out already written), plus whatever lines sit in the
//! non-blocking log writer's buffer (see [`crate::telemetry`]).
//!
//! **What it costs** on the request path: the caller's label, one read lock and one atomic
//! increment per hand-out; the first hand-out of a pair also takes the write lock and formats
//! its line (written by the log writer's thread, not the request). Memory: about 100 bytes
//! per (caller, serial) pair in use.

use std::{
    borrow::Cow,
    collections::hash_map,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

use foldhash::HashMap;

use super::policy::Caller;
use crate::cert::CertRecord;

/// A pair quiet for this many summary ticks in a row is forgotten.
const FORGET_AFTER_QUIET_TICKS: u8 = 2;

/// Default summary interval (`telemetry.audit_interval_secs`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// The audit trail (cheap to clone; clones share the counts).
#[derive(Debug, Clone)]
pub struct Audit {
    inner: Arc<Inner>,
}

/// serial → counts, for one caller.
type Serials = HashMap<Box<str>, Entry>;

#[derive(Debug)]
struct Inner {
    /// caller label → serial → counts.
    seen: RwLock<HashMap<Box<str>, Serials>>,
    interval: Duration,
}

#[derive(Debug)]
struct Entry {
    /// Hand-outs since the last summary, the first one not included.
    repeats: AtomicU64,
    /// Summary ticks in a row without a hand-out.
    quiet: AtomicU8,
    key_returned: bool,
}

/// One certificate handed out.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// `get_certificate` or `watch_certificate`.
    pub action: &'static str,
    /// Who received it.
    pub caller: &'a Caller,
    /// What they received.
    pub cert: &'a CertRecord,
    /// The `cache_status` label of the answer.
    pub cache_status: &'static str,
    /// Whether the answer carried the private key (the caller sent no CSR).
    pub key_returned: bool,
}

/// One summary line's content.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Repeats {
    caller: Box<str>,
    serial: Box<str>,
    count: u64,
    key_returned: bool,
}

impl Audit {
    /// An empty trail summarizing repeats every `interval` (once [`Audit::spawn`]ed).
    pub fn new(interval: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                seen: RwLock::new(HashMap::default()),
                interval: interval.max(Duration::from_millis(10)),
            }),
        }
    }

    /// Records a hand-out: writes the first one of a (caller, serial) pair, counts repeats.
    /// `identifiers` (the request's identifiers in words) is only called for a first one.
    pub fn delivered(&self, d: Delivery<'_>, identifiers: impl FnOnce() -> String) {
        let first = with_label(d.caller, |caller| {
            self.record(caller, &d.cert.serial_hex, d.key_returned)
        });
        if !first {
            return;
        }
        let caller = label(d.caller);
        tracing::info!(
            target: "audit",
            action = d.action,
            caller = %caller,
            identifiers = %identifiers(),
            ca = %d.cert.issuer_ca,
            serial = %d.cert.serial_hex,
            cache_status = d.cache_status,
            key_returned = d.key_returned,
            "certificate delivered"
        );
    }

    /// Counts the hand-out; `true` if it is the pair's first.
    fn record(&self, caller: &str, serial: &str, key_returned: bool) -> bool {
        {
            let seen = self
                .inner
                .seen
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(e) = seen.get(caller).and_then(|s| s.get(serial)) {
                e.repeats.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        }
        let mut seen = self
            .inner
            .seen
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let serials = match seen.get_mut(caller) {
            Some(s) => s,
            None => seen.entry(caller.into()).or_default(),
        };
        match serials.entry(serial.into()) {
            hash_map::Entry::Occupied(e) => {
                // Another request inserted it between the two locks.
                e.get().repeats.fetch_add(1, Ordering::Relaxed);
                false
            }
            hash_map::Entry::Vacant(v) => {
                v.insert(Entry {
                    repeats: AtomicU64::new(0),
                    quiet: AtomicU8::new(0),
                    key_returned,
                });
                true
            }
        }
    }

    /// Takes the counts since the last call and forgets pairs quiet for too long.
    fn take_repeats(&self) -> Vec<Repeats> {
        let mut out = vec![];
        let mut forget = false;
        {
            let seen = self
                .inner
                .seen
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            for (caller, serials) in seen.iter() {
                for (serial, e) in serials {
                    let count = e.repeats.swap(0, Ordering::Relaxed);
                    if count > 0 {
                        e.quiet.store(0, Ordering::Relaxed);
                        out.push(Repeats {
                            caller: caller.clone(),
                            serial: serial.clone(),
                            count,
                            key_returned: e.key_returned,
                        });
                    } else {
                        let quiet = e.quiet.load(Ordering::Relaxed).saturating_add(1);
                        e.quiet.store(quiet, Ordering::Relaxed);
                        forget |= quiet >= FORGET_AFTER_QUIET_TICKS;
                    }
                }
            }
        }
        if forget {
            let mut seen = self
                .inner
                .seen
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            seen.retain(|_, serials| {
                // A hand-out since the pass above keeps the pair (its count is not lost).
                serials.retain(|_, e| {
                    e.quiet.load(Ordering::Relaxed) < FORGET_AFTER_QUIET_TICKS
                        || e.repeats.load(Ordering::Relaxed) > 0
                });
                !serials.is_empty()
            });
        }
        out
    }

    /// Writes one summary line per pair with repeats since the last flush.
    pub fn flush(&self) {
        let interval_secs = self.inner.interval.as_secs_f64();
        for r in self.take_repeats() {
            tracing::info!(
                target: "audit",
                action = "get_certificate_repeats",
                caller = %r.caller,
                serial = %r.serial,
                count = r.count,
                key_returned = r.key_returned,
                interval_secs,
                "certificate delivered again"
            );
        }
    }

    /// Flushes every interval, off the request path, until the handle is aborted.
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.inner.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                this.flush();
            }
        })
    }
}

/// Calls `f` with the caller's label ([`Caller::label`]). An anonymous caller's label is
/// formatted from its IP address; each thread keeps the last one it formatted, so that
/// repeats from one address cost a comparison. `f` must not call this again.
fn with_label<R>(caller: &Caller, f: impl FnOnce(&str) -> R) -> R {
    thread_local! {
        static ANONYMOUS: std::cell::RefCell<Option<(std::net::IpAddr, String)>> =
            const { std::cell::RefCell::new(None) };
    }
    match (caller.names.first(), caller.remote) {
        (Some(name), _) => f(name),
        (None, None) => f(&caller.label()),
        (None, Some(addr)) => ANONYMOUS.with_borrow_mut(|last| {
            let ip = addr.ip();
            match last {
                Some((last_ip, label)) if *last_ip == ip => f(label),
                _ => f(&last.insert((ip, caller.label())).1),
            }
        }),
    }
}

/// [`Caller::label`] without an allocation for a named caller.
fn label(caller: &Caller) -> Cow<'_, str> {
    match caller.names.first() {
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(caller.label()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repeats(caller: &str, serial: &str, count: u64) -> Repeats {
        Repeats {
            caller: caller.into(),
            serial: serial.into(),
            count,
            key_returned: true,
        }
    }

    #[test]
    fn first_hand_out_per_caller_and_serial_then_counts() {
        let a = Audit::new(DEFAULT_INTERVAL);
        assert!(a.record("alice", "01", true));
        assert!(!a.record("alice", "01", true));
        assert!(!a.record("alice", "01", true));
        // Another caller, or another serial, is a first hand-out of its own.
        assert!(a.record("bob", "01", true));
        assert!(a.record("alice", "02", true));
        assert_eq!(a.take_repeats(), vec![repeats("alice", "01", 2)]);
        // Counts restart after each summary.
        assert!(!a.record("bob", "01", true));
        assert_eq!(a.take_repeats(), vec![repeats("bob", "01", 1)]);
        assert!(a.take_repeats().is_empty());
    }

    #[test]
    fn quiet_pairs_are_forgotten_after_two_ticks_and_logged_again() {
        let a = Audit::new(DEFAULT_INTERVAL);
        assert!(a.record("alice", "01", true));
        a.take_repeats(); // quiet 1: still known
        assert!(!a.record("alice", "01", true));
        a.take_repeats(); // had a repeat: quiet 0
        a.take_repeats(); // quiet 1
        a.take_repeats(); // quiet 2: forgotten
        assert!(a.inner.seen.read().unwrap().is_empty());
        assert!(a.record("alice", "01", true));
    }

    #[test]
    fn anonymous_label_is_the_policy_label() {
        let c = Caller {
            names: vec![],
            remote: Some("192.0.2.1:4000".parse().unwrap()),
        };
        assert_eq!(label(&c), c.label());
        let named = Caller {
            names: vec!["signer-a".into()],
            remote: None,
        };
        assert_eq!(label(&named), "signer-a");
    }

    #[test]
    fn the_remembered_anonymous_label_follows_the_address() {
        let from = |addr: &str| Caller {
            names: vec![],
            remote: Some(addr.parse().unwrap()),
        };
        for addr in [
            "192.0.2.1:4000",
            "192.0.2.1:4001",
            "[2001:db8::1]:443",
            "192.0.2.1:4000",
        ] {
            let c = from(addr);
            assert_eq!(with_label(&c, str::to_owned), c.label(), "{addr}");
        }
        let named = Caller {
            names: vec!["signer-a".into()],
            remote: Some("192.0.2.1:4000".parse().unwrap()),
        };
        assert_eq!(with_label(&named, str::to_owned), "signer-a");
        let nowhere = Caller {
            names: vec![],
            remote: None,
        };
        assert_eq!(with_label(&nowhere, str::to_owned), "anonymous");
    }
}
