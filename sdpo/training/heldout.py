"""Preference dynamics on held-out pairs: how far the policy's winner and loser losses moved from the reference.

The paper's Figure 1/3 quantities, measured on pairs the run never trained on: ``L_w - L_ref_w``
(``win_diff``), ``L_l - L_ref_l`` (``lose_diff``), the margin (their difference; negative means the winner
gained on the loser), the implicit accuracy (fraction of pairs with ``u > 0``) and the mean lambda the
safeguard would give each pair on its own (Eq. 17, output space, per pair, with the run's
``--winner_preserving_mu``; logged with or without the safeguard).  Every pair is drawn at fixed
timesteps and noise: its random draws come from ``(seed, repeat, index)`` (``sdpo.data.seeding``), so two
evaluations are compared on exactly the same inputs, and the reference's losses are the same numbers at
every evaluation.  The computation is the training forward pass itself (``preference_forward``), without
gradients and without training-time augmentation (no flips, no caption dropout, no noise offset).

Two users of the same code:

* :class:`HeldOutEvaluator`: loads a model once and scores any weights file (the demo scores its saved
  checkpoints with it, ``sdpo.demo``);
* :class:`HeldOutMonitor`: inside training (``--heldout_pairs``), at step 0, every ``--heldout_steps`` and at
  the end, logs ``heldout/<name>`` to ``metrics.jsonl`` and the trackers, and feeds the winner guard
  (``sdpo.training.guard``).

What an evaluation costs in training: one forward of the policy per held-out pair (winner and loser stacked,
``--heldout_batch_size`` pairs per call), under ``torch.no_grad``: no graph, no backward, nothing kept, so the
step's memory peak is not raised by more than one micro-batch's activations without gradients
(``bench/heldout_memory.py``).  The images are encoded again at each evaluation (a ``--precomputed`` run reads
its cache), nothing decoded is kept between evaluations.  The reference's per-pair losses are computed
once, at step 0 (the reference model; for objectives without one, the policy before its first step, which is
the initial model) and stored in ``OUTPUT_DIR/heldout/reference.safetensors`` with a record of what they
depend on; a resumed run reads them back, and a run with other held-out settings is refused.  With LoRA the
reference is the base model (adapters off), as in training.

Processes: the held-out batches are dealt round-robin (batch ``k`` to process ``k % N``; every process runs
the same number of forwards, padded with a repeat whose result is dropped, which sharded models need), each
batch's sums go into its own row of a table, the table is summed over processes (each row has one
contributor, so the sum is exact) and the rows are added in batch order: a batch is computed by the same
call whatever the process count, so N processes log the numbers 1 process logs.

KTO (``--train_method kto``): trained on Pick-a-Pic pairs, the held-out pairs are pairs (winner = desirable,
loser = undesirable) and everything above holds.  Trained on labelled images (``--kto_label_column``), a
held-out sample is one labelled image: ``win_diff`` is the mean ``L - L_ref`` over the desirable images,
``lose_diff`` over the undesirable ones, the margin their difference, and the implicit accuracy the fraction
of images on the side their label asks for (desirable: ``L < L_ref``, undesirable: ``L > L_ref``: the sign of
KTO's ``x`` at reference point 0); there is no lambda (no pairs, no safeguard).

The training run does not notice the monitor (the tests compare weights and checkpoint files with and without
it): every draw comes from the samples' own generators and the global RNG states are put back, the
denoiser's train/eval flags are restored, and nothing reaches a gradient.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

from sdpo.atomic import atomic_path, write_json
from sdpo.checkpoint.store import STATE_FILE
from sdpo.config.sections import RunConfig
from sdpo.data import holdout
from sdpo.data.seeding import sample_seed
from sdpo.errors import UserError
from sdpo.losses import inside_term
from sdpo.safeguard.hook import winner_preserving_lambda
from sdpo.training.guard import WinnerGuard
from sdpo.training.step import preference_forward
from sdpo.training.validation import drop_rows, eval_mode, padded_shard, untouched_rng

log = logging.getLogger("sdpo")
PREFIX = "heldout/"
FOLDER = "heldout"
REFERENCE_FILE = "reference.safetensors"
ROWS_FILE = "rows.json"
STOP_FILE = "guard_stop.json"
COLUMNS = ("win_diff", "lose_diff", "margin", "implicit_acc", "lambda", "model_w", "model_l", "ref_w", "ref_l")
_SUMS = ("n", "n_w", "n_l", "model_w", "model_l", "ref_w", "ref_l", "correct", "lambda")  # one batch's sums
_PAIRS, _IMAGES = SimpleNamespace(USES_LOSER=True), SimpleNamespace(USES_LOSER=False)  # what preference_forward asks


def eval_config(train_cfg: RunConfig, dataset: str | Path | None = None) -> RunConfig:
    """The training config with every training-only randomness switched off (and ``dataset`` as its data)."""
    cfg = train_cfg.with_flags(use_winner_preserving=False, noise_offset=0.0, input_perturbation=0.0)
    return replace(cfg, data=holdout.eval_data(cfg.data, dataset))


# ----------------------------------------------------------------------------- the samples


class HeldOutSet:
    """The held-out samples in evaluation order (every row at repeat 0, then at repeat 1, ...), collated into
    batches of ``batch_size`` on demand: nothing decoded is kept between evaluations."""

    def __init__(self, held: holdout.HeldOutData, repeats: int = 1, batch_size: int = 16):
        from sdpo.data import pairs

        self.held, self.batch_size = held, batch_size
        self.keys = [(r, j) for r in range(repeats) for j in range(len(held.rows))]
        self.pairs = held.kind != "images"
        self.seed = held.data.seed
        self.transform, self.collate = pairs.PairTransform(held.data), pairs.collate
        if held.kind == "cache":
            from sdpo.cache import store as cache

            self.reader, self.collate = cache.CachedPairs(held.source, self.transform), cache.collate
        elif held.kind == "images":
            from sdpo.data import kto

            self.transform, self.collate = kto.KtoTransform(held.data), kto.collate

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def num_batches(self) -> int:
        return math.ceil(len(self.keys) / self.batch_size)

    def span(self, k: int) -> slice:
        """Sample positions of batch ``k``."""
        return slice(k * self.batch_size, min((k + 1) * self.batch_size, len(self.keys)))

    def batch(self, k: int) -> dict:
        return self.collate([self.sample(r, j) for r, j in self.keys[self.span(k)]])

    def sample(self, repeat: int, j: int) -> dict:
        """Held-out row ``j`` at ``repeat``: its draws from ``(seed, repeat, j)``."""
        row = self.held.rows[j]
        if self.held.kind == "pairs":
            return self.transform(self.held.source[row], repeat, j)
        seed = sample_seed(self.seed, repeat, j)
        if self.held.kind == "cache":  # no flips and no empty captions: the seed only draws the noise
            return {**self.reader[(repeat, row)], "sample_seed": seed, "index": j}
        from sdpo.data import kto
        from sdpo.data.pairs import decode

        d, item = self.held.data, self.held.source[row]
        image = decode(kto.image_bytes(item[d.kto_image_column]))
        return self.transform.sample(image, item["caption"], bool(item[d.kto_label_column]), seed, j)


# ----------------------------------------------------------------------------- one batch


class _Models:
    """The family as ``preference_forward`` sees it, with the modules chosen here: ``denoiser`` (unwrapped, so no
    DDP hook runs) and ``reference`` (None: the policy's forward only)."""

    def __init__(self, family, denoiser, reference):
        self._family, self.denoiser, self.reference = family, denoiser, reference

    def __getattr__(self, name: str):
        return getattr(self._family, name)


def batch_terms(batch: dict, models, cfg: RunConfig, device, pairs: bool):
    """The batch's per-sample losses (``PreferenceTerms``), without gradients."""
    return preference_forward(batch, models, cfg, _PAIRS if pairs else _IMAGES, device)


def batch_sums(terms, ref_w: torch.Tensor, ref_l: torch.Tensor | None, pairs: bool, mu: float) -> list[float]:
    """One batch's sums (``_SUMS``, float64) against the stored reference losses of its samples."""
    device = terms.model_w.device
    ref_w = ref_w.to(device)
    if pairs:
        terms.ref_w, terms.ref_l = ref_w, ref_l.to(device)
        u = inside_term(terms, 1.0)  # its sign (the implicit accuracy) does not depend on beta > 0
        lam = winner_preserving_lambda(terms.model_pred, terms.target, mu, per_pair=True)
        n = float(u.numel())
        return [n, n, n, *(getattr(terms, k).double().sum().item() for k in ("model_w", "model_l", "ref_w", "ref_l")),
                (u > 0).double().sum().item(), lam.double().sum().item()]  # fmt: skip
    good = terms.labels.to(device).bool()  # kto images: desirable (winner slot) / undesirable
    model, gain = terms.model_w, ref_w - terms.model_w
    correct = (good & (gain > 0)) | (~good & (gain < 0))
    return [float(good.numel()), good.double().sum().item(), (~good).double().sum().item(),
            model[good].double().sum().item(), model[~good].double().sum().item(),
            ref_w[good].double().sum().item(), ref_w[~good].double().sum().item(),
            correct.double().sum().item(), 0.0]  # fmt: skip


def summarise(rows: list[list[float]], pairs: bool = True) -> dict[str, float]:
    """Means over every sample from the batches' sums, added in batch order."""
    total = [0.0] * len(_SUMS)
    for row in rows:
        for i, v in enumerate(row):
            total[i] += v
    s = dict(zip(_SUMS, total))
    mean = lambda key, n: s[key] / s[n] if s[n] else math.nan  # noqa: E731
    m = {k: mean(k, n) for k, n in (("model_w", "n_w"), ("ref_w", "n_w"), ("model_l", "n_l"), ("ref_l", "n_l"))}
    win, lose = m["model_w"] - m["ref_w"], m["model_l"] - m["ref_l"]
    out = {"win_diff": win, "lose_diff": lose, "margin": win - lose, "implicit_acc": mean("correct", "n")}
    if pairs:
        out["lambda"] = mean("lambda", "n")
    return {**out, **m}


def reference_losses(terms, pairs: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The batch's reference losses: the reference model's, or the policy's own where the objective loads no
    reference (then this runs before the first step: the policy is the initial model)."""
    if terms.ref_w is not None:
        return terms.ref_w.detach().float().cpu(), terms.ref_l.detach().float().cpu() if pairs else None
    return terms.model_w.detach().float().cpu(), terms.model_l.detach().float().cpu() if pairs else None


# ----------------------------------------------------------------------------- the demo's evaluator


class HeldOutEvaluator:
    """Loads the model once (reference = ``cfg.unet_init``); ``evaluate(weights)`` scores any denoiser weights.

    ``cfg``: an :func:`eval_config` whose data are the held-out pairs, or ``held``: the held-out rows of a run
    (``sdpo.data.holdout.prepare``).  The reference's per-sample losses are computed once: its inputs are the
    same fixed draws at every evaluation."""

    def __init__(self, cfg: RunConfig, repeats: int = 1, batch_size: int = 16, device: str | torch.device = "cpu",
                 held: holdout.HeldOutData | None = None):  # fmt: skip
        from sdpo.data import pairs
        from sdpo.families import load_family

        self.cfg, self.device = cfg, torch.device(device)
        if held is None:
            source = pairs.clean_pairs(pairs.load_pairs(cfg.data), cfg.data)
            held = holdout.HeldOutData("pairs", source, list(range(len(source))), None, "", cfg.data)
        self.set = HeldOutSet(held, repeats, batch_size)
        self.comps = load_family(cfg.model, self.device, torch.float32, needs_reference=True)
        self.comps.denoiser.eval()
        models = _Models(self.comps, self.comps.denoiser, self.comps.reference)
        with torch.no_grad():
            self.ref = [reference_losses(self._terms(k, models), True) for k in range(self.set.num_batches)]
        self.comps.reference = None  # the policy alone from now on

    def _terms(self, k: int, models):
        return batch_terms(self.set.batch(k), models, self.cfg, self.device, True)

    @torch.no_grad()
    def evaluate(self, weights: str | Path) -> dict[str, float]:
        """Means over the held-out draws; ``weights`` is any weights file ``ModelFamily.load_weights_file`` reads."""
        self.comps.load_weights_file(self.comps.denoiser, weights)
        models, mu = _Models(self.comps, self.comps.denoiser, None), self.cfg.safeguard.winner_preserving_mu
        rows = [batch_sums(self._terms(k, models), *self.ref[k], True, mu) for k in range(self.set.num_batches)]
        return summarise(rows)


# ----------------------------------------------------------------------------- what the reference depends on


def identity(cfg: RunConfig, held: holdout.HeldOutData) -> dict:
    """What the stored reference losses depend on: the held-out rows and their draws, the reference model, the
    noise process and the latent sizes.  A resumed run with another record is refused."""
    from sdpo.cache.identity import data_identity

    h, m = cfg.heldout, cfg.model
    rows = hashlib.sha256(json.dumps(held.rows).encode()).hexdigest()[:16]
    return {
        "heldout_pairs": h.heldout_pairs if h.split is not None else holdout.local_path(h.heldout_pairs),
        "data": data_identity(held.data), "rows": len(held.rows), "rows_hash": rows, "kind": held.kind,
        "repeats": h.heldout_repeats, "seed": cfg.data.seed,
        "model": holdout.local_path(m.pretrained_model_name_or_path), "revision": m.revision,
        "unet_init": m.unet_init and holdout.local_path(m.unet_init), "family": m.model_family,
        "resolution": m.resolution, "lora": bool(m.lora_rank), "video": [m.num_frames, m.frame_stride, m.height, m.width],
        "flow": [m.weighting_scheme, m.logit_mean, m.logit_std, m.mode_scale, m.flux_guidance, m.max_sequence_length],
    }  # fmt: skip


def reference_file(cfg: RunConfig) -> Path:
    return Path(cfg.output.output_dir) / FOLDER / REFERENCE_FILE


def read_reference(path: Path, expected: dict) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The stored reference losses, None if there are none; a record for other settings is refused in one line."""
    from safetensors import safe_open

    from sdpo.cache.identity import first_difference

    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        stored = json.loads(f.metadata()["identity"])
        diff = first_difference(stored, expected)
        if diff:
            key, was, now = diff
            raise UserError(
                f"{path} holds the held-out reference losses of a run with {key} {was!r}, this run has {now!r}; "
                f"resume with the run's own held-out settings, or remove {path.parent} to start a new held-out series"
            )
        return f.get_tensor("ref_w"), (f.get_tensor("ref_l") if "ref_l" in f.keys() else None)


def write_reference(path: Path, ref_w: torch.Tensor, ref_l: torch.Tensor | None, record: dict) -> None:
    from safetensors.torch import save_file

    tensors = {"ref_w": ref_w.contiguous()} | ({"ref_l": ref_l.contiguous()} if ref_l is not None else {})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"identity": json.dumps(record)})


def prepare_data(cfg: RunConfig, train_data, accelerator, resuming: bool) -> holdout.HeldOutData | None:
    """The held-out rows (``sdpo.data.holdout``), read and checked, and a resumed run's stored reference checked
    against them: everything that can be wrong with ``--heldout_pairs`` is said before any model loads."""
    if not cfg.heldout.enabled:
        return None
    with untouched_rng(accelerator.device):  # reading data must not move the run's random state
        held = holdout.prepare(cfg, train_data, accelerator.mixed_precision)
    if resuming:  # a new run computes its own reference at step 0 (replacing any older file)
        read_reference(reference_file(cfg), identity(cfg, held))
    log.info("held-out pairs: %s; evaluated every %d steps", held.description, cfg.heldout.heldout_steps)
    return held


# ----------------------------------------------------------------------------- in training


class NoHeldOut:
    """What the loop calls when ``--heldout_pairs`` is not given."""

    def start(self, run) -> None:
        pass

    def after_step(self, run) -> None:
        pass


class HeldOutMonitor:
    """Held-out evaluation at step 0, every ``--heldout_steps`` and at the end, and the winner guard."""

    def __init__(self, run, save_checkpoint):
        h = run.cfg.heldout
        self.cfg = eval_config(run.cfg)
        self.set = HeldOutSet(run.heldout, h.heldout_repeats, h.heldout_batch_size)
        self.every, self.last = h.heldout_steps, run.cfg.optim.max_train_steps
        self.mu = run.cfg.safeguard.winner_preserving_mu
        self.path = reference_file(run.cfg)
        self.record = identity(run.cfg, run.heldout)
        self.guard = WinnerGuard(h)
        self.save_checkpoint = save_checkpoint
        self.reference: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last

    def start(self, run) -> None:
        """Read the stored reference and the values logged before a resume (the guard replays them); evaluate
        step 0 of a new run, or a resumed run's step if it is due and was not logged."""
        acc = run.accelerator
        history = _broadcast(acc, _logged(run) if acc.is_main_process else None)
        for step, values in history:
            self.guard.observe(step, values)
        self.reference = read_reference(self.path, self.record) if run.step > 0 else None
        if acc.is_main_process and run.heldout.train_rows is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path.parent / ROWS_FILE, {"heldout_pairs": run.cfg.heldout.heldout_pairs,
                                                      "rows": run.heldout.rows})  # fmt: skip
        if self.reference is None and run.step > 0 and run.family.reference is None:
            raise UserError(
                f"{self.path} is missing and --train_method {run.cfg.objective.train_method} loads no reference "
                "model to compute it from (its reference is the initial model, gone after step 0); start a new run "
                "with --heldout_pairs, or resume without it"
            )
        if self.due(run.step) and (run.step == 0 or run.step not in {s for s, _ in history}):
            if acc.is_main_process:
                drop_rows(run.jsonl, run.step, PREFIX)  # a new run in an old folder: step 0 is logged again
            self.evaluate(run)
        elif self.reference is None:
            self.evaluate(run, log_values=False)

    def after_step(self, run) -> None:
        if self.due(run.step):
            self.evaluate(run)

    def evaluate(self, run, log_values: bool = True) -> dict[str, float]:
        """Score the policy on every held-out pair (computing the reference's losses first if none are stored),
        log ``heldout/*``, let the guard look."""
        acc, step, start = run.accelerator, run.step, time.perf_counter()
        denoiser = acc.unwrap_model(run.family.denoiser)
        need_ref = self.reference is None
        models = _Models(run.family, denoiser, run.family.reference if need_ref else None)
        mine, real = padded_shard(self.set.num_batches, acc.process_index, acc.num_processes)
        table = torch.zeros(self.set.num_batches, len(_SUMS), dtype=torch.float64)  # CPU: float64 on any device
        refs = []
        with untouched_rng(acc.device), eval_mode(denoiser), torch.no_grad():
            for pos, k in enumerate(mine):
                with acc.autocast():
                    terms = batch_terms(self.set.batch(k), models, self.cfg, acc.device, self.set.pairs)
                if pos >= real:  # padding: every process runs the same number of forwards
                    continue
                if need_ref:
                    refs.append((k, *reference_losses(terms, self.set.pairs)))
                ref_w, ref_l = refs[-1][1:] if need_ref else self._stored(k)
                table[k] = torch.tensor(batch_sums(terms, ref_w, ref_l, self.set.pairs, self.mu), dtype=torch.float64)
        if need_ref:
            self._keep_reference(acc, refs)
        if acc.num_processes > 1:
            table = acc.reduce(table.to(acc.device), reduction="sum").cpu()
        values = summarise(table.tolist(), self.set.pairs)
        if log_values:
            self._log(run, step, values, time.perf_counter() - start)
            line = self.guard.observe(step, values)
            if line:
                self._act(run, line)
        return values

    def _stored(self, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        span = self.set.span(k)
        ref_w, ref_l = self.reference
        return ref_w[span], (ref_l[span] if ref_l is not None else None)

    def _keep_reference(self, acc, refs: list) -> None:
        """Every process's batches' reference losses, in batch order, kept and written once (main process)."""
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            refs = gather_object(refs)
        refs = sorted(refs, key=lambda r: r[0])
        ref_w = torch.cat([r[1] for r in refs])
        ref_l = torch.cat([r[2] for r in refs]) if self.set.pairs else None
        self.reference = (ref_w, ref_l)
        if acc.is_main_process:
            write_reference(self.path, ref_w, ref_l, self.record)
        acc.wait_for_everyone()

    def _log(self, run, step: int, values: dict[str, float], seconds: float) -> None:
        logs = {f"{PREFIX}{k}": values[k] for k in COLUMNS if k in values}
        if run.accelerator.is_main_process:
            run.jsonl.write(step, logs)
            rel = values["win_diff"] / values["ref_w"] if values["ref_w"] else math.nan
            lam = f", lambda {values['lambda']:.3f}" if "lambda" in values else ""
            log.info("held-out at step %d (%d samples, %.1f s): winner - ref %+.4g (%+.2f%%), loser - ref %+.4g, "
                     "margin %+.4g, implicit acc %.3f%s", step, len(self.set), seconds, values["win_diff"], 100 * rel,
                     values["lose_diff"], values["margin"], values["implicit_acc"], lam)  # fmt: skip
        run.accelerator.log(logs, step=step)

    def _act(self, run, line: str) -> None:
        """The guard fired: warn, or checkpoint, record why, and stop (every process: the checkpoint is collective)."""
        acc = run.accelerator
        if self.guard.mode == "warn":
            if acc.is_main_process:
                log.warning(line)
            return
        path = Path(run.cfg.output.output_dir) / f"checkpoint-{run.step}"
        if not (path / STATE_FILE).is_file():  # not a checkpointing step: save this one
            path = self.save_checkpoint(run)
        if acc.is_main_process:
            log.warning(line)
            write_json(self.path.parent / STOP_FILE, {"step": run.step, "checkpoint": path.name, "line": line})
        acc.end_training()
        from sdpo.errors import RunStopped

        raise RunStopped(f"{line}; the weights of step {run.step} are in {path}", exit_code=self.guard.EXIT_CODE)


def _logged(run) -> list[tuple[int, dict]]:
    """``(step, values)`` of the held-out evaluations already in ``metrics.jsonl`` (a resumed run's own: the log
    holds nothing past the resumed step)."""
    from sdpo.training.metrics import read_jsonl

    if not run.jsonl.path.is_file():
        return []
    rows = [r for r in read_jsonl(run.jsonl.path) if any(k.startswith(PREFIX) for k in r) and 0 < r["step"] <= run.step]
    return [(r["step"], {k.removeprefix(PREFIX): v for k, v in r.items() if k.startswith(PREFIX)}) for r in rows]


def _broadcast(acc, obj):
    if acc.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj])[0]


def make_heldout_monitor(run, save_checkpoint) -> HeldOutMonitor | NoHeldOut:
    """The monitor for ``run`` (``save_checkpoint(run)``: the loop's, for the guard's stop)."""
    if run.heldout is None:
        return NoHeldOut()
    return HeldOutMonitor(run, save_checkpoint)
