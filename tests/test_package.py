"""Package-level contracts: import boundaries, the public API and the command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("ray", "mlflow", "boto3", "botocore")


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return proc.stdout.strip()


@pytest.mark.parametrize(
    "statement",
    [
        "import sgmg",
        "import sgmg.zoo, sgmg.model, sgmg.loss, sgmg.data, sgmg.eval, sgmg.train, sgmg.inference, sgmg.checkpoint",
    ],
)
def test_sgmg_never_imports_distributed_stack(statement: str) -> None:
    code = f"{statement}\nimport sys\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    assert _run(code) == ""


def test_every_sgmg_module_stays_free_of_distributed_stack() -> None:
    code = (
        "import importlib, pkgutil, sys, sgmg\n"
        "for m in pkgutil.walk_packages(sgmg.__path__, 'sgmg.'):\n"
        "    importlib.import_module(m.name)\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    assert _run(code) == ""


def test_public_api_names_resolve() -> None:
    import sgmg

    for name in sgmg.__all__:
        assert getattr(sgmg, name) is not None, name
    assert "sgmg_tiny" in sgmg.MODEL_CONFIGS and callable(sgmg.build_model)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sgmg.nope  # noqa: B018


def test_cli_help_lists_subcommands_without_ray() -> None:
    code = (
        "import sys, io, contextlib\nfrom sgmg.cli import main\nbuf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n    rc = main([])\n"
        "print(rc, 'ray' in sys.modules, 'predict' in buf.getvalue(), 'ingest' in buf.getvalue())"
    )
    assert _run(code) == "2 False True True"


def test_console_script_help() -> None:
    exe = sys.executable.rsplit("/", 1)[0] + "/sgmg"
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "make-synthetic" in proc.stdout and "validate-dataset" in proc.stdout


def test_pipeline_command_without_the_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sgmg import cli

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ModuleNotFoundError, as without the extra
    monkeypatch.setitem(cli.COMMANDS, "needs-ray", ("ray.job_submission", "a command of the pipelines extra"))
    assert cli.main(["needs-ray"]) == 2
    err = capsys.readouterr().err
    assert "sgmg needs-ray" in err and "pip install 'sgmg[pipelines]'" in err
