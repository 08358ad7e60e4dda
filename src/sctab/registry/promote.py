"""Move @champion to a version only when it is at least as good as the current champion.

"As good" means its test macro F1 (tag ``test_f1_macro``) is >= the champion's, both scored on the same
test split (tag ``test_split``: the store version's test split). Anything else is refused with the
reason, unless forced; a forced promotion is recorded on the version (tag ``promoted_forced``).
"""

from __future__ import annotations

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


def promote(name: str, version: str | int | None = None, *, force: bool = False) -> Promotion:
    """Compare ``version`` (default: @challenger) with @champion and move @champion if allowed."""
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
    return Promotion(**base, promoted=True, reason=reason)
