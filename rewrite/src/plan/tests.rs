//! Plans of small definitions, whole: every decision with its exact outcome.
