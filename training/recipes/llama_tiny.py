"""The earlier llama-tiny baseline (sha256 8cef42fc...a47179): the default mixture, then a phonebook fine-tune on
books of at most 12 entries (docs/training.md). The bundled llama-tiny comes from llama_tiny_pbfirst."""

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
