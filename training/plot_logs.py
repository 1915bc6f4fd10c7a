"""Plot the training curves of the bundled models from their training logs.

The logs are the JSON lines that ``training/train.py --log-every N`` prints (one object per logged
step: ``step``, ``loss_ans``, ``loss_lm``, ``far_exact``, ``pb_exact``, ...). They are not kept in
the repository; docs/training.md says how to get them back from the git history. Usage::

    python3 training/plot_logs.py --logs benchmarks/results/train_logs --out docs/training_curves.png

Three panels:
1. samba-tiny's round-9 chain (pb5 -> pb14 -> pk -> pk2 -> pk3 -> pk3e -> pk3f), steps concatenated:
   answer loss and language-model loss;
2. the same chain: ``pb_exact`` (phonebook rows answered exactly) and ``far_exact`` (passkey rows
   whose key lies beyond the attention window, answered exactly);
3. round 1: ``far_exact`` of the four passkey recipes (only decay-only time dilation learns it).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

# The bundled samba-tiny's history, oldest first: (label, log file relative to --logs).
SAMBA_CHAIN: list[tuple[str, str]] = [
    ("pb5", "round9/pb5.log"),
    ("pb14", "round9/pb14.log"),
    ("pk", "round9/pk.log"),
    ("pk2", "round9/pk2.log"),
    ("pk3", "round9/pk3.log"),
    ("pk3e", "round9/cpu-pk3e.log"),
    ("pk3f", "round9/cpu-pk3f.log"),
]
ROUND1: list[tuple[str, str]] = [
    ("base", "round1-base.log"),
    ("dtall", "round1-dtall.log"),
    ("dtdecay", "round1-dtdecay.log"),
    ("dtdecayhi", "round1-dtdecayhi.log"),
]


def read_log(path: Path) -> list[dict]:
    """Return the JSON records of one training log (lines that start with ``{``), in order."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("{"):
                records.append(json.loads(line))
    return records


def smooth(values: list[float], k: int = 5) -> list[float]:
    """Trailing mean over ``k`` logged points (each point is a single batch, so it is noisy)."""
    out = []
    for i in range(len(values)):
        window = [v for v in values[max(0, i - k + 1) : i + 1] if v is not None]
        out.append(sum(window) / len(window) if window else float("nan"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logs", required=True, help="folder holding round1-*.log and round9/*.log")
    ap.add_argument("--out", required=True, help="PNG file to write")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = Path(args.logs)
    fig, axes = plt.subplots(3, 1, figsize=(9, 10))
    offset = 0
    for label, rel in SAMBA_CHAIN:
        recs = read_log(logs / rel)
        steps = [offset + r["step"] for r in recs]
        axes[0].plot(steps, smooth([r["loss_ans"] for r in recs]), color="C0", lw=1)
        axes[0].plot(steps, smooth([r["loss_lm"] for r in recs]), color="C1", lw=1)
        pb = [(s, r["pb_exact"]) for s, r in zip(steps, recs) if r.get("pb_exact") is not None]
        far = [(s, r["far_exact"]) for s, r in zip(steps, recs) if r.get("far_exact") is not None]
        if pb:
            axes[1].plot(*zip(*pb), color="C2", lw=1)
        if far:
            axes[1].plot(*zip(*far), color="C3", lw=1)
        for ax in axes[:2]:
            ax.axvline(offset, color="0.8", lw=0.8)
        if label != "pk3f":  # pk3e and pk3f are a few hundred CPU steps: one label for both
            axes[0].text(
                offset,
                1.02,
                "pk3e/f" if label == "pk3e" else label,
                transform=axes[0].get_xaxis_transform(),
                fontsize=8,
            )
        offset = steps[-1] if steps else offset
    axes[0].set_yscale("log")
    axes[0].set_ylim(1e-4, 20)  # a batch answered perfectly logs 0.0; the floor keeps it on the plot
    axes[0].set_ylabel("loss (mean of 5 logged batches)")
    from matplotlib.lines import Line2D

    def key(color: str, text: str) -> Line2D:
        return Line2D([], [], color=color, label=text)

    axes[0].legend(handles=[key("C0", "answer tokens"), key("C1", "other tokens")], loc="upper right", fontsize=8)
    axes[0].set_title("samba-tiny, round 9 chain (steps concatenated)", pad=14)
    axes[1].set_ylabel("exact answers (one batch)")
    axes[1].legend(
        handles=[key("C2", "phonebook rows"), key("C3", "passkey rows, key beyond the window")],
        loc="center right",
        fontsize=8,
    )
    axes[1].set_xlabel("optimizer step")
    for label, rel in ROUND1:
        recs = [r for r in read_log(logs / rel) if r.get("far_exact") is not None]
        axes[2].plot([r["step"] for r in recs], smooth([r["far_exact"] for r in recs]), lw=1, label=label)
    axes[2].set_title("round 1: passkey beyond the window, four recipes")
    axes[2].set_ylabel("far_exact (mean of 5)")
    axes[2].set_xlabel("optimizer step")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    tmp = args.out + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
