"""Loading a kernel from numba's disk cache without ever compiling it."""

from __future__ import annotations

from typing import Any

from numba.core.compiler_lock import global_compiler_lock


def load_without_compiling(dispatcher: Any, signature: Any) -> bool:
    """Load ``signature`` of ``dispatcher`` from its disk cache, as numba's own dispatcher
    does before it would compile (and counted as its loads are); whether it was there.

    Nothing is compiled when it is not: a dispatcher compiles only when called.
    """
    with global_compiler_lock:
        compiled = dispatcher._cache.load_overload(signature, dispatcher.targetctx)
        if compiled is None:
            return False
        dispatcher._cache_hits[signature] += 1
        dispatcher.targetctx.insert_user_function(
            compiled.entry_point, compiled.fndesc, [compiled.library]
        )
        dispatcher.add_overload(compiled)
    return True
