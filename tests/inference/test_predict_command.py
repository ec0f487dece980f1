"""``sgmg predict`` argument validation: refused before any model is loaded or output folder created."""

from __future__ import annotations

from pathlib import Path

import pytest

from sgmg.cli import main


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_blank_text_is_refused_before_loading_or_writing(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    out = tmp_path / "out"
    # the checkpoint does not exist: the text must be refused before the model is loaded
    rc = main(["predict", str(frames), text, "--checkpoint", str(tmp_path / "no-ckpt"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "the referring expression is empty" in err and "no-ckpt" not in err
    assert not out.exists()
