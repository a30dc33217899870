"""The monitor's model card: labels and thresholds, held-out figures, how to serve it, what it costs."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from finsurg import __version__
from finsurg.monitor.classifier import MonitorSpec, sigmoid

CARD_NAME = "README.md"
MEANING = {
    "topic": "the conversation is about {pack} subject (a user turn alone, or a whole exchange)",
    "behaviour": "the assistant's reply does {pack} positive behaviour",
}


def meaning(label: str) -> str:
    """`topic`, `behaviour`, or a bundle's `NAME_topic` / `NAME_behaviour`."""
    name, _, kind = label.rpartition("_") if label not in MEANING else ("", "", label)
    return MEANING[kind].format(pack=f"the {name} pack's" if name else "the pack's")


USE = """## Use

A conversation is scored as its messages rendered by the chat template, as text:

```python
from transformers import AutoTokenizer, pipeline

tokenizer = AutoTokenizer.from_pretrained("path/to/monitor")
text = tokenizer.apply_chat_template(messages, tokenize=False)
scores = pipeline("text-classification", model="path/to/monitor", top_k=None)(text)
```

vLLM's pooling runner serves it as it is (last-token pooling, a sigmoid per label):

```bash
vllm serve path/to/monitor --runner pooling
curl localhost:8000/classify -d '{"model": "path/to/monitor", "input": ["<rendered conversation>"]}'
```

finsurg scores chat logs (`{"messages": [...]}` per line) and watches them drift:

```bash
finsurg monitor score --monitor path/to/monitor chats.jsonl --out scores.jsonl
finsurg monitor drift scores.jsonl --window 500 --out drift/
```

## Files

`monitor.json` holds the thresholds, the layer, the base's fingerprint (SHA256 of its embeddings) and the
figures above; `SHA256SUMS` covers every file.
"""


def render_card(spec: MonitorSpec) -> str:
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=["finsurg", "compliance-monitor", "linear-probe"],
    )
    body = "\n".join([_what(spec), _labels(spec), _figures(spec), _cost(spec), USE])
    return f"---\n{data.to_yaml()}\n---\n\n{body}"


def _what(spec: MonitorSpec) -> str:
    return f"""> **{spec.disclaimer}**

# Compliance monitor for `{spec.base["name"]}`

Made by finsurg {__version__} from recipe `{spec.recipe}` (pack `{spec.pack}`). It is `{spec.base["name"]}` cut after
decoder layer **{spec.layer}** of {spec.base["num_hidden_layers"]}, saved as a stock
`{_classifier(spec)}` whose head holds {len(spec.labels)} linear probes on layer {spec.layer}'s MLP input at the last token.
Layer {spec.layer}'s MLP is zeroed and its norm is the final norm, so the head reads exactly the hidden state
the probes were learnt on. It runs beside serving: it never changes what the model says.
"""


def _labels(spec: MonitorSpec) -> str:
    rows = "\n".join(
        f"| `{label}` | {meaning(label)} | {spec.thresholds[label]:+.3f} | {sigmoid(spec.thresholds[label]):.4f} |"
        for label in spec.labels
    )
    topic_source = {
        "condition": "The `topic` probe is the recipe's topic condition (the direction its conditional surgery's gate "
        "reads), not learnt again;",
        "fitted": "The `topic` probe is a logistic probe learnt on the pack's train split;",
        "none": "There is no `topic` label: the pack has no off-topic conversations of its own to learn it from;",
    }[spec.topic_source]
    return f"""## Labels (multi-label: an independent sigmoid each)

| label | fires when | threshold (raw logit) | threshold (sigmoid score) |
|---|---|---|---|
{rows}

Flag a conversation when a label's raw logit exceeds its threshold (equivalently, its sigmoid score exceeds the
score threshold). Thresholds maximise TPR − FPR on the pack's tune split. {topic_source}
each behaviour probe is learnt on the train split. A bundle's probes of one pack count every other pack's
conversations among their negatives.
"""


def _figures(spec: MonitorSpec) -> str:
    heldout = "\n".join(
        f"| `{label}` | {row.auroc:.3f} | {row.tpr:.3f} | {row.fpr:.3f} | {row.positives} / {row.negatives} |"
        for label, row in spec.heldout.items()
    )
    columns = [(split, label) for split in ("tune", "heldout") for label in spec.labels]
    per_layer = "\n".join(
        f"| {layer}{' (chosen)' if int(layer) == spec.layer else ''} | "
        + " | ".join(f"{row[f'{split}_{label}_auroc']:.3f}" for split, label in columns)
        + " |"
        for layer, row in sorted(spec.layers.items(), key=lambda item: int(item[0]))
    )
    header = " | ".join(f"{'held-out' if split == 'heldout' else split} {label}" for split, label in columns)
    check = spec.check or {}
    return f"""## Held-out figures

| label | AUROC | TPR at threshold | FPR at threshold | positives / negatives |
|---|---|---|---|---|
{heldout}

Per candidate layer (the layer was chosen on tune, by the worse label's AUROC):

| layer | {header} |
|---|{"---|" * len(columns)}
{per_layer}

Checked at export: on {check.get("texts", 0)} held-out conversations, this checkpoint in float32 gives the
probes' logits on the base's own hidden states (read through hooks) within
{check.get("max_abs_diff", float("nan")):.1e} (tolerance {check.get("tolerance", float("nan")):g}).
"""


def _cost(spec: MonitorSpec) -> str:
    return f"""## Cost

It runs {spec.depth} of the base's {spec.base["num_hidden_layers"]} decoder layers and no LM head: at most
{spec.cost:.2f} of a full forward pass per token.
"""


def _classifier(spec: MonitorSpec) -> str:
    from finsurg.steer.arch import by_name

    return by_name(spec.base["architecture"]).monitoring(spec.base["name"]).classifier


def write_card(directory: Path, spec: MonitorSpec) -> Path:
    path = directory / CARD_NAME
    ModelCard(render_card(spec)).save(path)
    return path
