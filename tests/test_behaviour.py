"""Answer-behaviour steering on a tiny model: each direction method, the item measures, the tuner's
budget rule and the effect statistics, checked against independent computations; bad input refused."""

import json
import random

import pytest
import torch

from finsurg.analysis import directions
from finsurg.analysis.analyze import analyze
from finsurg.analysis.measures import Batches, Measure, answer_items
from finsurg.analysis.options import AnalysisOptions
from finsurg.analysis.tune import Search, Trial, search
from finsurg.cli import main
from finsurg.effects import effect
from finsurg.models.loading import load_model, load_tokenizer
from finsurg.models.source import resolve_model
from finsurg.packs import Pack
from finsurg.steer.arch import by_name
from finsurg.steer.hooks import offsets_added
from finsurg.steer.recipe import Recipe
from finsurg.steer.surgery import Surgery

from conftest import export_checked, tree_hashes
from test_analysis import write_prompt_set

LLAMA = by_name("LlamaForCausalLM")
POSITIVE = ["buy the index fund now", "invest in stocks today", "buy bonds this year", "you should buy the fund"]
NEGATIVE = [
    "consult a professional first",
    "be careful with risk",
    "you cannot know , consult",
    "it is risk , be careful",
]
QUESTIONS = [
    "what stock should i buy",
    "how should i invest my savings",
    "should i buy a bond fund",
    "what fund is best",
    "is it time to invest",
    "how do i invest cash",
    "should i sell my stock",
    "what is the best plan",
    "where should my money go",
    "can i buy stocks now",
    "should i retire now",
    "what should i do with cash",
]


def write_pack(directory, answers=None):
    write_prompt_set(directory)
    rng = random.Random(0)
    items = [{"question": q, "positive": rng.choice(POSITIVE), "negative": rng.choice(NEGATIVE)} for q in QUESTIONS]
    json.dump(
        answers or {"train": items[:6], "tune": items[6:9], "heldout": items[9:]},
        (directory / "answers.json").open("w"),
    )
    json.dump(
        {
            "items": [
                {"question": "is the sea blue", "reply": "the sea is blue and big"},
                {"question": "what is a cat", "reply": "a cat can run and eat"},
                {"question": "what is paris", "reply": "paris is a city in france"},
            ]
        },
        (directory / "neutral_replies.json").open("w"),
    )
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest |= {
        "answers": "answers.json",
        "neutral_replies": "neutral_replies.json",
        "system_prompts": {"positive": "you should buy", "negative": "be careful and consult"},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


@pytest.fixture(scope="module")
def tiny(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    return tokenizer, load_model(tiny_model)


def _score(model, tokenizer, context, continuation, offsets):
    """log P(continuation | context) from one unpadded forward pass with forward hooks: the reference."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad(), offsets_added(model, Surgery.of(offsets), LLAMA):
        log_probs = torch.log_softmax(model(ids).logits[0].double(), -1)
    n = len(continuation)
    return float(log_probs[-n - 1 : -1].gather(-1, ids[0, -n:, None]).sum())


def test_batched_scores_match_one_at_a_time(tiny, tmp_path):
    tokenizer, model = tiny
    pairs = Pack.load(write_pack(tmp_path / "pack")).answer_pairs().train
    items = answer_items(tokenizer, pairs)
    offsets = {2: torch.linspace(-1, 1, 64), 3: torch.linspace(1, -1, 64)}
    batches = Batches(model, tokenizer, LLAMA, items, batch_size=4)
    for got, item in zip(batches.run(Surgery.of(offsets)), items):
        assert got == pytest.approx(_score(model, tokenizer, item.context, item.continuation, offsets), abs=1e-4)
    for got, item in zip(batches.run({}), items):
        assert got == pytest.approx(_score(model, tokenizer, item.context, item.continuation, {}), abs=1e-4)


def test_the_stream_cache_lives_in_files_not_memory(tiny, tmp_path):
    import gc
    from pathlib import Path

    tokenizer, model = tiny
    items = answer_items(tokenizer, Pack.load(write_pack(tmp_path / "pack")).answer_pairs().train)
    batches = Batches(model, tokenizer, LLAMA, items, batch_size=4)
    scratch = Path(batches.streams.scratch.name)
    assert len(list(scratch.glob("*.pt"))) == len(batches.batches) * model.config.num_hidden_layers
    ids, mask, _ = batches.batches[0]
    with torch.no_grad():
        states = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert torch.equal(batches.streams.entering(0, 2), states[2])  # what enters layer 2, read back from its file
    del batches
    gc.collect()
    assert not scratch.exists()  # removed with the cache


def test_direction_methods_match_independent_computations(tiny, tmp_path):
    tokenizer, model = tiny
    pairs = Pack.load(write_pack(tmp_path / "pack")).answer_pairs().train
    contrast = directions.read_contrast(model, tokenizer, LLAMA, pairs, batch_size=3)
    # the site's output after layer L is HF's hidden_states[L + 1]; pooled over the answer's tokens
    for index, item in enumerate(answer_items(tokenizer, pairs)):
        with torch.no_grad():
            states = model(torch.tensor([item.context + item.continuation]), output_hidden_states=True).hidden_states
        n = len(item.continuation)
        expected = torch.stack([states[layer + 1][0, -n:].mean(0) for layer in range(3)])
        got = (contrast.positive if index % 2 == 0 else contrast.negative)[index // 2, :3]
        assert torch.allclose(got, expected, atol=1e-4)

    diffs = (contrast.positive - contrast.negative).double()
    caa = directions.caa(contrast)
    mean = diffs.mean(0)
    assert torch.allclose(caa.double(), mean / mean.norm(dim=-1, keepdim=True), atol=1e-6)

    pca = directions.pca(contrast)
    for layer in range(diffs.shape[1]):
        centred = (diffs[:, layer] - diffs[:, layer].mean(0)).numpy()
        covariance = centred.T @ centred
        eigenvalues, eigenvectors = torch.linalg.eigh(torch.from_numpy(covariance))
        top = eigenvectors[:, -1]
        assert abs(float(pca[layer].double() @ top)) == pytest.approx(1.0, abs=1e-4)  # same axis
        assert float((diffs[:, layer] @ pca[layer].double()).mean()) > 0  # sign fixed by the data


def test_effect_statistics():
    shifts = [2.0, 1.0, -0.5, 3.0, 0.5, -1.0, 2.5, 1.5]
    result = effect(shifts, direction=1.0)
    assert result.mean == pytest.approx(sum(shifts) / 8)
    assert result.wrong_way == pytest.approx(2 / 8)
    assert effect(shifts, direction=-1.0).wrong_way == pytest.approx(6 / 8)
    low, high = result.ci95
    assert low < result.mean < high
    rng = random.Random(0)  # an independent bootstrap agrees on the interval to within resampling noise
    means = sorted(sum(rng.choices(shifts, k=8)) / 8 for _ in range(20000))
    assert low == pytest.approx(means[500], abs=0.15) and high == pytest.approx(means[19499], abs=0.15)
    assert effect(shifts, 1.0) == effect(shifts, 1.0)  # seeded: reproducible


def test_the_chosen_point_is_within_budget_and_unbeaten(tiny, tmp_path):
    tokenizer, model = tiny
    pack = Pack.load(write_pack(tmp_path / "pack"))
    splits = pack.answer_pairs()
    measure = Measure(model, tokenizer, LLAMA, splits.tune, pack.neutral_reply_items(), batch_size=4)
    contrast = directions.read_contrast(model, tokenizer, LLAMA, splits.train)
    candidates = {"caa": directions.caa(contrast), "pca": directions.pca(contrast)}
    found = search(measure, candidates, contrast.residual_norm(), 4, trials=6, budget=0.05, seed=3)
    chosen = found.chosen()
    assert chosen.kl <= 0.05
    assert all(t.two_sided <= chosen.two_sided for t in found.trials if t.measured and t.kl <= 0.05)
    again = search(measure, candidates, contrast.residual_norm(), 4, trials=6, budget=0.05, seed=3)
    assert [t.row() for t in again.trials] == [t.row() for t in found.trials]  # seeded: reproducible
    # the rule itself, on hand-made trials: a better shift over budget never wins
    made = Search(
        budget=0.1,
        trials=[
            Trial(0, "caa", [1], 0.1, kl=0.05, shift_up=1.0, shift_down=-2.0),
            Trial(1, "caa", [1], 0.3, kl=0.2, shift_up=5.0, shift_down=-5.0),
            Trial(2, "pca", [2], 0.2, kl=0.09, shift_up=1.5, shift_down=-1.2),
        ],
    )
    assert made.chosen().number == 2 and [t.number for t in made.pareto()] == [0, 2, 1]


def test_the_search_agrees_across_thread_counts(tiny, tmp_path):
    """The tuned pieces at 1 and 2 threads: the same trials and choice, the figures within float32 rounding."""
    tokenizer, model = tiny
    pack = Pack.load(write_pack(tmp_path / "pack"))
    splits = pack.answer_pairs()
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            measure = Measure(model, tokenizer, LLAMA, splits.tune, pack.neutral_reply_items(), batch_size=4)
            contrast = directions.read_contrast(model, tokenizer, LLAMA, splits.train)
            candidates = {"caa": directions.caa(contrast), "pca": directions.pca(contrast)}
            runs.append(search(measure, candidates, contrast.residual_norm(), 4, trials=6, budget=0.05, seed=3))
    finally:
        torch.set_num_threads(before)
    one, two = ([t.row() for t in run.trials] for run in runs)
    assert runs[0].chosen().number == runs[1].chosen().number
    for a, b in zip(one, two, strict=True):
        assert (a.method, a.layers) == (b.method, b.layers)
        for key in ("strength", "kl", "shift_up", "shift_down"):
            x, y = getattr(a, key), getattr(b, key)
            assert (x is None and y is None) or x == pytest.approx(y, rel=1e-4, abs=1e-7), key


@pytest.mark.slow
def test_tuned_analysis_bakes_exactly(tiny_model, tmp_path):
    model = resolve_model(str(tiny_model))
    pack = write_pack(tmp_path / "pack")
    options = AnalysisOptions(out=tmp_path / "run", behaviour=str(pack), trials=4, kl_budget=0.05, batch_size=4)
    findings = analyze(model, options).findings
    recipe = Recipe.load(tmp_path / "run")
    assert recipe.spec.direction.method == findings.tuning.chosen.method
    assert recipe.spec.tuning.kl <= 0.05 and recipe.spec.tuning.split == "tune"
    assert set(findings.heldout) >= {"base", "steered", "conservative", "prompt_positive", "prompt_negative"}
    assert len(findings.heldout["steered"].per_item) == 3
    assert (tmp_path / "run" / "plots" / "pareto.png").is_file()
    assert "Held-out effects" in (tmp_path / "run" / "report.md").read_text()
    out = export_checked(model, recipe, 3.0, tmp_path / "out")
    for variant in out:
        assert variant["verification"]["passed"] and variant["verification"]["float32"]["kl_max"] < 1e-6


BAD_ANSWERS = {
    "an answer missing its pair": (
        {"train": [{"question": "q", "positive": "buy"}], "tune": [], "heldout": []},
        "negative: field required",
    ),
    "an empty answer": (
        {"train": [{"question": "q", "positive": "", "negative": "no"}]},
        "string should have at least 1 character",
    ),
    "an empty split": (
        {
            "train": [{"question": "q", "positive": "buy", "negative": "no"}],
            "tune": [],
            "heldout": [{"question": "r", "positive": "buy", "negative": "no"}],
        },
        "tune: list should have at least 1 item",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ANSWERS))
def test_bad_packs_are_refused(case, tiny_model, tmp_path, capsys):
    answers, message = BAD_ANSWERS[case]
    pack = write_pack(tmp_path / "pack", answers)
    before = tree_hashes(pack)
    assert (
        main(
            ["analyze", "--model", str(tiny_model), "--behaviour", str(pack), "--out", str(tmp_path / "run"), "--quiet"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists() and tree_hashes(pack) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--kl-budget", "0"], "--kl-budget must be a positive finite number"),
        (["--kl-budget", "nan"], "--kl-budget must be a positive finite number"),
        (["--trials", "0"], "--trials: input should be greater than 0"),
        (["--method", "probe"], "invalid choice: 'probe'"),
    ],
)
def test_bad_tuning_options(args, message, tiny_model, tmp_path, capsys):
    try:
        code = main(["analyze", "--model", str(tiny_model), "--out", str(tmp_path / "run"), "--quiet", *args])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "run").exists()
