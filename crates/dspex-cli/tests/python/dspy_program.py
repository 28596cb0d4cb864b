"""DSPy itself against `dspex serve`: dspy.Predict and dspy.ChainOfThought
through `dspy.LM("openai/<alias>", api_base=<gateway>/v1, api_key=<virtual
key>)` (driven by crates/dspex-cli/tests/serve.rs, which then checks the
calls in `dspex costs --group-by key`).

Usage: python dspy_program.py BASE_URL KEY
"""

import sys

import dspy

base_url, key = sys.argv[1:3]
lm = dspy.LM("openai/fast", api_base=base_url, api_key=key, cache=False, num_retries=0)
dspy.configure(lm=lm)

predict = dspy.Predict("question -> answer")
result = predict(question="What is the capital of France?")
assert isinstance(result.answer, str) and result.answer, result

class Count(dspy.Signature):
    """Count the words of a sentence."""

    sentence: str = dspy.InputField()
    words: int = dspy.OutputField()

cot = dspy.ChainOfThought(Count)
counted = cot(sentence="the quick brown fox")
assert isinstance(counted.words, int), counted
assert isinstance(counted.reasoning, str) and counted.reasoning, counted

# Every call went through the gateway: DSPy's own history has them.
assert len(lm.history) == 2, len(lm.history)
print("dspy: all checks passed")
