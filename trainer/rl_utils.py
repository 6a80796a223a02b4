"""What the RL stages (PPO, GRPO, SPO and agentic RL) share, written once: prompts, rollouts, rewards and the RL math.
Each script writes its own loop (prompts -> rollout -> reward -> advantage -> loss -> step -> log -> save) with
these pieces and the generic ones in trainer_utils.py (Batches, optimizer_step, save_checkpoint, TrainLogger...).

  flags       `add_rl_args` (rollout and reward flags, --max_prompt_len), `check_rl_args` -> the reward terms
  prompts     `RLPromptDataset` (RLAIFDataset + prompt index + chat messages), `collate_prompts`
  rollout     `rollout`: batched left-padded sampling with a KV cache (model/generation.py) -> `Rollout`;
              `token_logps`: per-token log-probs of the response tokens under a model, with or without grad;
              `step_generator`: the sampling RNG of one (seed, rank, step), so a resumed run samples the same
  engines     `make_rollout_engine` (--rollout_engine): `LocalRollouts` (the above, in this process) or
              `HttpRollouts` (an inference server speaking SGLang's native /generate: ours or SGLang; the weights
              are synced to it after each update through a shared file and /update_weights_from_disk)
  rewards     rule rewards (think/answer format, length penalty, GSM8K exact answer), a reward model
              (InternLM2-style `get_score` or any AutoModelForSequenceClassification), combined by weights:
              `--reward model:1.0,format:0.5,length:0.1`; `reward_metrics`: the reward columns every stage logs
  RL math     KL estimators k1/k3, GAE, group-normalised advantages, clipped policy and value losses,
              CISPO's clipped-weight policy loss, the GRPO / DAPO / Dr.GRPO / CISPO loss normalisations;
              `add_clip_args` (--clip_epsilon, --clip_epsilon_high and upstream's --epsilon / --epsilon_high)
  runs        `all_gather_cat` (batch-wide statistics under DDP)

Every function here is plain tensor code with the shapes in its docstring, so tests/test_rl.py checks each
one on hand values.
"""
import argparse
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dataset.lm_dataset import DataFormatError, RLAIFDataset, probability  # noqa: E402
from model.atomic_io import atomic_save  # noqa: E402
from model.chat_template import template_default  # noqa: E402
from model.checkpoint import WeightLoadError  # noqa: E402
from model.config_flags import SIZE_FLAGS  # noqa: E402
from model.errors import UserError  # noqa: E402
from model.generation import Sampling, generate, left_pad  # noqa: E402
from model.runtime import unwrap  # noqa: E402
from model.tool_loop import run_episodes, run_episodes_by_turns  # noqa: E402
from model.scoring import answer_fraction, final_number, gold_number, same_number  # noqa: E402

# Upstream keeps the InternLM2 reward model as a sibling of the repository (../internlm2-1_8b-reward).
DEFAULT_REWARD_MODEL = ROOT.parent / "internlm2-1_8b-reward"
REWARD_NAMES = ("model", "format", "length", "gsm8k")
ROLLOUT_ENGINES = ("local", "http")
# CISPO's default weight cap, 1 + CISPO_EPS_HIGH = 5: upstream's --epsilon_high 5.0. The cap only bounds the
# variance that stale samples (--num_iterations > 1) add; it is not a trust region like PPO's clip.
CISPO_EPS_HIGH = 4.0


# ================================================================================================================
# Arguments
# ================================================================================================================
def add_rl_args(parser, *, max_prompt_len=256, max_gen_len=1536, temperature=0.8, reward="model",
                reward_help: Optional[str] = None, kl_beta: Optional[float] = None, total_clip: float = 0.0,
                minimind3_thinking_ratio: float = 0.9):
    """Rollout and reward flags shared by ppo / grpo / spo / agent (the algorithm's own flags stay in its script).
    `reward_help` replaces the --reward help for a stage with other reward terms (train_agent.py); `kl_beta`
    adds --beta with that default (the stages with a k3 KL penalty to the reference: grpo, spo, agent);
    `minimind3_thinking_ratio`: the stage's --thinking_ratio with upstream minimind-3's template (upstream's
    value; read it with `thinking_ratio`)."""
    p = parser
    p.add_argument("--thinking_ratio", type=probability, default=None,
                   help=f"share of prompts rendered with the template's thinking switch on, drawn per prompt "
                        f"(default: {minimind3_thinking_ratio:g} with upstream minimind-3's open_thinking template, "
                        f"as upstream; 1.0 with ours, whose template then shows the plain header the SFT data had)")
    p.set_defaults(minimind3_thinking_ratio=minimind3_thinking_ratio)  # not a flag: the stage's upstream value
    if kl_beta is not None:
        p.add_argument("--beta", type=float, default=kl_beta, help="weight of the k3 KL to the reference model")
    # In the RL stages the sequence is prompt + response, with two separate budgets. Upstream's RL scripts call
    # the prompt budget --max_seq_len, so that spelling stays an alias of the same flag.
    p.add_argument("--max_prompt_len", "--max_seq_len", dest="max_prompt_len", type=int, default=max_prompt_len,
                   help="prompt tokens kept (a longer prompt keeps its end: the question and the assistant "
                        "header); alias: --max_seq_len, upstream's name")
    p.add_argument("--max_gen_len", type=int, default=max_gen_len, help="max new tokens per response")
    p.add_argument("--temperature", type=float, default=temperature, help="sampling temperature of rollouts")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling for rollouts (1 = off)")
    p.add_argument("--reward", type=str, default=reward,
                   help=reward_help or "weighted reward terms, e.g. 'model:1.0,format:0.5,length:0.1'; terms: "
                        "model (reward model), format (<think>..</think><answer>..</answer>), "
                        "length (penalty beyond --length_target characters), gsm8k (exact final answer)")
    p.add_argument("--reward_model_path", type=str, default=str(DEFAULT_REWARD_MODEL),
                   help="reward model folder: InternLM2-style (get_score, trust_remote_code) or any "
                        "AutoModelForSequenceClassification")
    p.add_argument("--reward_clip", type=float, default=3.0, help="reward-model scores are clipped to +-this")
    p.add_argument("--reward_total_clip", type=float, default=total_clip,
                   help="the weighted sum of the terms is clipped to +-this (0 = no clip)")
    p.add_argument("--reward_batch_size", type=int, default=8, help="conversations per reward-model forward")
    p.add_argument("--length_target", type=int, default=512,
                   help="length term: 0 up to this many characters, falling linearly to -1 at twice as many")
    p.add_argument("--rollout_engine", type=str, default="local", choices=ROLLOUT_ENGINES,
                   help="local: sample in this process; http: on an inference server speaking SGLang's native API "
                        "(scripts/serve_openai_api.py or SGLang), weights synced after each update")
    p.add_argument("--rollout_url", type=str, default="http://127.0.0.1:8998",
                   help="--rollout_engine http: the server's base URL (POST /generate, /update_weights_from_disk)")
    p.add_argument("--rollout_sync_path", type=str, default=None,
                   help="--rollout_engine http: where the policy's weights are written for the server to load "
                        "(a path the server can read; default {save_dir}/rollout/{stage}_{hidden}.pth)")
    p.add_argument("--rollout_sync_format", type=str, default="pth", choices=["pth", "transformers"],
                   help="--rollout_engine http: what the server loads: pth (our server serving native weights) or "
                        "transformers (a plain Llama / Qwen3 folder beside the .pth, exported by "
                        "scripts/convert_model.py torch2transformers: what SGLang, or our server started with "
                        "--load_from on such a folder, reloads)")
    p.add_argument("--rollout_timeout", type=float, default=600.0, help="seconds to wait for one server answer")
    p.add_argument("--per_sample_seeds", type=int, default=0, choices=[0, 1],
                   help="1: every sample draws from its own generator, seeded from the step's (what --rollout_engine "
                        "http always does), so a local run samples what an http run samples and a sample does not "
                        "depend on the rest of the batch; costs one sampling call per row per token (PPO/GRPO/SPO)")
    p.add_argument("--rollout_api_key", type=str, default=None, help="sent as 'Authorization: Bearer KEY'")
    return p


def check_rl_args(parser, args, reward_names: Sequence[str] = REWARD_NAMES) -> List[Tuple[str, float]]:
    """Flag combinations that cannot work, reported through argparse (usage line + one error); returns the
    parsed --reward terms, e.g. [("model", 1.0), ("format", 0.5)], each one of `reward_names`."""
    try:
        reward_terms = parse_reward_spec(args.reward, reward_names)
    except ValueError as e:
        parser.error(str(e))
    if args.max_prompt_len < 0:
        parser.error("--max_prompt_len must be >= 0 (0 = keep whole prompts)")
    if args.max_gen_len < 1:
        parser.error("--max_gen_len must be >= 1")
    if args.temperature <= 0:
        parser.error("--temperature must be > 0 for on-policy RL (greedy rollouts have no exploration and no "
                     "well-defined log-probabilities)")
    return reward_terms


# ================================================================================================================
# Prompts
# ================================================================================================================
def thinking_ratio(args, tokenizer) -> float:
    """--thinking_ratio, or when unset the stage's upstream value with upstream minimind-3's template (which
    always renders a <think> block, open or pre-filled empty) and 1.0 with ours (thinking on renders the plain
    assistant header: what our SFT data, the evals and the server show the model)."""
    if args.thinking_ratio is not None:
        return args.thinking_ratio
    return template_default(tokenizer, args.minimind3_thinking_ratio, 1.0)


CHATML_TURN = re.compile(r"<\|im_start\|>(system|user|assistant|tool)\n(.*?)<\|im_end\|>", re.S)


def chatml_messages(prompt: str) -> List[dict]:
    """The rendered ChatML prompt -> [{"role", "content"}] (what a reward model with its own template needs)."""
    return [{"role": r, "content": c.strip()} for r, c in CHATML_TURN.findall(prompt)]


class RLPromptDataset(RLAIFDataset):
    """RLAIFDataset (prompt text, prompt token ids cut to `max_length`, answer) plus the prompt's index (SPO keeps
    a value per prompt) and its chat messages (what a reward model scores)."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        item["index"] = i
        item["messages"] = chatml_messages(item["prompt"])
        return item


def collate_prompts(batch: List[dict]) -> dict:
    """Prompts stay lists (of strings / token-id lists): the rollout pads them itself, left-aligned."""
    return {"prompt_ids": [b["prompt_ids"] for b in batch],
            "answer": [b["answer"] for b in batch], "messages": [b["messages"] for b in batch],
            "index": torch.tensor([b["index"] for b in batch])}


# ================================================================================================================
# Rollout
# ================================================================================================================
@dataclass
class Rollout:
    sequences: torch.Tensor       # (B, P + N) left-padded prompt + response (pad after EOS)
    attention_mask: torch.Tensor  # (B, P + N) 1 = real token
    position_ids: torch.Tensor    # (B, P + N) positions counting real tokens only (left padding -> 0)
    response_mask: torch.Tensor   # (B, N) float, 1 for response tokens up to and including EOS
    prompt_len: int               # P
    responses: List[str]          # decoded responses (special tokens removed)

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Left padding: positions count real tokens, so a padded prompt sees the same RoPE angles as unpadded."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def token_logps(model, sequences, attention_mask, position_ids, n_response: int, temperature: float = 1.0,
                with_aux: bool = False):
    """log p(token) of the last `n_response` tokens of each row, (B, N), float32 (and the MoE balance loss
    with `with_aux=True`).

    Only the logits that predict response tokens are computed (`logits_to_keep`), and log-softmax is done as
    `logit[token] - logsumexp(logits)` so no (B, N, V) log-prob tensor is materialised. Gradients flow when
    called outside `no_grad`. `temperature` must be the sampling temperature, so that the ratio
    pi_new / pi_old and the KL refer to the distribution the tokens were drawn from.
    """
    # An all-ones mask carries no information: drop it so attention keeps its causal fast path.
    mask = attention_mask if bool((attention_mask == 0).any()) else None
    out = model(input_ids=sequences, attention_mask=mask, position_ids=position_ids, logits_to_keep=n_response + 1)
    logits = out.logits[:, :-1].float()  # position t predicts token t + 1
    if temperature != 1.0:
        logits = logits / temperature
    targets = sequences[:, -n_response:]
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    logps = picked - torch.logsumexp(logits, dim=-1)
    return (logps, out.aux_loss) if with_aux else logps


def step_generator(seed: int, rank: int, step: int, device="cpu") -> torch.Generator:
    """A random stream owned by (seed, rank, optimizer step): rollouts and mini-batch orders drawn from it are
    the same whether or not the run was interrupted and resumed, and differ between ranks."""
    g = torch.Generator(device=device)
    g.manual_seed(((seed * 1_000_003 + rank) * 1_000_003 + step) % (2 ** 63))
    return g


def sample_seeds(generator: torch.Generator, n: int) -> List[int]:
    """One seed per sample, drawn from the step's generator (--per_sample_seeds 1 locally; always over http)."""
    return torch.randint(0, 2 ** 31 - 1, (n,), generator=generator, device=generator.device).tolist()


def rollout(model, tokenizer, prompts: Sequence, max_gen_len: int, temperature: float = 1.0,
            top_p: float = 1.0, max_prompt_len: Optional[int] = None, num_generations: int = 1,
            autocast=None, generator: Optional[torch.Generator] = None, per_sample_seeds: bool = False) -> Rollout:
    """Sample `num_generations` responses per prompt (consecutive rows), batched and left-padded.

    `prompts` are token-id lists (RLAIFDataset's "prompt_ids", already cut to the prompt budget) or texts
    (tokenized here); `max_prompt_len` keeps the last tokens of each. Generation runs on the plain module
    (`unwrap`: no DDP hooks) in eval mode and under inference mode (model/generation.py: batched, KV cache); the
    model is put back in train mode afterwards. Tensors are cloned out of inference mode so the training forward
    can use them in autograd. `per_sample_seeds`: each row samples from its own generator, seeded by
    `sample_seeds(generator)`, as HttpRollouts asks the server to (the same samples on either engine).
    """
    policy = unwrap(model)
    ids = [tokenizer(p, add_special_tokens=False).input_ids if isinstance(p, str) else list(p) for p in prompts]
    if max_prompt_len:
        ids = [x[-max_prompt_len:] for x in ids]  # keep the end: the question and the assistant header
    ids = [x for x in ids for _ in range(num_generations)]
    if per_sample_seeds and generator is not None and temperature > 0:
        device = next(policy.parameters()).device
        generator = [torch.Generator(device).manual_seed(s) for s in sample_seeds(generator, len(ids))]
    was_training = policy.training
    policy.eval()
    try:
        with autocast if autocast is not None else nullcontext():
            out = generate(policy, ids, max_new_tokens=max_gen_len, temperature=temperature, top_p=top_p,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                           generator=generator)
    finally:
        policy.train(was_training)
    sequences, attention_mask = out.sequences.clone(), out.attention_mask.clone()
    response_mask = out.response_mask.clone().float()
    responses = tokenizer.batch_decode(sequences[:, out.prompt_len:].tolist(), skip_special_tokens=True)
    return Rollout(sequences=sequences, attention_mask=attention_mask,
                   position_ids=position_ids_from_mask(attention_mask), response_mask=response_mask,
                   prompt_len=out.prompt_len, responses=responses)


def pack_rollout(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], tokenizer, device) -> Rollout:
    """Prompt and response token lists -> a Rollout laid out exactly as `rollout` lays out `generate()`'s output:
    left-padded prompts, responses padded after their last token (EOS included) to the longest one."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, mask = left_pad(prompts, pad, device)
    n = max(len(r) for r in responses) if responses else 0
    resp = torch.full((len(responses), n), pad, dtype=torch.long)
    resp_mask = torch.zeros((len(responses), n), dtype=torch.long)
    for i, r in enumerate(responses):
        resp[i, :len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        resp_mask[i, :len(r)] = 1
    resp, resp_mask = resp.to(device), resp_mask.to(device)
    attention_mask = torch.cat([mask, resp_mask], 1)
    return Rollout(sequences=torch.cat([ids, resp], 1), attention_mask=attention_mask,
                   position_ids=position_ids_from_mask(attention_mask), response_mask=resp_mask.float(),
                   prompt_len=ids.shape[1],
                   responses=tokenizer.batch_decode(resp.tolist(), skip_special_tokens=True))


def stop_ids(tokenizer) -> List[int]:
    """The tokenizer's EOS as a list of stop ids (model/generation.py takes an id or a list)."""
    eos = tokenizer.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


class RolloutServerError(UserError):
    """The rollout server cannot be reached or refused a request (the message names the URL and its answer)."""


class LocalRollouts:
    """--rollout_engine local: the policy samples in the training process (model/generation.py), today's path.

    Every RL stage samples through one of these two engines: `rollout` (text RL: PPO, GRPO, SPO) and `episodes`
    (agent RL: multi-turn tool episodes); `sync` hands the policy's new weights to the sampler after an update."""

    def __init__(self, per_sample_seeds: bool = False):
        self.per_sample_seeds = per_sample_seeds

    def sync(self, model, step: int):
        """Nothing to do: the sampler is the training model itself."""

    def rollout(self, model, tokenizer, prompts, max_gen_len: int, temperature: float = 1.0, top_p: float = 1.0,
                num_generations: int = 1, autocast=None, generator: Optional[torch.Generator] = None) -> Rollout:
        return rollout(model, tokenizer, prompts, max_gen_len, temperature, top_p, num_generations=num_generations,
                       autocast=autocast, generator=generator, per_sample_seeds=self.per_sample_seeds)

    def episodes(self, model, tokenizer, episodes, *, max_turns: int, max_new_tokens: int, max_total_len: int,
                 temperature: float, top_p: float, generator: Optional[torch.Generator], autocast=None, **loop):
        """Play tool episodes (model/tool_loop.py); `loop`: its `run` (the tools) and `parse` hooks."""
        return run_episodes(unwrap(model), tokenizer, episodes, max_turns=max_turns, max_new_tokens=max_new_tokens,
                            max_total_len=max_total_len, autocast=autocast,
                            sampling=Sampling(temperature, top_p, generator=generator), **loop)


class HttpRollouts(LocalRollouts):
    """--rollout_engine http: the samples come from an inference server that speaks SGLang's native API, i.e.
    scripts/serve_openai_api.py (any machine, CPU included) or an SGLang server.

      rollout   POST /generate with the prompts as token ids (input_ids; each of the G samples of a prompt is its
                own entry) and sampling_params (max_new_tokens, temperature, top_p, stop_token_ids = EOS, and a
                sampling_seed per entry drawn from the step's generator, so a resumed run asks for the same samples)
                -> output_ids, packed into the same Rollout as a local one (`pack_rollout`)
      episodes  the agent loop a turn at a time (model/tool_loop.py run_episodes_by_turns): each turn sends the
                whole context of every open episode
      sync      rank 0 writes the policy's state dict (the training dtype, .pth, atomically) to the shared path,
                then POST /update_weights_from_disk {"model_path", "weight_version": step}; the other ranks wait at a
                barrier, so no rank samples from stale weights

    The log-probs that the losses use are always recomputed by the training model (`token_logps`), so the
    importance ratios are the trainer's (the server is not asked for its own).
    """

    def __init__(self, url: str, sync_path, timeout: float = 600.0, api_key: Optional[str] = None,
                 is_main: bool = True, log=print, export: Optional[List[str]] = None):
        import httpx
        super().__init__(per_sample_seeds=True)
        # export: the scripts/convert_model.py torch2transformers flags (size, tokenizer) when the server reloads a
        # transformers folder (--rollout_sync_format transformers); None: it loads the .pth itself
        self.export = export
        self.url, self.sync_path, self.is_main, self.log = url.rstrip("/"), Path(sync_path).resolve(), is_main, log
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers, trust_env=False)
        self.timeout, self.synced_step = timeout, None
        self.stats = {"requests": 0, "tokens": 0, "generate_s": 0.0, "syncs": 0, "sync_s": 0.0}

    def post(self, path: str, body: dict):
        import httpx
        url = self.url + path
        try:
            r = self.client.post(url, json=body)
        except httpx.TimeoutException:
            raise RolloutServerError(f"rollout server {url}: no answer within {self.timeout:g} s "
                                     f"(--rollout_timeout)") from None
        except httpx.HTTPError as e:
            raise RolloutServerError(f"rollout server {url} cannot be reached ({type(e).__name__}: {e}); start "
                                     f"one (scripts/serve_openai_api.py, or SGLang) or fix --rollout_url") from None
        if r.status_code != 200:
            raise RolloutServerError(f"rollout server {url} answered {r.status_code}: {r.text[:500]}")
        try:
            return r.json()
        except ValueError:
            raise RolloutServerError(f"rollout server {url} answered 200 with a body that is not JSON: "
                                     f"{r.text[:200]!r}") from None

    def sync(self, model, step: int):
        if self.synced_step == step:
            return
        t0 = time.perf_counter()
        if self.is_main:
            atomic_save({k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}, self.sync_path)
            target = self.sync_path if self.export is None else self.export_folder()
            answer = self.post("/update_weights_from_disk", {"model_path": str(target), "weight_version": str(step)})
            if isinstance(answer, dict) and answer.get("success") is False:
                raise RolloutServerError(f"rollout server {self.url}/update_weights_from_disk refused "
                                         f"{target}: {answer.get('message')}")
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        self.synced_step = step
        self.stats["syncs"] += 1
        self.stats["sync_s"] += time.perf_counter() - t0

    def export_folder(self) -> Path:
        """The synced .pth as a plain transformers folder (Llama / Qwen3), written by scripts/convert_model.py in a
        child process (the one converter; trainer/ does not import scripts/). The folder is swapped in whole."""
        import subprocess
        folder = self.sync_path.with_suffix("")
        cmd = [sys.executable, str(ROOT / "scripts" / "convert_model.py"), "torch2transformers", "--pth",
               str(self.sync_path), "--out_dir", str(folder), *self.export]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RolloutServerError(f"--rollout_sync_format transformers: exporting {self.sync_path} failed:\n"
                                     f"{(done.stderr or done.stdout)[-1500:]}")
        return folder

    def generate(self, contexts: List[List[int]], budgets: List[int], temperature: float, top_p: float,
                 stop_ids: List[int], generator: Optional[torch.Generator]):
        """One /generate call -> [(output ids with the stop token, whether a stop token ended them)]."""
        seeds = [None] * len(contexts)
        if temperature > 0 and generator is not None:
            seeds = sample_seeds(generator, len(contexts))
        params = [{"max_new_tokens": b, "temperature": temperature, "top_p": top_p, "stop_token_ids": stop_ids,
                   "skip_special_tokens": False, **({} if seed is None else {"sampling_seed": seed})}
                  for b, seed in zip(budgets, seeds)]
        t0 = time.perf_counter()
        answer = self.post("/generate", {"input_ids": [list(c) for c in contexts], "sampling_params": params})
        self.stats["generate_s"] += time.perf_counter() - t0
        if not isinstance(answer, list) or len(answer) != len(contexts):
            raise RolloutServerError(f"rollout server {self.url}/generate: expected a list of {len(contexts)} "
                                     f"outputs, got {str(answer)[:200]}")
        out = []
        for a in answer:
            ids, meta = list(a.get("output_ids") or []), a.get("meta_info") or {}
            finish = meta.get("finish_reason") or {}
            stopped = finish.get("type") == "stop"
            matched = finish.get("matched")
            if stopped and isinstance(matched, int) and (not ids or ids[-1] != matched):
                ids.append(matched)  # a server that leaves the matched stop token out of output_ids
            out.append((ids, stopped))
            self.stats["tokens"] += len(ids)
        self.stats["requests"] += len(contexts)
        return out

    def rollout(self, model, tokenizer, prompts, max_gen_len: int, temperature: float = 1.0, top_p: float = 1.0,
                num_generations: int = 1, autocast=None, generator: Optional[torch.Generator] = None) -> Rollout:
        ids = [tokenizer(p, add_special_tokens=False).input_ids if isinstance(p, str) else list(p) for p in prompts]
        ids = [x for x in ids for _ in range(num_generations)]
        outs = self.generate(ids, [max_gen_len] * len(ids), temperature, top_p, stop_ids(tokenizer), generator)
        device = next(unwrap(model).parameters()).device
        return pack_rollout(ids, [o[0][:max_gen_len] for o in outs], tokenizer, device)

    def episodes(self, model, tokenizer, episodes, *, max_turns: int, max_new_tokens: int, max_total_len: int,
                 temperature: float, top_p: float, generator: Optional[torch.Generator], autocast=None, **loop):
        def generate_turns(contexts, budgets):
            return self.generate(contexts, budgets, temperature, top_p, stop_ids(tokenizer), generator)
        return run_episodes_by_turns(tokenizer, episodes, generate_turns, max_turns=max_turns,
                                     max_new_tokens=max_new_tokens, max_total_len=max_total_len, **loop)


def make_rollout_engine(args, save_name: str, is_main: bool = True, log=print) -> LocalRollouts:
    """The --rollout_engine of a run: LocalRollouts, or HttpRollouts writing its weights to --rollout_sync_path
    (default {save_dir}/rollout/{save_name}.pth)."""
    if args.rollout_engine == "local":
        return LocalRollouts(bool(args.per_sample_seeds))
    path = args.rollout_sync_path or Path(args.save_dir) / "rollout" / f"{save_name}.pth"
    export = None
    if args.rollout_sync_format == "transformers":
        # the run's own size flags and tokenizer; float32 keeps the synced weights exact (the server may cast)
        export = ["--dtype", "float32", "--tokenizer_path", str(args.tokenizer_path)]
        export += ["--preset", args.preset] if getattr(args, "preset", None) else []
        for k in SIZE_FLAGS:
            if getattr(args, k, None) is not None:
                export += [f"--{k}", str(int(getattr(args, k)))]
    log(f"rollouts: {args.rollout_url} (SGLang's native /generate); weights synced through {Path(path).resolve()}"
        + ("" if export is None else f" and its transformers folder {Path(path).resolve().with_suffix('')}"))
    return HttpRollouts(args.rollout_url, path, args.rollout_timeout, args.rollout_api_key, is_main, log, export)


# ================================================================================================================
# Rewards
# ================================================================================================================
def parse_reward_spec(spec: str, names: Sequence[str] = REWARD_NAMES) -> List[Tuple[str, float]]:
    """'model:1.0,format:0.5,length' -> [("model", 1.0), ("format", 0.5), ("length", 1.0)]; every term must be
    one of `names` (the stage's reward terms)."""
    terms = []
    for part in (s.strip() for s in spec.split(",")):
        if not part:
            continue
        name, _, weight = part.partition(":")
        name = name.strip()
        if name not in names:
            raise ValueError(f"--reward: unknown term {name!r} (choose from {', '.join(names)})")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"--reward: weight of {name!r} must be a number, got {weight!r}") from None
        if any(n == name for n, _ in terms):
            raise ValueError(f"--reward: term {name!r} given twice")
        terms.append((name, w))
    if not terms:
        raise ValueError("--reward: no reward terms given")
    return terms


# The R1-style layout: reasoning in <think>, the final answer in <answer>, nothing else around them.
FORMAT_PATTERN = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.S)
FORMAT_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def format_reward(response: str) -> float:
    """1.0 for exactly `<think>...</think><answer>...</answer>`; otherwise 0.125 per tag that appears exactly
    once (at most 0.5): a dense shaping signal, as upstream's tag count, that still ranks the full layout
    strictly above any broken one."""
    if FORMAT_PATTERN.match(response) and all(response.count(t) == 1 for t in FORMAT_TAGS):
        return 1.0
    return 0.125 * sum(response.count(t) == 1 for t in FORMAT_TAGS)


def length_reward(response: str, target_chars: int) -> float:
    """0 up to `target_chars` characters, then linearly down to -1 at twice that (clipped): a verbosity
    penalty measured in characters, so it does not depend on the tokenizer."""
    over = max(0, len(response) - target_chars)
    return -min(1.0, over / max(1, target_chars))


# The answer rules live in model/scoring.py, shared with the evals: eval_benchmark's GSM8K accuracy counts a reply
# as correct exactly when this reward pays 1 for it. The old names stay for the callers that use them.
extract_gold_answer = gold_number        # "... #### 1,234" -> 1234.0; None without a '#### N' line
extract_predicted_answer = final_number  # '#### N', else the last number in <answer>..</answer>, else the last one


def gsm8k_reward(response: str, answer: str) -> float:
    """1.0 when the response's final number (model/scoring.py final_number) equals the GSM8K reference's '#### N'
    (same_number's tolerance), else 0.0. A reference without '#### N' is a data error, not a wrong answer."""
    gold = gold_number(answer)
    if gold is None:
        raise DataFormatError(f"--reward gsm8k needs GSM8K records {{\"question\", \"answer\": \"... #### N\"}}; "
                              f"this record's answer has no '#### N': {answer[:80]!r}")
    return float(same_number(final_number(response), gold))


def render_conversation(tokenizer, messages: List[dict]) -> str:
    """A conversation as text for a sequence-classification reward model: its own chat template if it has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


class RewardModelScorer:
    """Scores whole conversations (prompt turns + the assistant response) with a reward model.

    Two kinds are supported:
      * InternLM2-style reward models (upstream's internlm2-1_8b-reward), loaded with trust_remote_code,
        that expose `get_score(tokenizer, messages) -> float`;
      * any `AutoModelForSequenceClassification` (num_labels=1): the conversation is rendered with the reward
        model's own tokenizer / chat template and the score is logits[:, 0].
    """

    def __init__(self, model, tokenizer, device="cpu", max_length: int = 2048, batch_size: int = 8):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.max_length, self.batch_size = max_length, batch_size
        self.has_get_score = callable(getattr(model, "get_score", None))
        if not self.has_get_score:
            if tokenizer.pad_token is None:  # GPT-2-like tokenizers: pad with EOS (masked anyway)
                tokenizer.pad_token = tokenizer.eos_token
            tokenizer.padding_side = "right"
            # Sequence-classification heads pick the last non-pad token via config.pad_token_id.
            if getattr(model.config, "pad_token_id", None) is None:
                model.config.pad_token_id = tokenizer.pad_token_id

    @classmethod
    def load(cls, path, device="cpu", dtype=torch.float32, trust_remote_code: bool = True, **kwargs):
        from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(
                f"reward model not found: {path}. Put a reward model there (upstream: "
                f"`git clone https://huggingface.co/internlm/internlm2-1_8b-reward` next to this repository), "
                f"pass --reward_model_path, or use rule rewards only (e.g. --reward format,gsm8k).")
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        archs = getattr(config, "architectures", None) or []
        if any(a.endswith("ForSequenceClassification") for a in archs):
            model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype)
        else:  # InternLM2ForRewardModel and friends: custom code behind AutoModel
            model = AutoModel.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
            if not callable(getattr(model, "get_score", None)):
                raise WeightLoadError(f"reward model {path} ({', '.join(archs) or type(model).__name__}) is neither a "
                                 f"sequence-classification model nor has get_score(tokenizer, messages)")
        model.to(device).eval().requires_grad_(False)
        return cls(model, tokenizer, device, **kwargs)

    @torch.no_grad()
    def __call__(self, conversations: List[List[dict]]) -> torch.Tensor:
        if self.has_get_score:
            return torch.tensor([float(self.model.get_score(self.tokenizer, c)) for c in conversations])
        scores = []
        for i in range(0, len(conversations), self.batch_size):
            texts = [render_conversation(self.tokenizer, c) for c in conversations[i:i + self.batch_size]]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.max_length, add_special_tokens=False).to(self.device)
            enc.pop("token_type_ids", None)
            scores.append(self.model(**enc).logits[:, 0].float().cpu())
        return torch.cat(scores)


# ---- agentic RL: rules over a whole tool episode (model/tool_loop.Episode), `answer` = the task's gt list
def needed_calls(episode, n_calls: Optional[int]) -> int:
    """How many calls the task needs: its "n_calls" field, else 1 when tools are offered (upstream's agent_rl
    tasks are all tool tasks), else 0."""
    return n_calls if n_calls is not None else int(bool(episode.tools))


def agent_answer_reward(episode, gt: Sequence[str], n_calls: Optional[int] = None) -> float:
    """The fraction of `gt` found in the final answer (model/scoring.py, the same rule as the tool eval); 0 for an
    unfinished episode. A task that needs a tool pays nothing for an answer reached without one successful call:
    a guess (or a memorised number) is not tool use, and paying for it is how a policy learns to stop calling."""
    if episode.answer is None:
        return 0.0
    if needed_calls(episode, n_calls) > 0 and not any(ok for _, ok in episode.calls):
        return 0.0
    return answer_fraction(episode.answer, gt)


def tool_reward(calls: Sequence[Tuple[str, bool]]) -> float:
    """(successful - failed) / attempts in [-1, 1]; 0 without calls. Failed: malformed, unknown or unoffered
    tool, arguments the tool refuses."""
    if not calls:
        return 0.0
    good = sum(ok for _, ok in calls)
    return (2 * good - len(calls)) / len(calls)


def calls_reward(n: int, needed: int) -> float:
    """-|calls - needed| / needed, in [-1, 0] (upstream's call-count term). A task that needs a tool and gets no
    call scores -1 here, so it can never beat a valid call with a wrong answer (tests/test_agent.py)."""
    if needed == 0:
        return -min(1.0, float(n))
    return -min(1.0, abs(n - needed) / needed)


def closure_reward(turns) -> float:
    """Format closure: -1 if any turn leaves a <tool_call> or <think> block unclosed (or closes one never opened),
    else 0. A turn cut at its token budget is not held against this term (`unfinished` covers it)."""
    for t in turns:
        for a, b in (("<tool_call>", "</tool_call>"), ("<think>", "</think>")):
            if t.text.count(a) != t.text.count(b) and t.finished:
                return -1.0
    return 0.0


def repetition_reward(turns, n: int = 4) -> float:
    """-(share of repeated character n-grams) in what the model wrote to the user and to itself (each turn's
    content and reasoning), in [-1, 0]: degenerate loops ("7777...", a sentence again and again) cost, varied text
    does not. The calls are left out: their JSON syntax repeats by design, and counting it would make every call
    cost a little, i.e. pay for skipping a tool."""
    text = "\n".join(t.reasoning + "\n" + t.content for t in turns)
    grams = [text[i:i + n] for i in range(len(text) - n + 1)]
    return -(1.0 - len(set(grams)) / len(grams)) if len(grams) > 1 else 0.0


TEXT_RULES = {  # name -> fn(response, answer, extra) for the text RL stages (PPO, GRPO, SPO)
    "format": lambda r, a, x: format_reward(r),
    "gsm8k": lambda r, a, x: gsm8k_reward(r, a),
}
AGENT_RULES = {  # the agent stage: `extra` is (episode, n_calls); `answer` the gt list
    "answer": lambda r, a, x: agent_answer_reward(x[0], a, x[1]),
    "tool": lambda r, a, x: tool_reward(x[0].calls),
    "calls": lambda r, a, x: calls_reward(len(x[0].calls), needed_calls(*x)),
    "format": lambda r, a, x: closure_reward(x[0].turns),
    "unfinished": lambda r, a, x: -float(x[0].answer is None),
    "repetition": lambda r, a, x: repetition_reward(x[0].turns),
}


class RewardFunction:
    """The weighted sum of the requested --reward terms, the one combiner of every RL stage; also returns each term
    for logging. `rules` maps a term name to fn(response, answer, extra) -> float (TEXT_RULES, AGENT_RULES); the
    `model` term asks the reward model about the prompt + response (clipped to +-reward_clip), `length` is the
    verbosity penalty. `total_clip` (> 0) clips the weighted sum to +-total_clip, so no single term can swamp a
    group's advantage."""

    def __init__(self, terms: List[Tuple[str, float]], reward_model: Optional[RewardModelScorer] = None,
                 length_target: int = 512, reward_clip: float = 3.0, rules: Optional[dict] = None,
                 total_clip: float = 0.0):
        self.terms, self.reward_model = terms, reward_model
        self.length_target, self.reward_clip, self.total_clip = length_target, reward_clip, total_clip
        self.rules = TEXT_RULES if rules is None else rules
        if any(n == "model" for n, _ in terms) and reward_model is None:
            raise ValueError("the 'model' reward term needs a reward model")

    def __call__(self, messages: List[List[dict]], responses: List[str], answers: Sequence,
                 extras: Optional[Sequence] = None):
        """messages: the prompt turns of each row; responses: the replies (None: an unfinished episode);
        answers / extras: what the rules compare against -> (total (B,), {term: (B,)})."""
        extras = [None] * len(responses) if extras is None else extras
        parts: Dict[str, torch.Tensor] = {}
        for name, _ in self.terms:
            if name == "model":
                convs = [m + [{"role": "assistant", "content": r or ""}] for m, r in zip(messages, responses)]
                parts[name] = self.reward_model(convs).float().clamp(-self.reward_clip, self.reward_clip)
            elif name == "length":
                parts[name] = torch.tensor([length_reward(r or "", self.length_target) for r in responses])
            else:
                parts[name] = torch.tensor([float(self.rules[name](r, a, x))
                                            for r, a, x in zip(responses, answers, extras)])
        total = sum(w * parts[n].float() for n, w in self.terms).float()
        if self.total_clip > 0:
            total = total.clamp(-self.total_clip, self.total_clip)
        return total, parts


def build_reward_function(terms: List[Tuple[str, float]], device, reward_model_path=DEFAULT_REWARD_MODEL,
                          reward_batch_size: int = 8, length_target: int = 512, reward_clip: float = 3.0,
                          log=print, rules: Optional[dict] = None, total_clip: float = 0.0) -> RewardFunction:
    """The --reward terms as one callable; loads the reward model only when the 'model' term asks for it."""
    scorer = None
    if any(n == "model" for n, _ in terms):
        scorer = RewardModelScorer.load(reward_model_path, device, batch_size=reward_batch_size)
        log(f"reward model: {reward_model_path} "
            f"({'get_score' if scorer.has_get_score else 'sequence classification'})")
    log("reward = " + " + ".join(f"{w:g}*{n}" for n, w in terms))
    return RewardFunction(terms, scorer, length_target, reward_clip, rules, total_clip)


def reward_metrics(rewards: torch.Tensor, parts: Dict[str, torch.Tensor]) -> dict:
    """The reward columns every RL stage logs: mean, spread, and the mean of each term (`reward_format`, ...)."""
    return {"reward": rewards.mean(), "reward_std": rewards.std(correction=0),
            **{f"reward_{k}": v.mean() for k, v in parts.items()}}


def expand(values: Sequence, n: int) -> list:
    """Repeat each element n times, consecutively (prompt-level data -> one entry per generation)."""
    return [v for v in values for _ in range(n)]


# ================================================================================================================
# RL math (all masked over response tokens; shapes (B, N) unless noted)
# ================================================================================================================
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (PPO's advantage normalisation); 0 where mask is 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log pi(y) - log pi_ref(y): unbiased for KL(pi || pi_ref) under y ~ pi, but single samples can be < 0."""
    return logp - ref_logp


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = r - log r - 1 with r = pi_ref(y) / pi(y) (Schulman's estimator, used by GRPO): unbiased for
    KL(pi || pi_ref) under y ~ pi, always >= 0, and exactly 0 where the two policies agree."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1.0


KL_ESTIMATORS = {"k1": kl_k1, "k3": kl_k3}


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation over the response tokens.

    delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * A_{t+1},   returns = A + V,
    with V and A taken as 0 past the last response token (the episode ends at EOS / the length limit).
    Returns (advantages, returns), both 0 where mask is 0.
    """
    mask = mask.float()
    values, rewards = values * mask, rewards * mask
    n = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(n)):
        m_next = mask[:, t + 1] if t + 1 < n else torch.zeros_like(last)
        v_next = values[:, t + 1] * m_next if t + 1 < n else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * v_next - values[:, t]
        last = delta + gamma * lam * m_next * last
        adv[:, t] = last
    adv = adv * mask
    return adv, (adv + values) * mask


def group_advantages(rewards: torch.Tensor, group_size: int, scale_std: bool = True, eps: float = 1e-4):
    """GRPO: rewards (B*G,) of G consecutive samples per prompt -> A = (R - mean_group) / (std_group + eps).

    Dr.GRPO drops the std division (`scale_std=False`): it up-weights easy/hard prompts with small spread.
    A group whose rewards are all equal ("degenerate") gets A = 0 exactly: it carries no learning signal.
    Returns (advantages (B*G,), per-group std (B,)).
    """
    assert rewards.numel() % group_size == 0, f"{rewards.numel()} rewards do not split into groups of {group_size}"
    grouped = rewards.view(-1, group_size)
    mean = grouped.mean(1, keepdim=True)
    std = grouped.std(1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    adv = grouped - mean
    if scale_std:
        adv = adv / (std + eps)
    return adv.reshape(-1), std.squeeze(1)


def clipped_policy_loss(logp, old_logp, advantages, clip_eps: float = 0.2, clip_eps_high: Optional[float] = None):
    """PPO's clipped surrogate per token: max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps_high)).

    `advantages` is (B, N) or (B,) (one per sequence, broadcast over tokens). Returns (loss (B, N),
    clipped (B, N) bool: where the clipped branch was taken).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    hi = clip_eps if clip_eps_high is None else clip_eps_high
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + hi)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def cispo_policy_loss(logp, old_logp, advantages, clip_eps_high: float = CISPO_EPS_HIGH):
    """CISPO (MiniMax-M1) per token: -sg(min(ratio, 1 + eps_high)) * A * log pi.

    PPO's clip zeroes the gradient of a token whose ratio left [1 - eps, 1 + eps] (often the rare, "forking"
    tokens a policy most needs to learn); CISPO clips the importance-sampling WEIGHT instead and keeps every
    token's gradient, -w * A * grad(log pi) with w = the capped ratio, detached. At ratio 1 (one update per
    rollout) its gradient is the same as GRPO's; only the loss value differs (-A * log pi instead of -A).
    `advantages` is (B, N) or (B,). Returns (loss (B, N), capped (B, N) bool: where ratio > 1 + eps_high).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    ratio = torch.exp(logp - old_logp)
    cap = 1.0 + clip_eps_high
    weight = torch.clamp(ratio, max=cap).detach()
    return -weight * advantages * logp, ratio > cap


def policy_loss(loss_type: str, logp, old_logp, advantages, clip_eps: float = 0.2,
                clip_eps_high: Optional[float] = None):
    """The per-token policy loss of --loss_type: CISPO's for "cispo", PPO's clipped surrogate for the others.
    `clip_eps_high=None` takes the method's default (`clip_high`). Returns (loss (B, N), clipped (B, N))."""
    hi = clip_high(loss_type, clip_eps, clip_eps_high)
    if loss_type == "cispo":
        return cispo_policy_loss(logp, old_logp, advantages, hi)
    return clipped_policy_loss(logp, old_logp, advantages, clip_eps, hi)


def clip_high(loss_type: str, clip_eps: float, clip_eps_high: Optional[float]) -> float:
    """The upper clip of the ratio when --clip_epsilon_high is not given: CISPO caps its weights at
    1 + CISPO_EPS_HIGH (upstream's --epsilon_high 5.0), PPO-style losses at 1 + --clip_epsilon."""
    if clip_eps_high is not None:
        return clip_eps_high
    return CISPO_EPS_HIGH if loss_type == "cispo" else clip_eps


def add_clip_args(parser, clip_epsilon: float = 0.2):
    """--clip_epsilon / --clip_epsilon_high and upstream's spellings of them: --epsilon (the same) and
    --epsilon_high (the ratio CAP itself, as upstream's CISPO uses it: --epsilon_high 5.0 = --clip_epsilon_high
    4.0)."""
    p = parser
    p.add_argument("--clip_epsilon", "--epsilon", dest="clip_epsilon", type=float, default=clip_epsilon,
                   help="ratio clip: [1 - eps, 1 + eps_high] (alias: --epsilon, upstream's name)")
    p.add_argument("--clip_epsilon_high", type=float, default=None,
                   help="upper clip of the ratio: 1 + this (DAPO's clip-higher, e.g. 0.28; CISPO's weight cap). "
                        f"Default: --clip_epsilon, or {CISPO_EPS_HIGH:g} with --loss_type cispo")
    p.add_argument("--epsilon_high", dest="clip_epsilon_high", type=_ratio_cap, default=None,
                   help="upstream's spelling: the ratio cap itself (= 1 + --clip_epsilon_high)")
    return p


def _ratio_cap(text: str) -> float:
    cap = float(text)
    if cap <= 1.0:
        raise argparse.ArgumentTypeError(f"the ratio cap must be > 1, got {text}")
    return cap - 1.0


def clipped_value_loss(values, old_values, returns, clip_eps: float = 0.2):
    """PPO value loss per token: 0.5 * max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clip(V - V_old, +-eps)."""
    v_clip = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    return 0.5 * torch.maximum((values - returns) ** 2, (v_clip - returns) ** 2)


LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "cispo")


def aggregate_loss(token_loss: torch.Tensor, mask: torch.Tensor, loss_type: str = "grpo",
                   max_len: Optional[int] = None) -> torch.Tensor:
    """Per-token loss (B, N) -> scalar, with each method's normalisation:

      grpo     mean over each sequence's tokens, then over sequences (short answers weigh more per token)
      dapo     sum over all tokens / number of tokens in the batch (every token weighs the same)
      dr_grpo  sum over all tokens / (B * max_len): a constant, so neither length nor batch content
               rescales the gradient (Dr. GRPO, "Understanding R1-Zero-Like Training")
      cispo    as dapo: CISPO's objective is normalised by the batch's token count (MiniMax-M1)
    """
    mask = mask.float()
    if loss_type == "grpo":
        return ((token_loss * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    if loss_type in ("dapo", "cispo"):
        return (token_loss * mask).sum() / mask.sum().clamp(min=1)
    if loss_type == "dr_grpo":
        assert max_len, "dr_grpo needs max_len (the generation budget)"
        return (token_loss * mask).sum() / (mask.shape[0] * max_len)
    raise ValueError(f"unknown loss_type {loss_type!r} (choose from {', '.join(LOSS_TYPES)})")


# ================================================================================================================
# Distributed
# ================================================================================================================
def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a same-shaped tensor from every rank (identity without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)

