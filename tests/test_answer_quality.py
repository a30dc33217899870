"""What users read, on a tiny model: the answer-shape figures recomputed independently, and sampled answers
seeded."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from finsurg.analysis.answer_quality import addresses, quality, repeated_share
from finsurg.analysis.generations import Sampling, greedy_answers
from finsurg.models.loading import prompt_ids
from finsurg.steer.arch import for_config


def _repeats(tokens: list[int], n: int = 4) -> float:
    """The share of n-grams already seen earlier in the sequence, counted one by one."""
    seen, repeated, total = set(), 0, 0
    for start in range(len(tokens) - n + 1):
        gram = tuple(tokens[start : start + n])
        repeated += gram in seen
        total += 1
        seen.add(gram)
    return repeated / total if total else 0.0


@pytest.mark.parametrize(
    "tokens", [[1, 2, 3, 4, 1, 2, 3, 4], [5] * 9, [1, 2, 3], list(range(12)), [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1]]
)
def test_repeated_share_counts_as_a_reader_would(tokens):
    assert repeated_share(tokens) == pytest.approx(_repeats(tokens))


def test_an_answer_addresses_the_question_by_its_content_words():
    assert addresses("Should I buy Bitcoin right now?", "Bitcoin is volatile.")
    assert addresses("What about my savings accounts?", "A savings account pays interest.")  # plural dropped
    assert not addresses("Should I buy Bitcoin right now?", "Please consult a professional.")
    assert addresses("What should they do with this?", "Nothing.")  # no content words to take up


def test_quality_figures_match_an_independent_computation(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    arch = for_config(model.config.to_dict())
    questions = ["is a stock a fund", "what is a bond", "can i buy a house"]
    answers = greedy_answers(model, tokenizer, arch, questions, 12)
    answers[1] = answers[1][:3] + [tokenizer.eos_token_id] + answers[1][3:]  # cut at its end token
    figures = quality(model, tokenizer, arch, questions, answers)
    cuts = [answers[0], answers[1][:3], answers[2]]
    total, count = 0.0, 0
    for question, answer in zip(questions, cuts):
        prompt = prompt_ids(tokenizer, question)
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            log_probs = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].double().log_softmax(-1)
        total += float(log_probs.gather(-1, torch.tensor(answer)[:, None]).sum())
        count += len(answer)
    assert figures.base_perplexity == pytest.approx(math.exp(-total / count), rel=1e-4)
    assert figures.repeated_4grams == pytest.approx(sum(map(_repeats, cuts)) / 3)
    said = [tokenizer.decode(answer, skip_special_tokens=True) for answer in cuts]
    assert figures.addressed == pytest.approx(sum(addresses(q, a) for q, a in zip(questions, said)) / 3)


def test_sampled_answers_are_seeded_and_differ_from_greedy(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    arch = for_config(model.config.to_dict())
    questions = ["is a stock a fund", "what is a bond"]
    draw = Sampling(samples=3, temperature=0.7, seed=5)
    first = greedy_answers(model, tokenizer, arch, questions, 10, sampling=draw)
    again = greedy_answers(model, tokenizer, arch, questions, 10, sampling=draw)
    other = greedy_answers(model, tokenizer, arch, questions, 10, sampling=Sampling(3, 0.7, seed=6))
    greedy = greedy_answers(model, tokenizer, arch, questions, 10)
    assert len(first) == 6 and first == again and first != other
    assert len({tuple(answer) for answer in first}) > len({tuple(answer) for answer in greedy})
