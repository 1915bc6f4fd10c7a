"""Where the fuzzers' committed seed corpus lives: tests/fixtures/fuzz_corpus/<target dir>/
(valid files, seeded mutants and regression inputs), with the other test fixtures."""
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "fuzz_corpus"
