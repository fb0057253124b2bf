#!/usr/bin/env python3
"""Per-stage A/B of two vmoe binaries' training steps on a shared, noisy machine.

Runs `vmoe bench --train --json` with the two binaries back to back, ROUNDS times in
turn, and prints for every stage (and the whole step) the median ms of each and the
median of the per-round new/old ratios: a pair that ran back to back shares the
machine's slow or fast phase, so its ratio is steadier than either column.

    scripts/bench_stages_ab.py OLD_BINARY NEW_BINARY MODEL [ROUNDS (6)] [SECONDS (3)]
"""
import json
import statistics
import subprocess
import sys


def stages(binary, model, seconds):
    out = subprocess.run([binary, 'bench', '--train', '-m', model, '--seconds', seconds, '--no-ceiling', '--json'],
                         capture_output=True, text=True, check=True).stdout
    j = json.loads(out)
    per_step = {'fwd ' + k: v for k, v in j['stage_ms_per_step']['forward'].items()}
    per_step.update({'bwd ' + k: v for k, v in j['stage_ms_per_step']['backward'].items()})
    per_step['step (ms per %d images)' % j['batch']] = j['batch'] * 1000 / j['images_per_s']
    return per_step


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    old, new, model = sys.argv[1:4]
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 6
    seconds = sys.argv[5] if len(sys.argv) > 5 else '3'
    pairs = {}
    for _ in range(rounds):
        o, n = stages(old, model, seconds), stages(new, model, seconds)
        for k in o:
            pairs.setdefault(k, []).append((o[k], n[k]))
    print('| stage | old ms (median) | new ms (median) | new/old per round: median [min, max] |')
    print('|---|---|---|---|')
    for k, v in pairs.items():
        if statistics.median(a for a, _ in v) < 0.5:  # stages the model does not have, or too short to time
            continue
        ratios = [b / a for a, b in v]
        print('| %s | %.1f | %.1f | %.2f [%.2f, %.2f] |' % (k, statistics.median(a for a, _ in v),
              statistics.median(b for _, b in v), statistics.median(ratios), min(ratios), max(ratios)))


if __name__ == '__main__':
    main()
