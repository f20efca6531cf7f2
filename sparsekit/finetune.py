"""Fine-tuning a pruned model back to its dense teacher's predictions, without labels.

``finetune(pruned, teacher, data)`` trains the float initializers of PRUNED (weights, biases,
normalisation parameters) so that its outputs match DENSE's on the same inputs: KL divergence
on temperature-softened class scores, or a variance-normalised squared error on outputs that are
not class scores, optionally plus the same error on the outputs of the pruned layers
(intermediate features). The teacher runs in onnxruntime on every augmented batch; the student
is the ONNX graph itself run by torch (:mod:`sparsekit.torch_graph`).

The zero pattern is held: every weight that is zero in PRUNED is zero in the output, bit for bit
(gradients and updates are masked, and the write-back keeps the original bits there), so the
pattern and prune's recipe metadata survive and ``convert`` packs the result exactly as it packs
PRUNED. The output is PRUNED with only initializer values changed; with ``sparsity`` (gradual
pruning) the masks also grow along a cubic ramp within the recorded patterns, and the recipe
metadata's sparsities are updated to match.

torch is needed only here: ``pip install 'sparsekit[train]'``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import onnx

from .errors import SparsekitError, SparsekitInterrupted
from .graph import ONNX_DOMAINS, initializer_map, node_names, prunable_layers, tensor_to_array
from .io import current_umask, as_model
from .patterns import recorded_mask
from .recipe import METADATA_KEY, recorded_layers
from .sequence import lstm_layers
from .sessions import session
from .weights import read_weights

__all__ = ["finetune", "FinetuneReport", "LOSSES", "DEVICES", "TRAIN_EXTRA"]

TRAIN_EXTRA = "pip install 'sparsekit[train]'"
LOSSES = ("auto", "kl", "mse")
DEVICES = ("cpu", "cuda")
SCHEDULES = ("cosine", "constant")
TRAIN_CHOICES = ("all", "pruned")   # which layers' tensors train
WARMUP = 0.03          # fraction of the schedule with a linear learning-rate warm-up
MIN_TRAIN_SIZE = 16    # --train-size: below this, stride-32 backbones have nothing left to pool
RAMP_END = 0.6         # gradual pruning reaches its target sparsity at this point of the schedule
RAMP_UPDATES = 40      # mask updates along the ramp


def _torch():
    try:
        import torch
    except ImportError:
        raise SparsekitError(f"fine-tuning needs PyTorch: {TRAIN_EXTRA}") from None
    return torch


@dataclass
class Agreement:
    """How close a model is to the teacher on the evaluation samples."""

    samples: int = 0
    agreement: Optional[float] = None     # top-1 equal to the teacher's (class-score outputs)
    kl: Optional[float] = None            # mean KL(teacher || model) of the softmax outputs
    rel_error: float = 0.0                # sum |y - t|^2 / sum |t|^2 over all outputs


@dataclass
class LayerChange:
    name: str
    weight: str
    zeros: int
    params: int
    sparsity_before: float
    sparsity_after: float
    rel_change: float                     # |W_out - W_in| / |W_in|


@dataclass
class FinetuneReport:
    settings: Dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    images: int = 0                       # training samples seen (augmented, counted once each)
    seconds: float = 0.0
    stopped_by: str = ""                  # "steps", "seconds" or "interrupt"
    loss_first: Optional[float] = None    # mean loss over the first and last 10% of steps
    loss_last: Optional[float] = None
    before: Agreement = field(default_factory=Agreement)
    after: Agreement = field(default_factory=Agreement)
    eval_source: str = ""
    train_source: str = ""
    train_count: int = 0
    layers: List[LayerChange] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    inversion: Optional[Dict[str, Any]] = None   # with invert: inversion.invert_images' facts

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- checks

def _io_signature(model: onnx.ModelProto, which: str):
    inits = {t.name for t in model.graph.initializer}
    vis = model.graph.input if which == "input" else model.graph.output
    out = []
    for v in vis:
        if v.name in inits:
            continue
        tt = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        out.append((v.name, tt.elem_type, dims))
    return out


def _check_pair(student: onnx.ModelProto, teacher: onnx.ModelProto) -> None:
    for which in ("input", "output"):
        s, t = _io_signature(student, which), _io_signature(teacher, which)
        if [x[0] for x in s] != [x[0] for x in t]:
            raise SparsekitError(f"teacher and pruned model have different {which}s: "
                                 f"{[x[0] for x in t]} vs {[x[0] for x in s]}")
        for (name, st, sd), (_, tt, td) in zip(s, t):
            fixed_differ = len(sd) != len(td) or any(a and b and a != b for a, b in zip(sd, td))
            if st != tt or fixed_differ:
                raise SparsekitError(f"teacher and pruned model disagree on {which} {name!r} "
                                     f"(type/shape {tt} {td} vs {st} {sd})")


# --------------------------------------------------------------------------- losses

def _output_kinds(outputs: Dict[str, np.ndarray], loss: str) -> Dict[str, str]:
    """Per output: "logits" (KL on softened scores), "probs" (KL, the scores are probabilities
    already) or "mse"."""
    kinds = {}
    for k, t in outputs.items():
        scores = t.dtype.kind == "f" and t.ndim >= 2 and t.shape[-1] >= 2
        if loss == "mse" or not scores:
            if loss == "kl" and not scores:
                raise SparsekitError(f"--loss kl needs class-score outputs [.., classes]; {k!r} is "
                                     f"{list(t.shape)} {t.dtype}")
            kinds[k] = "mse"
            continue
        probs = t.min() >= 0 and t.max() <= 1 and np.allclose(t.sum(-1), 1.0, atol=1e-3)
        kinds[k] = "probs" if probs else "logits"
    return kinds


def _distill_loss(torch, kind: str, s, t, temperature: float):
    if kind == "mse":
        return ((s - t) ** 2).mean() / (t.var() + 1e-8)
    if kind == "probs":   # log-probabilities are logits up to a per-row constant
        s, t = torch.log(s.clamp_min(1e-12)), torch.log(t.clamp_min(1e-12))
    c = s.shape[-1]
    ls = torch.log_softmax(s.reshape(-1, c).float() / temperature, dim=-1)
    lt = torch.log_softmax(t.reshape(-1, c).float() / temperature, dim=-1)
    return (lt.exp() * (lt - ls)).sum(-1).mean() * temperature ** 2


def _compare(teacher: Dict[str, np.ndarray], model: Dict[str, np.ndarray],
             kinds: Dict[str, str]) -> Agreement:
    a = Agreement(samples=0)
    num = den = 0.0
    for k, t in teacher.items():
        y = model[k].astype(np.float64)
        t = t.astype(np.float64)
        num += float(((y - t) ** 2).sum())
        den += float((t ** 2).sum())
        if kinds.get(k) in ("logits", "probs") and a.agreement is None:
            c = t.shape[-1]
            tt, yy = t.reshape(-1, c), y.reshape(-1, c)
            a.samples = tt.shape[0]
            a.agreement = float(np.mean(tt.argmax(1) == yy.argmax(1)))
            if kinds[k] == "probs":
                tt, yy = np.log(np.clip(tt, 1e-12, None)), np.log(np.clip(yy, 1e-12, None))
            lt = tt - tt.max(1, keepdims=True)
            lt -= np.log(np.exp(lt).sum(1, keepdims=True))
            ly = yy - yy.max(1, keepdims=True)
            ly -= np.log(np.exp(ly).sum(1, keepdims=True))
            a.kl = float(np.mean((np.exp(lt) * (lt - ly)).sum(1)))
    if not a.samples:
        a.samples = next(iter(teacher.values())).shape[0]
    a.rel_error = num / den if den > 0 else 0.0
    return a


# --------------------------------------------------------------------------- onnxruntime side

def free_spatial_dims(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """A copy of ``model`` whose image input ``name`` [N, C, H, W] takes any H and W (shapes
    inferred for the declared size are dropped)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        if inp.name == name:
            dims = inp.type.tensor_type.shape.dim
            for i, label in ((2, "train_height"), (3, "train_width")):
                dims[i].Clear()
                dims[i].dim_param = label
    del m.graph.value_info[:]
    return m


def _check_train_size(torch, teacher_sess, student, data_set, features, size: int, dev) -> None:
    """Fail before training when teacher or student cannot run at size x size (a layer tied to
    the declared input size: a Reshape to a fixed length, a Flatten before the classifier)."""
    feeds = data_set.batch(2, np.random.default_rng(0), augment=False)
    try:
        _run(teacher_sess, feeds, data_set.step, features or None)
        with torch.no_grad():
            student({k: _as_input(torch, v, dev) for k, v in feeds.items()}, [])
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise SparsekitError(f"--train-size {size}: the model does not run at {size}x{size} ({first}); "
                             "it needs layers that take any input size (e.g. global pooling "
                             "before the classifier)") from None


def _ort_session(model: onnx.ModelProto, threads: Optional[int], extra_outputs=()):
    if extra_outputs:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        have = {o.name for o in m.graph.output}
        for name in extra_outputs:
            if name not in have:
                m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
                m.graph.output[-1].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        model = m
    return session(model, threads=threads)


def _run(sess, feeds: Dict[str, np.ndarray], step: int, names: Optional[List[str]] = None,
         chunk: int = 64) -> Dict[str, np.ndarray]:
    """Outputs for all samples of ``feeds``, in runs of ``step`` samples (a fixed leading dim)
    or ``chunk``."""
    names = names or [o.name for o in sess.get_outputs()]
    n = next(iter(feeds.values())).shape[0]
    size = step or chunk
    parts = [sess.run(names, {k: v[i:i + size] for k, v in feeds.items()}) for i in range(0, n, size)]
    return {k: np.concatenate([p[j] for p in parts]) for j, k in enumerate(names)}


# --------------------------------------------------------------------------- the job

class _Stop(Exception):
    pass


def _fingerprint(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _save_checkpoint(torch, path: Path, state: Dict[str, Any]) -> None:
    """Atomically: a temporary file in the same folder, then a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.resolve().parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.chmod(tmp, 0o666 & ~current_umask())    # mkstemp's 0600 -> the mode any new file gets
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _check_options(steps, seconds, batch_size, lr, temperature, loss, device, schedule, sparsity,
                   feature_weight, mix, synthetic, holdout, train_size):
    if train_size is not None and (isinstance(train_size, bool) or int(train_size) != train_size
                                   or not MIN_TRAIN_SIZE <= train_size <= 4096):
        raise SparsekitError(f"train size must be an integer in [{MIN_TRAIN_SIZE}, 4096], got {train_size!r}")
    if steps is None and seconds is None:
        raise SparsekitError("give --steps or --seconds (or both: it stops at whichever comes first)")
    if steps is not None and (isinstance(steps, bool) or int(steps) != steps or steps < 1):
        raise SparsekitError(f"steps must be a positive integer, got {steps!r}")
    if seconds is not None and not seconds > 0:
        raise SparsekitError(f"seconds must be positive, got {seconds!r}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise SparsekitError(f"batch size must be a positive integer, got {batch_size!r}")
    if not (0 <= lr < 10):
        raise SparsekitError(f"learning rate must be in [0, 10), got {lr!r}")
    if not temperature > 0:
        raise SparsekitError(f"temperature must be positive, got {temperature!r}")
    if loss not in LOSSES:
        raise SparsekitError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if device not in DEVICES:
        raise SparsekitError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if schedule not in SCHEDULES:
        raise SparsekitError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if sparsity is not None and not 0 < sparsity < 1:
        raise SparsekitError(f"sparsity must be in (0, 1), got {sparsity!r}")
    if feature_weight < 0:
        raise SparsekitError(f"feature loss weight must be >= 0, got {feature_weight!r}")
    for name, v in (("mix", mix), ("synthetic", synthetic)):
        if not 0 <= v <= 1:
            raise SparsekitError(f"{name} must be in [0, 1], got {v!r}")
    if not 0 <= holdout < 1:
        raise SparsekitError(f"holdout must be in [0, 1), got {holdout!r}")


def _synthesise(torch, teacher_m, data_set, n: int, steps: int, size: Optional[int],
                batch_size: int, seed: int, device: str, progress) -> dict:
    """Images from the teacher alone (inversion.py) added to the training photos; the facts."""
    from .inversion import invert_images
    if data_set.kind != "images":
        raise SparsekitError("--invert needs a folder of images (--preprocess imagenet): it makes "
                             "images for an image classifier")
    hw = (size, size) if size else tuple(data_set._size)
    real = {data_set.input_names[0]: torch.from_numpy(
        data_set.batch(min(64, 4 * batch_size), np.random.default_rng(seed), mix=0.0)[
            data_set.input_names[0]])}

    def tick(done, total, loss):
        if progress:
            progress({"phase": "invert", "position": done / total, "step": done, "loss": loss,
                      "images_per_second": 0.0})

    photos, facts = invert_images(teacher_m, n, hw, steps=steps, batch_size=min(batch_size, 32),
                                  real=real, seed=seed, device=device, progress=tick)
    data_set.add_photos(photos)
    facts.pop("targets")    # one class per image: not report material
    return facts


def finetune(pruned, teacher, data, *, preprocess: Optional[str] = None,
             steps: Optional[int] = None, seconds: Optional[float] = None, batch_size: int = 32,
             lr: float = 1e-4, schedule: str = "cosine", temperature: float = 2.0, loss: str = "auto",
             feature_weight: float = 0.0, augment: bool = True, mix: float = 0.5, synthetic: float = 0.0,
             train_size: Optional[int] = None, full_size_last: float = 0.0,
             relative_lr: bool = False, train: str = "all", ema: float = 0.0,
             invert: int = 0, invert_steps: int = 100, invert_size: Optional[int] = None,
             holdout: float = 0.1, eval_data=None, eval_crops: int = 8,
             sparsity: Optional[float] = None, threads: Optional[int] = None, device: str = "cpu",
             seed: int = 0, checkpoint=None, checkpoint_every: float = 300.0, resume: bool = False,
             progress: Optional[Callable[[Dict[str, Any]], None]] = None,
             ) -> Tuple[onnx.ModelProto, FinetuneReport]:
    """Distil ``pruned`` towards ``teacher`` on ``data``; return ``(fine-tuned copy, report)``.

    ``data``: a folder of images (with ``preprocess="imagenet"``) or an .npz of input samples,
    as ``prune --calibration`` takes; ``holdout`` of its photos/samples are kept for evaluation
    (or ``eval_data`` gives the evaluation set). Training stops after ``steps`` or ``seconds``,
    whichever comes first; the learning rate ``lr`` (Adam) warms up and follows ``schedule``
    over that budget. ``loss``: "auto" (KL on class scores at ``temperature``, otherwise a
    variance-normalised MSE), "kl" or "mse"; ``feature_weight`` > 0 adds the MSE of the pruned
    layers' outputs. ``synthetic``: fraction of each image batch replaced by procedural images.
    ``train_size``: train on ``train_size`` x ``train_size`` crops of a folder of images instead
    of the model's input size (both teacher and student at that size: a fully convolutional model
    with global pooling trains several times faster per image; evaluation stays at full size).
    ``full_size_last``: with ``train_size``, the last this fraction of the budget trains at the
    model's own size (progressive resizing: the small crops buy steps, the end adapts the
    weights to the size they are evaluated and used at).
    ``relative_lr``: ``lr`` is a step relative to each weight's scale (per output channel of
    Conv/Gemm/MatMul weights, per tensor otherwise), not an absolute one: folded BatchNorms leave
    channels whose weights differ in scale by orders of magnitude, which one absolute Adam step
    cannot suit.
    ``train``: "all" trains every layer's weights and biases; "pruned" only those of the pruned
    layers (the ones with zeros in their weights, or with ``sparsity`` the ones prune recorded):
    the layers left dense (a classifier, the depthwise convs, the stem) keep the teacher's values.
    ``ema``: write an exponential moving average of the trained weights, with this decay per
    step (0: the last step's weights), instead of the last step's weights. The average starts
    from PRUNED's values and its decay ramps up as ``(1 + t) / (10 + t)`` over the first steps,
    so it follows the early steps closely; the write-back zeroes it outside the masks.
    ``invert``: before training, synthesise this many images from the teacher alone (model
    inversion: ``invert_steps`` optimisation steps each, at ``invert_size`` pixels, default the
    training size; inversion.py) and add them to the training photos (a folder of images only).
    ``sparsity``: prune further to this sparsity during training (cubic ramp, the recorded
    patterns). ``checkpoint``: a path written every ``checkpoint_every`` seconds and on Ctrl-C;
    ``resume`` continues from it. ``progress(info)`` is called after every step. The inputs are
    never modified.
    """
    _check_options(steps, seconds, batch_size, lr, temperature, loss, device, schedule, sparsity,
                   feature_weight, mix, synthetic, holdout, train_size)
    if not 0.0 <= full_size_last < 1.0:
        raise SparsekitError(f"full_size_last must be in [0, 1), got {full_size_last}")
    if full_size_last and train_size is None:
        raise SparsekitError("--full-size-last needs --train-size (without it every step is at "
                             "the model's size already)")
    if not 0.0 <= ema < 1.0:
        raise SparsekitError(f"ema must be in [0, 1), got {ema}")
    if invert < 0 or invert_steps < 1 or (invert_size is not None and invert_size < 8):
        raise SparsekitError(f"invert must be >= 0, invert_steps >= 1 and invert_size >= 8, got "
                             f"{invert}, {invert_steps}, {invert_size}")
    torch = _torch()
    from .torch_graph import OnnxModule, trainable_initializers
    from .training_data import load_training_data

    if device == "cuda" and not torch.cuda.is_available():
        raise SparsekitError("--device cuda: torch sees no CUDA device (this build or machine has none)")
    student_src, teacher_m = as_model(pruned), as_model(teacher)
    custom = sorted({f"{n.domain}.{n.op_type}" for n in student_src.graph.node
                     if n.domain not in ONNX_DOMAINS})
    if custom:
        raise SparsekitError(f"the pruned model has op(s) {', '.join(custom[:3])}: fine-tuning takes plain "
                             "ONNX models, before convert")
    _check_pair(student_src, teacher_m)
    # weights in any encoding (Constant nodes, Cast, ...) become initializers, so they train
    model, _ = read_weights(student_src)
    trainable = trainable_initializers(model)
    inits = initializer_map(model)
    originals = {n: tensor_to_array(inits[n]) for n in trainable}
    masks = {n: originals[n] != 0 for n, is_w in trainable.items() if is_w and not originals[n].all()}
    recorded = recorded_layers(model)
    if train not in TRAIN_CHOICES:
        raise SparsekitError(f"train must be one of {', '.join(TRAIN_CHOICES)}, got {train!r}")
    if train == "pruned":
        trainable = _pruned_layers_params(model, trainable, set(masks) if sparsity is None
                                          else _recorded_weights(model, recorded))
        originals = {n: a for n, a in originals.items() if n in trainable}
        masks = {n: m for n, m in masks.items() if n in trainable}
    if not masks and sparsity is None:
        raise SparsekitError("the model has no pruned weights (no zeros in any Conv/Gemm/MatMul "
                             "weight): prune it first, or give --sparsity to prune while training")
    ramp = _GradualPruning(model, recorded, sparsity) if sparsity is not None else None

    if threads:
        torch.set_num_threads(int(threads))
    dev = torch.device(device)
    student = OnnxModule(model, trainable).to(dev).channels_last()
    data_set = load_training_data(data, model, preprocess, holdout, eval_data, eval_crops, seed,
                                  train_size)

    report = FinetuneReport(settings=dict(
        steps=steps, seconds=seconds, batch_size=batch_size, lr=lr, schedule=schedule,
        temperature=temperature, loss=loss, feature_weight=feature_weight, augment=augment, mix=mix,
        synthetic=synthetic, train_size=train_size, full_size_last=full_size_last,
        relative_lr=relative_lr, train=train, ema=ema,
        holdout=holdout,
        invert=invert, invert_steps=invert_steps, invert_size=invert_size,
        sparsity=sparsity,
        threads=threads, device=device,
        seed=seed, trained_tensors=len(trainable), masked_weights=len(masks)),
        train_source=data_set.source, train_count=data_set.train_count)

    if invert:
        report.inversion = _synthesise(torch, teacher_m, data_set, invert, invert_steps,
                                       invert_size, batch_size, seed, device, progress)
        report.train_count = data_set.train_count

    # features: outputs of the pruned layers that the teacher computes too
    features: List[str] = []
    if feature_weight > 0:
        teacher_values = {o for n in teacher_m.graph.node for o in n.output}
        out_names = {o.name for o in model.graph.output}
        features = [c.output for c in prunable_layers(model) if c.weight in masks or ramp is not None]
        features = [f for f in dict.fromkeys(features) if f in teacher_values and f not in out_names]
        if not features:
            report.notes.append("no pruned layer's output is also a tensor of the teacher: "
                                "no feature loss")
    if train_size is not None:   # the teacher runs the training crops at their own size too
        teacher_m = free_spatial_dims(teacher_m, data_set.input_names[0])
    teacher_sess = _ort_session(teacher_m, threads, features)
    if train_size is not None:
        _check_train_size(torch, teacher_sess, student, data_set, features, train_size, dev)
    out_names = [o.name for o in model.graph.output]

    # ---- evaluation before
    kinds: Dict[str, str] = {}
    eval_teacher = None
    if data_set.eval_inputs:
        eval_teacher = _run(teacher_sess, data_set.eval_inputs, data_set.step, out_names)
        kinds = _output_kinds(eval_teacher, loss)
        report.eval_source = data_set.eval_source
        report.before = _compare(eval_teacher, _run(_ort_session(model, threads), data_set.eval_inputs,
                                                    data_set.step, out_names), kinds)
    else:
        report.notes.append("no held-back samples (one photo/sample, holdout 0): no before/after comparison")

    # ---- training state
    params = student.named_weights()
    mask_t = {n: torch.from_numpy(m).to(dev) for n, m in masks.items()}
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    scales = {n: torch.from_numpy(s).to(dev) for n, s in _step_scales(model, originals).items()} \
        if relative_lr else {}
    # the weights written at the end: the average of the steps' weights with ema, else the last
    average = {n: p.detach().clone() for n, p in params.items()} if ema else None
    rng = np.random.default_rng(seed)
    state = {"step": 0, "images": 0, "elapsed": 0.0, "losses": [], "full_size_steps": 0}
    fp = _fingerprint(student_src.SerializeToString(deterministic=True),
                      teacher_m.SerializeToString(deterministic=True),
                      {k: v for k, v in report.settings.items() if k not in ("steps", "seconds", "threads")},
                      str(data))
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if resume:
        if ckpt is None or not ckpt.is_file():
            raise SparsekitError(f"--resume: no checkpoint at {ckpt}")
        try:
            saved = torch.load(str(ckpt), map_location=dev, weights_only=True)
        except Exception as e:
            raise SparsekitError(f"{ckpt}: not a readable checkpoint ({e})") from None
        if saved.get("fingerprint") != fp:
            raise SparsekitError(f"{ckpt}: checkpoint of a different job (models, data or settings differ)")
        with torch.no_grad():
            for n, v in saved["params"].items():
                params[n].copy_(v)
        for n, m in saved.get("masks", {}).items():
            mask_t[n] = m.to(dev)
        if average is not None:
            for n, v in saved["average"].items():
                average[n] = v.to(dev)
        opt.load_state_dict(saved["optimizer"])
        rng.bit_generator.state = saved["rng"]
        state.update(saved["state"])
        if ramp is not None:
            ramp.current = saved.get("ramp", ramp.current)
        report.notes.append(f"resumed from {ckpt} at step {state['step']}")

    def snapshot():
        return {"fingerprint": fp, "params": {n: p.detach().cpu() for n, p in params.items()},
                "masks": {n: m.cpu() for n, m in mask_t.items()}, "optimizer": opt.state_dict(),
                "average": {n: a.cpu() for n, a in (average or {}).items()},
                "rng": rng.bit_generator.state, "state": dict(state),
                "ramp": ramp.current if ramp is not None else None}

    def position() -> float:
        p = 0.0
        if steps is not None:
            p = max(p, state["step"] / steps)
        if seconds is not None:
            p = max(p, state["elapsed"] / seconds)
        return min(p, 1.0)

    def lr_at(p: float) -> float:
        if p < WARMUP:
            return lr * (p / WARMUP + 1e-3)
        if schedule == "constant":
            return lr
        return lr * 0.5 * (1 + math.cos(math.pi * (p - WARMUP) / (1 - WARMUP)))

    micro = data_set.step or batch_size
    per_step = max(1, batch_size // micro) * micro
    if per_step != batch_size:
        report.notes.append(f"the model's inputs take batches of {micro}: {per_step} samples per step")
    student.train(False)    # graph ops have no train mode (BatchNormalization uses its statistics)
    interrupted = {"flag": False}

    def on_sigint(signum, frame):
        interrupted["flag"] = True

    old_handler = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    last_ckpt = time.monotonic()
    t_start = time.monotonic() - state["elapsed"]
    try:
        while True:
            p = position()
            if steps is not None and state["step"] >= steps:
                report.stopped_by = "steps"
                break
            if seconds is not None and state["elapsed"] >= seconds:
                report.stopped_by = "seconds"
                break
            if interrupted["flag"]:
                raise _Stop()
            if ramp is not None:
                ramp.update(p, params, mask_t, torch)
            for g in opt.param_groups:
                g["lr"] = lr_at(p)
            opt.zero_grad(set_to_none=True)
            if full_size_last and p >= 1.0 - full_size_last:
                data_set.use_full_size()
                state["full_size_steps"] += 1
            feeds = data_set.batch(per_step, rng, augment, mix, synthetic)
            targets = _run(teacher_sess, feeds, micro, out_names + features, chunk=per_step)
            if not kinds:
                kinds = _output_kinds({k: targets[k] for k in out_names}, loss)
            total = 0.0
            for i in range(0, per_step, micro):
                x = {k: _as_input(torch, v[i:i + micro], dev) for k, v in feeds.items()}
                y = student(x, features)
                t = {k: torch.from_numpy(v[i:i + micro]).to(dev) for k, v in targets.items()}
                lval = sum(_distill_loss(torch, kinds[k], y[k], t[k], temperature) for k in out_names)
                if features:
                    lval = lval + feature_weight * sum(_distill_loss(torch, "mse", y[f], t[f], 1.0)
                                                       for f in features) / len(features)
                lval = lval * (micro / per_step)
                lval.backward()
                total += float(lval.detach())
            if not math.isfinite(total):
                raise SparsekitError(f"the loss became {total} at step {state['step']}: lower --lr")
            for n, m in mask_t.items():
                if params[n].grad is not None:
                    params[n].grad.mul_(m)
            before = {n: params[n].detach().clone() for n in scales}
            opt.step()
            with torch.no_grad():
                for n, s in scales.items():     # Adam's step, times the weight's own scale
                    params[n].copy_(before[n] + (params[n] - before[n]) * s)
                for n, m in mask_t.items():
                    params[n].mul_(m)
                if average is not None:
                    d = min(ema, (1.0 + state["step"]) / (10.0 + state["step"]))
                    for n, a in average.items():   # elementwise: weights the ramp prunes
                        a.lerp_(params[n].detach(), 1.0 - d)   # later are zeroed at write-back
            state["step"] += 1
            state["images"] += per_step
            state["elapsed"] = time.monotonic() - t_start
            state["losses"].append(total)
            if progress is not None:
                progress({"step": state["step"], "steps": steps, "seconds": seconds,
                          "elapsed": state["elapsed"], "position": position(), "loss": total,
                          "images": state["images"], "lr": lr_at(p),
                          "images_per_second": state["images"] / max(state["elapsed"], 1e-9)})
            if ckpt is not None and time.monotonic() - last_ckpt >= checkpoint_every:
                _save_checkpoint(torch, ckpt, snapshot())
                last_ckpt = time.monotonic()
    except (_Stop, KeyboardInterrupt):
        where = ""
        if ckpt is not None:
            _save_checkpoint(torch, ckpt, snapshot())
            where = f"; checkpoint at step {state['step']} in {ckpt} (continue with --resume)"
        raise SparsekitInterrupted(f"interrupted: nothing written{where}") from None
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)

    # ---- write back: only the values of trained initializers change
    if ramp is not None:
        ramp.finish(params, mask_t, torch)
    _write_back(model, average if average is not None else params, mask_t, originals)
    if ramp is not None:
        ramp.record(model, mask_t)
    report.steps, report.images, report.seconds = state["step"], state["images"], round(state["elapsed"], 2)
    if ema:
        report.notes.append(f"the written weights are the moving average of the steps' weights "
                            f"(decay {ema:g}), not the last step's")
    if full_size_last:
        h, w = data_set.full_size
        report.notes.append(f"{state['full_size_steps']} of {state['step']} steps at the "
                            f"model's size ({h}x{w}), the others at {train_size}x{train_size}")
    losses = state["losses"]
    if losses:
        k = max(1, len(losses) // 10)
        report.loss_first, report.loss_last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
    report.layers = _layer_changes(model, originals, masks, mask_t)
    if eval_teacher is not None:
        report.after = _compare(eval_teacher, _run(_ort_session(model, threads), data_set.eval_inputs,
                                                   data_set.step, out_names), kinds)
    return model, report


def _recorded_weights(model: onnx.ModelProto, recorded: Dict[str, Any]) -> set:
    """The weight initializers of the layers prune recorded (gradual pruning's layers)."""
    names = node_names(model)
    return {c.weight for c in list(prunable_layers(model, names)) + list(lstm_layers(model, names))
            if c.name in recorded}


def _pruned_layers_params(model: onnx.ModelProto, trainable: Dict[str, bool],
                          weights: set) -> Dict[str, bool]:
    """``trainable`` cut to the tensors of the nodes whose weight slot holds one of ``weights``
    (their weights and biases)."""
    from .torch_graph import PARAM_SLOTS, WEIGHT_SLOTS   # needs torch, as finetune does
    keep = set()
    for n in model.graph.node:
        if n.domain not in ONNX_DOMAINS:
            continue
        slots = [n.input[p] for p in PARAM_SLOTS.get(n.op_type, ()) if p < len(n.input)]
        if any(n.input[p] in weights for p in WEIGHT_SLOTS.get(n.op_type, ()) if p < len(n.input)):
            keep.update(x for x in slots if x in trainable)
    return {k: v for k, v in trainable.items() if k in keep}


def _step_scales(model: onnx.ModelProto, originals: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Per trained tensor, the scale its steps are multiplied by under ``relative_lr``: the RMS
    of the nonzero weights of each output channel (Conv/Gemm/MatMul weights, broadcastable), the
    RMS of the tensor otherwise (biases and any other trained tensor; 1 where that is 0)."""
    def rms(a, axis=None):
        nz = np.count_nonzero(a, axis=axis, keepdims=axis is not None)
        return np.sqrt(np.sum(np.square(a, dtype=np.float64), axis=axis, keepdims=axis is not None)
                       / np.maximum(nz, 1))

    out: Dict[str, np.ndarray] = {}
    for layer in prunable_layers(model):
        w = originals.get(layer.weight)
        if w is None or layer.weight in out:
            continue
        axes = tuple(i for i in range(w.ndim) if i != (1 if layer.transposed else 0))
        whole = rms(w)
        out[layer.weight] = np.maximum(rms(w, axes), 1e-2 * whole if whole > 0 else 1.0)
    for n, a in originals.items():
        if n not in out:
            r = rms(a)
            out[n] = np.asarray(r if r > 0 else 1.0)
    return {n: s.astype(originals[n].dtype) for n, s in out.items()}


def _as_input(torch, a: np.ndarray, dev):
    t = torch.from_numpy(a).to(dev)
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _write_back(model: onnx.ModelProto, params, mask_t, originals) -> None:
    """Copy trained values into their initializers, in the initializer's own encoding; entries
    outside a mask keep their original bits; unchanged tensors are not touched."""
    inits = initializer_map(model)
    for name, p in params.items():
        new = p.detach().cpu().numpy().astype(np.float32)
        old = originals[name]
        if name in mask_t:   # pruned entries: zero, and the original bits where PRUNED had zeros
            keep = mask_t[name].cpu().numpy()
            # a kept weight trained to exactly 0 would change the pattern: nudge it to the
            # smallest normal float instead (a value change of ~1e-38)
            tiny = np.copysign(np.finfo(np.float32).tiny, old).astype(np.float32)
            new = np.where(keep & (new == 0), tiny, new)
            new = np.where(keep, new, np.float32(0))
            new = np.where(old == 0, old, new)
        if np.array_equal(new.view(np.uint32), old.view(np.uint32)):
            continue
        t = inits[name]
        if t.HasField("raw_data") or not len(t.float_data):
            t.raw_data = np.ascontiguousarray(new, dtype="<f4").tobytes()
            del t.float_data[:]
        else:
            del t.float_data[:]
            t.float_data.extend(new.ravel().tolist())


def _layer_changes(model, originals, masks, mask_t) -> List[LayerChange]:
    names = node_names(model)
    inits = initializer_map(model)
    rows = []
    for c in prunable_layers(model, names):
        if c.weight not in originals:
            continue
        old, new = originals[c.weight], tensor_to_array(inits[c.weight])
        if c.weight not in masks and c.weight not in mask_t and np.count_nonzero(old == 0) == 0:
            continue
        den = float(np.linalg.norm(old)) or 1.0
        rows.append(LayerChange(name=c.name, weight=c.weight, zeros=int(np.count_nonzero(new == 0)),
                                params=int(new.size),
                                sparsity_before=float(np.mean(old == 0)),
                                sparsity_after=float(np.mean(new == 0)),
                                rel_change=float(np.linalg.norm(new - old)) / den))
    return rows


class _GradualPruning:
    """Masks that grow from each layer's recorded sparsity to ``target`` along a cubic ramp
    (Zhu & Gupta: s(p) = S + (s0 - S)(1 - p/end)^3), re-chosen by magnitude within the pattern
    prune recorded for the layer, so the pattern's constraints hold at every step."""

    def __init__(self, model: onnx.ModelProto, recorded: Dict[str, Any], target: float):
        if not recorded:
            raise SparsekitError("--sparsity (gradual pruning) needs prune's recipe metadata in the model: "
                                 "prune it first at a lower sparsity (e.g. sparsekit prune --sparsity 0.5)")
        self.target = target
        self.layers = []
        names = node_names(model)
        by_name = {c.name: c for c in list(prunable_layers(model, names)) + list(lstm_layers(model, names))}
        for name, spec in recorded.items():
            c = by_name.get(name)
            if c is None:
                continue
            start = float(spec.get("achieved", spec.get("sparsity", 0.0)))
            if start >= target:
                continue
            self.layers.append((c, spec, start))
        if not self.layers:
            raise SparsekitError(f"--sparsity {target}: every pruned layer is already at least that sparse")
        self.current = 0.0

    def _sparsity(self, start: float, p: float) -> float:
        q = min(p / RAMP_END, 1.0)
        return self.target + (start - self.target) * (1 - q) ** 3

    def update(self, p: float, params, mask_t, torch, force: bool = False) -> None:
        q = min(p / RAMP_END, 1.0)
        if not force and q < 1.0 and q - self.current < 1.0 / RAMP_UPDATES:
            return
        if not force and self.current >= 1.0:
            return
        self.current = q
        with torch.no_grad():
            for c, spec, start in self.layers:
                w = params[c.weight]
                W = c.to_matrix(w.detach().cpu().numpy())
                m = recorded_mask(W, spec["pattern"], self._sparsity(start, p), spec.get("bank_size"),
                                  spec.get("block"))
                mt = torch.from_numpy(c.from_matrix(m)).to(w.device)
                mask_t[c.weight] = mt
                w.mul_(mt)

    def finish(self, params, mask_t, torch) -> None:
        """The target sparsity exactly, even when the budget ended before the ramp did."""
        self.update(RAMP_END, params, mask_t, torch, force=True)

    def record(self, model: onnx.ModelProto, mask_t) -> None:
        entry = next(p for p in model.metadata_props if p.key == METADATA_KEY)
        meta = json.loads(entry.value)
        for c, _spec, _ in self.layers:
            m = mask_t[c.weight].cpu().numpy()
            meta["layers"][c.name]["sparsity"] = self.target
            meta["layers"][c.name]["achieved"] = round(float(1 - m.mean()), 6)
        entry.value = json.dumps(meta, sort_keys=False)
