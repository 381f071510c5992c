"""DetectorGrounder: a local open-vocabulary detector (OWLv2 or Grounding DINO) as a Grounder.

DeepMMSearch-R1 turns ``<img_search>the food on the plate</img_search>`` into a crop with
Grounding DINO. ``DetectorGrounder.from_pretrained(DIR_OR_HUB_ID)`` loads either detector
through transformers' zero-shot object detection classes (``pip install mmsearch-gym[transformers]``)
and returns the highest-scoring box above ``threshold`` in the original image's pixels, clamped;
nothing above it means no match (the env then reports an Invalid action). Named in specs and on
the command line as ``detector:IDEA-Research/grounding-dino-tiny`` or
``detector:google/owlv2-base-patch16-ensemble`` (or a local directory).

Deterministic given its weights and the image, so a run with it replays without recording.
"""

from __future__ import annotations

from typing import Any

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.services.grounder import to_original_box
from mmsearch_gym.tasks import Box, Task

__all__ = ["DetectorGrounder"]

_OWL = ("owlv2", "owlvit")


class DetectorGrounder:
    """Grounds referring expressions with a zero-shot object detector (``model`` + its ``processor``).

    Args:
        model: an ``Owlv2ForObjectDetection``, ``OwlViTForObjectDetection`` or
            ``GroundingDinoForObjectDetection`` (any ``AutoModelForZeroShotObjectDetection``).
        processor: its processor (tokenizer + image processor).
        threshold: minimum box score; below it nothing matches.
        text_threshold: Grounding DINO's token score threshold.
    """

    def __init__(self, model: Any, processor: Any, *, threshold: float = 0.1, text_threshold: float = 0.25) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold must be in [0, 1], got {threshold!r}")
        self.model = model.eval()
        self.processor = processor
        self.threshold = float(threshold)
        self.text_threshold = float(text_threshold)
        self.kind = str(getattr(model.config, "model_type", ""))

    @classmethod
    def from_pretrained(cls, name_or_dir: str, *, threshold: float = 0.1, text_threshold: float = 0.25,
                        device: str = "cpu", **kwargs: Any) -> DetectorGrounder:
        """Load weights from a local directory or the Hugging Face hub."""
        try:
            from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor
        except ImportError as err:
            raise ConfigError(f"the detector grounder needs transformers: pip install 'mmsearch-gym[transformers]' "
                              f"({err})") from None
        try:
            processor = AutoProcessor.from_pretrained(name_or_dir, **kwargs)
            model = AutoModelForZeroShotObjectDetection.from_pretrained(name_or_dir, **kwargs).to(device)
        except OSError as err:
            raise ConfigError(f"cannot load a detector from {name_or_dir!r}: {err}") from None
        return cls(model, processor, threshold=threshold, text_threshold=text_threshold)

    def ground(self, expression: str, task: Task) -> Box | None:
        """The best box for ``expression`` in ``task``'s image (original pixels), or None."""
        import torch

        expression = " ".join(str(expression).split())
        if not expression:
            return None
        image = task.load_image()
        width, height = image.size
        text: Any = [[expression]]  # OWL: one list of queries per image
        if self.kind not in _OWL:  # Grounding DINO: lower-case phrases ending with a period
            text = expression.lower() if expression.endswith(".") else expression.lower() + "."
        inputs = self.processor(text=text, images=image, return_tensors="pt").to(self.model.device)
        with torch.no_grad():
            outputs = self.model(**inputs)
        if self.kind in _OWL:  # OWL pads the image to a square at the bottom and right
            side = max(width, height)
            results = self.processor.post_process_grounded_object_detection(
                outputs, threshold=self.threshold, target_sizes=[(side, side)])
        else:
            results = self.processor.post_process_grounded_object_detection(
                outputs, inputs["input_ids"], threshold=self.threshold, text_threshold=self.text_threshold,
                target_sizes=[(height, width)])
        scores, boxes = results[0]["scores"], results[0]["boxes"]
        for index in torch.argsort(scores, descending=True).tolist():  # best first; skip boxes in OWL's padding
            box = tuple(float(v) for v in boxes[index].tolist())
            found = to_original_box(box, "pixels", (width, height), (width, height))  # type: ignore[arg-type]
            if found is not None:
                return found
        return None

    def __repr__(self) -> str:
        return f"DetectorGrounder({self.kind}, threshold={self.threshold})"
