"""Out-of-process engines (vLLM, lm-eval on vLLM, llama.cpp and its converter): one runner, one request
format, one error path. The scripts under scripts/ run inside those engines' environments; nothing imports them."""
