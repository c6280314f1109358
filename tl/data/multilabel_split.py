"""Seeded iterative stratification for multi-label sets (Sechidis, Tsoumakas and Vlahavas, ECML 2011).

A random split of a multi-label set can leave a rare class out of the validation set, and then that class can be
neither measured nor given a threshold. Iterative stratification deals out the images of the rarest class first,
each to the split that still wants most of that class. Written here (40 lines) rather than taken from
scikit-multilearn or iterative-stratification: neither is a dependency of tl, both pull in scikit-learn and scipy,
and neither lets the split be reproduced from tl's seed alone. One change from the paper: where a class has at
least one image per split, its first images go one to each split that has none of it yet, so a class of 3 images
reaches train, val and test whatever the fractions (wanting "at least one" was not enough: at 0.7/0.15/0.15 train
still wanted more after its first and took the second).
"""

from __future__ import annotations

import random


def iterative_split(labels: list[tuple[int, ...]], fractions: dict[str, float], seed: int) -> dict[str, list[int]]:
    """{split: sorted indices} with ``fractions`` (summing to 1) of the images and of every class's images.

    Images without a label are dealt out last, to the split that wants most images."""
    names = [name for name, share in fractions.items() if share > 0]
    rng = random.Random(seed)
    order = list(range(len(labels)))
    rng.shuffle(order)  # ties are broken by this order, so the seed decides them
    counts: dict[int, int] = {}
    for row in labels:
        for c in row:
            counts[c] = counts.get(c, 0) + 1
    want_images = {name: fractions[name] * len(labels) for name in names}
    want = {name: {c: max(fractions[name] * n, 1.0 if n >= len(names) else 0.0) for c, n in counts.items()} for name in names}
    result: dict[str, list[int]] = {name: [] for name in names}
    left = set(order)
    remaining = dict(counts)
    got = {name: {c: 0 for c in counts} for name in names}

    def give(index: int, name: str) -> None:
        result[name].append(index)
        left.discard(index)
        want_images[name] -= 1
        for c in labels[index]:
            want[name][c] -= 1
            remaining[c] -= 1
            got[name][c] += 1

    while any(remaining.values()):
        rarest = min((c for c, n in remaining.items() if n > 0), key=lambda c: (remaining[c], c))
        for index in [i for i in order if i in left and rarest in labels[i]]:
            empty = [name for name in names if not got[name][rarest]]
            pool = empty if empty and counts[rarest] >= len(names) else names
            best = max(pool, key=lambda name: (want[name][rarest], want_images[name], -names.index(name)))
            give(index, best)
    for index in [i for i in order if i in left]:  # images of no class
        give(index, max(names, key=lambda name: (want_images[name], -names.index(name))))
    return {name: sorted(result.get(name, [])) for name in fractions}
