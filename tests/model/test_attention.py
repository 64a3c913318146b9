"""Sliding windows, document masking and construction on the meta device."""

from __future__ import annotations

import torch

from lagoon.model import LagunaForCausalLM, preset_config
from lagoon.model.layers import attention_mask


def test_sliding_window_equals_full_attention_with_an_explicit_window_mask():
    window, length = 4, 12
    mask = attention_mask(None, window, length, torch.device("cpu"))[0, 0]
    expected = torch.tensor([[0 <= q - k < window for k in range(length)] for q in range(length)])
    assert torch.equal(mask, expected)

    # A sliding-only model with window W equals a full-attention model given that explicit mask.
    sliding = LagunaForCausalLM(preset_config("tiny", vocab_size=64, attention_pattern=["sliding_attention"],
                                              sliding_window=window)).eval()
    full_config = preset_config("tiny", vocab_size=64, attention_pattern=["full_attention"],
                                rope_parameters={"full_attention": sliding.config.rope_parameters["sliding_attention"]})
    full = LagunaForCausalLM(full_config).eval()
    full.load_state_dict(sliding.state_dict())
    input_ids = torch.randint(0, 64, (2, length))

    class WindowMask:
        def update(self, layer_idx, key, value):
            return key, value, mask[None, None]

    with torch.no_grad():
        assert not torch.allclose(sliding(input_ids).logits, full(input_ids).logits, atol=1e-4)
        masked = full(input_ids, cache=WindowMask()).logits
        assert torch.allclose(sliding(input_ids).logits, masked, atol=1e-5)


def test_document_masking_equals_running_documents_separately():
    model = LagunaForCausalLM(preset_config("tiny", vocab_size=64, sliding_window=5)).eval()
    lengths = [7, 3, 10]
    documents = [torch.randint(0, 64, (1, n)) for n in lengths]
    packed = torch.cat(documents, dim=1)
    document_ids = torch.cat([torch.full((1, n), i) for i, n in enumerate(lengths)], dim=1)
    with torch.no_grad():
        together = model(packed, document_ids=document_ids).logits
        apart = torch.cat([model(doc).logits for doc in documents], dim=1)
        unmasked = model(packed).logits
    assert torch.allclose(together, apart, atol=1e-5)
    assert not torch.allclose(together[:, 7:], unmasked[:, 7:], atol=1e-3)


def test_meta_construction_then_init_weights_gives_a_working_model():
    config = preset_config("tiny", vocab_size=64, tie_word_embeddings=True)
    with torch.device("meta"):
        model = LagunaForCausalLM(config)
    model.to_empty(device="cpu")
    model.init_weights(seed=3)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all(), name
    reference = LagunaForCausalLM(config)
    reference.init_weights(seed=3)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
    output = model(torch.randint(0, 64, (2, 9)), targets=torch.randint(0, 64, (2, 9)))
    assert output.logits.shape == (2, 9, 64) and torch.isfinite(output.loss)
