"""Long-context perplexity on the built-in corpus (the Python standard library's own
sources, held-out split), streaming and with sliding windows.

    python3 examples/perplexity_stdlib.py --tokens 65536
    python3 examples/perplexity_stdlib.py --tokens 1048576    # 1M tokens, bounded memory
"""

from __future__ import annotations

import argparse

from samba_ext.eval import corpus, get_model, perplexity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--window", type=int, default=1024, help="sliding-window size")
    args = ap.parse_args()

    model = get_model(args.model)
    files = corpus.stdlib_files("heldout")
    print(f"held-out split: {len(files)} files under {corpus.stdlib_dir()}, e.g. {files[:3]}")
    tokens = corpus.stdlib_tokens(model.tokenizer, args.tokens, split="heldout")

    streaming = perplexity(model, tokens=tokens, mode="streaming")
    print(streaming)
    sliding = perplexity(model, tokens=tokens, mode="sliding", context_lengths=[min(args.window, args.tokens)])
    print(sliding)


if __name__ == "__main__":
    main()
