"""Acceptance checks with the official OpenAI Python client against a running gateway.

Expects the Kubernetes pages ingested and the Northwind tables loaded.
Usage: python openai_acceptance.py BASE_URL API_KEY BACKEND(sqlite|postgres)
"""

import json
import sys
import urllib.error
import urllib.request

import openai

base, key, backend = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
MEMORY_PAGES = {
    "tasks__configure-pod-container__assign-memory-resource.md",
    "concepts__configuration__manage-resources-containers.md",
    "tasks__debug__debug-application__determine-reason-pod-failure.md",
    "concepts__scheduling-eviction__node-pressure-eviction.md",
}


def streamed(model, content, **extra):
    text = ""
    for chunk in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], stream=True, **extra
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    return text


ids = sorted(m.id for m in client.models.list())
assert ids == ["chat", "data", "search"], ids

reply = client.chat.completions.create(
    model="chat", messages=[{"role": "user", "content": "hello there"}]
)
assert reply.object == "chat.completion", reply
assert reply.choices[0].message.role == "assistant"
assert reply.choices[0].message.content, reply
assert reply.usage.total_tokens > 0, reply.usage
assert streamed("chat", "hello again"), "empty streamed chat answer"

answer = client.chat.completions.create(
    model="search",
    messages=[{"role": "user", "content": "My container was OOMKilled. Why?"}],
)
text = answer.choices[0].message.content
assert "Sources:" in text, text
assert any(page in text for page in MEMORY_PAGES), text
assert "Sources:" in streamed("search", "container killed for running out of memory")

revenue_sql = (
    "SELECT round(sum(unit_price*quantity*(1-discount))::numeric, 2) FROM order_details"
    if backend == "postgres"
    else "SELECT round(sum(unit_price*quantity*(1-discount)), 2) FROM order_details"
)
data_answer = client.chat.completions.create(
    model="data", messages=[{"role": "user", "content": revenue_sql}]
)
assert "1265793.04" in data_answer.choices[0].message.content, data_answer
assert "1265793.04" in streamed("data", revenue_sql)

try:
    client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as err:
    assert err.status_code == 404

# The dataset query route (no LLM) refuses writes with a 400 in the OpenAI error shape.
request = urllib.request.Request(
    f"{base}/v1/datasets/order_details/query",
    data=json.dumps({"sql": "DELETE FROM order_details"}).encode(),
    headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
)
try:
    urllib.request.urlopen(request)
    raise AssertionError("DELETE accepted")
except urllib.error.HTTPError as err:
    assert err.code == 400, err.code
    error = json.loads(err.read())["error"]
    assert set(error) >= {"message", "type", "code", "param"}, error

bad = openai.OpenAI(base_url=f"{base}/v1", api_key="am-not-a-key", max_retries=0)
try:
    bad.models.list()
    raise AssertionError("unknown key accepted")
except openai.AuthenticationError as err:
    assert err.status_code == 401

print("openai acceptance: all checks passed")
