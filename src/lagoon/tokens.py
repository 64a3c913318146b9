"""Special tokens and the chat template shared by lagoon's tokenizer, data, inference and agent code.

lagoon's own tokenizer reserves ids 0–31 for special tokens and places the ones Laguna XS.2 uses at
XS.2's ids (〈|EOS|〉 = 2, pad = 9, <think> = 18, </think> = 19, <assistant> = 23, </assistant> = 24,
<tool_call> = 25, </tool_call> = 26), so its models share XS.2's special-token ids. The turn tags that
XS.2 leaves to BPE (<system>, <user>, <tool_response>, …) are single added tokens here, which helps tiny
models learn the format; the rendered text is the same either way.

Every document and every conversation starts with 〈|EOS|〉 (it is also the BOS token).
"""

from __future__ import annotations

from importlib import resources

EOS = "〈|EOS|〉"
PAD = "<pad>"
UNK = "<unk>"
NUM_RESERVED_IDS = 32

# id -> (text, special). "special" tokens are dropped by decode(skip_special_tokens=True).
_ASSIGNED: dict[int, tuple[str, bool]] = {
    0: (UNK, True),
    2: (EOS, True),
    3: ("<system>", False),
    4: ("</system>", False),
    5: ("<user>", False),
    6: ("</user>", False),
    7: ("<tool_response>", False),
    8: ("</tool_response>", False),
    9: (PAD, True),
    10: ("<arg_key>", False),
    11: ("</arg_key>", False),
    12: ("<arg_value>", False),
    13: ("</arg_value>", False),
    18: ("<think>", True),
    19: ("</think>", True),
    23: ("<assistant>", True),
    24: ("</assistant>", True),
    25: ("<tool_call>", True),
    26: ("</tool_call>", True),
}

SPECIAL_TOKENS: list[tuple[str, bool]] = [
    _ASSIGNED.get(i, (f"<|reserved_{i}|>", True)) for i in range(NUM_RESERVED_IDS)
]
"""(text, special) for ids 0..31, in id order."""

TOKEN_IDS: dict[str, int] = {text: i for i, (text, _) in enumerate(SPECIAL_TOKENS)}
EOS_ID = TOKEN_IDS[EOS]
PAD_ID = TOKEN_IDS[PAD]
END_OF_TURN_ID = TOKEN_IDS["</assistant>"]
STOP_IDS = [EOS_ID, END_OF_TURN_ID]
"""Generation stops at either (Laguna XS.2's ``eos_token_id: [2, 24]``)."""


def chat_template() -> str:
    """Laguna's chat template (Jinja, as transformers' ``apply_chat_template`` runs it)."""
    return resources.files("lagoon").joinpath("chat_template.jinja").read_text()
