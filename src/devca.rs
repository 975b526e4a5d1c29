//! TODO module devca
