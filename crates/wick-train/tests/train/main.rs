//! wick-train's test suite, one binary (one link) with a module per source module.
//!
//! Expected numbers are either worked by hand (the arithmetic is in the comment beside them) or
//! read from `tests/fixtures/*.safetensors`, written by `tests/fixtures/make_fixtures.py` from
//! fastai 2.8 itself; each use quotes the fastai call that produced it. Floats are compared only
//! through `wick_testing::assert_close`.

mod common;
mod determinism;
mod distributed;
mod learner;
mod learner_golden;
mod loss;
mod lr_find;
mod metrics;
mod mixup;
mod optim;
mod output;
mod precision;
mod recipes;
mod resume;
mod schedule;
mod stages;
mod tiny;
