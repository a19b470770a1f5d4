"""Train one member of a head: a softmax layer (or one hidden ReLU layer) by mini-batch Adam in TensorFlow.

The inputs are the dense readout columns and the TF-IDF blocks of the cleaned texts. The TF-IDF
weight matrices have tens of thousands of rows, of which a batch touches a few thousand, so
each block is fed as its nonzeros, flat (column id, weight, row in the batch), and the optimiser
(:class:`_LazyAdam`) updates only the rows a batch touched. (Flat, not padded to the longest
text's count: a batch then gathers only the rows it uses, several times fewer.) Label smoothing, class weights and early stopping on validation
accuracy are the recipe's choices (``retrain.train.recipe``); the result is plain numpy arrays
in the layout ``models.heads.serve.Member`` computes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from retrain.train.config import HeadConfig


def _class_weights(y: np.ndarray, k: int, mode: str) -> np.ndarray:
    counts = np.bincount(y, minlength=k).astype(np.float64)
    w = np.ones(k)
    present = counts > 0
    w[present] = counts[present].sum() / (present.sum() * counts[present])
    if mode == "sqrt":
        w = np.sqrt(w)
    elif mode == "none":
        w = np.ones(k)
    return (w / np.mean(w[present])).astype(np.float32)


def _nonzeros(csr: Any, rows: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the nonzeros of ``csr[rows]`` as flat (column ids, weights, row within ``rows``).

    A batch is then three short arrays, and ``tf.gather`` on the weight matrix gives sparse
    (row-wise) gradients.
    """
    part = csr[rows]
    counts = np.diff(part.indptr)
    return (part.indices.astype(np.int32), part.data.astype(np.float32),
            np.repeat(np.arange(part.shape[0], dtype=np.int32), counts))


class _LazyAdam:
    """Adam with decoupled weight decay; rows of a sparse gradient update only those rows.

    The TF-IDF weight matrices have tens of thousands of rows, of which a batch touches a few
    thousand: updating only them (as "lazy Adam" does) makes an epoch many times faster.
    """

    def __init__(self, tf: Any, variables: list[Any], lr: float, weight_decay: float,
                 b1: float = 0.9, b2: float = 0.999, eps: float = 1e-7) -> None:
        self.tf = tf
        self.m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
        self.v = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
        self.t = tf.Variable(0.0, trainable=False)
        self.lr, self.wd, self.b1, self.b2, self.eps = lr, weight_decay, b1, b2, eps

    def apply(self, grads: list[Any], variables: list[Any]) -> None:
        tf = self.tf
        self.t.assign_add(1.0)
        lr_t = self.lr * tf.sqrt(1.0 - self.b2 ** self.t) / (1.0 - self.b1 ** self.t)
        for g, var, m, v in zip(grads, variables, self.m, self.v):
            decay = self.wd if len(var.shape) == 2 else 0.0
            if isinstance(g, tf.IndexedSlices):
                rows, seg = tf.unique(g.indices)
                vals = tf.math.unsorted_segment_sum(g.values, seg, tf.shape(rows)[0])
                at = rows[:, None]
                m_rows = self.b1 * tf.gather(m, rows) + (1.0 - self.b1) * vals
                v_rows = self.b2 * tf.gather(v, rows) + (1.0 - self.b2) * vals * vals
                m.scatter_nd_update(at, m_rows)
                v.scatter_nd_update(at, v_rows)
                step = lr_t * m_rows / (tf.sqrt(v_rows) + self.eps) + self.lr * decay * tf.gather(var, rows)
                var.scatter_nd_sub(at, step)
            else:  # one fused kernel for the moments and the step (it computes the same as the rows above)
                if decay:
                    var.assign_sub(self.lr * decay * var)
                tf.raw_ops.ResourceApplyAdam(
                    var=var.handle, m=m.handle, v=v.handle, beta1_power=self.b1 ** self.t,
                    beta2_power=self.b2 ** self.t, lr=self.lr, beta1=self.b1, beta2=self.b2, epsilon=self.eps, grad=g)


def train_softmax(
    dense: np.ndarray,
    text: dict[str, Any],
    y: np.ndarray,
    k: int,
    hp: HeadConfig,
    val: tuple[np.ndarray, dict[str, Any], np.ndarray] | None = None,
    epochs: int | None = None,
    progress: Any = None,
) -> tuple[dict[str, np.ndarray], int, float]:
    """Train one member; return (arrays, epochs that counted, best validation accuracy).

    With ``val`` the run stops after ``hp.patience`` epochs without a better validation
    accuracy and keeps the best epoch's weights; without it, it runs ``epochs`` epochs.
    """
    import tensorflow as tf

    rng = np.random.default_rng(hp.seed)
    tf.random.set_seed(hp.seed)
    d = dense.shape[1]
    names = sorted(text)

    def init(shape: tuple[int, int]) -> np.ndarray:  # Glorot uniform
        limit = math.sqrt(6.0 / (shape[0] + shape[1]))
        return rng.uniform(-limit, limit, size=shape).astype(np.float32)

    v: dict[str, tf.Variable] = {}
    if hp.hidden:
        v["W1"] = tf.Variable(init((d, hp.hidden)))
        v["b1"] = tf.Variable(tf.zeros(hp.hidden))
        for name in names:
            v[f"W1_{name}"] = tf.Variable(tf.zeros((text[name].shape[1], hp.hidden)))
        v["W2"] = tf.Variable(init((hp.hidden, k)))
        v["b2"] = tf.Variable(tf.zeros(k))
    else:
        v["W"] = tf.Variable(tf.zeros((d, k)))
        v["b"] = tf.Variable(tf.zeros(k))
        for name in names:
            v[f"W_{name}"] = tf.Variable(tf.zeros((text[name].shape[1], k)))
    weights = list(v.values())
    opt = _LazyAdam(tf, weights, hp.learning_rate, hp.weight_decay)
    cw = tf.constant(_class_weights(y, k, hp.class_weight))
    scale = float(hp.text_weight)

    def lookup(w: Any, m: tuple[Any, Any, Any], rows: Any) -> Any:
        ids, wts, row = m
        return tf.math.unsorted_segment_sum(tf.gather(w, ids) * wts[:, tf.newaxis], row, rows)

    def logits(xd: Any, xs: list[Any], training: bool) -> Any:
        rows = tf.shape(xd)[0]
        if hp.hidden:
            h = tf.matmul(xd, v["W1"]) + v["b1"]
            for name, m in zip(names, xs):
                h += lookup(v[f"W1_{name}"], m, rows) * scale
            h = tf.nn.relu(h)
            if training and hp.dropout:
                h = tf.nn.dropout(h, hp.dropout, seed=hp.seed)
            return tf.matmul(h, v["W2"]) + v["b2"]
        z = tf.matmul(xd, v["W"]) + v["b"]
        for name, m in zip(names, xs):
            z += lookup(v[f"W_{name}"], m, rows) * scale
        return z

    @tf.function(reduce_retracing=True)
    def step(xd: Any, xs: list[Any], yb: Any) -> Any:
        with tf.GradientTape() as tape:
            z = logits(xd, xs, True)
            target = tf.one_hot(yb, k) * (1.0 - hp.label_smoothing) + hp.label_smoothing / k
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(target, z) * tf.gather(cw, yb))
        opt.apply(tape.gradient(loss, weights), weights)
        return loss

    def batch(xs: dict[str, Any], rows: np.ndarray | slice) -> list[tuple[Any, Any, Any]]:
        return [tuple(tf.constant(a) for a in _nonzeros(xs[n], rows)) for n in names]

    def predict(xd: np.ndarray, xs: dict[str, Any]) -> np.ndarray:
        out = []
        for i in range(0, len(xd), 1024):
            out.append(logits(tf.constant(xd[i:i + 1024]), batch(xs, slice(i, i + 1024)), False).numpy())
        return np.concatenate(out) if out else np.zeros((0, k), np.float32)

    csrs = {name: m.tocsr() for name, m in text.items()}
    val_csrs = {name: m.tocsr() for name, m in val[1].items()} if val is not None else {}

    n = len(y)
    max_epochs = epochs or hp.max_epochs
    best = (-1.0, 0, {key: w.numpy() for key, w in v.items()})
    for epoch in range(1, max_epochs + 1):
        order = rng.permutation(n)
        for i in range(0, n, hp.batch_size):
            b = order[i:i + hp.batch_size]
            step(tf.constant(dense[b]), batch(csrs, b), tf.constant(y[b]))
        if progress is not None:
            progress.update(1)
        if val is not None:
            acc = float(np.mean(predict(val[0], val_csrs).argmax(axis=1) == val[2]))
            if acc > best[0]:
                best = (acc, epoch, {key: w.numpy() for key, w in v.items()})
            elif epoch - best[1] >= hp.patience:
                break
    if val is None:
        best = (math.nan, max_epochs, {key: w.numpy() for key, w in v.items()})
    arrays = best[2]
    if scale != 1.0:  # fold the text weight into the exported weights
        for name in names:
            key = f"W1_{name}" if hp.hidden else f"W_{name}"
            arrays[key] = arrays[key] * scale
    return arrays, best[1], best[0]
