//! `dspex chat`: one protected call.

use std::io::Write;
use std::path::Path;

use dspex::{Message, RequestOptions, StreamEvent};
use futures::StreamExt;

use crate::common::{self, Failure};

#[derive(clap::Args, Debug)]
pub(crate) struct ChatArgs {
    /// The provider id (default: the config's default provider).
    #[arg(long)]
    provider: Option<String>,
    /// The model (default: the provider's).
    #[arg(long)]
    model: Option<String>,
    /// A system message.
    #[arg(long)]
    system: Option<String>,
    /// The most output tokens.
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Sampling temperature.
    #[arg(long)]
    temperature: Option<f32>,
    /// Print the answer as it arrives.
    #[arg(long)]
    stream: bool,
    /// Print the normalised response (with usage and latency) as JSON.
    #[arg(long)]
    json: bool,
    /// The prompt.
    prompt: String,
}

pub(crate) async fn run(config: Option<&Path>, args: ChatArgs) -> Result<(), Failure> {
    let (runtime, provider) = common::runtime_for(config, args.provider.as_deref()).await?;
    let client = runtime.client().clone();
    let result: Result<(), Failure> = async {
        let mut messages = Vec::new();
        if let Some(system) = args.system {
            messages.push(Message::system(system));
        }
        messages.push(Message::user(args.prompt));
        let mut options = RequestOptions::new();
        options.params.model = args.model;
        options.params.max_tokens = args.max_tokens;
        options.params.temperature = args.temperature;
        if !args.stream {
            let response = client.request(&provider, messages, options).await?;
            if args.json {
                common::out(&serde_json::to_string_pretty(&response).map_err(Failure::usage)?);
            } else {
                common::out(response.text());
            }
            return Ok(());
        }
        let mut stream = client.request_stream(&provider, messages, options).await?;
        let mut stdout = std::io::stdout();
        while let Some(event) = stream.next().await {
            match event? {
                StreamEvent::Delta(delta) if !args.json => {
                    let _ = write!(stdout, "{}", delta.content);
                    let _ = stdout.flush();
                }
                StreamEvent::Delta(_) => {}
                StreamEvent::Done(response) => {
                    if args.json {
                        common::out(
                            &serde_json::to_string_pretty(&response).map_err(Failure::usage)?,
                        );
                    } else {
                        let _ = writeln!(stdout);
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    common::finish(runtime, result).await
}
