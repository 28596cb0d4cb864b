//! The JSON adapter's reply parser: any reply text, for any signature.
#![no_main]

mod common;

use dspex_prompt::Adapter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| common::check_adapter_parse(Adapter::Json, data));
