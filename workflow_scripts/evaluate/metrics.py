"""MoA retrieval on treatment profiles: NSC / NSCB 1-nearest-neighbour accuracy and mAP.

Similarity is the cosine between treatment profiles. Each protocol fixes, per query treatment,
the candidate treatments it may be matched with:

- NSC (not-same-compound, Ljosa et al. 2013): every treatment of another compound. Queries: all
  treatments.
- NSCB (not-same-compound-or-batch, Ando et al. 2017): additionally, a candidate is excluded when it
  shares ANY batch with the query (a treatment occurs in the set of batches of its plates; a
  treatment present in every batch therefore has no candidate and every other query loses it as a
  candidate). MoAs whose treatments all lie in a single batch (derived from the data: on BBBC021
  Cholesterol-lowering and Kinase inhibitors) are dropped as queries and candidates. A query left
  without any candidate counts as a miss, so the denominator is the protocol's treatment set
  (103 NSC / 92 NSCB on BBBC021) and results stay comparable with the literature; how many
  queries had none is reported beside the value (`n_queries_without_candidates_<protocol>`).
  When no query has a candidate (every treatment in every batch, as in JUMP-like layouts), the
  protocol does not apply: its accuracy is None ("n/a"), never 0 (likewise per MoA).

1-NN: the candidate with the highest similarity; ties go to the lowest index in the profile table,
which is sorted by treatment name (stable), so results are deterministic.

mAP (the metric of copairs, Kalinin et al. 2025): a query ranks its candidates by similarity (ties:
lowest index first); positives are the candidates with the query's MoA (so: same MoA, different
compound, and for NSCB no shared batch); AP = mean over positives of the precision at the
positive's rank. Queries without positives have no AP and are left out. Reported: mean AP over
queries (each treatment one vote, like NSC) and per MoA; per-query AP and per-MoA mAP equal
copairs' `average_precision` / `mean_average_precision` (tests/test_eval_copairs.py).

Significance (`map.null_model`): `permutations` random rankings of a query's candidates (same
numbers of candidates and positives) give random APs; a MoA's null is the mean of its queries'
random APs, p = (1 + #{null mean >= observed mAP}) / (1 + permutations); q-values are
Benjamini-Hochberg over MoAs.
- `shared` (default, copairs' null): one set of random rankings per configuration (positives,
  candidates), shared by all queries with that configuration. The queries of a MoA are not
  independent (concentrations of one compound, compounds of one MoA rank the same candidates
  alike), so a null that averages independent draws per query is too narrow and its p-values
  too small; the shared null is the conservative choice, and the field's (copairs).
- `per_query`: independent random rankings per query (this workflow's earlier default).
Ties count as at least as extreme (>=), as in copairs' per-profile p-values; copairs' mAP
p-value counts only null means strictly above the observed one, which gives a perfect ranking
the smallest p even when chance reaches it often (e.g. 1 positive among 2 candidates).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

PROTOCOLS = ("nsc", "nscb")
NULLS = ("shared", "per_query")
# Null APs equal to the observed one up to rounding count as "at least as good".
AP_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Protocol:
    name: str
    queries: np.ndarray  # (T,) bool: treatments evaluated as queries
    candidates: np.ndarray  # (T, T) bool: candidates[q, c] = c may be matched with query q


def nsc_protocol(table: pd.DataFrame) -> Protocol:
    compound = table["compound"].to_numpy()
    other_compound = compound[:, None] != compound[None, :]
    return Protocol("nsc", np.ones(len(table), dtype=bool), other_compound)


def single_batch_moas(table: pd.DataFrame) -> list[str]:
    """MoAs whose treatments together occur in one batch only (no cross-batch match possible)."""
    batches_per_moa = table.groupby("moa")["batches"].agg(lambda s: set().union(*s))
    return sorted(batches_per_moa[batches_per_moa.map(len) < 2].index)


def nscb_protocol(table: pd.DataFrame) -> Protocol:
    batch_names = sorted(set().union(*table["batches"]))
    column = {batch: j for j, batch in enumerate(batch_names)}
    incidence = np.zeros((len(table), len(batch_names)), dtype=np.int64)
    for row, batches in enumerate(table["batches"]):
        incidence[row, [column[b] for b in batches]] = 1
    shares_batch = (incidence @ incidence.T) > 0
    kept = ~table["moa"].isin(single_batch_moas(table)).to_numpy()
    candidates = nsc_protocol(table).candidates & ~shares_batch & kept[None, :] & kept[:, None]
    return Protocol("nscb", kept, candidates)


def cosine_similarity(profiles: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(profiles, axis=1, keepdims=True)
    unit = np.divide(
        profiles, norms, out=np.zeros_like(profiles, dtype=np.float64), where=norms > 0
    )
    return unit @ unit.T


def rank_candidates(similarity: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Per query, column indices by decreasing similarity (ties: lowest index first);
    non-candidates last."""
    keyed = np.where(candidates, -similarity, np.inf)
    return np.argsort(keyed, axis=1, kind="stable")


def average_precision(order: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """AP per query from its ranking `order`; `positives` must be candidates. NaN where the
    query has no positive."""
    hits = np.take_along_axis(positives, order, axis=1)
    n_positives = hits.sum(axis=1)
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_positives > 0, (precision * hits).sum(axis=1) / n_positives, np.nan)


def null_average_precision(
    n_candidates: np.ndarray, n_positives: np.ndarray, permutations: int, rng: np.random.Generator
) -> np.ndarray:
    """(Q, permutations) APs of random rankings: query q has n_candidates[q] ranked items of
    which n_positives[q] (>= 1) are positives. Independent draws per query and permutation."""
    null = np.empty((len(n_candidates), permutations))
    for n in np.unique(n_candidates):
        rows = np.flatnonzero(n_candidates == n)
        k = np.repeat(n_positives[rows], permutations)
        hits = random_subsets(len(k), int(n), k, rng)
        null[rows] = ap_of_hit_rows(hits, k).reshape(len(rows), permutations)
    return null


def query_nulls(
    n_candidates: np.ndarray,
    n_positives: np.ndarray,
    permutations: int,
    rng: np.random.Generator,
    null: str = "shared",
) -> np.ndarray:
    """(Q, permutations) random APs per query: `shared` draws once per distinct (candidates,
    positives) configuration and gives every query of it the same row; `per_query` draws
    independently for each query."""
    if null == "per_query":
        return null_average_precision(n_candidates, n_positives, permutations, rng)
    if null != "shared":
        raise ValueError(f"map.null_model must be one of {', '.join(NULLS)}, not {null!r}")
    configurations, row = np.unique(
        np.column_stack([n_candidates, n_positives]), axis=0, return_inverse=True
    )
    drawn = null_average_precision(configurations[:, 0], configurations[:, 1], permutations, rng)
    return drawn[row.ravel()]


def random_subsets(n_rows: int, n: int, k: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n_rows, n) bool, row r a uniformly random set of k[r] positions: the positions of the k[r]
    smallest random keys. The low bits of each key hold its column, so keys are distinct and
    every row has exactly k[r] hits (a float-key tie could add one); uint32 sorts fast."""
    index_bits = np.uint32(max(1, (n - 1).bit_length()))
    keys = rng.integers(0, 2**32, size=(n_rows, n), dtype=np.uint32)
    keys = (keys >> index_bits << index_bits) | np.arange(n, dtype=np.uint32)
    kth_smallest = np.sort(keys, axis=1)[np.arange(n_rows), k - 1]
    return keys <= kth_smallest[:, None]


def ap_of_hit_rows(hits: np.ndarray, n_hits: np.ndarray) -> np.ndarray:
    """AP of each row of a ranked hit matrix with n_hits[r] >= 1 hits in row r:
    mean over hits of (hits so far) / rank, computed at the hit positions only."""
    _, ranks = np.nonzero(hits)  # row-major: grouped by row, ranks ascending within a row
    starts = np.concatenate([[0], np.cumsum(n_hits)[:-1]])
    hits_so_far = np.arange(1, len(ranks) + 1) - np.repeat(starts, n_hits)
    return np.add.reduceat(hits_so_far / (ranks + 1), starts) / n_hits


def permutation_p_value(observed: float, null_means: np.ndarray) -> float:
    exceed = np.count_nonzero(null_means >= observed - AP_TOLERANCE)
    return float((1 + exceed) / (1 + len(null_means)))


def evaluate_profiles(
    profiles: np.ndarray, table: pd.DataFrame, map_settings: dict
) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """NSC, NSCB and, if map_settings["enabled"], mAP (map_settings "permutations", "seed") of
    treatment `profiles` (rows of `table`, sorted by treatment). Returns (metrics, predictions,
    NSC MoA confusion matrix); metrics not computed are None."""
    similarity = cosine_similarity(np.asarray(profiles, dtype=np.float64))
    moa = table["moa"].to_numpy()
    same_moa = moa[:, None] == moa[None, :]
    rng = np.random.default_rng(map_settings["seed"]) if map_settings["enabled"] else None
    metrics: dict = {"nscb_excluded_moas": single_batch_moas(table)}
    per_moa: dict = {
        m: {"n_treatments": int(n)} for m, n in table["moa"].value_counts().sort_index().items()
    }
    predictions = []
    for protocol in (nsc_protocol(table), nscb_protocol(table)):
        name = protocol.name
        order = rank_candidates(similarity, protocol.candidates)
        has_candidate = protocol.candidates.any(axis=1)
        neighbour = np.where(has_candidate, order[:, 0], -1)
        correct = has_candidate & (moa[order[:, 0]] == moa)
        queries = np.flatnonzero(protocol.queries)
        without = queries[~has_candidate[queries]]
        metrics[name] = accuracy(correct, has_candidate, queries)
        metrics[f"n_treatments_{name}"] = len(queries)
        metrics[f"n_queries_without_candidates_{name}"] = len(without)
        metrics[f"{name}_queries_without_candidates"] = (
            table["treatment"].to_numpy()[without].tolist()
        )
        for m, stats in per_moa.items():
            stats[name] = accuracy(correct, has_candidate, queries[moa[queries] == m])

        positives = protocol.candidates & same_moa
        ap = average_precision(order, positives) if rng is not None else np.full(len(table), np.nan)
        metrics.update(
            mean_average_precision(ap, protocol, positives, moa, per_moa, map_settings, rng)
        )
        predictions.append(prediction_rows(table, protocol, neighbour, similarity, correct, ap))
    metrics["per_moa"] = per_moa
    nsc_rows = predictions[0]
    confusion = confusion_matrix(nsc_rows["moa"], nsc_rows["neighbour_moa"], sorted(per_moa))
    return metrics, pd.concat(predictions, ignore_index=True), confusion


def accuracy(correct: np.ndarray, has_candidate: np.ndarray, queries: np.ndarray) -> float | None:
    """1-NN accuracy over `queries`, those without a candidate counted as misses; None when
    none of them has a candidate (the protocol does not apply: 0 would read as a result)."""
    if not has_candidate[queries].any():
        return None
    return float(correct[queries].mean())


def mean_average_precision(
    ap: np.ndarray,
    protocol: Protocol,
    positives: np.ndarray,
    moa: np.ndarray,
    per_moa: dict,
    map_settings: dict,
    rng: np.random.Generator | None,
) -> dict:
    """mAP over the protocol's queries with positives, per MoA, with permutation p/q-values
    (filled into `per_moa`); returns the top-level metrics (None without `rng`: mAP disabled)."""
    name = protocol.name
    keys = (f"map_{name}", f"map_{name}_p", f"map_{name}_q")
    for stats in per_moa.values():
        stats.update(dict.fromkeys(keys))
    if rng is None:
        return {f"map_{name}": None, f"map_{name}_p": None, f"n_queries_map_{name}": None}
    scored = np.flatnonzero(protocol.queries & ~np.isnan(ap))
    permutations = map_settings["permutations"]
    test = permutations > 0 and len(scored) > 0
    if test:
        null = query_nulls(
            protocol.candidates[scored].sum(axis=1),
            positives[scored].sum(axis=1),
            permutations,
            rng,
            map_settings.get("null_model", "shared"),
        )
    result: dict = {
        f"map_{name}": float(ap[scored].mean()) if len(scored) else None,
        f"n_queries_map_{name}": len(scored),
        f"map_{name}_p": permutation_p_value(ap[scored].mean(), null.mean(axis=0))
        if test
        else None,
    }
    moa_names, p_values = [], []
    for m, stats in per_moa.items():
        in_moa = moa[scored] == m
        if not in_moa.any():
            continue
        stats[f"map_{name}"] = float(ap[scored][in_moa].mean())
        if test:
            stats[f"map_{name}_p"] = permutation_p_value(
                stats[f"map_{name}"], null[in_moa].mean(axis=0)
            )
            moa_names.append(m)
            p_values.append(stats[f"map_{name}_p"])
    if p_values:
        for m, q in zip(moa_names, false_discovery_control(p_values, method="bh")):
            per_moa[m][f"map_{name}_q"] = float(q)
    return result


def prediction_rows(
    table: pd.DataFrame,
    protocol: Protocol,
    neighbour: np.ndarray,
    similarity: np.ndarray,
    correct: np.ndarray,
    ap: np.ndarray,
) -> pd.DataFrame:
    queries = np.flatnonzero(protocol.queries)
    found = neighbour[queries] >= 0
    matched = np.where(found, neighbour[queries], 0)
    rows = table.iloc[queries]
    return pd.DataFrame(
        {
            "protocol": protocol.name,
            "treatment": rows["treatment"].to_numpy(),
            "compound": rows["compound"].to_numpy(),
            "concentration": rows["concentration"].to_numpy(),
            "moa": rows["moa"].to_numpy(),
            "batches": [";".join(b) for b in rows["batches"]],
            "neighbour": np.where(found, table["treatment"].to_numpy()[matched], None),
            "neighbour_compound": np.where(found, table["compound"].to_numpy()[matched], None),
            "neighbour_moa": np.where(found, table["moa"].to_numpy()[matched], None),
            "similarity": np.where(found, similarity[queries, matched], np.nan),
            "correct": correct[queries],
            "average_precision": ap[queries],
        }
    )


def confusion_matrix(
    true_moa: pd.Series, predicted_moa: pd.Series, moas: list[str]
) -> pd.DataFrame:
    """Counts: rows = the query's MoA, columns = the nearest neighbour's MoA (queries without a
    neighbour are not counted)."""
    counts = pd.crosstab(true_moa.rename("moa"), predicted_moa.rename("predicted"))
    return counts.reindex(index=moas, columns=moas, fill_value=0).astype(int)
