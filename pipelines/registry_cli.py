"""``sgmg registry list|show [VERSION]|promote VERSION|rollback``: the MLflow Model Registry of SgMg checkpoints.

``list`` shows every version with its validation J&F, validation-set hash, aliases and creation time; ``show`` one
version (default: the one ``--alias`` points at) with all its tags and the alias's history; ``promote`` points the
alias at a version by hand (refused when its checkpoint files cannot be found); ``rollback`` points it back at the
version it pointed at before the last move. Sweeps and ``sgmg train --register`` move the alias only to a better
version (``pipelines.registry.register_candidate``). Every move is logged with who made it and why.

Options (before or after the action): ``--name`` (default ``sgmg``), ``--tracking-uri`` (default:
``$MLFLOW_TRACKING_URI``, else the ``sqlite:///<cwd>/mlflow.db`` that ``sgmg train`` and ``sgmg sweep`` write),
``--alias`` (default ``champion``).

Exit codes: 0 done, 2 bad request (unknown model or version, missing files, nothing to roll back to).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

ACTIONS = ("list", "show", "promote", "rollback")


def _add_common(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The shared options; on the action parsers they default to SUPPRESS so they do not hide the ones given first."""

    def default(value: str | None) -> str | None:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--name", default=default("sgmg"), help="registered model name (default: sgmg)")
    parser.add_argument(
        "--tracking-uri",
        default=default(None),
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db as sgmg train/sweep)",
    )
    parser.add_argument("--alias", default=default("champion"), help="the alias to show or move (default: champion)")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sgmg registry``."""
    _add_common(parser, defaults=True)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser("list", help="every version: val_jf, validation set, aliases, created")
    _add_common(p, defaults=False)
    p = actions.add_parser("show", help="one version's details (default: the alias's version)")
    p.add_argument("version", nargs="?", help="version number (default: the one --alias points at)")
    _add_common(p, defaults=False)
    p = actions.add_parser("promote", help="point the alias at VERSION (refused if its files are missing)")
    p.add_argument("version", help="version number")
    p.add_argument("--reason", default="", help="why (recorded with the move)")
    _add_common(p, defaults=False)
    p = actions.add_parser("rollback", help="point the alias back at the version it pointed at before")
    p.add_argument("--reason", default="", help="why (recorded with the move)")
    _add_common(p, defaults=False)


def resolve_tracking_uri(given: str | None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else the default of ``sgmg train``/``sgmg sweep``."""
    from pipelines import tracking

    return given or os.environ.get("MLFLOW_TRACKING_URI") or tracking.default_tracking_uri(os.getcwd())


def _fmt_jf(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def run(args: argparse.Namespace) -> int:
    """Run ``sgmg registry``; returns the exit code."""
    from pipelines import registry

    uri = resolve_tracking_uri(args.tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        print(
            f"sgmg registry: no MLflow database at {uri[len('sqlite:///') :]}; run from the folder where `sgmg train`/"
            "`sgmg sweep` ran, or pass --tracking-uri (or set MLFLOW_TRACKING_URI)",
            file=sys.stderr,
        )
        return 2
    handler = logging.StreamHandler(sys.stderr)  # the alias moves are logged (who, why): show them
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("pipelines.registry")
    logger.addHandler(handler)
    saved_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        return _run(args, uri, registry)
    except registry.RegistryError as err:
        print(f"sgmg registry: {err}", file=sys.stderr)
        return 2
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_level)


def _run(args: argparse.Namespace, uri: str, registry) -> int:  # noqa: ANN001 - the pipelines.registry module
    name, alias = args.name, args.alias
    if args.action == "list":
        versions = registry.list_versions(uri, name)
        print(f"{'version':>7}  {'val_jf':>7}  {'validation set':<14}  {'aliases':<16}  {'created (UTC)':<25}  source")
        for v in versions:
            print(
                f"{v.version:>7}  {_fmt_jf(v.val_jf):>7}  {(v.val_set or '-')[:12]:<14}  "
                f"{','.join(v.aliases) or '-':<16}  {v.created:<25}  {v.source or '-'}"
            )
        return 0
    if args.action == "show":
        v = registry.get_version(uri, name, args.version, alias=alias)
        print(f"model {name} version {v.version}")
        print(f"  aliases:        {', '.join(v.aliases) or '-'}")
        print(f"  val_jf:         {_fmt_jf(v.val_jf)}")
        print(f"  validation set: {v.val_set or '-'}")
        print(f"  source:         {v.source or '-'}")
        print(f"  created (UTC):  {v.created}")
        print(f"  MLflow run:     {v.run_id or '-'}")
        missing = registry.missing_files(uri, name, v.version)
        print(f"  checkpoint:     {'complete' if not missing else 'MISSING ' + ', '.join(missing)}")
        for key, value in sorted(v.tags.items()):
            if key not in (registry.TAG_VAL_JF, registry.TAG_VAL_SET, registry.TAG_SOURCE, registry.TAG_CONFIG):
                print(f"  tag {key}: {value}")
        if registry.TAG_CONFIG in v.tags:
            print("  config:")
            try:
                text = json.dumps(json.loads(v.tags[registry.TAG_CONFIG]), indent=2, sort_keys=True)
            except ValueError:
                text = v.tags[registry.TAG_CONFIG]
            print("\n".join("    " + line for line in text.splitlines()))
        history = registry.alias_history(uri, name, alias)
        if history:
            print(f"  earlier {alias} versions (newest last; rollback returns to the last):")
            for h in history:
                print(f"    version {h['version']} until {h['at']} ({h['who']}: {h['why']})")
        return 0
    if args.action == "promote":
        before = registry.promote(uri, name, args.version, alias=alias, why=args.reason)
        print(f"models:/{name}@{alias} -> version {args.version} (was {before or 'unset'})")
        return 0
    before, now = registry.rollback(uri, name, alias=alias, why=args.reason)
    print(f"models:/{name}@{alias} -> version {now} (rolled back from {before or 'unset'})")
    return 0
