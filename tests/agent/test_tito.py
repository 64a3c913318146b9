"""Token-in/token-out contexts with a real lagoon tokenizer and Laguna's chat template: the appended ids equal
a fresh render of the conversation, and every kind of break starts a new sample."""

from __future__ import annotations

from lagoon.agent.arith import generate_tasks, solution_messages, supervised_examples
from lagoon.agent.tito import TitoContext, canonical_completion_ids, encode, encode_conversation, render
from lagoon.tokens import END_OF_TURN_ID


def test_supervised_examples_are_a_fresh_render_token_for_token(tokenizer):
    for example in supervised_examples(5, level=3, seed=4, tokenizer=tokenizer):
        ids, mask = example["input_ids"], example["loss_mask"]
        full = encode(tokenizer, render(example["messages"], False, False))
        assert full[-1] != END_OF_TURN_ID and ids == full[:-1]  # everything up to the last </assistant>
        trained = tokenizer.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)
        assert trained.count("</assistant>") == 2 and f"ANSWER: {example['answer']}" in trained
        assert "<user>" not in trained and "<system>" not in trained


def test_canonical_turns_keep_the_prefix_property(tokenizer):
    task = generate_tasks(n=1, level=2, seed=5)[0]
    messages = solution_messages(task)
    for role in ("user", "tool"):
        context = TitoContext(tokenizer, messages[:2])
        first_prompt = context.take_prompt_ids()
        assert first_prompt == encode(tokenizer, render(messages[:2], True, False))
        context.add_completion(canonical_completion_ids(tokenizer, messages, 2))
        check = context.add_observation(messages[3]["content"], role)
        assert check.ok and context.sample == 0
        expected = [*messages[:3], {"role": role, "content": messages[3]["content"]}]
        assert context.ids == encode(tokenizer, render(expected, True, False))
        framing = tokenizer.decode(context.take_prompt_ids(), skip_special_tokens=False)
        opening = "<user>" if role == "user" else "<tool_response>"
        assert framing == f"\n{opening}\n{messages[3]['content']}\n{opening.replace('<', '</')}\n<assistant>\n</think>"


def test_non_canonical_tokenization_starts_a_new_sample(tokenizer):
    task = generate_tasks(n=1, level=2, seed=6)[0]
    messages = solution_messages(task)
    canonical = canonical_completion_ids(tokenizer, messages, 2)
    # Spell one multi-character token as two shorter ones: the same text, other ids.
    position, piece = next((i, tokenizer.decode([t])) for i, t in enumerate(canonical)
                           if t >= 32 and len(tokenizer.decode([t])) >= 2)
    split = encode(tokenizer, piece[:1]) + encode(tokenizer, piece[1:])
    odd = canonical[:position] + split + canonical[position + 1:]
    assert tokenizer.decode(odd) == tokenizer.decode(canonical) and odd != canonical
    context = TitoContext(tokenizer, messages[:2])
    context.take_prompt_ids()
    context.add_completion(odd)
    check = context.add_observation(messages[3]["content"])
    assert not check.ok and check.reason == "same text, different tokenization"
    assert context.sample == 1
    fresh = encode(tokenizer, render(context.messages, True, False))
    assert context.ids == fresh and context.take_prompt_ids() == fresh  # the new sample's whole prompt


def test_text_the_template_would_not_render_starts_a_new_sample(tokenizer):
    messages = solution_messages(generate_tasks(n=1, level=1, seed=8)[0])
    context = TitoContext(tokenizer, messages[:2])
    # No newline after the generation prompt, and trailing spaces: the template normalises both.
    context.add_completion(encode(tokenizer, "```python\nprint(1)\n```  \n</assistant>"))
    check = context.add_observation("1")
    assert not check.ok and check.reason == "the template renders the conversation differently"
    assert context.sample == 1


def test_thinking_mode(tokenizer):
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "<think>\nadd them\n</think>\n```python\nprint(2+2)\n```"},
                {"role": "user", "content": "4"},
                {"role": "assistant", "content": "<think>\nthe output says 4\n</think>\nANSWER: 4"}]
    ids, mask = encode_conversation(messages, tokenizer, enable_thinking=True)
    assert tokenizer.decode(ids, skip_special_tokens=False).endswith("the output says 4\n</think>\nANSWER: 4\n</assistant>")
    assert sum(mask) > 0 and mask[-1] == 1
