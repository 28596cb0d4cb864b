//! Tools an agent can call: a name, a description, a JSON Schema for the
//! arguments and an async function.
//!
//! A tool never crashes the program that calls it. Bad arguments, an error,
//! a panic or a timeout all come back as a [`PromptError`] naming the tool,
//! which [`ReAct`](crate::ReAct) shows the model as the step's observation
//! (the way DSPy does), so the model can correct itself.
//!
//! Typed tools take a `serde::Deserialize` struct whose schema is derived with
//! `schemars`, and return anything `Serialize`:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), dspex_prompt::PromptError> {
//! use dspex_prompt::Tool;
//! use serde_json::json;
//!
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! struct Add {
//!     /// The first term.
//!     a: i64,
//!     /// The second term.
//!     b: i64,
//! }
//!
//! let add = Tool::typed("add", "Adds two integers.", |args: Add| async move {
//!     Ok::<_, std::convert::Infallible>(args.a + args.b)
//! })?;
//! assert_eq!(add.parameters()["required"], json!(["a", "b"]));
//! assert_eq!(add.call(json!({"a": 2, "b": 3})).await?, json!(5));
//! let error = add.call(json!({"a": 2})).await.unwrap_err();
//! assert!(error.to_string().contains("missing field `b`"), "{error}");
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::error::{PromptError, Result};

/// What a tool's function returns: its result as JSON, or an error message.
pub type ToolResult = std::result::Result<Value, String>;

type ToolFn = dyn Fn(Value) -> BoxFuture<'static, ToolResult> + Send + Sync;

/// A tool: a name, a description, a JSON Schema for its arguments and an
/// async function, with a timeout. Cloning shares the function.
#[derive(Clone)]
pub struct Tool {
    name: Arc<str>,
    description: Arc<str>,
    parameters: Arc<Value>,
    timeout: Duration,
    function: Arc<ToolFn>,
}

impl fmt::Debug for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tool")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The name an agent reserves for "I am done".
pub const FINISH_TOOL: &str = "finish";

impl Tool {
    /// How long a call may take unless [`with_timeout`](Self::with_timeout)
    /// says otherwise.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    /// A tool from a JSON Schema (`{"type": "object", ...}`) and a function of
    /// the raw JSON arguments. The name must be 1-64 ASCII letters, digits,
    /// `_` or `-` (what every provider's tool-calling API accepts).
    pub fn new<F, Fut, R, E>(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: Value,
        function: F,
    ) -> Result<Self>
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R, E>> + Send + 'static,
        R: Serialize,
        E: fmt::Display,
    {
        let name = name.into();
        check_name(&name)?;
        let parameters = object_schema(&name, parameters)?;
        let function = Arc::new(move |args: Value| {
            function(args)
                .map(|result| match result {
                    Ok(value) => serde_json::to_value(value).map_err(|e| e.to_string()),
                    Err(error) => Err(error.to_string()),
                })
                .boxed()
        });
        Ok(Self {
            name: Arc::from(name),
            description: Arc::from(description.into()),
            parameters: Arc::new(parameters),
            timeout: Self::DEFAULT_TIMEOUT,
            function,
        })
    }

    /// A typed tool: the arguments are deserialised into `A`, whose JSON
    /// Schema is derived with `schemars`; a doc comment on a field becomes its
    /// description. Arguments that do not deserialise are an error naming the
    /// field, which the model sees.
    pub fn typed<A, F, Fut, R, E>(
        name: impl Into<String>,
        description: impl Into<String>,
        function: F,
    ) -> Result<Self>
    where
        A: DeserializeOwned + schemars::JsonSchema + Send + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R, E>> + Send + 'static,
        R: Serialize + 'static,
        E: fmt::Display + 'static,
    {
        let schema = serde_json::to_value(schemars::schema_for!(A)).map_err(|e| {
            PromptError::InvalidTool {
                tool: String::new(),
                message: format!("its argument schema does not serialise: {e}"),
            }
        })?;
        let function = Arc::new(function);
        Self::new(name, description, schema, move |args: Value| {
            let function = Arc::clone(&function);
            async move {
                let args: A =
                    serde_json::from_value(args).map_err(|e| format!("invalid arguments: {e}"))?;
                function(args)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|value| serde_json::to_value(value).map_err(|e| e.to_string()))
            }
        })
    }

    /// Gives up on a call after `timeout` (the call's future is dropped).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The name the model calls it by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it does, for the model.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The JSON Schema of its arguments (an object schema).
    pub fn parameters(&self) -> &Value {
        &self.parameters
    }

    /// How long a call may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Calls the tool. The arguments must be a JSON object with every
    /// `required` property; an error, a panic or the timeout comes back as
    /// [`PromptError::Tool`] naming the tool. The timeout can only stop a
    /// tool at an `.await`: a tool that blocks its thread should run its
    /// work under `tokio::task::spawn_blocking`.
    pub async fn call(&self, args: Value) -> Result<Value> {
        self.check_arguments(&args)?;
        // The function runs inside the caught future, so a panic while it
        // builds its future is caught as well as one while it runs.
        let function = &self.function;
        let call = AssertUnwindSafe(async move { function(args).await }).catch_unwind();
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(message))) => Err(self.failure(message)),
            Ok(Err(panic)) => {
                Err(self.failure(format!("the tool panicked: {}", panic_text(&*panic))))
            }
            Err(_) => Err(self.failure(format!(
                "timed out after {}",
                humantime::format_duration(self.timeout)
            ))),
        }
    }

    fn failure(&self, message: String) -> PromptError {
        PromptError::Tool {
            tool: self.name.to_string(),
            message,
        }
    }

    /// Checks the shape the schema promises before the function runs: an
    /// object, with every required property. (Typed tools check the rest
    /// when they deserialise.)
    fn check_arguments(&self, args: &Value) -> Result<()> {
        let Value::Object(args) = args else {
            return Err(self.failure(format!(
                "invalid arguments: expected a JSON object, got {}",
                kind_of(args)
            )));
        };
        let missing: Vec<&str> = self
            .parameters
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|name| !args.contains_key(*name))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(self.failure(format!(
                "invalid arguments: missing field{} {}",
                if missing.len() == 1 { "" } else { "s" },
                missing
                    .iter()
                    .map(|name| format!("`{name}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    }

    /// The tool in OpenAI's `tools` format.
    pub fn openai_definition(&self) -> Value {
        json!({
            "type": "function",
            "function": {
                "name": &*self.name,
                "description": &*self.description,
                "parameters": &*self.parameters,
            }
        })
    }

    /// The tool in Anthropic's `tools` format.
    pub fn anthropic_definition(&self) -> Value {
        json!({
            "name": &*self.name,
            "description": &*self.description,
            "input_schema": &*self.parameters,
        })
    }

    /// One line per argument, for prompts of models without tool calling:
    /// the argument schema's `properties` as compact JSON.
    pub fn arguments_summary(&self) -> String {
        self.parameters
            .get("properties")
            .map_or_else(|| "{}".to_owned(), Value::to_string)
    }
}

/// A tool result as the text a model sees: strings as they are, anything
/// else as compact JSON.
pub fn observation_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn check_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(PromptError::InvalidTool {
            tool: name.to_owned(),
            message: "a tool name must be 1-64 ASCII letters, digits, `_` or `-`".to_owned(),
        })
    }
}

/// The schema as providers want it: an object schema, without the
/// `$schema` and `title` keys schema generators add.
fn object_schema(name: &str, parameters: Value) -> Result<Value> {
    let Value::Object(mut schema) = parameters else {
        return Err(PromptError::InvalidTool {
            tool: name.to_owned(),
            message: format!(
                "its parameters must be a JSON Schema object, got {}",
                kind_of(&parameters)
            ),
        });
    };
    schema.remove("$schema");
    schema.remove("title");
    match schema.get("type") {
        None => {
            schema.insert("type".to_owned(), Value::from("object"));
        }
        Some(Value::String(ty)) if ty == "object" => {}
        Some(other) => {
            return Err(PromptError::InvalidTool {
                tool: name.to_owned(),
                message: format!(
                    "its parameters must describe an object (`\"type\": \"object\"`), not {other}"
                ),
            });
        }
    }
    if !schema.contains_key("properties") {
        schema.insert("properties".to_owned(), Value::Object(Map::new()));
    }
    Ok(Value::Object(schema))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct Weather {
        /// The city.
        city: String,
        #[serde(default)]
        celsius: bool,
    }

    fn weather() -> Tool {
        Tool::typed(
            "get_weather",
            "The weather in a city.",
            |args: Weather| async move {
                if args.city == "Atlantis" {
                    return Err(format!("no station in {}", args.city));
                }
                Ok(json!({"city": args.city, "temp": if args.celsius { 21 } else { 70 }}))
            },
        )
        .unwrap()
    }

    #[tokio::test]
    async fn typed_tool_schema_and_calls() {
        let tool = weather();
        let schema = tool.parameters();
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["required"], json!(["city"]));
        assert_eq!(schema["properties"]["city"]["description"], "The city.");
        assert!(schema.get("$schema").is_none() && schema.get("title").is_none());
        assert_eq!(
            tool.call(json!({"city": "Paris", "celsius": true}))
                .await
                .unwrap(),
            json!({"city": "Paris", "temp": 21})
        );
        let failed = tool.call(json!({"city": "Atlantis"})).await.unwrap_err();
        assert_eq!(
            failed.to_string(),
            "tool `get_weather` failed: no station in Atlantis"
        );
        let missing = tool.call(json!({})).await.unwrap_err();
        assert!(
            missing.to_string().contains("missing field `city`"),
            "{missing}"
        );
        let wrong = tool.call(json!({"city": 3})).await.unwrap_err();
        assert!(
            wrong.to_string().contains("invalid type: integer `3`"),
            "{wrong}"
        );
        let not_object = tool.call(json!("Paris")).await.unwrap_err();
        assert!(
            not_object
                .to_string()
                .contains("expected a JSON object, got a string")
        );
        assert_eq!(tool.openai_definition()["function"]["name"], "get_weather");
        assert_eq!(tool.anthropic_definition()["input_schema"], *schema);
    }

    #[tokio::test]
    async fn panics_and_timeouts_are_errors_not_crashes() {
        let panics = Tool::new("boom", "Panics.", json!({}), |_args: Value| async move {
            if true {
                panic!("kaboom");
            }
            Ok::<_, String>(Value::Null)
        })
        .unwrap();
        let error = panics.call(json!({})).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "tool `boom` failed: the tool panicked: kaboom"
        );
        // A panic before the function's future exists is caught too.
        let eager = Tool::new("eager", "Panics at once.", json!({}), |args: Value| {
            let n = args["n"].as_i64().expect("n is a number");
            std::future::ready(Ok::<_, String>(Value::from(n)))
        })
        .unwrap();
        let error = eager.call(json!({})).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "tool `eager` failed: the tool panicked: n is a number"
        );
        let slow = Tool::new("slow", "Sleeps.", json!({}), |_args: Value| async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, String>(Value::Null)
        })
        .unwrap()
        .with_timeout(Duration::from_millis(20));
        let error = slow.call(json!({})).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "tool `slow` failed: timed out after 20ms"
        );
    }

    #[test]
    fn bad_names_and_schemas_are_refused() {
        let ok = |_args: Value| async move { Ok::<_, String>(Value::Null) };
        for name in ["", "has space", &"x".repeat(65)] {
            let error = Tool::new(name, "", json!({}), ok).unwrap_err();
            assert!(error.to_string().contains("1-64 ASCII"), "{error}");
        }
        let error = Tool::new("t", "", json!([]), ok).unwrap_err();
        assert!(error.to_string().contains("got an array"), "{error}");
        let error = Tool::new("t", "", json!({"type": "string"}), ok).unwrap_err();
        assert!(
            error.to_string().contains("must describe an object"),
            "{error}"
        );
        let tool = Tool::new("t", "", json!({}), ok).unwrap();
        assert_eq!(
            tool.parameters(),
            &json!({"type": "object", "properties": {}})
        );
    }
}
