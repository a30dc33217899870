"""The default model on a pack of pairs alone: a JSONL file runs analyze, export with eval, and the monitor, and
the steer moves the held-out pairs its stated way. The same pairs as A/B items make the same pack, so they would
run the same analysis (the A/B path end to end runs on a tiny model in test_pairs_pack)."""

import json

import pytest

from finsurg.cli import main
from finsurg.packs import Pack

PAIRS = 30


def medical_pairs(path):
    """The first questions of the shipped medical pack, as a user's file of pairs."""
    rows = (Pack.load("medical").directory / "answers.jsonl").read_text().splitlines()[:PAIRS]
    path.write_text("\n".join(rows) + "\n")
    return path


def ab_items(path):
    """The same pairs as A/B items; every other item lists the behaviour second, as public A/B sets do."""
    rows = [json.loads(line) for line in medical_pairs(path.with_suffix(".src")).read_text().splitlines()]
    items = []
    for i, row in enumerate(rows):
        first, second = (row["positive"], row["negative"]) if i % 2 == 0 else (row["negative"], row["positive"])
        matching, other = ("(A)", "(B)") if i % 2 == 0 else ("(B)", "(A)")
        question = f"{row['question']}\n\nChoices:\n (A) {first}\n (B) {second}\n\nAnswer:"
        items.append(
            {"question": question, "answer_matching_behavior": matching, "answer_not_matching_behavior": other}
        )
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def test_ab_items_of_the_same_pairs_make_the_same_pack(tmp_path):
    """Everything the analysis reads of a pack, from the JSONL pairs and from the A/B items."""
    packs = [Pack.load(medical_pairs(tmp_path / "pairs.jsonl")), Pack.load(ab_items(tmp_path / "ab.jsonl"))]
    pairs, ab = (
        {
            "answers": {name: getattr(pack.answer_pairs(), name) for name in ("train", "tune", "heldout")},
            "categories": [(c.train, c.heldout) for c in pack.categories],
            "neutral": pack.neutral_text,
            "disclaimer": pack.disclaimer,
            "verification": pack.verification_prompts(),
            "surgery": pack.surgery_prompts(),
            "topic_data": pack.topic_data,
            "neutral_replies": pack.neutral_reply_items(),
        }
        for pack in packs
    )
    assert len(pairs["answers"]["train"]) + len(pairs["answers"]["heldout"]) > PAIRS // 2
    assert ab == pairs


@pytest.mark.default_model
def test_a_file_of_pairs_steers_the_default_model_end_to_end(default_model, tmp_path, capsys):
    pairs = medical_pairs(tmp_path / "pairs.jsonl")
    run, out = tmp_path / "run", tmp_path / "variants"
    steps = [
        ["analyze", "--behaviour", str(pairs), "--out", str(run), "--trials", "3", "--samples", "0"],
        ["export", "--recipe", str(run), "--out", str(out), "--eval", "--limit", "6"],
        ["monitor", "export", "--recipe", str(run), "--out", str(tmp_path / "monitor")],
    ]
    for step in steps:
        assert main([*step, "--quiet"]) == 0, step
    capsys.readouterr()
    heldout = json.loads((run / "mech_interp_results.json").read_text())["behaviour"]["heldout"]
    assert heldout["steered"]["shift"]["mean"] > 0 and heldout["conservative"]["shift"]["mean"] < 0
    report = json.loads((out / "eval.json").read_text())
    assert report["passed"] and report["tasks"][0] == "finsurg_pack_preference"
    monitor = json.loads((tmp_path / "monitor" / "monitor.json").read_text())
    assert monitor["labels"] == ["behaviour"] and monitor["check"]["passed"]
    assert monitor["heldout"]["behaviour"]["auroc"] > 0.5
