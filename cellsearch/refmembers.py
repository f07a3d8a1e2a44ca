"""References as ensemble members: ridge, 1-NN, ROCKET, TF-IDF and the naive forecasts as models an ensemble can hold.

The search shows simple references beside its networks (``cellsearch.references``). On a few dozen
sequences a reference may beat every network, or help them: a linear model on the whole sequence
sees what a recurrent network reads step by step differently, and their errors differ. So the ridge
reference also enters the ensemble library as a candidate: fitted on each fold's training rows as
the networks are, its out-of-fold outputs next to theirs, and a Caruana ensemble may mix them
(``cellsearch.ensemble``). Exported, it is one more member of the bundle's ``EnsembleModel``:
``predict``, ``cellsearch.load``, the MLflow pyfunc, serving and the ONNX graph
(``cellsearch.onnx_export.reference_onnx``) run it like the networks.

``RidgeMember`` is a ``torch.nn.Module`` with the networks' interface (``forward(x, lengths)``,
outputs in their units): the sequence resampled to a fixed length (linear interpolation over its
real steps, as the reference does), flattened, one linear map. For classification it is made
probabilistic: ridge's one-vs-rest decision values times a temperature fitted on the out-of-fold rows
(lowest log-loss), through a softmax; its outputs are log-probabilities, which the ensemble averages
as probabilities like the networks' logits. ``NeighbourMember`` is 1-NN made probabilistic the same
way (a softmax over minus the distances to the stored training sequences), where those sequences are
few enough to store (``MAX_BANK``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from cellsearch.tasks import get_task

#: Ridge penalties tried (leave-one-out picks one), for the reference and the member alike.
ALPHAS = np.logspace(-3, 3, 13)
#: Temperatures tried for ridge's decision values (classification).
TEMPERATURES = np.logspace(-1, 3, 41)
#: The key a reference member takes among trial numbers (members of an ensemble are keyed by trial).
MEMBER_KEYS = {"ridge": -1, "1nn": -2, "tfidf": -3, "naive": -4, "seasonal_naive": -5, "rocket": -6, "theta": -7,
               "damped": -8, "drift": -9}
#: A 1-NN member stores its training sequences: none above this many stored numbers.
MAX_BANK = 10_000_000
#: The TF-IDF member keeps the pairs of neighbouring word pieces of its training documents in a table
#: of a power of two of slots at least this many times the distinct pairs (a quarter full at most) ...
PAIR_ROOM = 4
#: ... within these bounds, and with at most ``MAX_TFIDF_WEIGHTS`` weights in all (many classes) ...
PAIR_BUCKETS = (1 << 12, 1 << 21)
MAX_TFIDF_WEIGHTS = 1 << 23
#: ... each pair in one of two slots, ``(first * PAIR_PRIME + second)`` or ``(second * PAIR_PRIME + first + 1)``
#: modulo the slots (``pair_slots``).
PAIR_PRIME = 1_000_003
#: A pair whose two slots are taken moves others on to their other slot, at most this many times.
CUCKOO_MOVES = 500
#: The ROCKET member: this many random convolution kernels (two features each) of this length ...
ROCKET_KERNELS = 2_000
ROCKET_WIDTH = 9
#: ... fitted only where transforming the training rows takes at most this many multiply-adds.
ROCKET_WORK = 1e11
#: ... transformed this many (row, kernel, step) numbers at a time (memory).
ROCKET_CHUNK = 1 << 24
#: Windows a member fitted on each window (theta, the damped trend) forecasts at a time (memory).
LOCAL_CHUNK = 2048
#: Classification probabilities of a 1-NN member are mixed with this much of the uniform (no zeros).
NN_FLOOR = 1e-4


def at_temperature(decision: torch.Tensor, task: str, temperature: float) -> torch.Tensor:
    """A linear member's outputs from its decision values: log-probabilities (a softmax of the
    values times ``temperature``) for classification, the values themselves otherwise."""
    if get_task(task).labels:
        return torch.log_softmax(decision * temperature, dim=1)
    return decision


def check_sizes(d: dict[str, Any], keys: tuple[str, ...], kind: str) -> None:
    """Refuse a ``kind`` member's description (``from_description``) whose ``keys`` are not sizes in 1..10^7."""
    for key in keys:
        if not 1 <= int(d[key]) <= 10_000_000:
            raise ValueError(f"{kind} member: {key} {d[key]} out of range")


def resample(x: np.ndarray, lengths: np.ndarray, length: int) -> np.ndarray:
    """Each padded sequence's real steps linearly resampled to ``length`` steps: (N, length, F)."""
    n, _, f = x.shape
    pos = np.linspace(0.0, 1.0, length)[None, :] * (np.maximum(lengths, 1) - 1)[:, None]  # (N, L)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(lengths, 1)[:, None] - 1)
    w = (pos - lo)[:, :, None]
    rows = np.arange(n)[:, None]
    return (x[rows, lo] * (1 - w) + x[rows, hi] * w).astype(np.float32)


def resample_torch(x: torch.Tensor, lengths: torch.Tensor, length: int) -> torch.Tensor:
    """``resample`` in torch: each sequence's real steps linearly resampled to
    ``length`` steps, (N, length, F)."""
    n = lengths.clamp(min=1).to(x.dtype)
    pos = torch.linspace(0.0, 1.0, length, dtype=x.dtype, device=x.device)[None, :] * (n - 1)[:, None]
    lo = pos.floor().long()
    hi = torch.minimum(lo + 1, (lengths.clamp(min=1) - 1)[:, None].long())
    w = (pos - lo.to(x.dtype))[:, :, None]
    idx_lo = lo[:, :, None].expand(-1, -1, x.shape[2])
    idx_hi = hi[:, :, None].expand(-1, -1, x.shape[2])
    return x.gather(1, idx_lo) * (1 - w) + x.gather(1, idx_hi) * w


class RidgeMember(nn.Module):
    """Ridge on the resampled, flattened sequence, in the networks' output units (module doc)."""

    kind = "ridge"
    #: Whether the temperature is chosen for this task (regression's ridge has none to choose).
    tuned_for_values = False

    def __init__(self, input_size: int, length: int, n_outputs: int, task: str, temperature: float = 1.0) -> None:
        super().__init__()
        self.input_size, self.length, self.n_outputs, self.task = input_size, length, n_outputs, task
        self.temperature = float(temperature)
        self.linear = nn.Linear(input_size * length, n_outputs)

    def decision(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The linear map's outputs: the values, or the decision values before temperature and softmax."""
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
        return self.linear(resample_torch(x.float(), lengths.to(x.device), self.length).flatten(1))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return at_temperature(self.decision(x, lengths), self.task, self.temperature)

    @property
    def arch(self) -> str:
        return f"ridge/{self.length}"

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def macs_per_sequence(self, length: int) -> int:
        """One multiply-add per weight (the resampling's few per step are not counted)."""
        return self.input_size * self.length * self.n_outputs

    def describe(self) -> dict[str, Any]:
        return {"reference": self.kind, "input_size": self.input_size, "length": self.length,
                "n_outputs": self.n_outputs, "task": self.task, "temperature": self.temperature}

    @classmethod
    def fits(cls, n_train: int, dim: int) -> bool:
        """Ridge stores one weight per input number and output: always."""
        return True

    @classmethod
    def fit(cls, train: Any, task: str, length: int, n_outputs: int, prep: Any = None) -> RidgeMember:
        return fit_ridge(train, task, length, n_outputs)

    @classmethod
    def from_description(cls, d: dict[str, Any]) -> RidgeMember:
        check_sizes(d, ("input_size", "length", "n_outputs"), cls.kind)
        if int(d["input_size"]) * int(d["length"]) * int(d["n_outputs"]) > 200_000_000:
            raise ValueError("ridge member: too many weights")
        return cls(int(d["input_size"]), int(d["length"]), int(d["n_outputs"]), str(d["task"]),
                   float(d.get("temperature", 1.0)))


def znormalise(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Each sequence's channels to mean 0 and standard deviation 1 over its real steps (a constant
    channel becomes 0); padding stays 0."""
    real = (np.arange(x.shape[1])[None, :] < lengths[:, None])[:, :, None]
    n = np.maximum(lengths, 1)[:, None, None]
    mean = np.where(real, x, 0).sum(axis=1, keepdims=True) / n
    std = np.sqrt(np.where(real, (x - mean) ** 2, 0).sum(axis=1, keepdims=True) / n)
    return np.where(real, (x - mean) / np.where(std > 1e-8, std, 1.0), 0).astype(np.float32)


def znormalise_torch(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``znormalise`` in torch: each sequence's channels to mean 0 and standard
    deviation 1 over its real steps (a constant channel becomes 0); padding stays 0."""
    real = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).to(x.dtype)[:, :, None]
    n = lengths.clamp(min=1).to(x.dtype)[:, None, None]
    mean = (x * real).sum(dim=1, keepdim=True) / n
    centred = (x - mean) * real
    std = torch.sqrt((centred * centred).sum(dim=1, keepdim=True) / n)
    return centred / torch.where(std > 1e-8, std, torch.ones_like(std)) * real


class NeighbourMember(nn.Module):
    """1-NN made probabilistic: each sequence z-normalised and resampled as the 1-NN reference does,
    its squared distance to every stored training sequence (per number), and a softmax over minus
    those distances times a temperature chosen on the out-of-fold rows (large: the nearest alone, as
    1-NN; small: a smooth vote). The weights average the stored labels (one-hot; a floor of
    ``NN_FLOOR`` of the uniform keeps every probability above 0) or targets."""

    kind = "1nn"
    tuned_for_values = True

    def __init__(self, input_size: int, length: int, n_outputs: int, task: str, n_bank: int,
                 temperature: float = 1.0) -> None:
        super().__init__()
        self.input_size, self.length, self.n_outputs, self.task = input_size, length, n_outputs, task
        self.n_bank, self.temperature = n_bank, float(temperature)
        self.bank = nn.Parameter(torch.zeros(n_bank, input_size * length), requires_grad=False)
        self.values = nn.Parameter(torch.zeros(n_bank, n_outputs), requires_grad=False)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
        lengths = lengths.to(x.device)
        q = resample_torch(znormalise_torch(x.float(), lengths), lengths, self.length).flatten(1)
        d2 = ((q * q).sum(1, keepdim=True) - 2 * q @ self.bank.T + (self.bank * self.bank).sum(1)[None, :]).clamp(min=0)
        w = torch.softmax(-d2 * (self.temperature / q.shape[1]), dim=1)
        out = w @ self.values
        if get_task(self.task).labels:
            return torch.log(out * (1 - NN_FLOOR) + NN_FLOOR / self.n_outputs)
        return out

    @property
    def arch(self) -> str:
        return f"1nn/{self.length}"

    def n_params(self) -> int:
        return self.bank.numel() + self.values.numel()

    def macs_per_sequence(self, length: int) -> int:
        """One multiply-add per stored number (the distances), as the 1-NN reference counts."""
        return self.bank.numel()

    def describe(self) -> dict[str, Any]:
        return {"reference": self.kind, "input_size": self.input_size, "length": self.length,
                "n_outputs": self.n_outputs, "task": self.task, "temperature": self.temperature,
                "n_bank": self.n_bank}

    @classmethod
    def from_description(cls, d: dict[str, Any]) -> NeighbourMember:
        check_sizes(d, ("input_size", "length", "n_outputs", "n_bank"), cls.kind)
        if int(d["input_size"]) * int(d["length"]) * int(d["n_bank"]) > MAX_BANK:
            raise ValueError("1nn member: too many stored numbers")
        return cls(int(d["input_size"]), int(d["length"]), int(d["n_outputs"]), str(d["task"]), int(d["n_bank"]),
                   float(d.get("temperature", 1.0)))

    @classmethod
    def fits(cls, n_train: int, dim: int) -> bool:
        """Whether the training sequences are few enough to store."""
        return n_train * dim <= MAX_BANK

    @classmethod
    def fit(cls, train: Any, task: str, length: int, n_outputs: int, prep: Any = None) -> NeighbourMember:
        """The training rows stored: z-normalised, resampled, flattened, with their labels or targets."""
        bank = resample(znormalise(train.x, train.lengths), train.lengths, length).reshape(len(train.x), -1)
        member = cls(train.x.shape[2], length, n_outputs, task, len(bank))
        y = np.asarray(train.y)
        values = np.eye(n_outputs, dtype=np.float32)[y.astype(np.int64)] if get_task(task).labels else \
            y.reshape(len(y), -1).astype(np.float32)
        with torch.no_grad():
            member.bank.copy_(torch.as_tensor(bank, dtype=torch.float32))
            member.values.copy_(torch.as_tensor(values))
        return member


def fit_ridge(train: Any, task: str, length: int, n_outputs: int) -> RidgeMember:
    """A ``RidgeMember`` fitted on a split's rows (``RidgeClassifierCV`` / ``RidgeCV``, the penalty
    chosen by leave-one-out, as the reference), its temperature still 1."""
    feats = resample(train.x, train.lengths, length).reshape(len(train.x), -1)
    member = RidgeMember(train.x.shape[2], length, n_outputs, task)
    fit_linear(member.linear, feats, np.asarray(train.y), task, n_outputs)
    return member


def fit_linear(linear: nn.Linear, feats: np.ndarray, y: np.ndarray, task: str, n_outputs: int) -> None:
    """Set ``linear`` to ridge on ``feats`` (``ridge_weights``): the ridge and ROCKET members' map."""
    full_w, full_b = ridge_weights(feats, y, task, n_outputs)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(full_w, dtype=torch.float32))
        linear.bias.copy_(torch.as_tensor(full_b, dtype=torch.float32))


def ridge_weights(feats: np.ndarray, y: np.ndarray, task: str, n_outputs: int) -> tuple[np.ndarray, np.ndarray]:
    """(weights (outputs, features), biases) of ridge on ``feats`` (``RidgeClassifierCV`` / ``RidgeCV``,
    the penalty chosen among ``ALPHAS`` by leave-one-out): one decision value per class (two classes:
    ±half the one value; a class no row has: -1e3), or the values."""
    from sklearn.linear_model import RidgeClassifierCV, RidgeCV

    if get_task(task).labels:
        est = RidgeClassifierCV(alphas=ALPHAS).fit(feats, y)
        coef, icpt = np.atleast_2d(est.coef_), np.atleast_1d(est.intercept_)
        full_w = np.zeros((n_outputs, feats.shape[1]))
        full_b = np.zeros(n_outputs)
        classes = np.asarray(est.classes_, dtype=np.int64)
        if len(classes) == 2 and coef.shape[0] == 1:  # one decision value: +d/2 for the second class
            full_w[classes[1]], full_w[classes[0]] = coef[0] / 2, -coef[0] / 2
            full_b[classes[1]], full_b[classes[0]] = icpt[0] / 2, -icpt[0] / 2
        else:
            full_w[classes], full_b[classes] = coef, icpt
        missing = np.setdiff1d(np.arange(n_outputs), classes)  # a class no training row has (either branch)
        full_b[missing] = -1e3
    else:
        est = RidgeCV(alphas=ALPHAS).fit(feats, y.reshape(len(y), -1))
        full_w, full_b = np.atleast_2d(est.coef_), np.atleast_1d(est.intercept_)
    return full_w, full_b


def row_quantiles(a: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``np.quantile(a[i], q[i])`` for every row ``i`` at once, bit for bit as numpy's default (linear)
    method computes it: ROCKET draws a quantile per kernel, and 2,000 separate calls cost seconds of a
    search's budget before its first trial."""
    s = np.sort(a, axis=1)
    virtual = q * (s.shape[1] - 1)
    lo = np.floor(virtual).astype(np.intp)
    hi = np.minimum(lo + 1, s.shape[1] - 1)
    t = virtual - lo
    rows = np.arange(len(s))
    below, above = s[rows, lo], s[rows, hi]
    step = above - below
    return np.where(t >= 0.5, above - step * (1 - t), below + step * t)  # numpy's _lerp, both branches


class RocketMember(nn.Module):
    """Random convolution kernels and ridge — ROCKET (Dempster et al. 2020), the CPU state of the art
    that the data README measures the networks against — as a reference member.

    ``ROCKET_KERNELS`` kernels of ``ROCKET_WIDTH`` weights drawn from a normal and centred, each reading
    one to three random channels, dilated by a power of two up to the median length's reach, zero
    padded ("same"); each kernel's bias is minus a random quantile (0.1-0.9) of its own output on one
    random training sequence (as MiniRocket sets biases: on the data's scale whatever it is). Each
    kernel gives two features over a sequence's real steps: the proportion of positive values (PPV)
    and the maximum; standardised on the training rows, then ridge (``fit_linear``) and, for
    classification, a temperature and a softmax as ``RidgeMember``. Long sequences, where a recurrent
    network buys few trials, are where it helps most; it reads any length."""

    kind = "rocket"
    tuned_for_values = False

    def __init__(self, input_size: int, n_kernels: int, length: int, n_outputs: int, task: str,
                 temperature: float = 1.0) -> None:
        super().__init__()
        self.input_size, self.n_kernels, self.length, self.n_outputs, self.task = (
            input_size, n_kernels, length, n_outputs, task)
        self.temperature = float(temperature)
        self.register_buffer("kernels", torch.zeros(n_kernels, input_size, ROCKET_WIDTH))
        self.register_buffer("bias", torch.zeros(n_kernels))
        self.register_buffer("dilation", torch.ones(n_kernels, dtype=torch.long))
        self.register_buffer("mean", torch.zeros(2 * n_kernels))
        self.register_buffer("std", torch.ones(2 * n_kernels))
        self.linear = nn.Linear(2 * n_kernels, n_outputs)

    def groups(self) -> list[tuple[int, torch.Tensor]]:
        """(dilation, the kernels' indices) for each dilation, in the order features are laid out."""
        return [(int(d), torch.nonzero(self.dilation == d).flatten()) for d in torch.unique(self.dilation)]

    def convolve(self, x: torch.Tensor, lengths: torch.Tensor, bias: bool = True) -> list[torch.Tensor]:
        """Each dilation group's outputs (B, kernels, T) over ``x`` (B, T, F) zeroed after each end."""
        real = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).to(x.dtype)
        xt = (x.float() * real[..., None]).transpose(1, 2)
        return [nn.functional.conv1d(xt, self.kernels[idx], self.bias[idx] if bias else None,
                                     padding=(ROCKET_WIDTH // 2) * d, dilation=d) for d, idx in self.groups()]

    def features(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, 2 x kernels): every kernel's PPV then every kernel's maximum, before standardising;
        computed a few rows at a time (``ROCKET_CHUNK``)."""
        rows = max(1, ROCKET_CHUNK // max(1, self.n_kernels * x.shape[1]))
        out = []
        for s in range(0, x.shape[0], rows):
            xs, ns = x[s:s + rows], lengths[s:s + rows]
            real = torch.arange(xs.shape[1], device=xs.device)[None, None, :] < ns[:, None, None]
            n = ns.clamp(min=1)[:, None].float()
            conv = torch.cat(self.convolve(xs, ns), dim=1)
            ppv = ((conv > 0) & real).sum(-1).float() / n
            top = conv.masked_fill(~real, float("-inf")).amax(-1)
            out.append(torch.cat([ppv, torch.where(torch.isfinite(top), top, torch.zeros_like(top))], dim=1))
        return torch.cat(out) if out else torch.zeros(0, 2 * self.n_kernels)

    def decision(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Ridge's outputs on the standardised features, before temperature and softmax."""
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
        return self.linear((self.features(x, lengths.to(x.device)) - self.mean) / self.safe_std())

    def safe_std(self) -> torch.Tensor:
        """The features' spread, 1 where it is 0 (a feature constant on the training rows)."""
        return torch.where(self.std > 0, self.std, torch.ones_like(self.std))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return at_temperature(self.decision(x, lengths), self.task, self.temperature)

    @property
    def arch(self) -> str:
        return f"rocket{self.n_kernels}"

    def n_params(self) -> int:
        return int(self.linear.weight.numel() + self.linear.bias.numel() + self.kernels.numel() + self.bias.numel())

    def macs_per_sequence(self, length: int) -> int:
        """The kernels' multiply-adds at every step (their channels) and the linear map."""
        per_step = int((self.kernels.abs().sum(-1) > 0).sum()) * ROCKET_WIDTH
        return per_step * length + 2 * self.n_kernels * self.n_outputs

    def describe(self) -> dict[str, Any]:
        return {"reference": self.kind, "input_size": self.input_size, "n_kernels": self.n_kernels,
                "length": self.length, "n_outputs": self.n_outputs, "task": self.task,
                "temperature": self.temperature}

    @classmethod
    def fits(cls, n_train: int, dim: int) -> bool:
        """Where transforming the training rows (about ``dim`` numbers each) costs at most ``ROCKET_WORK``."""
        return n_train * dim * ROCKET_KERNELS * ROCKET_WIDTH <= ROCKET_WORK

    @classmethod
    def fit(cls, train: Any, task: str, length: int, n_outputs: int, prep: Any = None,
            seed: int = 0) -> RocketMember:
        rng = np.random.default_rng(seed)
        n, feats_in = len(train.x), int(train.x.shape[2])
        member = cls(feats_in, ROCKET_KERNELS, length, n_outputs, task)
        reach = max(0, int(np.floor(np.log2(max(1.0, (length - 1) / (ROCKET_WIDTH - 1))))))
        k = ROCKET_KERNELS
        w = np.zeros((k, feats_in, ROCKET_WIDTH), dtype=np.float32)
        for j in range(k):
            chans = rng.choice(feats_in, size=int(rng.integers(1, min(3, feats_in) + 1)), replace=False)
            v = rng.normal(size=(len(chans), ROCKET_WIDTH))
            w[j, chans] = v - v.mean(axis=1, keepdims=True)
        x, lengths = torch.from_numpy(np.ascontiguousarray(train.x)), torch.from_numpy(train.lengths.astype(np.int64))
        with torch.no_grad():
            member.kernels.copy_(torch.from_numpy(w))
            member.dilation.copy_(torch.from_numpy(2 ** rng.integers(0, reach + 1, size=k)))
            # biases: minus a random quantile of each kernel's output on one random training sequence
            order = torch.cat([idx for _, idx in member.groups()]).numpy()
            who, q = rng.integers(0, n, size=k), rng.uniform(0.1, 0.9, size=k)
            bias = np.zeros(k, dtype=np.float32)
            for r in np.unique(who):
                conv = torch.cat(member.convolve(x[r:r + 1], lengths[r:r + 1], bias=False), dim=1)[0].numpy()
                real = conv[:, :max(1, int(lengths[r]))]
                pos = np.flatnonzero(who[order] == r)
                bias[order[pos]] = -row_quantiles(real[pos], q[order[pos]])
            member.bias.copy_(torch.from_numpy(bias))
            f = member.features(x, lengths).double()
            mean, std = f.mean(0), f.std(0, unbiased=False)
            std = torch.where(std > 1e-6, std, torch.ones_like(std))
            member.mean.copy_(mean.float())
            member.std.copy_(std.float())
        fit_linear(member.linear, ((f - mean) / std).numpy(), np.asarray(train.y), task, n_outputs)
        return member

    @classmethod
    def from_description(cls, d: dict[str, Any]) -> RocketMember:
        check_sizes(d, ("input_size", "n_kernels", "length", "n_outputs"), cls.kind)
        if int(d["n_kernels"]) * (int(d["input_size"]) * ROCKET_WIDTH + 2 * int(d["n_outputs"])) > 200_000_000:
            raise ValueError("rocket member: too many weights")
        return cls(int(d["input_size"]), int(d["n_kernels"]), int(d["length"]), int(d["n_outputs"]), str(d["task"]),
                   float(d.get("temperature", 1.0)))


class TfidfMember(nn.Module):
    """TF-IDF of a document's word pieces and their pairs, and a linear model: the text reference as a
    member (token ids in, the networks' outputs out, so it is one more model of the ensemble).

    Features: each word piece (``vocab`` ids) and each pair of neighbours that the training documents
    hold; weights ``(1 + log tf) · idf`` (smooth idf of the training documents), the vector scaled to
    unit length: scikit-learn's ``TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)`` over the
    pieces. A pair the training documents never held is no feature, as a bigram outside
    scikit-learn's vocabulary. The pairs sit in a table of ``buckets`` slots (``pair_keys``: the pair
    each slot holds, ``first * vocab + second``, or -1), each in one of two slots
    (``pair_slots``), so a lookup is two gathers and a comparison, in torch as in ONNX. (An earlier
    member hashed pairs into buckets without keeping which pair a bucket held: a pair unseen in
    training then read the weight of whatever training pairs shared its bucket, and pairs that
    shared one were one feature; on 4,000 food reviews that cost 0.5-1 point of accuracy against
    scikit-learn on the same pieces.) Counting is one ``unique`` over (document, feature) keys, so it
    costs O(tokens log tokens), not a vocabulary-wide vector per document. Fitted by logistic
    regression (classification: the penalty by 3-fold cross-validation; outputs the
    log-probabilities, times the temperature) or ridge."""

    kind = "tfidf"
    tuned_for_values = False

    def __init__(self, vocab: int, buckets: int, unk: int, n_outputs: int, task: str, temperature: float = 1.0) -> None:
        super().__init__()
        self.vocab, self.buckets, self.unk, self.n_outputs, self.task = vocab, buckets, unk, n_outputs, task
        self.input_size = self.length = 1  # one channel: the token ids; no resampling length
        self.temperature = float(temperature)
        self.register_buffer("idf", torch.ones(vocab + buckets))
        self.register_buffer("pair_keys", torch.full((buckets,), -1, dtype=torch.int64))
        self.weight = nn.Parameter(torch.zeros(vocab + buckets, n_outputs))
        self.bias = nn.Parameter(torch.zeros(n_outputs))

    def grams(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The feature index of every token and pair of each document, (N, 2T - 1), and whether it
        is one of the document's own (not padding)."""
        from cellsearch.data.encoders.embedding import kept_ids

        ids = kept_ids(x, self.vocab, self.unk)
        pos = torch.arange(ids.shape[1], device=ids.device)[None, :]
        key = ids[:, :-1] * self.vocab + ids[:, 1:]
        first, second = pair_slots(ids[:, :-1], ids[:, 1:], self.buckets)
        slot = torch.where(self.pair_keys[first] == key, first, second)
        known = self.pair_keys[slot] == key
        real = torch.cat([pos < lengths[:, None], (pos[:, 1:] < lengths[:, None]) & known], dim=1)
        return torch.cat([ids, self.vocab + slot], dim=1), real

    def features(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(feature index, weight) of every token and pair of each document, (N, 2T - 1) each: a
        document's features' weights summed per feature give its TF-IDF vector (0 weight: padding)."""
        return self.weighted(*self.grams(x, lengths))

    def weighted(self, feats: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``features`` from ``grams``' output."""
        keys = torch.arange(len(feats), device=feats.device)[:, None] * (self.vocab + self.buckets) + feats
        _, inverse, counts = torch.unique(torch.where(real, keys, torch.full_like(keys, -1)), return_inverse=True,
                                          return_counts=True)
        tf = counts[inverse].to(torch.float32)
        each = (1 + tf.log()) * self.idf[feats]  # the feature's weight, carried by each of its tf occurrences
        norm = ((each ** 2 / tf) * real).sum(dim=1, keepdim=True).sqrt().clamp(min=1e-12)
        return feats, each / tf * real / norm

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
        feats, w = self.features(x, lengths.to(x.device).long())
        out = (w[..., None] * self.weight[feats]).sum(dim=1) + self.bias
        if get_task(self.task).labels:
            return torch.log_softmax(out * self.temperature, dim=1)
        return out

    @property
    def arch(self) -> str:
        return "tfidf"

    def n_params(self) -> int:
        return int(self.weight.numel() + self.bias.numel() + self.idf.numel() + self.pair_keys.numel())

    def macs_per_sequence(self, length: int) -> int:
        """One multiply-add per output for each token and pair."""
        return (2 * length - 1) * self.n_outputs

    def describe(self) -> dict[str, Any]:
        return {"reference": self.kind, "vocab": self.vocab, "buckets": self.buckets, "unk": self.unk,
                "n_outputs": self.n_outputs, "task": self.task, "temperature": self.temperature}

    @classmethod
    def fits(cls, n_train: int, dim: int) -> bool:
        return True

    @classmethod
    def fit(cls, train: Any, task: str, length: int, n_outputs: int, prep: Any = None) -> TfidfMember:
        from scipy import sparse
        from sklearn.linear_model import RidgeCV

        state = prep.encoders[prep.layout_data["text_col"]]
        x, lengths = torch.from_numpy(train.x), torch.from_numpy(train.lengths.astype(np.int64))
        vocab = int(state["vocab"])
        keys, df = training_pairs(x, lengths, vocab, int(state["unk"]))
        member = cls(vocab, pair_buckets(len(keys), vocab, n_outputs), int(state["unk"]), n_outputs, task)
        with torch.no_grad():
            member.pair_keys.copy_(torch.from_numpy(place_pairs(keys, df, vocab, member.buckets)))
        feats, real = member.grams(x, lengths)
        width = member.vocab + member.buckets
        rows = np.repeat(np.arange(len(train.x)), real.sum(dim=1).numpy())
        cols = feats[real].numpy()
        present = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(train.x), width))
        df = np.asarray((present > 0).sum(axis=0)).ravel()
        with torch.no_grad():
            # a feature no training document holds weighs nothing, as one outside scikit-learn's vocabulary
            idf = np.where(df > 0, np.log((1 + len(train.x)) / (1 + df)) + 1, 0.0)
            member.idf.copy_(torch.as_tensor(idf, dtype=torch.float32))
        _, w = member.weighted(feats, real)
        design = sparse.csr_matrix((w[real].numpy().astype(np.float64), (rows, cols)), shape=(len(train.x), width))
        y = np.asarray(train.y)
        if get_task(task).labels:
            est = logistic(y, [1.0, 3.0, 10.0, 30.0], "neg_log_loss").fit(design, y)
            coef, icpt, classes = np.atleast_2d(est.coef_), np.atleast_1d(est.intercept_), est.classes_
            full_w, full_b = np.zeros((n_outputs, width)), np.full(n_outputs, -1e3)  # -1e3: a class never seen
            classes = np.asarray(classes, dtype=np.int64)
            if len(classes) == 2 and coef.shape[0] == 1:
                full_w[classes[1]], full_w[classes[0]] = coef[0] / 2, -coef[0] / 2
                full_b[classes[1]], full_b[classes[0]] = icpt[0] / 2, -icpt[0] / 2
            else:
                full_w[classes], full_b[classes] = coef, icpt
        else:
            est = RidgeCV(alphas=ALPHAS).fit(design, y.reshape(len(y), -1))
            full_w, full_b = np.atleast_2d(est.coef_), np.atleast_1d(est.intercept_)
        with torch.no_grad():
            member.weight.copy_(torch.as_tensor(full_w.T, dtype=torch.float32))
            member.bias.copy_(torch.as_tensor(full_b, dtype=torch.float32))
        return member

    @classmethod
    def from_description(cls, d: dict[str, Any]) -> TfidfMember:
        check_sizes(d, ("vocab", "buckets", "n_outputs"), cls.kind)
        if (int(d["vocab"]) + int(d["buckets"])) * int(d["n_outputs"]) > 200_000_000:
            raise ValueError("tfidf member: too many weights")
        return cls(int(d["vocab"]), int(d["buckets"]), int(d["unk"]), int(d["n_outputs"]), str(d["task"]),
                   float(d.get("temperature", 1.0)))


class RepeatMember(nn.Module):
    """The naive (``season`` 1) or seasonal naive forecast as an ensemble member: each forecast step
    repeats the window's value one season before it (``cellsearch.tasks.forecasting.seasonal_naive``, as the
    reference computes it), in the networks' window-scaled units. Nothing is fitted; it joins the
    library so that a Caruana ensemble can lean on the reference where the folds show the networks
    overreaching (a panel whose networks beat seasonal naive on the validation origins but not after
    them), and so that the answer is never worse on the folds than the reference shown beside it."""

    tuned_for_values = False
    #: Whether the member repeats the data's season (else the last value: season 1).
    seasonal = False

    def __init__(self, season: int, target_index: int, n_outputs: int, task: str, input_size: int = 1,
                 level_index: int = -1) -> None:
        super().__init__()
        self.season, self.target_index, self.n_outputs, self.task = int(season), int(target_index), n_outputs, task
        self.input_size, self.length, self.temperature = input_size, 1, 1.0
        #: the window's level channel (``cellsearch.data.layouts.series.level_channel``), -1: none
        self.level_index = int(level_index)

    @classmethod
    def serves(cls, prep: Any) -> bool:
        """Whether the data gives this member something of its own: a seasonal member needs a season
        above 1 (else it would repeat the naive member)."""
        return not cls.seasonal or int(prep.layout_data.get("season", 1)) > 1

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        from cellsearch.tasks.forecasting import seasonal_naive

        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
        return seasonal_naive(x[:, :, self.target_index].float(), lengths, self.season, self.n_outputs)

    @property
    def arch(self) -> str:
        return "naive" if self.season <= 1 else f"seasonal naive/{self.season}"

    def n_params(self) -> int:
        return 0

    def macs_per_sequence(self, length: int) -> int:
        """None: a copy of values per output (counted as one each, as the reference is)."""
        return self.n_outputs

    def describe(self) -> dict[str, Any]:
        return {"reference": self.kind, "season": self.season, "target_index": self.target_index,
                "n_outputs": self.n_outputs, "task": self.task, "input_size": self.input_size,
                "level_index": self.level_index}

    @classmethod
    def fits(cls, n_train: int, dim: int) -> bool:
        return True

    @classmethod
    def fit(cls, train: Any, task: str, length: int, n_outputs: int, prep: Any = None) -> RepeatMember:
        season = int(prep.layout_data.get("season", 1)) if cls.seasonal else 1
        return cls(season, int(prep.layout_data.get("target_index", 0)), n_outputs, task, int(train.x.shape[2]),
                   int(prep.layout_data.get("level_index", -1)))

    @classmethod
    def from_description(cls, d: dict[str, Any]) -> RepeatMember:
        check_sizes(d, ("season", "n_outputs", "input_size"), cls.kind)
        if not 0 <= int(d["target_index"]) < int(d["input_size"]):
            raise ValueError(f"{cls.kind} member: target channel {d['target_index']} out of range")
        if not -1 <= int(d.get("level_index", -1)) < int(d["input_size"]):
            raise ValueError(f"{cls.kind} member: level channel {d['level_index']} out of range")
        return cls(int(d["season"]), int(d["target_index"]), int(d["n_outputs"]), str(d["task"]), int(d["input_size"]),
                   int(d.get("level_index", -1)))


class NaiveMember(RepeatMember):
    """The naive forecast (the window's last value repeated) as a member: ``RepeatMember`` of season 1."""

    kind = "naive"


class SeasonalNaiveMember(RepeatMember):
    """The seasonal naive forecast as a member: ``RepeatMember`` of the data's season. Where the season
    is 1 it would repeat the naive member, so it is not fitted (``serves``)."""

    kind = "seasonal_naive"
    seasonal = True


class LocalMember(RepeatMember):
    """A statistical forecast fitted on each input window as it forecasts, nothing fitted across
    windows (``forecaster``, a function of ``cellsearch.tasks.forecasting``, and its cost
    ``macs_of``): it forecasts a trend the naive forecasts cannot make and that networks trained on a
    few dozen series may not learn, so a Caruana ensemble can mix it with them where the folds show it
    helps. Any season (1: no seasonal adjustment)."""

    seasonal = True
    forecaster = ""
    macs_of = ""

    @classmethod
    def serves(cls, prep: Any) -> bool:
        """Any forecast data: a season of 1 only skips the seasonal adjustment."""
        return True

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        from cellsearch.tasks import forecasting

        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
        forecast, target = getattr(forecasting, self.forecaster), x[:, :, self.target_index].float()
        # the series' level in the window's units: a season that grows with it is adjusted by ratios
        level = x[:, 0, self.level_index].double() if self.level_index >= 0 else None
        # a few thousand windows at a time: every grid point holds a state per window (bounded memory)
        return torch.cat([forecast(target[i:i + LOCAL_CHUNK], lengths[i:i + LOCAL_CHUNK], self.season, self.n_outputs,
                                   level=None if level is None else level[i:i + LOCAL_CHUNK])
                          for i in range(0, max(1, len(target)), LOCAL_CHUNK)])

    @property
    def arch(self) -> str:
        return self.kind if self.season <= 1 else f"{self.kind}/{self.season}"

    def macs_per_sequence(self, length: int) -> int:
        from cellsearch.tasks import forecasting

        return int(getattr(forecasting, self.macs_of)(length, self.season, self.n_outputs))


class ThetaMember(LocalMember):
    """The theta method (simple exponential smoothing with drift, seasonal adjustment where the
    window's season is strong, by ratios where its values are positive; ``theta_forecast``): the
    published statistical forecasts of the M3 and M4 competitions lean on it."""

    kind = "theta"
    forecaster = "theta_forecast"
    macs_of = "theta_macs"


class DampedMember(LocalMember):
    """Exponential smoothing with an additive damped trend (``damped_forecast``, ETS(A,Ad,N) on the
    seasonally adjusted window, as theta's): where a trend should flatten out (yearly series), theta's straight
    drift overshoots."""

    kind = "damped"
    forecaster = "damped_forecast"
    macs_of = "damped_macs"


class DriftMember(LocalMember):
    """The random walk with drift (``drift_forecast``: the last value plus the window's mean step, on
    the seasonally adjusted window, as theta's): the trend at the series' own pace, where theta's half
    slope and the damped trend fall short (series that keep growing)."""

    kind = "drift"
    forecaster = "drift_forecast"
    macs_of = "drift_macs"


def pair_buckets(distinct: int, vocab: int, n_outputs: int) -> int:
    """How many slots the TF-IDF member's table of pairs has for ``distinct`` training pairs: a power
    of two at least ``PAIR_ROOM`` times as many, within ``PAIR_BUCKETS`` and the weights' bound."""
    low, high = PAIR_BUCKETS
    room = max(low, MAX_TFIDF_WEIGHTS // max(1, n_outputs) - vocab)
    want = 1 << max(0, PAIR_ROOM * max(1, distinct) - 1).bit_length()
    return int(max(low, min(want, high, 1 << (room.bit_length() - 1))))


def pair_slots(first: Any, second: Any, buckets: int) -> tuple[Any, Any]:
    """The two slots of the table of pairs where the pair (``first``, ``second``) may sit (integer
    arrays or tensors of piece ids; two hashes, so that a pair whose first slot a more frequent pair
    holds has a second chance)."""
    return (first * PAIR_PRIME + second) % buckets, (second * PAIR_PRIME + first + 1) % buckets


def training_pairs(x: torch.Tensor, lengths: torch.Tensor, vocab: int, unk: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct pairs of neighbouring pieces of the documents ``x`` (keys ``first * vocab +
    second``) and how many documents hold each."""
    from cellsearch.data.encoders.embedding import kept_ids

    ids = kept_ids(x, vocab, unk)
    if ids.shape[1] < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    key = ids[:, :-1] * vocab + ids[:, 1:]
    real = torch.arange(ids.shape[1] - 1)[None, :] + 1 < lengths[:, None]
    doc = torch.arange(len(ids))[:, None].expand_as(key)
    pairs = torch.unique(torch.stack([doc[real], key[real]], dim=1), dim=0)  # each (document, pair) once
    keys, df = torch.unique(pairs[:, 1], return_counts=True)
    return keys.numpy(), df.numpy()


def place_pairs(keys: np.ndarray, df: np.ndarray, vocab: int, buckets: int) -> np.ndarray:
    """The table of pairs (``buckets`` slots: the key each holds, or -1), a cuckoo hash table of two
    slots per pair (``pair_slots``): pairs in order of document frequency (then key) take their first
    slot where no earlier pair did, then their second where free (at a quarter full, all but ~2-4%);
    each of the rest takes its first slot and moves the pair there to that pair's other slot, and
    so on until one lands in a free slot. After ``CUCKOO_MOVES`` moves the pair in hand is left out
    (at a quarter full that does not happen in practice). Where the pairs are more than half the
    slots (a corpus whose pairs outgrow the weights' bound), the rarest beyond half are left out
    first, so that the moves stay few."""
    table = np.full(buckets, -1, dtype=np.int64)
    order = np.lexsort((keys, -df))[:buckets // 2]
    keys = keys[order]
    first, second = pair_slots(keys // vocab, keys % vocab, buckets)
    _, win = np.unique(first, return_index=True)  # the most frequent pair of each first slot
    table[first[win]] = keys[win]
    rest = np.setdiff1d(np.arange(len(keys)), win)
    free = rest[table[second[rest]] == -1]
    _, win = np.unique(second[free], return_index=True)
    table[second[free[win]]] = keys[free[win]]
    for k in np.setdiff1d(rest, free[win]).tolist():
        key, slot = int(keys[k]), int(first[k])
        for _ in range(CUCKOO_MOVES):
            key, table[slot] = int(table[slot]), key
            if key == -1:
                break
            a, b = pair_slots(key // vocab, key % vocab, buckets)
            slot = int(b) if int(a) == slot else int(a)
    return table


def logistic(y: np.ndarray, cs: Any, scoring: str) -> Any:
    """Logistic regression for labels ``y``: the penalty chosen among ``cs`` by ``scoring`` in 3-fold
    cross-validation (fewer folds where a class has fewer rows), or C = 10 where a class has one row."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    folds = int(min(3, np.bincount(np.unique(y, return_inverse=True)[1]).min()))
    if folds < 2:
        return LogisticRegression(C=10.0, max_iter=1000)
    return LogisticRegressionCV(**_supported(LogisticRegressionCV, Cs=cs, cv=folds, max_iter=1000, scoring=scoring,
                                            l1_ratios=(0.0,), use_legacy_attributes=False))


def _supported(cls: Any, **options: Any) -> dict[str, Any]:
    """The ``options`` the installed scikit-learn's ``cls`` takes (newer ones silence its warnings)."""
    import inspect

    known = inspect.signature(cls).parameters
    return {k: v for k, v in options.items() if k in known}


def _outputs(model: nn.Module, split: Any, method: str = "forward") -> np.ndarray:
    with torch.no_grad():
        x, lengths = torch.from_numpy(split.x), torch.from_numpy(split.lengths.astype(np.int64))
        return getattr(model, method)(x, lengths).numpy()


#: The reference members by kind: what ``describe`` names and the search fits.
MEMBERS: dict[str, Any] = {"ridge": RidgeMember, "1nn": NeighbourMember, "tfidf": TfidfMember,
                           "naive": NaiveMember, "seasonal_naive": SeasonalNaiveMember, "rocket": RocketMember,
                           "theta": ThetaMember, "damped": DampedMember, "drift": DriftMember}


def member_from_description(d: dict[str, Any]) -> nn.Module:
    """A reference member from its description (``describe``)."""
    if d.get("reference") not in MEMBERS:
        raise ValueError(f"unknown reference member {d.get('reference')!r}")
    return MEMBERS[d["reference"]].from_description(d)


def final_member(dataset: Any, folds: Any, members: list[nn.Module]) -> nn.Module | None:
    """The member the exported models use where the search validated on one split: ``members``' kind
    fitted again on the training **and** validation rows, at the temperature chosen on the validation
    rows; ``None`` with folds (each fold's member is kept, as the networks' fold models are: together
    they saw every row) or where nothing is fitted (naive and local forecasts) or the rows are too many
    for the kind (1-NN's bank).

    Why: one validation split leaves the member fitted on the training split alone, and a closed-form
    model with its penalty chosen by its own cross-validation only gains from the rows the networks
    needed for early stopping (TF-IDF on 4,000 reviews: 0.802 from 2,914 training rows, 0.805 from
    3,400, 0.809 from all 4,000, scikit-learn, mean of five draws). The selection weighs the member by
    its validation outputs from the training-split fit, which undersells the refit; the out-of-fold
    file keeps those outputs."""
    from cellsearch.data.splits import concat_splits

    first = members[0]
    if folds.kind != "holdout" or not folds.validated or not list(first.state_dict()):
        return None
    fold = folds.folds[0]
    pool = concat_splits([fold.train.tensors(), fold.val.tensors()])
    if not type(first).fits(len(pool), max(1, int(np.median(pool.lengths))) * pool.x.shape[2]):
        return None
    return refit_member(first, pool, dataset)


def refit_member(member: nn.Module, rows: Any, dataset: Any) -> nn.Module:
    """``member``'s kind fitted on ``rows`` (of ``dataset``), at ``member``'s temperature: the one
    chosen on the validation rows stays, only the fit learns from more rows."""
    refit = type(member).fit(rows, dataset.task, member.length, member.n_outputs, dataset.preprocessing)
    refit.temperature = member.temperature
    return refit


def fold_members(dataset: Any, folds: Any, kind: str) -> tuple[list[nn.Module], np.ndarray] | None:
    """The ``kind`` member of each fold (fitted on the fold's training rows) and their out-of-fold
    outputs in fold order; the temperature is chosen on those outputs (lowest out-of-fold loss) and
    set in every fold's member. ``None`` where the reference does not serve the task or (1-NN) the
    training sequences are too many to store."""
    from cellsearch.data import get_layout
    from cellsearch.folds import row_losses

    task, cls = dataset.task, MEMBERS[kind]
    if kind not in get_layout(dataset.preprocessing.layout).references(dataset.preprocessing):
        return None
    pool = folds.folds[0].train.split
    length = max(1, int(np.median(pool.lengths)))
    if not cls.fits(len(pool), length * pool.x.shape[2]):
        return None
    if hasattr(cls, "serves") and not cls.serves(dataset.preprocessing):
        return None
    members, parts = [], []
    for f in folds.folds:
        members.append(cls.fit(f.train.tensors(), task, length, dataset.n_outputs, dataset.preprocessing))
        parts.append(f.val.tensors())
    if get_task(task).labels or cls.tuned_for_values:
        best, best_loss = 1.0, np.inf
        # a member with decision values (ridge, ROCKET) computes them once, not once per temperature
        decisions = (torch.from_numpy(np.concatenate([_outputs(m, p, "decision") for m, p in zip(members, parts)]))
                     if hasattr(cls, "decision") else None)
        for t in TEMPERATURES:
            for m in members:
                m.temperature = float(t)
            out = (at_temperature(decisions, task, float(t)).numpy() if decisions is not None
                   else np.concatenate([_outputs(m, p) for m, p in zip(members, parts)]))
            loss = float(np.mean(row_losses(task, out, np.asarray(folds.oof.y))))
            if loss < best_loss:
                best, best_loss = float(t), loss
        for m in members:
            m.temperature = best
    oof = np.concatenate([_outputs(m, p) for m, p in zip(members, parts)]).astype(np.float32)
    return members, oof
