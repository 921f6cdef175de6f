"""params.yaml validation: every problem named by its key path, before any work."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from helpers import TINY_PARAMS, run_stage

from stages.errors import ParamsError
from stages.model import build_decoder
from stages.params import load_params, parse_params
from stages.paramsfile import check_names, read_yaml
from stages.report.zadds import twin_of

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
    for path in [ROOT / "params.yaml", *sorted((ROOT / "profiles").glob("**/params.yaml")),
                 *sorted((ROOT / "profiles").glob("*.yaml"))]:
        ladder = load_params(path).decoders
        built = {n: build_decoder(r.family, r.decoder, 4) for n, r in ladder.items()}
        uses_z = {n: d.uses_z for n, d in built.items()}
        spatial = [n for n, r in ladder.items() if uses_z[n] and built[n].receptive_field > 0
                   and r.decoder.z_pathway == "spatial"]
        # every autoregressive trend rung has its decoder-alone twin, and the axis reaches a
        # decoder that sees the whole raster past of every pixel (the early-stopped study stops
        # below the gated rungs by design: test_pipeline holds it to that cut)
        assert all(twin_of(n, ladder, uses_z) for n in spatial), path
        if path != ROOT / "profiles" / "long" / "params.yaml":
            assert max(built[n].raster_share for n in spatial) == 1.0, path
        # and the axis starts at a decoder that sees no more than a local neighbourhood
        assert min(built[n].receptive_field for n in ladder if uses_z[n]) <= 4, path


@pytest.mark.parametrize(
    "path, value, expected",
    [
        ("binarize.method", "foo", "binarize.method: got 'foo'; allowed: one of 'static', 'threshold', 'dynamic'"),
        ("binarize.valid_size", 70000, "binarize.valid_size: got 70000"),
        ("binarize.colour", 1, "binarize.colour: unknown key; allowed keys: method, seed"),
        ("train.epochs", -1, "train.epochs: got -1; allowed: an integer in [1, 100000]"),
        ("train.epochs", 2.5, "train.epochs: got 2.5"),
        ("train.epochs", True, "train.epochs: got True"),
        ("train.lr", 0, "train.lr: got 0; allowed: a number in (0, 1]"),
        ("train.lr", "fast", "train.lr: got 'fast'"),
        ("train.patience", 0, "train.patience: got 0; allowed: an integer in [1, 100000]"),
        ("train.patience", 2, "train.patience: got 2; with epochs 2 (the cap) it could never stop early"),
        ("train.min_delta_nats", -0.1, "train.min_delta_nats: got -0.1"),
        ("evaluate.k", 0, "evaluate.k: got 0; allowed: an integer in [1, 10000000]"),
        ("evaluate.chunk_size", 0, "evaluate.chunk_size: got 0"),
        ("encoder.latent_dim", 0, "encoder.latent_dim: got 0"),
        ("encoder.hidden", [], "encoder.hidden: got []; allowed: a non-empty list"),
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
        ("trian", {"epochs": 1}, "trian: unknown section (did you mean 'train'?)"),
        ("train.epoch", 1, "train.epoch: unknown key (did you mean 'epochs'?)"),
        ("decoders.pixelcnn_2.n_layer", 2, "decoders.pixelcnn_2.n_layer: unknown option for family "
                                           "'pixelcnn' (did you mean 'n_layers'?)"),
        ("decoders.x\n", {"family": "mlp"}, "a decoder name must start with a letter"),
        ("decoders.a b", {"family": "mlp"}, "a decoder name must start with a letter"),
        ("seeds", 0, "seeds: got 0; allowed: a non-empty list"),
        ("seeds", [0, "1;touch x"], "seeds: got [0, '1;touch x']"),
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


# --- read as DVC reads it (YAML 1.2) ----------------------------------------------------------

YAML_FORMS = """\
lr: 1e-3
lr_upper: 3E-4
lr_signed: +1.0e-3
big: 1e+5
word: yes
off: off
octal: 0o17
hex: 0x1F
underscore: 1_000
nothing: ~
date: 2026-12-01
"""


def test_params_are_read_as_dvc_reads_them(tmp_path):
    """The same values DVC sees for `params:` deps, `dvc exp show` and dvc.yaml's ${...}."""
    from dvc.utils.serialize import load_yaml

    path = tmp_path / "params.yaml"
    path.write_text(YAML_FORMS)
    assert read_yaml(path) == load_yaml(path)
    assert read_yaml(path)["lr"] == 0.001 and read_yaml(path)["word"] == "yes"


def test_a_learning_rate_in_exponent_notation_is_a_number(tmp_path):
    text = yaml.safe_dump(TINY_PARAMS, sort_keys=False).replace("lr: 0.003", "lr: 3e-3")
    assert "lr: 3e-3" in text
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").train.lr == 0.003


def test_a_key_given_twice_is_refused_with_its_line_as_dvc_refuses_it(tmp_path):
    from dvc.utils.serialize import YAMLFileCorruptedError, load_yaml

    text = yaml.safe_dump(TINY_PARAMS, sort_keys=False)
    text = text.replace("  epochs: 2\n", "  epochs: 2\n  epochs: 9\n")
    path = tmp_path / "params.yaml"
    path.write_text(text)
    line = text.splitlines().index("  epochs: 9") + 1
    expected = f'not valid YAML at line {line}, column 3: found duplicate key "epochs"'
    with pytest.raises(ParamsError, match=expected):
        load_params(path)
    with pytest.raises(ParamsError, match="duplicate key"):
        check_names(path)
    with pytest.raises(YAMLFileCorruptedError):
        load_yaml(path)


def test_the_checked_in_params_files_read_the_same_as_before():
    """The change of YAML reader changes no value of the project's own files (no stage's
    inputs change)."""
    for path in [ROOT / "params.yaml", *sorted((ROOT / "profiles").glob("**/*.yaml"))]:
        if path.name != "dvc.yaml":
            assert read_yaml(path) == yaml.safe_load(path.read_text()), path


@pytest.mark.parametrize("text, expected", [
    ("seeds: 0\n", "seeds: got 0"),
    ("seeds: [0, '1;touch x']\n", "seeds: got [0, '1;touch x']"),
    ("decoders: 3\n", "decoders: must be a non-empty mapping"),
    ("decoders: {}\n", "decoders: must be a non-empty mapping"),
    ("decoders: {'x;touch y': {family: mlp}}\n", "decoders.x;touch y: a decoder name must start with"),
    ("decoders: {1: {family: mlp}}\n", "1: a decoder name must start with"),
])
def test_what_dvc_cannot_interpolate_is_refused_by_name(tmp_path, text, expected):
    """What the stage guard (`vae-study check-names`) refuses, and the full validation too."""
    path = tmp_path / "params.yaml"
    path.write_text(text + "seeds: [0]\n" * ("seeds" not in text) + "decoders: {m: {family: mlp}}\n" * (
        "decoders" not in text))
    with pytest.raises(ParamsError, match=re.escape(expected)):
        check_names(path)
    with pytest.raises(ParamsError, match=re.escape(expected)):
        load_params(path)


def test_a_rung_too_large_for_memory_ends_with_what_to_lower_not_a_traceback(tmp_path):
    """The address space is capped at what torch needs plus 1 GiB; the rung's weights alone
    are 2.4 GB, so building it fails at once (no training, no heavy compute)."""
    import resource
    import subprocess
    import sys

    from helpers import env_with_venv

    probe = ("import stages.model, stages.params, stages.report, re; "  # what validate imports
             "print(re.search(r'VmSize:\\s+(\\d+)', open('/proc/self/status').read())[1])")
    base_kib = int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                  env=env_with_venv(), check=True).stdout)
    cap = (base_kib << 10) + (1 << 30)
    huge = {**TINY_PARAMS, "decoders": {"huge": {"family": "pixelcnn", "channels": 1024, "n_layers": 64}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(huge))
    command = [sys.executable, "-m", "stages", "validate", "--params", str(tmp_path / "params.yaml")]
    proc = subprocess.run(command,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)),
                          capture_output=True, text=True, env=env_with_venv(), timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "error: out of memory in `vae-study validate`" in proc.stderr
    assert "lower the rung's channels or n_layers" in proc.stderr


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


GRID_DECODERS = {"linear": {"family": "linear"},
                 "pixelcnn_2": {"family": "pixelcnn", "n_layers": 2, "channels": 4},
                 "pixelcnn_2_alone": {"family": "pixelcnn", "n_layers": 2, "channels": 4, "conditional": False}}
OBJECTIVES = {"elbo": {}, "beta": {"beta": 0.8}, "aggressive": {"aggressive": True}}


def test_an_objectives_section_makes_every_rung_with_z_a_row_of_the_grid_and_a_twin_one_run():
    params = parse_params({**copy.deepcopy(TINY_PARAMS), "decoders": GRID_DECODERS, "objectives": OBJECTIVES})
    assert list(params.decoders) == ["linear__elbo", "linear__beta", "linear__aggressive", "pixelcnn_2__elbo",
                                     "pixelcnn_2__beta", "pixelcnn_2__aggressive", "pixelcnn_2_alone"]
    assert params.rung("pixelcnn_2__beta").objective.beta == 0.8
    assert params.rung("pixelcnn_2__aggressive").decoder == params.rung("pixelcnn_2__elbo").decoder
    assert params.cells["pixelcnn_2_alone"].objective == "elbo" and params.rung("pixelcnn_2_alone").objective.is_elbo
    assert (params.cells["linear__beta"].rung, params.cells["linear__beta"].objective) == ("linear", "beta")
    uses_z = {r: getattr(rung.decoder, "conditional", True) for r, rung in params.decoders.items()}
    assert twin_of("pixelcnn_2__aggressive", params.decoders, uses_z) == "pixelcnn_2_alone"
    assert parse_params(TINY_PARAMS).cells == {}  # no objectives section: the ladder as it is


@pytest.mark.parametrize("objectives, decoders, expected", [
    ({"beta": {"beta": 0.8}, "elbo": {}}, GRID_DECODERS, "objectives.beta: the first objective is the reference"),
    ({"elbo": {}, "b": {"beta": 1.5}}, GRID_DECODERS, "objectives.b.beta: got 1.5; allowed: a number in (0, 1]"),
    ({"elbo": {}, "x": {"agressive": True}}, GRID_DECODERS, "objectives.x.agressive: unknown key"),
    ({"elbo": {}, "a__b": {}}, GRID_DECODERS, "objectives.a__b: an objective name must start with a letter"),
    ({"elbo": {}, "x y": {}}, GRID_DECODERS, "objectives.x y: an objective name must start with a letter"),
    ([], GRID_DECODERS, "objectives: must be a non-empty mapping of objective name -> options"),
    ({"elbo": {}}, {**GRID_DECODERS, "warm": {"family": "linear", "kl_warmup_steps": 10}},
     "decoders.warm: with an `objectives` section the objective options belong there, not in a rung: "
     "remove kl_warmup_steps"),
    ({"elbo": {}}, {"a": {"family": "linear"}, "a__elbo": {"family": "linear", "conditional": False}},
     None),  # linear has no `conditional`: refused as an option below
])
def test_a_bad_objectives_section_is_refused_naming_the_key(objectives, decoders, expected):
    raw = {**copy.deepcopy(TINY_PARAMS), "decoders": decoders, "objectives": objectives}
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    assert expected is None or expected in str(err.value), err.value


def test_two_runs_of_one_name_are_refused():
    decoders = {"a": {"family": "pixelcnn", "n_layers": 1},
                "a__elbo": {"family": "pixelcnn", "n_layers": 1, "conditional": False}}
    with pytest.raises(ParamsError, match="decoders.a__elbo: the run name 'a__elbo' is taken by another rung"):
        parse_params({**copy.deepcopy(TINY_PARAMS), "decoders": decoders, "objectives": {"elbo": {}}})
