"""The phonebook phase that starts samba-tiny's schedule (docs/training.md): books of up to 5 entries in
192-token rows, then up to 14 in 512-token rows, phonebook rows only, so that the model learns to copy each
digit before anything else. Shared by the recipes that follow that schedule."""

PB = ["--p-passkey", "0", "--p-phonebook", "1.0", "--pb-fewshot-loss", "--lm-weight", "0.1"]


def steps(first_extra: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """The two steps ``pb5`` and ``pb14``; ``first_extra`` adds model options to the first (later
    steps inherit the model from the file they continue)."""
    pb5 = ["--minutes", "1.6", *(first_extra or []), *PB, "--pb-max-entries", "5", "--lr", "3e-3"]
    pb14 = ["--minutes", "1.4", *PB, "--pb-max-entries", "14", "--lr", "2e-3"]
    return [
        ("pb5", [*pb5, "--warmup", "100", "--max-len", "192", "--stages", "1:192"]),
        ("pb14", [*pb14, "--warmup", "50", "--max-len", "512", "--stages", "1:512", "--eval-long"]),
    ]
