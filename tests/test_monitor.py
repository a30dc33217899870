"""The compliance monitor on tiny random models: the truncated classifier against hooks on the base, stock loading,
the families, scoring chat logs (bad lines included) and drift."""

import json
import shutil

import pytest
import torch

from finsurg.devices import Placement
from finsurg.errors import FinsurgError
from finsurg.io.hashing import check_sums
from finsurg.models.source import resolve_model
from finsurg.monitor.build import build_monitor
from finsurg.monitor.drift import Span, drift, write_report
from finsurg.steer.bundle import Bundle
from finsurg.steer.recipe import Recipe

from conftest import make_family_model, make_tiny_llama, run_cli, tiny_recipe, with_template

TEXTS = ["user : should i buy a fund ? </s> ", "user : what is the capital city of france ? </s> assistant : paris"]


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
    return with_template(make_tiny_llama(tmp_path_factory.mktemp("chat") / "model"))


@pytest.fixture(scope="module")
def tiny_monitor(tiny_chat_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("monitor") / "monitor"
    recipe = tiny_recipe(tmp_path_factory.mktemp("recipe"))
    spec = build_monitor(
        resolve_model(str(tiny_chat_model)), Bundle.single(recipe), out, False, Placement.of("cpu", "float32")
    )
    return out, spec


def hooked_logits(base_path, monitor_dir, texts):
    """The probes stored in the monitor's head, applied to the base's MLP input at layer L through a hook."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    return hooked_logits_of_ids(base_path, monitor_dir, [tokenizer(text)["input_ids"] for text in texts])


def hooked_logits_of_ids(base_path, monitor_dir, ids):
    """The same, from token ids, one unpadded forward pass each."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    spec = json.loads((monitor_dir / "monitor.json").read_text())
    head = load_file(monitor_dir / "model.safetensors")["score.weight"].float()
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).eval()
    seen = []
    mlp = base.model.layers[spec["layer"]].mlp
    handle = mlp.register_forward_pre_hook(lambda module, args: seen.append(args[0][0, -1]))
    try:
        for row in ids:
            with torch.inference_mode():
                base(torch.tensor([row]))
    finally:
        handle.remove()
    return torch.stack(seen) @ head.T


def test_classifier_matches_the_probes_on_the_hooked_base(tiny_chat_model, tiny_monitor):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    directory, spec = tiny_monitor
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["num_hidden_layers"] == spec.layer + 1
    assert config["id2label"] == {"0": "topic", "1": "behaviour"}
    assert config["problem_type"] == "multi_label_classification"
    classifier = AutoModelForSequenceClassification.from_pretrained(directory, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")  # padded: the pad token must not be pooled
    with torch.inference_mode():
        got = classifier(**batch).logits
    expected = hooked_logits(tiny_chat_model, directory, TEXTS)
    assert float((got - expected).abs().max()) < 1e-4
    assert float(expected.abs().max()) > 1e-2  # not vacuous
    assert spec.check["passed"] and spec.check["max_abs_diff"] < 1e-4
    served = pipeline("text-classification", model=str(directory), top_k=None)([TEXTS[1]])[0]
    scores = {item["label"]: item["score"] for item in served}
    assert scores == pytest.approx(dict(zip(("topic", "behaviour"), torch.sigmoid(expected[1]).tolist())), abs=1e-5)
    check_sums(directory)


def test_classifier_holds_only_the_layers_it_runs(tiny_monitor):
    from safetensors import safe_open

    directory, spec = tiny_monitor
    with safe_open(directory / "model.safetensors", "pt") as handle:
        names = list(handle.keys())
        zeroed = handle.get_tensor(f"model.layers.{spec.layer}.mlp.down_proj.weight")
    layers = {int(name.split(".")[2]) for name in names if name.startswith("model.layers.")}
    assert layers == set(range(spec.layer + 1))
    assert "lm_head.weight" not in names and "score.weight" in names
    assert not zeroed.any()
    card = (directory / "README.md").read_text()
    assert "Not financial advice" in card and "vllm serve" in card and "AUROC" in card


def test_conditional_recipe_reuses_its_topic_condition(tiny_chat_model, tmp_path):
    recipe = tiny_recipe(tmp_path / "recipe", conditional=True, layers=(2, 3))
    spec = build_monitor(
        resolve_model(str(tiny_chat_model)),
        Bundle.single(recipe),
        tmp_path / "monitor",
        False,
        Placement.of("cpu", "float32"),
    )
    assert spec.topic_source == "condition"
    assert spec.layer in (2, 3) and set(spec.layers) == {2, 3}


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "mistral"])
def test_families_with_a_stock_classifier(family, tmp_path):
    from conftest import ROUTES

    base = with_template(make_family_model(tmp_path / family, family))
    config = json.loads((base / "config.json").read_text())
    recipe = tiny_recipe(tmp_path / "recipe", architecture=ROUTES[family][0], site=ROUTES[family][1])
    assert recipe.spec.model.hidden_size == config["hidden_size"]
    spec = build_monitor(
        resolve_model(str(base)), Bundle.single(recipe), tmp_path / "monitor", False, Placement.of("cpu", "float32")
    )
    assert spec.check["max_abs_diff"] < 1e-4
    got = json.loads((tmp_path / "monitor" / "config.json").read_text())["architectures"]
    assert got == [f"{ {'qwen2': 'Qwen2', 'qwen3': 'Qwen3', 'mistral': 'Mistral'}[family] }ForSequenceClassification"]


def test_a_base_with_mlp_biases_has_its_cut_layer_write_nothing(tmp_path):
    from safetensors.torch import load_file

    base = with_template(make_tiny_llama(tmp_path / "base", mlp_bias=True))
    recipe = tiny_recipe(tmp_path / "recipe")
    spec = build_monitor(
        resolve_model(str(base)), Bundle.single(recipe), tmp_path / "monitor", False, Placement.of("cpu", "float32")
    )
    assert spec.check["max_abs_diff"] < 1e-4
    written = {}
    for path in sorted((tmp_path / "monitor").glob("*.safetensors")):
        written |= load_file(path)
    original = load_file(base / "model.safetensors")
    cut = f"model.layers.{spec.layer}.mlp.down_proj"
    assert original[f"{cut}.bias"].abs().max() > 0  # the base's bias was not zero: the monitor zeroed it
    assert torch.count_nonzero(written[f"{cut}.bias"]) == 0 and torch.count_nonzero(written[f"{cut}.weight"]) == 0
    for layer in range(spec.layer):  # the layers before the cut keep the base's MLP, its bias included
        name = f"model.layers.{layer}.mlp.down_proj.bias"
        assert torch.equal(written[name], original[name])


def test_granite_is_refused_with_the_reason(tmp_path):
    base = with_template(make_family_model(tmp_path / "granite", "granite"))
    recipe = tiny_recipe(tmp_path / "recipe", architecture="GraniteForCausalLM")
    with pytest.raises(FinsurgError, match="no GraniteForSequenceClassification"):
        build_monitor(
            resolve_model(str(base)), Bundle.single(recipe), tmp_path / "monitor", False, Placement.of("cpu", "float32")
        )
    assert not (tmp_path / "monitor").exists()


def test_a_pack_without_the_data_says_how_to_get_probes(tiny_chat_model, tmp_path):
    from finsurg.packs import Pack

    pack = tmp_path / "pack"
    shutil.copytree(Pack.load("finance").directory, pack)
    manifest = json.loads((pack / "manifest.json").read_text())
    manifest["answers"] = None
    (pack / "answers.json").unlink()
    (pack / "manifest.json").write_text(json.dumps(manifest))
    tiny_recipe(tmp_path / "recipe")
    raw = json.loads((tmp_path / "recipe" / "recipe.json").read_text()) | {"pack": str(pack)}
    (tmp_path / "recipe" / "recipe.json").write_text(json.dumps(raw))
    recipe = Recipe.load(tmp_path / "recipe")
    with pytest.raises(FinsurgError, match="carries no monitor probes.*no paired answers"):
        build_monitor(
            resolve_model(str(tiny_chat_model)),
            Bundle.single(recipe),
            tmp_path / "monitor",
            False,
            Placement.of("cpu", "float32"),
        )
    assert not (tmp_path / "monitor").exists()


# ---- scoring -------------------------------------------------------------------------------------
def chat(question, reply=None, **extra):
    messages = [{"role": "user", "content": question}] + ([{"role": "assistant", "content": reply}] if reply else [])
    return json.dumps({"messages": messages, **extra})


def test_score_writes_a_line_per_input_line_and_skips_bad_ones(tiny_chat_model, tiny_monitor, tmp_path):
    directory, spec = tiny_monitor
    lines = [
        chat("should i buy a fund ?", time="2026-01-01T00:00:00Z"),
        "{not json",
        json.dumps({"messages": []}),
        json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}),
        chat("what is the capital city of france ?", "paris", time=1767225700),
    ]
    log = tmp_path / "chats.jsonl"
    log.write_text("\n".join(lines) + "\n")
    before = log.read_bytes()
    done = run_cli("monitor", "score", "--quiet", "--monitor", str(directory), str(log), "--json")
    assert done.returncode == 0, done.stderr
    assert log.read_bytes() == before
    warned = [line for line in done.stderr.splitlines() if "warning" in line]
    assert [w.split()[3] for w in warned] == ["2", "3", "4"]
    assert "not JSON" in warned[0] and "no messages" in warned[1] and "unknown role 'wizard'" in warned[2]
    out = [json.loads(line) for line in (tmp_path / "chats.scores.jsonl").read_text().splitlines()]
    assert [line["line"] for line in out] == [1, 2, 3, 4, 5]
    assert all("error" in out[i] for i in (1, 2, 3))
    summary = json.loads(done.stdout)
    assert summary["scored"] == 2 and len(summary["skipped"]) == 3
    assert out[0]["time"] == 1767225600.0
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    texts = [tokenizer.apply_chat_template(json.loads(lines[i])["messages"], tokenize=False) for i in (0, 4)]
    expected = hooked_logits(tiny_chat_model, directory, texts)
    for row, logits in zip((out[0], out[4]), expected, strict=True):
        assert [row["logits"][label] for label in ("topic", "behaviour")] == pytest.approx(logits.tolist(), abs=1e-4)
        assert row["flags"] == {label: row["logits"][label] > spec.thresholds[label] for label in spec.labels}


def test_a_long_conversation_keeps_its_end_within_the_token_budget(tiny_chat_model, tiny_monitor, tmp_path):
    """A conversation past --max-tokens is scored on its last tokens (the reply judged), warned about and marked;
    the others are scored as before, and batching by padded tokens changes no figure."""
    from transformers import AutoTokenizer

    directory, _ = tiny_monitor
    earlier = [
        {"role": "user", "content": "what is the capital city of france ?"},
        {"role": "assistant", "content": "paris"},
    ]
    long_messages = earlier * 12 + [{"role": "user", "content": "should i buy a fund ?"}]
    lines = [chat("should i buy a fund ?"), json.dumps({"messages": long_messages}), chat("hello", "hi")]
    log = tmp_path / "chats.jsonl"
    log.write_text("\n".join(lines) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    ids = [
        tokenizer(tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=False))["input_ids"]
        for line in lines
    ]
    assert len(ids[1]) > 100 > 40 > max(len(ids[0]), len(ids[2]))

    def scored(*flags):
        out = tmp_path / f"scores{len(flags)}.jsonl"
        done = run_cli("monitor", "score", "--quiet", "--monitor", directory, log, "--out", out, "--json", *flags)
        assert done.returncode == 0, done.stderr
        return done, [json.loads(row) for row in out.read_text().splitlines()]

    done, rows = scored("--max-tokens", "40")
    warned = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warned) == 1 and f"line 2 is {len(ids[1])} tokens; scored its last 40" in warned[0]
    assert rows[1]["truncated"] == {"tokens": len(ids[1]), "kept": 40}
    assert "truncated" not in rows[0] and "truncated" not in rows[2]
    assert json.loads(done.stdout)["truncated"] == [2]
    expected = hooked_logits_of_ids(tiny_chat_model, directory, [ids[0], ids[1][-40:], ids[2]])
    for row, logits in zip(rows, expected, strict=True):
        assert [row["logits"][label] for label in ("topic", "behaviour")] == pytest.approx(logits.tolist(), abs=1e-4)
    _, small = scored("--max-tokens", "40", "--batch-tokens", "48")  # one line per pass
    flat = [value for r in small for value in r["logits"].values()]
    assert flat == pytest.approx([value for r in rows for value in r["logits"].values()], abs=1e-5)
    refused = run_cli("monitor", "score", "--quiet", "--monitor", directory, log, "--max-tokens", "4096")
    assert (
        refused.returncode == 2 and refused.stderr.count("\n") == 1 and "past the monitor's context" in refused.stderr
    )


@pytest.mark.parametrize(
    "content,message",
    [("", "the log is empty"), ("{bad\n[]\n", "no valid line to score (2 skipped)")],
)
def test_a_log_without_a_valid_line_fails_and_leaves_nothing(tiny_monitor, tmp_path, content, message):
    log = tmp_path / "chats.jsonl"
    log.write_text(content)
    done = run_cli("monitor", "score", "--quiet", "--monitor", str(tiny_monitor[0]), str(log))
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chats.jsonl"]


def test_a_monitor_from_another_base_is_refused(tiny_chat_model, tiny_monitor, tmp_path):
    other = make_tiny_llama(tmp_path / "other", seed=5)
    log = tmp_path / "chats.jsonl"
    log.write_text(chat("should i buy a fund ?") + "\n")
    done = run_cli("monitor", "score", "--quiet", "--monitor", str(tiny_monitor[0]), str(log), "--model", str(other))
    assert done.returncode == 2
    assert "was built from" in done.stderr and "not" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "chats.scores.jsonl").exists()
    same = run_cli(
        "monitor", "score", "--quiet", "--monitor", str(tiny_monitor[0]), str(log), "--model", str(tiny_chat_model)
    )
    assert same.returncode == 0, same.stderr


def test_not_a_monitor_directory_is_one_line(tmp_path):
    log = tmp_path / "chats.jsonl"
    log.write_text(chat("hi") + "\n")
    done = run_cli("monitor", "score", "--monitor", str(tmp_path), str(log))
    assert done.returncode == 2 and "is not a finsurg monitor" in done.stderr
    assert "Traceback" not in done.stderr


# ---- drift ---------------------------------------------------------------------------------------
def scored_log(path, lines, before, after, seed, shift_at=0.5, step=60, shifted="behaviour", rates=None):
    """Score lines as `monitor score` writes them: `shifted` flagged with the planted probability, and each label of
    `rates` (default: a `topic` flagged at 0.6) at its own."""
    rates = {"topic": 0.6} if rates is None else rates
    generator = torch.Generator().manual_seed(seed)
    with open(path, "w") as handle:
        for index in range(lines):
            share = before if index < shift_at * lines else after
            drawn = {shifted: bool(torch.rand(1, generator=generator) < share)}
            drawn |= {label: bool(torch.rand(1, generator=generator) < rate) for label, rate in rates.items()}
            flags = {label: drawn[label] for label in [*rates, shifted]}
            score = {
                label: (0.9 if flag else 0.1) if label == shifted else (0.8 if flag else 0.2)
                for label, flag in flags.items()
            }
            row = {"line": index + 1, "time": 1767225600 + step * index, "logits": score, "scores": score}
            handle.write(json.dumps(row | {"flags": flags}) + "\n")
    return path


@pytest.mark.parametrize("seed", range(5))
def test_drift_alarms_within_two_windows_of_a_planted_shift(tmp_path, seed):
    log = scored_log(tmp_path / "scores.jsonl", 2000, 0.10, 0.30, seed)
    report = drift(log, Span.parse("200", "--window"))
    alarmed = [a.first_line for a in report.alarms if a.label == "behaviour"]
    assert alarmed and min(alarmed) <= 1001 + 200  # the shift's window or the next
    assert all(line > 1000 for line in alarmed)
    assert not [a for a in report.alarms if a.label == "topic"]


@pytest.mark.parametrize("seed", range(5))
def test_drift_stays_quiet_without_a_shift(tmp_path, seed):
    log = scored_log(tmp_path / "scores.jsonl", 2000, 0.10, 0.10, seed)
    assert drift(log, Span.parse("200", "--window")).alarms == []


def test_drift_by_time_writes_report_plot_and_json(tmp_path):
    log = scored_log(tmp_path / "scores.jsonl", 1440, 0.10, 0.30, 0)  # a day, one conversation a minute
    done = run_cli("monitor", "drift", str(log), "--window", "2h", "--reference", "4h", "--out", str(tmp_path / "d"))
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "d" / "drift.json").read_text())
    assert report["reference"]["n"] == 240 and all(row["n"] == 120 for row in report["windows"][1:])
    assert min(a["first_line"] for a in report["alarms"]) <= 721 + 120
    markdown = (tmp_path / "d" / "drift.md").read_text()
    assert "ALARM" in markdown and "drift.png" in markdown
    assert (tmp_path / "d" / "drift.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--window", "soon"], "--window 'soon': expected a count of lines"),
        (["--window", "1h"], "has no time"),
        (["--window", "5000"], "only the reference window"),
    ],
)
def test_drift_bad_input_is_one_line(tmp_path, args, message):
    log = tmp_path / "scores.jsonl"
    rows = [json.loads(line) for line in scored_log(log, 50, 0.1, 0.1, 0).read_text().splitlines()]
    if "1h" in args:
        log.write_text("".join(json.dumps({k: v for k, v in row.items() if k != "time"}) + "\n" for row in rows))
    done = run_cli("monitor", "drift", str(log), *args, "--out", str(tmp_path / "d"))
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_drift_report_refuses_to_overwrite(tmp_path):
    log = scored_log(tmp_path / "scores.jsonl", 400, 0.1, 0.1, 0)
    report = drift(log, Span.parse("100", "--window"))
    write_report(report, tmp_path / "d", False)
    with pytest.raises(FinsurgError, match="already exists"):
        write_report(report, tmp_path / "d", False)


def test_export_writes_the_monitor_beside_the_variants(tiny_chat_model, tmp_path):
    tiny_recipe(tmp_path / "recipe")
    out = tmp_path / "out"
    args = ["--model", tiny_chat_model, "--recipe", tmp_path / "recipe", "--quiet", "--json"]
    done = run_cli("export", *args, "--alpha", "3", "--out", out, "--monitor")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["monitor"]["out"] == str(out / "monitor")
    assert {p.name for p in out.iterdir()} >= {"steered", "conservative", "monitor"}
    spec = json.loads((out / "monitor" / "monitor.json").read_text())
    assert spec["check"]["passed"] and spec["base"]["name"] == payload["model"]
    check_sums(out / "monitor")
    alone = run_cli("monitor", "export", *args, "--out", tmp_path / "alone")
    assert alone.returncode == 0, alone.stderr
    assert json.loads(alone.stdout)["thresholds"] == spec["thresholds"]  # the same probes, learnt the same way
    again = run_cli("monitor", "export", *args, "--out", tmp_path / "alone")
    assert again.returncode == 2 and "already exists" in again.stderr


def test_drift_takes_a_bundles_labels_with_a_panel_each(tmp_path):
    import struct

    labels = ["finance_topic", "finance_behaviour", "medical_topic", "medical_behaviour"]
    others = {label: 0.1 for label in labels[:-1]}
    log = scored_log(tmp_path / "scores.jsonl", 1200, 0.1, 0.4, 0, shifted="medical_behaviour", rates=others)
    report = drift(log, Span.parse("200", "--window"))
    assert report.labels == labels
    assert {alarm.label for alarm in report.alarms} == {"medical_behaviour"}
    write_report(report, tmp_path / "drift", False)
    width, height = struct.unpack(">II", (tmp_path / "drift" / "drift.png").read_bytes()[16:24])
    assert height > width  # four panels stacked, one per label
