//! Table-driven tests: one `check` helper per file, one line per case.

mod bypass;
mod decide;
mod local;
mod patterns;
mod props;
mod rules;
mod target;
