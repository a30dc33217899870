"""The one surgery type: several steers on a layer, gated or not, bake exactly as their hooks add them, round-trip
through the offsets file, and an export's proof runs once, beside the writing, for a conditional recipe too."""

from __future__ import annotations

import torch

from finsurg.bake.writer import VariantWriter
from finsurg.checks import local_proof
from finsurg.models.loading import load_model
from finsurg.models.source import resolve_model
from finsurg.steer.graft import ALIGN, Gate
from finsurg.steer.hooks import offsets_added
from finsurg.steer.surgery import Steer, Surgery

from conftest import export_checked, make_tiny_llama, tiny_recipe

HIDDEN = 64


def _direction(seed: int) -> torch.Tensor:
    vector = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(seed))
    return vector / vector.norm()


def _two_behaviours() -> Surgery:
    """Two gated steers sharing layer 1 (two topics), an ungated one there too, and one alone on layer 2."""
    return Surgery(
        (
            Steer(1, 0.8 * _direction(1), Gate(4.0 * _direction(2), -0.1)),
            Steer(1, -0.6 * _direction(3), Gate(4.0 * _direction(4), 0.2)),
            Steer(1, 0.3 * _direction(5)),
            Steer(2, 0.5 * _direction(6)),
        )
    )


def test_the_offsets_file_form_round_trips_several_steers_per_layer():
    surgery = _two_behaviours()
    again = Surgery.from_tensors(surgery.tensors())
    assert again.same_as(surgery) and not again.same_as(surgery.negated())
    assert sorted(surgery.tensors()) == sorted(
        ["offset.1", "gate.1.weight", "gate.1.bias", "offset.1.1", "gate.1.1.weight", "gate.1.1.bias"]
        + ["offset.1.2", "offset.2"]
    )
    assert surgery.graft_width() == ALIGN and Surgery.of({1: torch.ones(HIDDEN)}).graft_width() == 0
    # one layer's ungated offsets are summed, in float64
    assert torch.equal(Surgery.of({1: torch.ones(4)}).always()[1], torch.ones(4))


def test_several_gated_steers_in_one_layer_bake_exactly_as_their_hooks(tmp_path):
    base = make_tiny_llama(tmp_path / "base")
    surgery = _two_behaviours()
    out = tmp_path / "variant"
    out.mkdir()
    model = resolve_model(str(base))
    VariantWriter(model).write(surgery, "steered", out)
    baked, hooked = load_model(out), load_model(base)
    ids = torch.tensor([[1, 20, 31, 44, 52, 7, 9, 60]])
    with torch.no_grad():
        plain = hooked(ids).logits
        with offsets_added(hooked, surgery, model.arch):
            reference = hooked(ids).logits
        got = baked(ids).logits
    assert float((got - reference).abs().max()) < 1e-4
    assert float((plain - reference).abs().max()) > 1e-2  # the surgery did something
    alone = Surgery(surgery.steers[:1] + surgery.steers[2:])  # without the second gate: a different model
    with torch.no_grad(), offsets_added(hooked, alone, model.arch):
        assert float((hooked(ids).logits - got).abs().max()) > 1e-4


def test_a_conditional_exports_proof_runs_once_beside_the_writing(tmp_path, monkeypatch):
    """The block checks an export runs while it writes, and each sealed variant's structure check, stand for the
    variants it records: they run once, on the export's verification thread, and are not run again."""
    import threading

    from finsurg import export

    runs, structures = [], []
    original, structure = local_proof.BlockProof.run, local_proof.check_structure

    def counted(self):
        runs.append(len(self.surgeries))
        return original(self)

    def checked(variant, *args):
        structures.append((variant.record.variant, threading.current_thread() is threading.main_thread()))
        return structure(variant, *args)

    monkeypatch.setattr(local_proof.BlockProof, "run", counted)
    monkeypatch.setattr(local_proof, "check_structure", checked)
    monkeypatch.setattr(export, "check_structure", checked)
    base = make_tiny_llama(tmp_path / "base", mlp_bias=True)
    recipe = tiny_recipe(tmp_path / "recipe", conditional=True)
    results = export_checked(resolve_model(str(base)), recipe, 3.0, tmp_path / "out", full_verify=False)
    assert all(item["verification"]["proof"]["passed"] for item in results)
    assert all(item["verification"]["proof"]["structure"]["tensors_compared"] > 0 for item in results)
    assert runs == [2]  # one run, on the export's thread, for both variants
    assert structures == [("steered", False), ("conservative", False)]  # each once, beside the writing
