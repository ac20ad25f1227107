//! Loading real files: every key, layering, error reporting, listeners and provenance.

mod codex;
mod errors;
mod keys;
mod layering;
mod listeners;
mod provenance;
mod rules;
mod support;
