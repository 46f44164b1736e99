"""Drives a running infinihip server with the real `openai` Python client.

Run by tests/openai_client.rs, which starts the server on a loopback port and passes its
address and API key in INFINIHIP_BASE_URL and INFINIHIP_API_KEY. Exits non-zero on the first
failed check, with a message naming it.
"""

import os
import sys

import openai
from openai import OpenAI


def check(condition, what):
    if not condition:
        sys.exit(f"openai client check failed: {what}")


def main():
    base_url = os.environ["INFINIHIP_BASE_URL"]
    api_key = os.environ["INFINIHIP_API_KEY"]
    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)

    models = client.models.list()
    ids = [m.id for m in models.data]
    check(ids == ["SmolLM2-135M-Instruct.Q4_1"], f"models.list() gives the served model, got {ids}")
    model = ids[0]
    check(client.models.retrieve(model).id == model, "models.retrieve() finds the model")

    messages = [{"role": "user", "content": "Name one fruit."}]
    chat = client.chat.completions.create(model=model, messages=messages, max_tokens=8, seed=5)
    reply = chat.choices[0].message
    check(reply.role == "assistant" and isinstance(reply.content, str), f"a chat reply, got {reply}")
    check(chat.choices[0].finish_reason in ("stop", "length"), f"finish_reason, got {chat.choices[0].finish_reason}")
    check(0 < chat.usage.completion_tokens <= 8 and chat.usage.prompt_tokens > 0, f"usage, got {chat.usage}")
    check(chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens, "total_tokens adds up")

    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, seed=5, stream=True, stream_options={"include_usage": True}
    )
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    check("".join(pieces) == reply.content, f"the stream gives the same text: {''.join(pieces)!r} vs {reply.content!r}")
    check(finish == chat.choices[0].finish_reason, "the stream ends with the same finish_reason")
    check(usage is not None and usage.completion_tokens == chat.usage.completion_tokens, f"stream usage, got {usage}")

    completion = client.completions.create(model=model, prompt="The capital of France is", max_tokens=3, temperature=0)
    check(completion.choices[0].text.startswith(" Paris"), f"the completion knows Paris: {completion.choices[0].text!r}")
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=model, prompt="The capital of France is", max_tokens=3, temperature=0, stream=True
        )
        if c.choices
    )
    check(streamed == completion.choices[0].text, f"streamed completion, got {streamed!r}")

    try:
        client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=2)
        check(False, "an unknown model is an error")
    except openai.NotFoundError as e:
        check(e.code == "model_not_found", f"unknown model code, got {e.code}")
    try:
        client.chat.completions.create(model=model, messages=messages, temperature=-1)
        check(False, "a negative temperature is an error")
    except openai.BadRequestError as e:
        check(e.code == "invalid_value" and e.param == "temperature", f"bad temperature, got {e.code} {e.param}")
    try:
        OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
        check(False, "a wrong API key is an error")
    except openai.AuthenticationError as e:
        check(e.code == "invalid_api_key", f"wrong key code, got {e.code}")

    print("openai client: all checks passed")


if __name__ == "__main__":
    main()
