//! The rewriter through its public API: `cases` (exact additions per dialect and layout, policy,
//! idempotency, undo, bad input) and `corpus` (every definition of `tests/corpus`).

mod cases;
mod corpus;
