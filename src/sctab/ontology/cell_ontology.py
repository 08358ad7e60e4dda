"""Cell Ontology queries for label filtering, hierarchy-aware evaluation and coarse fallbacks.

Loaded once from an OBO file written by :func:`sctab.ontology.obo.write_cl_obo`; every ancestor and
descendant set is computed at load time, so queries are dictionary look-ups (the bundled
``OntologyParser.get_term_descendants`` scans every term per call, far too slow inside training or
evaluation loops). Ancestors follow ``is_a`` plus the ``ancestor_via_non_cl`` relation, which together
reproduce the ancestor sets of cellxgene-ontology-guide (see the obo module docstring).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pronto

from sctab.ontology.obo import INDIRECT_RELATION


class CellOntology:
    """Immutable, precomputed view of one CL release."""

    def __init__(
        self,
        path: Path,
        version: str,
        labels: dict[str, str],
        parents: dict[str, frozenset[str]],
        indirect: dict[str, frozenset[str]],
        obsolete: frozenset[str],
        replaced_by: dict[str, str],
        exact_synonyms: dict[str, frozenset[str]] | None = None,
    ):
        self.path = Path(path)
        self.version = version
        self._labels = labels
        self._parents = parents
        self._obsolete = obsolete
        self._replaced_by = replaced_by
        self._by_label = {lab: tid for tid, lab in labels.items() if lab}
        self._exact_synonyms = exact_synonyms or {}
        self._ancestors = _closure(parents, indirect)
        children: dict[str, set[str]] = {tid: set() for tid in labels}
        descendants: dict[str, set[str]] = {tid: set() for tid in labels}
        for tid, ps in parents.items():
            for p in ps:
                children[p].add(tid)
        for tid, anc in self._ancestors.items():
            for a in anc:
                descendants[a].add(tid)
        self._children = {t: frozenset(c) for t, c in children.items()}
        self._descendants = {t: frozenset(d) for t, d in descendants.items()}

    @classmethod
    def from_obo(cls, path: str | os.PathLike) -> CellOntology:
        """Parse ``path`` with pronto and precompute the hierarchy."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Cell Ontology OBO file {path} does not exist (write it with `python pipelines/ontology.py`)"
            )
        onto = pronto.Ontology(str(path))
        labels: dict[str, str] = {}
        parents: dict[str, frozenset[str]] = {}
        indirect: dict[str, frozenset[str]] = {}
        obsolete: set[str] = set()
        replaced_by: dict[str, str] = {}
        synonyms: dict[str, set[str]] = {}
        for term in onto.terms():
            tid = term.id
            labels[tid] = term.name or ""
            parents[tid] = frozenset(t.id for t in term.superclasses(distance=1, with_self=False))
            via = [ts for rel, ts in term.relationships.items() if rel.id == INDIRECT_RELATION]
            indirect[tid] = frozenset(t.id for ts in via for t in ts)
            for syn in term.synonyms:
                if syn.scope == "EXACT" and syn.description:
                    synonyms.setdefault(syn.description, set()).add(tid)
            if term.obsolete:
                obsolete.add(tid)
                targets = sorted(t.id for t in term.replaced_by)
                if targets:
                    replaced_by[tid] = targets[0]
        version = onto.metadata.data_version or ""
        return cls(path, version, labels, parents, indirect, frozenset(obsolete), replaced_by,
                   {name: frozenset(ids) for name, ids in synonyms.items()})

    # ------------------------------------------------------------------ look-ups
    def _check(self, term_id: str) -> str:
        if term_id not in self._labels:
            raise KeyError(f"{term_id!r} is not a term of the Cell Ontology in {self.path}")
        return term_id

    def __contains__(self, term_id: object) -> bool:
        return term_id in self._labels

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def term_ids(self) -> frozenset[str]:
        """Every term in the file, obsolete ones included."""
        return frozenset(self._labels)

    def label(self, term_id: str) -> str:
        return self._labels[self._check(term_id)]

    def term_id(self, label: str) -> str:
        """Exact label -> id (labels are unique in CL)."""
        try:
            return self._by_label[label]
        except KeyError:
            raise KeyError(f"no Cell Ontology term is labelled {label!r} in {self.path}") from None

    def ids_for_name(self, name: str) -> list[str]:
        """Current (not obsolete) terms whose label, else whose exact synonym, is ``name`` (case-insensitive).

        What a free-text cell type column of a user's reference maps to; more than one id means ambiguous."""
        key = name.strip().casefold()
        if not hasattr(self, "_folded"):
            folded: dict[str, set[str]] = {}
            for tid, lab in self._labels.items():
                if lab and tid not in self._obsolete:
                    folded.setdefault(lab.casefold(), set()).add(tid)
            syn: dict[str, set[str]] = {}
            for text, ids in self._exact_synonyms.items():
                syn.setdefault(text.casefold(), set()).update(t for t in ids if t not in self._obsolete)
            self._folded = (folded, syn)
        folded, syn = self._folded
        return sorted(folded.get(key) or syn.get(key) or ())

    def is_obsolete(self, term_id: str) -> bool:
        return self._check(term_id) in self._obsolete

    def replaced_by(self, term_id: str) -> str | None:
        """The CL term that replaces an obsolete one (e.g. CL:0000003 -> CL:0000000), else None."""
        return self._replaced_by.get(self._check(term_id))

    def parents(self, term_id: str) -> frozenset[str]:
        """Direct parents (the bundle's distance-1 ancestors)."""
        return self._parents[self._check(term_id)]

    def children(self, term_id: str) -> frozenset[str]:
        return self._children[self._check(term_id)]

    def ancestors(self, term_id: str) -> frozenset[str]:
        """All ancestors, the term itself excluded."""
        return self._ancestors[self._check(term_id)]

    def descendants(self, term_id: str) -> frozenset[str]:
        """All descendants (subtypes), the term itself excluded."""
        return self._descendants[self._check(term_id)]

    def n_ancestors(self, term_id: str) -> int:
        """The paper's "number of parent nodes" (its >= 7 filter keeps specific enough types)."""
        return len(self.ancestors(term_id))

    def is_subtype(self, term_id: str, of: str, strict: bool = False) -> bool:
        """``term_id`` equals ``of`` (unless ``strict``) or descends from it."""
        self._check(of)
        if term_id == of:
            return not strict
        return of in self.ancestors(term_id)

    def child_matrix(self, term_ids: Sequence[str]) -> np.ndarray:
        """(n, n) int64 with ``[i, j] = 1`` when term j is term i or one of its subtypes.

        Used to count a prediction of a subtype of the true label as correct.
        """
        ids = list(term_ids)
        for t in ids:
            self._check(t)
        out = np.zeros((len(ids), len(ids)), dtype=np.int64)
        for i, ti in enumerate(ids):
            desc = self._descendants[ti]
            for j, tj in enumerate(ids):
                if tj == ti or tj in desc:
                    out[i, j] = 1
        return out

    def lowest_common_ancestor(self, term_ids: Iterable[str]) -> str:
        """Most specific term that is an ancestor-or-self of all ``term_ids`` (most ancestors; ties by id)."""
        ids = list(term_ids)
        if not ids:
            raise ValueError("lowest_common_ancestor needs at least one term id")
        common = set(self.ancestors(ids[0])) | {ids[0]}
        for t in ids[1:]:
            common &= self.ancestors(t) | {t}
        if not common:
            raise ValueError(f"terms {ids} share no ancestor in the Cell Ontology in {self.path}")
        return min(common, key=lambda a: (-len(self._ancestors[a]), a))

    def __repr__(self) -> str:
        return f"CellOntology(version={self.version!r}, terms={len(self)}, path={str(self.path)!r})"


def _closure(parents: dict[str, frozenset[str]], indirect: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    """Transitive closure of parent + indirect edges, iteratively (memoised, no recursion limit)."""
    edges = {t: parents.get(t, frozenset()) | indirect.get(t, frozenset()) for t in parents}
    done: dict[str, frozenset[str]] = {}
    for start in edges:
        if start in done:
            continue
        stack = [(start, False)]
        on_path: set[str] = set()
        while stack:
            node, expanded = stack.pop()
            if node in done:
                continue
            if expanded:
                acc: set[str] = set()
                for p in edges.get(node, ()):
                    acc.add(p)
                    acc |= done[p]
                done[node] = frozenset(acc)
                on_path.discard(node)
                continue
            if node in on_path:
                raise ValueError(f"cycle in the Cell Ontology hierarchy at {node}")
            on_path.add(node)
            stack.append((node, True))
            stack.extend((p, False) for p in edges.get(node, ()) if p not in done)
    return done


@functools.lru_cache(maxsize=4)
def _load_cached(path: Path, mtime_ns: int) -> CellOntology:
    return CellOntology.from_obo(path)


def load_cell_ontology(path: str | os.PathLike) -> CellOntology:
    """Load once per resolved path (and file modification time, so a rewritten file is reread)."""
    resolved = Path(path).resolve()
    if not resolved.is_file():
        return CellOntology.from_obo(resolved)  # raises the clear FileNotFoundError
    return _load_cached(resolved, resolved.stat().st_mtime_ns)
