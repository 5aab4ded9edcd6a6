//! The `wick` command-line tool: glue over the wick crates (subcommands arrive with the
//! Learner; see docs/ARCHITECTURE.md).

fn main() {}
