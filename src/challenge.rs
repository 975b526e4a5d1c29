//! TODO module challenge
