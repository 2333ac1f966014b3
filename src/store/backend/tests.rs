//! The same test body over every backend.
