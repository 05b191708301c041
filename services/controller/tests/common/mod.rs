//! Helpers shared by the controller's integration tests.

pub use tideline_common::testing::wait_until;
