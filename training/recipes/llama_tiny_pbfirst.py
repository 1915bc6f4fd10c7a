"""llama-tiny trained from scratch with samba-tiny's schedule (docs/training.md): phonebooks first (books
of up to 5, then 14 entries), then books as long as rows of up to 4,096 tokens mixed with passkeys, so that
the Transformer baseline looks books up inside its training length. The bundled llama-tiny is the output
of its last step, ``long12cpu`` (docs/training.md). Three device calls of under 10 minutes each (``--to long1``;
``--from long2 --init long1.safetensors --to long3``; ``--only long9 --init long3.safetensors``), then three
steps on 2 CPU cores (``--from long10cpu --init long9.safetensors``), each continuing the previous step's
file: ``long9`` trains on books of at least 100 entries, ``long10cpu`` gives half of the rows back to text at
a quarter of the learning rate, ``long11cpu`` and ``long12cpu`` draw 50% and then 15% of the books' lookups
from their first quarter (``--pb-early``), the lookups 3-4K tokens back that the model missed most.
"""

from recipes import phonebook_first

MODEL = "llama-tiny"
LONG = ["--pb-fewshot-loss", "--lm-weight", "0.1"]  # no --pb-max-entries: books fill the row
STEPS = [
    *phonebook_first.steps(),
    (
        "long1",
        [
            "--minutes",
            "5",
            *LONG,
            "--p-passkey",
            "0.2",
            "--p-phonebook",
            "0.7",
            "--lr",
            "1.5e-3",
            "--warmup",
            "50",
            "--stages",
            "0.3:1024,0.7:2048,1:4096",
            "--eval-long",
        ],
    ),
    (
        "long2",
        [
            "--minutes",
            "4",
            *LONG,
            "--p-passkey",
            "0.15",
            "--p-phonebook",
            "0.8",
            "--lr",
            "1e-3",
            "--warmup",
            "30",
            "--stages",
            "0.2:2048,1:4096",
            "--eval-long",
        ],
    ),
    (
        "long3",
        [
            "--minutes",
            "3.5",
            *LONG,
            "--p-passkey",
            "0.1",
            "--p-phonebook",
            "0.85",
            "--lr",
            "6e-4",
            "--warmup",
            "20",
            "--stages",
            "1:4096",
            "--eval-long",
        ],
    ),
    (
        "long9",
        [
            "--minutes",
            "5.5",
            "--max-len",
            "4096",
            *LONG,
            "--tokens-per-step",
            "16384",
            "--seed",
            "11",
            "--p-passkey",
            "0.1",
            "--p-phonebook",
            "0.85",
            "--pb-min-entries",
            "100",
            "--lr",
            "2e-4",
            "--warmup",
            "20",
            "--stages",
            "1:4096",
            "--eval-long",
        ],
    ),
    (
        "long10cpu",
        [
            "--device",
            "cpu",
            "--threads",
            "2",
            "--minutes",
            "35",
            "--max-len",
            "4096",
            *LONG,
            "--tokens-per-step",
            "8192",
            "--seed",
            "12",
            "--p-passkey",
            "0.05",
            "--p-phonebook",
            "0.5",
            "--pb-min-entries",
            "100",
            "--lr",
            "5e-5",
            "--warmup",
            "20",
            "--stages",
            "1:4096",
            "--eval-long",
        ],
    ),
    *[
        (
            name,
            [
                "--device",
                "cpu",
                "--threads",
                "2",
                "--minutes",
                minutes,
                "--max-len",
                "4096",
                *LONG,
                "--tokens-per-step",
                "8192",
                "--seed",
                seed,
                "--p-passkey",
                "0.05",
                "--p-phonebook",
                "0.6",
                "--pb-min-entries",
                "110",
                "--pb-early",
                early,
                "--lr",
                lr,
                "--warmup",
                "20",
                "--stages",
                "1:4096",
                "--eval-long",
            ],
        )
        # long11cpu: half of the lookups from the first quarter of the book; long12cpu: 15%
        for name, minutes, seed, early, lr in (
            ("long11cpu", "35", "13", "0.5", "1e-4"),
            ("long12cpu", "30", "14", "0.15", "5e-5"),
        )
    ],
]
