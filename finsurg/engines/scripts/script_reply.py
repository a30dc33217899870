"""How an engine script stops its engine and hands back its reply.

vLLM's background threads can abort the interpreter's teardown ("terminate called without an active
exception") after the work is done, so the reply is written whole first, the engine is stopped while the
process is still intact, and the script then leaves without a teardown.
"""

import json
import os
import sys


def stop(llm) -> None:
    """Shut a vLLM `LLM`'s engine core down now rather than in a finalizer."""
    llm.llm_engine.engine_core.shutdown()


def reply(result: dict, result_path: str) -> None:
    """Write `result` to `result_path` all at once, then exit 0 without running the interpreter's teardown."""
    partial = result_path + ".part"
    with open(partial, "w") as handle:
        json.dump(result, handle)
    os.replace(partial, result_path)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
