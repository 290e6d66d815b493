//! What the core integration tests share: the test kit.
#![allow(unused_imports)]

pub use custos_core::testkit::*;
