"""Prompt features from a local text encoder (tiny random Gemma-3 + LTX-2 connectors built in tmp_path): equal to
a direct call of the same modules, stored per sample and per dataset, read back by ``PromptBank``, no download."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoTokenizer,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    Gemma3TextModel,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
    T5Config,
    T5Model,
)

from omniforcing.cli import main
from omniforcing.codecs import AVCodec, MelAudioCodec, PatchVideoCodec
from omniforcing.data.latent_shards import encode_latent_shards
from omniforcing.data.prompt_encoding import PromptFeatureEncoder
from omniforcing.data.shards import iter_tar_samples, resolve_shards
from omniforcing.errors import InvalidInputError, MissingInputError, UserError
from omniforcing.models.ltx2.prompt_bank import (
    BANK_NAME,
    PROMPT_MEMBER,
    PromptBank,
    prompt_member_bytes,
    read_prompt_member,
)

WORDS = "a the dog cat runs jumps red blue ball bounces on floor loud quiet drum".split()
CAPTIONS = ["the dog runs", "", "a red ball bounces on the floor loud", "cat"]
MAX_LENGTH = 8  # a multiple of the tiny connectors' 4 registers
WIDTH = 16  # Gemma hidden size = caption_channels = connector heads x head dim
BF16_RELATIVE = 2.0 ** -8  # bfloat16 keeps 8 significant bits: storage rounds by at most this, relative


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> list:
    """Offline hub, and any socket connection attempted is recorded (and refused)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    attempts: list = []

    def refuse(self, address):
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield attempts
    assert not attempts, f"a download was attempted: {attempts}"


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``WORDS`` that prepends ``<bos>`` and pads on the left (as Gemma's)."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", unk_token="<unk>", padding_side="left")


def gemma_text_config() -> Gemma3TextConfig:
    return Gemma3TextConfig(vocab_size=len(WORDS) + 4, hidden_size=WIDTH, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
                            sliding_window=8)


def write_ltx2_folder(root: Path, registers: int | None = 4, seed: int = 0) -> Path:
    """LTX-2's text parts at a tiny random size: ``text_encoder/`` (``Gemma3ForConditionalGeneration``, the class
    ``LTX2Pipeline`` loads), ``tokenizer/``, ``connectors/`` (``LTX2TextConnectors``)."""
    torch.manual_seed(seed)
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14)
    config = Gemma3Config(text_config=gemma_text_config().to_dict(), vision_config=vision.to_dict(),
                          mm_tokens_per_image=4)
    Gemma3ForConditionalGeneration(config).save_pretrained(root / "text_encoder")
    tiny_tokenizer().save_pretrained(root / "tokenizer")
    LTX2TextConnectors(caption_channels=WIDTH, text_proj_in_factor=3, video_connector_num_attention_heads=2,
                       video_connector_attention_head_dim=8, video_connector_num_layers=1,
                       video_connector_num_learnable_registers=registers, audio_connector_num_attention_heads=2,
                       audio_connector_attention_head_dim=8, audio_connector_num_layers=1,
                       audio_connector_num_learnable_registers=registers).save_pretrained(root / "connectors")
    return root


@pytest.fixture(scope="module")
def ltx2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ltx2_folder(tmp_path_factory.mktemp("ltx2_text"))


@torch.no_grad()
def direct_ltx2_features(folder: Path, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The modules called by hand, as ``LTX2Pipeline`` calls them: left-padded tokens, every Gemma hidden state
    stacked and flattened, the connectors."""
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    gemma = Gemma3ForConditionalGeneration.from_pretrained(folder / "text_encoder", local_files_only=True).eval()
    connectors = LTX2TextConnectors.from_pretrained(folder / "connectors", local_files_only=True).eval()
    tokens = tokenizer([c.strip() for c in captions], padding="max_length", max_length=MAX_LENGTH, truncation=True,
                       return_tensors="pt")
    hidden = gemma(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True)
    packed = torch.stack(hidden.hidden_states, dim=-1).flatten(2, 3)
    return connectors(packed, tokens.attention_mask, padding_side="left")


@pytest.mark.parametrize("registers", [4, None])
def test_ltx2_features_equal_a_direct_call_of_gemma_and_the_connectors(tmp_path, registers):
    folder = write_ltx2_folder(tmp_path, registers)
    features = PromptFeatureEncoder(folder, dtype="float32", max_length=MAX_LENGTH)(CAPTIONS)
    video, audio, mask = direct_ltx2_features(folder, CAPTIONS)
    # the connectors' mask keeps every position (registers fill the padding; without registers diffusers' mask
    # test `< 1e-6` holds for the padding's additive -max too), so the pipeline's transformer attends to all of them
    assert mask.bool().all()
    for row, got in enumerate(features):
        keep = mask[row].bool()
        assert got.video.shape == (MAX_LENGTH, WIDTH)
        torch.testing.assert_close(got.video, video[row][keep], rtol=0, atol=1e-6)
        torch.testing.assert_close(got.audio, audio[row][keep], rtol=0, atol=1e-6)
    assert not torch.equal(features[0].video[-1], features[0].audio[-1])  # two streams, two connectors


def tiny_auto_model(kind: str) -> torch.nn.Module:
    """A decoder-only (Gemma-3 text) or an encoder-decoder (T5) transformers model, ``WIDTH`` wide."""
    if kind == "gemma3_text":
        return Gemma3TextModel(gemma_text_config())
    return T5Model(T5Config(vocab_size=len(WORDS) + 4, d_model=WIDTH, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                            decoder_start_token_id=0))


@pytest.mark.parametrize("kind", ["gemma3_text", "t5"])
def test_any_local_encoder_gives_its_last_hidden_state_to_both_streams(tmp_path, kind):
    torch.manual_seed(0)
    model = tiny_auto_model(kind).eval()
    model.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    features = PromptFeatureEncoder(tmp_path, dtype="float32", max_length=MAX_LENGTH)(CAPTIONS)
    tokens = tiny_tokenizer()(CAPTIONS, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    encoder = model.get_encoder() if kind == "t5" else model  # of an encoder-decoder model: its encoder
    with torch.no_grad():
        hidden = encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    for row, got in enumerate(features):
        expected = hidden[row][tokens.attention_mask[row].bool()]
        assert got.video.shape == (min(len(CAPTIONS[row].split()) + 1, MAX_LENGTH), WIDTH)  # words + <bos>
        torch.testing.assert_close(got.video, expected, rtol=0, atol=1e-6)
        assert torch.equal(got.video, got.audio)


def copy_without_weights(source: Path, target: Path, parts: tuple[str, ...]) -> Path:
    """The files of ``parts`` of an LTX-2 folder except the weights (as a download stopped before them)."""
    for part in parts:
        (target / part).mkdir(parents=True)
        for name in (source / part).iterdir():
            if "safetensors" not in name.name:
                (target / part / name.name).write_bytes(name.read_bytes())
    return target


def test_missing_folders_are_one_line_errors_naming_what_to_download(tmp_path, ltx2_folder):
    with pytest.raises(MissingInputError, match="no such folder; download") as missing:
        PromptFeatureEncoder(tmp_path / "nowhere")
    copy_without_weights(ltx2_folder, tmp_path / "no_tokenizer", ("text_encoder", "connectors"))
    with pytest.raises(MissingInputError, match="no tokenizer/ folder with tokenizer.json or tokenizer_config.json; "
                                                "download tokenizer/ from the Hugging Face repo Lightricks/LTX-2 "
                                                "into") as part:
        PromptFeatureEncoder(tmp_path / "no_tokenizer")
    (tmp_path / "empty" / "text_encoder").mkdir(parents=True)
    with pytest.raises(MissingInputError, match="no text_encoder/ folder with config.json; download") as empty:
        PromptFeatureEncoder(tmp_path / "empty")
    partial = copy_without_weights(ltx2_folder, tmp_path / "partial", ("text_encoder", "tokenizer", "connectors"))
    with pytest.raises(MissingInputError, match="cannot load it .* download it from the Hugging Face repo "
                                                "Lightricks/LTX-2 again") as weights:
        PromptFeatureEncoder(partial)
    (tmp_path / "other").mkdir()
    with pytest.raises(MissingInputError, match="neither an LTX-2 folder nor a transformers model") as unknown:
        PromptFeatureEncoder(tmp_path / "other")
    with pytest.raises(InvalidInputError, match="--text-max-length 6 must be a multiple of the 4 learnable") as length:
        PromptFeatureEncoder(ltx2_folder, dtype="float32", max_length=6)
    assert all("\n" not in str(error.value) for error in (missing, part, empty, weights, unknown, length))


def tiny_codec() -> AVCodec:
    return AVCodec(PatchVideoCodec(size=32, patch_size=16), MelAudioCodec(griffin_lim_iters=2, nnls_iters=2)).eval()


@pytest.fixture(scope="module")
def prompt_latents(tiny_shards, ltx2_folder, tmp_path_factory) -> tuple[Path, dict, PromptFeatureEncoder]:
    encoder = PromptFeatureEncoder(ltx2_folder, dtype="float32", max_length=MAX_LENGTH)
    out = tmp_path_factory.mktemp("prompt_latents")
    manifest = encode_latent_shards(tiny_codec(), resolve_shards(str(tiny_shards))[:2], out, seconds=1,
                                    shard_size=3, batch_size=2, progress=False, prompt_encoder=encoder)
    return out, manifest, encoder


def test_each_latent_sample_holds_its_captions_features(prompt_latents):
    out, manifest, encoder = prompt_latents
    assert manifest["text_encoder"] == encoder.description()
    assert json.loads((out / "dataset.json").read_text())["text_encoder"]["kind"] == "ltx2"
    samples = [members for shard in manifest["shards"] for _, members in iter_tar_samples(out / shard)]
    assert len(samples) == manifest["samples"] == 8  # 4 clips of 2 s, windows at 0 and 1 s
    for members in samples:
        caption, stored = read_prompt_member(members[PROMPT_MEMBER])
        assert caption == json.loads(members["json"])["caption"]
        assert stored.video.dtype == torch.bfloat16
        # bfloat16 storage of the float32 features: equal up to its rounding
        torch.testing.assert_close(stored.video.float(), encoder([caption])[0].video, rtol=BF16_RELATIVE, atol=1e-6)


def member_features(out: Path, manifest: dict) -> dict:
    """caption -> stored features, read from the shards' ``prompt.safetensors`` members."""
    return dict(read_prompt_member(members[PROMPT_MEMBER]) for shard in manifest["shards"]
                for _, members in iter_tar_samples(out / shard))


@pytest.mark.parametrize("source", ["folder", "bank file", "shard members"])
def test_prompt_bank_gives_back_the_stored_features(prompt_latents, tmp_path, source):
    out, manifest, encoder = prompt_latents
    if source == "shard members":  # a copy of the shards without the bank file
        for shard in manifest["shards"]:
            (tmp_path / shard).write_bytes((out / shard).read_bytes())
    bank = PromptBank({"folder": out, "bank file": out / BANK_NAME, "shard members": tmp_path}[source])
    stored = member_features(out, manifest)
    captions = sorted(stored)
    assert len(captions) == 4 and sorted(c for c in bank.captions if c) == captions and bank.width == WIDTH
    text = bank(captions)
    for row, caption in enumerate(captions):  # exactly the stored bfloat16 values, as float32
        assert torch.equal(text.video.tokens[row], stored[caption].video.float())
        assert torch.equal(text.audio.tokens[row], stored[caption].audio.float())
    assert text.video.mask.all()  # LTX-2's registers: every one of MAX_LENGTH tokens is real
    if source != "shard members":
        null = bank(captions[:1], drop=torch.tensor([True])).video.tokens[0]
        torch.testing.assert_close(null, encoder([""])[0].video, rtol=BF16_RELATIVE, atol=1e-6)


def test_a_caption_missing_from_the_bank_names_the_command(prompt_latents):
    bank = PromptBank(prompt_latents[0])
    with pytest.raises(MissingInputError, match="omniforcing data encode --text-encoder") as error:
        bank(["a caption nobody encoded"])
    assert "\n" not in str(error.value)


def test_resume_reuses_features_and_refuses_another_text_encoder(tiny_shards, ltx2_folder, tmp_path, monkeypatch):
    shards = resolve_shards(str(tiny_shards))[:1]
    encoder = PromptFeatureEncoder(ltx2_folder, dtype="float32", max_length=MAX_LENGTH)
    encode_latent_shards(tiny_codec(), shards, tmp_path, seconds=1, shard_size=2, progress=False,
                         prompt_encoder=encoder)
    (tmp_path / BANK_NAME).unlink()  # as if the run stopped before writing the bank
    encoded: list[list[str]] = []
    original = PromptFeatureEncoder.__call__

    def counting(self, captions):
        encoded.append(captions)
        return original(self, captions)

    monkeypatch.setattr(PromptFeatureEncoder, "__call__", counting)
    encode_latent_shards(tiny_codec(), shards, tmp_path, seconds=1, shard_size=2, progress=False,
                         prompt_encoder=encoder)
    assert encoded == [[""]]  # the finished shards' captions were read back, not encoded again
    assert len(PromptBank(tmp_path).captions) == 3  # 2 clips' captions + ""
    longer = PromptFeatureEncoder(ltx2_folder, dtype="float32", max_length=2 * MAX_LENGTH)
    with pytest.raises(InvalidInputError, match="text_encoder"):
        encode_latent_shards(tiny_codec(), shards, tmp_path, seconds=1, shard_size=2, progress=False,
                             prompt_encoder=longer)


def test_encode_prompts_command_writes_a_bank_for_streaming(ltx2_folder, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat jumps\n\na blue drum loud\n")
    out = tmp_path / "bank.safetensors"
    main(["data", "encode-prompts", "--text-encoder", str(ltx2_folder), "--prompts", str(prompts), "--out", str(out),
          "--text-dtype", "float32", "--text-max-length", str(MAX_LENGTH)])
    bank = PromptBank(out)
    assert sorted(bank.captions) == ["", "a blue drum loud", "the cat jumps"]
    expected = PromptFeatureEncoder(ltx2_folder, dtype="float32", max_length=MAX_LENGTH)(["the cat jumps"])[0]
    torch.testing.assert_close(bank(["the cat jumps"]).audio.tokens[0], expected.audio, rtol=BF16_RELATIVE,
                               atol=1e-6)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_code:
        main(["data", "encode-prompts", "--text-encoder", str(tmp_path / "missing"), "--prompts", str(prompts),
              "--out", str(out)])
    error = capsys.readouterr().err.strip()
    assert exit_code.value.code == 2 and error.count("\n") == 0 and "no such folder; download" in error
    assert issubclass(MissingInputError, UserError)


def test_data_encode_command_takes_a_text_encoder(tiny_shards, ltx2_folder, tmp_path, capsys):
    recipe = Path(__file__).parents[2] / "recipes/latents/patch.yaml"
    shard = resolve_shards(str(tiny_shards))[0]
    main(["data", "encode", "--in", shard, "--codec", str(recipe), "--out", str(tmp_path / "latents"),
          "--seconds", "1", "--text-encoder", str(ltx2_folder), "--text-dtype", "float32",
          "--text-max-length", str(MAX_LENGTH)])
    assert "prompts.safetensors" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "latents/dataset.json").read_text())
    assert manifest["text_encoder"]["path"] == str(ltx2_folder.resolve())
    captions = {json.loads(members["json"])["caption"] for _, members in iter_tar_samples(tmp_path / "latents" /
                                                                                          manifest["shards"][0])}
    assert sorted(PromptBank(tmp_path / "latents").captions) == sorted({"", *captions})
    with pytest.raises(SystemExit) as exit_code:
        main(["data", "encode", "--in", shard, "--codec", str(recipe), "--out", str(tmp_path / "other"),
              "--text-encoder", str(tmp_path / "no_weights")])
    error = capsys.readouterr().err.strip()
    assert exit_code.value.code == 2 and "\n" not in error and "--text-encoder" in error


def test_bfloat16_features_are_stored_exactly(ltx2_folder):
    features = PromptFeatureEncoder(ltx2_folder, dtype="bfloat16", max_length=MAX_LENGTH)(CAPTIONS[:2])
    for caption, computed in zip(CAPTIONS[:2], features, strict=True):
        assert computed.video.dtype == torch.bfloat16
        _, stored = read_prompt_member(prompt_member_bytes(caption, computed))
        assert torch.equal(stored.video, computed.video) and torch.equal(stored.audio, computed.audio)
