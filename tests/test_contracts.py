"""docs/CONTRACTS.md gives the public signatures each stage promises the others; these tests
fail as soon as the code and the document disagree."""

import importlib
import inspect
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Defaults that CONTRACTS writes by name rather than by value.
_NAMED_DEFAULTS = {"DEFAULT_SHUFFLE_BUFFER": ("tinyimagenet_tfrecords.pipeline",
                                              "DEFAULT_SHUFFLE_BUFFER")}


def _contract_signature(name: str) -> str:
    """The signature docs/CONTRACTS.md gives for ``name(...)``, whitespace removed."""
    with open(os.path.join(REPO, "docs", "CONTRACTS.md"), encoding="utf-8") as f:
        text = " ".join(f.read().split())
    match = re.search(rf"`(?:[\w.]+\.)?{name}\((.*?)\)(?: ->[^`]*)?`", text)
    assert match, f"docs/CONTRACTS.md does not give {name}(...)"
    return match.group(1).replace(" ", "")


def _code_signature(fn) -> str:
    named = {getattr(importlib.import_module(m), attr): label
             for label, (m, attr) in _NAMED_DEFAULTS.items()}
    params, star = [], False
    for p in inspect.signature(fn).parameters.values():
        if p.kind == p.VAR_KEYWORD:
            params.append(f"**{p.name}")
            continue
        if p.kind == p.KEYWORD_ONLY and not star:
            params.append("*")
            star = True
        if p.default is p.empty:
            params.append(p.name)
        elif isinstance(p.default, bool) or p.default not in named:
            params.append(f"{p.name}={p.default!r}".replace("'", '"'))
        else:
            params.append(f"{p.name}={named[p.default]}")
    return ",".join(params).replace(" ", "")


@pytest.mark.parametrize("module, name", [
    ("tinyimagenet_tfrecords.build", "build_dataset"),
    ("tinyimagenet_tfrecords.manifest", "check_shards"),
    ("tinyimagenet_tfrecords.verify", "find_corrupt_shards"),
    ("tinyimagenet_tfrecords.verify", "find_corrupt_files"),
    ("tinyimagenet_tfrecords.features", "decode_image"),
    ("augment", "step_seed"),
    ("augment", "register_recipe"),
    ("models", "build"),
    ("training.steps", "make_train_step"),
    ("training.optimizers", "make_optimizer"),
    ("training.evaluate", "evaluate_model"),
    ("training.evaluate", "predict_probabilities"),
    ("training.evaluate", "write_report"),
])
def test_contracts_give_each_public_signature_as_the_code_has_it(module, name):
    fn = getattr(importlib.import_module(module), name)
    assert _code_signature(fn) == _contract_signature(name)
