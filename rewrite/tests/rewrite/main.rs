//! The rewriter through its public API: `cases` (exact additions per dialect and layout, policy,
//! idempotency, undo, bad input), `corpus` (every definition of `tests/corpus`) and `hardening`
//! (issue 12: overflow, BOM, CRLF, malformed XML, damaged records).

mod cases;
mod corpus;
mod hardening;
