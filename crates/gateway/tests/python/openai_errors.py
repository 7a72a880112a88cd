"""The official openai client against the gateway: answers and typed errors.

Reads AGENTMESH_URL and the keys from the environment; prints one "ok <check>" line per
check and exits non-zero on the first surprise.
"""

import os
import sys

import openai

BASE = os.environ["AGENTMESH_URL"] + "/v1"


def client(key):
    return openai.OpenAI(base_url=BASE, api_key=key, max_retries=0, timeout=20)


def ask(key, prompt, model="chat", **extra):
    return client(key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], **extra
    )


def expect(error_type, call, check):
    try:
        call()
    except error_type as error:
        body = error.body if isinstance(error.body, dict) else {}
        print("ok", check, error.status_code if hasattr(error, "status_code") else "",
              body.get("code"), flush=True)
        return error
    except Exception as error:  # noqa: BLE001 - report what came instead
        sys.exit(f"{check}: expected {error_type.__name__}, got {type(error).__name__}: {error}")
    sys.exit(f"{check}: expected {error_type.__name__}, got an answer")


def main():
    admin = os.environ["ADMIN_KEY"]

    answer = ask(admin, "hello")
    assert answer.choices[0].message.content == "Hello world", answer
    assert answer.usage.total_tokens == 7, answer.usage
    print("ok completion", flush=True)

    text = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in ask(admin, "hello", stream=True)
        if chunk.choices
    )
    assert text == "Hello world", text
    print("ok stream", flush=True)

    error = expect(openai.AuthenticationError, lambda: ask(os.environ["EXPIRED_KEY"], "hi"),
                   "expired")
    assert "expired" in error.message, error.message
    error = expect(openai.AuthenticationError, lambda: ask(os.environ["REVOKED_KEY"], "hi"),
                   "revoked")
    assert "revoked" in error.message, error.message
    expect(openai.AuthenticationError, lambda: ask("am-not-a-key", "hi"), "unknown")
    expect(openai.PermissionDeniedError, lambda: ask(os.environ["SEARCH_ONLY_KEY"], "hi"),
           "scope")

    limited = os.environ["LIMITED_KEY"]
    ask(limited, "hi")
    error = expect(openai.RateLimitError, lambda: ask(limited, "hi"), "rate_limit")
    retry_after = error.response.headers.get("retry-after")
    assert retry_after is not None and int(retry_after) >= 1, error.response.headers
    assert error.response.headers.get("x-ratelimit-limit-requests") == "1"
    print("ok retry_after", retry_after, flush=True)

    expect(openai.NotFoundError, lambda: ask(admin, "hi", model="poet"), "unknown_model")
    expect(openai.NotFoundError, lambda: client(admin).models.retrieve("gpt-4"),
           "unknown_model_get")
    error = expect(openai.BadRequestError, lambda: client(admin).chat.completions.create(
        model="chat", messages=[]), "empty_messages")
    assert error.body.get("param") == "messages", error.body

    error = expect(openai.InternalServerError, lambda: ask(admin, "fail-early"), "provider")
    assert error.status_code == 502, error.status_code
    assert error.body.get("code") == "provider_auth_failed", error.body

    def read_cut_stream():
        for _ in ask(admin, "fail-mid", stream=True):
            pass

    error = expect(openai.APIError, read_cut_stream, "mid_stream")
    assert "rejected" in error.message, error.message


if __name__ == "__main__":
    main()
