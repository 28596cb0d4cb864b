//! Prints greedy continuation ids and the top logits of the first step, as
//! JSON, for comparison with another implementation:
//! `logits MODEL.gguf keep|slow|all "prompt text" [steps]`.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::indexing_slicing)]

use dspex_local::{LoadOptions, LocalModel, Requantize};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: logits MODEL.gguf keep|slow|all TEXT [STEPS]")?;
    let requantize = match args.next().as_deref() {
        Some("keep") => Requantize::Keep,
        Some("all") => Requantize::AllToQ8_0,
        _ => Requantize::SlowTypes,
    };
    let text = args
        .next()
        .unwrap_or_else(|| "The capital of France is".into());
    let steps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(16);
    let model = LocalModel::load(
        path.as_ref(),
        &LoadOptions {
            context_length: Some(2048),
            requantize,
            ..LoadOptions::default()
        },
    )?;
    let mut ids = model.tokenize_prompt(&text)?;
    let prompt_len = ids.len();
    let mut first_top = Vec::new();
    for step in 0..steps {
        let logits = model.next_token_logits(&ids)?;
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if step == 0 {
            first_top = order.iter().take(10).map(|&i| (i, logits[i])).collect();
        }
        ids.push(order[0] as u32);
    }
    let generated: Vec<u32> = ids[prompt_len..].to_vec();
    println!(
        "{{\"prompt_ids\": {:?}, \"greedy_ids\": {:?}, \"text\": {:?}, \"top10\": [{}]}}",
        &ids[..prompt_len],
        generated,
        model.detokenize(&generated)?,
        first_top
            .iter()
            .map(|(i, l)| format!("[{i}, {l:.4}]"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
