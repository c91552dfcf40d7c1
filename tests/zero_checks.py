"""Assertions shared by the older tests; they live in :mod:`claims`, the independent oracle.

Kept so ``from zero_checks import snapshot, assert_only_zeroed, ...`` keeps working. Nothing
here uses the code under test's analysis: the oracle judges by running the model.
"""

from claims import (assert_graph_claims, assert_only_zeroed, assert_unchanged,  # noqa: F401
                    block_mismatches, check_pass, fixed_inputs, judge, snapshot)
