"""Move @champion to a version only when it is at least as good as the current champion.

"As good" means its test macro F1 (tag ``test_f1_macro``) is >= the champion's, both scored on the same
test split (tag ``test_split``: the store version's test split). Anything else is refused with the
reason, unless forced; a forced promotion is recorded on the version (tag ``promoted_forced``).

With ``check`` (an .h5ad file), a promotion that goes ahead first annotates the file with the candidate and the
current champion and summarises how the labels change (:mod:`sctab.registry.check`); the summary is shown
before @champion moves and recorded with the promotion (tag ``promotion_check_run`` on the version).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sctab.registry.register import CHALLENGER, CHAMPION, RegistryError, client


@dataclass
class Promotion:
    name: str
    candidate: str
    champion: str | None
    promoted: bool
    reason: str
    rows: list[dict] = field(default_factory=list)  # candidate and champion side by side
    check: object = None          # the --check result (sctab.registry.check.Check), when one was made
    check_run: str | None = None  # the MLflow run that records it
    check_note: str | None = None  # why a check was asked for but not made


def _version_row(role: str, v) -> dict:
    tags = v.tags or {}
    return {"role": role, "version": str(v.version), "test_f1_macro": tags.get("test_f1_macro", "unknown"),
            "test_split": tags.get("test_split", "unknown"), "git_commit": tags.get("git_commit", "")[:12],
            "aliases": ", ".join(sorted(getattr(v, "aliases", []) or []))}


def _f1(v) -> float | None:
    try:
        return float((v.tags or {}).get("test_f1_macro"))
    except (TypeError, ValueError):
        return None


def _get_version(c, name: str, version: str | int | None):
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
    except MlflowException as e:
        raise RegistryError(f"there is no registered model {name!r} (`dvc repro register` registers the "
                            f"pipeline's models)") from e
    try:
        if version is None:
            return c.get_model_version_by_alias(name, CHALLENGER)
        return c.get_model_version(name, str(version))
    except MlflowException as e:
        what = f"version {version}" if version is not None else f"a version with alias @{CHALLENGER}"
        raise RegistryError(f"registered model {name!r} has no {what}") from e


def _champion(c, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def promote(name: str, version: str | int | None = None, *, force: bool = False, check=None,
            show: Callable | None = None, trust_pickle: bool = False, ontology=None) -> Promotion:
    """Compare ``version`` (default: @challenger) with @champion and move @champion if allowed.

    ``check``: an .h5ad file annotated with both versions before the move (``show`` receives the
    :class:`~sctab.registry.check.Check` first); without a champion there is nothing to compare and the
    promotion goes on without one (``check_note`` says so)."""
    c = client()
    cand = _get_version(c, name, version)
    champ = _champion(c, name)
    rows = [_version_row("candidate", cand)] + ([_version_row("champion", champ)] if champ is not None else [])
    base = dict(name=name, candidate=str(cand.version), champion=None if champ is None else str(champ.version),
                rows=rows)
    if champ is not None and str(champ.version) == str(cand.version):
        return Promotion(**base, promoted=False, reason=f"version {cand.version} already is @{CHAMPION}")
    f_cand = _f1(cand)
    refusal = None
    if champ is not None:
        f_champ = _f1(champ)
        split_c, split_h = (cand.tags or {}).get("test_split"), (champ.tags or {}).get("test_split")
        if f_cand is None:
            refusal = f"version {cand.version} has no test macro F1 to compare"
        elif split_c != split_h:
            refusal = (f"the versions were scored on different test splits ({split_c} vs {split_h}); their F1 "
                       f"cannot be compared")
        elif f_champ is not None and f_cand < f_champ:
            refusal = (f"test macro F1 {f_cand:.4f} of version {cand.version} is below the champion's "
                       f"{f_champ:.4f} (version {champ.version})")
    elif f_cand is None:
        refusal = f"version {cand.version} has no test macro F1 (imported without --test-f1 or --store?)"
    if refusal is not None and not force:
        return Promotion(**base, promoted=False, reason=refusal + "; pass --force to promote anyway")
    if check is not None and champ is not None:
        with tempfile.TemporaryDirectory(prefix="sctab-promote-check-") as tmp:
            return _checked(c, name, cand, champ, base, refusal, f_cand, check, show, tmp, trust_pickle, ontology)
    extra = {}
    if check is not None:
        extra["check_note"] = (f"registered model {name!r} has no @{CHAMPION} yet: no labels to compare on "
                               f"{check}; promoting version {cand.version} without a check table")
        if show is not None:
            show(extra["check_note"])
    return _move(c, name, cand, champ, base, refusal, f_cand, **extra)


def _checked(c, name, cand, champ, base, refusal, f_cand, check, show, folder, trust_pickle, ontology) -> Promotion:
    """Annotate ``check`` with both versions, show and record the changes, then move @champion; the run that
    recorded the check is deleted again if the move fails."""
    from sctab.registry.check import record_check, run_check

    result = run_check(name, str(cand.version), str(champ.version), check, folder, trust_pickle=trust_pickle,
                       ontology=ontology)
    if show is not None:
        show(result)
    run_id = record_check(name, str(cand.version), str(champ.version), result)
    try:
        p = _move(c, name, cand, champ, base, refusal, f_cand, check=result, check_run=run_id)
        c.set_model_version_tag(name, cand.version, "promotion_check_run", run_id)
        c.set_model_version_tag(name, cand.version, "promotion_check", result.summary())
    except Exception as e:
        _undo(c, name, champ, run_id)
        raise RegistryError(f"promoting version {cand.version} of {name} failed after its check was recorded "
                            f"({type(e).__name__}: {e}); @{CHAMPION} is back on version {champ.version} and the "
                            f"check's run {run_id} was deleted") from e
    return p


def _undo(c, name: str, champ, run_id: str) -> None:
    """Best effort: @champion back where it was, the check's run deleted."""
    for step in (lambda: c.set_registered_model_alias(name, CHAMPION, champ.version), lambda: c.delete_run(run_id)):
        try:
            step()
        except Exception:  # noqa: BLE001 - the original error is the one raised
            pass


def _move(c, name: str, cand, champ, base: dict, refusal: str | None, f_cand, **extra) -> Promotion:
    """Move @champion to ``cand`` and tag it; the Promotion."""
    c.set_registered_model_alias(name, CHAMPION, cand.version)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    c.set_model_version_tag(name, cand.version, "promoted_at", stamp)
    if champ is not None:
        c.set_model_version_tag(name, cand.version, "promoted_over", str(champ.version))
    if refusal is not None:
        c.set_model_version_tag(name, cand.version, "promoted_forced", refusal)
        reason = f"forced: {refusal}"
    elif champ is None:
        reason = f"no champion yet; version {cand.version} becomes @{CHAMPION}"
    else:
        f_champ = _f1(champ) if _f1(champ) is not None else float("nan")
        reason = f"test macro F1 {f_cand:.4f} >= champion's {f_champ:.4f} on the same test split"
    return Promotion(**base, promoted=True, reason=reason, **extra)
