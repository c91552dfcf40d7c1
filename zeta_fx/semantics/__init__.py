"""What each op and module kind does: the one home of op knowledge.

Every stage asks this package, never a table of its own: :mod:`.effects` says which inputs
an op writes and which its output may alias (from the aten schemas), :mod:`.dtypes` in
which dtype an op combines its constants (an ``eps`` that rounds to zero in float16 is
zero).

>>> import torch
>>> from zeta_fx.semantics import schema_effects
>>> sorted(schema_effects(torch.ops.aten.index_put_.default._schema).writes)
['input']
"""

from zeta_fx.semantics.dtypes import computation_dtype, rounds_to_zero, overflows_easily
from zeta_fx.semantics.effects import (OPAQUE, PURE, VIEW_ATTRS, Effects, module_effects,
                                       op_effects, schema_effects)

__all__ = ["Effects", "op_effects", "module_effects", "schema_effects", "PURE", "OPAQUE",
           "VIEW_ATTRS", "computation_dtype", "rounds_to_zero", "overflows_easily"]
