//! TODO module acme
