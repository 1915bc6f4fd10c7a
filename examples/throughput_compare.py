"""Prefill and decode throughput of Samba vs a same-size full-attention (Llama-style)
baseline, with random weights (speed does not depend on the weights).

    python3 examples/throughput_compare.py
    python3 examples/throughput_compare.py --config samba-10m --lengths 1024,4096,16384
"""

from __future__ import annotations

import argparse

from samba_ext.eval import throughput


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="samba-tiny", help="a SambaConfig preset name")
    ap.add_argument("--lengths", default="512,1024,2048")
    ap.add_argument("--total-tokens", type=int, default=4096)
    ap.add_argument("--gen-lengths", default="64,256")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--png", default=None)
    args = ap.parse_args()

    result = throughput(
        [args.config, f"{args.config}:llama"],
        prompt_lengths=[int(x) for x in args.lengths.split(",")],
        total_tokens=args.total_tokens,
        gen_lengths=[int(x) for x in args.gen_lengths.split(",")],
        batch_size=args.batch_size,
    )
    print(result)
    if args.png:
        result.plot(args.png)
        print("wrote", args.png)


if __name__ == "__main__":
    main()
