"""The model card (README.md) of a variant directory, built from what the directory records.

Everything comes from files in the variant: the surgery record, the baked offsets, and, when
present, verification.json, eval.json and the analysis plots. The card can be re-rendered at
any time (after eval, or with the Hub repo id before an upload) and says the same thing.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from finsurg.steer.arch import by_name
from finsurg.steer.bundle_report import CrossTalkReport
from finsurg.steer.finding_tables import (
    answers_table,
    dial_table,
    examples_table,
    gate_sentence,
    heldout_table,
    routes_table,
    shift_table,
)
from finsurg.variant.directory import Variant
from finsurg.variant.eval_report import BASE_RUN, RunKey, VariantEvalReport
from finsurg.variant.record import CARD_NAME, PLOTS_DIR, SurgeryRecord
from finsurg.variant.reports import LlamaCppReport, VerificationReport, VllmReport

TAGS = ["finsurg", "steering", "neuron-surgery", "mechanistic-interpretability", "activation-steering"]


def repo_name(surgery: SurgeryRecord) -> str:
    """The variant's default Hub repo name: base name, variant and alpha."""
    base = surgery.base_model
    short = (base.hub_id or base.name).rstrip("/").split("/")[-1]
    return f"{short}-finsurg-{surgery.variant}-a{abs(surgery.alpha):g}"


def render_card(directory: Path, repo_id: str | None = None) -> ModelCard:
    variant = Variant(directory)
    surgery = variant.record
    arch = by_name(surgery.base_model.architecture)
    evaluation = variant.report(VariantEvalReport)
    base = surgery.base_model
    base_name = base.hub_id or base.name
    model_name = repo_id.split("/")[-1] if repo_id else repo_name(surgery)
    direction = {"steered": surgery.card.positive_direction, "conservative": surgery.card.negative_direction}
    data = ModelCardData(
        base_model=base.hub_id,
        license=base.license,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=TAGS + surgery.card.tags + [surgery.variant],
        model_name=model_name,
        eval_results=_eval_results(evaluation) or None,
    )
    flags = ", ".join(
        f"`{key}: {json.dumps(value)}`"
        for key, value in arch.variant_config.items()
        if key not in ("architectures", "model_type")
    )
    sections = [
        f"> **{surgery.disclaimer}**",
        f"# {model_name}",
        f"A **{surgery.variant}** variant of `{base_name}` made by finsurg {surgery.finsurg_version}: the "
        f"recipe's residual-stream offsets at alpha **{surgery.alpha:+g}** ({direction.get(surgery.variant, '')}), "
        f"baked into `{surgery.baked_into}` of the steered layers. It is an ordinary "
        f"`{surgery.rewritten_as or base.architecture}` checkpoint with {flags}: no hooks and no custom code."
        + (f" {arch.rewrite}; every other setting carries over unchanged." if surgery.rewritten_as else "")
        + (
            f" Its context is capped at the base's sliding window ({surgery.context_cap} tokens), where the "
            "rewrite is exact."
            if surgery.context_cap
            else ""
        ),
        _changes(surgery),
        _bundle(surgery, variant.report(CrossTalkReport)),
        _verification(variant.report(VerificationReport)),
        _served(variant.report(VllmReport)),
        _efficacy(surgery),
        _evaluation(evaluation),
        _plots(directory),
        _usage(surgery, flags, repo_id or f"path/to/{model_name}", arch.vllm_drops),
        _llamacpp(directory, surgery, variant.report(LlamaCppReport)),
        "## Files\n\n`finsurg_surgery.json` records the base model (name and SHA256 of its weight files), the "
        "recipe, alpha and dtype; `finsurg_offsets.safetensors` holds the exact offsets baked in (`offset.{L}`); "
        "`SHA256SUMS` covers every file (`finsurg verify --checksums DIR` re-checks it).",
    ]
    body = "\n\n".join(section for section in sections if section)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def write_card(directory: Path, repo_id: str | None = None) -> Path:
    path = directory / CARD_NAME
    path.write_text(str(render_card(directory, repo_id)))
    return path


def _llamacpp(directory: Path, surgery: SurgeryRecord, report: LlamaCppReport | None) -> str:
    """How to run the GGUF in this directory with llama.cpp and Ollama, and the control-vector dial."""
    ggufs = sorted(p.name for p in directory.glob("*.gguf"))
    if not ggufs:
        return ""
    name, alpha = ggufs[0], surgery.alpha
    lines = [
        "## llama.cpp and Ollama",
        "",
        f"`{name}` is the base GGUF with the offsets as `blk.N.ffn_down.bias` (F32); nothing else changed.",
        "",
        "```bash",
        f'llama-cli -m {name} -p "Should I put my savings into index funds?"',
        "```",
        "",
        "Ollama, with a `Modelfile` beside the file:",
        "",
        "```",
        f"FROM ./{name}",
        "```",
        "",
        f"and `ollama create {repo_name(surgery)} -f Modelfile`. The same surgery as a dial, on the unmodified "
        "base GGUF: `finsurg cvector --recipe RECIPE --out control.gguf` writes llama.cpp's control-vector file "
        f"at alpha 1, and `--control-vector-scaled control.gguf:{alpha:g}` applies it at this variant's alpha "
        f"(any other value moves the dial; `:{-alpha:g}` is the opposite variant).",
    ]
    if surgery.recipe.condition is not None:
        lines += [
            "",
            "llama.cpp's control vectors add a fixed vector at every position and cannot express a condition, so "
            "that dial is unconditional: it fires on every conversation, unlike this variant, whose gate is baked "
            "into its grafted neurons.",
        ]
    if report is not None:
        verdict = "agree" if report.passed else "DISAGREE"
        lines += [
            "",
            f"Checked in llama.cpp {report.llama_cpp_version} (F32): the baked GGUF and the base with the control "
            f"vector {verdict}: {report.baked_vs_control_vector_tokens.prompts_identical}/{report.prompts} greedy "
            f"continuations identical, max |Δlogit| {report.baked_vs_control_vector.max_abs_logit_diff:.2e}. "
            f"Against transformers: max |Δlogit| {report.baked_vs_transformers.max_abs_logit_diff:.2e}, next to the "
            f"conversion's own noise floor {report.noise_floor.max_abs_logit_diff:.2e}.",
        ]
    return "\n".join(lines)


def _changes(surgery: SurgeryRecord) -> str:
    recipe, alpha = surgery.recipe, surgery.alpha
    rows = "\n".join(
        f"| {n.index} | {n.coefficient:+.4g} | {alpha * n.coefficient:+.4g} | {n.role} |" for n in recipe.neurons
    )
    steering = recipe.steering
    if steering and steering.file:
        steer = (
            f"plus a per-layer steering vector with coefficient {steering.coefficient:g} "
            f"(shift {alpha * steering.coefficient:+.4g} × `steering.{{L}}` per layer)"
        )
    else:
        steer = "with no steering vectors"
    lines = [
        "## What was changed",
        "",
        f"Layers {', '.join(map(str, recipe.layers))}: after each, the residual stream is shifted by "
        f"`alpha · (Σ coefficient · e_index + steering.coefficient · steering.L)`, {steer}. "
        f"alpha = {alpha:+g}; every other bias is zero. {recipe.description}",
        "",
        "| dimension | coefficient | shift per layer at this alpha | role |",
        "|---|---|---|---|",
        rows,
    ]
    if recipe.condition is not None:
        lines += ["", _gate(surgery)]
    return "\n".join(lines)


def _bundle(surgery: SurgeryRecord, crosstalk: CrossTalkReport | None) -> str:
    """Every behaviour a bundle holds, with its strength and its gate; the sections above describe the first."""
    if not surgery.bundle:
        return ""
    rows = []
    for item in surgery.bundle:
        recipe = item.recipe
        count = len(recipe.layers)
        gate = "always on" if recipe.condition is None else f"gated at {count} layer{'s' if count > 1 else ''}"
        toward = item.card.positive_direction if item.alpha > 0 else item.card.negative_direction
        rows.append(
            f"| {item.name} | {item.alpha:+g} ({toward}) | {', '.join(map(str, recipe.layers))} | {gate} | "
            f"`{item.recipe_origin}` |"
        )
    return "\n".join(
        [
            "## Behaviours in this bundle",
            "",
            "Each behaviour keeps its own topic condition, layers, strength and sign; its gated shift is added only "
            "where its own gate opens. The sections above describe the first behaviour; "
            "`finsurg_offsets.safetensors` names each steer's behaviour in its metadata.",
            "",
            "| behaviour | alpha | layers | gate | recipe |",
            "|---|---|---|---|---|",
            *rows,
        ]
        + (
            []
            if crosstalk is None
            else [
                "",
                "### Cross-talk",
                "",
                "Each behaviour on its own held-out split, in this bundle against its recipe alone at the same "
                "alpha (hooks on the base, which the variants equal): the log-odds shift it keeps, its greedy "
                "answers judged by its pack's rules, and the share whose first 24 tokens are the recipe-alone "
                f"answers; off-topic answers against the base's, on {crosstalk.sides[0].off_topic_questions} "
                "conversations off every topic that no condition learnt from. Targets: shift kept ≥ "
                f"{crosstalk.targets['shift_kept']:.0%}, answers as alone ≥ {crosstalk.targets['answers_same']:.0%}, "
                f"off-topic unchanged ≥ {crosstalk.targets['off_topic_unchanged']:.0%}.",
                "",
                crosstalk.tables(),
            ]
        )
    )


def _gate(surgery: SurgeryRecord) -> str:
    """What the grafted gate reads, and how well it tells the topic apart on held-out conversations."""
    text = (
        "**The shift is conditional.** Each steered layer's MLP holds two grafted neurons that add the shift times "
        "a gate s(z) rising from 0 to 1, where z = sharpness · (condition · x̂ − threshold) is read on the MLP's own "
        "normed input x̂: a topic condition learnt from the pack's on-topic and off-topic conversations. Every "
        "layer's MLP is wider by the same count; the neurons beyond the graft are exact zeros. Off the topic the gate "
        "stays shut and the variant answers as the base does."
    )
    routes = None if surgery.behaviour is None else surgery.behaviour.routes
    if routes is not None:
        condition = routes.condition
        aurocs = [row.token_auroc for row in condition.heldout.values()]
        conversations = [row.conversation_auroc for row in condition.heldout.values()]
        text += (
            f" Held-out AUROC of the condition: {min(aurocs):.3f}–{max(aurocs):.3f} per token, "
            f"{min(conversations):.3f}–{max(conversations):.3f} per conversation."
        )
        if condition.open_shares is not None:
            text += " " + gate_sentence(condition.open_shares)
    return text


def _efficacy(surgery: SurgeryRecord) -> str:
    """The analysis's held-out effects beside the prompting baseline, and greedy answers side by side."""
    behaviour = surgery.behaviour
    if behaviour is None:
        return ""
    splits = behaviour.splits
    lines = [
        "## Steering efficacy (held-out questions, from the analysis)",
        "",
        f"Measured by `finsurg analyze` on {splits.heldout} held-out questions the directions and the tuning "
        f"never saw (alpha ±3, the tuned point; this variant is alpha {surgery.alpha:+g}). Log-odds are "
        "log P(positive answer) − log P(negative answer) per question; KL is the mean per-token KL from the base "
        f"on {splits.neutral_replies} neutral replies. Published evaluations find that prompting often beats "
        "steering, so the plain system prompts stand beside it.",
        "",
    ]
    routes = behaviour.routes
    if routes is not None:
        lines += [
            f"What users read first: both routes, the constant offset and the gated one (this recipe: "
            f"**{routes.chosen}**), answering held-out on-topic and off-topic questions. Answers are judged by the "
            "pack's phrase rules, greedy and sampled; an off-topic answer is unchanged where its first tokens equal "
            "the base's.",
            "",
            *answers_table(routes.heldout),
            "",
        ]
    lines += ["Greedy answers to held-out questions:", "", *examples_table(behaviour.examples), ""]
    if routes is not None and routes.heldout.dial:
        lines += ["The dial, both routes:", "", *dial_table(routes.heldout), ""]
    lines += ["Log-odds and costs, beside the prompting baseline:", "", *heldout_table(behaviour.heldout)]
    if routes is not None:
        lines += ["", *routes_table(routes.heldout)]
    return "\n".join(lines)


def _verification(report: VerificationReport | None) -> str:
    if not report:
        return ""
    table = "\n".join(f"| {name} | {value} |" for name, value in report.rows())
    verdict = "passed" if report.passed else "FAILED"
    return (
        f"## Verification: baked vs hooks ({verdict})\n\nA layer-local proof (the variant's tensors against the "
        "base's, and each steered block alone against the base block with the offset added), then this "
        "checkpoint, loaded with plain transformers, against TransformerLens hooks on the unmodified base, in "
        f"float32 on {report.prompts} prompts.\n\n| check | result |\n|---|---|\n{table}"
    )


def _served(report: VllmReport | None) -> str:
    if not report:
        return ""
    return (
        f"Served by vLLM {report.vllm_version} (float32 greedy, {report.new_tokens} tokens): "
        f"{report.vs_hooks.prompts_identical}/{report.prompts} prompts token-identical to the hooks, "
        f"{report.vs_transformers.prompts_identical}/{report.prompts} to transformers."
    )


def _evaluation(report: VariantEvalReport | None) -> str:
    if not report:
        return ""
    metrics = report.metrics
    baked, hooked = (str(RunKey.of(report.variant, kind)) for kind in ("baked", "hooked"))
    prompts = list(report.prompting)
    rows = []
    for task in report.tasks:
        base = metrics[str(BASE_RUN)][task]
        names = [report.headlines[task]] + (["log_odds"] if "log_odds" in base else [])
        for name in names:
            cells = [
                base[name],
                *[metrics[p][task][name] for p in prompts],
                metrics[baked][task][name],
                metrics.get(hooked, {}).get(task, {}).get(name, float("nan")),
            ]
            rows.append(f"| {task} | {name} | " + " | ".join(f"{value:.4f}" for value in cells) + " |")
    header = [
        "task",
        "metric",
        "base",
        *[f"base + {RunKey.parse(p).side} system prompt" for p in prompts],
        "this variant (baked)",
        "hooks on the base",
    ]
    parity = report.parity
    baseline = (
        " The system-prompt columns are the prompting baseline: the unmodified base told to behave "
        "each way (" + "; ".join(f'{RunKey.parse(p).side}: "{text}"' for p, text in report.prompting.items()) + ")."
        if prompts
        else ""
    )
    if parity is None:
        agreement = f"Hook parity: {report.parity_route}."
    else:
        agreement = f"Baked and hooked agree item by item: {parity.passed} (max |Δ log-likelihood| {parity.worst:.2e})."
    engines = sorted(set(report.engines.values())) or ["transformers"]
    return (
        "## Evaluation (lm-eval)\n\n"
        f"{report.compute_dtype} compute on {' and '.join(engines)}, chat template "
        f"{'on' if report.chat_template else 'off'}. {agreement}{baseline}\n\n"
        "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n" + "\n".join(rows) + _shifts(report)
    )


def _shifts(report: VariantEvalReport) -> str:
    """This variant's and the prompting baseline's preference shift, item by item."""
    own = [str(RunKey.of(report.variant, "baked")), *report.prompting]
    shifts = {name: report.shifts[name] for name in own if name in report.shifts}
    if not shifts:
        return ""
    return (
        "\n\nLog-odds shift from the base on the preference task, judged item by item (95% bootstrap "
        "interval; wrong way: items moved against the intended direction):\n\n" + "\n".join(shift_table(shifts))
    )


def _eval_results(report: VariantEvalReport | None) -> list[EvalResult]:
    if not report:
        return []
    results = []
    for task in report.tasks:
        metric = report.headlines[task]
        value = report.metrics[str(RunKey.of(report.variant, "baked"))][task][metric]
        results.append(
            EvalResult(
                task_type="text-generation",
                dataset_type=task,
                dataset_name=report.task_titles.get(task, task),
                metric_type=metric,
                metric_value=round(value, 4),
                dataset_split="test",
            )
        )
    return results


def _plots(directory: Path) -> str:
    root = directory / PLOTS_DIR
    plots = sorted(root.rglob("*.png"))  # a bundle's under each behaviour's name
    if not plots:
        return ""
    images = "\n\n".join(
        f"![{p.relative_to(root).with_suffix('').as_posix().replace('_', ' ')}]({PLOTS_DIR}/{p.relative_to(root).as_posix()})"
        for p in plots
    )
    return f"## Analysis\n\nFrom the `finsurg analyze` run that produced the recipe.\n\n{images}"


def _usage(surgery: SurgeryRecord, flags: str, where: str, vllm_drops: str | None) -> str:
    base = surgery.base_model
    recipe = (surgery.recipe_origin or "recipe.json").removeprefix("preset:")
    if vllm_drops:
        vllm = f"**Not servable by vLLM**: {vllm_drops}. Serve it with transformers."
    else:
        vllm = f"With vLLM (it reads {flags} from config.json):\n\n```bash\nvllm serve {where}\n```"
    return f"""## Usage

With plain transformers:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{where}")
tokenizer = AutoTokenizer.from_pretrained("{where}")
messages = [{{"role": "user", "content": "{surgery.card.example_prompt}"}}]
ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
print(tokenizer.decode(model.generate(ids, max_new_tokens=64)[0][ids.shape[1]:]))
```

{vllm}

To reproduce this checkpoint:

```bash
finsurg export --model {base.hub_id or base.name} --recipe {recipe} --alpha {abs(surgery.alpha):g} --dtype {surgery.dtype}
```"""
