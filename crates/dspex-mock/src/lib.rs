//! placeholder until the helper writes the crate
