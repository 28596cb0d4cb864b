//! OpenAI replies through the client: byte 0 picks a complete JSON body or an
//! event stream; the rest is what the upstream sends.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [mode, body @ ..] = data else {
        return;
    };
    common::upstream::call("openai", mode & 1 == 1, body);
});
