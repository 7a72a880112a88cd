"""Ask agentmesh's three agents questions with the official OpenAI Python client.

Run `agentmesh up` first, ingest the Kubernetes pages and load the Northwind
tables (see the README), then: python examples/quickstart.py

AGENTMESH_URL (default http://127.0.0.1:8080) and AGENTMESH_API_KEY (default:
the admin key that `agentmesh up` saved in .agentmesh/admin.key) say where to go.
"""

import os
import pathlib
import sys

import openai

BASE = os.environ.get("AGENTMESH_URL", "http://127.0.0.1:8080").rstrip("/")
DATA_DIR = pathlib.Path(os.environ.get("AGENTMESH_DATA_DIR", ".agentmesh"))


def api_key() -> str:
    key = os.environ.get("AGENTMESH_API_KEY")
    if key:
        return key
    saved = DATA_DIR / "admin.key"
    if saved.exists():
        return saved.read_text().strip()
    sys.exit("set AGENTMESH_API_KEY (agentmesh up prints the admin key at first start)")


def main() -> None:
    client = openai.OpenAI(base_url=f"{BASE}/v1", api_key=api_key(), max_retries=0)

    models = {m.id: getattr(m, "llm_model", None) for m in client.models.list()}
    print("agents:", models)
    # The mock cannot write SQL and the small local model writes it poorly.
    weak_model = models.get("data") in ("mock-llm", "SmolLM2-135M-Instruct")

    print("\n== chat (with memory) ==")
    first = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "My name is Ada and I run the support team."}],
        extra_body={"conversation_id": "quickstart-demo"},
    )
    print(first.choices[0].message.content)
    stream = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "What is my name?"}],
        extra_body={"conversation_id": "quickstart-demo"},
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()

    print("\n== search (cited answer from the Kubernetes pages) ==")
    answer = client.chat.completions.create(
        model="search",
        messages=[{"role": "user", "content": "My container was OOMKilled with exit code 137. "
                   "Why, and what should I change?"}],
    )
    print(answer.choices[0].message.content)

    print("\n== data (SQL over the Northwind tables) ==")
    # With a weak model the question is the SQL itself; with a real model, plain words.
    question = (
        "SELECT round(sum(unit_price*quantity*(1-discount)), 2) AS revenue FROM order_details"
        if weak_model
        else "What is the total revenue over all order lines, after discounts?"
    )
    stream = client.chat.completions.create(
        model="data", messages=[{"role": "user", "content": question}], stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()

    print("\n== a mistake gets an OpenAI-shaped error ==")
    try:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    except openai.NotFoundError as err:
        print("404:", err.body["message"] if isinstance(err.body, dict) else err)


if __name__ == "__main__":
    main()
