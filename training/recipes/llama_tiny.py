"""The bundled llama-tiny: the default mixture, then a phonebook fine-tune (docs/training.md)."""

MODEL = "llama-tiny"
# (name, options); train.py adds --model, --out and, from the second step on, --init <previous file>
STEPS = [
    ("llama", ["--minutes", "7", "--eval-long"]),
    (
        "llama-pb",
        [
            "--minutes",
            "8.3",
            "--p-passkey",
            "0.25",
            "--p-phonebook",
            "0.7",
            "--pb-max-entries",
            "12",
            "--pb-fewshot-loss",
            "--lm-weight",
            "0.1",
            "--lr",
            "2e-3",
            "--warmup",
            "50",
            "--stages",
            "0.4:512,0.8:1024,1:4096",
            "--eval-long",
        ],
    ),
]
