from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from model_lib.config import ModelConfig
from model_lib.presets import PRESETS, ExperimentConfig, apply_overrides, get_preset
from model_lib.training.stages import PAPER_STAGES


def test_paper_preset_is_the_paper() -> None:
    paper = get_preset("paper")
    assert paper.model == ModelConfig()
    assert (paper.model.backbone, paper.model.input_hw) == ("densenet201", (320, 256))
    assert paper.data.geometry.target_hw == (320, 256)
    assert paper.stages == PAPER_STAGES
    assert [s.name for s in paper.enabled_stages] == ["s1a", "s1b", "s2", "s3"]


@pytest.mark.parametrize("name", ["demo", "ci"])
def test_small_presets_keep_the_papers_stage_structure(name: str) -> None:
    preset = get_preset(name)
    assert preset.model.backbone == "densenet121"
    assert preset.model.input_hw == preset.data.geometry.target_hw
    h, w = preset.model.input_hw
    assert h * 4 == w * 5, "the paper's 5:4 canvas, so that sampling stays isotropic"
    for small, paper in zip(preset.stages, PAPER_STAGES, strict=True):
        same = ("name", "trains", "loss", "head", "branch", "enabled")
        assert small.model_dump(include=set(same)) == paper.model_dump(include=set(same))
        assert small.max_epochs <= paper.max_epochs


def test_presets_round_trip_through_their_dump() -> None:
    for preset in PRESETS.values():
        assert ExperimentConfig.model_validate(preset.model_dump(mode="json")) == preset


def test_overrides() -> None:
    config = get_preset(
        "demo",
        [
            "stages.s2.max_epochs=3",
            "model.width=0.5",
            "stages.s3j.enabled=true",
            "stages.s1a.loss=supcon",
            "stages.s2.trains=[encoder, decoder]",
            "seed=7",
            "num_threads=null",
            "data.heatmap.source=fixations",
        ],
    )
    assert config.stage("s2").max_epochs == 3
    assert config.stage("s2").trains == ("encoder", "decoder")
    assert config.model.width == 0.5
    assert config.stage("s3j").enabled and config.enabled_stages[-1].name == "s3j"
    assert config.stage("s1a").loss == "supcon"
    assert (config.seed, config.num_threads, config.data.heatmap.source) == (7, None, "fixations")
    # The preset itself is untouched.
    assert get_preset("demo").stage("s2").max_epochs == PRESETS["demo"].stage("s2").max_epochs
    assert not PRESETS["demo"].stage("s3j").enabled


def test_both_sizes_move_together() -> None:
    with pytest.raises(ValueError, match=r"model\.input_hw \(96, 80\) differs from data"):
        get_preset("ci", ["model.input_hw=[96, 80]"])
    config = get_preset("ci", ["model.input_hw=[96, 80]", "data.geometry.target_hw=[96, 80]"])
    assert config.model.input_hw == (96, 80)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.widht=0.5", r"unknown key 'widht' in model; known keys: \['arch'"),
        ("optimiser.lr=1", r"unknown key 'optimiser' in the config"),
        ("stages.s9.lr=1", r"no stage 's9'; stages are \['s1a', 's1b', 's2', 's3', 's3j'\]"),
        ("stages.s2.epochs=3", r"unknown key 'epochs' in stages\.s2"),
        ("stages.s2.lr.value=1", r"stages\.s2\.lr is a value, not a section"),
        ("seed", r"override 'seed': expected dotted\.key=value"),
        ("=3", "expected dotted.key=value"),
        ("model..width=1", "expected dotted.key=value"),
        ("model.width=[1", "value is not YAML"),
        ("model.width=-1", r"model\.width\s+Input should be greater than 0"),
        ("stages.s2.loss=focal", r"stages\.2\.loss"),
        ("stages.s3.head=densenet", "loss ce_fusion trains the fusion head"),
    ],
)
def test_bad_overrides_are_refused(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_preset("ci", [override])


def test_unknown_preset() -> None:
    with pytest.raises(
        ValueError, match=r"unknown preset 'papr'; known: \['ci', 'demo', 'paper', 'paper-exact'\]"
    ):
        get_preset("papr")


def test_config_level_checks() -> None:
    with pytest.raises(ValidationError, match="stage names must be unique"):
        ExperimentConfig(stages=(PAPER_STAGES[0], PAPER_STAGES[0]))
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ExperimentConfig.model_validate({"epochs": 3})
    with pytest.raises(KeyError, match="no stage 'x'"):
        get_preset("ci").stage("x")
    with pytest.raises(ValidationError, match="frozen"):
        get_preset("ci").seed = 3  # type: ignore[misc]
    assert apply_overrides(get_preset("ci"), []) == get_preset("ci")


def _flat(tree: object, prefix: str = "") -> dict[str, object]:
    """Dotted keys of a config dump; stages are addressed by name, as overrides address them."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list) and tree and all(isinstance(s, dict) and "name" in s for s in tree):
        return {k: v for s in tree for k, v in _flat(s, f"{prefix}{s['name']}.").items()}
    return {prefix[:-1]: tree}


def _readme_switches() -> dict[str, str]:
    """The deviations table of the README: {switch key (``<name>`` kept): authors' value}."""
    text = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = text.split("## Where cxr-gaze differs from the authors' code", 1)[1]
    section = section.split("\n## ", 1)[0]
    switches: dict[str, str] = {}
    for row in section.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] in ("concept", "---"):
            continue
        for key, value in re.findall(r"`([\w.<>]+)` \(`([^`]+)`", cells[3]):
            switches[key] = value
    return switches


def test_readme_table_names_every_way_paper_exact_differs_from_paper() -> None:
    """Each field where the authors' preset differs is a row of the README table, and the table
    gives the authors' value; each switch in the table is a real config key."""
    paper, exact = (_flat(get_preset(n).model_dump(mode="json")) for n in ("paper", "paper-exact"))
    differing = {key: exact[key] for key in paper if paper[key] != exact[key]}
    switches = _readme_switches()
    assert len(switches) >= 10
    for key, value in differing.items():
        generic = re.sub(r"^stages\.[^.]+\.", "stages.<name>.", key)
        assert key in switches or generic in switches, f"README table lacks {key}"
        if key in switches:
            assert switches[key] == str(value).lower(), key
    for key in switches:
        concrete = key.replace("<name>", "s3j")
        assert concrete in paper, f"README names {key}, which is no config key"
