//! When a certificate is due for renewal: inside the window its CA suggests (ACME Renewal
//! Information, RFC 9773) when the CA gave one, otherwise when a fraction of its lifetime
//! is left.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::RenewalWindow;
use crate::cert::CertRecord;

/// What the CA suggested for one certificate, and when to ask again.
#[derive(Debug, Clone)]
pub(super) struct AriPlan {
    /// Serial of the certificate the plan is about; a plan for another serial is stale.
    pub(super) serial_hex: String,
    /// The window, when the CA suggested a usable one.
    pub(super) window: Option<RenewalWindow>,
    /// When to fetch the window again.
    pub(super) refetch_at: Instant,
}

impl AriPlan {
    /// Whether the plan still speaks for `cert`.
    pub(super) fn is_current(&self, cert: &CertRecord, now: Instant) -> bool {
        self.serial_hex == cert.serial_hex && now < self.refetch_at
    }
}

/// When `cert` is due, Unix seconds: the chosen instant of the plan's window when the plan
/// is about this certificate and has one, else `fraction` of the lifetime before notAfter.
pub(super) fn due_at(cert: &CertRecord, fraction: f64, plan: Option<&AriPlan>) -> i64 {
    plan.filter(|p| p.serial_hex == cert.serial_hex)
        .and_then(|p| p.window.as_ref())
        .map_or_else(|| fraction_due(cert, fraction), |w| time_in_window(w, cert))
}

/// `fraction` of the lifetime before notAfter. The lifetime starts when the broker obtained
/// the certificate, or at notBefore if that is later (CAs backdate notBefore).
pub(super) fn fraction_due(c: &CertRecord, fraction: f64) -> i64 {
    let start = c.not_before.max(c.issued_at);
    let lifetime = (c.not_after - start).max(0) as f64;
    c.not_after - (lifetime * fraction) as i64
}

/// A point inside the window, spread uniformly over certificates (RFC 9773 §4.2 asks for a
/// random time in the window) but drawn from the serial, so that every replica of a fleet
/// picks the same instant and one renewal happens, not one per replica's earliest draw.
/// Never at or after notAfter. A window already over gives a time in the past: renew now.
pub(super) fn time_in_window(w: &RenewalWindow, cert: &CertRecord) -> i64 {
    let digest = Sha256::digest(cert.serial_hex.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    let share = u64::from_be_bytes(head) as f64 / (u64::MAX as f64 + 1.0);
    let span = (w.end - w.start).max(0) as f64;
    let at = w.start + (span * share) as i64;
    at.min(cert.not_after - 1)
}

/// Whether a window the CA suggested can be followed: it must start before the certificate
/// expires (a window after notAfter would let it lapse; the fraction rule applies instead).
pub(super) fn usable_window(w: &RenewalWindow, cert: &CertRecord) -> bool {
    w.start <= w.end && w.start < cert.not_after
}

/// When to ask the CA again after an answer with this `Retry-After`: as asked, but at least
/// a minute (RFC 9773 lets clients raise small values) and at most a day; six hours when the
/// CA did not say.
pub(super) fn refetch_after(retry_after: Option<Duration>) -> Duration {
    retry_after.map_or(DEFAULT_REFETCH, |d| d.clamp(MIN_REFETCH, MAX_REFETCH))
}

/// The interval RFC 9773 gives as an example, used when the CA names none.
const DEFAULT_REFETCH: Duration = Duration::from_secs(6 * 3600);
const MIN_REFETCH: Duration = Duration::from_secs(60);
const MAX_REFETCH: Duration = Duration::from_secs(24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(serial: &str) -> CertRecord {
        CertRecord {
            cache_key: "k".into(),
            chain_pem: String::new(),
            chain_der: vec![],
            private_key_pkcs8: None,
            not_before: 1000,
            not_after: 1300,
            serial_hex: serial.into(),
            fingerprint_hex: "f".into(),
            issuer_ca: "ca".into(),
            issuer_account: "a".into(),
            issued_at: 0,
        }
    }

    fn window(start: i64, end: i64) -> RenewalWindow {
        RenewalWindow {
            start,
            end,
            retry_after: None,
            explanation_url: None,
        }
    }

    #[test]
    fn renews_with_a_third_left() {
        let c = cert("1");
        assert_eq!(fraction_due(&c, 1.0 / 3.0), 1200);
        assert_eq!(fraction_due(&c, 0.5), 1150);
        // A backdated notBefore does not make a fresh certificate look half spent.
        let backdated = CertRecord {
            not_before: 1000 - 300,
            issued_at: 1000,
            ..c
        };
        assert_eq!(fraction_due(&backdated, 1.0 / 3.0), 1200);
    }

    #[test]
    fn window_points_are_inside_stable_and_spread() {
        let w = window(1100, 1160);
        let points: Vec<i64> = (0..200)
            .map(|i| time_in_window(&w, &cert(&format!("{i:x}"))))
            .collect();
        assert!(
            points.iter().all(|p| (1100..1160).contains(p)),
            "{points:?}"
        );
        // Same serial, same instant: every replica agrees.
        assert_eq!(
            time_in_window(&w, &cert("abc")),
            time_in_window(&w, &cert("abc"))
        );
        // Spread over the window, not bunched at one end.
        assert!(points.iter().any(|p| *p < 1120) && points.iter().any(|p| *p >= 1140));
        // Never past notAfter, whatever the CA says.
        assert!(time_in_window(&window(1290, 2000), &cert("1")) < 1300);
    }

    #[test]
    fn the_plan_decides_only_for_its_own_certificate() {
        let c = cert("1");
        let later = Instant::now() + Duration::from_secs(60);
        let plan = AriPlan {
            serial_hex: "1".into(),
            window: Some(window(1100, 1101)),
            refetch_at: later,
        };
        assert_eq!(due_at(&c, 1.0 / 3.0, Some(&plan)), 1100);
        assert!(plan.is_current(&c, Instant::now()));
        assert!(!plan.is_current(&c, later));
        // A plan about the predecessor, or without a window: the fraction rule.
        let other = AriPlan {
            serial_hex: "2".into(),
            ..plan.clone()
        };
        assert_eq!(due_at(&c, 1.0 / 3.0, Some(&other)), 1200);
        assert!(!other.is_current(&c, Instant::now()));
        let none = AriPlan {
            window: None,
            ..plan
        };
        assert_eq!(due_at(&c, 1.0 / 3.0, Some(&none)), 1200);
        assert_eq!(due_at(&c, 1.0 / 3.0, None), 1200);
    }

    #[test]
    fn windows_after_expiry_are_not_followed() {
        let c = cert("1");
        assert!(usable_window(&window(1100, 1200), &c));
        assert!(usable_window(&window(0, 10), &c), "past: renew now");
        assert!(!usable_window(&window(1300, 1400), &c));
        assert!(!usable_window(&window(1200, 1199), &c));
    }

    #[test]
    fn refetch_interval_is_bounded() {
        assert_eq!(refetch_after(None), Duration::from_secs(6 * 3600));
        assert_eq!(
            refetch_after(Some(Duration::from_secs(1))),
            Duration::from_secs(60)
        );
        assert_eq!(
            refetch_after(Some(Duration::from_secs(600))),
            Duration::from_secs(600)
        );
        assert_eq!(
            refetch_after(Some(Duration::from_secs(7 * 86400))),
            Duration::from_secs(86400)
        );
    }
}
