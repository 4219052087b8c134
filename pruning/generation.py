"""Generation with the neurons a prompt chooses: a dense prefill of the prompt collects each
neuron's statistic, every layer keeps its top kept[l] neurons for this prompt, the narrowed MLP
weights are gathered once (`PrunableLLM.prune(mask_fn)`: contiguous copies), and greedy
decoding runs on that model with a static KV cache (`GreedyDecoder`): on CUDA every decode step
is one replay of a captured CUDA graph, since an eager step of a large model is bound by kernel
launches and would hide what the narrowed weights save. Opt-in (`compile_mode`): the model's
decode forward goes through `torch.compile` first (fused kernels for the norms, RoPE, the cache
update), and that compiled step is what the graph captures."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pruning.context_importance import orderings_from_statistics, row_statistics
from pruning.importance import CriterionName
from pruning.prunable_llm import MaskFn, PrunableLLM

WARMUP_STEPS = 2  # eager decode steps before a capture (lazy allocations, cuBLAS handles)
EOS_CHECK_EVERY = 16  # decode steps between checks for an end-of-sequence token (one sync each)
# torch.compile modes that leave the CUDA graph to us ("reduce-overhead" captures graphs itself)
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class Generation:
    tokens: list[int]  # new tokens only
    prefill_seconds: float  # selection: the dense statistics pass and each layer's top-k
    decode_seconds: float  # gather + the narrowed prompt pass + decoding (capture included)
    phases: dict[str, float] = field(default_factory=dict)  # seconds: see `PHASES`
    decode_mode: str = "eager"  # "cuda_graph" or "eager"
    replayed_tokens: int = 0  # tokens of the "steps" phase (after warm-up and capture)
    eager_reason: str | None = None  # why decoding ran eagerly; None for a CUDA graph
    capture_failed: bool = False  # eager only because the graph capture raised (a fallback)

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / max(self.decode_seconds, 1e-9)

    @property
    def steady_tokens_per_second(self) -> float:
        """Decode speed once running: the "steps" phase alone (graph replays on CUDA)."""
        return self.replayed_tokens / max(self.phases.get("steps", 0.0), 1e-9)


PHASES = {
    "statistics": "dense prefill of the prompt with hooks (context neurons only)",
    "top_k": "per-layer orderings and keep masks from the statistics",
    "gather": "PrunableLLM.prune: narrowed weights gathered (or prefix views)",
    "prompt": "the narrowed model's prompt pass into the static cache (first new token)",
    "compile": "the first decode step through torch.compile (compile_mode only; else 0)",
    "capture": "warm-up steps and the CUDA graph capture (CUDA only; eager: the warm-up)",
    "steps": "the remaining decode steps",
}


def prompt_mask_fn(ordering: torch.Tensor, kept: Sequence[int] | np.ndarray) -> MaskFn:
    """mask_fn in ORIGINAL ids: layer l keeps the kept[l] first neurons of `ordering`
    [n_layers, d_ff] (original ids, most important first)."""
    ranks = torch.empty_like(ordering, dtype=torch.long)
    ranks.scatter_(1, ordering.long(), torch.arange(ordering.shape[1]).expand_as(ranks))
    counts = torch.from_numpy(np.array(kept, dtype=np.int64))
    masks = ranks < counts[:, None]  # [n_layers, d_ff] bool, original ids
    return lambda layer: masks[layer]


class GreedyDecoder:
    """Greedy decoding of `batch` rows on a static KV cache of `max_len` positions.

    The prompt pass is eager. Decode steps read the fed token and its position from tensors that
    never move (`tokens` [batch, max_len + 1], `position` [1]) and write the next token in place,
    so on CUDA one step is captured once (`capture`) and replayed; elsewhere, or if the capture
    fails, steps run eagerly. `rewind` goes back to an earlier position (benchmarks repeat runs).
    Everything runs under no_grad, not inference_mode: inference tensors can't be rewound later.

    `compile_mode` (one of COMPILE_MODES): decode steps call `torch.compile(model)` instead
    (dynamic=False: one kernel set per weight shape; the first step of a shape compiles, later
    decoders of the same model and shapes reuse it); the prompt pass stays eager.
    """

    def __init__(
        self, model: Any, batch: int, max_len: int, compile_mode: str | None = None
    ) -> None:
        from transformers import StaticCache

        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode {compile_mode!r}: use one of {COMPILE_MODES} or None")
        self.model = model
        module = getattr(model, "wrapped", model)  # PrunableLLM: compile the HF module itself
        self.step_model = module if compile_mode is None else torch.compile(
            module, mode=compile_mode, dynamic=False
        )  # fmt: skip
        self.compile_mode = compile_mode
        self.device = model.get_input_embeddings().weight.device
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.tokens = torch.zeros(batch, max_len + 1, dtype=torch.long, device=self.device)
        self.position = torch.zeros(1, dtype=torch.long, device=self.device)  # next fed token
        self.graph: torch.cuda.CUDAGraph | None = None
        self.capture_error: str | None = None

    @property
    def mode(self) -> str:
        return "eager" if self.graph is None else "cuda_graph"

    def _positions(self, positions: torch.Tensor) -> dict[str, torch.Tensor]:
        # transformers >= 5.2x: static layers count their length in a tensor; older: cache_position
        if hasattr(self.cache.layers[0], "cumulative_length"):
            return {"position_ids": positions[None]}
        return {"position_ids": positions[None], "cache_position": positions}

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor) -> None:
        """ids [batch, n]: fill the cache from position 0; the first new token lands at n."""
        n = ids.shape[1]
        self.rewind(0)
        positions = torch.arange(n, device=self.device)
        out = self.model(
            ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1,
            **self._positions(positions),
        )  # fmt: skip
        self.tokens[:, :n] = ids
        self.tokens[:, n] = out.logits[:, -1].argmax(-1)
        self.position.fill_(n)

    def rewind(self, position: int) -> None:
        """Continue from `position` (the token there is fed next), in place: captured addresses
        stay valid."""
        self.position.fill_(position)
        for layer in self.cache.layers:
            length = getattr(layer, "cumulative_length", None)
            if isinstance(length, torch.Tensor):
                length.fill_(position)

    @torch.no_grad()
    def _step(self) -> None:
        token = self.tokens.index_select(1, self.position)  # [batch, 1]
        out = self.step_model(
            token, past_key_values=self.cache, use_cache=True, **self._positions(self.position)
        )
        self.tokens.index_copy_(1, self.position + 1, out.logits[:, -1:].argmax(-1))
        self.position.add_(1)

    def capture(self, warmup: int = WARMUP_STEPS) -> int:
        """Run `warmup` eager steps (they decode real tokens), then on CUDA capture one step as
        a graph (capturing executes nothing). Returns the steps taken."""
        if self.device.type != "cuda":
            for _ in range(warmup):
                self._step()
            return warmup
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                self._step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._step()
            self.graph = graph
        except Exception as err:  # decode eagerly instead; callers report capture_error
            self.capture_error = f"{type(err).__name__}: {str(err)[:200]}"
            torch.cuda.synchronize(self.device)
        return warmup

    def steps(self, n: int, eos: Sequence[int] = ()) -> int:
        """Up to n decode steps; with `eos`, stop after a step that wrote one of those tokens in
        every row (checked every EOS_CHECK_EVERY steps: the steps past it are wasted, not kept).
        Returns the steps taken."""
        stop = torch.tensor(list(eos), device=self.device) if eos else None
        done, start = 0, int(self.position) if stop is not None else 0  # a sync
        while done < n:
            for _ in range(min(EOS_CHECK_EVERY, n - done)):
                if self.graph is not None:
                    self.graph.replay()
                else:
                    self._step()
                done += 1
            if stop is not None:
                new = self.tokens[:, start + 1 : start + 1 + done]  # [batch, done]
                if torch.isin(new, stop).any(dim=1).all():
                    break
        return done

    def generated(self, first: int, n: int, eos: Sequence[int] = ()) -> list[list[int]]:
        """Per row, the n tokens from position `first` on (the first new token sits at the
        prompt's length), each row cut after its first `eos` token."""
        rows = self.tokens[:, first : first + n].tolist()
        stops = set(eos)
        return [row[: next((i + 1 for i, t in enumerate(row) if t in stops), len(row))]
                for row in rows]  # fmt: skip


def eos_ids(model: Any) -> list[int]:
    """The end-of-sequence ids greedy generation stops at, read as HF `generate` reads them
    (the generation config's, else the model config's)."""
    config = getattr(model, "generation_config", None) or model.config
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


class _Clock:
    """Seconds between laps, the device synchronized at each lap (phases never overlap)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.last = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self) -> float:
        now = self._now()
        seconds, self.last = now - self.last, now
        return seconds


def select_neurons(
    model: PrunableLLM, prompt: list[int], kept: np.ndarray, criterion: CriterionName, clock: _Clock
) -> tuple[MaskFn, dict[str, float]]:
    """mask_fn keeping each layer's top kept[l] neurons of the prompt's dense statistics."""
    sums = row_statistics(model, [prompt], criterion)  # [1, L, d_ff]
    phases = {"statistics": clock.lap()}
    mask_fn = prompt_mask_fn(orderings_from_statistics(model, sums, criterion)[0], kept)
    return mask_fn, phases | {"top_k": clock.lap()}


def decode(
    model: Any,
    prompt: list[int],
    max_new_tokens: int,
    eos: Sequence[int],
    graph: bool,
    clock: _Clock,
    compile_mode: str | None = None,
) -> tuple[list[int], dict[str, float], dict[str, Any]]:
    """Greedy tokens of `model` after `prompt` on a `GreedyDecoder`; the phases "prompt",
    "compile", "capture" and "steps" in seconds; `Generation`'s decode fields (mode, tokens of
    "steps", why it decoded eagerly, whether a capture failed)."""
    device = model.get_input_embeddings().weight.device
    decoder = GreedyDecoder(model, 1, len(prompt) + max_new_tokens, compile_mode)
    decoder.prefill(torch.tensor([prompt], device=device))
    phases = {"prompt": clock.lap()}
    remaining = max_new_tokens - 1
    taken = 0
    phases["compile"] = 0.0
    if compile_mode is not None:
        taken = decoder.steps(min(1, remaining))  # compiles, unless this shape already did
        phases["compile"] = clock.lap()
    warmup = min(WARMUP_STEPS, remaining - taken)
    graphed = graph and remaining - taken > warmup
    taken += decoder.capture(warmup) if graphed else decoder.steps(warmup)
    if decoder.capture_error:
        eager = f"CUDA graph capture failed ({decoder.capture_error})"
    elif not graph:
        eager = "CUDA graphs turned off (graph=False)"
    elif decoder.device.type != "cuda":
        eager = f"CUDA graphs need a CUDA device, the model is on {decoder.device.type}"
    else:
        eager = None if graphed else f"{max_new_tokens} new tokens leave no step to replay"
    phases["capture"] = clock.lap()
    first = len(prompt)  # position of the first new token
    ended = any(t in eos for t in decoder.generated(first, 1 + taken)[0])
    replayed = 0 if ended else decoder.steps(remaining - taken, eos)
    phases["steps"] = clock.lap()
    info = {"decode_mode": decoder.mode, "replayed_tokens": replayed, "eager_reason": eager,
            "capture_failed": decoder.capture_error is not None}  # fmt: skip
    return decoder.generated(first, 1 + taken + replayed, eos)[0], phases, info


@torch.no_grad()
def generate_narrowed(
    model: PrunableLLM,
    prompt: list[int],
    kept: np.ndarray | None,
    max_new_tokens: int,
    neurons: str = "context",
    criterion: CriterionName = "mean_abs_activation",
    stop_at_eos: bool = True,
    graph: bool = True,
    compile_mode: str | None = None,
) -> Generation:
    """Greedy continuation of `prompt` under kept [n_layers] (None: dense) with the prompt's own
    neurons (`neurons="context"`) or the global order's; the model is restored in finally.

    As HF `generate` (greedy): at most max_new_tokens, ending after the first end-of-sequence
    token unless `stop_at_eos` is False. `graph=False` decodes eagerly on CUDA too;
    `compile_mode` decodes through torch.compile (see `GreedyDecoder`)."""
    clock = _Clock(model.get_input_embeddings().weight.device)
    allocation: np.ndarray | MaskFn | None = kept
    phases = {"statistics": 0.0, "top_k": 0.0}
    if kept is not None and neurons == "context":
        allocation, phases = select_neurons(model, prompt, kept, criterion, clock)
    if allocation is not None:
        model.prune(allocation)
    try:
        phases["gather"] = clock.lap()
        eos = eos_ids(model) if stop_at_eos else []
        tokens, decoded, info = decode(
            model, prompt, max_new_tokens, eos, graph, clock, compile_mode
        )
    finally:
        model.undo_prune()  # the decoder (graph, cache) is gone: nothing reads the weights now
    phases |= decoded
    select = phases["statistics"] + phases["top_k"]
    return Generation(tokens, select, sum(phases.values()) - select, phases, **info)
