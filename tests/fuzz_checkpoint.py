"""Fuzzes the restricted DeepMind checkpoint loader (run by
tests/integration/test_weights_fuzz.py in a subprocess, so a crash of the interpreter
is a test failure, not a dead test runner).

    python tests/fuzz_checkpoint.py FIXTURE WORKDIR [N] [SEED]

Applies N mutations (default 2,000) to FIXTURE: single-byte changes (half
at the pickle's opcodes and small arguments, where structure lives, half
anywhere) and truncations (a quarter of N), loads each with
`load_deepmind_checkpoint`, and prints one JSON line of counts. Before each
load it prints the mutation, so a crash names the one that caused it.
"""

import json
import os
import pickletools
import random
import sys

from keras_nfnets.weights import CheckpointError, load_deepmind_checkpoint


def structural_offsets(data):
    """Offsets of opcodes and of every argument byte except large raw
    array payloads."""
    offsets = []
    ops = list(pickletools.genops(data))
    for (op, arg, pos), nxt in zip(ops, ops[1:] + [(None, None, len(data))]):
        end = nxt[2]
        if isinstance(arg, bytes) and len(arg) > 16:
            end = pos + 1 + (end - pos - 1 - len(arg))  # opcode + length
        offsets.extend(range(pos, end))
    return offsets


def main(fixture, workdir, n=2000, seed=0):
    data = open(fixture, "rb").read()
    rng = random.Random(seed)
    structural = structural_offsets(data)
    n_truncations = n // 4
    n_bytes = n - n_truncations
    cases = []
    for i in range(n_bytes):
        pos = (rng.choice(structural) if i % 2 == 0
               else rng.randrange(len(data)))
        value = rng.randrange(256)
        if value == data[pos]:
            value = (value + 1) % 256
        cases.append(("byte", pos, value))
    for _ in range(n_truncations):
        cases.append(("truncate", rng.randrange(len(data)), None))
    path = os.path.join(workdir, "mutated_haiku.npz")
    counts = {"mutations": n_bytes, "truncations": n_truncations,
              "loaded": 0, "checkpoint_error": 0, "other_exception": 0,
              "crashes": 0}
    others = []
    for kind, pos, value in cases:
        mutated = (data[:pos] + bytes([value]) + data[pos + 1:]
                   if kind == "byte" else data[:pos])
        with open(path, "wb") as f:
            f.write(mutated)
        print(f"case {kind} {pos} {value}", file=sys.stderr, flush=True)
        try:
            load_deepmind_checkpoint(path)
            counts["loaded"] += 1
        except CheckpointError as e:
            counts["checkpoint_error"] += 1
            if path not in str(e):
                counts["other_exception"] += 1
                others.append(f"{kind}@{pos}: message lacks the file: {e}")
        except BaseException as e:  # pylint: disable=broad-except
            counts["other_exception"] += 1
            others.append(f"{kind}@{pos}={value}: {type(e).__name__}: {e}")
    counts["other_examples"] = others[:10]
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *[int(a) for a in sys.argv[3:5]])
