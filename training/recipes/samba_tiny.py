"""The bundled samba-tiny: phonebook first, then passkey, then the window edge (docs/training.md).

Seven steps, each continuing the previous file (``--init``). The first five ran on one H200, the last two
on 2 CPU cores; ``--minutes`` is a wall-clock budget, so the step counts depend on the machine.
"""

PB = ["--p-passkey", "0", "--p-phonebook", "1.0", "--pb-fewshot-loss", "--lm-weight", "0.1"]
MIX = ["--pb-max-entries", "14", "--pb-fewshot-loss", "--lm-weight", "0.1", "--dt-aug-mode", "decay",
       "--dt-aug-rows", "no-phonebook"]
CPU = ["--device", "cpu", "--max-len", "1024", "--tokens-per-step", "8192", "--stages", "1:1024",
       "--log-every", "10", "--lr", "3e-4", "--dt-aug", "0.3"]

MODEL = "samba-tiny"
# (name, options); train.py adds --model, --out and, from the second step on, --init <previous file>
STEPS = [
    ("pb5", ["--minutes", "1.6", "--window", "512", *PB, "--pb-max-entries", "5", "--lr", "3e-3",
             "--warmup", "100", "--max-len", "192", "--stages", "1:192"]),
    ("pb14", ["--minutes", "1.4", *PB, "--pb-max-entries", "14", "--lr", "2e-3", "--warmup", "50",
              "--max-len", "512", "--stages", "1:512", "--eval-long"]),
    ("pk", ["--minutes", "4.7", "--p-passkey", "0.6", "--p-phonebook", "0.25", *MIX, "--pk-far", "0.8",
            "--dt-aug", "0.5", "--stages", "0.45:1024,0.75:2048,1:4096", "--eval-long"]),
    ("pk2", ["--minutes", "8.8", "--p-passkey", "0.7", "--p-phonebook", "0.2", *MIX, "--pk-far", "0.8",
             "--dt-aug", "0.5", "--stages", "0.5:1024,0.8:2048,1:4096", "--eval-long"]),
    ("pk3", ["--minutes", "9.1", "--p-passkey", "0.8", "--p-phonebook", "0.15", *MIX, "--pk-far", "1.0",
             "--dt-aug", "0.3", "--lr", "1.5e-3", "--warmup", "50", "--stages", "0.6:1024,0.85:2048,1:4096",
             "--eval-long"]),
    ("pk3e", [*CPU, *MIX, "--seed", "0", "--minutes", "12", "--p-passkey", "0.6", "--p-phonebook", "0.25",
              "--pk-far", "0.3", "--pk-edge", "0.6", "--warmup", "20"]),
    ("pk3f", [*CPU, *MIX, "--seed", "1", "--minutes", "15", "--p-passkey", "0.7", "--p-phonebook", "0.2",
              "--pk-far", "0.2", "--pk-edge", "0.8", "--warmup", "10"]),
]
