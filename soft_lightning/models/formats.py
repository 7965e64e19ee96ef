"""Two prompt formats: the principle-driven few-shot prompt that *generates* a round's data, and
the plain prompt->response format the model is *trained* on (principles and examples dropped).

Both use the tokenizer's chat template when it has one, so generation and training agree on
turn boundaries; a plain `### User:` template is the fallback.
"""

from __future__ import annotations

from typing import Protocol

PLAIN_USER, PLAIN_ASSISTANT, PLAIN_SYSTEM = "### User:\n", "### Assistant:\n", "### System:\n"


class Shot(Protocol):
    """An earlier exchange shown in a few-shot prompt (rounds/icl.py's Example)."""

    prompt: str
    response: str


class PromptFormat:
    """Renders conversations with a tokenizer's chat template, or a plain template without one."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self.end_of_turn = self._end_of_turn()

    def render(self, messages: list[dict], *, add_generation_prompt: bool) -> str:
        if self.has_template:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        heads = {"system": PLAIN_SYSTEM, "user": PLAIN_USER, "assistant": PLAIN_ASSISTANT}
        text = "".join(f"{heads[m['role']]}{m['content']}\n\n" for m in messages)
        return text + (PLAIN_ASSISTANT if add_generation_prompt else "")

    def _end_of_turn(self) -> str:
        """What follows an assistant answer before the next turn (e.g. `<|im_end|>`)."""
        if not self.has_template:
            return self.tokenizer.eos_token or ""
        marker = "\x00RESPONSE\x00"
        full = self.render([{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}],
                           add_generation_prompt=False)
        tail = full.split(marker, 1)[1].strip()
        return tail or (self.tokenizer.eos_token or "")

    def stop_strings(self) -> list[str]:
        """Strings that end a generated turn: the end-of-turn marker and the next turn's header."""
        stops = [self.end_of_turn] if self.end_of_turn else []
        if not self.has_template:
            stops += [f"\n{PLAIN_USER.strip()}", f"\n{PLAIN_SYSTEM.strip()}"]
        return [s for s in dict.fromkeys(stops) if s]

    def generation_prompt(self, principles: str, examples: list[Shot], prompt: str) -> str:
        """Principles as the system turn, each exemplar as a past exchange, then the new prompt."""
        messages = [{"role": "system", "content": principles}]
        for ex in examples:
            messages += [{"role": "user", "content": ex.prompt}, {"role": "assistant", "content": ex.response}]
        messages.append({"role": "user", "content": prompt})
        return self.render(messages, add_generation_prompt=True)

    def training_pair(self, prompt: str, response: str, *, finished: bool = True) -> tuple[str, str]:
        """(context, target) text for training; the loss covers only the target.

        A response cut off by the token limit gets no end-of-turn marker, so the model is not
        taught to stop mid-sentence.
        """
        context = self.render([{"role": "user", "content": prompt}], add_generation_prompt=True)
        return context, response + (self.end_of_turn if finished else "")
