from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from scoring.metrics import PerplexityCalculator, resolve_prefix_token, score_requests
from scoring.mmlu import MMLULoglikelihoodCalculator, encode_pair, letter_context
from scoring.windows import aggregate, model_input, rolling_windows, safe_exp, word_count

REPO = Path(__file__).resolve().parents[1]
DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "a",
    "Perplexity is computed over rolling windows; " * 3,
    "xy",
]
ITEM = {
    "question": "  What is 2 + 2?\n",
    "choices": ["3", "4", "five", "22"],
    "answer": 1,
    "subject": "high_school_mathematics",
    "text": "What is 2 + 2?\nA. 3\nB. 4\nC. five\nD. 22\nAnswer:",
}
SHOT = {
    "question": "1 + 1 =",
    "choices": ["2", "3", "4", "5"],
    "answer": 0,
    "subject": "high_school_mathematics",
}


def byte_tokenizer(bos: str | None = "<s>", eos: str | None = "</s>") -> PreTrainedTokenizerFast:
    """One token per byte (no merges): any text encodes, vocab 258."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<s>": 0, "</s>": 1, **{ch: i + 2 for i, ch in enumerate(alphabet)}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return byte_tokenizer()


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=258,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.3,  # peaked predictions: differences between choices are visible
    )
    return LlamaForCausalLM(config).eval()


def hand_loglik(model: LlamaForCausalLM, prefix: int, tokens: list[int]) -> float:
    """Single unpadded forward of [prefix] + tokens[:-1], summed log p(tokens)."""
    with torch.inference_mode():
        logits = model(torch.tensor([[prefix] + tokens[:-1]])).logits[0]  # [T, V]
        logp = torch.log_softmax(logits.double(), dim=-1)
        return float(logp[torch.arange(len(tokens)), torch.tensor(tokens)].sum())


# --- windows ---------------------------------------------------------------------------------


@pytest.mark.parametrize("max_length", [1, 4, 7])
@pytest.mark.parametrize("extra", ["1", "L", "L+1", "3L+5"])
def test_windows_score_each_token_once(max_length: int, extra: str) -> None:
    n = {"1": 1, "L": max_length, "L+1": max_length + 1, "3L+5": 3 * max_length + 5}[extra]
    tokens = list(range(10, 10 + n))
    windows = rolling_windows(tokens, prefix_token=-1, max_length=max_length)
    assert [t for _, targets in windows for t in targets] == tokens
    assert windows[0][0] == [-1]
    for context, targets in windows:
        assert 1 <= len(targets) <= max_length
        assert len(model_input(context, targets, max_length)) <= max_length
    assert len(windows) == math.ceil(n / max_length)


def test_last_partial_window_is_refilled_to_max_length() -> None:
    windows = rolling_windows(list(range(10)), prefix_token=-1, max_length=4)
    assert windows[1] == ([3], [4, 5, 6, 7])  # full window: one context token
    assert windows[2] == ([5, 6, 7], [8, 9])  # partial: max_length - 2 + 1 context tokens


def test_windows_equal_lm_eval() -> None:
    lm_utils = pytest.importorskip("lm_eval.utils")
    for max_length in (1, 2, 5, 16):
        for n in range(0, 40):
            tokens = list(range(100, 100 + n))
            ours = rolling_windows(tokens, 7, max_length)
            theirs = [
                lm_utils.make_disjoint_window(w)
                for w in lm_utils.get_rolling_token_windows(tokens, 7, max_length, 1)
            ]
            assert ours == theirs, (max_length, n)


# --- counts and aggregation ------------------------------------------------------------------


def test_word_count_trap() -> None:
    page = " = Valkyria = \n\n Senjō no Valkyria 3 \n"
    assert word_count(page) == 9  # re.split keeps the leading and trailing empty strings
    assert len(page.split()) == 7
    assert word_count("") == 1


def test_aggregate_sums_before_dividing() -> None:
    got = aggregate([-10.0, -30.0], [5, 15], [20, 60])
    assert got["word_perplexity"] == pytest.approx(math.exp(2.0))
    assert got["byte_perplexity"] == pytest.approx(math.exp(0.5))
    assert got["bits_per_byte"] == pytest.approx(0.5 / math.log(2))
    mean_of_ppl = (math.exp(10 / 5) + math.exp(30 / 15)) / 2
    assert got["word_perplexity"] == pytest.approx(mean_of_ppl)  # equal only by construction
    skewed = aggregate([-1.0, -30.0], [1, 15], [1, 1])
    assert skewed["word_perplexity"] == pytest.approx(math.exp(31 / 16))


def test_overflow_is_inf_with_warning() -> None:
    with pytest.warns(RuntimeWarning, match="overflows"):
        got = aggregate([-1e6], [1], [1])
    assert got["word_perplexity"] == math.inf and got["byte_perplexity"] == math.inf
    assert math.isnan(safe_exp(math.nan))
    with pytest.raises(ValueError, match="nothing to score"):
        aggregate([0.0], [0], [0])


# --- perplexity calculator -------------------------------------------------------------------


def test_short_docs_equal_single_forward(model: LlamaForCausalLM, tokenizer) -> None:
    calc = PerplexityCalculator(model, tokenizer, max_length=200, batch_size=4)
    results = calc.loglikelihood(DOCS)
    for text, (ll, n) in zip(DOCS, results, strict=True):
        tokens = tokenizer.encode(text, add_special_tokens=False)
        assert n == len(tokens)
        assert ll == pytest.approx(hand_loglik(model, tokenizer.bos_token_id, tokens), abs=1e-4)


def test_batched_equals_one_by_one(model: LlamaForCausalLM, tokenizer) -> None:
    batched = PerplexityCalculator(model, tokenizer, max_length=32, batch_size=8)
    single = PerplexityCalculator(model, tokenizer, max_length=32, batch_size=1)
    got = batched.loglikelihood(DOCS)
    want = [single.loglikelihood([d])[0] for d in DOCS]
    assert [n for _, n in got] == [n for _, n in want]
    torch.testing.assert_close([ll for ll, _ in got], [ll for ll, _ in want], atol=1e-4, rtol=0)


def test_equals_lm_eval_rolling(model: LlamaForCausalLM, tokenizer) -> None:
    hf = pytest.importorskip("lm_eval.models.huggingface")
    from lm_eval.api.instance import Instance

    lm = hf.HFLM(pretrained=model, tokenizer=tokenizer, max_length=8, batch_size=3)
    requests = [Instance("loglikelihood_rolling", {}, (d,), 0) for d in DOCS]
    theirs = lm.loglikelihood_rolling(requests, disable_tqdm=True)
    ours = PerplexityCalculator(model, tokenizer, max_length=8).loglikelihood(DOCS)
    torch.testing.assert_close([ll for ll, _ in ours], theirs, atol=1e-4, rtol=0)


def bos_tokenizer() -> PreTrainedTokenizerFast:
    """The byte tokenizer, but encode() prepends <s> by default, as Llama-3's does."""
    tok = byte_tokenizer()
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)]
    )
    return tok


BOS_DOCS = [*DOCS, "<s>already starts with BOS", ""]


def test_default_encoding_equals_lm_eval_with_bos(model: LlamaForCausalLM) -> None:
    hf = pytest.importorskip("lm_eval.models.huggingface")
    from lm_eval.api.instance import Instance

    tok = bos_tokenizer()
    assert tok.encode("ab")[0] == tok.bos_token_id  # the tokenizer really adds BOS
    lm = hf.HFLM(pretrained=model, tokenizer=tok, max_length=8, batch_size=3)
    calc = PerplexityCalculator(model, tok, max_length=8)
    for text in BOS_DOCS:
        assert calc.tokens(text) == lm.tok_encode(text), text
    assert calc.tokens("ab") == [0, *tok.encode("ab", add_special_tokens=False)]
    assert calc.tokens("<s>x") == tok.encode("<s>x", add_special_tokens=False)  # no second BOS
    requests = [Instance("loglikelihood_rolling", {}, (d,), 0) for d in BOS_DOCS]
    theirs = lm.loglikelihood_rolling(requests, disable_tqdm=True)
    ours = calc.loglikelihood(BOS_DOCS)
    torch.testing.assert_close([ll for ll, _ in ours], theirs, atol=1e-4, rtol=0)
    plain = PerplexityCalculator(model, tok, max_length=8, add_special_tokens=False)
    assert plain.tokens("ab") == tok.encode("ab", add_special_tokens=False)


def test_document_scorer_equals_lm_eval_with_bos(model: LlamaForCausalLM) -> None:
    """`score` and `eval` score documents through make_task: the same tokens as lm-eval."""
    hf = pytest.importorskip("lm_eval.models.huggingface")
    from lm_eval.api.instance import Instance

    from commands.build import make_task
    from config import Config
    from data.sources import make_wiki_document
    from scoring.tasks import score_task

    tok = bos_tokenizer()
    cfg = Config.model_validate(
        {"model": {"llm": "tiny", "encoder": "tiny"}, "env": {"max_length": 8}}
    )
    docs = [make_wiki_document(text) for text in DOCS]
    task = make_task(cfg, model, tok, docs)
    lls, _ = score_task(model, task, list(range(len(docs))), None)
    ours = [sum(ll) for ll in lls]
    lm = hf.HFLM(pretrained=model, tokenizer=tok, max_length=8, batch_size=3)
    requests = [Instance("loglikelihood_rolling", {}, (d.text,), 0) for d in docs]
    theirs = lm.loglikelihood_rolling(requests, disable_tqdm=True)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    word_ppl = math.exp(-theirs[0] / docs[0].word_count)
    assert task.metric(0, lls[0]) == pytest.approx(word_ppl, rel=1e-4)


def test_evaluate_counts_on_original_text(model: LlamaForCausalLM, tokenizer) -> None:
    docs = [{"text": "a b", "original_text": " a  b \n"}, {"text": "cd", "original_text": "cd"}]
    calc = PerplexityCalculator(model, tokenizer, max_length=4)
    got = calc.evaluate(docs)
    lls = [ll for ll, _ in calc.loglikelihood(["a b", "cd"])]
    assert got["word_perplexity"] == pytest.approx(math.exp(-sum(lls) / (4 + 1)))
    assert got["byte_perplexity"] == pytest.approx(math.exp(-sum(lls) / (7 + 2)))
    assert got["token_perplexity"] == pytest.approx(math.exp(-sum(lls) / 5))
    assert (got["num_docs"], got["num_tokens"], got["max_length"]) == (2, 5, 4)
    with pytest.raises(ValueError, match="original_text"):
        calc.evaluate([{"text": "a"}])


def test_empty_and_one_token_docs(model: LlamaForCausalLM, tokenizer) -> None:
    calc = PerplexityCalculator(model, tokenizer, max_length=4)
    with pytest.warns(UserWarning, match="no tokens"):
        got = calc.loglikelihood(["", "z"])
    assert got[0] == (0.0, 0)
    z = tokenizer.encode("z", add_special_tokens=False)
    assert got[1][0] == pytest.approx(hand_loglik(model, tokenizer.bos_token_id, z), abs=1e-5)
    docs = [{"text": "", "original_text": ""}, {"text": "z", "original_text": "z"}]
    with pytest.warns(UserWarning):
        metrics = calc.evaluate(docs)
    # lm-eval: the empty page adds 0 log-likelihood but re.split still counts 1 "word"
    assert metrics["word_perplexity"] == pytest.approx(math.exp(-got[1][0] / 2))


def test_prefix_fallbacks() -> None:
    assert resolve_prefix_token(byte_tokenizer(), "bos") == 0
    assert resolve_prefix_token(byte_tokenizer(), "eos") == 1
    with pytest.warns(UserWarning, match="no bos"):
        assert resolve_prefix_token(byte_tokenizer(bos=None), "bos") == 1
    with pytest.warns(UserWarning, match="no eos"):
        assert resolve_prefix_token(byte_tokenizer(eos=None), "eos") == 0
    with pytest.raises(ValueError, match="neither"):
        resolve_prefix_token(byte_tokenizer(bos=None, eos=None), "bos")


# --- MMLU ------------------------------------------------------------------------------------


def test_letter_prompt_literal() -> None:
    want = (
        "The following are multiple choice questions (with answers) about high school "
        "mathematics.\n\n1 + 1 =\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer: A\n\n"
        "What is 2 + 2?\nA. 3\nB. 4\nC. five\nD. 22\nAnswer:"
    )
    assert letter_context(ITEM, [SHOT]) == want


def test_encode_pair_moves_trailing_space(tokenizer) -> None:
    ctx, cont = encode_pair(tokenizer, "Answer: ", "B")
    assert ctx == tokenizer.encode("Answer:") and cont == tokenizer.encode(" B")


@pytest.mark.parametrize("mode", ["letter", "choice_text"])
def test_mmlu_batched_equals_separate(model: LlamaForCausalLM, tokenizer, mode: str) -> None:
    calc = MMLULoglikelihoodCalculator(
        model,
        tokenizer,
        mode,
        num_fewshot=int(mode == "letter"),
        dev_items={ITEM["subject"]: [SHOT]},
    )
    context, continuations = calc.prompt(ITEM)
    if mode == "choice_text":
        assert context == ITEM["text"] and continuations == [" 3", " 4", " five", " 22"]
    else:
        assert continuations == [" A", " B", " C", " D"]
    got = calc.score(ITEM)
    separate = [score_requests(model, [r], 1)[0] for r in calc.requests(ITEM)]
    torch.testing.assert_close(got["logliks"], separate, atol=1e-4, rtol=0)
    scores = got["logliks"]
    if mode == "choice_text":
        scores = [ll / len(c) for ll, (_, c) in zip(scores, calc.requests(ITEM), strict=True)]
    assert got["pred"] == max(range(4), key=scores.__getitem__)
    assert got["correct"] == (got["pred"] == 1)
    assert calc.evaluate([ITEM, ITEM]) == {"acc": float(got["correct"]), "n": 2}


def test_score_requests_rejects_bad_requests(model: LlamaForCausalLM) -> None:
    assert score_requests(model, []) == []
    with pytest.raises(ValueError, match="non-empty"):
        score_requests(model, [([], [5])])
    with pytest.raises(ValueError, match="exceed max_length"):
        score_requests(model, [([1], [5, 6, 7])], max_length=2)


def test_mmlu_letter_equals_lm_eval(model: LlamaForCausalLM, tokenizer) -> None:
    hf = pytest.importorskip("lm_eval.models.huggingface")
    from lm_eval.api.instance import Instance

    calc = MMLULoglikelihoodCalculator(model, tokenizer, "letter")
    context, continuations = calc.prompt(ITEM)
    lm = hf.HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4)
    requests = [Instance("loglikelihood", {}, (context, c), 0) for c in continuations]
    theirs = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    torch.testing.assert_close(calc.score(ITEM)["logliks"], theirs, atol=1e-4, rtol=0)


def test_mmlu_bad_config(model: LlamaForCausalLM, tokenizer) -> None:
    with pytest.raises(ValueError, match="mode"):
        MMLULoglikelihoodCalculator(model, tokenizer, "letters")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dev_items"):
        MMLULoglikelihoodCalculator(model, tokenizer, "letter", num_fewshot=2)
    calc = MMLULoglikelihoodCalculator(model, tokenizer, "letter", 2, {ITEM["subject"]: [SHOT]})
    with pytest.raises(ValueError, match="2-shot"):
        calc.score(ITEM)


# --- benchmark script ------------------------------------------------------------------------


@pytest.mark.slow
def test_lm_eval_agreement_bench_tiny() -> None:
    pytest.importorskip("lm_eval")  # reads the WikiText-2 copy shipped in data/
    cmd = [sys.executable, "bench/lm_eval_agreement.py", "--limit", "1", "--max-lengths", "64"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "relative difference" in done.stdout
