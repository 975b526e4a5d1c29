//! TODO module ca
