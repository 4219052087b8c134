"""`generate`: greedy text generation on the MLP neurons each prompt chooses for itself."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from commands.allocations import (
    add_allocation_argument,
    agent_env,
    parse_allocation,
    policy_kept,
    read_budget_rule,
)
from commands.build import Pruner, make_pruner
from commands.common import (
    new_run_dir,
    observations,
    resolve_path,
    seed_everything,
    warn,
    write_json,
)
from config import Config, ConfigError
from models import LoadedModels, load_models, model_shape, peek_shape
from pruning.allocation import sparsity_of
from pruning.budgets import BudgetRule
from pruning.generation import COMPILE_MODES, generate_narrowed
from rl.checkpoints import check_agent, read_agent

HELP = (
    "Generate from --prompt / --prompts-file with a fixed allocation (as `score` takes), a "
    "policy (--agent --target) or fitted per-input budgets (--budget-rules --target): each "
    "layer keeps the top-k neurons of the prompt's own dense activations (env.neurons=context) "
    "or the global order. Prints text and tokens/s."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_allocation_argument(parser, None, "dense")  # None: told apart from --budget-rules
    parser.add_argument("--prompt", action="append", default=[], help="prompt text (repeatable)")
    parser.add_argument("--prompts-file", default=None, help="a text file, one prompt a line")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (32)")
    parser.add_argument(
        "--target", type=float, default=None, help="profile, policy or budget-rules target"
    )
    parser.add_argument("--agent", default=None, help="a trained agent .zip: per-prompt allocation")
    parser.add_argument(
        "--budget-rules",
        default=None,
        help="an `eval` run's budget_rules.json (mixed task, eval.fit_items): each prompt's own "
        "total budget at --target, from its embedding",
    )
    parser.add_argument(
        "--neurons", choices=("global", "context"), default=None, help="default: env.neurons"
    )
    parser.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default=None,
        choices=COMPILE_MODES,
        help="decode through torch.compile (MODE: default); pays ~30 s per allocation on an 8B "
        "model, then ~1.3x faster decoding (bench/README.md)",
    )


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise ConfigError(f"--prompts-file {path} does not exist")
        prompts += [line for line in path.read_text().splitlines() if line.strip()]
    if not prompts or any(not p.strip() for p in prompts):
        raise ConfigError("give at least one non-empty prompt: --prompt TEXT or --prompts-file F")
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.agent and args.target is None:
        raise ConfigError("--agent needs --target (the MLP sparsity the policy should meet)")
    if args.budget_rules and args.target is None:
        raise ConfigError("--budget-rules needs --target (the MLP sparsity of its rule)")
    if args.budget_rules and (args.agent or args.allocation is not None):
        raise ConfigError("give one of ALLOCATION, --agent and --budget-rules")
    return prompts


def fit_context(tokens: list[int], limit: int, max_new_tokens: int, index: int) -> list[int]:
    """Keep the prompt's last tokens when prompt + new tokens exceed the model's context."""
    room = limit - max_new_tokens
    if room < 1:
        raise ConfigError(f"--max-new-tokens {max_new_tokens} leaves no room in a {limit} context")
    if len(tokens) > room:
        print(
            f"warning: prompt {index} has {len(tokens)} tokens; kept its last {room} "
            f"(context {limit} - {max_new_tokens} new tokens)",
            file=sys.stderr,
        )
        return tokens[-room:]
    return tokens


def allocations(
    cfg: Config,
    args: argparse.Namespace,
    models: LoadedModels,
    pruner: Pruner,
    prompts: list[str],
    agent: Any,
    rule: BudgetRule | None,
    warnings: list[str],
) -> np.ndarray:
    """kept [n_prompts, n_layers] (dense: full width); `agent` as `read_agent` gives it, `rule`
    as `read_budget_rule` (each prompt's budget from its embedding, spread as `budget_kept`)."""
    n_layers, width = model_shape(models.llm)
    if rule is not None:
        shape = (n_layers, width, pruner.align)  # the loaded model's, checked again
        rule = read_budget_rule(resolve_path(args.budget_rules), args.target, rule.neurons, shape)
        features = observations(models, cfg.data, prompts)
        if features.shape[1] != len(rule.model.mean):
            raise ConfigError(
                f"--budget-rules {args.budget_rules} read {len(rule.model.mean)}-dim embeddings; "
                f"model.encoder gives {features.shape[1]}: use the encoder they were fitted with"
            )
        return rule.kept(features, *shape)
    if args.agent is None:
        kept = parse_allocation(args.allocation, (n_layers, width, cfg.env.align), args.target)
        return np.tile(kept, (len(prompts), 1))
    agent_path = resolve_path(args.agent)
    env, warning = agent_env(agent_path, cfg.env)
    if warning:
        warn(warning, warnings)
    action_map = pruner.action_map(env)
    obs = observations(models, cfg.data, prompts)
    check_agent(agent, agent_path, obs.shape[1] + action_map.budget, n_layers)
    return policy_kept(agent, obs, args.target, action_map)


def generate_one(
    cfg: Config, args: argparse.Namespace, models: LoadedModels, pruner: Pruner, prompt: tuple
) -> dict:
    """Generate for one (index, text, kept [n_layers], neurons); print it; its row."""
    i, text, kept, neurons = prompt
    limit = int(getattr(models.llm.config, "max_position_embeddings", 2048))
    tokens = fit_context(list(models.tokenizer.encode(text)), limit, args.max_new_tokens, i)
    out = generate_narrowed(
        pruner.llm,
        tokens,
        kept,
        args.max_new_tokens,
        neurons,
        cfg.importance.criterion,
        compile_mode=args.compile,
    )
    completion = models.tokenizer.decode(out.tokens, skip_special_tokens=True)
    sparsity = sparsity_of(kept, pruner.width)
    print(f"--- prompt {i}\n{text}{completion}")
    print(
        f"({len(out.tokens)} tokens, {out.tokens_per_second:.1f} tokens/s, sparsity {sparsity:.3f}"
        f", {out.decode_mode} decoding{f': {out.eager_reason}' if out.eager_reason else ''})"
    )
    return {
        "prompt": text,
        "prompt_tokens": len(tokens),
        "completion": completion,
        "tokens": out.tokens,
        "sparsity": sparsity,
        "prefill_seconds": round(out.prefill_seconds, 4),
        "decode_seconds": round(out.decode_seconds, 4),
        "tokens_per_second": round(out.tokens_per_second, 2),
        "decode_mode": out.decode_mode,
        "eager_reason": out.eager_reason,  # why it decoded eagerly; None for a CUDA graph
        "capture_failed": out.capture_failed,  # eager as a fallback: the capture raised
    }


def run(cfg: Config, args: argparse.Namespace) -> int:
    prompts = read_prompts(args)
    seed_everything(cfg.seed)
    neurons = args.neurons or cfg.env.neurons
    agent = rule = None  # the allocation, agent or rule is checked before the model loads
    shape = (*peek_shape(cfg.model.llm), cfg.env.align)
    if args.budget_rules:
        rule = read_budget_rule(resolve_path(args.budget_rules), args.target, neurons, shape)
    elif args.agent is None:
        args.allocation = args.allocation or "dense"
        parse_allocation(args.allocation, shape, args.target)
    else:
        agent = read_agent(resolve_path(args.agent))
    models = load_models(cfg.model)
    pruner = make_pruner(cfg, models)
    warnings: list[str] = []
    kept = allocations(cfg, args, models, pruner, prompts, agent, rule, warnings)
    rows = [
        generate_one(cfg, args, models, pruner, (i, text, kept[i], neurons))
        for i, text in enumerate(prompts)
    ]
    for i, row in enumerate(rows):  # the one fallback: a CUDA graph capture that raised
        if row["capture_failed"]:
            warn(f"prompt {i} decoded eagerly: {row['eager_reason']}", warnings)
    result = {"allocation": args.allocation, "agent": args.agent, "neurons": neurons}
    result["budget_rules"] = args.budget_rules
    result["warnings"] = warnings
    run_dir = new_run_dir(cfg, "generate")
    write_json(run_dir / "generate.json", result | {"results": rows})
    speeds = [r["tokens_per_second"] for r in rows]
    print(json.dumps({"run": str(run_dir), "tokens_per_second": speeds}))
    return 0
