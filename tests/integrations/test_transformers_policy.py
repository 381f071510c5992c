"""TransformersPolicy with tiny models built here, offline (no hub): a random Qwen3 LM, a
"bigram" Qwen3 whose weights are set so greedy decoding follows a known script (to test
closing-tag stopping through a real ``generate``), and a tiny random Idefics3 VLM."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import itertools

from fixture_world import play_policy, start_episode
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from mmsearch_gym.actions import Answer, ImageSearch, TextSearch, get_dialect
from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.integrations.transformers_policy import TransformersPolicy, cut_at_stop, make_stop_criteria
from mmsearch_gym.policies import Policy, make_policy

TEMPLATES = Path(importlib.util.find_spec("trl").submodule_search_locations[0]) / "chat_templates"
TAGS = ["<reason>", "</reason>", "<search>", "<img>", "</search>", "<text_search>", "</text_search>",
        "<answer>", "</answer>", "<information>", "</information>", "<tool_call>", "</tool_call>",
        "<img_search>", "</img_search>"]
SCRIPT = ["<reason>", "ok", "</reason>", "<search>", "<img>", "</search>", "<text_search>", "france",
          "</text_search>", "<answer>", "paris", "</answer>"]
"""What the bigram model says after the assistant header, token by token."""


# ---------------------------------------------------------------------------------------------
# Tiny model builders (kept here; mmsearch_gym/integrations/tiny_models.py belongs to the TRL helper)
# ---------------------------------------------------------------------------------------------


def corpus() -> list[str]:
    lines = []
    for name in ("mmsearch-r1", "deepmmsearch-r1", "tool-json"):
        d = get_dialect(name)
        lines += d.system_prompt().split("\n") + [d.action_hint()]
    lines += ["Question: What is the capital of the country whose flag is shown?",
              "The image is 320x240 pixels. Flag of France. France. Capital: Paris. No results found.",
              "Your previous action is invalid: no action found. Let me try again.",
              "User: Assistant: system user assistant"] * 3
    return lines


def build_tokenizer(specials: list[str], eos: str, pad: str, template: str,
                    bos: str | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a few KB of prompt text, with a chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad, bos_token=bos)
    fast.add_tokens(TAGS + ["ok", "france", "paris"])  # added, not special: decoding keeps them
    fast.chat_template = template
    return fast


def build_lm(path: Path, *, bigram: bool = False) -> Path:
    """A 2-layer Qwen3 (hidden size 64) with a qwen2.5 chat template, saved to ``path``.

    ``bigram=True`` zeroes every attention/MLP output so each position's logits depend only on
    its own token, then writes the lm head so greedy decoding follows SCRIPT.
    """
    tokenizer = build_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>",
                                "<|endoftext|>", (TEMPLATES / "qwen2_5.jinja").read_text())
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=4096, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
                         initializer_range=0.5)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config)
    if bigram:
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
            header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False).input_ids[-1]
            chain = [header] + tokenizer.convert_tokens_to_ids(SCRIPT) + [tokenizer.eos_token_id]
            embed = model.model.embed_tokens.weight
            unit = embed / embed.pow(2).mean(-1, keepdim=True).sqrt()
            model.lm_head.weight.zero_()
            for a, b in itertools.pairwise(chain):
                model.lm_head.weight[b] += unit[a]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_vlm(path: Path) -> Path:
    """A tiny random Idefics3 (1-layer vision tower, 2-layer text model) and its processor."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    specials = ["<|endoftext|>", "<|begin_of_text|>", "<end_of_utterance>", "<image>",
                "<fake_token_around_image>", "<global-img>"]
    tokenizer = build_tokenizer(specials, "<end_of_utterance>", "<|endoftext|>",
                                (TEMPLATES / "idefics3.jinja").read_text(), bos="<|begin_of_text|>")
    tokenizer.add_special_tokens({"additional_special_tokens": specials[3:]})
    images = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": 32},
                                       max_image_size={"longest_edge": 32})
    processor = Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=1,
                                  chat_template=tokenizer.chat_template)
    config = Idefics3Config(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
        text_config={"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "bos_token_id": tokenizer.bos_token_id, "max_position_embeddings": 4096},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=2,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="module")
def bigram_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lm(tmp_path_factory.mktemp("bigram-lm"), bigram=True)


@pytest.fixture(scope="module")
def vlm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_vlm(tmp_path_factory.mktemp("tiny-vlm"))



# ---------------------------------------------------------------------------------------------
# Stopping at closing tags
# ---------------------------------------------------------------------------------------------


def test_cut_at_stop_keeps_the_first_closing_tag() -> None:
    stops = ("</search>", "</text_search>", "</answer>")
    assert cut_at_stop("<reason>a</reason><search><img></search> trailing", stops) == \
        "<reason>a</reason><search><img></search>"
    assert cut_at_stop("<answer>x</answer><text_search>q</text_search>", stops) == "<answer>x</answer>"
    assert cut_at_stop("<text_search>q</text_search></answer>", stops) == "<text_search>q</text_search>"
    assert cut_at_stop("no tag at all", stops) == "no tag at all"
    assert cut_at_stop("", stops) == ""


def test_stop_criteria_decide_per_row(bigram_path: Path) -> None:
    tokenizer = TransformersPolicy.from_pretrained(bigram_path).tokenizer
    rows = ["prompt <reason>x</reason><search><img></search>", "prompt <reason>x</reason><search><img>"]
    ids = tokenizer(rows, padding=True, return_tensors="pt", add_special_tokens=False).input_ids
    prompt_len = len(tokenizer("prompt ", add_special_tokens=False).input_ids)
    criteria = make_stop_criteria(tokenizer, [("</search>",), ("</search>",)], prompt_len)
    assert criteria(ids, None).tolist() == [True, False]
    # a stop string inside the prompt does not count
    criteria = make_stop_criteria(tokenizer, [("prompt",), ("prompt",)], prompt_len)
    assert criteria(ids, None).tolist() == [False, False]


def test_generation_stops_each_sequence_at_its_dialects_closing_tag(bigram_path: Path, tiny_tasks,
                                                                    memory_backend) -> None:
    policy = TransformersPolicy.from_pretrained(bigram_path, max_new_tokens=40)
    views = [start_episode(MMSearchEnv(tiny_tasks, memory_backend, dialect=d), 1)
             for d in ("mmsearch-r1", "deepmmsearch-r1", "tool-json")]
    texts = policy.act(views)
    assert texts == [
        "<reason>ok</reason><search><img></search>",
        "<reason>ok</reason><search><img></search><text_search>france</text_search>",
        "<reason>ok</reason><search><img></search><text_search>france</text_search><answer>paris</answer>",
    ]
    # the criteria really end generation early (not only the text cut): count generated tokens
    lengths = []
    generate = policy.model.generate

    def spy(**kwargs):
        out = generate(**kwargs)
        lengths.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    policy.model.generate = spy
    assert policy.act(views[:1]) == texts[:1]
    assert lengths == [6]  # <reason> ok </reason> <search> <img> </search>


# ---------------------------------------------------------------------------------------------
# The text-only path
# ---------------------------------------------------------------------------------------------


def test_text_lm_prompt_replaces_images_with_a_placeholder(lm_path: Path, tiny_tasks, memory_backend) -> None:
    policy = TransformersPolicy.from_pretrained(lm_path)
    assert not policy.is_vlm and isinstance(policy, Policy) and policy.name == f"transformers:{lm_path}"
    env = MMSearchEnv(tiny_tasks, memory_backend)
    view = start_episode(env, 1)
    text = "<reason>look</reason><search><img></search>"
    obs, _, _, _, info = env.step(text)
    view.record(text, obs, info)
    messages, images = policy.chat(view)
    assert images == [] and [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"].startswith("[image]\nQuestion: ")
    assert messages[2]["content"] == text and "[image]" in messages[3]["content"]  # the thumbnail
    prompt, _ = policy.prompt(view)
    assert prompt.endswith("<|im_start|>assistant\n") and get_dialect("mmsearch-r1").system_prompt() in prompt


def test_batched_greedy_matches_a_manual_decode(lm_path: Path, tiny_tasks, memory_backend) -> None:
    policy = TransformersPolicy.from_pretrained(lm_path, max_new_tokens=12)
    env = MMSearchEnv(tiny_tasks, memory_backend)
    views = [start_episode(env, i) for i in range(3)]
    batch = policy.act(views)
    assert batch == [policy.act([v])[0] for v in views]  # left padding does not change greedy output

    prompt, _ = policy.prompt(views[0])
    ids = policy.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    new: list[int] = []
    with torch.no_grad():
        for _ in range(12):
            token = int(policy.model(input_ids=ids).logits[0, -1].argmax())
            if token in (policy.tokenizer.eos_token_id, policy.tokenizer.pad_token_id):
                break
            new.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    manual = cut_at_stop(policy.tokenizer.decode(new, skip_special_tokens=True), env.dialect.stop_sequences)
    assert batch[0] == manual and manual  # the text really comes from the model


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(lm_path: Path, tiny_tasks, memory_backend) -> None:
    env = MMSearchEnv(tiny_tasks, memory_backend)
    views = [start_episode(env, i) for i in range(3)]
    state = torch.random.get_rng_state()
    a = TransformersPolicy.from_pretrained(lm_path, max_new_tokens=10, temperature=1.0, seed=1).act(views)
    b = TransformersPolicy.from_pretrained(lm_path, max_new_tokens=10, temperature=1.0, seed=1).act(views)
    c = TransformersPolicy.from_pretrained(lm_path, max_new_tokens=10, temperature=1.0, seed=2).act(views)
    assert a == b and a != c
    assert torch.equal(state, torch.random.get_rng_state())


def test_a_random_lm_plays_whole_episodes(lm_path: Path, tiny_tasks, memory_backend) -> None:
    policy = TransformersPolicy.from_pretrained(lm_path, max_new_tokens=16, batch_size=2)
    view, reward, info = play_policy(MMSearchEnv(tiny_tasks, memory_backend), policy, 0)
    assert len(view.steps) == 3 and 0.0 <= reward <= 1.0 and "reward_breakdown" in info
    assert all(isinstance(s.text, str) for s in view.steps)


def test_a_scripted_lm_earns_the_reward(bigram_path: Path, tiny_tasks, memory_backend) -> None:
    policy = make_policy(f"transformers:{bigram_path}", max_new_tokens=40)
    assert isinstance(policy, TransformersPolicy)
    view, reward, _ = play_policy(MMSearchEnv(tiny_tasks, memory_backend, dialect="tool-json"), policy, 1)
    assert [s.action for s in view.steps] == [Answer("paris")] and reward == pytest.approx(1.0)
    view, reward, _ = play_policy(MMSearchEnv(tiny_tasks, memory_backend), policy, 1)
    assert view.steps[0].action == ImageSearch() and view.steps[0].hits  # a real search ran
    assert view.steps[1].action == ImageSearch() and len(view.steps) == 2  # over budget: truncated
    env = MMSearchEnv(tiny_tasks, memory_backend, dialect="deepmmsearch-r1", max_turns=4)
    view, _, _ = play_policy(env, policy, 1)  # <search><img></search> is no deepmmsearch-r1 tag
    assert [s.action for s in view.steps] == [TextSearch("france")] * 4


def test_bad_arguments_raise_config_errors(lm_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        TransformersPolicy.from_pretrained(tmp_path / "missing")
    with pytest.raises(ConfigError, match="dtype"):
        TransformersPolicy.from_pretrained(lm_path, dtype="float99")
    policy = TransformersPolicy.from_pretrained(lm_path)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        TransformersPolicy(policy.model, policy.tokenizer, max_new_tokens=0)
    with pytest.raises(ConfigError, match="temperature"):
        TransformersPolicy(policy.model, policy.tokenizer, temperature=-1)
    policy.tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="chat template"):
        TransformersPolicy(policy.model, policy.tokenizer)


# ---------------------------------------------------------------------------------------------
# The VLM path
# ---------------------------------------------------------------------------------------------


def test_vlm_gets_every_image_with_one_placeholder_each(vlm_path: Path, tiny_tasks, memory_backend) -> None:
    policy = TransformersPolicy.from_pretrained(vlm_path, max_new_tokens=8)
    assert policy.is_vlm and policy.image_token == "<image>"
    env = MMSearchEnv(tiny_tasks, memory_backend)
    view = start_episode(env, 1)
    text = "<reason>look</reason><search><img></search>"
    obs, _, _, _, info = env.step(text)
    view.record(text, obs, info)
    _messages, images = policy.chat(view)
    assert [im.size for im in images] == [(320, 240), (32, 24)]  # task image, then the thumbnail
    batch = policy.encode([view, start_episode(env, 0)])
    assert tuple(batch["pixel_values"].shape[:2]) == (2, 2)  # 2 episodes, up to 2 images each
    image_id = policy.tokenizer.convert_tokens_to_ids("<image>")
    assert (batch["input_ids"] == image_id).sum(dim=1).tolist() == [2, 1]  # image_seq_len 1 per image
    with torch.no_grad():  # the pixels reach the model
        seen = policy.model(**batch).logits[:, -1]
        other = policy.model(**{**batch, "pixel_values": -batch["pixel_values"]}).logits[:, -1]
    assert not torch.allclose(seen, other)
    out = policy.act([view, start_episode(env, 0)])
    assert len(out) == 2 and all(isinstance(t, str) for t in out)


def test_vlm_plays_an_episode_end_to_end(vlm_path: Path, tiny_tasks, memory_backend) -> None:
    policy = make_policy(f"transformers:{vlm_path}", max_new_tokens=8)
    view, reward, info = play_policy(MMSearchEnv(tiny_tasks, memory_backend), policy, 2)
    assert 1 <= len(view.steps) <= 3 and "reward_breakdown" in info and 0.0 <= reward <= 1.0


def test_vlm_template_that_drops_images_is_refused(vlm_path: Path, tiny_tasks, memory_backend) -> None:
    policy = TransformersPolicy.from_pretrained(vlm_path)
    policy.processor.chat_template = ("{% for m in messages %}{% for c in m['content'] %}"
                                      "{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
                                      "{% endfor %}{% endfor %}Assistant:")
    with pytest.raises(ConfigError, match="placeholders"):
        policy.act([start_episode(MMSearchEnv(tiny_tasks, memory_backend), 0)])
