"""One parameter grammar for every op: what each accepts, what it rejects, and the layout rules."""

import ast
from pathlib import Path

import numpy as np
import pytest

import augment
from augment import core, geometry, params, recipes
from augment import (AdditiveGaussianNoise, Affine, CoarseDropout, ContrastNormalization,
                     CropAndPad, Fliplr, Flipud, GaussianBlur, LinearContrast, Multiply, SomeOf,
                     Sometimes)

ROOT = Path(__file__).resolve().parents[1]


def _flat(value=100, batch=400, size=8):
    return np.full((batch, size, size, 3), value, np.uint8)


# --------------------------------------------------------------------------------------------
# every op takes number | (a, b) | list where imgaug does


# (op, the spec forms it must accept): each one is built and run on a small batch.
ACCEPTED = {
    "Fliplr": [lambda: Fliplr(1), lambda: Fliplr(0.5), lambda: Fliplr(True)],
    "Flipud": [lambda: Flipud(0), lambda: Flipud(0.2)],
    "GaussianBlur": [lambda: GaussianBlur(1.0), lambda: GaussianBlur((0, 1)),
                     lambda: GaussianBlur(sigma=[0, 1])],
    "CropAndPad": [lambda: CropAndPad(percent=0.1), lambda: CropAndPad(percent=(-0.2, 0.2)),
                   lambda: CropAndPad(percent=[-0.1, 0.1], pad_cval=[0, 255]),
                   lambda: CropAndPad(px=(-2, 2), pad_mode=["edge", "wrap"]),
                   lambda: CropAndPad(percent=(0.1, (0, 0.1), [0.0, 0.2], 0.0),
                                      pad_mode=augment.ALL, pad_cval=(0, 255))],
    "Affine": [lambda: Affine(rotate=20), lambda: Affine(rotate=(-20, 20)),
               lambda: Affine(rotate=[0, 90], scale=[0.5, 1.0], shear=[-5, 5]),
               lambda: Affine(scale={"x": [0.5, 1.0], "y": (0.9, 1.1)},
                              translate_percent={"x": 0.1}, order=[0, 1],
                              cval=augment.ALL, mode=augment.ALL),
               lambda: Affine(translate_px={"x": [-2, 2], "y": (-1, 1)}, cval=[0, 128])],
    "CoarseDropout": [lambda: CoarseDropout(0.1), lambda: CoarseDropout((0.0, 0.2)),
                      lambda: CoarseDropout([0.05, 0.1], size_percent=[0.3, 0.5],
                                            per_channel=True)],
    "Multiply": [lambda: Multiply(1.2), lambda: Multiply((0.5, 1.5), per_channel=0.5),
                 lambda: Multiply([0.5, 1.5])],
    "LinearContrast": [lambda: LinearContrast(1.5), lambda: LinearContrast([0.75, 1.5]),
                       lambda: ContrastNormalization((0.75, 1.5), per_channel=True)],
    "AdditiveGaussianNoise": [lambda: AdditiveGaussianNoise(scale=5.0),
                              lambda: AdditiveGaussianNoise(scale=(0, 10), per_channel=0.5),
                              lambda: AdditiveGaussianNoise(loc=[-5, 5], scale=[0, 10])],
    "Sometimes": [lambda: Sometimes(0.5, Multiply([0.5, 1.5]))],
    "SomeOf": [lambda: SomeOf(1, [Fliplr(1), Flipud(1)]),
               lambda: SomeOf((0, None), [Fliplr(1), Flipud(1)]),
               lambda: SomeOf([0, 2], [Fliplr(1), Flipud(1)])],
}


@pytest.mark.parametrize("op_name", sorted(ACCEPTED))
def test_every_op_accepts_each_imgaug_spec_form(op_name):
    x = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3)).astype(np.uint8)
    for make in ACCEPTED[op_name]:
        op = make()
        out = op(x, [3, 4])
        assert out.dtype == x.dtype and out.shape == x.shape, repr(op)


def test_a_list_picks_one_of_its_values_per_image():
    out = Multiply([0.5, 1.5])(_flat(), [1, 2]).numpy()[:, 0, 0, 0]
    assert set(np.unique(out)) == {50, 150}
    assert 0.4 < np.mean(out == 50) < 0.6
    x = np.zeros((400, 9, 9, 3), np.uint8)
    x[:, 4, 4] = 255  # a dot: sigma 0 leaves it, sigma 1 spreads it
    centre = GaussianBlur(sigma=[0, 1])(x, [5, 6]).numpy()[:, 4, 4, 0]
    untouched = centre == 255
    assert 0.4 < untouched.mean() < 0.6 and len(np.unique(centre[~untouched])) == 1
    counts = np.bincount(SomeOf([0, 2], [Multiply(2.0), Multiply(3.0)])(
        np.ones((400, 1, 1, 1), np.float32), [7, 8]).numpy().ravel().astype(int))
    assert set(np.nonzero(counts)[0]) == {1, 6}  # none of the two, or both: 2 * 3


def test_a_range_and_a_number_mean_what_imgaug_means():
    out = Multiply((0.5, 1.5))(_flat(), [1, 2]).numpy()[:, 0, 0, 0]
    assert len(np.unique(out)) > 50 and out.min() >= 50 and out.max() <= 150
    drawn = Affine(rotate=20).sample_params(np.int32([1, 2]), 64)["rotate"].numpy()
    np.testing.assert_array_equal(drawn, 20.0)


# --------------------------------------------------------------------------------------------
# bad specs fail at once, in one line naming the op and the parameter

REJECTED = [
    (lambda: Multiply("x"), "Multiply mul"),
    (lambda: Multiply({"x": 1.0}), "Multiply mul"),  # imgaug has no per-axis multiply
    (lambda: Multiply((1.5, 0.5)), "Multiply mul"),
    (lambda: Multiply(1.0, per_channel=2), "Multiply per_channel"),
    (lambda: LinearContrast([]), "LinearContrast alpha"),
    (lambda: GaussianBlur(sigma=-1), "GaussianBlur sigma"),
    (lambda: GaussianBlur(sigma=[0, "a"]), "GaussianBlur sigma"),
    (lambda: CoarseDropout(p=1.5), "CoarseDropout p"),
    (lambda: CoarseDropout(size_percent=(0.5, 2.0)), "CoarseDropout size_percent"),
    (lambda: CoarseDropout(min_size=0), "CoarseDropout min_size"),
    (lambda: AdditiveGaussianNoise(scale=(-1, 2)), "AdditiveGaussianNoise scale"),
    (lambda: AdditiveGaussianNoise(loc=None), "AdditiveGaussianNoise loc"),
    (lambda: Fliplr(1.5), "Fliplr p"),
    (lambda: Flipud("half"), "Flipud p"),
    (lambda: CropAndPad(percent=(-1.0, 0.1)), "CropAndPad percent"),
    (lambda: CropAndPad(percent=(0.1, 0.1, "x", 0.1)), "CropAndPad percent (bottom)"),
    (lambda: CropAndPad(pad_mode="nearest"), "CropAndPad pad_mode"),
    (lambda: CropAndPad(pad_cval=True), "CropAndPad pad_cval"),
    (lambda: Affine(rotate="20"), "Affine rotate"),
    (lambda: Affine(scale={"z": 1.0}), "Affine scale"),
    (lambda: Affine(translate_percent={"x": "a"}), "Affine translate_percent['x']"),
    (lambda: Affine(shear=(10, -10)), "Affine shear"),
    (lambda: Affine(order=3), "Affine order"),
    (lambda: Affine(cval=(0, 255, 3)), "Affine cval"),
    (lambda: Affine(mode=["constant", "bogus"]), "Affine mode"),
    (lambda: Sometimes(-0.1, Fliplr(1)), "Sometimes p"),
    (lambda: SomeOf("two", [Fliplr(1)]), "SomeOf n"),
    (lambda: SomeOf((3, 1), [Fliplr(1)]), "SomeOf n"),
]


@pytest.mark.parametrize("make, name", REJECTED, ids=[n for _, n in REJECTED])
def test_bad_spec_raises_one_line_value_error_naming_the_parameter(make, name):
    with pytest.raises(ValueError) as info:
        make()
    message = str(info.value)
    assert message.startswith(name + ":"), message
    assert "\n" not in message


# --------------------------------------------------------------------------------------------
# one grammar module, one ALL, seeds in core, combinators on core only


def test_one_all_constant_shared_by_every_module():
    assert augment.ALL is params.ALL is geometry.ALL is recipes.ALL


def test_step_seed_lives_in_core_and_keeps_its_values():
    assert augment.step_seed is core.step_seed
    # Values from before the move: runs resumed across it must draw the same augmentations.
    np.testing.assert_array_equal(augment.step_seed(5, 3, 1), [1751914336, 1])
    np.testing.assert_array_equal(augment.step_seed(0, 7, 2), [382393160, 2])


def _augment_imports(module_file):
    tree = ast.parse((ROOT / "augment" / module_file).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "augment":
            names.update(f"augment.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.startswith("augment")}


def test_combinators_depend_on_core_only_and_ops_on_the_grammar_module():
    assert _augment_imports("combinators.py") == {"augment.core"}
    for module_file in ("geometry.py", "photometric.py"):
        assert "augment.params" in _augment_imports(module_file), module_file


def test_documented_ops_are_exported():
    for name in ("FusedGeometry", "ALL", "recipe_names", "step_seed", "Sequential"):
        assert name in augment.__all__ and hasattr(augment, name), name
    assert augment.FusedGeometry is geometry.FusedGeometry


def test_docstrings_name_no_machine_paths_or_measured_figures():
    for path in sorted((ROOT / "augment").glob("*.py")):
        text = path.read_text()
        for bad in ("/work/", "../shared", "shared/docs", "images/s", " ms ", "µs"):
            assert bad not in text, f"{path.name} contains {bad!r}"
