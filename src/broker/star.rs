//! Short-term certificates from STAR orders (RFC 8739) on the renewal schedule.
//!
//! A certificate whose record names a STAR order ([`crate::cert::StarOrder`]) is renewed
//! differently: while the order runs past the certificate's notAfter, its successor is
//! fetched from the order's star-certificate URL, once the CA has issued it (the CA issues
//! the next one at the latest halfway through the current one's lifetime; the broker asks
//! a margin after that); the last certificate of an order is renewed by placing the next
//! STAR order, when the lifetime fraction says (like any certificate). Both go through the
//! fleet lock, so one replica per fleet does each; the others read the result from the
//! store, and watchers on every replica hear of it.

use std::time::Duration;

use super::schedule;
use crate::store::CertRecord;

/// When and how a STAR certificate is renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StarPlan {
    /// Unix seconds.
    pub(super) due: i64,
    /// True: fetch the successor from the same order; false: place the next STAR order.
    pub(super) fetch: bool,
}

/// The plan for `cert`, `None` when it is not from a STAR order.
pub(super) fn plan(cert: &CertRecord, fraction: f64) -> Option<StarPlan> {
    let star = cert.star.as_ref()?;
    Some(match star.successor_due(cert.not_after) {
        Some(due) => StarPlan { due, fetch: true },
        // The order's last certificate: the next one needs a new order.
        None => StarPlan {
            due: schedule::fraction_due(cert, fraction),
            fetch: false,
        },
    })
}

/// Whether `cert`'s successor can come from its STAR order: the order runs past it.
pub(super) fn continues(cert: &CertRecord) -> bool {
    cert.star
        .as_ref()
        .is_some_and(|s| cert.not_after < s.end_date && super::service::now() < s.end_date)
}

/// The wait before the next try after `failures` consecutive failed successor fetches:
/// short, as the CA is only late; it doubles per failure like any renewal retry, but stays
/// a fraction of the lifetime.
pub(super) fn retry_after(cert: &CertRecord, failures: u32) -> Duration {
    let lifetime = cert.star.as_ref().map_or(60, |s| s.lifetime_secs.max(1));
    let base = Duration::from_millis((lifetime * 1000 / 20).clamp(250, 30_000));
    base * 2u32.saturating_pow(failures.clamp(1, 6) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::StarOrder;

    fn cert(not_before: i64, not_after: i64, end: i64, lifetime: u64) -> CertRecord {
        CertRecord {
            cache_key: "k".into(),
            chain_pem: String::new(),
            chain_der: vec![],
            private_key_pkcs8: None,
            not_before,
            not_after,
            serial_hex: "1".into(),
            fingerprint_hex: "f".into(),
            issuer_ca: "ca".into(),
            issuer_account: "a".into(),
            issued_at: not_before,
            star: Some(Box::new(StarOrder {
                order_url: "https://ca/order/1".into(),
                certificate_url: "https://ca/star/1".into(),
                end_date: end,
                lifetime_secs: lifetime,
            })),
        }
    }

    #[test]
    fn successor_is_fetched_after_half_time_before_expiry() {
        // 10 s certificates: the CA has the next one by 1005; ask at 1007.
        let p = plan(&cert(1000, 1010, 2000, 10), 1.0 / 3.0).unwrap();
        assert_eq!(
            p,
            StarPlan {
                due: 1007,
                fetch: true
            }
        );
        // A day: half-time plus 1 + 1/16 of the lifetime.
        let day = 86_400;
        let p = plan(&cert(0, day, 10 * day, day as u64), 1.0 / 3.0).unwrap();
        assert_eq!(p.due, day / 2 + 1 + day / 16);
        assert!(p.fetch);
        // Never at or past notAfter, however short.
        let p = plan(&cert(1000, 1002, 2000, 2), 1.0 / 3.0).unwrap();
        assert!(p.due < 1002, "{p:?}");
    }

    #[test]
    fn the_last_certificate_of_an_order_is_renewed_by_a_new_order() {
        let p = plan(&cert(1000, 1030, 1030, 30), 1.0 / 3.0).unwrap();
        assert_eq!(
            p,
            StarPlan {
                due: 1020,
                fetch: false
            }
        );
        let mut plain = cert(1000, 1030, 1030, 30);
        plain.star = None;
        assert_eq!(plan(&plain, 1.0 / 3.0), None);
    }

    #[test]
    fn retries_are_a_fraction_of_the_lifetime() {
        let c = cert(1000, 1010, 2000, 10);
        assert_eq!(retry_after(&c, 1), Duration::from_millis(500));
        assert_eq!(retry_after(&c, 2), Duration::from_millis(1000));
        let day = cert(0, 86_400, 864_000, 86_400);
        assert_eq!(retry_after(&day, 1), Duration::from_secs(30));
    }
}
