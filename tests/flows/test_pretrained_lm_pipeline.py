"""`maas pipeline` with a pretrained causal LM as a generation candidate, run as a user runs it:
a subprocess in a throwaway project and MAAS_HOME, then `maas compare` and `maas serve` (plain and streamed /generate).

The candidate is a tiny random Llama built offline in a temp folder, fine-tuned with LoRA;
the GPT beside it gets five steps, so the pretrained LM wins by bits per character.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.e2e.test_readme_commands import new_project, wait_for
from tests.tiny_causal_lm import bbc_text, build_tiny_causal_lm

pytestmark = pytest.mark.slow

PRESET = """extends: tiny
name: llm-smoke
generation:
  candidates:
    gpt:
      training: {{max_steps: 5, eval_every: 5}}
    lstm-lm: {{enabled: false}}
    tiny-llama:
      kind: pretrained_lm
      params: {{model: {model}, block_size: 32, eval_max_chars: 5000, sample_tokens: 20,
               lora: {{r: 8, alpha: 16, dropout: 0.0, target_modules: all-linear}}}}
      training: {{max_steps: 40, batch_size: 8, lr: 5.0e-2, eval_every: 20, eval_batches: 2, num_threads: 1}}
"""


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm-pipeline")
    model = build_tiny_causal_lm(root / "tiny-llama", bbc_text(30))
    project = new_project(root)
    (project.folder / "configs" / "llm-smoke.yaml").write_text(PRESET.format(model=json.dumps(str(model))))
    result = project.maas("pipeline", "-c", "llm-smoke", timeout=1200)
    return project, result


def test_the_pretrained_lm_is_registered_and_ranked_by_bits_per_char(llm_run):
    project, result = llm_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    compared = project.maas("compare", "-c", "llm-smoke", "--json")
    assert compared.returncode == 0, compared.stderr
    rows = {r["candidate"]: r for r in json.loads(compared.stdout) if r["task"] == "generation"}
    assert set(rows) == {"gpt", "tiny-llama"}
    bits = {name: row["val"]["bits_per_char"] for name, row in rows.items()}
    assert all(0 < b < 16 for b in bits.values())
    # With no champion before it, the lower bits per char takes the alias.
    assert [name for name, row in rows.items() if row["alias"] == "champion"] == [min(bits, key=bits.get)]
    assert rows["tiny-llama"]["alias"] == "champion"


def test_the_served_bento_generates_with_the_pretrained_lm(llm_run, tmp_path):
    project, result = llm_run
    assert result.returncode == 0
    with project.serving("serve", log=tmp_path / "serve.log") as (url, process, log):
        deadline = time.monotonic() + 180
        while wait_for(f"{url}/readyz", process, log).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        request = {"prompt": "The company said", "max_new_tokens": 12, "seed": 4}
        answers = [httpx.post(f"{url}/generate", json=request, timeout=60) for _ in range(2)]
        assert all(a.status_code == 200 for a in answers), answers[0].text
        assert answers[0].json()["text"] and answers[0].json()["text"] == answers[1].json()["text"]
        # Streamed: server-sent events, one {"text"} per piece, then {"done"}; the same text.
        streamed = httpx.post(f"{url}/generate", json={**request, "stream": True}, timeout=60)
        assert streamed.headers["content-type"].startswith("text/event-stream"), streamed.text
        events = [
            json.loads(line[len("data: ") :])
            for line in streamed.text.splitlines()
            if line.startswith("data: ")
        ]
        assert events[-1]["done"] is True and len(events) > 2
        assert "".join(e["text"] for e in events[:-1]) == answers[0].json()["text"]
        info = httpx.post(f"{url}/info", json={}, timeout=30).json()
        generator = info["models"]["generator"]
        assert (
            generator["kind"] == "pretrained_lm"
            and answers[0].json()["model_version"] == generator["model_version"]
        )
