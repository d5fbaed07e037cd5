"""Tests of `torch_bridge.reward_models`: every model loads through its real code path.

No weights can be downloaded here, so each model is a tiny randomly initialised one written to a
temporary directory in its real on-disk format (a torchvision state dict, a `save_pretrained`
directory, the LAION `.pth` layout) and read back by the factories. Each score is checked
against something independent: the `lpips` package building its own trunk, transformers'
`CLIPImageProcessor` + `CLIPModel.get_image_features`, a hand-written MLP, and fixed judge
answers for the parser.
"""

from __future__ import annotations

import hashlib
import math
import pathlib

import pytest

pytestmark = pytest.mark.torch

torch = pytest.importorskip("torch")

from torch_bridge import reward_models as rm  # noqa: E402

PAPER = pathlib.Path(__file__).resolve().parents[2] / "shared" / "docs" / "irpo-paper.txt"


def _images(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=gen)


# ------------------------------------------------------------------------------------------
# Registry and configuration
# ------------------------------------------------------------------------------------------


def test_default_config_holds_the_paper_weights():
    cfg = rm.default_reward_model_config()
    assert set(cfg) == set(rm.COMPONENTS)
    # Eq. 22 x B.1: 0.6 * 0.25 (CLIP, LPIPS), 0.6 * 0.15 (aesthetic), 0.1 (judge).
    assert cfg["clip"]["weight"] == pytest.approx(0.6 * 0.25)
    assert cfg["lpips"]["weight"] == pytest.approx(0.6 * 0.25)
    assert cfg["aesthetic"]["weight"] == pytest.approx(0.6 * 0.15)
    assert cfg["qwen"]["weight"] == pytest.approx(0.1)
    assert cfg["clip"]["model_path"] == "openai/clip-vit-large-patch14"
    assert cfg["qwen"]["model_path"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert cfg["lpips"]["net"] == "alex" and cfg["qwen"]["continuous"] is False
    cfg["clip"]["weight"] = 5.0
    assert rm.default_reward_model_config()["clip"]["weight"] == pytest.approx(0.15)  # fresh copy


def test_unknown_component_and_field_are_rejected():
    with pytest.raises(ValueError, match=r"unknown reward model.*'pickscore'.*valid.*aesthetic"):
        rm.build_components({"pickscore": {"weight": 1.0}})
    with pytest.raises(ValueError, match=r"reward\.models\.clip: unknown field.*model_pth.*model_path"):
        rm.build_components({"clip": {"model_pth": "x"}})


def test_weight_zero_is_not_built_even_without_weights(tmp_path):
    missing = str(tmp_path / "nowhere")
    cfg = {
        "lpips": {"weight": 0, "trunk_path": missing},
        "clip": {"weight": 0.0, "model_path": missing},
        "aesthetic": {"weight": 0, "head_path": missing},
        "qwen": {"weight": 0, "model_path": missing},
    }
    assert rm.build_components(cfg) == {}


@pytest.mark.parametrize(
    "name, section, key",
    [
        ("clip", {"model_path": "{tmp}/no_clip_here"}, "reward.models.clip.model_path"),
        ("qwen", {"model_path": "{tmp}/no_qwen_here"}, "reward.models.qwen.model_path"),
        ("lpips", {"trunk_path": "{tmp}/alexnet.pth"}, "reward.models.lpips.trunk_path"),
        ("aesthetic", {"head_path": "{tmp}/head.pth"}, "reward.models.aesthetic.head_path"),
    ],
)
def test_missing_weights_name_the_key_and_the_path(tmp_path, name, section, key):
    section = {k: v.format(tmp=tmp_path) for k, v in section.items()}
    with pytest.raises(rm.RewardModelUnavailable) as err:
        rm.build_components({name: section})
    message = str(err.value)
    assert key in message
    assert str(next(iter(section.values()))) in message
    assert isinstance(err.value, ValueError)


def test_every_missing_model_is_named_at_once(tmp_path):
    cfg = {"lpips": {"trunk_path": str(tmp_path / "alexnet.pth")}, "qwen": {"model_path": str(tmp_path / "no_qwen")}}
    with pytest.raises(rm.RewardModelUnavailable, match="2 reward models are unavailable") as err:
        rm.build_components(cfg)
    for key in ("reward.models.lpips.trunk_path", "reward.models.qwen.model_path"):
        assert key in str(err.value)


def test_uncached_hub_id_and_weightless_directory_are_unavailable(tmp_path):
    with pytest.raises(rm.RewardModelUnavailable) as err:
        rm.build_components({"clip": {"model_path": "irpo-jax-tests/no-such-model"}})
    assert "reward.models.clip.model_path" in str(err.value)
    assert "irpo-jax-tests/no-such-model" in str(err.value)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(rm.RewardModelUnavailable, match=r"reward\.models\.qwen\.model_path.*no weight"):
        rm.build_components({"qwen": {"model_path": str(tmp_path)}})


def test_lpips_hub_cache_miss_names_the_cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(rm.RewardModelUnavailable) as err:
        rm.build_components({"lpips": {}})
    message = str(err.value)
    assert "reward.models.lpips.trunk_path" in message
    expected = tmp_path / "torch_home" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert str(expected) in message


def test_batch_shapes_are_checked(lpips_trunk):
    comp = rm.build_lpips({"trunk_path": str(lpips_trunk[0])}, "cpu")
    x = _images(2, 32, 32, 3)
    with pytest.raises(ValueError, match="one shape"):
        comp(x, x, x[:1])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        comp(x[:, :1], x[:, :1], x[:, :1])
    # The shared base checks the ids for every model (LPIPS itself does not use them).
    with pytest.raises(ValueError, match="sample_ids has 1 entries for a batch of 2"):
        comp(x, x, x, sample_ids=["a"])


def test_every_model_shares_the_base_contract():
    """The four models inherit info() and the checked __call__; each defines only its own part."""
    models = (rm.LPIPSReward, rm.ClipSimilarityReward, rm.AestheticReward, rm.QwenJudgeReward)
    for cls in models:
        assert issubclass(cls, rm.RewardModel), cls
        assert "__call__" not in vars(cls) and "info" not in vars(cls), cls
        assert {"describe", "score"} <= set(vars(cls)), cls
    assert sorted(cls.name for cls in models) == sorted(rm.COMPONENTS)


# ------------------------------------------------------------------------------------------
# LPIPS
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lpips_trunk(tmp_path_factory):
    """A random torchvision AlexNet, and its state dict saved as the trunk file."""
    import torchvision

    torch.manual_seed(0)
    alexnet = torchvision.models.alexnet(weights=None).eval()
    state = {k: v for k, v in alexnet.state_dict().items() if k.startswith("features.")}
    # The real file also holds the 61M-parameter classifier; one small key stands in for it
    # (the loader must ignore classifier keys).
    state["classifier.6.bias"] = torch.zeros(1000)
    path = tmp_path_factory.mktemp("lpips") / "alexnet_random.pth"
    torch.save(state, path)
    return path, alexnet


def _lpips_package_reference(alexnet, monkeypatch):
    """lpips building its own trunk from `alexnet` (as it does from torchvision's download)."""
    import lpips
    import lpips.pretrained_networks as pn

    monkeypatch.setattr(pn.tv, "alexnet", lambda *args, **kwargs: alexnet)
    return lpips.LPIPS(net="alex", pretrained=True, pnet_rand=False, verbose=False).eval()


def test_lpips_matches_the_lpips_package(lpips_trunk, monkeypatch):
    path, alexnet = lpips_trunk
    comp = rm.build_components({"lpips": {"trunk_path": str(path)}})["lpips"]
    reference = _lpips_package_reference(alexnet, monkeypatch)
    restored, clean = _images(3, 64, 64, 1), _images(3, 64, 64, 2)
    got = comp(_images(3, 64, 64, 3), restored, clean)
    with torch.no_grad():
        want = 1.0 - reference(restored, clean, normalize=True).flatten()
    assert got.shape == (3,) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    same = comp(clean, clean, clean)
    torch.testing.assert_close(same, torch.ones(3), atol=1e-6, rtol=0)

    info = comp.info()
    assert info["name"] == "lpips" and info["model_id"] == "lpips-alex-v0.1"
    assert info["weights"][str(path)] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert any(p.endswith("weights/v0.1/alex.pth") for p in info["weights"])
    assert info["device"] == "cpu" and info["dtype"] == "float32"


def test_lpips_loads_the_trunk_from_the_torch_hub_cache(lpips_trunk, tmp_path, monkeypatch):
    path, _ = lpips_trunk
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "alexnet-owt-7be5be79.pth").write_bytes(path.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    comp = rm.build_lpips({}, "cpu")
    assert str(comp.trunk_path).startswith(str(tmp_path))
    x = _images(1, 32, 32, 3)
    assert torch.isfinite(comp(x, x, x)).all()


def test_lpips_refuses_a_wrong_trunk_file(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(3, 3, 3, 3)}, bad)
    with pytest.raises(rm.RewardModelUnavailable, match=r"reward\.models\.lpips\.trunk_path.*features"):
        rm.build_lpips({"trunk_path": str(bad)}, "cpu")


# ------------------------------------------------------------------------------------------
# CLIP and the aesthetic head
# ------------------------------------------------------------------------------------------

CLIP_MEAN = [0.5, 0.4, 0.3]  # deliberately not OpenAI's, to see that the file's values are used
CLIP_STD = [0.2, 0.25, 0.3]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random CLIPModel (768-d projection, as ViT-L/14) + processor, save_pretrained."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config=dict(
            vocab_size=99,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
        projection_dim=768,
    )
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("clip")
    CLIPModel(config).eval().save_pretrained(directory)
    CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    ).save_pretrained(directory)
    return directory


def _transformers_clip_embeddings(directory: pathlib.Path, images: torch.Tensor) -> torch.Tensor:
    """transformers' own processor (float input, no rescale) and model: the independent path."""
    from transformers import CLIPImageProcessor, CLIPModel

    processor = CLIPImageProcessor.from_pretrained(directory)
    model = CLIPModel.from_pretrained(directory).eval()
    pixels = processor(images=list(images), do_rescale=False, return_tensors="pt").pixel_values
    with torch.no_grad():
        return model.get_image_features(pixel_values=pixels).pooler_output


def test_clip_cosine_matches_transformers(clip_dir):
    comp = rm.build_components({"clip": {"model_path": str(clip_dir)}})["clip"]
    # Non-square and larger than the model's 32 px: exercises shortest-edge resize + centre crop.
    restored, clean = _images(3, 48, 64, 4), _images(3, 48, 64, 5)
    got = comp(restored, restored, clean)
    e_restored = _transformers_clip_embeddings(clip_dir, restored)
    e_clean = _transformers_clip_embeddings(clip_dir, clean)
    want = torch.nn.functional.cosine_similarity(e_restored, e_clean, dim=-1)
    assert got.shape == (3,) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(comp(clean, clean, clean), torch.ones(3), atol=1e-6, rtol=0)

    info = comp.info()
    assert info["name"] == "clip" and info["model_id"] == str(clip_dir)
    weights = clip_dir / "model.safetensors"
    assert info["weights"] == {str(weights): hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert info["preprocess"]["mean"] == pytest.approx(CLIP_MEAN)


def test_clip_caches_clean_embeddings_per_sample_id(clip_dir):
    comp = rm.build_clip({"model_path": str(clip_dir), "gt_cache_size": 2}, "cpu")
    restored, clean = _images(2, 32, 32, 6), _images(2, 32, 32, 7)
    first = comp(restored, restored, clean, sample_ids=["a", "b"])
    assert comp.stats()["gt_cache_misses"] == 2 and comp.stats().get("gt_cache_hits", 0) == 0
    forwards = comp.stats()["forward_images"]
    restored2 = _images(2, 32, 32, 8)
    second = comp(restored2, restored2, clean, sample_ids=["a", "b"])
    assert comp.stats()["gt_cache_hits"] == 2
    assert comp.stats()["forward_images"] == forwards + 2  # only the new restored images
    torch.testing.assert_close(second, comp(restored2, restored2, clean), atol=1e-6, rtol=0)
    assert not torch.equal(first, second)

    # Same id, different crop: recomputed, not served stale.
    other = _images(1, 32, 32, 9)
    got = comp(restored[:1], restored[:1], other, sample_ids=["a"])
    assert comp.stats()["gt_cache_mismatches"] == 1
    torch.testing.assert_close(got, comp(restored[:1], restored[:1], other), atol=1e-6, rtol=0)
    # LRU bound.
    comp(restored, restored, clean, sample_ids=["c", "d"])
    assert comp.stats()["gt_cache_entries"] == 2
    # GRPO batches repeat each clean image G times under one id: embedded once.
    group = torch.cat([clean[:1]] * 3 + [clean[1:]])
    restored4 = _images(4, 32, 32, 14)
    forwards = comp.stats()["forward_images"]
    got = comp(restored4, restored4, group, sample_ids=["e", "e", "e", "f"])
    assert comp.stats()["forward_images"] == forwards + 4 + 2
    torch.testing.assert_close(got, comp(restored4, restored4, group), atol=1e-6, rtol=0)
    empty = comp(group[:0], group[:0], group[:0], sample_ids=[])
    assert empty.shape == (0,)
    with pytest.raises(ValueError, match="sample_ids"):
        comp(restored, restored, clean, sample_ids=["only-one"])


@pytest.fixture(scope="module")
def aesthetic_head_file(tmp_path_factory):
    """A random head in the layout of sac+logos+ava1-l14-linearMSE.pth."""
    gen = torch.Generator().manual_seed(10)
    state = {}
    layers = [(0, 768, 1024), (2, 1024, 128), (4, 128, 64), (6, 64, 16), (7, 16, 1)]
    for index, fan_in, fan_out in layers:
        state[f"layers.{index}.weight"] = torch.randn(fan_out, fan_in, generator=gen) / fan_in**0.5
        state[f"layers.{index}.bias"] = torch.randn(fan_out, generator=gen)
    path = tmp_path_factory.mktemp("aesthetic") / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(state, path)
    return path, state


def test_aesthetic_matches_a_hand_written_mlp_and_shares_the_clip_forward(clip_dir, aesthetic_head_file):
    path, state = aesthetic_head_file
    comps = rm.build_components(
        {
            "aesthetic": {"head_path": str(path), "clip_model_path": str(clip_dir)},
            "clip": {"model_path": str(clip_dir)},
        }
    )
    assert list(comps) == ["clip", "aesthetic"]
    assert comps["clip"].encoder is comps["aesthetic"].encoder  # one CLIP model in memory

    degraded, restored, clean = (_images(3, 40, 40, s) for s in (11, 12, 13))
    comps["clip"](degraded, restored, clean)
    forwards = comps["clip"].stats()["forward_images"]
    got = comps["aesthetic"](degraded, restored, clean)
    assert comps["clip"].stats()["forward_images"] == forwards  # restored embeddings reused
    assert comps["clip"].stats()["restored_cache_hits"] == 1

    emb = _transformers_clip_embeddings(clip_dir, restored)
    h = emb / torch.linalg.vector_norm(emb, dim=-1, keepdim=True)
    for index in (0, 2, 4, 6, 7):  # no activations; dropouts are identities in eval mode
        h = h @ state[f"layers.{index}.weight"].T + state[f"layers.{index}.bias"]
    assert got.shape == (3,) and got.dtype == torch.float32
    torch.testing.assert_close(got, h[:, 0], atol=1e-4, rtol=1e-5)

    # Standalone factory: its own encoder, same numbers.
    alone = rm.COMPONENTS["aesthetic"]({"head_path": str(path), "clip_model_path": str(clip_dir)}, "cpu")
    torch.testing.assert_close(alone(degraded, restored, clean), got, atol=1e-6, rtol=0)
    info = alone.info()
    assert info["weights"][str(path)] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert str(clip_dir / "model.safetensors") in info["weights"]


def test_aesthetic_head_with_wrong_keys_is_refused(tmp_path, aesthetic_head_file, clip_dir):
    _, state = aesthetic_head_file
    bad = tmp_path / "head.pth"
    torch.save({"model." + k: v for k, v in state.items()}, bad)
    with pytest.raises(rm.RewardModelUnavailable, match=r"reward\.models\.aesthetic\.head_path.*missing"):
        rm.build_aesthetic({"head_path": str(bad), "clip_model_path": str(clip_dir)}, "cpu")


# ------------------------------------------------------------------------------------------
# Qwen2.5-VL judge: parsing (fixed strings) and the generation path (tiny random model)
# ------------------------------------------------------------------------------------------


def test_prompt_is_the_papers_verbatim():
    prompt = rm.QWEN_PROMPT
    assert prompt.startswith("You are an image-restoration expert. You will be given three images:")
    assert "deraining (3), dehazing (4), deblurring (5), or low-light enhancement (6)." in prompt
    assert "4. Provide a final quality score from 1 to 5, where: 1: severe artifacts" in prompt
    assert prompt.endswith(
        "Respond in the following XML-style format:\n<Assessment>\n  <Degradation>\n"
        "    [type and reasoning]\n  </Degradation>\n  <Analysis>\n    [detailed comparison]\n"
        "  </Analysis>\n  <Score>X</Score>\n</Assessment>"
    )
    if PAPER.is_file():  # the shared docs are outside the repository; compare when present
        text = PAPER.read_text(encoding="utf-8")
        start = text.index("Qwen-VL Verifier Prompt ") + len("Qwen-VL Verifier Prompt ")
        end = text.index("</Assessment>", start) + len("</Assessment>")
        assert prompt == text[start:end]


@pytest.mark.parametrize(
    "answer, score, status",
    [
        ("<Assessment>...<Score>4</Score>\n</Assessment>", 4.0, "ok"),
        ("<Score> 5 </Score>", 5.0, "ok"),
        ("<Score>1</Score>", 1.0, "ok"),
        ("<score>3</score>", 3.0, "ok"),
        ("<Score>3.5</Score>", 3.5, "ok"),
        ("first <Score>2</Score> then revised <Score>5</Score>", 5.0, "ok"),  # last match wins
        ("<Score>4</Score> ... <Score>7</Score>", None, "out_of_range"),  # paper's scale is 1-5
        ("<Score>0</Score>", None, "out_of_range"),
        ("<Score>X</Score>", None, "missing"),
        ("Score: 4", None, "missing"),
        ("\x1f garbage \ufffd", None, "missing"),
        ("", None, "missing"),
    ],
)
def test_parse_judge_score(answer, score, status):
    assert rm.parse_judge_score(answer) == (score, status)


def test_rescale_and_expected_score():
    assert [rm.rescale_judge_score(s) for s in (1, 2, 3, 4, 5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    digits = [3, 5, 7, 9, 11]
    logits = torch.full((3, 12), -1e4)
    logits[0, 9] = 10.0  # "4" dominates -> 0.75
    logits[1, digits] = 0.0  # uniform -> E = 3 -> 0.5
    logits[2, 0] = 50.0  # mass outside the digits; renormalised among them (uniform)
    got = rm.expected_judge_score(logits, digits)
    torch.testing.assert_close(got, torch.tensor([0.75, 0.5, 0.5]), atol=1e-4, rtol=0)
    assert rm.judge_score_prefix("<Analysis>ok</Analysis>\n  <Score>4</Score>") == (
        "<Analysis>ok</Analysis>\n  <Score>",
        False,
    )
    assert rm.judge_score_prefix("reasoning cut off ") == ("reasoning cut off\n  <Score>", True)


QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2-VL's chat template, reduced to what the judge uses (user text and images).
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    """A tiny random Qwen2.5-VL with a tokenizer trained in memory, saved with its processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    bpe = Tokenizer(models.BPE())
    # Digits one per token, as Qwen's pre-tokenizer does (the continuous score relies on it).
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=QWEN_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator([rm.QWEN_PROMPT, "user assistant <Score>4</Score> 12345"], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=QWEN_TEMPLATE,
    )
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN_TEMPLATE,
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2,
            hidden_size=64,
            intermediate_size=128,
            num_heads=4,
            out_hidden_size=64,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[1],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("qwen")
    Qwen2_5_VLForConditionalGeneration(config).eval().save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def _spy_generate(comp) -> list:
    calls = []
    original = comp.model.generate

    def generate(**kwargs):
        calls.append(kwargs)
        return original(**kwargs)

    comp.model.generate = generate
    return calls


def test_qwen_judge_generates_batched_and_marks_unparsable_answers(qwen_dir):
    comp = rm.build_components(
        {
            "qwen": {
                "model_path": str(qwen_dir),
                "dtype": "float32",
                "max_new_tokens": 4,
                "batch_size": 2,
            }
        }
    )["qwen"]
    calls = _spy_generate(comp)
    degraded, restored, clean = (_images(3, 56, 56, s) for s in (20, 21, 22))
    scores = comp(degraded, restored, clean)

    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert [c["input_ids"].shape[0] for c in calls] == [2, 1]  # batch_size 2 over 3 samples
    assert comp.tokenizer.padding_side == "left"
    assert calls[0]["generation_config"].do_sample is False
    assert calls[0]["generation_config"].max_new_tokens == 4
    prompt = comp.tokenizer.decode(calls[0]["input_ids"][0], skip_special_tokens=False)
    assert rm.QWEN_PROMPT in prompt
    assert prompt.count("<|vision_start|>") == 3  # degraded, restored, ground truth
    assert prompt.index("<|vision_end|>") < prompt.index(rm.QWEN_PROMPT)  # images first
    assert calls[0]["pixel_values"].dtype == torch.float32

    # A random tiny model writes garbage: each sample is NaN exactly when its answer has no
    # valid score, and every NaN is counted.
    assert len(comp.last_responses) == 3
    for value, answer in zip(scores.tolist(), comp.last_responses):
        parsed, _ = rm.parse_judge_score(answer)
        assert (parsed is None) == math.isnan(value)
        if parsed is not None:
            assert value == rm.rescale_judge_score(parsed)
    stats = comp.stats()
    assert stats["judged"] == 3
    assert stats["unparsable"] == sum(math.isnan(v) for v in scores.tolist())
    assert stats["parsed"] + stats["unparsable"] == 3
    info = comp.info()
    assert info["stats"] == stats
    assert info["prompt_sha256"] == hashlib.sha256(rm.QWEN_PROMPT.encode()).hexdigest()
    assert "Appendix B.2" in info["prompt_source"]
    assert str(qwen_dir / "model.safetensors") in info["weights"]


def test_qwen_parsed_answers_are_rescaled(qwen_dir):
    comp = rm.build_qwen({"model_path": str(qwen_dir), "dtype": "float32", "max_new_tokens": 2}, "cpu")
    answers = iter(["<Score>4</Score>", "<Score>9</Score>", "<Analysis>fine</Analysis><Score>2</Score>"])
    comp.generate = lambda images: [next(answers) for _ in images]  # fixed judge answers
    x = _images(3, 56, 56, 23)
    scores = comp(x, x, x)
    assert scores[0].item() == 0.75 and math.isnan(scores[1].item()) and scores[2].item() == 0.25
    assert comp.stats() == {"judged": 3, "parsed": 2, "unparsable": 1, "out_of_range": 1}


def test_qwen_continuous_score_is_finite_and_independent_of_batching(qwen_dir):
    base = {"model_path": str(qwen_dir), "dtype": "float32", "max_new_tokens": 3, "continuous": True}
    batched = rm.build_qwen({**base, "batch_size": 3}, "cpu")
    degraded, restored, clean = (_images(3, 56, 56, s) for s in (24, 25, 26))
    scores = batched(degraded, restored, clean)
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    assert ((scores >= 0) & (scores <= 1)).all()
    assert batched.stats()["judged"] == 3
    forced = sum(rm.judge_score_prefix(answer)[1] for answer in batched.last_responses)
    assert batched.stats()["forced_score_position"] == forced

    # Answers of different lengths make left padding matter: batched == one by one.
    answers = [
        "<Assessment>\n  <Degradation>\n    noise\n  </Degradation>\n  <Score>",
        "short",
        "a longer answer that never reaches a score tag because it was cut off " * 3,
    ]
    images = [[degraded[i], restored[i], clean[i]] for i in range(3)]
    together = batched.continuous_scores(images, answers)
    single = rm.build_qwen({**base, "batch_size": 1}, "cpu")
    alone = torch.cat([single.continuous_scores([images[i]], [answers[i]]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    assert ((together >= 0) & (together <= 1)).all()
    assert [batched.tokenizer.decode([i]) for i in batched.digit_token_ids] == list("12345")
