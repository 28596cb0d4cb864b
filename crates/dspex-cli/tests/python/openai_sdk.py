"""The official `openai` Python SDK against `dspex serve` (driven by
crates/dspex-cli/tests/serve.rs, which starts the mock upstream and the real
gateway binary, and creates the keys).

Usage: python openai_sdk.py BASE_URL KEY REVOKED_KEY LIMITED_KEY
  BASE_URL ends in /v1; LIMITED_KEY allows one request per minute.
Exits non-zero, with the failing check, when the SDK sees anything it
should not.
"""

import sys

import openai

base_url, key, revoked_key, limited_key = sys.argv[1:5]
# No retries: a test must see the first answer, not the SDK's third try.
client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)

# A plain chat, through an alias.
reply = client.chat.completions.create(
    model="fast", messages=[{"role": "user", "content": "hello from python"}]
)
assert reply.choices[0].message.content == "echo: hello from python", reply
assert reply.choices[0].finish_reason == "stop", reply
assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens > 0, reply

# The raw response shows the gateway's headers.
raw = client.chat.completions.with_raw_response.create(
    model="fast", messages=[{"role": "user", "content": "headers"}]
)
assert raw.headers["x-dspex-provider"] == "openai", dict(raw.headers)
assert raw.headers["x-dspex-cache"] == "miss", dict(raw.headers)
assert len(raw.headers["x-dspex-correlation-id"]) >= 16

# Streaming, with the usage chunk.
stream = client.chat.completions.create(
    model="fast",
    messages=[{"role": "user", "content": "stream this"}],
    stream=True,
    stream_options={"include_usage": True},
)
text, usage, finish = "", None, None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        text += choice.delta.content or ""
        finish = choice.finish_reason or finish
assert text == "echo: stream this", text
assert finish == "stop", finish
assert usage is not None and usage.completion_tokens > 0, usage

# Tools pass through to an OpenAI-format provider and come back parsed.
tools = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]
reply = client.chat.completions.create(
    model="openai/gpt-4o-mini",
    messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    tools=tools,
)
calls = reply.choices[0].message.tool_calls
assert calls and calls[0].function.name == "get_weather", reply
assert reply.choices[0].finish_reason == "tool_calls", reply

# Unknown fields reach an OpenAI-format provider, not an Anthropic one.
client.chat.completions.create(
    model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "x"}], user="u-1", logit_bias={"1": 1}
)
try:
    client.chat.completions.create(
        model="anthropic/claude-3-5-haiku-latest", messages=[{"role": "user", "content": "x"}], user="u-1"
    )
    raise AssertionError("a field that does not translate was accepted")
except openai.BadRequestError as error:
    assert error.status_code == 400 and "user" in str(error), error

# Embeddings.
embedded = client.embeddings.create(model="text-embedding-3-small", input=["one", "two"])
assert len(embedded.data) == 2 and len(embedded.data[0].embedding) > 0, embedded
assert embedded.usage.prompt_tokens > 0, embedded

# Errors raise the SDK's typed exceptions.
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as error:
    assert error.code == "model_not_found", error

try:
    openai.OpenAI(base_url=base_url, api_key=revoked_key, max_retries=0).chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "x"}]
    )
    raise AssertionError("a revoked key was accepted")
except openai.AuthenticationError as error:
    assert error.status_code == 401 and error.code == "key_revoked", error

limited = openai.OpenAI(base_url=base_url, api_key=limited_key, max_retries=0)
limited.chat.completions.create(model="fast", messages=[{"role": "user", "content": "one"}])
try:
    limited.chat.completions.create(model="fast", messages=[{"role": "user", "content": "two"}])
    raise AssertionError("the key's rate limit let a second request through")
except openai.RateLimitError as error:
    assert error.status_code == 429, error
    assert int(error.response.headers["retry-after"]) >= 1, dict(error.response.headers)

try:
    limited.chat.completions.create(model="anthropic/claude-3-5-haiku-latest", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("a model outside the key's list was accepted")
except openai.PermissionDeniedError as error:
    assert error.status_code == 403 and error.code == "model_not_allowed", error

# The model list shows what the key may use.
ids = [m.id for m in client.models.list()]
assert "fast" in ids and "openai/gpt-4o-mini" in ids, ids
assert [m.id for m in limited.models.list()] == ["fast"]

print("openai SDK: all checks passed")
