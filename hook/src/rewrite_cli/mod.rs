//! The `hbm-hook rewrite` front end: a domain definition from a file or stdin, the inventory
//! ([`crate::inventory`]) and the config's defaults into [`hbm_rewrite::rewrite`], the result to
//! a file or stdout. The pure rewriter is the `hbm-rewrite` crate; this folder is only its CLI.

pub mod cli;

pub use cli::{RewriteArgs, RewriteCommandError};
