"""Every neural-tangents reference case is shipped and checked by exactly one test family,
with the exact number of cases per family: a lost file or an unclaimed case fails here."""

from __future__ import annotations

import numpy as np

import test_empirical
import test_predict
import test_reference_attention
import test_reference_conv
import test_reference_fc
import test_reference_graph_resize
from reference_cases import CASES, REFERENCE_DIR

FAMILIES = {
    "fully connected": (test_reference_fc.FC_CASES, 44),
    "convolutional": (test_reference_conv.CONV_CASES, 22),
    "attention": (test_reference_attention.SHARED, 5),
    "graph and resize": (test_reference_graph_resize.GRAPH_RESIZE_CASES, 3),
    "empirical": (test_empirical.CASE_IDS, 3),
    "predict": ([test_predict.CASE], 1),
}


def test_every_case_is_claimed_by_exactly_one_family() -> None:
    claimed = [cid for ids, _ in FAMILIES.values() for cid in ids]
    assert len(claimed) == len(set(claimed)), "a case is checked by two families"
    assert set(claimed) == set(CASES), set(CASES) ^ set(claimed)
    assert len(CASES) == 78


def test_each_family_has_its_exact_count_and_every_file() -> None:
    for family, (ids, count) in FAMILIES.items():
        assert len(ids) == count, (family, ids)
        for cid in ids:
            assert (REFERENCE_DIR / CASES[cid]["file"]).exists(), cid


def test_manifest_states_the_shapes_that_are_shipped() -> None:
    """Arrays trimmed to save space are recorded as trimmed, with the shapes actually stored."""
    for cid, case in CASES.items():
        with np.load(REFERENCE_DIR / case["file"]) as data:
            for name, shape in case["arrays"].items():
                assert name in data.files, (cid, name)
                assert list(data[name].shape) == list(shape), (cid, name, data[name].shape, shape)
