//! The Lua scripts that make multi-step updates atomic. Every script touches only keys of
//! one hash tag, so it runs unchanged on Redis Cluster.

use redis::Script;

/// Compiled scripts (their SHA1 is computed once).
pub(super) struct Scripts {
    /// KEYS: cert body, current pointer. ARGV: body, serial, notAfter (Unix seconds).
    /// Writes both, expiring at notAfter.
    pub(super) put: Script,
    /// KEYS: current pointer, cert body. ARGV: serial. Deletes the body, and the pointer
    /// only if it names this serial.
    pub(super) evict: Script,
    /// KEYS: lock. ARGV: token, ttl ms. Extends the lock if the token holds it; 1 or 0.
    pub(super) renew: Script,
    /// KEYS: lock. ARGV: token. Deletes the lock if the token holds it; 1 or 0.
    pub(super) release: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            put: Script::new(
                r"redis.call('SET', KEYS[1], ARGV[1], 'EXAT', ARGV[3])
                  redis.call('SET', KEYS[2], ARGV[2], 'EXAT', ARGV[3])
                  return 1",
            ),
            evict: Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
                  redis.call('DEL', KEYS[2])
                  return 1",
            ),
            renew: Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then
                    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
                  end
                  return 0",
            ),
            release: Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then
                    return redis.call('DEL', KEYS[1])
                  end
                  return 0",
            ),
        }
    }
}
