"""params.yaml validation: every problem named by its key path, before any work."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from helpers import TINY_PARAMS, run_stage

from stages.errors import ParamsError
from stages.params import load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def with_change(path: str, value) -> dict:
    """TINY_PARAMS with one key (dotted path) set; value DELETE removes it."""
    raw = copy.deepcopy(TINY_PARAMS)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return raw


DELETE = object()


def test_the_checked_in_params_files_are_valid():
    default = load_params(ROOT / "params.yaml")
    assert len(default.seeds) >= 3
    assert default.decoders["pixelcnn_uncond"].decoder.conditional is False
    spatial = [r for r in default.decoders.values() if r.family == "pixelcnn"
               and r.decoder.conditional and r.decoder.z_pathway == "spatial"]
    assert sum(r.decoder.n_layers == 1 for r in spatial) >= 3  # receptive-field-limited rungs
    for profile in sorted((ROOT / "profiles").glob("*.yaml")):
        load_params(profile)


@pytest.mark.parametrize(
    "path, value, expected",
    [
        ("binarize.method", "foo", "binarize.method: got 'foo'; allowed: one of 'static', 'threshold', 'dynamic'"),
        ("binarize.valid_size", 70000, "binarize.valid_size: got 70000"),
        ("binarize.colour", 1, "binarize.colour: unknown key; allowed keys: method, seed"),
        ("train.epochs", -1, "train.epochs: got -1; allowed: an integer in [1, 100000]"),
        ("train.epochs", 2.5, "train.epochs: got 2.5"),
        ("train.epochs", True, "train.epochs: got True"),
        ("train.lr", 0, "train.lr: got 0; must be in (0, 1]"),
        ("train.lr", "fast", "train.lr: got 'fast'"),
        ("train.patience", 0, "train.patience: got 0; allowed: an integer in [1, 100000]"),
        ("train.patience", 2, "train.patience: got 2; with epochs 2 (the cap) it could never stop early"),
        ("train.min_delta_nats", -0.1, "train.min_delta_nats: got -0.1"),
        ("evaluate.k", 0, "evaluate.k: got 0; allowed: an integer in [1, 10000000]"),
        ("evaluate.chunk_size", 0, "evaluate.chunk_size: got 0"),
        ("encoder.latent_dim", 0, "encoder.latent_dim: got 0"),
        ("encoder.hidden", [], "encoder.hidden: must be a non-empty list"),
        ("encoder.hidden", [32, 0], "encoder.hidden[1]: got 0"),
        ("seeds", [0, 0], "seeds: got [0, 0]"),
        ("decoders.pixelcnn_2.n_layers", 0, "decoders.pixelcnn_2.n_layers: got 0; allowed: an integer in [1, 64]"),
        ("decoders.pixelcnn_2.kernel_size", 4, "decoders.pixelcnn_2.kernel_size: got 4; kernel_size must be odd"),
        ("decoders.pixelcnn_2.depth", 3, "decoders.pixelcnn_2.depth: unknown option for family 'pixelcnn'; allowed: family, n_layers"),
        ("decoders.linear.family", "transformer", "decoders.linear.family: got 'transformer'; allowed families: linear, mlp, conv, pixelcnn"),
        ("decoders.linear.free_bits", -0.5, "decoders.linear.free_bits: got -0.5"),
        ("decoders.linear", "mlp", "decoders.linear: must be a mapping"),
        ("decoders.bad-name", {"family": "mlp"}, "decoders.bad-name: a decoder name must start with a letter"),
        ("decoders", {}, "decoders: must be a non-empty mapping"),
        ("extra_section", {}, "extra_section: unknown section"),
    ],
)
def test_bad_params_are_refused_naming_the_key_and_what_is_allowed(path, value, expected):
    with pytest.raises(ParamsError) as err:
        parse_params(with_change(path, value))
    assert expected in str(err.value)


def test_every_problem_is_reported_at_once():
    raw = with_change("train.epochs", 0)
    raw["evaluate"] = {**raw["evaluate"], "k": 0}
    raw["decoders"] = {**raw["decoders"], "x": {"family": "nope"}}
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    text = str(err.value)
    assert "train.epochs" in text and "evaluate.k" in text and "decoders.x.family" in text


def test_train_subset_and_valid_size_cannot_exceed_mnist():
    raw = with_change("binarize.valid_size", 20000)
    raw["binarize"]["train_subset"] = 45000
    with pytest.raises(ParamsError, match="binarize.train_subset: got 45000; with valid_size 20000"):
        parse_params(raw)


def test_family_options_have_defaults_but_shared_sections_are_defined_only_in_the_file():
    raw = with_change("decoders", {"p": {"family": "pixelcnn"}})
    params = parse_params(raw)
    assert params.rung("p").plain()["n_layers"] == 4
    for path in ("train.epochs", "evaluate.n_test", "evaluate.chunk_size", "train.valid_subset",
                 "report.collapse_threshold_nats", "seeds"):
        with pytest.raises(ParamsError, match=f"{path.replace('.', '[.]')}: .*required|{path}: got None"):
            parse_params(with_change(path, DELETE))
    with pytest.raises(ParamsError, match="'q' is not in params.yaml"):
        params.rung("q")


@pytest.mark.parametrize("text, expected", [
    ("decoders: [unclosed", "not valid YAML"),
    ("- just\n- a list\n", "must be a mapping of sections"),
    ("", "must be a mapping of sections"),
])
def test_malformed_files_are_refused(tmp_path, text, expected):
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match=expected):
        load_params(tmp_path / "params.yaml")


def test_cli_refuses_bad_params_with_one_message_and_no_traceback(tmp_path):
    bad = with_change("decoders.pixelcnn_2.n_layers", 0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    proc = run_stage(tmp_path, "train", "pixelcnn_2")
    assert proc.returncode == 1
    assert "decoders.pixelcnn_2.n_layers: got 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()  # refused before any output folder was made


# --- fuzzing: malformed params files give clean errors, never a traceback -----------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from stages.params import StudyParams  # noqa: E402

junk = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def key_paths(node, prefix=()):
    """Every path into a nested dict of TINY_PARAMS."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield prefix + (k,)
            yield from key_paths(v, prefix + (k,))


PATHS = list(key_paths(TINY_PARAMS))


@st.composite
def malformed_params(draw):
    raw = copy.deepcopy(TINY_PARAMS)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(PATHS))
        node = raw
        for key in path[:-1]:
            if not isinstance(node, dict) or key not in node:
                break
            node = node[key]
        else:
            if not isinstance(node, dict):
                continue
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                node[path[-1]] = draw(junk)
            elif action == "delete":
                node.pop(path[-1], None)
            else:
                node[draw(st.text(min_size=1, max_size=8))] = draw(junk)
    return raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(malformed_params())
def test_malformed_params_give_only_clean_errors(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("fuzz") / "params.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    try:
        params = load_params(path)
    except ParamsError as e:
        assert str(e).startswith(f"{path} is invalid:") or str(e).startswith(f"{path}:")
    else:
        assert isinstance(params, StudyParams)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_arbitrary_bytes_give_only_clean_errors(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("fuzz") / "params.yaml"
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    try:
        load_params(path)
    except ParamsError:
        pass
