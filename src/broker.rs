//! TODO module broker
