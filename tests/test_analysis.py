"""Each analysis phase against an independent computation with plain transformers on a tiny Llama."""

import json
import math

import pytest
import torch

from finsurg.analysis.activations import RunningStats, collect, keyword_ids
from finsurg.analysis.analyze import analyze, parse_layers
from finsurg.analysis.batching import padded
from finsurg.analysis.derive import choose_band, derive
from finsurg.analysis.features import effect_size, massive_dims, rank_layers
from finsurg.analysis.logit_lens import lens
from finsurg.analysis.options import AnalysisOptions
from finsurg.analysis.sweep import measure, neutral_items, preference_items
from finsurg.errors import FinsurgError
from finsurg.models.bridge import boot_bridge
from finsurg.models.loading import load_model, load_tokenizer
from finsurg.models.source import resolve_model
from finsurg.packs import Pack
from finsurg.packs.manifest import GENERIC_DISCLAIMER
from finsurg.steer.arch import by_name
from finsurg.steer.hooks import offset_hooks
from finsurg.steer.recipe import ModelSpec, Recipe
from finsurg.steer.surgery import Surgery

LLAMA = by_name("LlamaForCausalLM")

TEXTS = [
    "what stock should i buy now ?",
    "how should i invest my savings",
    "is the sea blue",
    "the cat can run and eat",
    "you should consult a professional about risk",
]


@pytest.fixture(scope="module")
def loaded(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    tokenizer.padding_side = "left"
    hf = load_model(tiny_model)
    reference = load_model(tiny_model)  # untouched by the bridge
    return tokenizer, hf, boot_bridge(tiny_model, hf, tokenizer), reference


def hidden_states(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]), output_hidden_states=True, output_attentions=True)


@pytest.mark.parametrize("how", ["last", "mean"])
def test_batched_activation_stats_match_plain_hf(loaded, how):
    tokenizer, _, bridge, reference = loaded
    sequences = [tokenizer(t).input_ids for t in TEXTS]
    acts, _ = collect(bridge, LLAMA, padded(tokenizer, sequences, 3), how, keywords={5})
    samples = []
    for ids in sequences:
        # HF's last hidden_states entry comes after the final norm, so compare the layers below it
        states = hidden_states(reference, ids).hidden_states[1:-1]
        if how == "last":
            samples.append(torch.stack([s[0, -1] for s in states]))
        else:
            samples.append(torch.stack([s[0, 1:].mean(0) for s in states]))
    stacked = torch.stack(samples).double()
    assert acts.count == len(TEXTS)
    assert torch.allclose(acts.mean[:-1], stacked.mean(0), atol=1e-4)
    assert torch.allclose(acts.var[:-1], stacked.var(0, unbiased=False), atol=1e-4)
    assert torch.allclose(acts.peak[:-1], stacked.abs().amax(0), atol=1e-4)


def test_keyword_attention_matches_hf_attentions(loaded):
    tokenizer, _, bridge, reference = loaded
    keywords = keyword_ids(tokenizer, ["stock", "invest", "savings"])
    sequences = [tokenizer(t).input_ids for t in TEXTS]
    _, attention = collect(bridge, LLAMA, padded(tokenizer, sequences, 2), "last", keywords=keywords)
    expected = []
    for ids in sequences:
        attentions = hidden_states(reference, ids).attentions
        is_kw = torch.tensor([i in keywords for i in ids])
        expected.append(torch.stack([a[0, :, -1, :][:, is_kw].sum(-1) for a in attentions]))
    assert torch.allclose(attention.mean, torch.stack(expected).double().mean(0), atol=1e-4)
    assert attention.mean.abs().sum() > 0


def _stats(samples):
    stats = RunningStats.empty(samples.shape[1], samples.shape[2])
    stats.update(samples)
    return stats


def test_effect_size_and_massive_dims():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(30, 3, 16, generator=generator) + 1.0
    b = torch.randn(30, 3, 16, generator=generator)
    a[:, :, 7] += 500.0  # a massive dimension: wins any raw ranking
    b[:, :, 7] += 400.0
    sa, sb = _stats(a), _stats(b)
    pooled = ((a.double().var(0, unbiased=False) + b.double().var(0, unbiased=False)) / 2 + 1e-6).sqrt()
    assert torch.allclose(effect_size(sa, sb), (a.double().mean(0) - b.double().mean(0)) / pooled)
    massive = massive_dims([sa, sb])
    assert list(massive) == [7]
    table = rank_layers(sa, sb, sb, ("p", "n", "u"), 5, set(massive))
    for row in table:
        assert 7 not in [item["dim"] for item in row["p_minus_u"]["top_raw"]]
    assert 7 in [item["dim"] for item in rank_layers(sa, sb, sb, ("p", "n", "u"), 5, set())[0]["p_minus_u"]["top_raw"]]


def test_band_and_derived_recipe():
    score = torch.zeros(12)
    score[6:9] = 1.0
    assert choose_band(score, 3) == [6, 7, 8]
    score[10:12] = 5.0  # the last layer is never chosen
    assert 11 not in choose_band(score, 3)
    generator = torch.Generator().manual_seed(1)
    pos = torch.randn(40, 12, 32, generator=generator)
    neg = torch.randn(40, 12, 32, generator=generator)
    pos[:, :, 3] += 2.0
    neg[:, :, 11] += 1.5
    model = ModelSpec(architecture="LlamaForCausalLM", hidden_size=32, num_hidden_layers=12)
    recipe = derive(_stats(pos), _stats(neg), [5, 6, 7], {20}, model, ("advice", "caution"), "finance")
    neurons = recipe.spec.neurons
    assert neurons[0].index == 3 and neurons[0].coefficient > 0
    assert any(n.index == 11 and n.coefficient < 0 for n in neurons)
    assert all(n.index != 20 for n in neurons)
    for layer in (5, 6, 7):
        expected = pos.double().mean(0)[layer] - neg.double().mean(0)[layer]
        expected[20] = 0.0
        assert torch.allclose(recipe.vectors[layer].double(), expected, atol=1e-5)


def test_logit_lens_matches_hf(loaded, tiny_model):
    tokenizer, hf, bridge, reference = loaded
    ids = tokenizer("how should i invest", return_tensors="pt").input_ids
    groups = {"a": [10, 11], "b": [12]}
    reading = lens(bridge, hf, LLAMA, ids, groups)
    states = hidden_states(reference, ids[0].tolist()).hidden_states
    for layer in range(3):  # the last entry of HF hidden_states is after the final norm
        with torch.no_grad():
            probs = torch.softmax(reference.lm_head(reference.model.norm(states[layer + 1][0, -1])), -1)
        assert reading["a"][layer] == pytest.approx(float(probs[[10, 11]].sum()), rel=1e-4)
    offsets = {2: torch.full((64,), 0.5)}
    shifted = lens(bridge, hf, LLAMA, ids, groups, Surgery.of(offsets))
    assert shifted["a"][:2] == reading["a"][:2] and shifted["a"][2] != reading["a"][2]


def write_prompt_set(directory):
    directory.mkdir()
    json.dump(
        {
            "train": [
                "what stock should i buy",
                "how should i invest my money",
                "buy the index fund now",
                "invest your savings in stocks",
                "should i buy bonds",
            ],
            "heldout": ["what fund should i buy", "how do i invest"],
        },
        (directory / "advice.json").open("w"),
    )
    json.dump(
        {
            "train": [
                "consult a professional about risk",
                "be careful with money",
                "you cannot know the market",
                "risk is not good",
                "be careful and consult",
            ],
            "heldout": ["is it risk", "be careful"],
        },
        (directory / "caution.json").open("w"),
    )
    json.dump(
        [
            "the sea is blue",
            "the cat can run",
            "a dog can eat",
            "the sun is big",
            "a red house",
            "the tree is green",
            "water is good",
        ],
        (directory / "neutral.json").open("w"),
    )
    json.dump(
        ["the cat and the dog run to the sea .", "the sun is big and the tree is green ."],
        (directory / "neutral_text.json").open("w"),
    )
    json.dump(
        {
            "name": "tiny",
            "positive": "advice",
            "negative": "caution",
            "neutral": "neutral",
            "keywords": ["stock", "fund", "invest"],
            "continuations": {"positive": ["you should buy"], "negative": ["you should consult"]},
            "probes": ["my advice is to"],
            "tokens": {"positive": [" buy"], "negative": [" consult"]},
        },
        (directory / "manifest.json").open("w"),
    )
    return directory


def test_sweep_measure_matches_torch_hooks(loaded, tmp_path):
    tokenizer, _, bridge, reference = loaded
    prompts = Pack.load(write_prompt_set(tmp_path / "set"))
    offsets = {1: torch.linspace(-1, 1, 64), 2: torch.linspace(1, -1, 64)}
    prefs, neutral = preference_items(tokenizer, prompts), neutral_items(tokenizer, prompts)
    got = measure(
        bridge,
        tokenizer,
        prefs,
        neutral,
        offset_hooks(Surgery.of(offsets), LLAMA, reference.config.to_dict()),
        batch_size=3,
    )

    handles = [
        reference.model.layers[layer].register_forward_hook(lambda m, i, o, v=v: o + v) for layer, v in offsets.items()
    ]
    try:

        def logprob(context, continuation):
            ids = torch.tensor([context + continuation])
            with torch.no_grad():
                logits = reference(ids).logits[0].double()
            lp = torch.log_softmax(logits[:-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
            return float(lp[-len(continuation) :].sum())

        margins = [logprob(*prefs[i]) - logprob(*prefs[i + 1]) for i in range(0, len(prefs), 2)]
        nll = -sum(logprob(*item) for item in neutral) / sum(len(c) for _, c in neutral)
    finally:
        for handle in handles:
            handle.remove()
    assert got["log_odds"] == pytest.approx(sum(margins) / len(margins), abs=1e-3)
    assert got["preference"] == pytest.approx(sum(m > 0 for m in margins) / len(margins))
    assert got["perplexity"] == pytest.approx(math.exp(nll), rel=1e-4)


def test_analyze_writes_a_loadable_recipe(tiny_model, tmp_path):
    model = resolve_model(str(tiny_model))
    prompts = write_prompt_set(tmp_path / "set")
    options = AnalysisOptions(
        out=tmp_path / "run", behaviour=str(prompts), batch_size=4, top_k=5, sweep_alphas=[-1.0, 0.0, 1.0], tune=False
    )
    results = analyze(model, options).results
    run = tmp_path / "run"
    for name in (
        "recipe.json",
        "steering_vectors.safetensors",
        "mech_interp_results.json",
        "report.md",
        "plots/dimension_heatmap.png",
        "plots/head_heatmap.png",
        "plots/logit_lens.png",
        "plots/alpha_sweep.png",
    ):
        assert (run / name).is_file(), name
    assert (run / "plots" / "logit_lens.png").read_bytes()[:4] == b"\x89PNG"
    recipe = Recipe.load(run)
    recipe.check_model(model.config)
    assert recipe.layers == results["recipe"]["layers"]
    assert results["logit_lens"]["unchanged_before_first_steered_layer"]
    assert [row["alpha"] for row in results["sweep"]["rows"]] == [-1.0, 0.0, 1.0]
    assert f"> {GENERIC_DISCLAIMER}" in (run / "report.md").read_text()  # the test pack states none
    assert "financial" not in (run / "report.md").read_text()
    with pytest.raises(FinsurgError, match="already exists"):
        analyze(model, options)
    pinned = analyze(model, options.model_copy(update={"out": tmp_path / "run2", "layers": "1-2", "sweep": False}))
    assert pinned.recipe.layers == [1, 2]


def test_parse_layers():
    assert parse_layers("20-23", 30) == [20, 21, 22, 23]
    assert parse_layers("3,1,2", 30) == [1, 2, 3]
    for bad in ("28-31", "x", "-1"):
        with pytest.raises(FinsurgError):
            parse_layers(bad, 30)


def test_bad_prompt_set(tmp_path):
    directory = write_prompt_set(tmp_path / "set")
    (directory / "caution.json").write_text(json.dumps({"train": ["a"], "heldout": ["b"]}))
    with pytest.raises(FinsurgError, match="needs at least 4 train"):
        Pack.load(directory)
    (directory / "manifest.json").write_text("{}")
    with pytest.raises(FinsurgError, match="has neither keywords .manifest.json. nor paired answers"):
        Pack.load(directory)


def test_shipped_prompt_set_is_large_and_disjoint():
    prompts = Pack.load()
    seen = set()
    for category in prompts.categories:
        assert len(category.train) + len(category.heldout) >= 40 and len(category.heldout) >= 10
        assert not seen & set(category.train + category.heldout)
        seen |= set(category.train + category.heldout)
