"""RL rollouts on a separate inference server (--rollout_engine http): our server's SGLang-native endpoints
(POST /generate, POST /update_weights_from_disk) over real HTTP, the trainer's client (trainer/rl_utils.py
HttpRollouts), and a GRPO run against the server that equals a local run step for step, with the weights reloaded
by the server after every update. Tiny random models on CPU."""
import math
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers import (SAMPLE, SHARED, TINY, TINY_CFG, StopOn, finish, free_port, serve, spread_weights_,  # noqa: E402
                     start_trainer, tiny_model, train_log)
from model.checkpoint import load_weights  # noqa: E402
from model.generation import generate  # noqa: E402
from model.model_minimind import MiniMindConfig, MiniMindForCausalLM  # noqa: E402
from model.tool_loop import Turn, new_episodes  # noqa: E402
from model.tools import tool_schemas  # noqa: E402
from scripts.serve_openai_api import create_app  # noqa: E402
from trainer.rl_utils import HttpRollouts, LocalRollouts, RolloutServerError, rollout  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
CALC = tool_schemas(["calculate_math"])


@pytest.fixture(scope="module")
def base_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "base_64.pth"
    torch.save(tiny_model(0, initializer_range=0.3).state_dict(), path)
    return path


def served_model(path):
    """The server's model, built and loaded the way scripts/model_loading.py loads a --weight file."""
    return load_weights(MiniMindForCausalLM(MiniMindConfig(**TINY_CFG)), path).eval()


@pytest.fixture
def server(base_weights, tokenizer):
    app = create_app(served_model(base_weights), tokenizer, "tiny", max_seq_len=512, max_batch_size=16)
    with serve(app) as url:
        yield SimpleNamespace(url=url, app=app, engine=app.state.server.engine, model=app.state.server.engine.model)


# ================================================================================================ the endpoints
def test_generate_greedy_equals_local_decoding_and_reports_stop(server, tokenizer):
    prompts = [tokenizer("hello there", add_special_tokens=False).input_ids,
               tokenizer("a longer prompt with several more words", add_special_tokens=False).input_ids]
    r = httpx.post(server.url + "/generate", json={
        "input_ids": prompts, "return_logprob": True,
        "sampling_params": {"max_new_tokens": 12, "temperature": 0, "stop_token_ids": [tokenizer.eos_token_id]}})
    assert r.status_code == 200, r.text
    out = r.json()
    ref = generate(server.model, prompts, max_new_tokens=12, temperature=0, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    for i, o in enumerate(out):
        want = ref.responses[i][ref.response_mask[i].bool()].tolist()
        assert o["output_ids"] == want
        meta = o["meta_info"]
        assert meta["prompt_tokens"] == len(prompts[i]) and meta["completion_tokens"] == len(want)
        assert [t for _, t, _ in meta["output_token_logprobs"]] == want
        assert all(lp <= 0 for lp, _, _ in meta["output_token_logprobs"])
        if want[-1] == tokenizer.eos_token_id:
            assert meta["finish_reason"] == {"type": "stop", "matched": tokenizer.eos_token_id}
        else:
            assert meta["finish_reason"] == {"type": "length", "length": 12}
    # one prompt (a flat list) -> one object, not a list
    single = httpx.post(server.url + "/generate", json={"input_ids": prompts[0], "sampling_params": {
        "max_new_tokens": 12, "temperature": 0}}).json()
    assert single["output_ids"] == out[0]["output_ids"]


def test_generate_seeded_samples_do_not_depend_on_the_batch(server, tokenizer):
    p = tokenizer("once upon a time", add_special_tokens=False).input_ids
    params = {"max_new_tokens": 10, "temperature": 1.0, "sampling_seed": 1234}

    def ask(prompts, sps):
        r = httpx.post(server.url + "/generate", json={"input_ids": prompts, "sampling_params": sps})
        assert r.status_code == 200, r.text
        return [o["output_ids"] for o in r.json()]

    alone = ask([p], [params])[0]
    crowd = ask([p, p[:2], p], [params, {**params, "sampling_seed": 7}, {**params, "sampling_seed": 99}])
    assert crowd[0] == alone  # the same seed: the same tokens, whatever runs beside it
    assert crowd[2] != alone  # another seed draws other tokens (10 random tokens of 6400 never all agree)


def test_update_weights_from_disk_reloads_and_refuses_bad_files(server, tmp_path, tokenizer):
    new = tiny_model(5, initializer_range=0.3)
    path = tmp_path / "synced.pth"
    torch.save(new.state_dict(), path)
    r = httpx.post(server.url + "/update_weights_from_disk", json={"model_path": str(path), "weight_version": "7"})
    assert r.status_code == 200 and r.json()["success"] is True
    assert all(torch.equal(a, b) for a, b in zip(server.model.state_dict().values(), new.state_dict().values()))
    health = httpx.get(server.url + "/health").json()
    assert health["weight_updates"] == 1 and health["weight_version"] == "7"
    # a file that does not fit (strict load) and a missing file: 400, success false, the served weights unchanged
    torch.save({"nope": torch.zeros(1)}, tmp_path / "bad.pth")
    for bad in (tmp_path / "bad.pth", tmp_path / "missing.pth"):
        r = httpx.post(server.url + "/update_weights_from_disk", json={"model_path": str(bad)})
        assert r.status_code == 400 and r.json()["success"] is False and str(bad) in r.json()["message"]
    assert torch.equal(server.model.model.embed_tokens.weight, new.model.embed_tokens.weight)
    # options we do not implement are refused, not ignored
    r = httpx.post(server.url + "/generate", json={"input_ids": [1, 2, 3], "sampling_params": {"stop": ["x"]}})
    assert r.status_code == 400 and "stop" in r.text


# ================================================================================================ the client
def test_http_rollout_equals_local_rollout_with_per_sample_seeds(server, tokenizer, tmp_path):
    """The same seeds drawn from the step's generator: the server's samples are the local engine's, token for
    token, and pack into the same Rollout (sequences, masks, positions, texts)."""
    policy = server.model
    prompts = [tokenizer("hi", add_special_tokens=False).input_ids,
               tokenizer("tell me a story about a cat", add_special_tokens=False).input_ids]
    kw = dict(max_gen_len=10, temperature=1.0, top_p=0.9, num_generations=2)
    local = LocalRollouts(per_sample_seeds=True).rollout(policy, tokenizer, prompts,
                                                         generator=torch.Generator().manual_seed(3), **kw)
    http = HttpRollouts(server.url, tmp_path / "w.pth")
    remote = http.rollout(policy, tokenizer, prompts, generator=torch.Generator().manual_seed(3), **kw)
    for name in ("sequences", "attention_mask", "position_ids", "response_mask"):
        assert torch.equal(getattr(local, name), getattr(remote, name)), name
    assert local.prompt_len == remote.prompt_len and local.responses == remote.responses
    # and the batch-wide generator (the default) samples otherwise: the flag is what makes the two agree
    default = rollout(policy, tokenizer, prompts, generator=torch.Generator().manual_seed(3), **kw)
    assert not torch.equal(default.sequences, local.sequences)


def test_http_rollout_errors_name_the_url_and_the_answer(server, tokenizer, tmp_path):
    gone = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RolloutServerError, match=f"{gone}/generate cannot be reached"):
        HttpRollouts(gone, tmp_path / "w.pth", timeout=5).generate([[1, 2]], [4], 1.0, 1.0, [2], None)
    with pytest.raises(RolloutServerError, match=r"/generate answered 400: .*input_ids\[0\]"):
        HttpRollouts(server.url, tmp_path / "w.pth").generate([[10 ** 6]], [4], 1.0, 1.0, [2], None)
    with pytest.raises(RolloutServerError, match="update_weights_from_disk answered 400: .*does not match"):
        HttpRollouts(server.url, tmp_path / "w.pth").sync(tiny_model(0, hidden_size=32), step=0)


# ================================================================================================ GRPO end to end
def rlaif_data():
    path = SHARED / "mini" / "rlaif.jsonl"
    return path if path.exists() else SAMPLE / "rlaif.jsonl"


def test_grpo_http_rollouts_equal_local_step_for_step(server, base_weights, tmp_path):
    """A GRPO run that samples on our server equals a local one step for step: the same samples (per-sample
    seeds), rewards, losses from the trainer's own log-probs, and the same final weights; the server reloads the
    policy before the first rollout and after every update, and ends serving the trainer's final weights."""
    common = ["--max_gen_len", 12, "--batch_size", 2, "--max_steps", 2, "--temperature", 1.0, "--learning_rate", 1e-3,
              "--max_prompt_len", 64, "--from_weight", base_weights, "--data_path", rlaif_data(),
              "--num_generations", 2, "--reward", "format:1.0,length:0.5", "--length_target", 20,
              "--save_interval", 100]
    runs = [start_trainer("train_grpo.py", *common, "--per_sample_seeds", 1, tmp=tmp_path / "local"),
            start_trainer("train_grpo.py", *common, "--rollout_engine", "http", "--rollout_url", server.url,
                          tmp=tmp_path / "http")]
    for r in runs:
        finish(r, timeout=300)
    local, http = train_log(tmp_path / "local" / "out", "grpo_64"), train_log(tmp_path / "http" / "out", "grpo_64")
    assert [r["step"] for r in local] == [r["step"] for r in http] == [1, 2]
    assert any(r["reward_std"] > 0 for r in local)  # the groups differ: real advantages, real gradients
    for a, b in zip(local, http):
        for key in ("reward", "reward_std", "reward_length", "loss", "kl", "grad_norm", "response_len"):
            assert math.isclose(a[key], b[key], rel_tol=1e-5, abs_tol=1e-7), (a["step"], key, a[key], b[key])
    final = {}
    for name in ("local", "http"):
        final[name] = torch.load(tmp_path / name / "ckpt" / "grpo_64_resume.pth", weights_only=True)["model"]
    for k in final["local"]:
        assert torch.allclose(final["local"][k], final["http"][k], atol=1e-6), k
    # the server loaded: the starting weights, then the weights after step 1 and after step 2
    health = httpx.get(server.url + "/health").json()
    assert health["weight_updates"] == 3 and health["weight_version"] == "2"
    served = server.model.state_dict()
    assert all(torch.equal(served[k], final["http"][k]) for k in served)
    base = torch.load(base_weights, weights_only=True)
    assert not torch.equal(served["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert (tmp_path / "http" / "out" / "rollout" / "grpo_64.pth").is_file()  # the shared sync file


# ================================================================================================ agent episodes
def test_agent_episodes_over_http_equal_local(tokenizer, tmp_path):
    """Agent RL's tool loop over http (a turn at a time, each turn sending the whole context to /generate) plays
    the same episodes as the local loop (one running batch, tool results appended to the live KV cache): the same
    token ids, loss masks and turns, greedy."""
    model = spread_weights_(tiny_model(0), 0.3)  # O(1) logits: varied greedy tokens
    stops = list(range(3, tokenizer.vocab_size, 8))  # turns end after a few tokens, at different steps
    tok = StopOn(tokenizer, stops)
    users = ["What is 834-38*42?", "hi", "Convert 3 km to miles, please.", "Tell me a story about a cat."]
    messages = [[{"role": "user", "content": u}] for u in users]
    tools = [CALC, CALC, None, CALC]
    thinking = [True, False, True, False]

    def parse(text):  # every finished reply is one call, so that every turn goes on
        return Turn(text, [{"name": "calculate_math", "arguments": '{"expression": "1+1"}'}], text=text)

    def run(name, arguments):
        return '{"result": "2"}', True

    kw = dict(max_turns=3, max_new_tokens=10, max_total_len=2048, temperature=0.0, top_p=1.0, generator=None,
              run=run, parse=parse)
    local = LocalRollouts().episodes(model, tok, new_episodes(tokenizer, messages, tools, thinking), **kw)
    app = create_app(model, tokenizer, "tiny", max_seq_len=2048, max_batch_size=8)
    with serve(app) as url:
        remote = HttpRollouts(url, tmp_path / "w.pth").episodes(model, tok, new_episodes(tokenizer, messages, tools,
                                                                                          thinking), **kw)
    for a, b in zip(local, remote):
        assert (a.ids, a.mask) == (b.ids, b.mask)
        assert [asdict(t) for t in a.turns] == [asdict(t) for t in b.turns]
    assert max(len(e.turns) for e in local) == 3 and any(not e.turns[-1].finished for e in local)  # not trivial


# ================================================================================================ SGLang-style sync
def test_transformers_folder_sync_reloads_a_served_export(tokenizer, tmp_path):
    """--rollout_sync_format transformers: the trainer exports its weights as a plain Llama folder (what SGLang's
    /update_weights_from_disk loads) and the server, serving such an export (--load_from), reloads it: afterwards
    the served model computes what the trainer's MiniMind computes, and samples from it."""
    from transformers import AutoModelForCausalLM

    from model.checkpoint import DEFAULT_TOKENIZER
    from scripts.convert_model import torch2transformers
    torch2transformers(tiny_model(0), tmp_path / "served", torch.float32, DEFAULT_TOKENIZER, "llama")
    served = AutoModelForCausalLM.from_pretrained(tmp_path / "served").eval()
    trained = spread_weights_(tiny_model(3), 0.3)
    ids = [[1, 50, 900, 33, 4000]]
    with torch.no_grad():
        assert not torch.allclose(served(torch.tensor(ids)).logits, trained(torch.tensor(ids)).logits, atol=1e-3)
    app = create_app(served, tokenizer, "tiny-llama", max_seq_len=256)
    with serve(app) as url:
        http = HttpRollouts(url, tmp_path / "sync" / "policy.pth",
                            export=["--dtype", "float32", "--tokenizer_path", str(DEFAULT_TOKENIZER), *TINY])
        http.sync(trained, step=4)
        [(out, _)] = http.generate(ids, [6], 0.0, 1.0, [tokenizer.eos_token_id], None)
        assert httpx.get(url + "/health").json()["weight_version"] == "4"
    assert (tmp_path / "sync" / "policy" / "config.json").is_file()
    with torch.no_grad():
        assert torch.allclose(served(torch.tensor(ids)).logits, trained(torch.tensor(ids)).logits, atol=1e-4)
    want = generate(trained, ids, max_new_tokens=6, temperature=0, eos_token_id=tokenizer.eos_token_id)
    assert out == want.responses[0][want.response_mask[0].bool()].tolist()


def test_ppo_spo_and_agent_rl_run_over_http(base_weights, tokenizer, tmp_path):
    """The other RL stages sample on the server too: each run trains its steps, and the server reloads each run's
    weights before its first rollout and after each of its 2 steps (3 reloads a run)."""
    app = create_app(served_model(base_weights), tokenizer, "tiny", max_seq_len=4096, max_batch_size=16)
    fast = ["--max_gen_len", 4, "--batch_size", 2, "--max_steps", 2, "--temperature", 1.0, "--learning_rate", 1e-3,
            "--from_weight", base_weights, "--save_interval", 100]
    stages = {"train_ppo.py": ["--data_path", rlaif_data(), "--max_prompt_len", 64, "--reward", "length:1",
                               "--length_target", 5],
              "train_spo.py": ["--data_path", rlaif_data(), "--max_prompt_len", 64, "--reward", "length:1",
                               "--length_target", 5],
              "train_agent.py": ["--data_path", SAMPLE / "agent_rl.jsonl", "--num_generations", 2, "--max_turns", 2,
                                 "--reward", "unfinished:1,repetition:1"]}
    with serve(app) as url:
        runs = {s: start_trainer(s, *fast, *flags, "--rollout_engine", "http", "--rollout_url", url,
                                 tmp=tmp_path / s) for s, flags in stages.items()}
        for proc in runs.values():
            finish(proc, timeout=300)
        health = httpx.get(url + "/health").json()
    for script, name in (("train_ppo.py", "ppo_actor_64"), ("train_spo.py", "spo_64"), ("train_agent.py", "agent_64")):
        rows = train_log(tmp_path / script / "out", name)
        assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows), (script, rows)
        assert (tmp_path / script / "out" / "rollout" / f"{name}.pth").is_file()
    assert health["weight_updates"] == 3 * len(stages) and health["errors"] == 0
