"""``sgmg ingest`` checks its source before Ray starts: a missing, empty or index-less source is refused at once."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from tiny_ytvos import write_tiny_ytvos

from pipelines import cluster, ingest
from sgmg.cli import main


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the command tries to start or join Ray."""

    @contextlib.contextmanager
    def refuse(**kwargs):  # noqa: ANN003, ANN202
        raise AssertionError("Ray was started before the source was checked")
        yield

    monkeypatch.setattr(cluster, "ray_session", refuse)


@pytest.mark.parametrize(
    ("layout", "fmt", "message"),
    [
        ("missing", "ref-youtube-vos", "does not exist"),
        ("empty", "ref-youtube-vos", "is empty"),
        ("ytvos", "ref-youtube-vos", "no expressions file for split 'valid'"),
        ("ytvos", "mevis", "valid/meta_expressions.json"),
        ("ytvos", "refcoco", "refcoco"),
    ],
)
def test_a_bad_source_is_refused_before_ray_starts(
    layout: str, fmt: str, message: str, tmp_path: Path, no_ray: None, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "src"
    if layout == "empty":
        source.mkdir()
    elif layout == "ytvos":
        write_tiny_ytvos(source, n_videos=1, n_frames=2, size=(16, 16))  # split train only
    split = "refcoco/train" if fmt == "refcoco" else "valid"
    argv = ["ingest", "--source", str(source), "--dest", str(tmp_path / "dest"), "--format", fmt, "--split", split]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sgmg ingest: --source ") and message in err, err
    assert not (tmp_path / "dest").exists()


def test_a_good_source_passes_the_check(tmp_path: Path) -> None:
    write_tiny_ytvos(tmp_path / "src", n_videos=1, n_frames=2, size=(16, 16))
    ingest.check_source(ingest.IngestConfig(source=str(tmp_path / "src"), dest=str(tmp_path / "d")))
