"""Make the example CSVs in this folder (deterministic; run from anywhere).

* ``digits.csv`` — long layout: scikit-learn's 8x8 handwritten digits, each image read row by row,
  so a sequence of 8 steps with 8 pixel features; target ``label`` (10 classes).
* ``timing.csv`` — long layout: a timing/counting task of the kind where peephole connections help
  (Gers, Schraudolph & Schmidhuber 2002): a sequence of noise with two spikes; the target is the
  number of steps between the spikes (regression), which needs precise internal timing.
* ``seasonal.csv`` — series layout: three monthly demand series with trend, yearly seasonality and
  noise, on different scales; forecast the next 6 months.
* ``reviews.csv`` — text layout: short product reviews (``id, text, label``) whose verdict may be
  negated ("not bad at all") or turned by a "but" late in the text, so word order matters; target
  ``label`` (great / other).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent


def digits() -> pd.DataFrame:
    from sklearn.datasets import load_digits

    d = load_digits()
    img = d.images.astype(np.float32)  # (n, 8, 8)
    n = len(img)
    df = pd.DataFrame(img.reshape(n * 8, 8), columns=[f"px{j}" for j in range(8)])
    df.insert(0, "step", np.tile(np.arange(8), n))
    df.insert(0, "id", np.repeat(np.arange(n), 8))
    df["label"] = np.repeat(d.target, 8)
    return df


def timing(n: int = 1200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(30, 51, size=n)
    rows = []
    for i, length in enumerate(lengths):
        first = rng.integers(1, 10)
        gap = rng.integers(3, length - first - 1)
        x = rng.normal(0, 0.1, size=length)
        x[first] += 1.0
        x[first + gap] += 1.0
        rows.append(pd.DataFrame({"id": i, "t": np.arange(length), "signal": x.round(4),
                                  "interval": int(gap)}))
    return pd.concat(rows, ignore_index=True)


def seasonal(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for k, (scale, trend, months) in enumerate([(100.0, 0.4, 180), (2500.0, 6.0, 150), (12.0, 0.02, 120)]):
        t = np.arange(months)
        y = scale * (1 + 0.3 * np.sin(2 * np.pi * t / 12) + 0.1 * np.cos(2 * np.pi * t / 6))
        y = y + trend * t + rng.normal(0, 0.04 * scale, size=months)
        dates = pd.date_range("2010-01-01", periods=months, freq="MS")
        frames.append(pd.DataFrame({"series": f"s{k}", "date": dates.strftime("%Y-%m-%d"),
                                    "value": y.round(3)}))
    return pd.concat(frames, ignore_index=True)


def reviews(n: int = 1500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    things = ["coffee", "tea", "granola", "hot sauce", "dog food", "cereal", "olive oil", "chocolate", "pasta"]
    good = ["great", "delicious", "excellent", "tasty", "fresh", "wonderful", "perfect"]
    bad = ["bad", "stale", "bland", "awful", "bitter", "disappointing", "greasy"]
    filler = ["I bought this for my family.", "Shipping was quick.", "The price was fair.",
              "We tried it last week.", "The package was a bit dented.", "My kids ate it for breakfast."]
    rows = []
    for i in range(n):
        thing = str(rng.choice(things))
        positive = bool(rng.random() < 0.6)
        negated = bool(rng.random() < 0.3)
        word = str(rng.choice(bad if positive == negated else good))
        tail = " at all" if negated and rng.random() < 0.5 else ""
        verdict = f"The {thing} is {'not ' if negated else ''}{word}{tail}."
        first = positive
        if rng.random() < 0.25:  # an opening that the end of the review turns around
            first = not positive
            verdict = f"At first I thought it was {str(rng.choice(good if first else bad))}, but " + \
                verdict[0].lower() + verdict[1:]
        parts = list(rng.choice(filler, size=int(rng.integers(0, 4)), replace=False)) + [verdict]
        rows.append({"id": i, "text": " ".join(parts), "label": "great" if positive else "other"})
    return pd.DataFrame(rows)


def main() -> None:
    digits().to_csv(HERE / "digits.csv", index=False)
    timing().to_csv(HERE / "timing.csv", index=False)
    seasonal().to_csv(HERE / "seasonal.csv", index=False)
    reviews().to_csv(HERE / "reviews.csv", index=False)


if __name__ == "__main__":
    main()
