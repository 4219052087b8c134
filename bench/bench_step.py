"""Time one environment step by part, the SAC update, and batched vs sequential env stepping.

Random-weight models built from the architecture alone (no model files needed):

    python bench/bench_step.py --arch all --out step.json                      # GPU, < 5 min
    OMP_NUM_THREADS=1 python bench/bench_step.py --arch smollm2-135m --seq-len 128 --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

import common as cm  # noqa: E402
from stable_baselines3 import SAC  # noqa: E402
from stable_baselines3.common.logger import configure  # noqa: E402

from pruning.context_importance import row_statistics  # noqa: E402
from pruning.generation import prompt_mask_fn  # noqa: E402
from pruning.prunable_llm import PrunableLLM  # noqa: E402
from rl.env import ActionMap, LLMPruningEnv, PruningBandit  # noqa: E402
from rl.reward import RewardFn, make_reward  # noqa: E402
from rl.vec_env import BatchedPruningVecEnv  # noqa: E402
from scoring.batched import context_groups  # noqa: E402
from scoring.metrics import score_requests  # noqa: E402
from scoring.tasks import WindowTask, task_orderings  # noqa: E402
from scoring.windows import model_input  # noqa: E402

OBS_DIM = 768  # sentence-embedding width of the real encoder
BUFFER_FILL = 1000  # random transitions in the replay buffer before timing SAC updates
# config.SACConfig / EnvConfig defaults, copied: the GPU host may lack pydantic's dependencies
SAC_KWARGS = dict(buffer_size=100_000, learning_starts=100, batch_size=256, gamma=0.0)
NET_ARCH = [256, 256]
QUALITY_WEIGHT = 0.5
PARTS = ("observation", "mask", "prune", "metric_forward", "undo", "reward")
CRITERION = "mean_abs_activation"  # config.ImportanceConfig's default, ranks context neurons


@dataclass(frozen=True)
class Plan:
    warmup: int  # untimed env steps before the profile
    reps: int  # timed env steps (and forwards) per median
    sac_reps: int
    vec_reps: int  # timed vec steps per n_envs
    matmul_size: int
    n_items: int  # items of the step profile


def make_plan(quick: bool, device: torch.device) -> Plan:
    size = 8192 if device.type == "cuda" else (1024 if quick else 2048)
    if quick:
        return Plan(warmup=1, reps=3, sac_reps=5, vec_reps=2, matmul_size=size, n_items=2)
    return Plan(warmup=3, reps=10, sac_reps=20, vec_reps=10, matmul_size=size, n_items=8)


@dataclass
class Bench:
    """One reordered model and what every section shares."""

    llm: PrunableLLM
    action_map: ActionMap
    reward_fn: RewardFn
    device: torch.device
    rng: np.random.Generator
    gen: torch.Generator


@dataclass
class Task:
    env: LLMPruningEnv
    task: WindowTask
    embeddings: np.ndarray  # [n_items, OBS_DIM]
    rows: torch.Tensor  # [n_items, seq_len] token row the model reads, on the device


def make_task(b: Bench, n_items: int, seq_len: int, context_windows: int = 0) -> Task:
    """Items of exactly `seq_len` random tokens: one window, one forward of seq_len tokens.
    With `context_windows`, each item also has that many earlier windows of seq_len random
    tokens (its document's past) and the env keeps each item's context neurons."""
    cfg = b.llm.config
    tokens = torch.randint(cfg.vocab_size, (n_items, seq_len), generator=b.gen).tolist()
    shape = (n_items, context_windows, seq_len)
    contexts = torch.randint(cfg.vocab_size, shape, generator=b.gen).tolist()
    prefix = cfg.bos_token_id if cfg.bos_token_id is not None else 0
    task = WindowTask(tokens, prefix, seq_len, contexts=contexts if context_windows else None)
    rows = [model_input(*task.requests(i)[0], seq_len) for i in range(n_items)]
    emb = b.rng.standard_normal((n_items, OBS_DIM)).astype(np.float32)
    criterion = CRITERION if context_windows else None
    bandit = PruningBandit(b.llm, task, emb, b.action_map, b.reward_fn, criterion=criterion)
    return Task(LLMPruningEnv(bandit), task, emb, torch.tensor(rows, device=b.device))


def random_actions(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Actions whose pruning fractions are uniform in 0.3 +- 0.1; float32 [..., n_layers]."""
    fractions = np.clip(rng.uniform(0.2, 0.4, shape), 0.0, 1.0)
    return (2.0 * fractions - 1.0).astype(np.float32)


def guarded(name: str, fn: Callable[[], Any], ctx: Bench | torch.device) -> Any:
    """`common.guarded`, also unpruning the model after a failure inside a pruned section."""
    if isinstance(ctx, Bench):
        return cm.guarded(name, fn, ctx.device, ctx.llm.undo_prune)
    return cm.guarded(name, fn, ctx)


def _profile_rep(b: Bench, task: Task, idx: int) -> dict[str, float]:
    """One step by parts (as LLMPruningEnv.step does them), the bare forward, the whole step."""
    llm, dev, env = b.llm, b.device, task.env
    action, t = random_actions(b.rng, (llm.n_layers,)), {}
    _, t["observation"] = cm.timed(lambda: env.reset(options={"index": idx}), dev)
    kept, t["mask"] = cm.timed(lambda: b.action_map.kept(action[None], np.full(1, np.nan))[0], dev)
    _, t["prune"] = cm.timed(lambda: llm.prune(kept), dev)
    reqs = task.task.requests(idx)
    try:
        t_ = task.task
        score = lambda: t_.metric(idx, score_requests(llm, reqs, t_.batch_size, t_.max_length))  # noqa: E731
        metric, t["metric_forward"] = cm.timed(score, dev)
        sparsity, kept = llm.sparsity, llm.keep_counts()
        _, t["bare_forward"] = cm.timed(lambda: cm.bare_forward(llm, task.rows[idx : idx + 1]), dev)
    finally:
        _, t["undo"] = cm.timed(llm.undo_prune, dev)
    dense = float(env.bandit.dense_metrics([idx])[0])
    _, t["reward"] = cm.timed(lambda: b.reward_fn(metric, dense, sparsity), dev)
    env.reset(options={"index": idx})
    _, t["step"] = cm.timed(lambda: env.step(action), dev)
    t["parts_sum"] = sum(t[p] for p in PARTS)
    t["flops"] = cm.forward_flops(llm.config, task.rows.shape[1], 1, kept)
    t["sparsity"] = sparsity
    return t


def profile_step(b: Bench, plan: Plan, seq_len: int, peak_tflops: float | None) -> dict:
    task = make_task(b, plan.n_items, seq_len)
    task.env.bandit.dense_metrics(range(len(task.task)))  # cached per item in training too
    cm.reset_peak(b.device)
    reps = [_profile_rep(b, task, i % plan.n_items) for i in range(plan.warmup + plan.reps)]
    reps = reps[plan.warmup :]
    ms = {k: statistics.median(r[k] for r in reps) for k in reps[0] if k != "flops"}
    tflops = statistics.median(r["flops"] / r["bare_forward"] / 1e9 for r in reps)
    step_tflops = statistics.median(r["flops"] / r["step"] / 1e9 for r in reps)
    return {
        "seq_len": seq_len,
        "reps": plan.reps,
        "sparsity": ms.pop("sparsity"),
        "ms": ms,
        "step_over_bare": ms["step"] / ms["bare_forward"],
        "prune_undo_pct_of_step": 100 * (ms["prune"] + ms["undo"]) / ms["step"],
        "max_memory_gb": cm.gpu_memory_gb(b.device),
        "forward_tflops": tflops,
        "forward_mfu": None if peak_tflops is None else tflops / peak_tflops,
        "step_mfu": None if peak_tflops is None else step_tflops / peak_tflops,
    }


def dense_forward(b: Bench, seq_len: int, reps: int, peak_tflops: float | None) -> dict:
    ids = torch.randint(b.llm.config.vocab_size, (1, seq_len), generator=b.gen).to(b.device)
    ms = cm.median_ms(lambda: cm.bare_forward(b.llm, ids), b.device, reps, warmup=2)
    kept = [b.llm.intermediate_size] * b.llm.n_layers
    tflops = cm.forward_flops(b.llm.config, seq_len, 1, kept) / ms / 1e9
    mfu = None if peak_tflops is None else tflops / peak_tflops
    return {"seq_len": seq_len, "ms": ms, "tflops": tflops, "mfu": mfu}


def sac_update(b: Bench, reps: int) -> dict:
    """One SAC gradient step (train() of a real agent, config defaults) on a prefilled buffer."""
    env = make_task(b, 1, 8).env  # only its spaces are used
    kwargs = {"net_arch": NET_ARCH}
    agent = SAC("MlpPolicy", env, policy_kwargs=kwargs, seed=0, device="auto", **SAC_KWARGS)
    agent.set_logger(configure(None, []))  # train() logs; learn() would set this up
    n_act = b.llm.n_layers
    for _ in range(BUFFER_FILL):
        obs = b.rng.standard_normal((2, 1, OBS_DIM)).astype(np.float32)
        act = b.rng.uniform(-1, 1, (1, n_act)).astype(np.float32)
        agent.replay_buffer.add(obs[0], obs[1], act, b.rng.uniform(-1, 1, 1), np.ones(1), [{}])
    train = lambda: agent.train(gradient_steps=1, batch_size=agent.batch_size)  # noqa: E731
    ms = cm.median_ms(train, agent.device, reps, warmup=3)
    return {"ms": ms, "device": str(agent.device), "batch_size": agent.batch_size,
            "net_arch": NET_ARCH, "obs_dim": OBS_DIM, "action_dim": n_act}  # fmt: skip


def _sequential_step(env: LLMPruningEnv, idx: int, action: np.ndarray) -> float:
    env.reset(options={"index": idx})
    return env.step(action)[1]


def compare_paths(b: Bench, task: Task, n_envs: int, reps: int, sac_ms: float | None) -> dict:
    """Batched vec steps, then the same (item, action) pairs one by one on the sequential env."""
    n_layers, dev = b.llm.n_layers, b.device
    vec = BatchedPruningVecEnv(task.env.bandit, n_envs)
    vec.seed(0)
    vec.reset()
    cm.reset_peak(dev)
    task.env.bandit.dense_metrics(range(len(task.task)))  # cached, as in training
    vec.step(random_actions(b.rng, (n_envs, n_layers)))  # warm-up
    pairs, vec_ms = [], []
    for _ in range(reps):
        acts = random_actions(b.rng, (n_envs, n_layers))  # [n_envs, n_layers]
        (_, rewards, _, infos), ms = cm.timed(lambda a=acts: vec.step(a), dev)
        vec_ms.append(ms)
        pairs += [(info["index"], a, float(r)) for info, a, r in zip(infos, acts, rewards)]
    _sequential_step(task.env, *pairs[0][:2])  # warm-up
    seq_ms, diffs = [], []
    for idx, action, reward in pairs:
        seq_reward, ms = cm.timed(lambda i=idx, a=action: _sequential_step(task.env, i, a), dev)
        seq_ms.append(ms)
        diffs.append(abs(seq_reward - reward))
    vec_s, seq_s = statistics.median(vec_ms) / 1e3, statistics.median(seq_ms) / 1e3
    upd = None if sac_ms is None else sac_ms / 1e3
    with_upd = (
        (None, None) if upd is None else (n_envs / (vec_s + upd), n_envs / (n_envs * seq_s + upd))
    )
    return {
        "n_envs": n_envs, "seq_len": task.rows.shape[1], "transitions": len(pairs),
        "vec_step_ms": vec_s * 1e3, "seq_step_ms": seq_s * 1e3,
        "batched_steps_per_s": n_envs / vec_s, "seq_steps_per_s": 1 / seq_s,
        "speedup": seq_s * n_envs / vec_s,
        "batched_steps_per_s_with_update": with_upd[0], "seq_steps_per_s_with_update": with_upd[1],
        "speedup_with_update": None if upd is None else with_upd[0] / with_upd[1],
        "reward_max_abs_diff": max(diffs), "max_memory_gb": cm.gpu_memory_gb(dev),
    }  # fmt: skip


def batched_vs_sequential(
    b: Bench, plan: Plan, seq_len: int, n_envs_list: list[int], sac_ms: float | None
) -> list[dict]:
    task = make_task(b, 2 * max(n_envs_list), seq_len)
    task.env.bandit.dense_metrics(range(len(task.task)))
    run = lambda n: compare_paths(b, task, n, plan.vec_reps, sac_ms)  # noqa: E731
    return [guarded(f"n_envs={n}", lambda n=n: run(n), b) for n in n_envs_list]


# ---- context neurons (env.neurons: context) ---------------------------------------------------


def _context_rep(b: Bench, task: Task, idx: int) -> dict[str, float]:
    """One context-neuron step (orderings cached) by parts: the env's per-row masks at full
    width, then the same pair with the kept neurons gathered instead (`prune(mask_fn)`)."""
    llm, dev, env = b.llm, b.device, task.env
    action, t = random_actions(b.rng, (llm.n_layers,)), {}
    kept = b.action_map.kept(action[None], np.full(1, np.nan))  # [1, n_layers]
    orderings = env.bandit.orderings([idx])  # cached: no dense pass here
    _, t["context_masks"] = cm.timed(lambda: context_groups(llm, kept, orderings), dev)
    mask_fn, t["gather_masks"] = cm.timed(lambda: prompt_mask_fn(orderings[0][0], kept[0]), dev)
    _, t["gather"] = cm.timed(lambda: llm.prune(mask_fn), dev)
    try:
        reqs, t_ = task.task.requests(idx), task.task
        score = lambda: score_requests(llm, reqs, t_.batch_size, t_.max_length)  # noqa: E731
        _, t["gathered_forward"] = cm.timed(score, dev)
    finally:
        _, t["gather_undo"] = cm.timed(llm.undo_prune, dev)
    gathered = ("gather_masks", "gather", "gathered_forward", "gather_undo")
    t["gathered_step"] = sum(t[k] for k in gathered)
    env.reset(options={"index": idx})
    _, t["step"] = cm.timed(lambda: env.step(action), dev)
    return t


def context_profile(b: Bench, plan: Plan, seq_len: int, global_ms: float | None) -> dict:
    """Steady state of training: every item's orderings computed once (before timing)."""
    task = make_task(b, plan.n_items, seq_len, context_windows=1)
    items = range(plan.n_items)
    task.env.bandit.dense_metrics(items)
    task.env.bandit.orderings(items)
    cm.reset_peak(b.device)
    reps = [_context_rep(b, task, i % plan.n_items) for i in range(plan.warmup + plan.reps)]
    ms = {k: statistics.median(r[k] for r in reps[plan.warmup :]) for k in reps[0]}
    ratio = lambda key: None if global_ms is None else ms[key] / global_ms  # noqa: E731
    return {
        "seq_len": seq_len, "reps": plan.reps, "ms": ms, "global_step_ms": global_ms,
        "step_over_global": ratio("step"), "gathered_over_global": ratio("gathered_step"),
        "max_memory_gb": cm.gpu_memory_gb(b.device),
    }  # fmt: skip


def orderings_one_off(b: Bench, plan: Plan, seq_len: int, windows: int) -> dict:
    """One item's orderings from scratch (`scoring.tasks.task_orderings`, what the env caches):
    a dense pass over its context rows with hooks, then per-layer argsort; median over items."""
    task = make_task(b, plan.n_items + 1, seq_len, context_windows=windows)
    rows = task.task.context_rows(0)[0]
    order = lambda i: task_orderings(b.llm, task.task, [i], CRITERION)  # noqa: E731
    stats = lambda: row_statistics(b.llm, rows, CRITERION, task.task.batch_size)  # noqa: E731
    order(0)  # warm-up (hooks, allocator)
    items = range(1, plan.n_items + 1)
    total = statistics.median(cm.timed(lambda i=i: order(i), b.device)[1] for i in items)
    dense_pass = cm.median_ms(stats, b.device, max(1, plan.reps // 2))
    return {"context_windows": windows, "context_tokens": windows * seq_len, "ms": total,
            "statistics_ms": dense_pass, "orderings_ms": total - dense_pass}  # fmt: skip


def context_batched(
    b: Bench,
    plan: Plan,
    seq_len: int,
    n_envs_list: list[int],
    sac_ms: float | None,
    global_rows: list[dict] | None,
) -> list[dict]:
    """`compare_paths` with context neurons (orderings cached), and vec step / global's."""
    task = make_task(b, 2 * max(n_envs_list), seq_len, context_windows=1)
    task.env.bandit.dense_metrics(range(len(task.task)))
    task.env.bandit.orderings(range(len(task.task)))
    by_n = {r["n_envs"]: r for r in global_rows or [] if "error" not in r}
    rows = []
    for n in n_envs_list:
        run = lambda n=n: compare_paths(b, task, n, plan.vec_reps, sac_ms)  # noqa: E731
        row = guarded(f"context n_envs={n}", run, b)
        if "error" not in row and n in by_n:
            row["global_vec_step_ms"] = by_n[n]["vec_step_ms"]
            row["vec_step_over_global"] = row["vec_step_ms"] / by_n[n]["vec_step_ms"]
            row["seq_step_over_global"] = row["seq_step_ms"] / by_n[n]["seq_step_ms"]
        rows.append(row | {"n_envs": n})
    return rows


def context_sections(b: Bench, plan: Plan, args: argparse.Namespace, result: dict) -> dict:
    prof = result.get("step_profile") or {}
    global_ms = prof.get("ms", {}).get("step")
    out: dict[str, Any] = {"criterion": CRITERION}
    windows = sorted({1, args.context_windows})
    one_off = [(w, lambda w=w: orderings_one_off(b, plan, args.seq_len, w)) for w in windows]
    out["orderings_one_off"] = [guarded(f"orderings {w}", fn, b) for w, fn in one_off]
    profile = lambda: context_profile(b, plan, args.seq_len, global_ms)  # noqa: E731
    out["step_profile"] = guarded("context profile", profile, b)
    batched = result.get("batched") if isinstance(result.get("batched"), list) else None
    run = lambda: context_batched(  # noqa: E731
        b, plan, args.batch_seq_len, args.n_envs, result["sac_update"].get("ms"), batched
    )
    out["batched"] = guarded("context batched", run, b)
    return out


def run_arch(arch: str, args: argparse.Namespace, plan: Plan) -> dict:
    dev = torch.device(args.device)
    dtype = cm.arch_dtype(dev)
    result: dict[str, Any] = {"arch": arch, "dtype": str(dtype).removeprefix("torch.")}
    rate = guarded("matmul", lambda: asdict(cm.matmul_rate(dev, dtype, plan.matmul_size, 10)), dev)
    peak = result.setdefault("matmul", rate).get("tflops")
    model = guarded("build", lambda: cm.build_model(arch, dev, dtype), dev)
    if isinstance(model, dict):
        return result | {"build": model}
    orderings = cm.random_orderings(model.config.num_hidden_layers, model.config.intermediate_size)
    llm = PrunableLLM(model, orderings=orderings)  # top-k masks are prefixes: pruning is views
    action_map = ActionMap(llm.n_layers, llm.intermediate_size, 8)
    reward_fn, gen = make_reward("perplexity", QUALITY_WEIGHT), torch.Generator().manual_seed(0)
    b = Bench(llm, action_map, reward_fn, dev, np.random.default_rng(0), gen)
    seq_lens = dict.fromkeys((args.seq_len, args.batch_seq_len))  # profiled and batched lengths
    print(f"{arch}: built, profiling", file=sys.stderr, flush=True)
    n_envs, with_global = args.n_envs, args.neurons != "context"
    if with_global:
        profile = lambda: profile_step(b, plan, args.seq_len, peak)  # noqa: E731
        result["step_profile"] = guarded("profile", profile, b)
    dense = [(f"dense {t}", lambda t=t: dense_forward(b, t, plan.reps, peak)) for t in seq_lens]
    result["dense_forward"] = [guarded(name, fn, b) for name, fn in dense]
    result["sac_update"] = sac = guarded("sac", lambda: sac_update(b, plan.sac_reps), b)
    if with_global:
        print(f"{arch}: batched vs sequential", file=sys.stderr, flush=True)
        sac_ms = sac.get("ms")
        batched = lambda: batched_vs_sequential(b, plan, args.batch_seq_len, n_envs, sac_ms)  # noqa: E731
        result["batched"] = guarded("batched", batched, b)
    if args.neurons != "global":
        print(f"{arch}: context neurons", file=sys.stderr, flush=True)
        result["context"] = guarded("context", lambda: context_sections(b, plan, args, result), b)
    return result


MATMUL_COLS = [("matmul dtype", "dtype", ""), ("size", "size", ""), ("ms", "ms", ".3f")]
MATMUL_COLS += [("TFLOP/s", "tflops", ".4g")]
PART_COLS = [("part", "part", ""), ("ms", "ms", ".3f"), ("% of env.step()", "pct", ".2f")]
SUMMARY_COLS = [
    ("step / bare fwd (<=1.10)", "step_over_bare", ".3f"),
    ("prune+undo % of step (<1)", "prune_undo_pct_of_step", ".3f"),
    ("max mem GB", "max_memory_gb", ".2f"), ("fwd TFLOP/s", "forward_tflops", ".4g"),
    ("fwd MFU", "forward_mfu", ".3f"), ("step MFU", "step_mfu", ".3f"),
    ("sparsity", "sparsity", ".3f"),
]  # fmt: skip
DENSE_COLS = [("dense fwd seq_len", "seq_len", ""), ("ms", "ms", ".2f")]
DENSE_COLS += [("TFLOP/s", "tflops", ".4g"), ("MFU", "mfu", ".3f")]
BATCH_COLS = [
    ("n_envs", "n_envs", ""), ("seq steps/s", "seq_steps_per_s", ".1f"),
    ("batched steps/s", "batched_steps_per_s", ".1f"), ("speedup (>=3)", "speedup", ".2f"),
    ("seq+upd steps/s", "seq_steps_per_s_with_update", ".1f"),
    ("batched+upd steps/s", "batched_steps_per_s_with_update", ".1f"),
    ("speedup w/ upd", "speedup_with_update", ".2f"),
    ("reward max abs diff", "reward_max_abs_diff", ".1e"), ("pairs", "transitions", ""),
    ("max mem GB", "max_memory_gb", ".2f"),
]  # fmt: skip


def part_rows(prof: dict, sac: dict) -> list[dict]:
    ms = prof["ms"]
    names = [*PARTS, "parts_sum", "step", "bare_forward"]
    rows = [{"part": n, "ms": ms[n], "pct": 100 * ms[n] / ms["step"]} for n in names]
    return rows + [{"part": "sac_update (1 gradient step)", "ms": sac.get("ms")}]


CONTEXT_STEP_COLS = [
    ("context step (cached orderings)", "step", ".2f"), ("masks", "context_masks", ".2f"),
    ("gathered: masks", "gather_masks", ".2f"), ("gather", "gather", ".2f"),
    ("gathered forward", "gathered_forward", ".2f"), ("undo", "gather_undo", ".3f"),
    ("gathered step", "gathered_step", ".2f"),
]  # fmt: skip
CONTEXT_RATIO_COLS = [
    ("global step ms", "global_step_ms", ".2f"),
    ("context / global (<=1.5)", "step_over_global", ".3f"),
    ("gathered / global", "gathered_over_global", ".3f"), ("max mem GB", "max_memory_gb", ".2f"),
]  # fmt: skip
ONE_OFF_COLS = [
    ("context windows", "context_windows", ""), ("context tokens", "context_tokens", ""),
    ("orderings of 1 item ms", "ms", ".1f"), ("dense stats pass ms", "statistics_ms", ".1f"),
    ("argsort etc. ms", "orderings_ms", ".1f"),
]  # fmt: skip
CONTEXT_BATCH_COLS = [
    ("n_envs", "n_envs", ""), ("context vec step ms", "vec_step_ms", ".1f"),
    ("global vec step ms", "global_vec_step_ms", ".1f"),
    ("vec context / global (<=1.5)", "vec_step_over_global", ".3f"),
    ("seq context / global", "seq_step_over_global", ".3f"),
    ("batched steps/s", "batched_steps_per_s", ".1f"), ("speedup vs seq", "speedup", ".2f"),
    ("reward max abs diff", "reward_max_abs_diff", ".1e"), ("max mem GB", "max_memory_gb", ".2f"),
]  # fmt: skip


def _rows(value: Any) -> list[dict]:
    return value if isinstance(value, list) else [value]


def context_tables(ctx: dict) -> list[str]:
    if "error" in ctx:
        return [f"context: {ctx['error']}"]
    out = ["Context neurons: one item's orderings from scratch (once per item, then cached)"]
    out.append(cm.dict_table(ctx["orderings_one_off"], ONE_OFF_COLS))
    prof = ctx["step_profile"]
    head = "Context step, orderings cached, 1 item"
    if "error" not in prof:
        head += f" of {prof['seq_len']} tokens, ms, median of {prof['reps']}"
    out += [head, cm.dict_table([prof.get("ms", prof)], CONTEXT_STEP_COLS)]
    out.append(cm.dict_table([prof], CONTEXT_RATIO_COLS))
    out.append("Context neurons, batched (per-row masks)")
    out.append(cm.dict_table(_rows(ctx["batched"]), CONTEXT_BATCH_COLS))
    return out


def print_tables(r: dict, device: str) -> None:
    out = [f"## {r['arch']} ({r['dtype']}) on {device}, random weights"]
    out.append(cm.dict_table([r["matmul"]], MATMUL_COLS))
    if "build" in r:
        print("\n\n".join([*out, f"build: {r['build']['error']}"]), flush=True)
        return
    prof = r.get("step_profile")
    if prof is not None and "error" not in prof:
        out.append(f"Step profile: 1 item of {prof['seq_len']} tokens, median of {prof['reps']}")
        out.append(cm.dict_table(part_rows(prof, r["sac_update"]), PART_COLS))
    if prof is not None:
        out.append(cm.dict_table([prof], SUMMARY_COLS))
    out.append(cm.dict_table(r["dense_forward"], DENSE_COLS))
    if "batched" in r:
        out.append("Batched vs sequential (+upd: 1 SAC gradient step per vec step)")
        out.append(cm.dict_table(_rows(r["batched"]), BATCH_COLS))
    if "context" in r:
        out += context_tables(r["context"])
    print("\n\n".join(out), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=[*cm.ARCHS, "all"], default="all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens of the profiled step")
    parser.add_argument("--batch-seq-len", type=int, default=None, help="512; --quick: 64")
    parser.add_argument("--n-envs", type=int, nargs="+", default=None, help="4 8 16; quick: 2 4")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller sizes")
    parser.add_argument(
        "--neurons", choices=("global", "context", "both"), default="global",
        help="global: the sections above; context: context-neuron sections; both: all, + ratios",
    )  # fmt: skip
    parser.add_argument(
        "--context-windows", type=int, default=4,
        help="one-off orderings cost: items with 1 and this many earlier windows (4)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="write all numbers as JSON here")
    args = parser.parse_args(argv)
    args.batch_seq_len = args.batch_seq_len or (64 if args.quick else 512)
    args.n_envs = args.n_envs or ([2, 4] if args.quick else [4, 8, 16])
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    plan = make_plan(args.quick, dev)
    cpu = f"cpu x{torch.get_num_threads()} threads"
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu
    archs = ["llama-3.1-8b", "smollm2-135m"] if args.arch == "all" else [args.arch]
    meta = {k: v for k, v in vars(args).items() if k != "out"}
    meta |= {"device_name": name, "torch": torch.__version__, "plan": asdict(plan)}
    meta |= {"flops": cm.FLOPS_FORMULA, "peak": "measured matmul TFLOP/s in the model dtype"}
    results: dict[str, Any] = {"meta": meta, "archs": {}}
    for arch in archs:
        if arch == "llama-3.1-8b" and dev.type == "cpu":
            print("skipping llama-3.1-8b: it needs a GPU", file=sys.stderr)
            results["archs"][arch] = {"skipped": "needs a GPU"}
        else:
            results["archs"][arch] = run_arch(arch, args, plan)
            cm.free_memory(dev)  # the arch's model is unreachable now
            print_tables(results["archs"][arch], name)
        if args.out is not None:  # after each arch, so a cut-short run keeps what it measured
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
