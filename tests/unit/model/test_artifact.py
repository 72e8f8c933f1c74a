"""The model folder (weaktok/model/artifact.py) and its loader: a round trip of an untrained tiny model, and the
errors a user can cause (no folder, a folder that is not an export, an --out that would overwrite their files,
an older run whose statistics need shards that are not there)."""

from __future__ import annotations

import pytest
import torch

from weaktok.audio import SpecFrontEnd
from weaktok.cli import main
from weaktok.config import load_config
from weaktok.model.artifact import (
    ArtifactError,
    check_writable,
    is_model_folder,
    read_weights,
    write_folder,
)
from weaktok.model.unet import build_model
from weaktok.model.weights import ModelFileError, load_model, save_model


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config("tiny", ["data.shards=/nonexistent/shards"])
    torch.manual_seed(0)
    model = build_model(cfg.model, SpecFrontEnd.for_config(cfg).n_freqs)
    return cfg, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_written_folder_loads_the_same_fp32_weights(tiny, tmp_path):
    cfg, state = tiny
    folder = write_folder(tmp_path / "m", state, cfg, {}, "# card\n")
    assert is_model_folder(folder) and (folder / "README.md").read_text() == "# card\n"
    got, raw = read_weights(folder)
    assert raw["name"] == cfg.name and all(torch.equal(got[k], v) for k, v in state.items())
    loaded = load_model(folder, "cpu")
    assert loaded.path == folder / "model.safetensors"
    assert all(torch.equal(v, state[k]) for k, v in loaded.model.state_dict().items())
    with pytest.raises(
        ValueError, match="fp32"
    ):  # bf16-rounded copies are never written as the weights
        write_folder(tmp_path / "bf16", {k: v.bfloat16() for k, v in state.items()}, cfg, {}, "")
    assert not (tmp_path / "bf16").exists()


def test_a_missing_or_foreign_folder_is_a_clear_error(tmp_path):
    from weaktok import WeakTok

    with pytest.raises(ModelFileError, match="does not exist"):
        WeakTok.from_pretrained(tmp_path / "nope", device="cpu")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelFileError, match="not a weaktok model folder"):
        WeakTok.from_pretrained(tmp_path / "notes", device="cpu")
    with pytest.raises(ArtifactError, match="not a weaktok model folder"):
        read_weights(tmp_path / "notes")


def test_export_never_overwrites_a_folder_that_is_not_an_export(tiny, tmp_path, capsys):
    cfg, state = tiny
    run = tmp_path / "run"
    save_model(run / "final" / "model.pt", state, cfg)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert main(["export", str(run), "--out", str(mine)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("weaktok export:") and str(mine) in err and "\n" not in err
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    assert (mine / "thesis.tex").read_text() == "years of work"
    # onto itself: model.pt stays
    assert main(["export", str(run), "--out", str(run / "final")]) == 2
    assert "the folder being exported" in capsys.readouterr().err
    assert [p.name for p in (run / "final").iterdir()] == ["model.pt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="is a file"):
        check_writable(tmp_path / "file")


def test_an_old_run_without_its_shards_says_how_to_export(tiny, tmp_path, capsys):
    from weaktok import WeakTok

    cfg, state = tiny
    run = tmp_path / "old"
    save_model(run / "final" / "model.pt", state, cfg)  # an older run: final/model.pt only
    assert load_model(run, "cpu").path == run / "final" / "model.pt"
    with pytest.raises(
        ModelFileError, match=r"no prior\.safetensors .*weaktok export RUN --out DIR"
    ):
        WeakTok.from_pretrained(run, device="cpu")
    # its shards are gone too
    assert main(["export", str(run), "--out", str(tmp_path / "out")]) == 2
    assert "weaktok export RUN --out DIR" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
