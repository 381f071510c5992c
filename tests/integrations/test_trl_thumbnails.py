"""Result thumbnails reach a VLM on the GRPO route of the VLM recipes (TRL's environment_factory).

TRL 1.16 computes a ``rollout_func``'s image features from the dataset images alone, so the
rollout route gives a VLM its tool results as text; its tool-calling loop instead renders an
``image_search`` tool's image blocks into the completion and feeds their pixels to the model,
in generation and in the loss's forward pass. This test drives TRL's real GRPOTrainer on the
tiny VLM (random weights, built here) with the first turn scripted to call ``image_search`` (a
random model never emits a tool call) and checks the thumbnail's image tokens and pixels in
both model inputs, with the loss mask 0 on them.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")

import torch  # noqa: E402

from mmsearch_gym.integrations import trl as T  # noqa: E402
from mmsearch_gym.integrations.tiny_models import load_tiny_model  # noqa: E402
from mmsearch_gym.integrations.trl.recipe import _route_of  # noqa: E402
from mmsearch_gym.integrations.trl.tool_env import _tool_schemas  # noqa: E402

from .test_trl import _grpo_args, _image_tokens_match, make_backend, make_env, make_tasks, short_prompt  # noqa: E402

_CALL = '<tool_call>\n{"name": "image_search", "arguments": {}}\n</tool_call>'


def _tiny_vlm(work: Path) -> tuple[Any, Any]:
    texts = [short_prompt("tool-json"), _CALL, json.dumps(_tool_schemas())]
    return load_tiny_model(T.make_tiny_model(work / "init", kind="vlm", tasks=make_tasks(), texts=texts,
                                             vocab_size=768))


def test_environment_route_feeds_result_thumbnails_to_the_vlm(tmp_path: Path) -> None:
    torch.manual_seed(0)
    backend = make_backend()
    env = make_env("tool-json", backend)
    model, processor = _tiny_vlm(tmp_path)
    data = T.to_dataset(env.tasks, route="environment", images=True, system_prompt=short_prompt("tool-json"), n=1)
    tokenizer = processor.tokenizer
    # TRL suppresses the image token in sampling; a random model could still sample the video one
    placeholders = [tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>")]
    trainer = T.make_grpo_trainer(model, processor, env, data, route="environment", output_dir=tmp_path / "grpo",
                                  args=_grpo_args(per_device_train_batch_size=4, max_steps=1,
                                                  max_completion_length=160, max_tool_calling_iterations=1,
                                                  generation_kwargs={"suppress_tokens": placeholders}))
    call_ids = tokenizer(_CALL, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    image_token = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    merge = processor.image_processor.merge_size ** 2
    real = trainer._generate_single_turn
    seen: list[dict[str, Any]] = []

    def generate(prompt_ids: list[list[int]], images: Any, fields: dict[str, Any], num_generations: int,
                 has_tool_images: bool = False) -> Any:
        if not seen and not has_tool_images:  # the first turn: scripted, a whole-image search
            seen.append({"first": True})
            return [list(call_ids) for _ in prompt_ids], None
        seen.append({"ids": [list(ids) for ids in prompt_ids], "images": images,
                     "grid": fields.get("image_grid_thw"), "pixels": fields.get("pixel_values")})
        return real(prompt_ids, images, fields, num_generations, has_tool_images)

    trainer._generate_single_turn = generate
    batches: list[dict[str, Any]] = []
    original = trainer._generate_and_score_completions
    trainer._generate_and_score_completions = lambda inputs: batches.append(original(inputs)) or batches[-1]
    trainer.train()

    assert [call[0] for call in backend.calls] == ["image"] * 4  # each rollout's search ran in the env
    # generation after the tool call: the model input holds the task image and the thumbnail
    after = seen[1]
    assert [len(images) for images in after["images"]] == [2] * 4
    assert after["grid"] is not None and after["grid"].shape[0] == 8
    for row, ids in enumerate(after["ids"]):
        expected = sum(after["grid"][2 * row + k].prod().item() // merge for k in range(2))
        assert ids.count(image_token) == expected  # task image + thumbnail
        call_end = max(i for i in range(len(ids)) if ids[i:i + len(call_ids)] == call_ids)
        assert image_token in ids[call_end:]  # the thumbnail's tokens follow the tool call
    assert after["pixels"].shape[0] == int(after["grid"].prod(dim=1).sum())
    # the loss's forward pass: the same images, their tokens in the completion, masked from the loss
    batch = batches[0]
    assert batch["num_images"] == [2] * 4
    _image_tokens_match(batch, processor)
    completion = batch["completion_ids"]
    in_completion = completion == image_token
    assert in_completion.sum(dim=1).tolist() == [
        batch["image_grid_thw"][2 * row + 1].prod().item() // merge for row in range(4)]
    assert (batch["tool_mask"][in_completion] == 0).all()


@pytest.mark.parametrize(("recipe", "images", "route"), [
    ({}, True, "environment"), ({}, False, "rollout"), ({"route": "rollout"}, True, "rollout"),
    ({"route": "environment"}, False, "environment")])
def test_vlm_recipes_default_to_the_route_that_shows_thumbnails(recipe: dict[str, Any], images: bool,
                                                                route: str) -> None:
    assert _route_of({**recipe, "images": images}) == route


def test_rollout_route_warns_a_vlm_that_results_arrive_as_text(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from mmsearch_gym.integrations.trl.rollout import TEXT_RESULTS_WARNING

    _, processor = _tiny_vlm(tmp_path)
    rollout = T.make_rollout_func(make_env("mmsearch-r1"))
    trainer = SimpleNamespace(processing_class=processor, use_vllm=False, max_completion_length=16)
    with pytest.warns(UserWarning, match="text only"):
        assert rollout([], trainer)["completion_ids"] == []
    assert "route='environment'" in TEXT_RESULTS_WARNING
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rollout([], trainer)  # once per rollout function
        rollout([], SimpleNamespace(processing_class=processor.tokenizer, use_vllm=False, max_completion_length=16))
