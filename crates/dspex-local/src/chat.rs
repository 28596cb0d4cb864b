//! Chat templates: the GGUF's own Jinja template (`tokenizer.chat_template`)
//! rendered with minijinja, or a documented plain template for models that
//! have none.

use minijinja::{Environment, ErrorKind, context};

use crate::error::LocalError;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTurn {
    /// `system`, `user` or `assistant` (passed to the template as is).
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatTurn {
    /// A turn with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The template used when the GGUF has no `tokenizer.chat_template`
/// (base models such as Gemma 3 270M pretrained). A system message becomes
/// a leading paragraph, other turns are `User: ...` / `Assistant: ...`
/// lines, and the generation prompt is a bare `Assistant:`. `bos_token` is
/// prepended when the GGUF asks for a BOS token (`add_bos_token`).
pub const PLAIN_TEMPLATE: &str = "{% if add_bos %}{{ bos_token }}{% endif %}\
{% for m in messages %}\
{% if m.role == 'system' %}{{ m.content }}\n\n\
{% elif m.role == 'user' %}User: {{ m.content }}\n\
{% else %}Assistant: {{ m.content }}\n{% endif %}\
{% endfor %}\
{% if add_generation_prompt %}Assistant:{% endif %}";

const TEMPLATE_NAME: &str = "chat";

/// Instructions one render may execute. The template comes from the GGUF,
/// which may be untrusted: a template that loops (almost) forever gets a
/// typed error instead of holding a generation slot. Real chat templates
/// spend a few dozen instructions per message, so this allows conversations
/// of thousands of turns.
const TEMPLATE_FUEL: u64 = 1_000_000;

/// A compiled chat template and the token texts it may refer to.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    add_bos: bool,
}

fn template_error(e: &minijinja::Error) -> LocalError {
    // minijinja's Display omits the chain; include the detail.
    let mut msg = e.to_string();
    if let Some(detail) = e.detail()
        && !msg.contains(detail)
    {
        msg.push_str(": ");
        msg.push_str(detail);
    }
    LocalError::Template(msg)
}

impl ChatTemplate {
    /// Compiles `source` (or [`PLAIN_TEMPLATE`]).
    pub(crate) fn new(
        source: Option<&str>,
        bos_token: String,
        eos_token: String,
        add_bos: bool,
    ) -> Result<Self, LocalError> {
        let mut env = Environment::new();
        // Hugging Face renders chat templates with trim_blocks and
        // lstrip_blocks; templates are written for that.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(TEMPLATE_FUEL));
        // Python string methods (`.strip()`, `.startswith()`...) that HF
        // templates use.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned(TEMPLATE_NAME, source.unwrap_or(PLAIN_TEMPLATE).to_owned())
            .map_err(|e| template_error(&e))?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
            add_bos,
        })
    }

    /// Renders `messages` with `add_generation_prompt = true`.
    pub(crate) fn render(&self, messages: &[ChatTurn]) -> Result<String, LocalError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| template_error(&e))?;
        let messages: Vec<_> = messages
            .iter()
            .map(|m| context! { role => m.role.as_str(), content => m.content.as_str() })
            .collect();
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
                add_bos => self.add_bos,
            })
            .map_err(|e| template_error(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(source: &str) -> ChatTemplate {
        match ChatTemplate::new(Some(source), "<s>".into(), "</s>".into(), false) {
            Ok(t) => t,
            Err(e) => panic!("template did not compile: {e}"),
        }
    }

    #[test]
    fn a_runaway_template_runs_out_of_fuel() {
        // 10^8 iterations (minijinja caps one range at 10^4 items).
        let t = template(
            "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
        );
        match t.render(&[ChatTurn::new("user", "hi")]) {
            Err(LocalError::Template(msg)) => assert!(msg.contains("fuel"), "{msg}"),
            other => panic!("expected a fuel error, got {other:?}"),
        }
    }

    #[test]
    fn a_long_conversation_fits_in_the_fuel() {
        let t = template(
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
             {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        );
        let turns: Vec<_> = (0..2000)
            .map(|i| ChatTurn::new(if i % 2 == 0 { "user" } else { "assistant" }, "x"))
            .collect();
        match t.render(&turns) {
            Ok(text) => assert_eq!(text.matches("<|im_end|>").count(), 2000),
            Err(e) => panic!("{e}"),
        }
    }
}
