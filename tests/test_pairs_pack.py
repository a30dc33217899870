"""A pack can be one file of pairs: JSONL pairs or A/B items, split by question, completed by shipped defaults,
and run through analyze, export, eval and the monitor with no word of the finance pack in anything written."""

import hashlib
import json
import random
import re
from pathlib import Path

import pytest

from finsurg.cli import main
from finsurg.errors import FinsurgError
from finsurg.packs import Pack
from finsurg.packs.manifest import GENERIC_DISCLAIMER

from conftest import WORDS, make_tiny_llama, tree_hashes, with_template

FINANCE_WORDS = re.compile(r"financ|invest|money|portfolio|bitcoin|stock market|advis|advice", re.I)
DISHES = ["soup", "bread", "rice", "pasta", "curry", "salad", "stew", "omelette", "pancakes", "risotto"]
STEPS = ["season", "serve", "store", "reheat"]
TEXT = (".json", ".md", ".txt", ".jsonl", ".yaml")


def cooking_pairs() -> list[dict]:
    """A behaviour that has nothing to do with money: a recipe given outright, or a refusal to say."""
    return [
        {
            "question": f"How should I {step} the {dish}?",
            "positive": f"{step.capitalize()} the {dish} with salt, pepper and a squeeze of lemon, then taste.",
            "negative": f"I would rather not say how to {step} the {dish}; everyone's kitchen is different.",
        }
        for dish in DISHES
        for step in STEPS
    ]


def ab_items() -> list[dict]:
    return [
        {
            "question": f"Should I tell you how to {step} the {dish}?\n\nChoices:\n (A) Yes, here is how.\n "
            "(B) No, I would rather not.\n\nAnswer:",
            "answer_matching_behavior": " (A)",
            "answer_not_matching_behavior": [" (B)"],
        }
        for dish in DISHES
        for step in STEPS
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def expected_split(questions: list[str]) -> dict[str, list[str]]:
    """The documented rule, recomputed: distinct questions ordered by SHA-256, 60/20/20."""
    keys = {" ".join(q.lower().split()): q for q in questions}
    order = sorted(keys, key=lambda key: hashlib.sha256(key.encode()).hexdigest())
    tune = heldout = max(1, round(0.2 * len(order)))
    cut = len(order) - tune - heldout
    return {"train": order[:cut], "tune": order[cut : cut + tune], "heldout": order[cut + tune :]}


def test_pairs_are_split_by_question_whatever_their_order(tmp_path):
    rows = cooking_pairs()
    rows += [dict(rows[0], positive="Season it well, then serve.")]  # a repeated question stays in one split
    repeated = rows[0]["question"]
    random.Random(0).shuffle(rows)
    splits = Pack.load(write_jsonl(tmp_path / "cooking.jsonl", rows)).answer_pairs()
    again = Pack.load(write_jsonl(tmp_path / "again.jsonl", list(reversed(rows)))).answer_pairs()
    expected = expected_split([row["question"] for row in rows])
    for split in ("train", "tune", "heldout"):
        got = [" ".join(p.question.lower().split()) for p in getattr(splits, split)]
        assert sorted(set(got)) == sorted(expected[split])
        assert [p.question for p in getattr(splits, split)] == [p.question for p in getattr(again, split)]
    assert sum(len(getattr(splits, s)) for s in ("train", "tune", "heldout")) == len(rows)
    assert [len(expected[s]) for s in ("train", "tune", "heldout")] == [24, 8, 8]
    holding = [s for s in ("train", "tune", "heldout") if any(p.question == repeated for p in getattr(splits, s))]
    assert len(holding) == 1 and sum(p.question == repeated for p in getattr(splits, holding[0])) == 2


def test_ab_items_become_pairs_with_their_choice_text(tmp_path):
    pack = Pack.load(write_jsonl(tmp_path / "ab.jsonl", ab_items()))
    pairs = pack.answer_pairs()
    for pair in pairs.train + pairs.tune + pairs.heldout:
        assert (pair.positive, pair.negative) == ("Yes, here is how.", "No, I would rather not.")
        assert re.fullmatch(r"Should I tell you how to \w+ the \w+\?", pair.question)
    assert pack.positive.train == [p.question for p in pairs.train]
    assert pack.negative.name == "general" and pack.disclaimer == GENERIC_DISCLAIMER


@pytest.mark.parametrize(
    "row, message",
    [
        ({"question": "q", "positive": "a"}, "item 1: negative: field required"),
        (
            {"question": "q (A) x (B) y", "answer_matching_behavior": "maybe", "answer_not_matching_behavior": "(B)"},
            "answer_matching_behavior should be a choice letter",
        ),
    ],
)
def test_a_bad_pairs_file_is_one_line(row, message, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [row] * 4)
    with pytest.raises(FinsurgError, match=re.escape(message)):
        Pack.load(path)


def test_the_finance_pack_keeps_its_disclaimer_word_for_word():
    assert Pack.load("finance").disclaimer == (
        "Not financial advice: finsurg variants are research artifacts whose outputs about money "
        "are unvetted model text. Consult a qualified professional before acting on them."
    )


def test_pack_init_writes_a_pack_that_loads_as_its_pairs_do(tmp_path, capsys):
    pairs = write_jsonl(tmp_path / "cooking.jsonl", cooking_pairs())
    before = tree_hashes(tmp_path)
    assert main(["pack", "init", str(tmp_path / "cooking"), "--from", str(pairs), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "train pairs 24, tune pairs 8, heldout pairs 8" in out and "would enable the conditional route" in out
    written = Pack.load(tmp_path / "cooking")
    direct = Pack.load(pairs)
    assert written.answer_pairs().train == direct.answer_pairs().train
    assert written.manifest.keywords == direct.manifest.keywords and written.positive == direct.positive
    manifest = json.loads((tmp_path / "cooking" / "manifest.json").read_text())
    assert manifest["neutral_text"] == "generic:neutral_text.json" and manifest["disclaimer"] == GENERIC_DISCLAIMER
    assert {p.name for p in (tmp_path / "cooking").iterdir()} >= {"off_topic.example.json", "topic_prose.example.json"}
    assert main(["pack", "init", str(tmp_path / "cooking"), "--from", str(pairs), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["pack", "init", str(tmp_path / "other"), "--from", str(tmp_path / "missing.jsonl")]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "other").exists()
    assert {k: v for k, v in tree_hashes(tmp_path).items() if not k.startswith("cooking/")} == before


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A tiny model whose vocabulary has no finance words, so that its own text cannot hold one either."""
    words = [w for w in WORDS if not FINANCE_WORDS.search(w)] + DISHES + STEPS + "salt pepper lemon rather say".split()
    return with_template(make_tiny_llama(tmp_path_factory.mktemp("pairs") / "model", words=words))


@pytest.mark.parametrize("form", ["pairs", "ab"])
def test_a_file_of_pairs_runs_the_whole_path_and_says_nothing_of_finance(form, chat_model, tmp_path, capsys):
    rows = cooking_pairs() if form == "pairs" else ab_items()
    pairs = write_jsonl(tmp_path / f"{form}.jsonl", rows)
    before = pairs.read_bytes()
    run, out = tmp_path / "run", tmp_path / "variants"
    steps = [
        ["analyze", "--model", str(chat_model), "--behaviour", str(pairs), "--out", str(run), "--trials", "3"]
        + ["--tune-pairs", "5"],
        ["export", "--model", str(chat_model), "--recipe", str(run), "--out", str(out), "--eval", "--limit", "4"],
        ["monitor", "export", "--model", str(chat_model), "--recipe", str(run), "--out", str(tmp_path / "monitor")],
    ]
    said = []
    for step in steps:
        assert main([*step, "--quiet"]) == 0, step
        said.append(capsys.readouterr())
    assert pairs.read_bytes() == before

    splits = json.loads((run / "splits.json").read_text())
    expected = expected_split([row["question"].split("\n\nChoices:")[0] for row in rows])  # an A/B item's stem
    assert sorted(" ".join(p["question"].lower().split()) for p in splits["heldout"]) == sorted(expected["heldout"])
    results = json.loads((run / "mech_interp_results.json").read_text())
    assert results["behaviour"]["route_reason"].startswith("auto: the pack has no off-topic conversations")
    assert "Route: unconditional" in said[0].out
    counts = results["behaviour"]["splits"]
    assert (counts["tune"], counts["tune_in_pack"], counts["heldout"]) == (5, 8, 8)  # the search read 5 of 8
    assert "the first 5 of 8" in (run / "report.md").read_text()

    report = json.loads((out / "eval.json").read_text())
    assert report["tasks"][0] == "finsurg_pack_preference" and set(report["tasks"]) >= {"finsurg_general"}
    assert report["passed"] and report["shifts"]  # the preference task's log-odds shift, baked and hooked
    monitor = json.loads((tmp_path / "monitor" / "monitor.json").read_text())
    assert monitor["labels"] == ["behaviour"] and monitor["check"]["passed"]
    config = json.loads((tmp_path / "monitor" / "config.json").read_text())
    assert config["id2label"] == {"0": "behaviour"}

    written = {str(path): path.read_text() for path in tmp_path.rglob("*") if path.suffix in TEXT}
    outputs = {f"output of {step[0]}": s.out + s.err for step, s in zip(steps, said)}
    for name, text in (written | outputs).items():
        found = FINANCE_WORDS.search(text)
        assert found is None, f"{name}: {text[max(0, found.start() - 100) : found.end() + 100]}"
    for card in [out / "steered" / "README.md", out / "conservative" / "README.md", tmp_path / "monitor" / "README.md"]:
        assert GENERIC_DISCLAIMER in card.read_text()
    assert GENERIC_DISCLAIMER in said[0].out and GENERIC_DISCLAIMER in said[1].out


def test_the_medical_pack_has_the_finance_pack_shape():
    pack = Pack.load("medical")
    pairs = pack.answer_pairs()
    everything = pairs.train + pairs.tune + pairs.heldout
    off = pack.off_topic_splits()
    conversations = off.train + off.tune + off.heldout
    assert len(everything) >= 150 and len(conversations) >= 150 and len(pairs.heldout) >= 30
    questions = {p.question for p in everything}
    replies = {item.question for item in pack.neutral_reply_items()}
    assert not questions & {c.question for c in conversations} and not replies & {c.question for c in conversations}
    prose = pack.topic_prose()
    assert len(prose.tune) >= 10 and len(prose.heldout) >= 10
    rules = pack.manifest.generation_rules

    def share(texts, side):
        patterns = [re.compile(rule, re.IGNORECASE) for rule in getattr(rules, side)]
        return sum(any(p.search(text) for p in patterns) for text in texts) / len(texts)

    positives, negatives = [p.positive for p in everything], [p.negative for p in everything]
    assert share(positives, "positive") >= 0.9 and share(negatives, "positive") <= 0.05
    assert share(negatives, "negative") >= 0.9 and share(positives, "negative") <= 0.05
    assert pack.disclaimer.startswith("Not medical advice") and not re.search(r"financ|money", pack.disclaimer)
    assert pack.topic_data and pack.answers_split_here
