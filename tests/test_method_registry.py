"""The saliency method registry and the schema's ``methods`` blocks agree, and adding a method
takes one class plus one schema block, nothing else."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_config, with_defaults
from snakemake.utils import validate
from test_captum_methods import write_job_inputs

from saliency_fingerprints.configuration import (
    check_experiments,
    check_sanity_checks,
    check_schema,
)
from saliency_fingerprints.diagnostics import store_diagnostics
from saliency_fingerprints.errors import ConfigError
from saliency_fingerprints.models import build_model
from saliency_fingerprints.saliency import (
    METHODS,
    SHORT_NAMES,
    SaliencyMethod,
    build_method,
    compute_saliency_maps,
    method_defaults,
    method_parameters,
    open_maps,
    register,
    unregister,
)

SCHEMA_PATH = Path(__file__).parents[1] / "config/schema/config.schema.yaml"
CPU = torch.device("cpu")


def schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def method_blocks(spec: dict) -> dict[str, dict]:
    return spec["properties"]["methods"]["properties"]


def filled(cfg: dict, schema_path: Path) -> dict:
    """``cfg`` checked and filled in with the schema's defaults, as rules/common.smk does."""
    cfg = copy.deepcopy(cfg)
    check_schema(cfg, schema_path)
    validate(cfg, str(schema_path))
    check_experiments(cfg)
    check_sanity_checks(cfg)
    return cfg


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_method_has_a_documented_schema_block(name):
    block = method_blocks(schema()).get(name)
    assert block is not None, f"methods.{name} is missing from the schema"
    assert block["type"] == "object" and block["additionalProperties"] is False
    assert block.get("default") == {}, "a config need not list the method"
    keys = block.get("properties", {})
    assert set(keys) == set(method_parameters(METHODS[name])), "config keys = constructor keywords"
    for key, spec in keys.items():
        assert "default" in spec, f"methods.{name}.{key} has no default in the schema"
        assert spec.get("description"), f"methods.{name}.{key} is undocumented"
    assert block.get("description") or keys, f"methods.{name} is undocumented"
    # the defaults a class declares (for direct callers) are the schema's
    for key, value in method_defaults(name).items():
        default = keys[key]["default"]
        assert value == default and isinstance(value, bool) == isinstance(default, bool), key


def test_every_schema_block_is_a_registered_method():
    assert set(method_blocks(schema())) == set(METHODS)
    assert set(SHORT_NAMES) == set(METHODS)
    assert len(set(SHORT_NAMES.values())) == len(SHORT_NAMES), "short names are unique"
    assert {SHORT_NAMES[m] for m in ("grad", "smoothgrad", "integrated_gradients")} == {
        "Grad",
        "SG",
        "IG",
    }
    assert SHORT_NAMES["meaningful_perturbation"] == "MP"


def test_schema_defaults_build_every_method():
    """A config without a methods section gets every method's defaults from the schema, and
    each builds and computes maps with them."""
    cfg = tiny_config()
    del cfg["methods"]
    cfg = filled(cfg, SCHEMA_PATH)
    assert set(cfg["methods"]) == set(METHODS)
    torch.manual_seed(0)
    model = build_model("cnn2", 1, 8, 10).eval()
    x = torch.rand(2, 1, 8, 8)
    for name, params in cfg["methods"].items():
        assert params == method_defaults(name)
        if name == "meaningful_perturbation":
            params = {**params, "iterations": 2}
        if name == "input_agnostic":  # the paper's defaults cost ~3e5 rows a map: fewer here
            params = {**params, "iterations": 2, "refine_iterations": 2, "batch_size": 4}
        engine = build_method(name, model, params, 64)
        if engine.needs_sample_set:
            engine.set_sample_set(torch.rand(6, 1, 8, 8))
        maps = engine.attribute(x, torch.tensor([0, 1]), [0, 1])
        assert maps.shape == x.shape and torch.isfinite(maps).all()


def test_unknown_methods_are_named_with_the_known_ones():
    cfg = tiny_config()
    cfg["experiments"]["two_cnn2"]["methods"].append("lime")
    with pytest.raises(ConfigError) as err:
        filled(cfg, SCHEMA_PATH)
    known = ", ".join(sorted(METHODS))
    assert str(err.value) == (
        f"experiments.two_cnn2.methods[3]: got 'lime'; expected one of: {known}"
    )
    cfg = tiny_config()
    cfg["sanity_checks"]["methods"] = ["gradcam", "occlusion"]
    with pytest.raises(ConfigError, match=r"^sanity_checks.methods\[1\]: got 'occlusion'"):
        filled(cfg, SCHEMA_PATH)


def test_schema_bounds_of_new_methods_name_the_key():
    cfg = tiny_config()
    cfg["methods"]["gradcam"] = {"interpolate_mode": "linear"}
    with pytest.raises(ConfigError, match=r"^methods.gradcam.interpolate_mode: got 'linear'"):
        check_schema(cfg, SCHEMA_PATH)
    cfg["methods"]["gradcam"] = {"layer": "conv1"}
    with pytest.raises(ConfigError, match=r"^methods.gradcam.layer: unknown key"):
        check_schema(cfg, SCHEMA_PATH)


# -- a new method: one class, one schema block ----------------------------------------------------


class ScaledGradient(SaliencyMethod):
    """A toy method: the input gradient times ``scale``."""

    def __init__(self, model, pass_size: int = 64, scale: float = 2.0) -> None:
        super().__init__(model, pass_size)
        self.scale = scale

    def attribute(self, images, targets=None, sample_ids=None):
        if targets is None:
            targets = self.predict(images)
        return self._row_gradients(images, targets) * self.scale


NEW_BLOCK = {
    "type": "object",
    "additionalProperties": False,
    "default": {},
    "description": "The input gradient times scale (a test's method).",
    "properties": {
        "scale": {
            "type": "number",
            "exclusiveMinimum": 0,
            "default": 2.0,
            "description": "Factor on the gradient.",
        }
    },
}


@pytest.fixture
def scaled_gradient():
    """The toy method registered as ``scaled_grad`` (and removed again afterwards)."""
    register("scaled_grad", short="SGx")(ScaledGradient)
    yield ScaledGradient
    unregister("scaled_grad")
    assert "scaled_grad" not in METHODS and "scaled_grad" not in SHORT_NAMES


def test_a_new_method_is_one_class_and_one_schema_block(scaled_gradient, tmp_path):
    spec = schema()
    method_blocks(spec)["scaled_grad"] = NEW_BLOCK
    extended = tmp_path / "config.schema.yaml"
    extended.write_text(yaml.safe_dump(spec, sort_keys=False))

    cfg = tiny_config()
    cfg["experiments"]["two_cnn2"]["methods"].append("scaled_grad")
    cfg["sanity_checks"]["methods"].append("scaled_grad")
    # without its schema block the method does not exist for a config ...
    with pytest.raises(ConfigError, match=r"methods\[3\]: got 'scaled_grad'; expected one of"):
        filled(cfg, SCHEMA_PATH)
    # ... with it the config validates and gets the block's defaults, without listing them
    ok = filled(cfg, extended)
    params = ok["methods"]["scaled_grad"]
    assert params == {"scale": 2.0} == method_defaults("scaled_grad")
    cfg["methods"]["scaled_grad"] = {"scale": -1}
    with pytest.raises(ConfigError, match=r"^methods.scaled_grad.scale: got -1; expected"):
        check_schema(cfg, extended)

    # the library builds it by name, and the store job computes its maps
    torch.manual_seed(0)
    model = build_model("cnn2", 3, 8, 10).eval()
    engine = build_method("scaled_grad", model, params, 16)
    assert engine.name == "scaled_grad" and engine.params() == {"scale": 2.0}
    dataset, weights, _ = write_job_inputs(tmp_path)
    saliency = with_defaults("saliency", images="all", target="true", pass_size=16, chunk_size=8)
    for method, method_params in (("scaled_grad", params), ("grad", {})):
        out = tmp_path / f"{method}.zarr"
        compute_saliency_maps(
            dataset_path=dataset,
            weights_path=weights,
            out=out,
            method=method,
            method_params=method_params,
            cfg=saliency,
            primary="p",
            device=CPU,
            threads=1,
        )
    scaled, plain = open_maps(tmp_path / "scaled_grad.zarr"), open_maps(tmp_path / "grad.zarr")
    assert str(scaled["method"].values) == "scaled_grad"
    assert json.loads(scaled.attrs["method_params"]) == {"scale": 2.0}
    assert np.array_equal(scaled["maps"].values, 2.0 * plain["maps"].values)
    assert store_diagnostics(tmp_path / "scaled_grad.zarr")["n_maps"] == len(plain["sample"])
