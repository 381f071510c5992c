"""Shared builders for the veRL adapter tests: stand-ins for veRL's server manager, configs, rows.

Imported only by test modules that first checked veRL imports (``pytest.importorskip``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.workers.rollout.replica import TokenOutput

from mmsearch_gym.integrations.verl.data import to_verl_rows
from mmsearch_gym.registration import resolve_tasks
from mmsearch_gym.tasks import TaskSet

TEMPLATE = (Path(__file__).parent / "qwen2_5_chat_template.jinja").read_text(encoding="utf-8")


def trainer_config(*, response_length: int = 512, prompt_length: int = 2048, fmt: str = "hermes") -> Any:
    """The parts of veRL's trainer config an agent loop reads."""
    return OmegaConf.create({
        "actor_rollout_ref": {"rollout": {
            "prompt_length": prompt_length, "response_length": response_length, "full_determinism": False,
            "multi_turn": {"max_user_turns": 4, "max_assistant_turns": 4, "max_parallel_calls": 1,
                           "max_tool_response_length": 4096, "tool_response_truncate_side": "middle",
                           "format": fmt},
        }},
        "data": {"apply_chat_template_kwargs": {}, "mm_processor_kwargs": {}},
    })


class ScriptedServer:
    """Stand-in for veRL's LLMServerClient: replies with scripted turns, tokenized."""

    def __init__(self, tokenizer: Any, replies: list[str]) -> None:
        self.tokenizer, self.replies, self.calls = tokenizer, list(replies), []

    async def generate(self, *, request_id: str, prompt_ids: list[int], sampling_params: dict[str, Any],
                       **kwargs: Any) -> TokenOutput:
        self.calls.append({"prompt_ids": list(prompt_ids), "sampling_params": dict(sampling_params)})
        text = self.replies.pop(0) if self.replies else "<answer>none</answer>"
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        return TokenOutput(token_ids=ids, log_probs=[-0.5] * len(ids))


class TinyModelServer:
    """Stand-in for veRL's LLMServerClient that samples from a tiny HF model on CPU."""

    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int = 24, seed: int = 0) -> None:
        self.model, self.tokenizer, self.max_new_tokens = model, tokenizer, max_new_tokens
        self.generator = torch.Generator().manual_seed(seed)
        self.calls = 0

    async def generate(self, *, request_id: str, prompt_ids: list[int], sampling_params: dict[str, Any],
                       **kwargs: Any) -> TokenOutput:
        self.calls += 1
        new: list[int] = []
        stops = list(sampling_params.get("stop") or [])
        inputs, past = torch.tensor([list(prompt_ids)]), None
        with torch.no_grad():
            for _ in range(self.max_new_tokens):
                out = self.model(inputs, past_key_values=past, use_cache=True)
                past = out.past_key_values
                probs = torch.softmax(out.logits[0, -1].float(), -1)
                token = int(torch.multinomial(probs, 1, generator=self.generator))
                new.append(token)
                inputs = torch.tensor([[token]])
                if token == self.tokenizer.eos_token_id:
                    break
                if stops and any(s in self.tokenizer.decode(new, skip_special_tokens=True) for s in stops):
                    break
        return TokenOutput(token_ids=new, log_probs=[-1.0] * len(new))


def world_rows(n: int = 3, dialect: str = "mmsearch-r1") -> tuple[TaskSet, list[dict[str, Any]]]:
    tasks = resolve_tasks("world:test")
    picked = TaskSet(list(tasks)[:n], name="world-test-head")
    return picked, to_verl_rows(picked, dialect=dialect)


def loop_kwargs(config: Any, server: Any, tokenizer: Any, tools: list | None = None) -> dict[str, Any]:
    """The keyword arguments veRL's AgentLoopWorker gives every agent loop."""
    return {"trainer_config": DictConfigWrap(config), "server_manager": server, "tokenizer": tokenizer,
            "processor": None, "dataset_cls": RLHFDataset, "data_config": DictConfigWrap(config.data),
            "tools": ToolListWrap(tools or [])}


def scripted_episodes(tokenizer: Any, rows: list[dict[str, Any]], replies: Any, env: Any,
                      tools: list | None = None) -> list[Any]:
    """Agent-loop outputs for ``rows``, each played with ``replies(row)`` as the policy: veRL's
    ToolAgentLoop over ``tools`` when given, else MMSearchAgentLoop over ``env``."""
    import asyncio

    from verl.experimental.agent_loop.tool_agent_loop import ToolAgentLoop

    from mmsearch_gym.integrations.verl.agent_loop import MMSearchAgentLoop

    async def main() -> list[Any]:
        outs = []
        for row in rows:
            kwargs = loop_kwargs(trainer_config(response_length=4096), ScriptedServer(tokenizer, replies(row)),
                                 tokenizer, tools)
            loop = ToolAgentLoop(**kwargs) if tools else MMSearchAgentLoop(**kwargs, env=env)
            outs.append(await loop.run({"temperature": 1.0}, raw_prompt=row["prompt"], extra_info=row["extra_info"],
                                       tools_kwargs=row["extra_info"]["tools_kwargs"]))
        return outs

    return asyncio.run(main())


def imprint(model: Any, episodes: list[Any], *, steps: int = 120, lr: float = 3e-3, seed: int = 0) -> list[float]:
    """A few SFT steps on agent-loop episodes (loss on the policy's own tokens, response_mask 1),
    so a random tiny LM takes the dialect's actions; returns the loss curve."""
    torch.manual_seed(seed)
    rows = []
    for out in episodes:
        ids = list(out.prompt_ids) + list(out.response_ids)
        labels = [-100] * len(out.prompt_ids) + [t if m else -100 for t, m in zip(out.response_ids, out.response_mask,
                                                                                   strict=True)]
        rows.append((torch.tensor([ids]), torch.tensor([labels])))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for step in range(steps):
        ids, labels = rows[step % len(rows)]
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    model.eval()
    return losses
