//! TODO module api
