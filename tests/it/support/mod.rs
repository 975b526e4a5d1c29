//! The test harness shared by every area: a devca and an in-process broker (`common`), the
//! real Pebble ACME server (`pebble`), mTLS test PKI (`pki`) and real `redis-server`
//! processes (`redis`).

pub(crate) mod common;
pub(crate) mod pebble;
pub(crate) mod pki;
pub(crate) mod redis;
