"""Tiny model build, checkpoint loading and the processor/model token-count agreement (CPU, offline)."""

import huggingface_hub.constants
import pytest
import torch
from PIL import Image
from transformers import LlamaConfig, LlavaNextImageProcessorPil

from gprune.layout import token_layout
from gprune.loading import DEFAULT_GPU_MODEL, SHAPES, TINY, load_model, resolve_model_name
from gprune.tiny import GRID_PINPOINTS, build_tiny


def _inputs(loaded, size=(64, 48), question="What is in the picture?"):
    image = Image.new("RGB", size, (200, 40, 90))
    image.paste((10, 220, 30), (0, 0, size[0] // 2, size[1] // 2))
    return loaded.processor(images=image, text=loaded.prompt(question), return_tensors="pt")


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def test_tiny_build_is_deterministic_and_leaves_caller_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    (model_a, processor_a), (model_b, _) = build_tiny(), build_tiny()
    assert torch.equal(torch.rand(3), expected_next)
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)
    inputs = processor_a(images=Image.new("RGB", (64, 48), (1, 2, 3)), text="[INST] <image>\nhi [/INST]", return_tensors="pt")
    assert torch.equal(_logits(model_a, inputs), _logits(model_b, inputs))


def test_tiny_model_properties(tiny_model):
    assert tiny_model.name == TINY and tiny_model.random_weights
    assert tiny_model.device == torch.device("cpu") and tiny_model.dtype == torch.float32
    assert not tiny_model.model.training
    config = tiny_model.model.config
    assert config.vision_config.image_size == 336 and config.vision_config.patch_size == 14
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"
    assert config.image_grid_pinpoints == GRID_PINPOINTS
    assert config.text_config.num_key_value_heads < config.text_config.num_attention_heads  # GQA
    assert config.image_token_id == tiny_model.processor.tokenizer.convert_tokens_to_ids("<image>")
    assert config.text_config.vocab_size == len(tiny_model.processor.tokenizer)
    assert isinstance(tiny_model.processor.image_processor, LlavaNextImageProcessorPil)


def test_prompt_uses_chat_template(tiny_model):
    prompt = tiny_model.prompt("What color is the car?")
    assert prompt == "[INST] <image>\nWhat color is the car? [/INST]"
    ids = _inputs(tiny_model, question="What color is the car?").input_ids[0]
    assert ids[0].item() == tiny_model.processor.tokenizer.bos_token_id
    assert "What color is the car?" in tiny_model.processor.decode(ids, skip_special_tokens=True)


def test_prompt_refuses_the_image_placeholder(tiny_model):
    # "<image>" in the question would be expanded into a second image's tokens and break the processor.
    with pytest.raises(ValueError, match="must not contain '<image>'"):
        tiny_model.prompt("What is <image> here?")
    assert "< image >" in tiny_model.prompt("What is < image > here?")


@pytest.mark.parametrize(
    "width, height",
    [(300, 1000), (1000, 300), (672, 672), (5, 7), (4000, 3000), (640, 480)],
    ids=["tall", "wide", "square", "tiny", "huge", "640x480"],
)
def test_placeholders_match_packed_features_and_layout(tiny_model, width, height):
    inputs = _inputs(tiny_model, size=(width, height))
    placeholders = int((inputs.input_ids == tiny_model.model.config.image_token_id).sum())
    with torch.no_grad():
        packed = tiny_model.model.model.get_image_features(inputs.pixel_values, inputs.image_sizes).pooler_output
    layout = token_layout((height, width), GRID_PINPOINTS)
    assert placeholders == packed[0].shape[0] == 576 + layout.rows * (layout.cols + 1) == layout.n_tokens
    if (width, height) in ((640, 480), (4000, 3000)):
        assert placeholders == 2340 == 576 + 36 * (48 + 1)


def test_saved_tiny_loads_by_path_with_identical_logits(tiny_model, tmp_path):
    tiny_model.model.save_pretrained(tmp_path)
    tiny_model.processor.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), device="cpu")
    assert loaded.name == str(tmp_path) and not loaded.random_weights
    assert loaded.dtype == torch.float32 and isinstance(loaded.processor.image_processor, LlavaNextImageProcessorPil)
    assert loaded.prompt("hi") == tiny_model.prompt("hi")
    inputs = _inputs(tiny_model)
    assert torch.equal(inputs.input_ids, _inputs(loaded).input_ids)
    assert torch.equal(_logits(tiny_model.model, inputs), _logits(loaded.model, inputs))


@pytest.mark.parametrize("name", ["llava-hf/no-such-model-gprune", DEFAULT_GPU_MODEL, "/no/such/dir", "./missing"])
def test_unreachable_model_gives_clear_error(monkeypatch, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import: patch it too
    with pytest.raises(ValueError) as info:
        load_model(name, device="cpu")
    message = str(info.value)
    assert repr(name) in message and "could not be loaded" in message
    assert "'tiny'" in message and "local directory" in message


def test_non_llava_next_config_is_rejected(tmp_path):
    LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'llama' model, not LLaVA-NeXT"):
        load_model(str(tmp_path), device="cpu")


def test_resolve_model_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_model_name("auto") == SHAPES
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_model_name("auto") == DEFAULT_GPU_MODEL
    assert resolve_model_name(" some/model ") == "some/model"
    for bad in ("", "   ", None, 3):
        with pytest.raises(ValueError, match="model name must be"):
            resolve_model_name(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_bad_device_is_rejected():
    with pytest.raises(ValueError, match="device must be"):
        load_model(TINY, device="not-a-device")
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_model(TINY, device="cuda")
