"""Streamed generation, and a look at a passkey prompt and the model's answer.

python3 examples/generate_stream.py --length 2048 --depth 0.5
"""

from __future__ import annotations

import argparse
import sys

from samba_ext.eval import build_passkey_prompt, get_model, score_passkey


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--depth", type=float, default=0.5)
    ap.add_argument("--key", type=int, default=68042)
    args = ap.parse_args()

    model = get_model(args.model)
    p = build_passkey_prompt(model.tokenizer, args.length, args.depth, args.key)
    print(f"prompt: {p.n_tokens} tokens, key line at depth {p.actual_depth:.3f}")
    print(f"  begins: {p.text[:80]!r}...")
    print(f"  ends:   ...{p.text[-80:]!r}")
    print("model  :", end=" ")
    answer = model.generate(
        p.text, max_new_tokens=10, stream=lambda piece: (sys.stdout.write(piece), sys.stdout.flush())
    )
    print(f"\ncorrect: {score_passkey(answer, args.key)}")


if __name__ == "__main__":
    main()
