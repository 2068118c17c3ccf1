//! Shared helpers for Hazel's end-to-end tests.
