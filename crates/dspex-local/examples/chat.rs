//! One chat turn from the command line: `chat MODEL.gguf "question"`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::sync::atomic::AtomicBool;

use dspex_local::{ChatTurn, GenerateParams, LoadOptions, LocalModel};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: chat MODEL.gguf QUESTION")?;
    let question = args
        .next()
        .unwrap_or_else(|| "What is the capital of France?".into());
    let t = std::time::Instant::now();
    let model = LocalModel::load(path.as_ref(), &LoadOptions::default())?;
    eprintln!("loaded in {:?}: {:?}", t.elapsed(), model.info().name);
    let prompt = model.render_chat(&[ChatTurn::new("user", question)])?;
    let ids = model.tokenize_prompt(&prompt)?;
    let params = GenerateParams {
        max_tokens: std::env::var("MAXTOK")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64),
        ..GenerateParams::default()
    };
    let out = model.generate(&ids, &params, &AtomicBool::new(false), &mut |p| {
        print!("{p}");
        let _ = std::io::stdout().flush();
    })?;
    println!();
    eprintln!(
        "{:?}: {} prompt tokens in {:?}, {} tokens in {:?} ({:.1} tok/s)",
        out.finish,
        out.prompt_tokens,
        out.prompt_time,
        out.completion_tokens,
        out.decode_time,
        out.completion_tokens as f64 / out.decode_time.as_secs_f64()
    );
    Ok(())
}
