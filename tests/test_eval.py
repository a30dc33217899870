"""finsurg eval: lm-eval on base, baked and hooked; parity must hold item by item, and fail when it should."""

import json

import pytest
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

from finsurg.checks.eval_options import EvalOptions
from finsurg.checks.evaluation import Runner, evaluate
from finsurg.cli import main
from finsurg.io.hashing import check_sums, write_sums
from finsurg.models.source import resolve_model
from finsurg.packs import Pack
from finsurg.packs.pack import generic_dir

from conftest import export_checked, tiny_recipe

LIMIT = 6
PACK = Pack.load()
FINSURG_TASKS = list(PACK.manifest.tasks)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("eval")
    recipe = tiny_recipe(root / "recipe", scale=4.0)
    export_checked(resolve_model(str(tiny_model)), recipe, 3.0, root / "out", verify=False)
    return root / "out"


def _jsonl(name):
    folder = PACK.tasks_dir if (PACK.tasks_dir / f"{name}.jsonl").exists() else generic_dir() / "tasks"
    return [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_shipped_tasks_are_large_enough_and_load_offline(tmp_path):
    advice, general, prose = _jsonl("finsurg_advice"), _jsonl("finsurg_general"), _jsonl("finsurg_prose")
    assert len(advice) >= 60 and len(general) >= 150 and len(prose) >= 10
    assert all(row["advice"] != row["caution"] for row in advice)
    assert all(0 <= row["answer"] < len(row["choices"]) == 4 for row in general)
    analysis = Pack.load()
    seen = {text for category in analysis.categories for text in category.train + category.heldout}
    assert not seen & {row["question"] for row in advice}
    runner = Runner(PACK, [], chat=False, limit=1, batch_size=4, scratch=tmp_path)
    assert set(FINSURG_TASKS) <= set(runner.manager.all_tasks)


@pytest.mark.slow
def test_baked_and_hooked_agree_item_by_item(export_dir, tmp_path):
    options = EvalOptions(limit=LIMIT, eval_batch_size=4)
    report = evaluate([export_dir], options, out_dir=tmp_path / "eval").model_dump()
    assert report["passed"] and report["chat_template"] is False
    metrics = report["metrics"]
    for name in ("steered", "conservative"):
        parity = report["variants"][name]["parity"]
        assert parity["passed"] and parity["worst"] < 1e-3
        assert set(parity["max_abs_loglik_diff"]) == set(FINSURG_TASKS)
        for task in FINSURG_TASKS:
            for metric, value in metrics[f"{name}/baked"][task].items():
                assert value == pytest.approx(metrics[f"{name}/hooked"][task][metric], rel=1e-4)
        # the surgery is live in lm-eval too: the variant scores differently from the base
        assert (
            metrics[f"{name}/baked"]["finsurg_prose"]["word_perplexity"]
            != metrics["base"]["finsurg_prose"]["word_perplexity"]
        )
    assert (
        metrics["steered/baked"]["finsurg_advice"]["log_odds"]
        != metrics["conservative/baked"]["finsurg_advice"]["log_odds"]
    )
    written = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert written["variants"].keys() == {"steered", "conservative"}
    assert "| finsurg_general | acc |" in (tmp_path / "eval" / "eval.md").read_text()
    for name in ("steered", "conservative"):
        own = json.loads((export_dir / name / "eval.json").read_text())
        assert own["variant"] == name and own["parity"]["passed"]
        card = ModelCard.load(export_dir / name / "README.md")  # the card now carries the eval table
        assert [r.dataset_type for r in card.data.eval_results] == FINSURG_TASKS
        assert "## Evaluation (lm-eval)" in card.text
        check_sums(export_dir / name)  # eval.json is sealed into SHA256SUMS


@pytest.mark.slow
def test_conditional_variants_keep_parity_with_their_gated_hooks(tiny_model, tmp_path):
    recipe = tiny_recipe(tmp_path / "recipe", scale=4.0, conditional=True)
    export_checked(resolve_model(str(tiny_model)), recipe, 3.0, tmp_path / "out", verify=False)
    report = evaluate([tmp_path / "out"], EvalOptions(limit=LIMIT, eval_batch_size=4), out_dir=tmp_path / "eval")
    report = report.model_dump()
    assert report["passed"]
    metrics = report["metrics"]
    for name in ("steered", "conservative"):
        parity = report["variants"][name]["parity"]
        assert parity["passed"] and parity["worst"] < 1e-3
        assert (  # the gate opens somewhere: the variant is not the base
            metrics[f"{name}/baked"]["finsurg_advice"]["log_odds"] != metrics["base"]["finsurg_advice"]["log_odds"]
        )


@pytest.mark.slow
def test_wrong_bias_fails_parity(export_dir, tmp_path, capsys):
    variant = tmp_path / "steered"
    variant.mkdir()
    for path in (export_dir / "steered").iterdir():
        (variant / path.name).write_bytes(path.read_bytes())
    shard = variant / "model-00002-of-00002.safetensors"
    tensors = load_file(shard)
    tensors["model.layers.1.mlp.down_proj.bias"] *= 1.5
    save_file(tensors, shard, metadata={"format": "pt"})
    write_sums(variant)

    code = main(
        [
            "eval",
            str(variant),
            "--limit",
            str(LIMIT),
            "--eval-batch-size",
            "4",
            "--out",
            str(tmp_path / "eval"),
            "--quiet",
            "--json",
        ]
    )
    assert code == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    parity = report["variants"]["steered"]["parity"]
    assert not report["passed"] and not parity["passed"] and parity["worst"] > 1e-3
    assert "steered: baked and hooked lm-eval log-likelihoods disagree" in captured.err
    assert captured.err.strip().count("\n") == 0


def test_eval_refuses_a_directory_without_variants(tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--quiet"]) == 2
    assert "holds no finsurg variant" in capsys.readouterr().err
