"""What the RL stages (PPO, GRPO, SPO) share, written once: prompts, rollouts, rewards and the RL math.

  prompts     `RLPromptDataset` (RLAIFDataset + prompt index + chat messages), `prompt_batches` (resumable)
  rollout     `rollout`: batched left-padded sampling (model/generation.py) -> `Rollout`;
              `token_logps`: per-token log-probs of the response tokens under a model, with or without grad
  rewards     rule rewards (think/answer format, length penalty, GSM8K exact answer), a reward model
              (InternLM2-style `get_score` or any AutoModelForSequenceClassification), combined by weights:
              `--reward model:1.0,format:0.5,length:0.1`; `reward_metrics`: the reward columns every stage logs
  RL math     KL estimators k1/k3, GAE, group-normalised advantages, clipped policy and value losses,
              the GRPO / DAPO / Dr.GRPO loss normalisations
  the loop    `run_rl`: prompt batches -> the script's update -> logging / checkpoint cadence -> final save

Every function here is plain tensor code with the shapes in its docstring, so tests/test_rl.py checks each
one on hand values; the three scripts only wire them together.
"""
import math
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dataset.lm_dataset import DataFormatError, RLAIFDataset  # noqa: E402
from model.generation import generate  # noqa: E402
from trainer.trainer_utils import (ResumableSampler, WeightLoadError, cleanup_distributed, format_eta,  # noqa: E402
                                   unwrap)

# Upstream keeps the InternLM2 reward model as a sibling of the repository (../internlm2-1_8b-reward).
DEFAULT_REWARD_MODEL = ROOT.parent / "internlm2-1_8b-reward"
REWARD_NAMES = ("model", "format", "length", "gsm8k")


# ================================================================================================================
# Arguments
# ================================================================================================================
def add_rl_args(parser, *, max_gen_len=1536, temperature=0.8, reward="model"):
    """Rollout and reward flags shared by ppo / grpo / spo (the algorithm's own flags stay in its script)."""
    p = parser
    p.add_argument("--max_gen_len", type=int, default=max_gen_len, help="max new tokens per response")
    p.add_argument("--temperature", type=float, default=temperature, help="sampling temperature of rollouts")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling for rollouts (1 = off)")
    p.add_argument("--reward", type=str, default=reward,
                   help="weighted reward terms, e.g. 'model:1.0,format:0.5,length:0.1'; terms: "
                        "model (reward model), format (<think>..</think><answer>..</answer>), "
                        "length (penalty beyond --length_target characters), gsm8k (exact final answer)")
    p.add_argument("--reward_model_path", type=str, default=str(DEFAULT_REWARD_MODEL),
                   help="reward model folder: InternLM2-style (get_score, trust_remote_code) or any "
                        "AutoModelForSequenceClassification")
    p.add_argument("--reward_clip", type=float, default=3.0, help="reward-model scores are clipped to +-this")
    p.add_argument("--reward_batch_size", type=int, default=8, help="conversations per reward-model forward")
    p.add_argument("--length_target", type=int, default=512,
                   help="length term: 0 up to this many characters, falling linearly to -1 at twice as many")
    return p


def check_rl_args(parser, args):
    """Flag combinations that cannot work; reported through argparse (usage line + one error)."""
    try:
        args.reward_terms = parse_reward_spec(args.reward)
    except ValueError as e:
        parser.error(str(e))
    if args.max_gen_len < 1:
        parser.error("--max_gen_len must be >= 1")
    if args.temperature <= 0:
        parser.error("--temperature must be > 0 for on-policy RL (greedy rollouts have no exploration and no "
                     "well-defined log-probabilities)")


# ================================================================================================================
# Prompts
# ================================================================================================================
CHATML_TURN = re.compile(r"<\|im_start\|>(system|user|assistant|tool)\n(.*?)<\|im_end\|>", re.S)


def chatml_messages(prompt: str) -> List[dict]:
    """The rendered ChatML prompt -> [{"role", "content"}] (what a reward model with its own template needs)."""
    return [{"role": r, "content": c.strip()} for r, c in CHATML_TURN.findall(prompt)]


class RLPromptDataset(RLAIFDataset):
    """RLAIFDataset plus the prompt's index (SPO keeps a value per prompt) and its chat messages."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        item["index"] = i
        item["messages"] = chatml_messages(item["prompt"])
        return item


def collate_prompts(batch: List[dict]) -> dict:
    return {"prompt": [b["prompt"] for b in batch], "answer": [b["answer"] for b in batch],
            "messages": [b["messages"] for b in batch], "index": torch.tensor([b["index"] for b in batch])}


def steps_per_epoch(n_samples: int, batch_size: int, world_size: int) -> int:
    """Rollout batches per epoch on each rank (ResumableSampler gives every rank the same count)."""
    return math.ceil(math.ceil(n_samples / world_size) / batch_size)


def prompt_batches(loop, dataset, batch_size: int, num_workers: int = 0, seed: int = 42):
    """Yield prompt batches for the remaining epochs, continuing where a resumed run stopped.

    Keeps `loop.epoch` / `loop.consumed` up to date exactly as `TrainLoop.run` does (counted when a batch is
    handed out; the counters only reach disk through `loop.save()` after that batch's update), so
    `--from_resume 1` continues with the next unseen prompt of the same shuffled order.
    """
    ds = loop.ds
    sampler = ResumableSampler(len(dataset), ds.rank, ds.world_size, seed=seed, shuffle=True)
    while loop.epoch < loop.args.epochs:
        sampler.set_epoch(loop.epoch, loop.consumed)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_prompts,
                            num_workers=num_workers, drop_last=False)
        left = len(loader)
        for batch in loader:
            left -= 1
            loop.consumed += batch_size * ds.world_size
            if left == 0:  # the epoch's last batch: a save after its update must point at the next epoch
                loop.epoch, loop.consumed = loop.epoch + 1, 0
            yield batch


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
    gen_logps: torch.Tensor       # (B, N) log-probs returned by the sampler (temperature/top-p applied)
    responses: List[str]          # decoded responses (special tokens removed)

    @property
    def response_ids(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_len:]

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


def rollout(model, tokenizer, prompts: Sequence[str], max_gen_len: int, temperature: float = 1.0,
            top_p: float = 1.0, max_prompt_len: Optional[int] = None, num_generations: int = 1,
            autocast=None, generator: Optional[torch.Generator] = None) -> Rollout:
    """Sample `num_generations` responses per prompt (consecutive rows), batched and left-padded.

    Generation runs on the plain module (`unwrap`: no DDP hooks) in eval mode and under inference mode; the
    model is put back in train mode afterwards. Tensors are cloned out of inference mode so the training
    forward can use them in autograd.
    """
    policy = unwrap(model)
    ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    if max_prompt_len:
        ids = [x[-max_prompt_len:] for x in ids]  # keep the end: the question and the assistant header
    ids = [x for x in ids for _ in range(num_generations)]
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
                   prompt_len=out.prompt_len, gen_logps=out.logprobs.clone().float(), responses=responses)


# ================================================================================================================
# Rewards
# ================================================================================================================
def parse_reward_spec(spec: str) -> List[Tuple[str, float]]:
    """'model:1.0,format:0.5,length' -> [("model", 1.0), ("format", 0.5), ("length", 1.0)]."""
    terms = []
    for part in (s.strip() for s in spec.split(",")):
        if not part:
            continue
        name, _, weight = part.partition(":")
        name = name.strip()
        if name not in REWARD_NAMES:
            raise ValueError(f"--reward: unknown term {name!r} (choose from {', '.join(REWARD_NAMES)})")
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


NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
ANSWER_SPAN = re.compile(r"<answer>(.*?)</answer>", re.S)
GOLD = re.compile(r"####\s*(.+)")


def _to_number(text: str) -> Optional[float]:
    text = text.replace(",", "").rstrip(".")
    try:
        return float(text)
    except ValueError:
        return None


def extract_gold_answer(answer: str) -> Optional[float]:
    """GSM8K reference solution '...#### 1,234' -> 1234.0 (None when there is no '####' line)."""
    m = GOLD.search(answer)
    if not m:
        return None
    nums = NUMBER.findall(m.group(1).replace("\u2212", "-").replace("$", ""))
    return _to_number(nums[0]) if nums else None


def extract_predicted_answer(response: str) -> Optional[float]:
    """The model's final number: the last number inside <answer>...</answer> if present, else the last number
    anywhere in the text. Handles thousands separators, signs (also U+2212) and decimals."""
    spans = ANSWER_SPAN.findall(response)
    text = (spans[-1] if spans else response).replace("\u2212", "-")
    nums = NUMBER.findall(text)
    return _to_number(nums[-1]) if nums else None


def gsm8k_reward(response: str, answer: str) -> float:
    gold = extract_gold_answer(answer)
    if gold is None:
        raise DataFormatError(f"--reward gsm8k needs GSM8K records {{\"question\", \"answer\": \"... #### N\"}}; "
                         f"this record's answer has no '#### N': {answer[:80]!r}")
    pred = extract_predicted_answer(response)
    return float(pred is not None and math.isclose(pred, gold, rel_tol=0.0, abs_tol=1e-6))


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


class RewardFunction:
    """The weighted sum of the requested terms; also returns each term for logging."""

    def __init__(self, terms: List[Tuple[str, float]], reward_model: Optional[RewardModelScorer] = None,
                 length_target: int = 512, reward_clip: float = 3.0):
        self.terms, self.reward_model = terms, reward_model
        self.length_target, self.reward_clip = length_target, reward_clip
        if any(n == "model" for n, _ in terms) and reward_model is None:
            raise ValueError("the 'model' reward term needs a reward model")

    def __call__(self, messages: List[List[dict]], responses: List[str], answers: List[str]):
        """messages: the prompt turns of each row; -> (total (B,), {term: (B,)})."""
        parts: Dict[str, torch.Tensor] = {}
        for name, _ in self.terms:
            if name == "model":
                convs = [m + [{"role": "assistant", "content": r}] for m, r in zip(messages, responses)]
                parts[name] = self.reward_model(convs).float().clamp(-self.reward_clip, self.reward_clip)
            elif name == "format":
                parts[name] = torch.tensor([format_reward(r) for r in responses])
            elif name == "length":
                parts[name] = torch.tensor([length_reward(r, self.length_target) for r in responses])
            elif name == "gsm8k":
                parts[name] = torch.tensor([gsm8k_reward(r, a) for r, a in zip(responses, answers)])
        total = sum(w * parts[n] for n, w in self.terms)
        return total.float(), parts


def build_reward_function(args, device, log=print) -> RewardFunction:
    scorer = None
    if any(n == "model" for n, _ in args.reward_terms):
        scorer = RewardModelScorer.load(args.reward_model_path, device, batch_size=args.reward_batch_size)
        log(f"reward model: {args.reward_model_path} "
            f"({'get_score' if scorer.has_get_score else 'sequence classification'})")
    log("reward = " + " + ".join(f"{w:g}*{n}" for n, w in args.reward_terms))
    return RewardFunction(args.reward_terms, scorer, args.length_target, args.reward_clip)


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


def clipped_value_loss(values, old_values, returns, clip_eps: float = 0.2):
    """PPO value loss per token: 0.5 * max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clip(V - V_old, +-eps)."""
    v_clip = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    return 0.5 * torch.maximum((values - returns) ** 2, (v_clip - returns) ** 2)


LOSS_TYPES = ("grpo", "dapo", "dr_grpo")


def aggregate_loss(token_loss: torch.Tensor, mask: torch.Tensor, loss_type: str = "grpo",
                   max_len: Optional[int] = None) -> torch.Tensor:
    """Per-token loss (B, N) -> scalar, with each method's normalisation:

      grpo     mean over each sequence's tokens, then over sequences (short answers weigh more per token)
      dapo     sum over all tokens / number of tokens in the batch (every token weighs the same)
      dr_grpo  sum over all tokens / (B * max_len): a constant, so neither length nor batch content
               rescales the gradient (Dr. GRPO, "Understanding R1-Zero-Like Training")
    """
    mask = mask.float()
    if loss_type == "grpo":
        return ((token_loss * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    if loss_type == "dapo":
        return (token_loss * mask).sum() / mask.sum().clamp(min=1)
    if loss_type == "dr_grpo":
        assert max_len, "dr_grpo needs max_len (the generation budget)"
        return (token_loss * mask).sum() / (mask.shape[0] * max_len)
    raise ValueError(f"unknown loss_type {loss_type!r} (choose from {', '.join(LOSS_TYPES)})")


# ================================================================================================================
# The outer loop shared by the scripts, and its pieces
# ================================================================================================================
def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a same-shaped tensor from every rank (identity without torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def save_due(loop, step_before: int, done: bool) -> bool:
    """True when the steps just taken crossed a --save_interval boundary (one rollout may take several steps)."""
    every = loop.args.save_interval
    return not done and every > 0 and loop.step // every > step_before // every


def log_due(loop, step_before: int, done: bool) -> bool:
    """Log on the first update, at the end, and whenever the steps just taken crossed a --log_interval mark."""
    every = max(1, loop.args.log_interval)
    return step_before == 0 or done or loop.step // every > step_before // every


def log_step(loop, metrics: Dict[str, torch.Tensor], lr: float, grad_norm, last_step: int, t_start: float,
             start_step: int, n_tokens=0.0, t_step: Optional[float] = None):
    """Average the metrics over ranks (one host sync), write a JSONL row and a console line on rank 0."""
    keys = list(metrics)
    vals = torch.stack([torch.as_tensor(metrics[k], dtype=torch.float32, device=loop.device).reshape(())
                        for k in keys]
                       + [torch.as_tensor(grad_norm, dtype=torch.float32, device=loop.device).reshape(()),
                          torch.as_tensor(n_tokens, dtype=torch.float32, device=loop.device).reshape(())])
    vals = loop.reduce_mean(vals).tolist()
    row = dict(zip(keys, vals[:len(keys)]))
    elapsed = time.time() - t_start
    dt = max(time.time() - (t_step or t_start), 1e-9)
    eta = elapsed / max(1, loop.step - start_step) * (last_step - loop.step)
    row = {"step": loop.step, "epoch": loop.epoch + (1 if loop.consumed else 0), "lr": lr, "grad_norm": vals[-2],
           "tokens_per_s": vals[-1] * loop.ds.world_size / dt, **row, "time": time.time()}
    loop.logger.log(row)
    shown = " ".join(f"{k}: {row[k]:.4f}" for k in keys)
    loop.logger.info(f"[{loop.name}] step {loop.step}/{last_step} {shown} lr: {lr:.3e} "
                     f"grad_norm: {row['grad_norm']:.3f} ETA: {format_eta(eta)}")
    return row


def run_rl(loop, dataset, update, total_steps: int, describe: str, companions=()):
    """Train on prompt batches until --max_steps / the last epoch; the RL scripts' shared outer loop.

    update(batch, last_step) -> (metrics, lr, grad_norm, n_tokens) is the script's algorithm: the rollout,
    rewards and its optimizer steps for one prompt batch (it stops at `last_step`, possibly inside the batch).
    `describe` completes the opening log line. `companions` are further TrainLoops that `update` steps in
    lockstep with `loop` (PPO's critic): they train, checkpoint and make the final save with it; `loop` owns the
    step count, the data position and the logger. Ends the run: final save, logger closed, DDP torn down.
    """
    args = loop.args
    last_step = min(total_steps, args.max_steps) if args.max_steps else total_steps
    loops = (loop, *companions)
    loop.logger.info(f"[{loop.name}] {describe}")
    for lp in loops:
        lp.model.train()
    t_start, start_step = time.time(), loop.step
    if loop.step < last_step:
        for batch in prompt_batches(loop, dataset, args.batch_size, args.num_workers, args.seed):
            t_step, step_before = time.time(), loop.step
            metrics, lr, grad_norm, n_tokens = update(batch, last_step)
            done = loop.step >= last_step
            if log_due(loop, step_before, done):
                log_step(loop, metrics, lr, grad_norm, last_step, t_start, start_step, n_tokens, t_step)
            if save_due(loop, step_before, done):
                for lp in loops:
                    lp.save()
            if done:
                break
    for lp in loops:
        lp.save()
    loop.logger.info(f"[{loop.name}] done: {loop.step} steps; weights -> {args.save_dir}")
    loop.logger.close()
    cleanup_distributed()
