"""The official `anthropic` Python SDK against `dspex serve` (driven by
crates/dspex-cli/tests/serve.rs).

Usage: python anthropic_sdk.py GATEWAY_URL KEY REVOKED_KEY
  GATEWAY_URL without /v1 (the SDK adds /v1/messages).
"""

import sys

import anthropic

base_url, key, revoked_key = sys.argv[1:4]
client = anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0)

for model in ["anthropic/claude-3-5-haiku-latest", "fast"]:
    message = client.messages.create(
        model=model,
        max_tokens=64,
        system="be brief",
        messages=[{"role": "user", "content": "hello from python"}],
    )
    assert message.type == "message" and message.role == "assistant", message
    assert message.content[0].type == "text", message
    assert message.content[0].text == "echo: hello from python", message
    assert message.stop_reason == "end_turn", message
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0, message

    # Streaming: the SDK's helper assembles the events into one message.
    with client.messages.stream(
        model=model, max_tokens=64, messages=[{"role": "user", "content": "stream this"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo: stream this", text
    assert final.content[0].text == "echo: stream this", final
    assert final.stop_reason == "end_turn", final
    assert final.usage.output_tokens > 0, final

# Errors raise the SDK's typed exceptions.
try:
    anthropic.Anthropic(base_url=base_url, api_key=revoked_key, max_retries=0).messages.create(
        model="fast", max_tokens=8, messages=[{"role": "user", "content": "x"}]
    )
    raise AssertionError("a revoked key was accepted")
except anthropic.AuthenticationError as error:
    assert error.status_code == 401, error
try:
    client.messages.create(model="fast", max_tokens=8, top_k=3, messages=[{"role": "user", "content": "x"}])
    raise AssertionError("an Anthropic-only field reached an OpenAI provider")
except anthropic.BadRequestError as error:
    assert "top_k" in str(error), error

print("anthropic SDK: all checks passed")
