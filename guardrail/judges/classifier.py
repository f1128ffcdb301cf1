"""A local text-classification model as a judge: Prompt Guard, a DeBERTa injection model.

The model is an ONNX export (``model.onnx``) with its Hugging Face tokenizer
(``tokenizer.json``) and config (``config.json``: ``id2label``), run by ONNX
Runtime on the CPU; the optional extra ``guardrail[classifier]`` installs both.
It is loaded while the guard is built (before the server serves, or in a
worker thread on reload), so a missing or broken model is a policy error
then, never a failure on the first request.

A text is tokenised into windows of ``max_length`` tokens overlapping by
``stride``: every token of a long text is scored, and the text flags if any
window does. Windows of concurrent requests are scored together
(``batching.MicroBatcher``) on the judge's own threads, never on the event
loop. A mapped label whose probability reaches its threshold flags its category.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardrail.judges.base import JudgeError, Verdict
from guardrail.judges.batching import MicroBatcher

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from guardrail.policy.models import ClassifierJudgeSpec

    Probabilities = npt.NDArray[np.float32]

# Texts up to this many characters are tokenised right on the event loop (a
# Rust tokenizer does it in microseconds); longer ones in a thread.
INLINE_CHARS = 4096

# What a sequence-classification export takes; anything else it asks for we cannot give.
_INPUTS = frozenset({"input_ids", "attention_mask", "token_type_ids"})
_INSTALL = "the classifier judge needs: pip install 'guardrail[classifier]'"


@dataclass(frozen=True, slots=True)
class Window:
    """One window of a text's tokens: what the model scores at a time."""

    ids: tuple[int, ...]
    type_ids: tuple[int, ...]


class ClassifierModel:
    """A loaded model: its tokenizer set to cut windows, its ONNX session and its labels."""

    def __init__(self, directory: Path, *, onnx_file: str | None, spec: ClassifierJudgeSpec):
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise _problem(spec.model, f"{_INSTALL} ({exc.name} is missing)") from None
        onnx_path = _onnx_path(directory, onnx_file, spec.model)
        # An export in the repository's onnx/ folder comes with its own tokenizer
        # and config there (ProtectAI's models); else they sit beside it or above.
        folders = dict.fromkeys([onnx_path.parent, directory])
        config = _read_config(_first(folders, "config.json"), spec.model)
        self.labels = _labels(config, spec.model)
        self.multi_label = config.get("problem_type") == "multi_label_classification"
        self.pad_id = int(config.get("pad_token_id") or 0)
        positions = config.get("max_position_embeddings")
        self.positions = positions if isinstance(positions, int) and positions > 0 else None
        try:
            tokenizer = Tokenizer.from_file(str(_first(folders, "tokenizer.json")))
            tokenizer.no_padding()  # padded per batch, to its longest window
            tokenizer.enable_truncation(spec.max_length, stride=spec.stride)
            options = ort.SessionOptions()
            options.intra_op_num_threads = spec.threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(
                str(onnx_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime and tokenizers raise their own kinds
            raise _problem(spec.model, f"cannot load the model: {_first_line(exc)}") from None
        self.tokenizer, self.session = tokenizer, session
        self._inputs = {i.name: i.type for i in session.get_inputs()}
        unknown = set(self._inputs) - _INPUTS
        if "input_ids" not in self._inputs or unknown:
            raise _problem(
                spec.model,
                f"the model takes inputs {sorted(self._inputs)}; a text classifier takes "
                "input_ids and optionally attention_mask and token_type_ids",
            )
        outputs = [o.name for o in session.get_outputs()]
        self._output = "logits" if "logits" in outputs else outputs[0]

    def windows(self, text: str) -> list[Window]:
        """The text's token windows (none for a text with no tokens)."""
        encoding = self.tokenizer.encode(text)
        windows = [encoding, *encoding.overflowing]
        return [Window(tuple(w.ids), tuple(w.type_ids)) for w in windows if w.ids]

    def score(self, windows: list[Window]) -> list[Probabilities]:
        """Each window's label probabilities, from one model run (called on a worker thread)."""
        import numpy as np

        longest = max(len(w.ids) for w in windows)
        ids = np.full((len(windows), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(windows), longest), dtype=np.int64)
        types = np.zeros((len(windows), longest), dtype=np.int64)
        for row, w in enumerate(windows):
            ids[row, : len(w.ids)] = w.ids
            mask[row, : len(w.ids)] = 1
            types[row, : len(w.type_ids)] = w.type_ids
        given = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        feeds = {
            name: given[name].astype(np.int32) if kind == "tensor(int32)" else given[name]
            for name, kind in self._inputs.items()
        }
        logits = np.asarray(self.session.run([self._output], feeds)[0], dtype=np.float32)
        if logits.ndim != 2 or logits.shape != (len(windows), len(self.labels)):
            raise ValueError(f"logits of shape {logits.shape}, {len(self.labels)} labels")
        if self.multi_label:
            probabilities = 1.0 / (1.0 + np.exp(-logits))
        else:
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        if not np.isfinite(probabilities).all():
            # NaN is over no threshold: read as scores, it would pass anything.
            raise ValueError("the model gave scores that are not numbers")
        return list(probabilities)


def load(spec: ClassifierJudgeSpec) -> ClassifierModel:
    """The model a policy names, loaded now; ``UnusableModel`` if it cannot be used."""
    model = ClassifierModel(resolve(spec.model), onnx_file=spec.onnx_file, spec=spec)
    if model.positions is not None and spec.max_length > model.positions:
        # Longer windows would fail every long text's run: say so now.
        raise _problem(
            spec.model,
            f"max_length {spec.max_length} is more than the model's "
            f"max_position_embeddings ({model.positions})",
        )
    unknown = [label for label in spec.labels if label not in model.labels]
    if unknown:
        raise _problem(
            spec.model,
            f"labels maps {unknown[0]!r}, which the model does not have; "
            f"its labels: {', '.join(model.labels)}",
        )
    return model


class ClassifierJudge:
    """Flags the categories of the model's labels that reach their thresholds."""

    inline = False

    def __init__(
        self,
        name: str,
        model: ClassifierModel,
        *,
        labels: Mapping[str, str],
        thresholds: Mapping[str, float],
        batcher: MicroBatcher[Window, Probabilities],
        owner: bool = True,
    ) -> None:
        self._name = name
        self.model = model
        self.labels = dict(labels)  # model label -> our category
        self._thresholds = dict(thresholds)
        self.batcher = batcher
        self._owner = owner  # a narrowed copy shares the model and batcher, and closes neither
        self._columns = [(model.labels.index(label), label) for label in self.labels]

    @classmethod
    def from_spec(cls, name: str, spec: ClassifierJudgeSpec) -> ClassifierJudge:
        """The judge a policy entry describes, its model loaded."""
        model = load(spec)
        batcher: MicroBatcher[Window, Probabilities] = MicroBatcher(
            model.score, size=spec.batch_size, workers=spec.workers, name=f"classifier-{name}"
        )
        thresholds = {label: spec.thresholds.get(label, spec.threshold) for label in spec.labels}
        return cls(name, model, labels=spec.labels, thresholds=thresholds, batcher=batcher)

    @property
    def name(self) -> str:
        return self._name

    def asking(self, categories: Sequence[str]) -> ClassifierJudge:
        """This judge, flagging only the labels mapped to ``categories``."""
        labels = {label: c for label, c in self.labels.items() if c in categories}
        return ClassifierJudge(
            self._name,
            self.model,
            labels=labels,
            thresholds=self._thresholds,
            batcher=self.batcher,
            owner=False,
        )

    async def screen(self, text: str) -> Verdict:
        """Score every window of the text; flag the labels at or over their threshold."""
        started = time.perf_counter()
        try:
            if len(text) <= INLINE_CHARS:
                windows = self.model.windows(text)
            else:
                windows = await asyncio.to_thread(self.model.windows, text)
            scored = await self.batcher.submit(windows)
        except Exception as exc:  # the model's own errors: a judge error, never a pass
            raise JudgeError("internal", f"model run failed: {_first_line(exc)}") from exc
        highest = {
            label: max((float(p[i]) for p in scored), default=0.0) for i, label in self._columns
        }
        flagged = [label for label, p in highest.items() if p >= self._thresholds[label]]
        return Verdict(
            judge=self._name,
            flagged=bool(flagged),
            categories=tuple(dict.fromkeys(self.labels[label] for label in flagged)),
            score=max(highest.values(), default=0.0),
            reason=", ".join(f"{label} {highest[label]:.2f}" for label in flagged),
            latency_s=time.perf_counter() - started,
        )

    async def aclose(self) -> None:
        """Stop the batcher's workers (the judge built from the policy owns them)."""
        if self._owner:
            await self.batcher.aclose()


# --- finding and reading the model's files ----------------------------------------


def resolve(model: str) -> Path:
    """A model directory, or a Hugging Face model id's snapshot in the local cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if model.count("/") == 1 and not model.startswith((".", "/", "~")):
        snapshot = _cached(model)
        if snapshot is not None:
            return snapshot
        raise _problem(
            model,
            f"no such directory, and no snapshot of it in the Hugging Face cache ({_hub_cache()}); "
            "the model is never downloaded at run time: fetch it first "
            "(huggingface-cli download) or give its directory",
        )
    raise _problem(model, "no such model directory")


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def _cached(model_id: str) -> Path | None:
    # The hub cache's layout: models--org--name/refs/main names a snapshot directory.
    repo = _hub_cache() / ("models--" + model_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshot = repo / "snapshots" / ref.read_text(encoding="utf-8").strip()
        return snapshot if snapshot.is_dir() else None
    snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime)
    return snapshots[-1] if snapshots else None


def _first(folders: Iterable[Path], name: str) -> Path:
    paths = [folder / name for folder in folders]
    return next((path for path in paths if path.is_file()), paths[0])


def _read_config(path: Path, model: str) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _problem(model, f"cannot read config.json: {_first_line(exc)}") from None
    if not isinstance(config, dict):
        raise _problem(model, "config.json is not a JSON object")
    return config


def _labels(config: Mapping[str, Any], model: str) -> list[str]:
    id2label = config.get("id2label")
    wanted = 'config.json needs id2label: {"0": label, "1": label, ...}'
    if not isinstance(id2label, dict) or not id2label:
        raise _problem(model, wanted)
    try:
        by_id = {int(i): str(label) for i, label in id2label.items()}
    except ValueError:
        raise _problem(model, wanted) from None
    if sorted(by_id) != list(range(len(by_id))):
        raise _problem(model, wanted)
    return [by_id[i] for i in range(len(by_id))]


def _onnx_path(directory: Path, onnx_file: str | None, model: str) -> Path:
    candidates = [onnx_file] if onnx_file else ["model.onnx", "onnx/model.onnx"]
    for name in candidates:
        if (directory / name).is_file():
            return directory / name
    raise _problem(model, f"no {' or '.join(candidates)} in {directory}")


class UnusableModel(ValueError):
    """A model that cannot be loaded or does not fit the policy (the factory makes it a
    ``PolicyError`` naming the judge)."""


def _problem(model: str, message: str) -> UnusableModel:
    return UnusableModel(f"classifier model {model!r}: {message}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
