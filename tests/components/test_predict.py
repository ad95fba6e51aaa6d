"""`cxrgaze predict`: files and folders in, one JSON + one overlay PNG per image out.

A ci-preset network with random weights is registered once per module in an embedded sqlite
registry and made `champion`; inputs are DICOMs of the synthetic release and a PNG and a JPEG
made from one of them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from mlflow.pyfunc import PyFuncModel
from mlflow.tracking import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from components.model_package import load_registered_model
from components.overlay import image_box, overlay_size
from components.predict import PredictSummary, expand_inputs, output_names, run_predict
from components.register import register_model
from components.registry import CHAMPION, MODEL_NAME
from model_lib.data.dicom_io import read_dicom
from model_lib.data.errors import DataError
from model_lib.data.geometry import CanvasTransform
from model_lib.data.preprocess import preprocess_image
from model_lib.data.schema import CLASS_NAMES
from model_lib.presets import ExperimentConfig
from pipelines.cli import app

LINEAGE = {
    "data_rev": "v1",
    "data_md5": "d41d8cd98f00b204e9800998ecf8427e",
    "git_sha": "911c390",
    "pipeline_run_id": "predict-run",
    "preset": "ci",
}
runner = CliRunner()


def register_champion(
    folder: Path, migrated_db: Path, weights_file: Path, ci_config: ExperimentConfig
) -> str:
    """Register the ci network in a sqlite registry under ``folder``, alias it ``champion``,
    and return the tracking URI."""
    shutil.copyfile(migrated_db, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    result = register_model(
        weights_file,
        ci_config,
        {"auc_macro": 0.5},
        LINEAGE,
        tracking_uri=uri,
        artifact_location=str(folder / "artifacts"),
    )
    MlflowClient(uri, registry_uri=uri).set_registered_model_alias(
        MODEL_NAME, CHAMPION, result.version
    )
    return uri


def make_inputs(release: Path, folder: Path) -> Path:
    """``folder/inputs``: a/scan.dcm, b/scan.dcm (shared stem), chest.png and chest.jpg (the
    same picture, shared stem) and notes.txt (not an image)."""
    dicoms = sorted((release / "mimic-cxr").rglob("*.dcm"))
    root = folder / "inputs"
    for sub, dicom in (("a", dicoms[0]), ("b", dicoms[1])):
        (root / sub).mkdir(parents=True)
        shutil.copyfile(dicom, root / sub / "scan.dcm")
    pixels = np.round(read_dicom(dicoms[2]).pixels * 255).astype(np.uint8)
    Image.fromarray(pixels).save(root / "chest.png")
    Image.fromarray(pixels).save(root / "chest.jpg", quality=92)
    (root / "notes.txt").write_text("not an image\n")
    return root


@pytest.fixture(scope="module")
def tracking_uri(
    tmp_path_factory: pytest.TempPathFactory,
    migrated_db: Path,
    weights_file: Path,
    ci_config: ExperimentConfig,
) -> str:
    return register_champion(
        tmp_path_factory.mktemp("registry"), migrated_db, weights_file, ci_config
    )


@pytest.fixture(scope="module")
def inputs(tiny_release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_inputs(tiny_release, tmp_path_factory.mktemp("predict-inputs"))


@pytest.fixture(scope="module")
def pyfunc(tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> PyFuncModel:
    model, _ = load_registered_model(
        f"models:/{MODEL_NAME}/1",
        tracking_uri=tracking_uri,
        dst_path=tmp_path_factory.mktemp("pyfunc"),
    )
    return model


@pytest.fixture(scope="module")
def folder_run(inputs: Path, tracking_uri: str, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("predictions") / "out"
    return run_predict([inputs], out, tracking_uri=tracking_uri)


EXPECTED = {
    "a__scan": "a/scan.dcm",
    "b__scan": "b/scan.dcm",
    "inputs__chest": "chest.jpg",  # sorted by path: .jpg before .png
    "inputs__chest-2": "chest.png",
}


def test_a_folder_gives_one_json_and_overlay_per_image(
    folder_run: PredictSummary, inputs: Path
) -> None:
    summary = folder_run
    assert summary.failed == [] and summary.skipped == 1  # notes.txt
    written = {w.json_path.stem: w.source.relative_to(inputs).as_posix() for w in summary.written}
    assert written == EXPECTED
    expected_files = {f"{n}.json" for n in EXPECTED} | {f"{n}_overlay.png" for n in EXPECTED}
    assert {p.name for p in summary.out_dir.iterdir()} == expected_files  # no temporary left
    assert "4 predicted, 0 failed, 1 skipped" in summary.describe()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_json_matches_the_pyfunc_on_the_evaluation_preprocessing(
    name: str,
    folder_run: PredictSummary,
    inputs: Path,
    pyfunc: PyFuncModel,
    ci_config: ExperimentConfig,
) -> None:
    record = json.loads((folder_run.out_dir / f"{name}.json").read_text())
    source = inputs / EXPECTED[name]
    assert record["source"] == str(source)
    assert list(record["probabilities"]) == list(CLASS_NAMES)
    probs = np.array(list(record["probabilities"].values()))
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert record["predicted_class"] == CLASS_NAMES[int(np.argmax(probs))]
    assert record["probability"] == probs.max()
    assert record["model"] == {
        "name": MODEL_NAME,
        "version": "1",
        "uri": f"models:/{MODEL_NAME}@{CHAMPION}",
        "alias": CHAMPION,
        "weights_sha256": record["model"]["weights_sha256"],
    }
    assert len(record["model"]["weights_sha256"]) == 64
    # The geometry the evaluation store was made with, applied by the ingest function.
    geometry = ci_config.data.scaled_geometry()
    assert record["input"]["geometry"] == geometry.model_dump(mode="json")
    image, transform, _ = preprocess_image(source, geometry)
    assert record["input"]["transform"] == transform.to_dict()
    expected = pyfunc.predict(image[None, None])["probabilities"][0]
    np.testing.assert_allclose(probs, expected, atol=1e-6, rtol=0)
    assert record["overlay"] == f"{name}_overlay.png"


def test_overlays_are_pngs_of_the_image_area(folder_run: PredictSummary) -> None:
    for name in EXPECTED:
        record = json.loads((folder_run.out_dir / f"{name}.json").read_text())
        rows, cols = image_box(CanvasTransform(**record["input"]["transform"]))
        with Image.open(folder_run.out_dir / f"{name}_overlay.png") as png:
            assert png.format == "PNG"
            assert png.size == overlay_size((rows.stop - rows.start, cols.stop - cols.start))
            pixels = np.asarray(png.convert("RGB")).astype(int)
        # Colour, not only grey: the saliency map is drawn over the image.
        assert (np.abs(pixels[..., 0] - pixels[..., 2]) > 40).mean() > 0.05
    # The synthetic DICOMs are wider than the ci canvas: the crop keeps their landscape aspect.
    with Image.open(folder_run.out_dir / "a__scan_overlay.png") as png:
        width, height = png.size
    assert width > height


def test_cli_predicts_named_files(inputs: Path, tracking_uri: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    files = [str(inputs / "a" / "scan.dcm"), str(inputs / "chest.png")]
    result = runner.invoke(
        app, ["predict", *files, "--out", str(out), "--tracking-uri", tracking_uri]
    )
    assert result.exit_code == 0, result.output
    assert "2 predicted, 0 failed, 0 skipped" in result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "chest.json",
        "chest_overlay.png",
        "scan.json",
        "scan_overlay.png",
    ]


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning")
def test_a_bad_file_is_named_and_the_good_ones_are_still_written(
    inputs: Path, tracking_uri: str, tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copyfile(inputs / "chest.png", folder / "good.png")
    (folder / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    (folder / "cut.png").write_bytes((inputs / "chest.png").read_bytes()[:300])
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["predict", str(folder), "--out", str(out), "--tracking-uri", tracking_uri]
    )
    assert result.exit_code == 2, result.output
    assert f"error: {folder / 'broken.dcm'}: field 'PixelData': no pixel data" in result.stderr
    assert f"error: {folder / 'cut.png'}: cannot decode image" in result.stderr
    assert "1 predicted, 2 failed" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["good.json", "good_overlay.png"]


def test_a_failed_write_leaves_neither_file(
    inputs: Path, tracking_uri: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    (out / "chest.json").mkdir(parents=True)  # the JSON cannot replace a folder
    summary = run_predict([inputs / "chest.png"], out, tracking_uri=tracking_uri)
    assert summary.written == []
    [(path, reason)] = summary.failed
    assert path == inputs / "chest.png" and "chest.json" in reason
    assert sorted(p.name for p in out.iterdir()) == ["chest.json"]  # no overlay, no temporary


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.dcm"], "missing.dcm: no such file or folder"),
        (["notes.txt"], "unsupported file type '.txt'"),
        (["empty"], "no images (.dcm, .dicom, .jpg, .jpeg, .png) in"),
        (["chest.png", "--model", "models:/cxr-gaze"], "expected a registered model URI"),
        (["chest.png", "--model", "models:/cxr-gaze@staging"], "models:/cxr-gaze@staging at"),
    ],
)
def test_bad_arguments_fail_before_writing(
    args: list[str], message: str, inputs: Path, tracking_uri: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    (inputs.parent / "empty").mkdir(exist_ok=True)
    (inputs.parent / "empty" / "readme.md").write_text("no images here\n")
    shutil.copyfile(inputs / "notes.txt", inputs.parent / "notes.txt")
    shutil.copyfile(inputs / "chest.png", inputs.parent / "chest.png")
    monkeypatch.chdir(inputs.parent)
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["predict", *args, "--out", str(out), "--tracking-uri", tracking_uri]
    )
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not out.exists()


def test_expand_inputs_recurses_skips_and_counts_each_file_once(inputs: Path) -> None:
    files, skipped = expand_inputs([inputs, inputs / "a" / "scan.dcm", inputs / "b"])
    assert [p.relative_to(inputs).as_posix() for p in files] == [
        "a/scan.dcm",
        "b/scan.dcm",
        "chest.jpg",
        "chest.png",
    ]
    assert skipped == 1
    with pytest.raises(DataError, match=r"notes\.txt: unsupported file type"):
        expand_inputs([inputs / "notes.txt"])


@pytest.mark.parametrize(
    ("paths", "names"),
    [
        (["x/a.dcm", "x/b.png"], ["a", "b"]),
        (["x/a.dcm", "y/a.png"], ["x__a", "y__a"]),
        (["x/a.dcm", "x/a.png", "y/a.jpg"], ["x__a", "x__a-2", "y__a"]),
        (["x/x__a.png", "x/a.dcm", "y/a.dcm"], ["x__a", "x__a-2", "y__a"]),
    ],
)
def test_output_names_are_unique(paths: list[str], names: list[str]) -> None:
    assert output_names([Path(p) for p in paths]) == names
