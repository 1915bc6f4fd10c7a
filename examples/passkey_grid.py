"""Passkey retrieval over a (length x depth) grid, from Python.

    python3 examples/passkey_grid.py                       # bundled samba-tiny
    python3 examples/passkey_grid.py --model my.safetensors --lengths 4096,16384 \
        --depths 0,0.25,0.5,0.75,1 --trials 5 --out passkey_run

Prints the accuracy table, writes results.json and (with matplotlib) a heatmap PNG.
"""

from __future__ import annotations

import argparse
import os

from samba_ext.eval import get_model, passkey


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        default=None,
        help="bundled name or checkpoint path (default: samba-tiny, or random weights if it is not installed)",
    )
    ap.add_argument("--lengths", default="1024,2048,4096", help="comma-separated token counts")
    ap.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="passkey_example")
    args = ap.parse_args()

    model = get_model(args.model)
    result = passkey(
        model,
        lengths=[int(x) for x in args.lengths.split(",")],
        depths=[float(x) for x in args.depths.split(",")],
        trials=args.trials,
        seed=args.seed,
    )
    print(result)
    os.makedirs(args.out, exist_ok=True)
    print("wrote", result.save_json(os.path.join(args.out, "results.json")))
    try:
        result.plot(os.path.join(args.out, "passkey.png"))
        print("wrote", os.path.join(args.out, "passkey.png"))
    except ImportError as e:  # matplotlib is an optional extra
        print(e)


if __name__ == "__main__":
    main()
